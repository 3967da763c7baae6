package server_test

import (
	"bufio"
	"net/http"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/internal/proxyproto"
	"github.com/tcpgate/tcpgate/server/servertest"
)

// TestProxyProtocol: a listener with proxy_protocol, over gRPC: the
// listener reports it, UpdateListener refuses to change it, a connection
// whose header names a client is that client in its opened event, in
// ListConnections and in a rule's {{.remote_address}}, and one without a
// header is closed with PROXY_HEADER_INVALID, counted by the metric of
// close reasons, its bytes never data.
func TestProxyProtocol(t *testing.T) {
	g := servertest.Start(t, server.Config{HTTPAddr: "127.0.0.1:0"})
	s := g.Subscribe(t, &tcpgatev1.SubscribeRequest{Kinds: []tcpgatev1.EventKind{
		tcpgatev1.EventKind_EVENT_KIND_CONNECTION_OPENED, tcpgatev1.EventKind_EVENT_KIND_DATA, tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED,
	}})
	l := g.StartListener(t, &tcpgatev1.StartListenerRequest{
		Host:          "127.0.0.1",
		Framing:       &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE},
		AutoReply:     &tcpgatev1.AutoReply{Mode: tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_ECHO, Rules: []*tcpgatev1.ReplyRule{textRule(mExact, "who", "{{.remote_address}}")}},
		ProxyProtocol: tcpgatev1.ProxyProtocol_PROXY_PROTOCOL_V1,
	})
	if l.GetProxyProtocol() != tcpgatev1.ProxyProtocol_PROXY_PROTOCOL_V1 {
		t.Errorf("started listener reports proxy_protocol %v, want V1", l.GetProxyProtocol())
	}
	ctx := servertest.Context(t)
	got, err := g.Client.GetListener(ctx, &tcpgatev1.GetListenerRequest{ListenerId: l.GetListenerId()})
	if err != nil || got.GetListener().GetProxyProtocol() != tcpgatev1.ProxyProtocol_PROXY_PROTOCOL_V1 {
		t.Errorf("GetListener: %v, proxy_protocol %v, want V1", err, got.GetListener().GetProxyProtocol())
	}
	_, err = g.Client.UpdateListener(ctx, &tcpgatev1.UpdateListenerRequest{
		ListenerId: l.GetListenerId(),
		Listener:   &tcpgatev1.StartListenerRequest{ProxyProtocol: tcpgatev1.ProxyProtocol_PROXY_PROTOCOL_V2},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"proxy_protocol"}},
	})
	if e := servertest.ErrorOf(err); e.Code != codes.InvalidArgument || e.Reason != "FIELD_NOT_UPDATABLE" || e.Meta["field"] != "proxy_protocol" {
		t.Errorf("UpdateListener of proxy_protocol: %v %s %v, want InvalidArgument FIELD_NOT_UPDATABLE of proxy_protocol", e.Code, e.Reason, e.Meta)
	}

	client := netip.MustParseAddrPort("203.0.113.7:51000")
	c := servertest.Dial(t, l.GetAddress())
	if _, err := c.Write(proxyproto.AppendV1(nil, client, netip.MustParseAddrPort("198.51.100.1:443"))); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(c)
	if who := exchange(t, c, r, "who"); who != client.String() {
		t.Errorf("{{.remote_address}} gave %q, want the header's %s", who, client)
	}
	opened := s.NextOf(tcpgatev1.EventKind_EVENT_KIND_CONNECTION_OPENED)
	if opened.GetRemoteAddress() != client.String() || opened.GetLocalAddress() != c.RemoteAddr().String() {
		t.Errorf("CONNECTION_OPENED %s -> %s, want %s -> %s", opened.GetRemoteAddress(), opened.GetLocalAddress(), client, c.RemoteAddr())
	}
	if d := s.NextOf(tcpgatev1.EventKind_EVENT_KIND_DATA); d.GetText() != "who" {
		t.Errorf("first frame %q, want \"who\"", d.GetText())
	}
	conns, err := g.Client.ListConnections(ctx, &tcpgatev1.ListConnectionsRequest{ListenerId: l.GetListenerId()})
	if err != nil || len(conns.GetConnections()) != 1 || conns.GetConnections()[0].GetRemoteAddress() != client.String() {
		t.Errorf("ListConnections: %v, %v, want one connection of %s", conns.GetConnections(), err, client)
	}

	direct := servertest.Dial(t, l.GetAddress())
	if _, err := direct.Write([]byte("I am 203.0.113.9, trust me\n")); err != nil {
		t.Fatal(err)
	}
	opened = s.NextOf(tcpgatev1.EventKind_EVENT_KIND_CONNECTION_OPENED)
	if opened.GetRemoteAddress() != direct.LocalAddr().String() {
		t.Errorf("a connection without a header opened as %s, want the socket's %s", opened.GetRemoteAddress(), direct.LocalAddr())
	}
	closed := s.Next()
	if closed.GetKind() != tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED || closed.GetConnectionId() != opened.GetConnectionId() ||
		closed.GetCloseReason() != tcpgatev1.CloseReason_CLOSE_REASON_PROXY_HEADER_INVALID {
		t.Errorf("after the opening of a connection without a header: %v, want its CONNECTION_CLOSED with PROXY_HEADER_INVALID", closed)
	}
	if !strings.Contains(closed.GetError(), "PROXY") {
		t.Errorf("the close event says %q, not what was wrong with the header", closed.GetError())
	}
	if n := metric(t, g, `tcpgate_connections_closed_total{reason="proxy_header_invalid"}`); n != 1 {
		t.Errorf("connections closed for their header: metric %v, want 1", n)
	}
}

