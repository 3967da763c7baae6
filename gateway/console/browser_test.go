package console_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/accessibility"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/durationpb"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/servertest"
)

// waitBound bounds every wait on the page: a step that does not happen in
// that long has failed. It is a bound, not a measurement.
const waitBound = 30 * time.Second

// browser starts headless Chromium for t, or skips t when there is none
// (and fails it on CI, where .ci/deps installs it).
func browser(t *testing.T, width, height int) context.Context {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("chromium not found on CI (.ci/deps installs it): %v", err)
		}
		t.Skipf("chromium not found (install it with .ci/deps): %v", err)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.WindowSize(width, height),
		// Loopback only: no proxy, nothing fetched in the background.
		chromedp.Flag("no-proxy-server", true),
		chromedp.Flag("disable-component-update", true),
	)
	if os.Geteuid() == 0 {
		opts = append(opts, chromedp.NoSandbox) // Chromium refuses root with its sandbox
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	t.Cleanup(func() {
		cancel()
		cancelAlloc()
	})
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
	return ctx
}

// screenshot saves the page as name.png in the test's artifact directory.
func screenshot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	sctx, cancel := context.WithTimeout(ctx, waitBound)
	defer cancel()
	png, err := chromedp.Run(sctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Logf("screenshot %s: %v", name, err)
		return
	}
	p := filepath.Join(t.ArtifactDir(), name+".png")
	if err := os.WriteFile(p, png, 0o644); err != nil {
		t.Logf("saving screenshot: %v", err)
		return
	}
	t.Logf("screenshot: %s", p)
}

// page runs actions on the page within waitBound, and fails t with a
// screenshot when they fail.
type page struct {
	t   *testing.T
	ctx context.Context
}

func (p page) run(what string, steps ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, waitBound)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		screenshot(p.t, p.ctx, "failure")
		p.t.Fatalf("%s: %v", what, err)
	}
}

// dump logs what the page shows, for a failure.
func (p page) dump() {
	ctx, cancel := context.WithTimeout(p.ctx, waitBound)
	defer cancel()
	text, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body.innerText.slice(0, 4000)`))
	p.t.Logf("the page shows (%v):\n%s", err, text)
}

// eval evaluates the JavaScript expression once.
func eval[T any](p page, what, expr string) T {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, waitBound)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		screenshot(p.t, p.ctx, "failure")
		p.t.Fatalf("%s: %v", what, err)
	}
	return v
}

// until polls the page until the JavaScript expression, which yields a
// string, is truthy, and returns it.
func (p page) until(what, expr string) string {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, waitBound)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Poll[string](expr, chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(waitBound)))
	if err != nil {
		screenshot(p.t, p.ctx, "failure")
		p.dump()
		p.t.Fatalf("waiting for %s: %v", what, err)
	}
	return v
}

// eventText is the expression of the text (or hex, with view "hex") of
// the first DATA row whose direction is dir and whose text contains want.
func rowWith(dir, view, want string) string {
	return fmt.Sprintf(`(() => {
		for (const li of document.querySelectorAll('#traffic li.kind-DATA.dir-%s')) {
			const pre = li.querySelector('pre.%s');
			if (pre && pre.textContent.includes(%q) && pre.checkVisibility()) return li.dataset.connection || 'yes';
		}
		return '';
	})()`, dir, view, want)
}

// TestConsoleTalksToTCPClient drives the console as a person would: start
// a listener from the page, have a plain TCP client send text and bytes,
// read both in the traffic view as text and as hex, pause and resume
// without losing an event, answer from the send box in text and in hex,
// and stop the listener.
func TestConsoleTalksToTCPClient(t *testing.T) {
	g := servertest.Start(t, server.Config{HTTPAddr: "127.0.0.1:0"})
	ctx := browser(t, 1280, 800)
	p := page{t, ctx}
	defer screenshot(t, ctx, "end")

	p.run("opening the console", chromedp.Navigate(g.BaseURL+"/"), chromedp.WaitVisible(chromedp.ID("start-form")))
	p.until("the event stream", `document.getElementById('status').textContent === 'live' && 'live'`)

	// Start a listener with line framing from the form.
	p.run("starting a listener from the form",
		chromedp.SetValue(chromedp.ID("start-host"), "127.0.0.1"),
		chromedp.SetValue(chromedp.ID("start-port"), "0"),
		chromedp.SetValue(chromedp.ID("start-framing"), "FRAMING_MODE_LINE"),
		chromedp.Click(chromedp.ID("start-button")),
	)
	addr := p.until("the listener's row", `(document.querySelector('#listeners tbody td.address') || {}).textContent || ''`)
	var list tcpgatev1.ListListenersResponse
	g.REST.Call("GET", "/v1/listeners", "", &list)
	if len(list.Listeners) != 1 || list.Listeners[0].Address != addr || list.Listeners[0].Framing.GetMode() != tcpgatev1.FramingMode_FRAMING_MODE_LINE {
		t.Fatalf("the page shows a listener on %s; the API lists %v", addr, list.Listeners)
	}

	// A plain TCP client sends a line of text and a line of bytes that
	// are not UTF-8.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("connecting to the listener the page started: %v", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("hello console\n\x00\x01\xfe\xff\n")); err != nil {
		t.Fatal(err)
	}
	conn := p.until("the text frame as text", rowWith("RECEIVED", "text", "hello console"))
	p.until("the byte frame as text", rowWith("RECEIVED", "text", `\x00\x01\xfe\xff`))
	p.run("showing hex", chromedp.Click(chromedp.ID("show-hex")))
	p.until("the text frame in hex", rowWith("RECEIVED", "hex", "00000000  68 65 6c 6c 6f 20 63 6f 6e 73 6f 6c 65"))
	p.until("the byte frame in hex", rowWith("RECEIVED", "hex", "00000000  00 01 fe ff"))
	p.run("showing text", chromedp.Click(chromedp.ID("show-hex")))

	// While paused, events are held, not shown; resuming shows them.
	p.run("pausing", chromedp.Click(chromedp.ID("pause")))
	if _, err := c.Write([]byte("while paused\n")); err != nil {
		t.Fatal(err)
	}
	p.until("the paused event held", `document.getElementById('traffic-count').textContent.includes('buffered') && 'held'`)
	if eval[bool](p, "reading the paused view", rowWith("RECEIVED", "text", "while paused")+` !== ''`) {
		t.Fatal("an event arrived while paused was shown before resuming")
	}
	p.run("resuming", chromedp.Click(chromedp.ID("pause")))
	p.until("the event held while paused", rowWith("RECEIVED", "text", "while paused"))

	// Answer from the send box: the connection's button fills it in.
	r := bufio.NewReader(c)
	readLine := func(want string) {
		t.Helper()
		_ = c.SetReadDeadline(time.Now().Add(waitBound))
		line, err := r.ReadString('\n')
		if err != nil || line != want {
			screenshot(t, ctx, "failure")
			t.Fatalf("the TCP client read %q (%v), want %q", line, err, want)
		}
	}
	p.run("sending text from the send box",
		chromedp.Click(chromedp.CSS(fmt.Sprintf(`#traffic li[data-connection=%q] button.conn`, conn))),
		chromedp.SendKeys(chromedp.ID("send-payload"), "reply from console\n"),
		chromedp.Click(chromedp.ID("send-button")),
	)
	readLine("reply from console\n")
	result := p.until("the send result", `(t => t.startsWith('sent') && t)(document.getElementById('send-result').textContent)`)
	if result != "sent 19 bytes to 1 connection(s)" {
		t.Errorf("send result %q, want 19 bytes to 1 connection", result)
	}
	p.until("the sent text in the traffic view", rowWith("SENT", "text", "reply from console"))

	p.run("sending hex from the send box",
		chromedp.SetValue(chromedp.ID("send-format"), "hex"),
		chromedp.SetValue(chromedp.ID("send-payload"), "48 49 ff 0a"),
		chromedp.Click(chromedp.ID("send-button")),
	)
	readLine("HI\xff\n")
	p.until("the second send result", `(t => t.startsWith('sent 4 ') && t)(document.getElementById('send-result').textContent)`)
	p.until("the sent bytes in the traffic view", rowWith("SENT", "text", `HI\xff`))

	// The page at its busiest: a listener, its client, both directions.
	// README.md's docs/console.png is this screenshot (go test -artifacts).
	p.until("the listener's frames in", `(document.querySelector('#listeners tbody tr').cells[6].textContent === '3') && 'yes'`)
	screenshot(t, p.ctx, "live")

	// A bad hex payload is refused on the page, with a reason.
	p.run("sending bad hex", chromedp.SetValue(chromedp.ID("send-payload"), "4"), chromedp.Click(chromedp.ID("send-button")))
	p.until("the hex error", `(t => t.startsWith('send failed: hex payload') && t)(document.getElementById('send-result').textContent)`)

	// Counters are polled: the row shows the frames in.
	p.until("the listener's frames in", `(document.querySelector('#listeners tbody tr').cells[6].textContent === '3') && 'yes'`)

	// Stop it with a drain time: the client's connection is closed, the
	// row goes.
	p.run("stopping the listener",
		chromedp.SetValue(chromedp.ID("drain"), "0.2"),
		chromedp.Click(chromedp.CSS(`#listeners tbody button`)),
	)
	p.until("the listener's row to go", `document.querySelectorAll('#listeners tbody tr').length === 0 && 'gone'`)
	p.until("the close event", `document.querySelector('#traffic li.kind-CONNECTION_CLOSED') && 'closed'`)
	_ = c.SetReadDeadline(time.Now().Add(waitBound))
	if b, err := r.ReadByte(); err == nil {
		t.Errorf("read %q after the listener stopped, want the connection closed", b)
	}
	g.REST.Call("GET", "/v1/listeners", "", &list)
	if len(list.Listeners) != 0 {
		t.Errorf("after Stop on the page the API lists %v", list.Listeners)
	}

	// Everything the page fetched (its files, the polls, the event
	// stream, the sends) came from the gateway.
	fetched := eval[[]string](p, "reading the resources", `performance.getEntriesByType('resource').map(e => e.name)`)
	if len(fetched) < 4 {
		t.Errorf("the page fetched %v, want at least its module, its style sheet, the stream and a poll", fetched)
	}
	for _, u := range fetched {
		if !strings.HasPrefix(u, g.BaseURL+"/") {
			t.Errorf("the page fetched %s, not from the gateway at %s", u, g.BaseURL)
		}
	}
}

