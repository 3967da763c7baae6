package listener_test

import (
	"errors"
	"io"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tcpgate/tcpgate/server/internal/conn"
	"github.com/tcpgate/tcpgate/server/internal/event"
	"github.com/tcpgate/tcpgate/server/internal/framing"
	"github.com/tcpgate/tcpgate/server/internal/listener"
	"github.com/tcpgate/tcpgate/server/internal/rules"
)

// ask writes line and reads the n bytes of the reply.
func ask(t *testing.T, c net.Conn, line string, n int) string {
	t.Helper()
	if _, err := c.Write([]byte(line + "\n")); err != nil {
		t.Fatalf("writing %q: %v", line, err)
	}
	buf := make([]byte, n)
	_ = c.SetReadDeadline(time.Now().Add(testTimeout))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("reading the reply to %q: got %q, %v", line, buf, err)
	}
	return string(buf)
}

// TestUpdateOpenConnection: a connection open before an update answers by
// the new rules and auto reply at its next frame, on the same socket and
// port, and LISTENER_UPDATED says so.
func TestUpdateOpenConnection(t *testing.T) {
	r, rec := newRegistry(t, listener.Config{})
	info := start(t, r, listener.Spec{Framing: lines(), AutoReply: conn.AutoReply{Mode: conn.Echo}})
	c := dial(t, info.Address)
	echo(t, c, "before")
	id := connID(t, r, c)

	upd, err := r.Update(ctx(t), info.ID, listener.Spec{
		AutoReply: conn.AutoReply{Mode: conn.Fixed, Payload: []byte("no\n")},
		Rules:     []rules.Spec{{Kind: rules.Exact, Pattern: []byte("PING"), Reply: []byte("PONG")}},
	}, []string{listener.FieldAutoReply}, listener.SourceAPI)
	if err != nil {
		t.Fatalf("Update: %v", err)
	}
	if upd.Address != info.Address || len(upd.Rules) != 1 || upd.AutoReply.Mode != conn.Fixed {
		t.Errorf("Update returned %s with %d rules and mode %v, want %s with 1 rule and Fixed", upd.Address, len(upd.Rules), upd.AutoReply.Mode, info.Address)
	}
	if got := ask(t, c, "PING", 5); got != "PONG\n" {
		t.Errorf("PING after the update = %q, want PONG by the new rule", got)
	}
	if got := ask(t, c, "other", 3); got != "no\n" {
		t.Errorf("other after the update = %q, want the new fixed reply", got)
	}
	if got, err := r.Get(info.ID); err != nil || got.ConnectionsActive != 1 {
		t.Errorf("%d connections open (%v), want the one from before", got.ConnectionsActive, err)
	}
	if closeEvent(rec.Events(), id) != nil {
		t.Errorf("the connection from before the update was closed")
	}
	evs := rec.waitCount(t, event.ListenerUpdated, 1)
	if e := ofKind(evs, event.ListenerUpdated)[0]; e.ListenerID != info.ID || e.LocalAddr != info.Address {
		t.Errorf("LISTENER_UPDATED of %q at %q, want %q at %q", e.ListenerID, e.LocalAddr, info.ID, info.Address)
	}
	got, err := r.Get(info.ID)
	if err != nil || len(got.Rules) != 1 || got.ConnectionsTotal != 1 {
		t.Errorf("Get after the update: %d rules, %d connections total, %v; want 1 and 1", len(got.Rules), got.ConnectionsTotal, err)
	}
}

// TestUpdateIdleTimeout: an idle timeout set by an update counts from the
// open connection's next read.
func TestUpdateIdleTimeout(t *testing.T) {
	r, rec := newRegistry(t, listener.Config{})
	info := start(t, r, listener.Spec{Framing: lines(), AutoReply: conn.AutoReply{Mode: conn.Echo}})
	c := dial(t, info.Address)
	echo(t, c, "a")
	id := connID(t, r, c)
	if _, err := r.Update(ctx(t), info.ID, listener.Spec{IdleTimeout: 20 * time.Millisecond}, []string{listener.FieldIdleTimeout}, listener.SourceAPI); err != nil {
		t.Fatal(err)
	}
	echo(t, c, "b") // the read after this one has the new deadline
	if reason := rec.waitClosed(t, id); reason != event.ReasonIdleTimeout {
		t.Errorf("closed with %v, want IDLE_TIMEOUT", reason)
	}
}

