package gateway_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/servertest"
)

// TestListenerRoutes drives a listener's whole life over REST with a real
// TCP client: start, list, get, its connections, send to one, close it,
// stop.
func TestListenerRoutes(t *testing.T) {
	_, api := startREST(t, server.Config{})

	// POST /v1/listeners: kn-sock's example server.
	raw := api.Call(http.MethodPost, "/v1/listeners", listenerBody("seed"), nil)
	for _, want := range []string{`"listenerId":"seed"`, `"state":"LISTENER_STATE_LISTENING"`, `"autoReply":{`, `"text":"Message received"`, `"createdAt":"`} {
		if !strings.Contains(compact(raw), want) {
			t.Errorf("StartListener body %s lacks %s", raw, want)
		}
	}
	var started tcpgatev1.StartListenerResponse
	servertest.Decode(t, raw, &started)
	l := started.GetListener()
	host, port, err := net.SplitHostPort(l.GetAddress())
	if err != nil || host != "127.0.0.1" || port == "0" {
		t.Fatalf("address = %q (%v)", l.GetAddress(), err)
	}
	other := api.startListener("other")

	// GET /v1/listeners, in creation order.
	var list tcpgatev1.ListListenersResponse
	api.Call(http.MethodGet, "/v1/listeners", "", &list)
	var ids []string
	for _, x := range list.GetListeners() {
		ids = append(ids, x.GetListenerId())
	}
	if !slices.Equal(ids, []string{"seed", "other"}) {
		t.Fatalf("listeners = %v", ids)
	}

	// A real client gets the auto reply.
	c := servertest.Dial(t, l.GetAddress())
	if _, err := c.Write([]byte("Hello, World!")); err != nil {
		t.Fatal(err)
	}
	if got := servertest.ReadN(t, c, len(seedReply)); string(got) != seedReply {
		t.Fatalf("auto reply = %q", got)
	}

	// GET /v1/listeners/{id}, with counters as protojson writes uint64: strings.
	// bytesOut counts the auto reply once its write returned, which may be
	// just after the client read it.
	var got tcpgatev1.GetListenerResponse
	servertest.Eventually(t, "bytesOut counts the auto reply", func() bool {
		raw = api.Call(http.MethodGet, "/v1/listeners/seed", "", &got)
		return got.GetListener().GetBytesOut() == 16
	})
	gl := got.GetListener()
	if gl.GetAddress() != l.GetAddress() || gl.GetState() != tcpgatev1.ListenerState_LISTENER_STATE_LISTENING ||
		gl.GetConnectionsActive() != 1 || gl.GetConnectionsTotal() != 1 || gl.GetBytesIn() != 13 || gl.GetBytesOut() != 16 {
		t.Fatalf("GetListener = %v", gl)
	}
	for _, want := range []string{`"connectionsTotal":"1"`, `"bytesIn":"13"`, `"connectionsActive":1`} {
		if !strings.Contains(compact(raw), want) {
			t.Errorf("GetListener body %s lacks %s", raw, want)
		}
	}

	// GET /v1/connections, all and by listener.
	var conns tcpgatev1.ListConnectionsResponse
	api.Call(http.MethodGet, "/v1/connections", "", &conns)
	if len(conns.GetConnections()) != 1 {
		t.Fatalf("connections = %v", conns.GetConnections())
	}
	cn := conns.GetConnections()[0]
	if cn.GetListenerId() != "seed" || cn.GetRemoteAddress() != c.LocalAddr().String() || cn.GetLocalAddress() != l.GetAddress() || cn.GetConnectionId() == "" {
		t.Fatalf("connection = %v, client at %s", cn, c.LocalAddr())
	}
	api.Call(http.MethodGet, "/v1/connections?listenerId=seed", "", &conns)
	if len(conns.GetConnections()) != 1 || conns.GetConnections()[0].GetConnectionId() != cn.GetConnectionId() {
		t.Fatalf("connections of seed = %v", conns.GetConnections())
	}
	conns.Reset()
	api.Call(http.MethodGet, "/v1/connections?listenerId="+other.GetListenerId(), "", &conns)
	if len(conns.GetConnections()) != 0 {
		t.Fatalf("connections of other = %v", conns.GetConnections())
	}

	// POST /v1/send to the connection: the client reads it.
	sent := api.send(fmt.Sprintf(`{"connectionId": %q, "text": "from the API"}`, cn.GetConnectionId()))
	if sent.GetBytesWritten() != 12 || sent.GetConnectionsReached() != 1 || sent.GetReply() != nil {
		t.Fatalf("Send = %v", sent)
	}
	if got := servertest.ReadN(t, c, 12); string(got) != "from the API" {
		t.Fatalf("client read %q", got)
	}

	// POST /v1/send to the connection awaiting its reply: the client's next
	// frame. The client answers only once it has read the request.
	type result struct {
		resp *tcpgatev1.SendResponse
		err  error
	}
	done := make(chan result, 1)
	go func() {
		var r result
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, api.Base+"/v1/send", strings.NewReader(fmt.Sprintf(
			`{"connectionId": %q, "text": "ping", "awaitReply": {"mode": "AWAIT_MODE_FIRST_READ"}, "timeout": "5s"}`, cn.GetConnectionId())))
		req.Header.Set("Content-Type", "application/json")
		resp, err := api.HTTP.Do(req)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			r.resp = &tcpgatev1.SendResponse{}
			if resp.StatusCode != http.StatusOK {
				err = fmt.Errorf("%d %s", resp.StatusCode, b)
			} else {
				err = protojson.Unmarshal(b, r.resp)
			}
		}
		r.err = err
		done <- r
	}()
	if got := servertest.ReadN(t, c, 4); string(got) != "ping" {
		t.Fatalf("client read %q", got)
	}
	if _, err := c.Write([]byte("pong")); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-done:
		if r.err != nil || r.resp.GetReply().GetText() != "pong" {
			t.Fatalf("Send awaiting the connection's reply = %v, %v", r.resp, r.err)
		}
	case <-time.After(wait):
		t.Fatal("Send awaiting the connection's reply did not return")
	}
	// "pong" was a frame too: the listener's auto reply answered it.
	if got := servertest.ReadN(t, c, len(seedReply)); string(got) != seedReply {
		t.Fatalf("auto reply to pong = %q", got)
	}

	// DELETE /v1/connections/{id}: the client reads EOF.
	var closed tcpgatev1.CloseConnectionResponse
	api.Call(http.MethodDelete, "/v1/connections/"+cn.GetConnectionId(), "", &closed)
	if closed.GetConnection().GetConnectionId() != cn.GetConnectionId() || closed.GetConnection().GetBytesIn() != 17 {
		t.Fatalf("CloseConnection = %v", closed.GetConnection())
	}
	if n, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("client read after close = %d, %v; want EOF", n, err)
	}
	servertest.Eventually(t, "connection gone from the list", func() bool {
		conns.Reset()
		api.Call(http.MethodGet, "/v1/connections", "", &conns)
		return len(conns.GetConnections()) == 0
	})

	// DELETE /v1/listeners/{id} with a drain timeout as a query parameter.
	var stopped tcpgatev1.StopListenerResponse
	api.Call(http.MethodDelete, "/v1/listeners/seed?drainTimeout=0s", "", &stopped)
	if s := stopped.GetListener(); s.GetState() != tcpgatev1.ListenerState_LISTENER_STATE_STOPPED || s.GetConnectionsTotal() != 1 || s.GetListenerId() != "seed" {
		t.Fatalf("StopListener = %v", s)
	}
	ln, err := net.Listen("tcp", l.GetAddress())
	if err != nil {
		t.Fatalf("port of a stopped listener is not free: %v", err)
	}
	ln.Close()
	list.Reset()
	api.Call(http.MethodGet, "/v1/listeners", "", &list)
	if len(list.GetListeners()) != 1 || list.GetListeners()[0].GetListenerId() != "other" {
		t.Fatalf("listeners after stop = %v", list.GetListeners())
	}
}