// TestConsoleAccessible reads the accessibility tree at a desktop and a
// phone width: every control has an accessible name and can take the
// keyboard's focus.
func TestConsoleAccessible(t *testing.T) {
	g := servertest.Start(t, server.Config{HTTPAddr: "127.0.0.1:0"})
	l, err := g.Client.StartListener(context.Background(), &tcpgatev1.StartListenerRequest{Host: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	// A client, so that the connections panel has a row and its Close.
	client, err := net.Dial("tcp", l.Listener.Address)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	for _, size := range []struct{ w, h int }{{1280, 800}, {390, 844}} {
		t.Run(fmt.Sprintf("%dx%d", size.w, size.h), func(t *testing.T) {
			ctx := browser(t, size.w, size.h)
			p := page{t, ctx}
			defer screenshot(t, ctx, "end")
			// A window is never narrower than 500px: the viewport is.
			p.run("opening the console", chromedp.EmulateViewport(int64(size.w), int64(size.h)),
				chromedp.Navigate(g.BaseURL+"/"), chromedp.WaitVisible(chromedp.ID("start-form")))
			if w := eval[int](p, "reading the viewport", `window.innerWidth`); w != size.w {
				t.Fatalf("viewport %dpx wide, want %d", w, size.w)
			}
			p.until("the listener's stop button", `document.querySelector('#listeners tbody button') && 'yes'`)
			p.until("the connection's close button", `document.querySelector('#connections tbody button') && 'yes'`)
			// A reply rule's row, so that its controls are in the tree too.
			p.run("adding a reply rule", chromedp.Click(chromedp.ID("rules-add")), chromedp.WaitVisible(chromedp.CSS(`#rules-list [aria-label="Rule 1 kind"]`)))

			tree, err := chromedp.Call(ctx, accessibility.GetFullAXTree, accessibility.GetFullAXTreeParams{})
			if err != nil {
				t.Fatalf("reading the accessibility tree: %v", err)
			}
			nodes := tree.Nodes
			controls := map[string]bool{"button": true, "textbox": true, "combobox": true, "checkbox": true, "spinbutton": true}
			n := 0
			for _, node := range nodes {
				if node.Ignored || node.Role == nil || !controls[strings.Trim(string(node.Role.Value), `"`)] {
					continue
				}
				n++
				role := strings.Trim(string(node.Role.Value), `"`)
				name := ""
				if node.Name != nil {
					name = strings.Trim(string(node.Name.Value), `"`)
				}
				if strings.TrimSpace(name) == "" {
					t.Errorf("a %s has no accessible name", role)
				}
				focusable := false
				for _, prop := range node.Properties {
					if prop.Name == accessibility.PropertyNameFocusable && string(prop.Value.Value) == "true" {
						focusable = true
					}
				}
				if !focusable {
					t.Errorf("%s %q cannot take the keyboard's focus", role, name)
				}
			}
			// 5 start fields and its button, the drain time, a stop
			// button, 3 send fields and its button, pause, hex, clear.
			if n < 15 {
				t.Errorf("%d controls in the accessibility tree, want at least 15", n)
			}
			if wide := eval[string](p, "reading the width", `document.documentElement.scrollWidth <= window.innerWidth ? '' :
				document.documentElement.scrollWidth + 'px: ' + [...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > window.innerWidth + 1)
					.map(e => e.tagName + (e.id ? '#' + e.id : '')).join(' ')`); wide != "" {
				t.Errorf("the page is wider than a %dpx viewport: %s", size.w, wide)
			}
		})
	}
}

// With a token set, the page shows a login: a wrong token is refused on
// the page, the right one opens the console through an HttpOnly session
// cookie (no script sees it, the token is not kept), the page then drives
// the API, and logging out shows the login again with the API refused.
func TestConsoleLogin(t *testing.T) {
	const token = "console-s3cret"
	g := servertest.Start(t, server.Config{HTTPAddr: "127.0.0.1:0", AuthToken: token})
	p := page{t, browser(t, 1280, 800)}
	defer screenshot(t, p.ctx, "login-end")

	p.run("opening the console", chromedp.Navigate(g.BaseURL+"/"), chromedp.WaitVisible(chromedp.ID("login-form")))
	if hidden := eval[bool](p, "reading the app's visibility", `document.getElementById('app').hidden`); !hidden {
		t.Fatal("the console shows before a login")
	}
	p.run("logging in with a wrong token",
		chromedp.SendKeys(chromedp.ID("login-token"), "wrong"),
		chromedp.Click(chromedp.ID("login-button")))
	p.until("the refusal", `document.getElementById('login-result').textContent.includes('login failed') ? 'yes' : ''`)

	p.run("logging in",
		chromedp.SendKeys(chromedp.ID("login-token"), token),
		chromedp.Click(chromedp.ID("login-button")),
		chromedp.WaitVisible(chromedp.ID("start-form")))
	if c := eval[string](p, "reading document.cookie", `document.cookie`); strings.Contains(c, "tcpgate_session") || strings.Contains(c, token) {
		t.Errorf("document.cookie = %q: the session cookie must be HttpOnly and the token nowhere", c)
	}
	if v := eval[string](p, "reading the token field", `document.getElementById('login-token').value`); v != "" {
		t.Errorf("the token field still holds %q after the login", v)
	}

	// The page drives the API with its cookie: a listener started from
	// the form is the gateway's.
	p.run("starting a listener",
		chromedp.SetValue(chromedp.ID("start-framing"), "FRAMING_MODE_LINE"),
		chromedp.Click(chromedp.ID("start-button")))
	id := p.until("the listener in the table", `(() => { const td = document.querySelector('#listeners tbody tr td'); return td ? td.textContent : ''; })()`)
	ctx := metadata.AppendToOutgoingContext(servertest.Context(t), "authorization", "Bearer "+token)
	if _, err := g.Client.GetListener(ctx, &tcpgatev1.GetListenerRequest{ListenerId: id}); err != nil {
		t.Fatalf("GetListener %s (started from the logged-in page): %v", id, err)
	}

	p.run("logging out", chromedp.Click(chromedp.ID("logout")), chromedp.WaitVisible(chromedp.ID("login-form")))
	status := p.until("the API refusing the page", `fetch('/v1/listeners').then(r => String(r.status))`)
	if status != "401" {
		t.Errorf("GET /v1/listeners from the page after logout: %s, want 401", status)
	}
}

// lineServer is a plain TCP server on 127.0.0.1:0 that greets each client
// with a line, then reads until the client goes. Each accepted connection
// arrives on accepted; its channel is closed when the client has gone.
type lineServer struct {
	ln       net.Listener
	accepted chan lineClient
	wg       sync.WaitGroup
}

// lineClient is one connection the line server accepted.
type lineClient struct {
	remote net.Addr // the gateway's end
	gone   chan struct{}
}

func startLineServer(t *testing.T, greeting string) *lineServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &lineServer{ln: ln, accepted: make(chan lineClient, 16)}
	var mu sync.Mutex // guards open
	var open []net.Conn
	s.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			open = append(open, c)
			mu.Unlock()
			lc := lineClient{remote: c.RemoteAddr(), gone: make(chan struct{})}
			s.wg.Go(func() {
				defer close(lc.gone)
				if _, err := c.Write([]byte(greeting)); err != nil {
					return
				}
				_, _ = io.Copy(io.Discard, c)
			})
			select {
			case s.accepted <- lc:
			default:
				t.Errorf("more clients than the test expects; %s not reported", lc.remote)
			}
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range open {
			c.Close()
		}
		mu.Unlock()
		s.wg.Wait()
	})
	return s
}

