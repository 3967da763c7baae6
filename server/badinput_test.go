package server_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/rpc"
	"github.com/tcpgate/tcpgate/server/servertest"
)

// badInvoke calls the RPC of req's type. A Subscribe that goes live (its
// headers arrive with the last-sequence header) counts as success; one that
// fails reports the error of its first Recv. Listeners that a case starts
// successfully are stopped again, so cases do not depend on each other.
func badInvoke(ctx context.Context, t *testing.T, c tcpgatev1.GatewayServiceClient, req proto.Message) error {
	t.Helper()
	switch r := req.(type) {
	case *tcpgatev1.StartListenerRequest:
		resp, err := c.StartListener(ctx, r)
		if err == nil {
			if _, serr := c.StopListener(ctx, &tcpgatev1.StopListenerRequest{ListenerId: resp.GetListener().GetListenerId()}); serr != nil {
				t.Errorf("stopping the listener a case started: %v", serr)
			}
		}
		return err
	case *tcpgatev1.StopListenerRequest:
		_, err := c.StopListener(ctx, r)
		return err
	case *tcpgatev1.ExportConfigRequest:
		_, err := c.ExportConfig(ctx, r)
		return err
	case *tcpgatev1.UpdateListenerRequest:
		_, err := c.UpdateListener(ctx, r)
		return err
	case *tcpgatev1.GetListenerRequest:
		_, err := c.GetListener(ctx, r)
		return err
	case *tcpgatev1.ListListenersRequest:
		_, err := c.ListListeners(ctx, r)
		return err
	case *tcpgatev1.ListConnectionsRequest:
		_, err := c.ListConnections(ctx, r)
		return err
	case *tcpgatev1.GetConnectionRequest:
		_, err := c.GetConnection(ctx, r)
		return err
	case *tcpgatev1.CloseConnectionRequest:
		_, err := c.CloseConnection(ctx, r)
		return err
	case *tcpgatev1.SendRequest:
		_, err := c.Send(ctx, r)
		return err
	case *tcpgatev1.ReloadRequest:
		_, err := c.Reload(ctx, r)
		return err
	case *tcpgatev1.ConnectRequest:
		resp, err := c.Connect(ctx, r)
		if err == nil {
			if _, cerr := c.CloseConnection(ctx, &tcpgatev1.CloseConnectionRequest{ConnectionId: resp.GetConnection().GetConnectionId()}); cerr != nil {
				t.Errorf("closing the connection a case made: %v", cerr)
			}
		}
		return err
	case *tcpgatev1.SubscribeRequest:
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		st, err := c.Subscribe(ctx, r)
		if err != nil {
			return err
		}
		md, err := st.Header()
		if err != nil {
			return err
		}
		if len(md.Get(rpc.HeaderLastSequence)) > 0 {
			return nil // live: the request was accepted
		}
		_, err = st.Recv()
		if err == nil {
			t.Errorf("Subscribe sent a response without its headers")
		}
		return err
	case *tcpgatev1.HandleRequest:
		// Registered, the first response, means accepted.
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		st, err := c.Handle(ctx)
		if err != nil {
			return err
		}
		if err := st.Send(r); err != nil {
			return err
		}
		resp, err := st.Recv()
		if err == nil && resp.GetRegistered() == nil {
			t.Errorf("Handle's first response %v is no registered", resp)
		}
		return err
	}
	t.Fatalf("no RPC for %T", req)
	return nil
}