// TestUpdateMaxConnections: a lower max_connections refuses the next
// connection and keeps those open.
func TestUpdateMaxConnections(t *testing.T) {
	r, rec := newRegistry(t, listener.Config{})
	info := start(t, r, listener.Spec{Framing: lines(), AutoReply: conn.AutoReply{Mode: conn.Echo}})
	first := dial(t, info.Address)
	echo(t, first, "a")
	if _, err := r.Update(ctx(t), info.ID, listener.Spec{MaxConnections: 1}, []string{listener.FieldMaxConnections}, listener.SourceAPI); err != nil {
		t.Fatal(err)
	}
	second := dial(t, info.Address)
	if got := readAll(t, second); got != "" {
		t.Errorf("the refused connection got %q", got)
	}
	evs := rec.waitCount(t, event.ConnectionClosed, 1)
	if e := ofKind(evs, event.ConnectionClosed)[0]; e.CloseReason != event.ReasonLimitReached {
		t.Errorf("closed with %v, want LIMIT_REACHED", e.CloseReason)
	}
	echo(t, first, "still open")
}

// TestUpdateRefused: a field that cannot change in place, one that is no
// field, or a bad value changes nothing: the old replies still answer.
func TestUpdateRefused(t *testing.T) {
	r, _ := newRegistry(t, listener.Config{ListenerMaxConnections: 5})
	info := start(t, r, listener.Spec{Framing: lines(), AutoReply: conn.AutoReply{Mode: conn.Echo}})
	c := dial(t, info.Address)
	tests := []struct {
		name   string
		spec   listener.Spec
		fields []string
		want   error
	}{
		{"port", listener.Spec{Port: 1}, []string{"port"}, listener.ErrNotUpdatable},
		{"host", listener.Spec{Host: "127.0.0.2"}, []string{"host"}, listener.ErrNotUpdatable},
		{"framing after a good field", listener.Spec{MaxConnections: 1, Framing: framing.Config{Mode: framing.LengthPrefix}}, []string{listener.FieldMaxConnections, "framing"}, listener.ErrNotUpdatable},
		{"no such field", listener.Spec{}, []string{"colour"}, listener.ErrNotUpdatable},
		{"max_connections over its bound", listener.Spec{MaxConnections: 6}, []string{listener.FieldMaxConnections}, listener.ErrInvalidSpec},
		{"a bad regex", listener.Spec{AutoReply: conn.AutoReply{Mode: conn.Fixed, Payload: []byte("x\n")}, Rules: []rules.Spec{{Kind: rules.Regex, Pattern: []byte("(")}}}, []string{listener.FieldAutoReply}, nil},
		{"handler timeout over an hour", listener.Spec{HandlerTimeout: 2 * time.Hour}, []string{listener.FieldAutoReply}, listener.ErrInvalidSpec},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := r.Update(ctx(t), info.ID, tt.spec, tt.fields, listener.SourceAPI)
			var fe *rules.FieldError
			switch {
			case err == nil:
				t.Fatalf("Update succeeded")
			case tt.want == nil && !errors.As(err, &fe):
				t.Errorf("Update: %v, want a *rules.FieldError", err)
			case tt.want != nil && !errors.Is(err, tt.want):
				t.Errorf("Update: %v, want %v", err, tt.want)
			}
			echo(t, c, "unchanged")
			got, err := r.Get(info.ID)
			if err != nil || got.MaxConnections != 5 || got.AutoReply.Mode != conn.Echo || len(got.Rules) != 0 || got.HandlerTimeout != info.HandlerTimeout {
				t.Errorf("after the refused update: %+v, %v", got.Spec, err)
			}
		})
	}
	if _, err := r.Update(ctx(t), "nope", listener.Spec{}, []string{listener.FieldMaxConnections}, listener.SourceAPI); !errors.Is(err, listener.ErrNotFound) {
		t.Errorf("Update of an unknown listener: %v, want ErrNotFound", err)
	}
}

// TestUpdateDeclared: a listener of the config file changes by its reload
// (by SourceConfig), not through the API.
func TestUpdateDeclared(t *testing.T) {
	r, _ := newRegistry(t, listener.Config{})
	info := start(t, r, listener.Spec{Source: listener.SourceConfig, Framing: lines(), AutoReply: conn.AutoReply{Mode: conn.Echo}})
	spec := listener.Spec{MaxConnections: 2}
	if _, err := r.Update(ctx(t), info.ID, spec, []string{listener.FieldMaxConnections}, listener.SourceAPI); !errors.Is(err, listener.ErrDeclared) {
		t.Errorf("the API's update of a declared listener: %v, want ErrDeclared", err)
	}
	got, err := r.Update(ctx(t), info.ID, spec, []string{listener.FieldMaxConnections}, listener.SourceConfig)
	if err != nil || got.MaxConnections != 2 || got.Source != listener.SourceConfig {
		t.Errorf("the reload's update: max_connections %d, source %v, %v; want 2 and SourceConfig", got.MaxConnections, got.Source, err)
	}
}