// next waits for the server's next accepted connection.
func (s *lineServer) next(t *testing.T, what string) lineClient {
	t.Helper()
	select {
	case c := <-s.accepted:
		return c
	case <-time.After(waitBound):
		t.Fatalf("the line server accepted no connection: %s", what)
		return lineClient{}
	}
}

// connRow is the expression of the text of cell i of the connections
// panel's row for id, or the empty string while there is none.
func connRow(id string, i int) string {
	return fmt.Sprintf(`(() => { const r = document.querySelector('#connections tbody tr[data-id=%q]'); return r ? r.cells[%d].textContent : ''; })()`, id, i)
}

// TestConsoleOutboundConnection opens an outbound connection from the
// page's form to a plain TCP line server, sees it in the connections panel
// as OUTBOUND and OPEN with its counters, filters it by origin, and closes
// it from its row: the server's side ends.
func TestConsoleOutboundConnection(t *testing.T) {
	g := servertest.Start(t, server.Config{HTTPAddr: "127.0.0.1:0", NodeID: "node-c"})
	srv := startLineServer(t, "hello gateway\n")
	ctx := browser(t, 1280, 800)
	p := page{t, ctx}
	defer screenshot(t, ctx, "outbound-end")

	p.run("opening the console", chromedp.Navigate(g.BaseURL+"/"), chromedp.WaitVisible(chromedp.ID("connect-form")))
	p.until("the empty panel", `!document.getElementById('connections-empty').hidden && 'empty'`)

	p.run("opening an outbound connection from the form",
		chromedp.SendKeys(chromedp.ID("connect-address"), srv.ln.Addr().String()),
		chromedp.SetValue(chromedp.ID("connect-framing"), "FRAMING_MODE_LINE"),
		chromedp.SendKeys(chromedp.ID("connect-id"), "device-1"),
		chromedp.Click(chromedp.ID("connect-button")),
	)
	result := p.until("the connect result", `document.getElementById('connect-result').textContent`)
	if want := "device-1 to " + srv.ln.Addr().String() + ": OPEN"; result != want {
		t.Errorf("connect result %q, want %q", result, want)
	}
	peer := srv.next(t, "after Open connection on the page")

	// The panel shows it as the gateway holds it, with the greeting
	// counted as one frame in.
	p.until("the row as OUTBOUND", connRow("device-1", 1)+` === 'OUTBOUND' && 'yes'`)
	p.until("the row as OPEN", connRow("device-1", 2)+` === 'OPEN' && 'yes'`)
	p.until("the greeting counted", connRow("device-1", 9)+` === '1' && 'yes'`)
	if got, want := eval[string](p, "reading the remote address", connRow("device-1", 5)), srv.ln.Addr().String(); got != want {
		t.Errorf("the row's remote address is %q, want the line server's %s", got, want)
	}
	if got, want := eval[string](p, "reading the local address", connRow("device-1", 4)), peer.remote.String(); got != want {
		t.Errorf("the row's local address is %q, want the address the server accepted, %s", got, want)
	}
	if got := eval[string](p, "reading the generation", connRow("device-1", 6)); got != "1" {
		t.Errorf("the row's generation is %q, want 1", got)
	}
	// Where it lives: the gateway's --node-id (in a cluster, one of several).
	if got := eval[string](p, "reading the node", connRow("device-1", 12)); got != "node-c" {
		t.Errorf("the row's node is %q, want node-c", got)
	}
	list, err := g.Client.ListConnections(servertest.Context(t), &tcpgatev1.ListConnectionsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Connections) != 1 || list.Connections[0].ConnectionId != "device-1" ||
		list.Connections[0].Origin != tcpgatev1.Origin_ORIGIN_OUTBOUND || list.Connections[0].State != tcpgatev1.ConnectionState_CONNECTION_STATE_OPEN {
		t.Fatalf("the API lists %v, want device-1, outbound and open", list.Connections)
	}

	// The origin filter goes to the API: accepted only hides it.
	p.run("showing accepted connections only", chromedp.SetValue(chromedp.ID("conn-origin"), "ORIGIN_ACCEPTED"),
		chromedp.Evaluate[chromedp.Void](`document.getElementById('conn-origin').dispatchEvent(new Event('change'))`))
	p.until("the row hidden by the filter", `!document.querySelector('#connections tbody tr') && !document.getElementById('connections-empty').hidden && 'hidden'`)
	p.run("showing outbound connections only", chromedp.SetValue(chromedp.ID("conn-origin"), "ORIGIN_OUTBOUND"),
		chromedp.Evaluate[chromedp.Void](`document.getElementById('conn-origin').dispatchEvent(new Event('change'))`))
	p.until("the row shown by the filter", connRow("device-1", 0))

	// Close from the row: the server's side ends, the row goes, and the
	// gateway does not dial again.
	p.run("closing the connection from its row", chromedp.Click(chromedp.CSS(`#connections tbody tr[data-id="device-1"] button.close`)))
	select {
	case <-peer.gone:
	case <-time.After(waitBound):
		t.Fatal("the line server's connection is still open after Close on the page")
	}
	p.until("the row to go", `!document.querySelector('#connections tbody tr') && 'gone'`)
	closed := p.until("the close result", `(t => t.startsWith('closed') && t)(document.getElementById('connect-result').textContent)`)
	if want := "closed device-1: 14 bytes in, 0 bytes out"; closed != want {
		t.Errorf("close result %q, want %q", closed, want)
	}
	list, err = g.Client.ListConnections(servertest.Context(t), &tcpgatev1.ListConnectionsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Connections) != 0 {
		t.Errorf("after Close on the page the API lists %v", list.Connections)
	}

	// An address nobody listens on: the form shows that the connection
	// waits to dial again, and why.
	gone, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := gone.Addr().String()
	gone.Close()
	p.run("opening a connection to a closed port",
		chromedp.SetValue(chromedp.ID("connect-address"), refused),
		chromedp.SetValue(chromedp.ID("connect-id"), "device-2"),
		chromedp.Click(chromedp.ID("connect-button")),
	)
	result = p.until("the refused result", `(t => t.startsWith('device-2') && t)(document.getElementById('connect-result').textContent)`)
	if want := "device-2 to " + refused + ": WAITING, last error: "; !strings.HasPrefix(result, want) || !strings.Contains(result, "refused") {
		t.Errorf("connect result %q, want %q and the refusal", result, want)
	}
	p.until("the waiting row's last error", connRow("device-2", 11)+`.includes('refused') && 'yes'`)
	p.run("closing the waiting connection", chromedp.Click(chromedp.CSS(`#connections tbody tr[data-id="device-2"] button.close`)))
	p.until("the waiting row to go", `!document.querySelector('#connections tbody tr') && 'gone'`)
}

