package listener_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tcpgate/tcpgate/server/internal/conn"
	"github.com/tcpgate/tcpgate/server/internal/event"
	"github.com/tcpgate/tcpgate/server/internal/framing"
	"github.com/tcpgate/tcpgate/server/internal/listener"
	"github.com/tcpgate/tcpgate/server/internal/registry"
	"github.com/tcpgate/tcpgate/server/servertest/record"
)

func TestStartIDs(t *testing.T) {
	r, rec := newRegistry(t, listener.Config{})
	tests := []struct {
		id   string
		want string
	}{
		{"", `^l-[a-z2-7]{10}$`},           // generated: random, unique across restarts
		{"l-aaaaaaaaaa", `^l-aaaaaaaaaa$`}, // caller-chosen, in the generated form
		{"", `^l-[a-z2-7]{10}$`},
		{"my-listener", `^my-listener$`},
	}
	got := make([]string, len(tests))
	for i, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			info := start(t, r, listener.Spec{ID: tt.id})
			got[i] = info.ID
			if !regexp.MustCompile(tt.want).MatchString(info.ID) {
				t.Errorf("ID = %q, want %s", info.ID, tt.want)
			}
			host, port, err := net.SplitHostPort(info.Address)
			if err != nil || host != "127.0.0.1" || port == "0" {
				t.Errorf("Address = %q, want 127.0.0.1 and the port bound", info.Address)
			}
			if info.State != listener.Listening {
				t.Errorf("State = %v, want Listening", info.State)
			}
			if info.Framing.MaxFrameBytes != framing.DefaultMaxFrameBytes {
				t.Errorf("Framing not normalized: %+v", info.Framing)
			}
			if ok, err := refused(info.Address); ok || err != nil {
				t.Errorf("dialing the new listener: refused=%v err=%v", ok, err)
			}
			got, err := r.Get(info.ID)
			if err != nil || got.Address != info.Address {
				t.Errorf("Get(%q) = %+v, %v", info.ID, got, err)
			}
		})
	}
	started := ofKind(rec.Events(), event.ListenerStarted)
	if len(started) != len(tests) {
		t.Fatalf("%d listener_started events, want %d", len(started), len(tests))
	}
	list := r.List()
	if len(list) != len(tests) {
		t.Fatalf("List has %d listeners, want %d", len(list), len(tests))
	}
	for i, want := range got {
		if list[i].ID != want {
			t.Errorf("List[%d] = %q, want %q (oldest first)", i, list[i].ID, want)
		}
		if started[i].ListenerID != want || started[i].LocalAddr != list[i].Address {
			t.Errorf("listener_started %d: %q at %q, want %q at %q", i, started[i].ListenerID, started[i].LocalAddr, want, list[i].Address)
		}
	}
}

func TestStartErrors(t *testing.T) {
	r, rec := newRegistry(t, listener.Config{})
	taken := start(t, r, listener.Spec{ID: "taken"})

	other, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	busyPort := other.Addr().(*net.TCPAddr).Port

	tests := []struct {
		name    string
		spec    listener.Spec
		want    error
		mention string
	}{
		{"duplicate id", listener.Spec{ID: "taken", Host: "127.0.0.1"}, listener.ErrExists, `"taken"`},
		{"port in use by another program", listener.Spec{Host: "127.0.0.1", Port: busyPort}, listener.ErrAddressInUse,
			"127.0.0.1:" + strconv.Itoa(busyPort)},
		{"port in use by another listener", listener.Spec{Host: "127.0.0.1", Port: mustPort(t, taken.Address)}, listener.ErrAddressInUse,
			taken.Address},
		{"address not on this machine", listener.Spec{Host: "192.0.2.1"}, listener.ErrAddressNotUsable, "192.0.2.1:0"},
		{"port out of range", listener.Spec{Host: "127.0.0.1", Port: 70000}, listener.ErrAddressNotUsable, "70000"},
		{"invalid framing", listener.Spec{Host: "127.0.0.1", Framing: framing.Config{Mode: framing.Delimiter}}, framing.ErrInvalidConfig,
			"framing.delimiter"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(rec.Events())
			info, err := r.Start(context.Background(), tt.spec)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Start = %+v, %v; want %v", info, err, tt.want)
			}
			if !strings.Contains(err.Error(), tt.mention) {
				t.Errorf("error %q does not mention %q", err, tt.mention)
			}
			if n := len(rec.Events()); n != before {
				t.Errorf("a failed Start published %d events", n-before)
			}
		})
	}
	if list := r.List(); len(list) != 1 || list[0].ID != "taken" {
		t.Errorf("List after failed starts = %+v, want only the listener that started", list)
	}
	// A failed bind does not keep the id.
	spec := listener.Spec{ID: "retry", Host: "127.0.0.1", Port: busyPort}
	if _, err := r.Start(context.Background(), spec); !errors.Is(err, listener.ErrAddressInUse) {
		t.Fatalf("Start on a busy port = %v", err)
	}
	spec.Port = 0
	if _, err := r.Start(context.Background(), spec); err != nil {
		t.Errorf("Start with the id of a failed start: %v", err)
	}
}