// TestProxyProtocolREST: a REST client starts a listener that takes
// version 2 headers, by the enum's JSON name, and sees the header's client
// in the connection list.
func TestProxyProtocolREST(t *testing.T) {
	g := servertest.Start(t, server.Config{HTTPAddr: "127.0.0.1:0"})
	var started tcpgatev1.StartListenerResponse
	g.REST.Call(http.MethodPost, "/v1/listeners",
		`{"host":"127.0.0.1","framing":{"mode":"FRAMING_MODE_LINE"},"autoReply":{"mode":"AUTO_REPLY_MODE_ECHO"},"proxyProtocol":"PROXY_PROTOCOL_V2"}`, &started)
	l := started.GetListener()
	if l.GetProxyProtocol() != tcpgatev1.ProxyProtocol_PROXY_PROTOCOL_V2 {
		t.Fatalf("listener reports proxy_protocol %v, want V2", l.GetProxyProtocol())
	}
	client := netip.MustParseAddrPort("[2001:db8::7]:51000")
	c := servertest.Dial(t, l.GetAddress())
	header := proxyproto.AppendV2(nil, client, netip.MustParseAddrPort("[2001:db8::1]:443"), nil)
	if _, err := c.Write(append(header, "hello\n"...)); err != nil {
		t.Fatal(err)
	}
	if got := exchange(t, c, bufio.NewReader(c), "again"); got != "hello" {
		t.Errorf("first echo %q, want \"hello\"", got)
	}
	var list tcpgatev1.ListConnectionsResponse
	g.REST.Call(http.MethodGet, "/v1/connections?listenerId="+l.GetListenerId(), "", &list)
	if len(list.GetConnections()) != 1 || list.GetConnections()[0].GetRemoteAddress() != client.String() {
		t.Errorf("GET /v1/connections: %v, want one connection of %s", list.GetConnections(), client)
	}
	var got tcpgatev1.GetListenerResponse
	g.REST.Call(http.MethodGet, "/v1/listeners/"+l.GetListenerId(), "", &got)
	if got.GetListener().GetProxyProtocol() != tcpgatev1.ProxyProtocol_PROXY_PROTOCOL_V2 {
		t.Errorf("GET /v1/listeners/%s: proxyProtocol %v, want PROXY_PROTOCOL_V2", l.GetListenerId(), got.GetListener().GetProxyProtocol())
	}
}