// TestConsoleConnectionPages pages through the connections panel two rows
// at a time, filtered by listener: Next and Previous follow the API's
// page tokens.
func TestConsoleConnectionPages(t *testing.T) {
	g := servertest.Start(t, server.Config{HTTPAddr: "127.0.0.1:0"})
	l := g.StartListener(t, &tcpgatev1.StartListenerRequest{ListenerId: "front", Host: "127.0.0.1"})
	g.StartListener(t, &tcpgatev1.StartListenerRequest{ListenerId: "other", Host: "127.0.0.1"})
	for range 3 {
		c, err := net.Dial("tcp", l.Address)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	// One client of the other listener, which the filter leaves out.
	other, err := g.Client.GetListener(servertest.Context(t), &tcpgatev1.GetListenerRequest{ListenerId: "other"})
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", other.Listener.Address)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// The front's connections in the API's order, once it holds all
	// three (a dial returns before the gateway has accepted).
	var want []string
	for deadline := time.Now().Add(waitBound); len(want) < 3; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the API lists %v of the front's 3 connections", want)
		}
		list, err := g.Client.ListConnections(servertest.Context(t), &tcpgatev1.ListConnectionsRequest{ListenerId: "front"})
		if err != nil {
			t.Fatal(err)
		}
		want = want[:0]
		for _, c := range list.Connections {
			want = append(want, c.ConnectionId)
		}
	}

	p := page{t, browser(t, 1280, 800)}
	defer screenshot(t, p.ctx, "pages-end")
	p.run("opening the console", chromedp.Navigate(g.BaseURL+"/"), chromedp.WaitVisible(chromedp.ID("conn-filter")))
	p.run("filtering by listener, two a page",
		chromedp.SetValue(chromedp.ID("conn-page-size"), "2"),
		chromedp.SendKeys(chromedp.ID("conn-listener"), "front\r"),
	)
	ids := `[...document.querySelectorAll('#connections tbody tr')].map(r => r.dataset.id).join(' ')`
	pageIs := func(what, page string, rows ...string) {
		t.Helper()
		p.until(what, fmt.Sprintf(`(%s) === %q && document.getElementById('conn-page').textContent === %q && 'yes'`, ids, strings.Join(rows, " "), page))
	}
	pageIs("the first page", "page 1", want[0], want[1])
	if d := eval[string](p, "reading Previous", `document.getElementById('conn-prev').getAttribute('aria-disabled')`); d != "true" {
		t.Errorf("Previous on the first page: aria-disabled %q, want true", d)
	}
	// The pager is worked from the keyboard: focus and Enter, which no
	// re-render of the tables above it can move out from under, as it
	// can a click at coordinates read a moment before on a busy machine.
	// Focus moves first, on its own: leaving the listener field may
	// commit it (a change event, a new first page), and the Enter waits
	// until the pager is live again.
	press := func(id string) []chromedp.Action[chromedp.Void] {
		return []chromedp.Action[chromedp.Void]{chromedp.Focus(chromedp.ID(id)), chromedp.KeyEvent("\r")}
	}
	p.run("focusing Next", chromedp.Focus(chromedp.ID("conn-next")))
	pageIs("the first page, Next focused", "page 1", want[0], want[1])
	p.until("Next enabled on the first page", `document.getElementById('conn-next').getAttribute('aria-disabled') === 'false' && 'yes'`)
	p.run("going to the next page", chromedp.KeyEvent("\r"))
	pageIs("the second page", "page 2", want[2])
	p.until("Next disabled on the last page", `document.getElementById('conn-next').getAttribute('aria-disabled') === 'true' && 'yes'`)
	p.run("pressing the disabled Next", press("conn-next")...)
	p.run("going back", press("conn-prev")...)
	pageIs("the first page again", "page 1", want[0], want[1])
}