// TestBadInput runs servertest's table of bad inputs over gRPC: every RPC
// with its invalid inputs (out of range, unknown enum values, empty and
// oversized values, malformed durations, unknown ids, wrong oneof
// combinations, limits), checking the code, that the message names the
// field, and the ErrorInfo reason and field. No case may answer Unknown or
// Internal. gateway's TestBadInputREST runs the same table over REST.
func TestBadInput(t *testing.T) {
	start := time.Now()
	bad := servertest.StartBadInputs(t, server.Config{})
	g, lim, connID := bad.Gateway, bad.Limited, bad.ConnID
	tests := bad.Rows

	seen := map[string]bool{}
	for _, tt := range tests {
		seen[tt.RPC] = true
		if tt.Code != codes.OK && (tt.Mention == "" || tt.Reason == tcpgatev1.ErrorReason_ERROR_REASON_UNSPECIFIED) {
			t.Errorf("case %s/%s: an error case needs what its message must mention and its reason", tt.RPC, tt.Name)
		}
		t.Run(tt.RPC+"/"+tt.Name, func(t *testing.T) {
			if tt.Name == "host not owned here" && bad.Unbindable == "" {
				t.Skip("every TEST-NET address is bindable on this machine")
			}
			gw := g
			if tt.Limits {
				gw = lim
			}
			err := badInvoke(servertest.Context(t), t, gw.Client, tt.Req)
			st := status.Convert(err)
			reason, meta := rpc.ReasonOf(err)
			fields := servertest.ErrorOf(err).Fields
			t.Logf("%v %v field=%q %v %q", st.Code(), reason, meta[rpc.MetaField], fields, st.Message())
			if st.Code() == codes.Unknown || st.Code() == codes.Internal {
				t.Fatalf("%v %q: never Unknown or Internal for a bad input", st.Code(), st.Message())
			}
			ok := st.Code() == tt.Code && strings.Contains(st.Message(), tt.Mention)
			if !ok {
				t.Fatalf("got %v %q, want %v mentioning %q", st.Code(), st.Message(), tt.Code, tt.Mention)
			}
			if strings.Contains(st.Message(), "panic") || strings.Contains(st.Message(), "goroutine ") {
				t.Fatalf("message looks like a crash: %q", st.Message())
			}
			if problem := tt.CheckDetails(reason, meta[rpc.MetaField], fields); problem != "" {
				t.Fatal(problem)
			}
		})
	}
	servertest.WantEveryMethod(t, seen)

	// Nothing the bad requests asked for was left behind: the listener set
	// is what the setup started, the ids of failed starts are free, the
	// connection was not closed, and the gateway still works.
	t.Run("state after the table", func(t *testing.T) {
		resp, err := g.Client.ListListeners(servertest.Context(t), &tcpgatev1.ListListenersRequest{})
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, l := range resp.GetListeners() {
			ids = append(ids, l.GetListenerId())
		}
		if !slices.Equal(ids, []string{"keep"}) {
			t.Fatalf("listeners = %v, want [keep]", ids)
		}
		for _, id := range []string{"hostport", "unbindable", "inuse"} {
			g.StartListener(t, &tcpgatev1.StartListenerRequest{ListenerId: id})
		}
		got, err := g.Client.GetListener(servertest.Context(t), &tcpgatev1.GetListenerRequest{ListenerId: "keep"})
		if err != nil {
			t.Fatal(err)
		}
		if l := got.GetListener(); l.GetState() != tcpgatev1.ListenerState_LISTENER_STATE_LISTENING || l.GetConnectionsActive() != 1 {
			t.Fatalf("keep = %v, want listening with its one connection", l)
		}
		if _, err := g.Client.Send(servertest.Context(t), &tcpgatev1.SendRequest{Target: &tcpgatev1.SendRequest_ConnectionId{ConnectionId: connID}, Payload: &tcpgatev1.SendRequest_Text{Text: "ok"}}); err != nil {
			t.Fatalf("Send to the kept connection: %v", err)
		}
		// The client was dialed before the table with a deadline of
		// servertest.Wait, which a loaded machine's table can outlast.
		_ = bad.Client.SetReadDeadline(time.Now().Add(servertest.Wait))
		if b := servertest.ReadN(t, bad.Client, 2); string(b) != "ok" {
			t.Fatalf("client read %q", b)
		}
		lresp, err := lim.Client.ListListeners(servertest.Context(t), &tcpgatev1.ListListenersRequest{})
		if err != nil || len(lresp.GetListeners()) != 2 {
			t.Fatalf("limited gateway listeners = %v, %v; want 2", lresp.GetListeners(), err)
		}
	})
	t.Logf("%d cases in %s", len(tests), time.Since(start).Round(time.Millisecond))
}