func mustPort(t *testing.T, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// "0.0.0.0" is IPv4 only, as asked, not Go's dual-stack default.
func TestStartIPv4Any(t *testing.T) {
	r, _ := newRegistry(t, listener.Config{})
	info, err := r.Start(context.Background(), listener.Spec{Host: "0.0.0.0"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(info.Address, "0.0.0.0:") {
		t.Fatalf("Address = %q, want 0.0.0.0:PORT", info.Address)
	}
	port := mustPort(t, info.Address)
	c := dial(t, "127.0.0.1:"+strconv.Itoa(port))
	_ = c.Close()
	// An IPv4-only socket leaves the IPv6 side of the port free.
	ln6, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback here: %v", err)
	}
	_ = ln6.Close()
	ln6, err = net.Listen("tcp6", "[::]:"+strconv.Itoa(port))
	if err != nil {
		t.Fatalf("the IPv6 side of port %d is taken: 0.0.0.0 was bound dual-stack: %v", port, err)
	}
	_ = ln6.Close()

	// Empty host means 0.0.0.0.
	def, err := r.Start(context.Background(), listener.Spec{})
	if err != nil {
		t.Fatal(err)
	}
	if def.Host != listener.DefaultHost || !strings.HasPrefix(def.Address, "0.0.0.0:") {
		t.Errorf("empty host: Host %q Address %q, want %s", def.Host, def.Address, listener.DefaultHost)
	}
}

func TestMaxListeners(t *testing.T) {
	r, _ := newRegistry(t, listener.Config{MaxListeners: 2})
	a := start(t, r, listener.Spec{})
	start(t, r, listener.Spec{})
	_, err := r.Start(context.Background(), listener.Spec{Host: "127.0.0.1"})
	if !errors.Is(err, listener.ErrLimit) || !strings.Contains(err.Error(), "2") {
		t.Fatalf("third Start = %v, want ErrLimit naming the bound 2", err)
	}
	if _, err := r.Stop(ctx(t), a.ID, 0); err != nil {
		t.Fatal(err)
	}
	start(t, r, listener.Spec{}) // room again
}

// Stop with a drain: the port closes at once, open connections keep working
// until they close or the drain ends, and Stop returns when all are closed.
func TestStopDrains(t *testing.T) {
	r, rec := newRegistry(t, listener.Config{})
	info := start(t, r, listener.Spec{ID: "web", Framing: lines(), AutoReply: conn.AutoReply{Mode: conn.Echo}})

	working := dial(t, info.Address) // keeps talking during the drain, then stays
	leaving := dial(t, info.Address) // closes during the drain
	workingID, leavingID := connID(t, r, working), connID(t, r, leaving)
	rec.waitCount(t, event.ConnectionOpened, 2)

	const drain = 300 * time.Millisecond
	type result struct {
		info listener.Info
		err  error
	}
	stopped := make(chan result, 1)
	go func() {
		i, err := r.Stop(ctx(t), "web", drain)
		stopped <- result{i, err}
	}()

	waitState(t, r, "web", listener.Draining)
	if ok, err := refused(info.Address); !ok {
		t.Errorf("a new dial during the drain was not refused (err %v)", err)
	}
	echo(t, working, "still here")
	_ = leaving.Close()
	if got := rec.waitClosed(t, leavingID); got != event.ReasonPeerClosed {
		t.Errorf("connection closed during the drain: reason %v, want peer_closed", got)
	}

	var res result
	select {
	case res = <-stopped:
	case <-time.After(testTimeout):
		t.Fatal("Stop did not return")
	}
	if res.err != nil {
		t.Fatalf("Stop: %v", res.err)
	}
	if got := closeEvent(rec.Events(), workingID); got == nil || got.CloseReason != event.ReasonListenerStopped {
		t.Errorf("connection open at the deadline: close event %+v, want reason listener_stopped, before Stop returned", got)
	}
	if got := readAll(t, working); got != "" {
		t.Errorf("after the drain the client read %q, want EOF", got)
	}
	if res.info.State != listener.Stopped || res.info.ConnectionsActive != 0 || res.info.ConnectionsTotal != 2 {
		t.Errorf("final Info: state %v, %d active, %d total; want Stopped, 0, 2", res.info.State, res.info.ConnectionsActive, res.info.ConnectionsTotal)
	}
	if res.info.BytesIn != uint64(len("still here\n")) || res.info.FramesIn != 1 || res.info.BytesOut != uint64(len("still here\n")) {
		t.Errorf("final Info counters: %d bytes %d frames in, %d bytes out", res.info.BytesIn, res.info.FramesIn, res.info.BytesOut)
	}
	portFree(t, info.Address)

	evs := rec.Events()
	if evs[0].Kind != event.ListenerStarted {
		t.Errorf("first event %v, want listener_started", evs[0].Kind)
	}
	if last := evs[len(evs)-1]; last.Kind != event.ListenerStopped || last.ListenerID != "web" || last.LocalAddr != info.Address {
		t.Errorf("last event %v %s %s, want listener_stopped of web at %s:\n%s", last.Kind, last.ListenerID, last.LocalAddr, info.Address, record.Describe(evs))
	}
	if n := len(ofKind(evs, event.ConnectionClosed)); n != 2 {
		t.Errorf("%d connection_closed events, want 2", n)
	}
}

// waitState waits until Get reports state for id.
func waitState(t *testing.T, r *gateway, id string, state listener.State) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for time.Now().Before(deadline) {
		if info, err := r.Get(id); err == nil && info.State == state {
			return
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatalf("listener %s never reached state %v", id, state)
}

// Stop returns as soon as the last connection closes, not at the end of a
// long drain.
func TestStopDrainEndsEarly(t *testing.T) {
	r, rec := newRegistry(t, listener.Config{})
	info := start(t, r, listener.Spec{})
	c := dial(t, info.Address)
	id := connID(t, r, c)
	done := make(chan error, 1)
	go func() {
		_, err := r.Stop(ctx(t), info.ID, longDrain)
		done <- err
	}()
	waitState(t, r, info.ID, listener.Draining)
	_ = c.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(testTimeout):
		t.Fatal("Stop kept draining after the last connection closed")
	}
	if got := rec.waitClosed(t, id); got != event.ReasonPeerClosed {
		t.Errorf("reason %v, want peer_closed", got)
	}
}

func TestStopWithoutDrain(t *testing.T) {
	r, rec := newRegistry(t, listener.Config{})
	info := start(t, r, listener.Spec{})
	clients := []*net.TCPConn{dial(t, info.Address), dial(t, info.Address)}
	var ids []string
	for _, c := range clients {
		ids = append(ids, connID(t, r, c))
	}
	final, err := r.Stop(ctx(t), info.ID, 0)
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range clients {
		if got := closeEvent(rec.Events(), ids[i]); got == nil || got.CloseReason != event.ReasonListenerStopped {
			t.Errorf("connection %s: close event %+v, want listener_stopped before Stop returned", ids[i], got)
		}
		readAll(t, c)
	}
	if final.State != listener.Stopped || final.ConnectionsTotal != 2 {
		t.Errorf("final Info: %v, %d total", final.State, final.ConnectionsTotal)
	}
	portFree(t, info.Address)
}

func TestConcurrentStop(t *testing.T) {
	r, _ := newRegistry(t, listener.Config{})
	info := start(t, r, listener.Spec{ID: "x", Framing: framing.Config{Mode: framing.Delimiter, Delimiter: []byte(";")}})
	c := dial(t, info.Address)
	connID(t, r, c)
	_, _ = c.Write([]byte("a;b;"))

	const n = 4
	results := make([]listener.Info, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { results[i], errs[i] = r.Stop(ctx(t), "x", 200*time.Millisecond) })
	}
	waitDone := make(chan struct{})
	go func() { wg.Wait(); close(waitDone) }()
	select {
	case <-waitDone:
	case <-time.After(testTimeout):
		t.Fatal("concurrent Stops did not return")
	}
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("Stop %d: %v", i, errs[i])
		}
		if !reflect.DeepEqual(results[i], results[0]) {
			t.Errorf("Stop %d returned\n%+v\nStop 0 returned\n%+v", i, results[i], results[0])
		}
	}
	if results[0].State != listener.Stopped || results[0].FramesIn != 2 {
		t.Errorf("final Info: state %v, %d frames in; want Stopped, 2", results[0].State, results[0].FramesIn)
	}
}