// startEchoServer is a TCP server that answers each line it reads with
// "echo: " and the line, and returns its address.
func startEchoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex // guards open
	var open []net.Conn
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			open = append(open, c)
			mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if _, err := io.WriteString(c, "echo: "+line); err != nil {
						return
					}
				}
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range open {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// TestConsoleSendBox sends from the send box as a person would: a line to
// an address, awaiting one line back, which the page shows as text and as
// hex; a file to every connection of a listener, which its TCP client
// receives; and a file over the gateway's limit, refused on the page.
func TestConsoleSendBox(t *testing.T) {
	// A limit of its own, so the page must take it from the gateway.
	const limit = 64 << 10
	g := servertest.Start(t, server.Config{HTTPAddr: "127.0.0.1:0", MaxSendBytes: limit})
	echo := startEchoServer(t)
	ctx := browser(t, 1280, 800)
	p := page{t, ctx}
	defer screenshot(t, ctx, "end")
	p.run("opening the console", chromedp.Navigate(g.BaseURL+"/"), chromedp.WaitVisible(chromedp.ID("send-form")))

	// To an address, awaiting one line.
	p.run("sending a line to an address",
		chromedp.SetValue(chromedp.ID("send-kind"), "address"),
		chromedp.SetValue(chromedp.ID("send-await"), "AWAIT_MODE_FRAME"),
		// SetValue fires no change event: the page is told as a person's
		// choice would tell it.
		chromedp.Evaluate[chromedp.Void](`['send-kind', 'send-await'].forEach(id => document.getElementById(id).dispatchEvent(new Event('change')))`),
		chromedp.WaitVisible(chromedp.ID("send-await-framing")),
		chromedp.SetValue(chromedp.ID("send-await-framing"), "FRAMING_MODE_LINE"),
		chromedp.SetValue(chromedp.ID("send-connection"), echo),
		chromedp.SetValue(chromedp.ID("send-payload"), "hello\n"),
		chromedp.Click(chromedp.ID("send-button")),
	)
	if label := eval[string](p, "reading the target's label", `document.getElementById('send-target-label').textContent`); label != "Address" {
		t.Errorf("the target field is labelled %q for an address", label)
	}
	result := p.until("the send result", `(t => t.startsWith('sent') && t)(document.getElementById('send-result').textContent)`)
	if result != "sent 6 bytes to 1 connection(s), reply shown below" {
		t.Errorf("send result %q, want 6 bytes to 1 connection and a reply", result)
	}
	p.until("the reply as text", `(t => t.includes('echo: hello') && t)(document.getElementById('send-reply-text').textContent)`)
	if hex := eval[string](p, "reading the reply's hex", `document.getElementById('send-reply-hex').textContent`); !strings.HasPrefix(hex, "00000000  65 63 68 6f 3a 20 68 65 6c 6c 6f") {
		t.Errorf("the reply's hex dump is %q", hex)
	}
	if vis := eval[bool](p, "reading the reply's visibility", `document.getElementById('send-reply').checkVisibility()`); !vis {
		t.Error("the reply is not shown")
	}

	// A file to every connection of a listener.
	l, err := g.Client.StartListener(context.Background(), &tcpgatev1.StartListenerRequest{Host: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", l.Listener.Address)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// The page lists the connection once the gateway holds it.
	p.until("the client's connection", `document.querySelector('#connections tbody tr') && 'yes'`)
	content := []byte("file\x00bytes\xff\n")
	file := filepath.Join(t.TempDir(), "payload.bin")
	if err := os.WriteFile(file, content, 0o600); err != nil {
		t.Fatal(err)
	}
	p.run("sending a file to a listener's connections",
		chromedp.SetValue(chromedp.ID("send-kind"), "listener"),
		chromedp.SetValue(chromedp.ID("send-format"), "file"),
		chromedp.SetValue(chromedp.ID("send-await"), "AWAIT_MODE_NONE"),
		chromedp.Evaluate[chromedp.Void](`['send-kind', 'send-format', 'send-await'].forEach(id => document.getElementById(id).dispatchEvent(new Event('change')))`),
		chromedp.WaitVisible(chromedp.ID("send-file")),
		chromedp.SetValue(chromedp.ID("send-connection"), l.Listener.ListenerId),
		chromedp.SetUploadFiles(chromedp.ID("send-file"), []string{file}),
		chromedp.Click(chromedp.ID("send-button")),
	)
	got := make([]byte, len(content))
	_ = c.SetReadDeadline(time.Now().Add(waitBound))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != string(content) {
		screenshot(t, ctx, "failure")
		t.Fatalf("the listener's client read %q (%v), want the file's %q", got, err, content)
	}
	result = p.until("the file's send result", `(t => t.startsWith('sent') && t)(document.getElementById('send-result').textContent)`)
	if want := fmt.Sprintf("sent %d bytes to 1 connection(s)", len(content)); result != want {
		t.Errorf("send result %q, want %q", result, want)
	}
	if vis := eval[bool](p, "reading the reply's visibility", `document.getElementById('send-reply').checkVisibility()`); vis {
		t.Error("a reply is still shown for a send that awaited none")
	}

	// The file field names the gateway's limit, and a file over it is
	// refused before anything is sent, naming it.
	if label := eval[string](p, "reading the file's label", `document.getElementById('send-file-label').textContent`); !strings.Contains(label, "at most 64 KiB") {
		t.Errorf("the file field is labelled %q, want the gateway's limit, 64 KiB", label)
	}
	big := filepath.Join(t.TempDir(), "big.bin")
	if err := os.WriteFile(big, make([]byte, limit+1), 0o600); err != nil {
		t.Fatal(err)
	}
	p.run("sending a file over the limit",
		chromedp.SetUploadFiles(chromedp.ID("send-file"), []string{big}),
		chromedp.Click(chromedp.ID("send-button")),
	)
	refused := p.until("the size error", `(t => t.startsWith('send failed') && t)(document.getElementById('send-result').textContent)`)
	if want := "send failed: payload of 65537 bytes is over the gateway's limit of 64 KiB (65536 bytes)"; !strings.HasPrefix(refused, want) {
		t.Errorf("send result %q, want %q", refused, want)
	}
	got2, err := g.Client.GetListener(context.Background(), &tcpgatev1.GetListenerRequest{ListenerId: l.Listener.ListenerId})
	if err != nil {
		t.Fatal(err)
	}
	if out := got2.Listener.BytesOut; out != uint64(len(content)) {
		t.Errorf("the listener wrote %d bytes, want only the first file's %d", out, len(content))
	}
}

// TestConsoleResumesAfterRestart restarts the gateway under an open page
// on the same HTTP port: without a reload, the traffic view shows a
// "gateway restarted" notice and then the new gateway's events, keeps
// what it showed before, and its filters pick rows by connection, kind
// and direction.
func TestConsoleResumesAfterRestart(t *testing.T) {
	first := servertest.Start(t, server.Config{HTTPAddr: "127.0.0.1:0"})
	// The second gateway takes the port the first one chose, so that the
	// page's EventSource finds it again.
	httpAddr := first.Server.HTTPAddr()
	ctx := browser(t, 1280, 800)
	p := page{t, ctx}
	defer screenshot(t, ctx, "resume-end")

	// say starts a line-framed listener on g and has a TCP client send
	// line on it; it returns the connection id the page shows for it.
	say := func(g *servertest.Gateway, line string) string {
		t.Helper()
		l, err := g.Client.StartListener(servertest.Context(t), &tcpgatev1.StartListenerRequest{
			Host: "127.0.0.1", Framing: &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE},
		})
		if err != nil {
			t.Fatal(err)
		}
		c, err := net.Dial("tcp", l.GetListener().GetAddress())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if _, err := c.Write([]byte(line + "\n")); err != nil {
			t.Fatal(err)
		}
		return p.until("the line "+line, rowWith("RECEIVED", "text", line))
	}

	p.run("opening the console", chromedp.Navigate(first.BaseURL+"/"), chromedp.WaitVisible(chromedp.ID("start-form")))
	p.until("the event stream", `document.getElementById('status').textContent === 'live' && 'live'`)
	before := say(first, "before restart")
	if n := eval[int](p, "counting notices", `document.querySelectorAll('#traffic li.notice-restart').length`); n != 0 {
		t.Fatalf("%d restart notices before any restart", n)
	}
	// A reload would lose this.
	eval[bool](p, "marking the page", `window.sameDocument = true`)

	if err := first.Stop(); err != nil {
		t.Fatalf("stopping the first gateway: %v", err)
	}
	p.until("the page to see the gateway go", `document.getElementById('status').textContent !== 'live' && 'gone'`)
	// While it is down, a proxy in front of it answers 502: the browser
	// gives up on a stream answered so, and the page must reopen it
	// itself, from the last id it saw.
	proxyDown(t, httpAddr)
	second := servertest.Start(t, server.Config{HTTPAddr: httpAddr})
	after := say(second, "after restart")

	notice := p.until("the restart notice", `(document.querySelector('#traffic li.notice-restart') || {}).textContent || ''`)
	if !strings.Contains(notice, "gateway restarted") {
		t.Errorf("restart notice %q, want it to say the gateway restarted", notice)
	}
	order := eval[string](p, "reading the rows' order", `[...document.querySelectorAll('#traffic li')].map(li =>
		li.classList.contains('notice-restart') ? 'restart' : (li.querySelector('pre.text') || {}).textContent || '').filter(Boolean).join('|')`)
	if order != "before restart|restart|after restart" {
		t.Errorf("the traffic view shows %q, want the old line, the restart notice, the new line", order)
	}
	if !eval[bool](p, "reading the mark", `window.sameDocument === true`) {
		t.Error("the page was reloaded")
	}
	p.until("the status", `document.getElementById('status').textContent.startsWith('live') && 'live'`)

	// The filters pick what is shown; the notice stays.
	visible := func(what string) string {
		t.Helper()
		return eval[string](p, "reading "+what, `[...document.querySelectorAll('#traffic li')].filter(li => !li.hidden).map(li =>
			li.classList.contains('notice') ? 'notice' : li.dataset.kind + (li.dataset.connection ? ':' + li.dataset.connection : '')).join(' ')`)
	}
	p.run("filtering by connection", chromedp.SendKeys(chromedp.ID("filter-connection"), after))
	if got, want := visible("the rows of one connection"), "notice CONNECTION_OPENED:"+after+" DATA:"+after; got != want {
		t.Errorf("filtered by connection %s: %q, want %q", after, got, want)
	}
	// choose sets a filter as a person's choice does, with its input event.
	choose := func(id, value string) {
		t.Helper()
		eval[bool](p, "setting "+id, fmt.Sprintf(`(el => { el.value = %q; return el.dispatchEvent(new Event('input')); })(document.getElementById(%q))`, value, id))
	}
	choose("filter-connection", "")
	choose("filter-kind", "DATA")
	if got, want := visible("the data rows"), "DATA:"+before+" notice DATA:"+after; got != want {
		t.Errorf("filtered by kind DATA: %q, want %q", got, want)
	}
	choose("filter-kind", "")
	choose("filter-direction", "SENT")
	if got := visible("the sent rows"); got != "notice" {
		t.Errorf("filtered by direction SENT: %q, want only the notice (nothing was sent)", got)
	}
}

// proxyDown serves addr as a proxy whose backend is down would, with
// 502 to every request, until the page's event stream has asked once.
func proxyDown(t *testing.T, addr string) {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("taking the gateway's port %s: %v", addr, err)
	}
	asked := make(chan struct{})
	var once sync.Once
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "backend down", http.StatusBadGateway)
		if r.URL.Path == "/v1/events" {
			// Sent before the proxy closes: the browser reads a 502.
			_ = http.NewResponseController(w).Flush()
			once.Do(func() { close(asked) })
		}
	})}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case <-asked:
	case <-time.After(waitBound):
		t.Errorf("the page's event stream did not come back within %v", waitBound)
	}
	if err := srv.Close(); err != nil {
		t.Errorf("closing the proxy: %v", err)
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		t.Errorf("the proxy: %v", err)
	}
}

// TestConsoleShowsClosesAndReconnects has a managed outbound connection
// lose its peer and then fail to dial again: the traffic view shows the
// close with its reason and each scheduled reconnect with its attempt
// and error, both styled apart from data.
func TestConsoleShowsClosesAndReconnects(t *testing.T) {
	g := servertest.Start(t, server.Config{HTTPAddr: "127.0.0.1:0"})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// The peer takes one connection and hangs up; its port then refuses.
	accepted := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			err = c.Close()
		}
		ln.Close()
		accepted <- err
	}()
	p := page{t, browser(t, 1280, 800)}
	defer screenshot(t, p.ctx, "reconnects-end")
	p.run("opening the console", chromedp.Navigate(g.BaseURL+"/"), chromedp.WaitVisible(chromedp.ID("start-form")))
	p.until("the event stream", `document.getElementById('status').textContent === 'live' && 'live'`)

	resp, err := g.Client.Connect(servertest.Context(t), &tcpgatev1.ConnectRequest{
		Address:   ln.Addr().String(),
		Reconnect: &tcpgatev1.Reconnect{InitialBackoff: durationpb.New(50 * time.Millisecond), MaxBackoff: durationpb.New(200 * time.Millisecond)},
	})
	if err != nil {
		t.Fatalf("connecting to the peer: %v", err)
	}
	if err := <-accepted; err != nil {
		t.Fatalf("the peer: %v", err)
	}
	id := resp.GetConnection().GetConnectionId()
	row := func(kind, want string) string {
		return fmt.Sprintf(`(() => {
			for (const li of document.querySelectorAll('#traffic li.kind-%s[data-connection=%q]')) {
				if (li.textContent.includes(%q)) return li.textContent;
			}
			return '';
		})()`, kind, id, want)
	}
	closed := p.until("the close with its reason", row("CONNECTION_CLOSED", "PEER_CLOSED"))
	if !strings.Contains(closed, "generation 1") {
		t.Errorf("close row %q, want the socket's generation 1", closed)
	}
	p.until("a reconnect with its attempt", row("RECONNECT_SCHEDULED", "attempt 1 in"))
	refused := p.until("a failed reconnect with its error", row("RECONNECT_SCHEDULED", "refused"))
	if !strings.Contains(refused, "attempt") {
		t.Errorf("reconnect row %q, want its attempt", refused)
	}
	// Each kind has a look of its own: a data row has no left border.
	styles := eval[string](p, "reading the rows' styles", fmt.Sprintf(`['CONNECTION_CLOSED', 'RECONNECT_SCHEDULED'].map(k =>
		getComputedStyle(document.querySelector('#traffic li.kind-' + k + '[data-connection=%q]')).borderLeftStyle).join(' ')`, id))
	if styles != "solid dashed" {
		t.Errorf("close and reconnect rows have left borders %q, want solid and dashed", styles)
	}
	if _, err := g.Client.CloseConnection(servertest.Context(t), &tcpgatev1.CloseConnectionRequest{ConnectionId: id}); err != nil {
		t.Errorf("closing the outbound connection: %v", err)
	}
}

