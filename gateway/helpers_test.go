package gateway_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/servertest"
)

// wait bounds every wait in these tests; reaching it is a failure, not a
// measurement.
const wait = servertest.Wait

// seedReply is the auto reply of kn-sock's example server.
const seedReply = "Message received"

// rest is a REST client of one gateway, with the kn-sock seed requests
// of these tests as methods.
type rest struct {
	*servertest.REST
	t *testing.T
}

func newREST(t *testing.T, base string) *rest {
	t.Helper()
	return &rest{REST: servertest.NewREST(t, base), t: t}
}

// startREST runs a whole gateway with a REST front on 127.0.0.1:0.
func startREST(t *testing.T, cfg server.Config) (*servertest.Gateway, *rest) {
	t.Helper()
	cfg.HTTPAddr = "127.0.0.1:0"
	g := servertest.Start(t, cfg)
	return g, &rest{REST: g.REST, t: t}
}

// listenerBody is a StartListener body: kn-sock's example server on
// 127.0.0.1 and a free port, answering every frame with seedReply.
func listenerBody(id string) string {
	return fmt.Sprintf(`{
		"listenerId": %q,
		"host": "127.0.0.1",
		"port": 0,
		"framing": {"mode": "FRAMING_MODE_RAW"},
		"autoReply": {"mode": "AUTO_REPLY_MODE_FIXED", "text": %q}
	}`, id, seedReply)
}

// startListener starts a seed listener over REST.
func (r *rest) startListener(id string) *tcpgatev1.Listener {
	r.t.Helper()
	var resp tcpgatev1.StartListenerResponse
	r.Call(http.MethodPost, "/v1/listeners", listenerBody(id), &resp)
	l := resp.GetListener()
	if l.GetListenerId() != id || !strings.HasPrefix(l.GetAddress(), "127.0.0.1:") {
		r.t.Fatalf("started listener = %v", l)
	}
	return l
}

// send POSTs /v1/send and decodes the response.
func (r *rest) send(body string) *tcpgatev1.SendResponse {
	r.t.Helper()
	var resp tcpgatev1.SendResponse
	r.Call(http.MethodPost, "/v1/send", body, &resp)
	return &resp
}

// seedClient is kn-sock's example client: it connects, sends "Hello,
// World!", reads the auto reply and closes.
func seedClient(t *testing.T, addr string) {
	t.Helper()
	c := servertest.Dial(t, addr)
	if _, err := c.Write([]byte("Hello, World!")); err != nil {
		t.Fatal(err)
	}
	if got := servertest.ReadN(t, c, len(seedReply)); string(got) != seedReply {
		t.Fatalf("reply = %q, want %q", got, seedReply)
	}
	c.Close()
}