// TestUpdateConcurrent: updates while connections send frames. Every
// reply is one of the settings' whole, never a mix, and each update keeps
// the fields the others changed.
func TestUpdateConcurrent(t *testing.T) {
	r, _ := newRegistry(t, listener.Config{})
	info := start(t, r, listener.Spec{Framing: lines(), AutoReply: conn.AutoReply{Mode: conn.Fixed, Payload: []byte("a\n")}})
	const rounds = 200
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 2 {
		payload := []byte("ab"[i:i+1] + "\n")
		wg.Go(func() {
			for range rounds {
				if _, err := r.Update(ctx(t), info.ID, listener.Spec{AutoReply: conn.AutoReply{Mode: conn.Fixed, Payload: payload}}, []string{listener.FieldAutoReply}, listener.SourceAPI); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Go(func() {
		for i := range rounds {
			if _, err := r.Update(ctx(t), info.ID, listener.Spec{MaxConnections: 10 + i%2}, []string{listener.FieldMaxConnections}, listener.SourceAPI); err != nil {
				errs <- err
				return
			}
		}
	})
	for range 2 {
		c := dial(t, info.Address)
		wg.Go(func() {
			buf := make([]byte, 2)
			for range rounds {
				if _, err := c.Write([]byte("x\n")); err != nil {
					errs <- err
					return
				}
				if _, err := io.ReadFull(c, buf); err != nil {
					errs <- err
					return
				}
				if s := string(buf); s != "a\n" && s != "b\n" {
					errs <- errors.New("reply " + s)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	got, err := r.Get(info.ID)
	if err != nil || got.MaxConnections != 11 || got.AutoReply.Mode != conn.Fixed {
		t.Errorf("after the updates: max_connections %d, mode %v, %v; want 11 and Fixed", got.MaxConnections, got.AutoReply.Mode, err)
	}
}

// TestInPlace: which spec changes an update can make.
func TestInPlace(t *testing.T) {
	base := listener.Spec{Host: "127.0.0.1", Port: 7000, Framing: lines()}
	with := func(f func(*listener.Spec)) listener.Spec {
		s := base
		f(&s)
		return s
	}
	tests := []struct {
		name  string
		b     listener.Spec
		ok    bool
		field string
		diff  []string
	}{
		{"the same", base, true, "", nil},
		{"rules and idle timeout", with(func(s *listener.Spec) {
			s.Rules = []rules.Spec{{Kind: rules.Exact, Pattern: []byte("a")}}
			s.IdleTimeout = time.Second
		}), true, "", []string{listener.FieldAutoReply, listener.FieldIdleTimeout}},
		{"banner and max_connections", with(func(s *listener.Spec) {
			s.Banner = &listener.Banner{Payload: []byte("hi")}
			s.MaxConnections = 3
		}), true, "", []string{listener.FieldOnConnect, listener.FieldMaxConnections}},
		{"host", with(func(s *listener.Spec) { s.Host = "127.0.0.2" }), false, "host", nil},
		{"port", with(func(s *listener.Spec) { s.Port = 7001 }), false, "port", nil},
		{"framing", with(func(s *listener.Spec) { s.Framing = framing.Config{Mode: framing.LengthPrefix} }), false, "framing", nil},
		{"forward", with(func(s *listener.Spec) { s.Forward = &listener.Forward{Address: "127.0.0.1:1"} }), false, "forward", nil},
		{"source", with(func(s *listener.Spec) { s.Source = listener.SourceConfig }), false, "source", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ok, field := listener.InPlace(base, tt.b)
			if ok != tt.ok || field != tt.field {
				t.Errorf("InPlace = %v %q, want %v %q", ok, field, tt.ok, tt.field)
			}
			if ok {
				if got := listener.Diff(base, tt.b); !slices.Equal(got, tt.diff) {
					t.Errorf("Diff = %v, want %v", got, tt.diff)
				}
			}
		})
	}
}