// TestConsoleShowsDrops cuts the page off its gateway (a proxy between
// them drops the stream and answers 502) while a TCP client sends more
// than the gateway's replay ring holds: when the proxy is back, the page
// resumes by itself from the last event it saw, says how many events it
// missed, and shows the newest line.
func TestConsoleShowsDrops(t *testing.T) {
	g := servertest.Start(t, server.Config{HTTPAddr: "127.0.0.1:0", ReplayBytes: 4 << 10})
	proxy := newCutProxy(t, g.BaseURL)
	p := page{t, browser(t, 1280, 800)}
	defer screenshot(t, p.ctx, "drops-end")

	l, err := g.Client.StartListener(servertest.Context(t), &tcpgatev1.StartListenerRequest{
		Host: "127.0.0.1", Framing: &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE},
	})
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", l.GetListener().GetAddress())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	p.run("opening the console", chromedp.Navigate(proxy.url+"/"), chromedp.WaitVisible(chromedp.ID("start-form")))
	if _, err := c.Write([]byte("seen\n")); err != nil {
		t.Fatal(err)
	}
	p.until("the first line", rowWith("RECEIVED", "text", "seen"))

	proxy.cut()
	p.until("the page to lose its stream", `document.getElementById('status').textContent !== 'live' && 'lost'`)
	// 200 lines of 100 bytes: five times what the ring holds.
	const lines = 200
	line := strings.Repeat("x", 99) + "\n"
	for range lines - 1 {
		if _, err := c.Write([]byte(line)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Write([]byte("newest\n")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(waitBound)
	for {
		got, err := g.Client.GetListener(servertest.Context(t), &tcpgatev1.GetListenerRequest{ListenerId: l.GetListener().GetListenerId()})
		if err != nil {
			t.Fatal(err)
		}
		if got.GetListener().GetFramesIn() == lines+1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the gateway read %d frames, want %d", got.GetListener().GetFramesIn(), lines+1)
		}
		time.Sleep(20 * time.Millisecond)
	}
	proxy.restore()

	notice := p.until("the drop notice", `(document.querySelector('#traffic li.notice-dropped') || {}).textContent || ''`)
	var n int
	if _, err := fmt.Sscanf(notice, "%d events dropped", &n); err != nil || n <= 0 || n > lines {
		t.Errorf("drop notice %q, want a count of the missed events (1 to %d)", notice, lines)
	}
	p.until("the newest line", rowWith("RECEIVED", "text", "newest"))
	shown := eval[int](p, "counting the data rows", `document.querySelectorAll('#traffic li.kind-DATA').length`)
	if shown+n != lines+1 {
		t.Errorf("%d data rows and %d dropped, want %d lines in all", shown, n, lines+1)
	}
	if eval[int](p, "counting restart notices", `document.querySelectorAll('#traffic li.notice-restart').length`) != 0 {
		t.Error("a restart notice, but the gateway did not restart")
	}
}

// cutProxy stands between the page and its gateway, and can cut it off.
type cutProxy struct {
	url string
	mu  sync.Mutex
	// down and streams are guarded by mu: while down, every request gets
	// 502; streams cancels the requests in flight.
	down    bool
	streams map[*http.Request]context.CancelFunc
}

func newCutProxy(t *testing.T, target string) *cutProxy {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{streams: map[*http.Request]context.CancelFunc{}}
	rp := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(u)
			r.Out.Host = r.In.Host // the page's own origin, as a proxy keeps it
		},
		FlushInterval: -1,
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.url = "http://" + ln.Addr().String()
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithCancel(r.Context())
		defer cancel()
		p.mu.Lock()
		down := p.down
		if !down {
			p.streams[r] = cancel
		}
		p.mu.Unlock()
		if down {
			http.Error(w, "backend down", http.StatusBadGateway)
			return
		}
		defer func() {
			p.mu.Lock()
			delete(p.streams, r)
			p.mu.Unlock()
		}()
		rp.ServeHTTP(w, r.WithContext(ctx))
	})}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("the proxy: %v", err)
		}
	})
	return p
}

func (p *cutProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = true
	for _, cancel := range p.streams {
		cancel()
	}
}

func (p *cutProxy) restore() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = false
}

// TestConsoleReplyRules starts a line listener with two reply rules added
// on the page (an exact match and a regex with a capture): a plain TCP
// client gets each rule's reply, the listeners table counts the rules,
// and a rule whose regex does not compile is refused with its field named
// on the page.
func TestConsoleReplyRules(t *testing.T) {
	g := servertest.Start(t, server.Config{HTTPAddr: "127.0.0.1:0"})
	ctx := browser(t, 1280, 800)
	p := page{t, ctx}
	defer screenshot(t, ctx, "end")
	p.run("opening the console", chromedp.Navigate(g.BaseURL+"/"), chromedp.WaitVisible(chromedp.ID("start-form")))

	sel := func(label string) chromedp.CSS {
		return chromedp.CSS(fmt.Sprintf(`#rules-list [aria-label=%q]`, label))
	}
	p.run("adding two rules",
		chromedp.Click(chromedp.ID("rules-add")),
		chromedp.Click(chromedp.ID("rules-add")),
		chromedp.WaitVisible(sel("Rule 2 kind")),
		chromedp.SetValue(sel("Rule 1 kind"), "MATCH_KIND_EXACT"),
		chromedp.SendKeys(sel("Rule 1 match"), "PING"),
		chromedp.SendKeys(sel("Rule 1 reply"), "PONG"),
		chromedp.SetValue(sel("Rule 2 kind"), "MATCH_KIND_REGEX"),
		chromedp.SendKeys(sel("Rule 2 match"), `^GET (\w+)$`),
		chromedp.SendKeys(sel("Rule 2 reply"), "VALUE {{1}}"),
		chromedp.SetValue(chromedp.ID("start-framing"), "FRAMING_MODE_LINE"),
		chromedp.Click(chromedp.ID("start-button")),
	)
	result := p.until("the start result", `(t => t.startsWith('start') && t)(document.getElementById('start-result').textContent)`)
	if !strings.HasPrefix(result, "started ") {
		t.Fatalf("start result %q", result)
	}
	addr := result[strings.LastIndex(result, " ")+1:]
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(waitBound))
	r := bufio.NewReader(c)
	for _, tc := range []struct{ send, want string }{{"PING\n", "PONG\n"}, {"GET x\n", "VALUE x\n"}} {
		if _, err := io.WriteString(c, tc.send); err != nil {
			t.Fatal(err)
		}
		got, err := r.ReadString('\n')
		if err != nil || got != tc.want {
			t.Fatalf("sent %q, read %q (%v), want %q", tc.send, got, err, tc.want)
		}
	}
	id := strings.Fields(result)[1]
	p.until("the listener's rule count", fmt.Sprintf(`(() => { const r = document.querySelector('#listeners tbody tr[data-id=%q]'); return r && r.cells[9].textContent === '2' ? 'yes' : ''; })()`, id))
	ls, err := g.Client.GetListener(context.Background(), &tcpgatev1.GetListenerRequest{ListenerId: id})
	if err != nil {
		t.Fatal(err)
	}
	rules := ls.Listener.GetAutoReply().GetRules()
	if len(rules) != 2 || rules[0].GetText() != "PING" || rules[1].GetRegex() != `^GET (\w+)$` || rules[1].GetText() != "" {
		t.Errorf("the gateway holds rules %v, want PING as text then the regex as regex", rules)
	}

	// Removing the first rule leaves the regex one as rule 1; a bad regex
	// there is refused, naming its field.
	p.run("removing rule 1 and breaking the regex",
		chromedp.Click(sel("Remove rule 1")),
		chromedp.WaitNotPresent(sel("Rule 2 kind")),
		chromedp.SetValue(sel("Rule 1 match"), "("),
		chromedp.Click(chromedp.ID("start-button")),
	)
	refused := p.until("the refusal", `(t => t.startsWith('start failed') && t)(document.getElementById('start-result').textContent)`)
	if !strings.Contains(refused, "auto_reply.rules[0].regex") {
		t.Errorf("start result %q does not name auto_reply.rules[0].regex", refused)
	}
	if !eval[bool](p, "reading the result's style", `document.getElementById('start-result').classList.contains('error')`) {
		t.Error("the refusal is not shown as an error")
	}
	// ...and on the rule's own row, with its match field marked.
	if got := eval[string](p, "reading rule 1's error", ruleError(1)); !strings.Contains(got, "auto_reply.rules[0].regex") {
		t.Errorf("rule 1's row shows %q, want the refusal of its regex", got)
	}
	if inv := eval[string](p, "reading the match's state", `document.querySelector('#rules-list [aria-label="Rule 1 match"]').getAttribute('aria-invalid') || ''`); inv != "true" {
		t.Errorf("rule 1's match has aria-invalid %q, want true", inv)
	}
	all, err := g.Client.ListListeners(context.Background(), &tcpgatev1.ListListenersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(all.Listeners); n != 1 {
		t.Errorf("%d listeners after the refusal, want only the first", n)
	}
}