// A second Stop gives up when its context ends; the first goes on (the
// second asks for no shorter drain, so it changes nothing).
func TestStopWaitCanceled(t *testing.T) {
	r, _ := newRegistry(t, listener.Config{})
	info := start(t, r, listener.Spec{})
	c := dial(t, info.Address)
	connID(t, r, c)
	first := make(chan error, 1)
	go func() {
		_, err := r.Stop(ctx(t), info.ID, longDrain)
		first <- err
	}()
	waitState(t, r, info.ID, listener.Draining)
	short, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := r.Stop(short, info.ID, longDrain); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("second Stop with an ending context = %v, want DeadlineExceeded", err)
	}
	_ = c.Close()
	select {
	case err := <-first:
		if err != nil {
			t.Errorf("first Stop: %v", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("first Stop did not return")
	}
}

func TestAfterStop(t *testing.T) {
	r, _ := newRegistry(t, listener.Config{})
	info := start(t, r, listener.Spec{ID: "gone"})
	keep := start(t, r, listener.Spec{ID: "kept"})
	if _, err := r.Stop(ctx(t), "gone", 0); err != nil {
		t.Fatal(err)
	}
	checks := map[string]func() error{
		"Get":       func() error { _, err := r.Get("gone"); return err },
		"Conns":     func() error { _, err := r.conns.Conns("gone"); return err },
		"Stop":      func() error { _, err := r.Stop(ctx(t), "gone", 0); return err },
		"Broadcast": func() error { _, _, err := r.conns.Broadcast(ctx(t), "gone", []byte("x")); return err },
	}
	for name, check := range checks {
		t.Run(name, func(t *testing.T) {
			err := check()
			if !errors.Is(err, listener.ErrNotFound) {
				t.Errorf("%s of a stopped listener = %v, want ErrNotFound", name, err)
			}
			if err != nil && !strings.Contains(err.Error(), `"gone"`) {
				t.Errorf("error %q does not name the listener", err)
			}
		})
	}
	if list := r.List(); len(list) != 1 || list[0].ID != keep.ID {
		t.Errorf("List = %+v, want only %s", list, keep.ID)
	}
	// The id is free again.
	again := start(t, r, listener.Spec{ID: "gone"})
	if again.Address == info.Address {
		t.Logf("the new listener happens to reuse port %s", again.Address)
	}
}

func TestUnknownIDs(t *testing.T) {
	r, _ := newRegistry(t, listener.Config{})
	if _, err := r.Get("nope"); !errors.Is(err, listener.ErrNotFound) {
		t.Errorf("Get = %v", err)
	}
	if _, err := r.Stop(ctx(t), "nope", 0); !errors.Is(err, listener.ErrNotFound) {
		t.Errorf("Stop = %v", err)
	}
	if _, err := r.conns.Conn("c99"); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("Conn = %v", err)
	}
	if _, err := r.conns.CloseConn(ctx(t), "c99"); !errors.Is(err, registry.ErrNotFound) || !strings.Contains(err.Error(), "c99") {
		t.Errorf("CloseConn = %v, want ErrConnNotFound naming c99", err)
	}
	if conns, err := r.conns.Conns(""); err != nil || len(conns) != 0 {
		t.Errorf("Conns of an empty registry = %v, %v", conns, err)
	}
}

