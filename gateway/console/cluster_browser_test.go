package console_test

import (
	"testing"

	"github.com/chromedp/chromedp"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/servertest"
	"github.com/tcpgate/tcpgate/server/servertest/natstest"
)

// TestConsoleCluster: the console of one node of a cluster shows the
// whole cluster. An outbound connection made on node a is listed on node
// b's console with its node, the greeting it read on a is in b's traffic
// view, and Close on b's page closes it on a.
func TestConsoleCluster(t *testing.T) {
	ns := natstest.Start(t)
	a := servertest.Start(t, server.Config{HTTPAddr: "127.0.0.1:0", NodeID: "a", Cluster: &server.ClusterConfig{URL: ns.URL(), Name: "console"}})
	b := servertest.Start(t, server.Config{HTTPAddr: "127.0.0.1:0", NodeID: "b", Cluster: &server.ClusterConfig{URL: ns.URL(), Name: "console"}})
	srv := startLineServer(t, "hello from a's device\n")
	ctx := browser(t, 1280, 800)
	p := page{t, ctx}
	defer screenshot(t, ctx, "cluster-end")

	p.run("opening node b's console", chromedp.Navigate(b.BaseURL+"/"), chromedp.WaitVisible(chromedp.ID("connect-form")))
	p.until("the empty panel", `!document.getElementById('connections-empty').hidden && 'empty'`)
	p.until("the event stream", `document.getElementById('status').textContent === 'live' && 'live'`)
	servertest.Eventually(t, "b to see a", func() bool {
		_, err := b.Client.Connect(servertest.Context(t), &tcpgatev1.ConnectRequest{ConnectionId: "probe", Address: srv.ln.Addr().String(), NodeId: "a"})
		return err == nil
	})
	probe := srv.next(t, "the probe connection")
	if _, err := a.Client.CloseConnection(servertest.Context(t), &tcpgatev1.CloseConnectionRequest{ConnectionId: "probe"}); err != nil {
		t.Fatal(err)
	}
	<-probe.gone

	a.Connect(t, &tcpgatev1.ConnectRequest{ConnectionId: "device-a", Address: srv.ln.Addr().String(),
		Framing: &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE}})
	peer := srv.next(t, "device-a's connection")
	p.run("refreshing the connections", chromedp.Evaluate[chromedp.Void](`document.getElementById('conn-origin').dispatchEvent(new Event('change'))`))
	p.until("a's connection on b's page", connRow("device-a", 1)+` === 'OUTBOUND' && 'yes'`)
	if got := eval[string](p, "reading the node", connRow("device-a", 12)); got != "a" {
		t.Errorf("the row's node is %q, want a", got)
	}
	p.until("a's greeting in b's traffic view", rowWith("RECEIVED", "text", "hello from a's device"))

	p.run("closing a's connection from b's page", chromedp.Click(chromedp.CSS(`#connections tbody tr[data-id="device-a"] button.close`)))
	select {
	case <-peer.gone:
	case <-ctx.Done():
		t.Fatal("the device's connection is still open after Close on b's page")
	}
	p.until("the row to go", `!document.querySelector('#connections tbody tr') && 'gone'`)
}