// ruleError is the expression of the error shown on rule n's row.
func ruleError(n int) string {
	return fmt.Sprintf(`(document.querySelector('#rules-list [aria-label="Rule %d error"]') || {}).textContent || ''`, n)
}

// TestConsoleReplyRuleBytes gives rules the rest of what the API's
// ReplyRule takes, from the page: a match and a reply in hex, raw, a
// delay and a name. A plain TCP client gets the bytes and the delayed
// line, the gateway holds the rules as the page set them, and a rule the
// page or the gateway refuses is marked on its own row, not another's.
func TestConsoleReplyRuleBytes(t *testing.T) {
	g := servertest.Start(t, server.Config{HTTPAddr: "127.0.0.1:0"})
	p := page{t, browser(t, 1280, 800)}
	defer screenshot(t, p.ctx, "rule-bytes-end")
	p.run("opening the console", chromedp.Navigate(g.BaseURL+"/"), chromedp.WaitVisible(chromedp.ID("start-form")))
	sel := func(label string) chromedp.CSS {
		return chromedp.CSS(fmt.Sprintf(`#rules-list [aria-label=%q]`, label))
	}
	p.run("adding a bytes rule and a delayed, named one",
		chromedp.Click(chromedp.ID("rules-add")),
		chromedp.Click(chromedp.ID("rules-add")),
		chromedp.WaitVisible(sel("Rule 2 kind")),
		chromedp.SetValue(sel("Rule 1 kind"), "MATCH_KIND_EXACT"),
		chromedp.SetValue(sel("Rule 1 match as"), "hex"),
		chromedp.SendKeys(sel("Rule 1 match"), "01 02"),
		chromedp.SetValue(sel("Rule 1 reply as"), "hex"),
		chromedp.SendKeys(sel("Rule 1 reply"), "ff fe"),
		chromedp.Click(sel("Rule 1 raw, without the framing")),
		chromedp.SetValue(sel("Rule 2 kind"), "MATCH_KIND_PREFIX"),
		chromedp.SendKeys(sel("Rule 2 match"), "SLOW"),
		chromedp.SendKeys(sel("Rule 2 reply"), "LATE"),
		chromedp.SendKeys(sel("Rule 2 delay"), "250ms"),
		chromedp.SendKeys(sel("Rule 2 name"), "slow-rule"),
		chromedp.SetValue(chromedp.ID("start-framing"), "FRAMING_MODE_LINE"),
		chromedp.Click(chromedp.ID("start-button")),
	)
	result := p.until("the start result", `(t => t.startsWith('start') && t)(document.getElementById('start-result').textContent)`)
	if !strings.HasPrefix(result, "started ") {
		t.Fatalf("start result %q", result)
	}
	id, addr := strings.Fields(result)[1], result[strings.LastIndex(result, " ")+1:]
	ls, err := g.Client.GetListener(servertest.Context(t), &tcpgatev1.GetListenerRequest{ListenerId: id})
	if err != nil {
		t.Fatal(err)
	}
	rules := ls.GetListener().GetAutoReply().GetRules()
	if len(rules) != 2 {
		t.Fatalf("the gateway holds %d rules, want 2: %v", len(rules), rules)
	}
	if r := rules[0]; string(r.GetData()) != "\x01\x02" || string(r.GetReplyData()) != "\xff\xfe" || !r.GetRaw() || r.GetDelay() != nil || r.GetName() != "" {
		t.Errorf("rule 1 is %v, want data 01 02, reply_data ff fe, raw, no delay, no name", r)
	}
	if r := rules[1]; r.GetText() != "SLOW" || r.GetReplyText() != "LATE" || r.GetRaw() || r.GetDelay().AsDuration() != 250*time.Millisecond || r.GetName() != "slow-rule" {
		t.Errorf("rule 2 is %v, want text SLOW, reply LATE, framed, delay 250ms, name slow-rule", r)
	}

	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(waitBound))
	// The raw reply has no newline: the next line's reply follows it.
	if _, err := c.Write([]byte("\x01\x02\nSLOW down\n")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len("\xff\xfeLATE\n"))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "\xff\xfeLATE\n" {
		t.Fatalf("the client read %q (%v), want ff fe raw, then LATE and a newline", got, err)
	}

	// The page refuses bad hex in rule 2 itself; the gateway refuses a
	// bad name in rule 2; each is shown on rule 2's row, none on rule 1's.
	for _, tc := range []struct {
		name, label, value, want string
	}{
		{"bad hex", "Rule 2 match as", "hex", "auto_reply.rules[1].data: hex payload"},
		{"a name the gateway refuses", "Rule 2 name", "not a name!", "auto_reply.rules[1].name"},
	} {
		p.run(tc.name,
			chromedp.SetValue(sel("Rule 2 match as"), "text"),
			chromedp.SetValue(sel("Rule 2 name"), "slow-rule"),
			chromedp.SetValue(sel(tc.label), tc.value),
			chromedp.Evaluate[chromedp.Void](`document.getElementById('start-result').textContent = ''`),
			chromedp.Click(chromedp.ID("start-button")),
		)
		p.until(tc.name+" refused", `(t => t.startsWith('start failed') && t)(document.getElementById('start-result').textContent)`)
		if got := eval[string](p, "reading rule 2's error", ruleError(2)); !strings.Contains(got, tc.want) {
			t.Errorf("%s: rule 2's row shows %q, want %q", tc.name, got, tc.want)
		}
		if got := eval[string](p, "reading rule 1's error", ruleError(1)); got != "" {
			t.Errorf("%s: rule 1's row shows %q, want nothing", tc.name, got)
		}
	}
	all, err := g.Client.ListListeners(servertest.Context(t), &tcpgatev1.ListListenersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(all.Listeners); n != 1 {
		t.Errorf("%d listeners after the refusals, want only the first", n)
	}
}

