package listener_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tcpgate/tcpgate/server/internal/event"
	"github.com/tcpgate/tcpgate/server/internal/framing"
	"github.com/tcpgate/tcpgate/server/internal/listener"
	"github.com/tcpgate/tcpgate/server/internal/registry"
	"github.com/tcpgate/tcpgate/server/servertest/record"
)

// testTimeout bounds every wait of these tests, so a bug fails instead of
// hanging.
const testTimeout = 10 * time.Second

// longDrain is a drain no test waits out: far longer than testTimeout,
// within listener.DefaultMaxDrainTimeout.
const longDrain = 5 * time.Minute

// recorder is the Publisher of these tests, with their waits.
type recorder struct{ *record.Recorder }

func newRecorder() *recorder { return &recorder{record.New()} }

// waitCount waits until n events of kind have been recorded.
func (r *recorder) waitCount(t *testing.T, kind event.Kind, n int) []*event.Event {
	t.Helper()
	return r.WaitFor(t, fmt.Sprintf("%d %v events", n, kind), func(evs []*event.Event) bool {
		return len(ofKind(evs, kind)) >= n
	})
}

// waitClosed waits for the CONNECTION_CLOSED event of connection id and
// returns its reason.
func (r *recorder) waitClosed(t *testing.T, id string) event.CloseReason {
	t.Helper()
	evs := r.WaitFor(t, "connection_closed of "+id, func(evs []*event.Event) bool {
		return closeEvent(evs, id) != nil
	})
	return closeEvent(evs, id).CloseReason
}

func closeEvent(evs []*event.Event, id string) *event.Event {
	for _, e := range evs {
		if e.Kind == event.ConnectionClosed && e.ConnectionID == id {
			return e
		}
	}
	return nil
}

func ofKind(evs []*event.Event, kind event.Kind) []*event.Event {
	var out []*event.Event
	for _, e := range evs {
		if e.Kind == kind {
			out = append(out, e)
		}
	}
	return out
}

// gateway is a listener registry over a connection registry of its own,
// wired as server.go wires them: the listeners accept, the connections are
// looked up in conns.
type gateway struct {
	*listener.Registry
	conns *registry.Registry
}

// newRegistry returns a listener registry publishing to a new recorder,
// over a connection registry of the default limits; it is closed when the
// test ends.
func newRegistry(t *testing.T, cfg listener.Config) (*gateway, *recorder) {
	t.Helper()
	return newGateway(t, cfg, registry.Config{})
}

// newGateway is newRegistry with the connection registry's limits of rc.
func newGateway(t *testing.T, cfg listener.Config, rc registry.Config) (*gateway, *recorder) {
	t.Helper()
	rec := newRecorder()
	conns := registry.New(rc)
	cfg.Publisher = rec
	cfg.Conns = conns
	cfg.Logger = slog.New(slog.DiscardHandler)
	r := listener.New(cfg)
	t.Cleanup(r.Close)
	return &gateway{Registry: r, conns: conns}, rec
}

// start starts a listener on 127.0.0.1:0 from spec.
func start(t *testing.T, r *gateway, spec listener.Spec) listener.Info {
	t.Helper()
	if spec.Host == "" {
		spec.Host = "127.0.0.1"
	}
	info, err := r.Start(context.Background(), spec)
	if err != nil {
		t.Fatalf("Start(%+v): %v", spec, err)
	}
	return info
}

func lines() framing.Config { return framing.Config{Mode: framing.Line} }

// dial connects to addr; the connection is closed when the test ends.
func dial(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, testTimeout)
	if err != nil {
		t.Fatalf("dialing %s: %v", addr, err)
	}
	_ = c.SetDeadline(time.Now().Add(testTimeout))
	t.Cleanup(func() { _ = c.Close() })
	return c.(*net.TCPConn)
}

// connID waits until the registry lists the connection of client and
// returns its id.
func connID(t *testing.T, r *gateway, client net.Conn) string {
	t.Helper()
	want := client.LocalAddr().String()
	deadline := time.Now().Add(testTimeout)
	for time.Now().Before(deadline) {
		infos, err := r.conns.Conns("")
		if err != nil {
			t.Fatal(err)
		}
		for _, i := range infos {
			if i.RemoteAddr == want {
				return i.ID
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
	t.Fatalf("the registry never listed the connection from %s", want)
	return ""
}

// readAll reads until the gateway closes the connection and returns what
// came, failing t on anything but EOF (a reset also counts as closed).
func readAll(t *testing.T, c net.Conn) string {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(testTimeout))
	b, err := io.ReadAll(c)
	if err != nil && !strings.Contains(err.Error(), "connection reset") {
		t.Fatalf("reading until the gateway closes: got %q, then %v", b, err)
	}
	return string(b)
}

// echo writes line and reads it back from a listener with echo auto reply.
func echo(t *testing.T, c net.Conn, line string) {
	t.Helper()
	if _, err := c.Write([]byte(line + "\n")); err != nil {
		t.Fatalf("writing %q: %v", line, err)
	}
	buf := make([]byte, len(line)+1)
	_ = c.SetReadDeadline(time.Now().Add(testTimeout))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("reading the echo of %q: %v", line, err)
	}
	if string(buf) != line+"\n" {
		t.Fatalf("echo = %q, want %q", buf, line+"\n")
	}
}

// refused reports whether a dial to addr is refused.
func refused(addr string) (bool, error) {
	c, err := net.DialTimeout("tcp", addr, testTimeout)
	if err == nil {
		_ = c.Close()
		return false, nil
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		return true, nil
	}
	return false, err
}

// portFree reports whether addr can be bound again.
func portFree(t *testing.T, addr string) {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("the port of %s is still taken: %v", addr, err)
	}
	_ = ln.Close()
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return c
}