// TestListenerIDCharacters: every character an id may have survives the
// REST path.
func TestListenerIDCharacters(t *testing.T) {
	_, api := startREST(t, server.Config{})
	const id = "Aa0.b_c~d-e"
	api.startListener(id)
	for _, path := range []string{"/v1/listeners/" + id, "/v1/listeners/Aa0.b_c%7Ed-e"} {
		var got tcpgatev1.GetListenerResponse
		api.Call(http.MethodGet, path, "", &got)
		if got.GetListener().GetListenerId() != id {
			t.Fatalf("GET %s = %v", path, got.GetListener())
		}
	}
	var stopped tcpgatev1.StopListenerResponse
	api.Call(http.MethodDelete, "/v1/listeners/"+id, "", &stopped)
	if stopped.GetListener().GetListenerId() != id {
		t.Fatalf("DELETE = %v", stopped.GetListener())
	}
}

// TestStopListenerDrains: DELETE with a drain timeout lets an open
// connection go on until the timeout, then closes it.
func TestStopListenerDrains(t *testing.T) {
	_, api := startREST(t, server.Config{})
	l := api.startListener("drain")
	c := servertest.Dial(t, l.GetAddress())
	c.Write([]byte("x"))
	servertest.ReadN(t, c, len(seedReply))

	var stopped tcpgatev1.StopListenerResponse
	api.Call(http.MethodDelete, "/v1/listeners/drain?drainTimeout=0.05s", "", &stopped)
	if s := stopped.GetListener(); s.GetState() != tcpgatev1.ListenerState_LISTENER_STATE_STOPPED || s.GetConnectionsActive() != 0 {
		t.Fatalf("StopListener = %v", s)
	}
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("client read after drain = %v; want EOF", err)
	}
}