// TestConsoleSessionEnds revokes the page's session while it is open (a
// logout elsewhere, with the same cookie): the page goes back to its
// login saying the session ended, and once logged in again it resumes
// where it was, the traffic view from its last event, with what was
// said in between, and without a reload.
func TestConsoleSessionEnds(t *testing.T) {
	const token = "console-s3cret"
	g := servertest.Start(t, server.Config{HTTPAddr: "127.0.0.1:0", AuthToken: token})
	ctx := browser(t, 1280, 800)
	p := page{t, ctx}
	defer screenshot(t, ctx, "session-end")
	authed := metadata.AppendToOutgoingContext(servertest.Context(t), "authorization", "Bearer "+token)
	l, err := g.Client.StartListener(authed, &tcpgatev1.StartListenerRequest{
		Host: "127.0.0.1", Framing: &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE},
	})
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", l.GetListener().GetAddress())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	logIn := func(what string) {
		t.Helper()
		p.run(what, chromedp.WaitVisible(chromedp.ID("login-form")),
			chromedp.SendKeys(chromedp.ID("login-token"), token),
			chromedp.Click(chromedp.ID("login-button")),
			chromedp.WaitVisible(chromedp.ID("start-form")))
	}
	p.run("opening the console", chromedp.Navigate(g.BaseURL+"/"))
	logIn("logging in")
	eval[bool](p, "marking the page", `window.sameDocument = true`)
	if _, err := c.Write([]byte("before\n")); err != nil {
		t.Fatal(err)
	}
	p.until("the line before", rowWith("RECEIVED", "text", "before"))

	// Log the page's session out from elsewhere, with its own cookie.
	cookies, err := chromedp.Call(ctx, network.GetCookies, network.GetCookiesParams{URLs: []string{g.BaseURL}})
	if err != nil {
		t.Fatal(err)
	}
	var cookie *network.Cookie
	for _, ck := range cookies.Cookies {
		if ck.Name == "tcpgate_session" {
			cookie = ck
		}
	}
	if cookie == nil {
		t.Fatalf("the browser holds no session cookie: %v", cookies.Cookies)
	}
	resp, body := g.REST.Do(http.MethodDelete, "/v1/session", "", http.Header{
		"Cookie": {cookie.Name + "=" + cookie.Value}, "Origin": {g.BaseURL},
	})
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("logging the session out: %d %s", resp.StatusCode, body)
	}

	msg := p.until("the login again", `(() => { const l = document.getElementById('login');
		return !l.hidden && document.getElementById('app').hidden ? document.getElementById('login-result').textContent : ''; })()`)
	if !strings.Contains(msg, "session ended") {
		t.Errorf("the login says %q, want that the session ended", msg)
	}
	if st := eval[string](p, "reading the status", `document.getElementById('status').textContent`); st != "session ended" {
		t.Errorf("status %q, want session ended", st)
	}
	// Said while the page is logged out: the stream it resumes has it.
	if _, err := c.Write([]byte("while away\n")); err != nil {
		t.Fatal(err)
	}
	logIn("logging in again")
	p.until("the line said while away", rowWith("RECEIVED", "text", "while away"))
	p.until("the status", `document.getElementById('status').textContent === 'live' && 'live'`)
	order := eval[string](p, "reading the rows' order", `[...document.querySelectorAll('#traffic li')].map(li =>
		li.classList.contains('notice') ? li.className.replace('notice notice-', '') : (li.querySelector('pre.text') || {}).textContent || '').filter(Boolean).join('|')`)
	if order != "before|resumed|while away" {
		t.Errorf("the traffic view shows %q, want the line before, a resume, the line while away, once each", order)
	}
	if !eval[bool](p, "reading the mark", `window.sameDocument === true`) {
		t.Error("the page was reloaded")
	}
	// The polls run again: a listener started elsewhere shows.
	if _, err := g.Client.StartListener(authed, &tcpgatev1.StartListenerRequest{ListenerId: "later", Host: "127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	p.until("the later listener's row", `document.querySelector('#listeners tbody tr[data-id="later"]') && 'yes'`)
}

// TestConsoleBurstOverCap sends a burst of 5,000 lines, five times the
// rows the traffic view keeps, to a page that follows the stream and to
// one that is paused: each counts all 5,000 (and the connection's
// CONNECTION_OPENED), keeps at most 1,000 rows, and shows the newest
// lines in order; the paused one holds no more than twice the cap while
// paused, and on resuming says how many older events it did not show.
func TestConsoleBurstOverCap(t *testing.T) {
	const (
		lines  = 5000
		events = lines + 1 // and the CONNECTION_OPENED
		rowCap = 1000      // MAX_ROWS in app.js
	)
	var burst strings.Builder
	for i := 1; i <= lines; i++ {
		fmt.Fprintf(&burst, "burst %05d\n", i)
	}
	// dataRows yields the numbers of the burst's DATA rows in the view, in
	// their order, and the view's rows, notes included.
	const dataRows = `(() => {
		const list = document.getElementById('traffic');
		const nums = [...list.querySelectorAll('li.kind-DATA pre.text')].map((p) => Number(p.textContent.slice(6)));
		return { nums, rows: list.children.length };
	})()`
	type view struct {
		Nums []int `json:"nums"`
		Rows int   `json:"rows"`
	}
	for _, tc := range []struct {
		name   string
		paused bool
	}{
		{"following the stream", false},
		{"paused, then resumed", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := servertest.Start(t, server.Config{HTTPAddr: "127.0.0.1:0"})
			l, err := g.Client.StartListener(servertest.Context(t), &tcpgatev1.StartListenerRequest{
				Host: "127.0.0.1", Framing: &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE},
			})
			if err != nil {
				t.Fatal(err)
			}
			p := page{t, browser(t, 1280, 800)}
			defer screenshot(t, p.ctx, "burst-end")
			p.run("opening the console", chromedp.Navigate(g.BaseURL+"/"), chromedp.WaitVisible(chromedp.ID("start-form")))
			p.until("the event stream", `document.getElementById('status').textContent === 'live' && 'live'`)
			base := eval[int](p, "reading the count", `Number(document.getElementById('traffic-count').dataset.total || 0)`)
			if tc.paused {
				// With hex shown, rows built on resuming have their hex
				// dump made with them.
				p.run("pausing, showing hex", chromedp.Click(chromedp.ID("pause")), chromedp.Click(chromedp.ID("show-hex")))
			}
			c, err := net.Dial("tcp", l.GetListener().GetAddress())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := io.WriteString(c, burst.String()); err != nil {
				t.Fatal(err)
			}
			counted := fmt.Sprintf(`(c => Number(c.dataset.total) === %d && c.dataset.buffered)(document.getElementById('traffic-count'))`, base+events)
			if tc.paused {
				held := p.until("every event counted while paused", counted)
				if n, err := strconv.Atoi(held); err != nil || n < 1 || n > 2*rowCap {
					t.Errorf("%s events held while paused, want 1 to %d", held, 2*rowCap)
				}
				if v := eval[view](p, "reading the paused view", dataRows); len(v.Nums) != 0 {
					t.Errorf("%d lines shown while paused", len(v.Nums))
				}
				p.run("resuming", chromedp.Click(chromedp.ID("pause")))
			}
			p.until("every event counted and nothing buffered", fmt.Sprintf(`(c => Number(c.dataset.total) === %d && c.dataset.buffered === '0' && 'yes')(document.getElementById('traffic-count'))`, base+events))
			if text := eval[string](p, "reading the count", `document.getElementById('traffic-count').textContent`); text != fmt.Sprintf("%d events", base+events) {
				t.Errorf("the count says %q, want %d events", text, base+events)
			}

			v := eval[view](p, "reading the view", dataRows)
			if v.Rows != rowCap {
				t.Errorf("the view holds %d rows, want its cap of %d", v.Rows, rowCap)
			}
			if len(v.Nums) == 0 || v.Nums[len(v.Nums)-1] != lines {
				t.Fatalf("the newest line shown is not burst %05d: %v", lines, v.Nums[max(0, len(v.Nums)-3):])
			}
			for i, n := range v.Nums {
				if want := lines - len(v.Nums) + 1 + i; n != want {
					t.Fatalf("row %d of the burst is line %d, want %d: the newest lines in order", i, n, want)
				}
			}
			if tc.paused {
				// "burst 05000" in hex.
				p.until("the newest line in hex", rowWith("RECEIVED", "hex", "00000000  62 75 72 73 74 20 30 35 30 30 30"))
			}
			note := eval[string](p, "reading the note", `(document.querySelector('#traffic li.notice-skipped') || {}).textContent || ''`)
			if !tc.paused {
				// How many a following page skips depends on how fast it
				// renders; what it says must still add up.
				if note != "" {
					var n int
					if _, err := fmt.Sscanf(note, "%d older events not shown", &n); err != nil || n < 1 || n > events-len(v.Nums) {
						t.Errorf("note %q, want a count of 1 to %d older events", note, events-len(v.Nums))
					}
				}
				return
			}
			// Paused, the page built rows for the newest events only: the
			// note and 999 lines fill the view, and the note counts the rest.
			if len(v.Nums) != rowCap-1 {
				t.Errorf("%d lines shown after resuming, want %d", len(v.Nums), rowCap-1)
			}
			if want := fmt.Sprintf("%d older events not shown: the view keeps the newest %d", events-(rowCap-1), rowCap); note != want {
				t.Errorf("the note says %q, want %q", note, want)
			}
		})
	}
}