// rawCodec sends a request's bytes as they are, so that a test can send
// what no generated client would.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return v.([]byte), nil }

func (rawCodec) Unmarshal(data []byte, v any) error {
	*v.(*[]byte) = append([]byte(nil), data...)
	return nil
}

func (rawCodec) Name() string { return "proto" }

// TestMalformedProtobuf sends every method of the API bytes that do not
// decode as its request, and a string field that is not UTF-8, over a raw
// gRPC call: each answers InvalidArgument naming the request (and the
// string field that is not UTF-8), never Internal.
func TestMalformedProtobuf(t *testing.T) {
	g := servertest.Start(t, server.Config{})
	invoke := func(t *testing.T, method string, stream bool, req []byte) error {
		t.Helper()
		full := "/" + tcpgatev1.GatewayService_ServiceDesc.ServiceName + "/" + method
		if !stream {
			var resp []byte
			return g.Conn.Invoke(servertest.Context(t), full, req, &resp, grpc.ForceCodec(rawCodec{}))
		}
		ctx, cancel := context.WithCancel(servertest.Context(t))
		defer cancel()
		st, err := g.Conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, full, grpc.ForceCodec(rawCodec{}))
		if err != nil {
			return err
		}
		if err := st.SendMsg(req); err != nil {
			return err
		}
		if err := st.CloseSend(); err != nil {
			return err
		}
		var resp []byte
		return st.RecvMsg(&resp)
	}
	type method struct {
		name   string
		stream bool
	}
	var methods []method
	for _, m := range tcpgatev1.GatewayService_ServiceDesc.Methods {
		methods = append(methods, method{m.MethodName, false})
	}
	for _, s := range tcpgatev1.GatewayService_ServiceDesc.Streams {
		methods = append(methods, method{s.StreamName, true})
	}
	// 0x0a is field 1, length-delimited; every request's field 1 but
	// ListListenersRequest's (which has none: it stays an unknown field)
	// and SendRequest's (a string in a oneof) is a string or a message.
	cases := []struct {
		name    string
		req     []byte
		mention string
	}{
		{"truncated varint", []byte{0x08, 0xff, 0xff}, "not valid protobuf wire format"},
		{"length past the end", []byte{0x0a, 0x7f, 'x'}, "not valid protobuf wire format"},
		{"field number 0", []byte{0x02, 0x01, 'x'}, "not valid protobuf wire format"},
	}
	for _, m := range methods {
		for _, tt := range cases {
			t.Run(m.name+"/"+tt.name, func(t *testing.T) {
				err := invoke(t, m.name, m.stream, tt.req)
				st := status.Convert(err)
				if st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), tt.mention) || !strings.Contains(st.Message(), "tcpgate.v1."+m.name+"Request") {
					t.Fatalf("%v %q, want InvalidArgument naming tcpgate.v1.%sRequest and saying %q", st.Code(), st.Message(), m.name, tt.mention)
				}
			})
		}
	}
	for _, tt := range []struct {
		method  string
		stream  bool
		req     []byte
		mention string
	}{
		{"GetListener", false, []byte{0x0a, 0x01, 0xff}, "listener_id"},
		{"CloseConnection", false, []byte{0x0a, 0x02, 'c', 0xff}, "connection_id"},
		{"GetConnection", false, []byte{0x0a, 0x02, 'c', 0xff}, "connection_id"},
		{"Subscribe", true, []byte{0x0a, 0x01, 0xff}, "listener_ids"},
	} {
		t.Run(tt.method+"/invalid UTF-8", func(t *testing.T) {
			st := status.Convert(invoke(t, tt.method, tt.stream, tt.req))
			if st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), tt.mention) || !strings.Contains(st.Message(), "UTF-8") {
				t.Fatalf("%v %q, want InvalidArgument naming %s and UTF-8", st.Code(), st.Message(), tt.mention)
			}
		})
	}
	// A well-formed request still works through the same raw path.
	ok, _ := proto.Marshal(&tcpgatev1.ListListenersRequest{})
	if err := invoke(t, "ListListeners", false, ok); err != nil {
		t.Fatalf("ListListeners with a valid request: %v", err)
	}
}