// TestSendRoutes covers POST /v1/send to an address: kn-sock's
// send_tcp_message with its reply, and send_tcp_bytes byte-exact.
func TestSendRoutes(t *testing.T) {
	_, api := startREST(t, server.Config{})
	l := api.startListener("seed")

	t.Run("text with first read reply", func(t *testing.T) {
		resp := api.send(fmt.Sprintf(`{"address": %q, "text": "Hello, World!", "awaitReply": {"mode": "AWAIT_MODE_FIRST_READ"}, "timeout": "5s"}`, l.GetAddress()))
		if resp.GetBytesWritten() != 13 || resp.GetConnectionsReached() != 1 {
			t.Fatalf("Send = %v", resp)
		}
		if resp.GetReply().GetText() != seedReply || resp.GetReply().GetData() != nil {
			t.Fatalf("reply = %v", resp.GetReply())
		}
	})

	t.Run("reply data is base64", func(t *testing.T) {
		_, b := api.Do(http.MethodPost, "/v1/send", fmt.Sprintf(`{"address": %q, "text": "hi", "awaitReply": {"mode": "AWAIT_MODE_FIRST_READ", "payloadFormat": "PAYLOAD_FORMAT_BOTH"}}`, l.GetAddress()), nil)
		want := fmt.Sprintf(`"reply":{"data":%q,"text":%q}`, base64.StdEncoding.EncodeToString([]byte(seedReply)), seedReply)
		if !strings.Contains(compact(string(b)), want) || !strings.Contains(compact(string(b)), `"bytesWritten":"2"`) {
			t.Fatalf("body %s, want %s and bytesWritten as a string", b, want)
		}
	})

	t.Run("bytes arrive exact", func(t *testing.T) {
		got := make(chan []byte, 1)
		addr := servertest.Peer(t, func(c net.Conn) {
			b, _ := io.ReadAll(c)
			got <- b
		})
		resp := api.send(fmt.Sprintf(`{"address": %q, "data": "AQIDBA=="}`, addr))
		if resp.GetBytesWritten() != 4 || resp.GetReply() != nil {
			t.Fatalf("Send = %v", resp)
		}
		select {
		case b := <-got:
			if !bytes.Equal(b, []byte{1, 2, 3, 4}) {
				t.Fatalf("peer got %v, want [1 2 3 4]", b)
			}
		case <-time.After(wait):
			t.Fatal("peer got nothing")
		}
	})

	t.Run("to every connection of a listener", func(t *testing.T) {
		b := api.startListener("broadcast")
		c1, c2 := servertest.Dial(t, b.GetAddress()), servertest.Dial(t, b.GetAddress())
		var conns tcpgatev1.ListConnectionsResponse
		servertest.Eventually(t, "two connections", func() bool {
			api.Call(http.MethodGet, "/v1/connections?listenerId=broadcast", "", &conns)
			return len(conns.GetConnections()) == 2
		})
		resp := api.send(`{"listenerId": "broadcast", "text": "all"}`)
		if resp.GetConnectionsReached() != 2 || resp.GetBytesWritten() != 6 {
			t.Fatalf("Send = %v", resp)
		}
		for _, c := range []net.Conn{c1, c2} {
			if got := servertest.ReadN(t, c, 3); string(got) != "all" {
				t.Fatalf("client read %q", got)
			}
		}
	})
}

// compact removes the insignificant spaces protojson may put in its
// output, so tests can look for "name":value.
func compact(s string) string {
	var b bytes.Buffer
	if err := json.Compact(&b, []byte(s)); err != nil {
		return s
	}
	return b.String()
}