func TestMaxConnections(t *testing.T) {
	tests := []struct {
		name      string
		cfg       registry.Config
		perListen int
		listeners int
	}{
		{"per listener", registry.Config{}, 1, 1},
		{"registry-wide over two listeners", registry.Config{MaxConnections: 2}, 0, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, rec := newGateway(t, listener.Config{}, tt.cfg)
			var infos []listener.Info
			for range tt.listeners {
				infos = append(infos, start(t, r, listener.Spec{MaxConnections: tt.perListen, Framing: lines(), AutoReply: conn.AutoReply{Mode: conn.Echo}}))
			}
			// Fill every slot: one connection per listener.
			var kept []*net.TCPConn
			for _, info := range infos {
				c := dial(t, info.Address)
				connID(t, r, c)
				kept = append(kept, c)
			}
			// One more on the first listener is refused.
			extra := dial(t, infos[0].Address)
			if got := readAll(t, extra); got != "" {
				t.Errorf("refused client read %q", got)
			}
			evs := rec.waitCount(t, event.ConnectionClosed, 1)
			closed := ofKind(evs, event.ConnectionClosed)[0]
			if closed.CloseReason != event.ReasonLimitReached || closed.ListenerID != infos[0].ID {
				t.Errorf("close event: %v on %s, want limit_reached on %s", closed.CloseReason, closed.ListenerID, infos[0].ID)
			}
			var opened bool
			for _, e := range ofKind(evs, event.ConnectionOpened) {
				if e.ConnectionID == closed.ConnectionID {
					opened = e.RemoteAddr == extra.LocalAddr().String()
				}
			}
			if !opened {
				t.Errorf("no connection_opened event for the refused connection from %s:\n%s", extra.LocalAddr(), record.Describe(evs))
			}
			// Those let in still work, and are the only ones listed.
			for _, c := range kept {
				echo(t, c, "fine")
			}
			conns, _ := r.conns.Conns("")
			if len(conns) != len(kept) {
				t.Errorf("Conns lists %d connections, want %d", len(conns), len(kept))
			}
			if got, _ := r.Get(infos[0].ID); got.ConnectionsActive != 1 {
				t.Errorf("ConnectionsActive = %d, want 1", got.ConnectionsActive)
			}
			// When one leaves, there is room again.
			_ = kept[0].Close()
			closeEventOf(t, r, rec, kept[0])
			next := dial(t, infos[0].Address)
			connID(t, r, next)
			echo(t, next, "let in")
		})
	}
}