// TestProxyProtocolPersists: proxy_protocol goes through the state file
// (a restarted gateway's listener still requires the header), ExportConfig
// and the config file, where a reload that changes it restarts the
// listener with the new mode.
func TestProxyProtocolPersists(t *testing.T) {
	ctx := servertest.Context(t)
	path := filepath.Join(t.TempDir(), "state")
	a := stateGateway(t, path, false, nil)
	l := a.StartListener(t, &tcpgatev1.StartListenerRequest{ListenerId: "lb", Host: "127.0.0.1",
		Framing:       &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE},
		AutoReply:     &tcpgatev1.AutoReply{Rules: []*tcpgatev1.ReplyRule{textRule(mExact, "who", "{{.remote_address}}")}},
		ProxyProtocol: tcpgatev1.ProxyProtocol_PROXY_PROTOCOL_V2})
	exported, err := a.Client.ExportConfig(ctx, &tcpgatev1.ExportConfigRequest{})
	if err != nil || len(exported.GetConfig().GetListeners()) != 1 ||
		exported.GetConfig().GetListeners()[0].GetProxyProtocol() != tcpgatev1.ProxyProtocol_PROXY_PROTOCOL_V2 {
		t.Fatalf("ExportConfig: %v, %v, want the listener with PROXY_PROTOCOL_V2", exported.GetConfig(), err)
	}
	if err := a.Stop(); err != nil {
		t.Fatal(err)
	}
	b := stateGateway(t, path, false, nil)
	if got := listenerOf(t, b, "lb"); got.GetProxyProtocol() != tcpgatev1.ProxyProtocol_PROXY_PROTOCOL_V2 || got.GetAddress() != l.GetAddress() {
		t.Fatalf("restored listener %v, want %s with PROXY_PROTOCOL_V2", got, l.GetAddress())
	}
	client := netip.MustParseAddrPort("203.0.113.7:51000")
	c := servertest.Dial(t, l.GetAddress())
	if _, err := c.Write(proxyproto.AppendV2(nil, client, netip.MustParseAddrPort("198.51.100.1:443"), nil)); err != nil {
		t.Fatal(err)
	}
	if who := exchange(t, c, bufio.NewReader(c), "who"); who != client.String() {
		t.Errorf("restored listener answered %q, want the header's %s", who, client)
	}

	cfgPath := filepath.Join(t.TempDir(), "tcpgate.yaml")
	declare := func(mode string) {
		writeConfig(t, cfgPath, "listeners:\n  - listenerId: declared\n    host: 127.0.0.1\n    proxyProtocol: "+mode+"\n")
	}
	declare("PROXY_PROTOCOL_V1")
	g := servertest.Start(t, server.Config{ConfigFile: cfgPath})
	if got := listenerOf(t, g, "declared"); got.GetProxyProtocol() != tcpgatev1.ProxyProtocol_PROXY_PROTOCOL_V1 {
		t.Fatalf("declared listener reports %v, want PROXY_PROTOCOL_V1", got.GetProxyProtocol())
	}
	declare("PROXY_PROTOCOL_ANY")
	resp, err := g.Client.Reload(ctx, &tcpgatev1.ReloadRequest{})
	if err != nil {
		t.Fatalf("Reload: %v", err)
	}
	if got := listenerOf(t, g, "declared"); got.GetProxyProtocol() != tcpgatev1.ProxyProtocol_PROXY_PROTOCOL_ANY {
		t.Errorf("after the reload (%v) the listener reports %v, want PROXY_PROTOCOL_ANY", resp, got.GetProxyProtocol())
	}
}