// closeEventOf waits for the registry to drop the connection of client after
// it closed.
func closeEventOf(t *testing.T, r *gateway, rec *recorder, client net.Conn) string {
	t.Helper()
	var id string
	for _, e := range rec.Events() {
		if e.Kind == event.ConnectionOpened && e.RemoteAddr == client.LocalAddr().String() {
			id = e.ConnectionID
		}
	}
	if id == "" {
		t.Fatalf("no connection_opened for %s", client.LocalAddr())
	}
	rec.waitClosed(t, id)
	deadline := time.Now().Add(testTimeout)
	for time.Now().Before(deadline) {
		if _, err := r.conns.Conn(id); errors.Is(err, registry.ErrNotFound) {
			return id
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatalf("connection %s is still listed after it closed", id)
	return id
}

func TestCounters(t *testing.T) {
	r, rec := newRegistry(t, listener.Config{})
	info := start(t, r, listener.Spec{Framing: lines()})
	a, b := dial(t, info.Address), dial(t, info.Address)
	aID, bID := connID(t, r, a), connID(t, r, b)
	_, _ = a.Write([]byte("a\nbb\n"))
	_, _ = b.Write([]byte("ccc\n"))
	rec.waitCount(t, event.Data, 3)

	got, err := r.Get(info.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.BytesIn != 9 || got.FramesIn != 3 || got.ConnectionsTotal != 2 || got.ConnectionsActive != 2 {
		t.Errorf("listener: %d bytes %d frames in, %d total %d active; want 9 3 2 2",
			got.BytesIn, got.FramesIn, got.ConnectionsTotal, got.ConnectionsActive)
	}
	if !got.CreatedAt.Equal(info.CreatedAt) || got.CreatedAt.IsZero() {
		t.Errorf("CreatedAt = %v, want %v", got.CreatedAt, info.CreatedAt)
	}
	conns, err := r.conns.Conns(info.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(conns) != 2 || conns[0].ID != aID || conns[1].ID != bID {
		t.Fatalf("Conns = %+v, want %s then %s (oldest first)", conns, aID, bID)
	}
	want := []struct {
		client      net.Conn
		bytes, frms uint64
	}{{a, 5, 2}, {b, 4, 1}}
	for i, w := range want {
		c := conns[i]
		if c.BytesIn != w.bytes || c.FramesIn != w.frms || c.ListenerID != info.ID ||
			c.RemoteAddr != w.client.LocalAddr().String() || c.LocalAddr != w.client.RemoteAddr().String() {
			t.Errorf("Conns[%d] = %+v, want %d bytes %d frames from %s", i, c, w.bytes, w.frms, w.client.LocalAddr())
		}
	}

	// Writes count out, per connection and per listener.
	n, reached, err := r.conns.Broadcast(ctx(t), info.ID, []byte("hi\n"))
	if err != nil || n != 6 || reached != 2 {
		t.Fatalf("Broadcast = %d, %d, %v; want 6, 2", n, reached, err)
	}
	got, _ = r.Get(info.ID)
	if got.BytesOut != 6 || got.FramesOut != 2 {
		t.Errorf("listener out: %d bytes %d frames, want 6 2", got.BytesOut, got.FramesOut)
	}
	st, cs := r.Stats(), r.conns.Stats()
	if st.Listeners != 1 || cs.ConnectionsOpen != 2 || st.Accepted != 2 || cs.BytesIn != 9 || cs.FramesIn != 3 || cs.BytesOut != 6 {
		t.Errorf("Stats = %+v, %+v", st, cs)
	}
}

func TestBroadcast(t *testing.T) {
	r, rec := newRegistry(t, listener.Config{})
	info := start(t, r, listener.Spec{})
	other := start(t, r, listener.Spec{})

	if n, reached, err := r.conns.Broadcast(ctx(t), info.ID, []byte("nobody")); err != nil || n != 0 || reached != 0 {
		t.Errorf("Broadcast to no connections = %d, %d, %v; want 0, 0, nil", n, reached, err)
	}

	const clients = 5
	var cs []*net.TCPConn
	for range clients {
		c := dial(t, info.Address)
		connID(t, r, c)
		cs = append(cs, c)
	}
	bystander := dial(t, other.Address)
	connID(t, r, bystander)
	rec.waitCount(t, event.ConnectionOpened, clients+1)

	payload := []byte("to everyone\n")
	n, reached, err := r.conns.Broadcast(ctx(t), info.ID, payload)
	if err != nil || reached != clients || n != uint64(clients*len(payload)) {
		t.Fatalf("Broadcast = %d, %d, %v; want %d, %d", n, reached, err, clients*len(payload), clients)
	}
	for i, c := range cs {
		buf := make([]byte, len(payload))
		_ = c.SetReadDeadline(time.Now().Add(testTimeout))
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != string(payload) {
			t.Errorf("client %d read %q, %v", i, buf, err)
		}
	}
	_ = bystander.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if n, _ := bystander.Read(make([]byte, 64)); n != 0 {
		t.Errorf("a client of another listener got %d bytes of the broadcast", n)
	}
}

func TestCloseConn(t *testing.T) {
	r, rec := newRegistry(t, listener.Config{})
	info := start(t, r, listener.Spec{})
	c := dial(t, info.Address)
	id := connID(t, r, c)
	_, _ = c.Write([]byte("abc"))
	rec.waitCount(t, event.Data, 1)

	ci, err := r.conns.CloseConn(ctx(t), id)
	if err != nil {
		t.Fatal(err)
	}
	if ci.ID != id || ci.ListenerID != info.ID || ci.BytesIn != 3 {
		t.Errorf("CloseConn = %+v, want %s of %s with 3 bytes in", ci, id, info.ID)
	}
	if got := closeEvent(rec.Events(), id); got == nil || got.CloseReason != event.ReasonClosedByAPI {
		t.Errorf("close event %+v, want closed_by_api before CloseConn returned", got)
	}
	readAll(t, c)
	if _, err := r.conns.CloseConn(ctx(t), id); !errors.Is(err, registry.ErrNotFound) {
		// The registry may take a moment to drop it; it must not stay.
		closeEventOf(t, r, rec, c)
	}
	if _, err := r.Get(info.ID); err != nil {
		t.Errorf("the listener went away with its connection: %v", err)
	}
}

func TestIdleTimeout(t *testing.T) {
	r, rec := newRegistry(t, listener.Config{})
	info := start(t, r, listener.Spec{IdleTimeout: 100 * time.Millisecond})
	c := dial(t, info.Address)
	id := connID(t, r, c)
	if got := rec.waitClosed(t, id); got != event.ReasonIdleTimeout {
		t.Errorf("reason %v, want idle_timeout", got)
	}
	readAll(t, c)
}

// Close stops every listener and connection with reason SHUTDOWN; it can be
// called again, and nothing starts afterwards.
func TestClose(t *testing.T) {
	r, rec := newRegistry(t, listener.Config{})
	var infos []listener.Info
	var clients []*net.TCPConn
	var ids []string
	for range 2 {
		info := start(t, r, listener.Spec{})
		infos = append(infos, info)
		for range 2 {
			c := dial(t, info.Address)
			ids = append(ids, connID(t, r, c))
			clients = append(clients, c)
		}
	}
	done := make(chan struct{})
	go func() {
		r.Close()
		r.Close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(testTimeout):
		t.Fatal("Close did not return")
	}
	evs := rec.Events()
	for _, id := range ids {
		if got := closeEvent(evs, id); got == nil || got.CloseReason != event.ReasonShutdown {
			t.Errorf("connection %s: close event %+v, want shutdown", id, got)
		}
	}
	if n := len(ofKind(evs, event.ListenerStopped)); n != 2 {
		t.Errorf("%d listener_stopped events, want 2", n)
	}
	for _, c := range clients {
		readAll(t, c)
	}
	for _, info := range infos {
		portFree(t, info.Address)
	}
	if _, err := r.Start(context.Background(), listener.Spec{Host: "127.0.0.1"}); !errors.Is(err, listener.ErrClosed) {
		t.Errorf("Start after Close = %v, want ErrClosed", err)
	}
	if list := r.List(); len(list) != 0 {
		t.Errorf("List after Close = %+v", list)
	}
	if _, err := r.Get(infos[0].ID); !errors.Is(err, listener.ErrNotFound) {
		t.Errorf("Get after Close = %v, want ErrNotFound", err)
	}
	st, cs := r.Stats(), r.conns.Stats()
	if cs.Closed[event.ReasonShutdown] != uint64(len(ids)) || cs.ConnectionsOpen != 0 || st.Listeners != 0 {
		t.Errorf("Stats after Close = %+v, %+v", st, cs)
	}
}

// Close while a listener is draining closes its connections too, at once and
// with reason SHUTDOWN, as the shutdown order in server/doc.go promises.
func TestCloseDuringDrain(t *testing.T) {
	r, rec := newRegistry(t, listener.Config{})
	info := start(t, r, listener.Spec{})
	c := dial(t, info.Address)
	id := connID(t, r, c)
	stopped := make(chan error, 1)
	go func() {
		_, err := r.Stop(ctx(t), info.ID, 5*time.Second)
		stopped <- err
	}()
	waitState(t, r, info.ID, listener.Draining)

	closed := make(chan struct{})
	go func() { r.Close(); close(closed) }()
	var bug string
	select {
	case <-closed:
	case <-time.After(time.Second):
		bug = "Close waited for the drain of a listener being stopped"
		// Let the test end cleanly: the peer leaves.
		_ = c.Close()
		<-closed
	}
	if err := <-stopped; err != nil {
		t.Errorf("Stop: %v", err)
	}
	if got := rec.waitClosed(t, id); got != event.ReasonShutdown && bug == "" {
		bug = fmt.Sprintf("the draining connection closed with %v, not shutdown", got)
	}
	if bug != "" {
		t.Fatal("" + bug + ": Registry.Close only stops listeners in state Listening; one already Draining " +
			"is left to its Stop, and canceling the registry's context does not end its idle connections " +
			"(conn.Serve only watches ctx while publishing), so shutdown can hang for the whole drain_timeout")
	}
}

// Stats count accepted and closed connections by reason.
func TestStats(t *testing.T) {
	r, rec := newGateway(t, listener.Config{}, registry.Config{MaxConnections: 1})
	info := start(t, r, listener.Spec{})
	a := dial(t, info.Address)
	aID := connID(t, r, a)
	b := dial(t, info.Address) // refused: limit
	readAll(t, b)
	if _, err := r.conns.CloseConn(ctx(t), aID); err != nil {
		t.Fatal(err)
	}
	rec.waitCount(t, event.ConnectionClosed, 2)
	deadline := time.Now().Add(testTimeout)
	var cs registry.Stats
	for time.Now().Before(deadline) {
		cs = r.conns.Stats()
		if cs.ConnectionsOpen == 0 && cs.Closed[event.ReasonClosedByAPI] == 1 && cs.Closed[event.ReasonLimitReached] == 1 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	st := r.Stats()
	if st.Accepted != 2 || st.Listeners != 1 || cs.ConnectionsOpen != 0 ||
		cs.Closed[event.ReasonClosedByAPI] != 1 || cs.Closed[event.ReasonLimitReached] != 1 || len(cs.Closed) != 2 {
		t.Errorf("Stats = %+v, %+v, want 2 accepted, 1 closed by API, 1 refused by the limit", st, cs)
	}
}

// After Stop returns, the stopped listener's connections are no longer
// listed: Stop promises every connection is closed.
func TestNoConnsListedAfterStop(t *testing.T) {
	r, _ := newRegistry(t, listener.Config{})
	for i := range 20 {
		info := start(t, r, listener.Spec{})
		var ids []string
		for range 3 {
			ids = append(ids, connID(t, r, dial(t, info.Address)))
		}
		if _, err := r.Stop(ctx(t), info.ID, 0); err != nil {
			t.Fatal(err)
		}
		conns, _ := r.conns.Conns("")
		for _, id := range ids {
			if _, err := r.conns.Conn(id); err == nil {
				t.Fatalf("round %d: Conn(%q) still finds a connection of a listener whose Stop returned "+
					"(%d listed by Conns): connection goroutines drop themselves from the registry only "+
					"after Done, and Stop waits for Done, not for that removal", i, id, len(conns))
			}
		}
	}
}
