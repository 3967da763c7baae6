package listener_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tcpgate/tcpgate/server/internal/conn"
	"github.com/tcpgate/tcpgate/server/internal/event"
	"github.com/tcpgate/tcpgate/server/internal/listener"
)

// StopAccepting, the start of a shutdown: every port is free at once, a
// drain in progress is cut (its idle connection closed with reason
// SHUTDOWN, its Stop returns), Start is refused, and the connections of a
// listener that was not draining keep working until Close.
func TestStopAcceptingCutsDrains(t *testing.T) {
	r, rec := newRegistry(t, listener.Config{})
	draining := start(t, r, listener.Spec{ID: "d1"})
	serving := start(t, r, listener.Spec{ID: "web", Framing: lines(), AutoReply: conn.AutoReply{Mode: conn.Echo}})
	idle := dial(t, draining.Address)
	idleID := connID(t, r, idle)
	working := dial(t, serving.Address)
	workingID := connID(t, r, working)

	stopped := stopAsync(t, r, "d1", longDrain)
	waitState(t, r, "d1", listener.Draining)
	r.StopAccepting()

	if res := result(t, "Stop of a draining listener after StopAccepting", stopped); res.info.State != listener.Stopped {
		t.Errorf("final state %v, want Stopped", res.info.State)
	}
	if got := rec.waitClosed(t, idleID); got != event.ReasonShutdown {
		t.Errorf("connection of the cut drain closed with reason %v, want shutdown", got)
	}
	readAll(t, idle)
	portFree(t, draining.Address)
	portFree(t, serving.Address)
	if _, err := r.Start(context.Background(), listener.Spec{Host: "127.0.0.1"}); !errors.Is(err, listener.ErrClosed) {
		t.Errorf("Start after StopAccepting = %v, want ErrClosed", err)
	}
	echo(t, working, "still served until Close")

	r.Close()
	if got := rec.waitClosed(t, workingID); got != event.ReasonShutdown {
		t.Errorf("connection closed by Close with reason %v, want shutdown", got)
	}
	readAll(t, working)
}

// Close cuts a drain in progress too, and returns without waiting it out.
func TestCloseCutsDrain(t *testing.T) {
	r, rec := newRegistry(t, listener.Config{})
	info := start(t, r, listener.Spec{ID: "d1"})
	idle := dial(t, info.Address)
	id := connID(t, r, idle)
	stopped := stopAsync(t, r, "d1", longDrain)
	waitState(t, r, "d1", listener.Draining)

	closed := make(chan struct{})
	go func() {
		r.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(testTimeout):
		t.Fatalf("Close waited for a drain of %v", longDrain)
	}
	result(t, "Stop of a listener Close cut", stopped)
	if got := rec.waitClosed(t, id); got != event.ReasonShutdown {
		t.Errorf("reason %v, want shutdown", got)
	}
	readAll(t, idle)
	portFree(t, info.Address)
}

// drain is at most Config.MaxDrainTimeout: more is refused, naming the
// flag, and leaves the listener as it was.
func TestMaxDrainTimeout(t *testing.T) {
	tests := []struct {
		name string
		max  time.Duration // Config.MaxDrainTimeout
		want time.Duration // the bound that holds
	}{
		{"default", 0, listener.DefaultMaxDrainTimeout},
		{"configured", time.Minute, time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, _ := newRegistry(t, listener.Config{MaxDrainTimeout: tt.max})
			info := start(t, r, listener.Spec{ID: "d1"})
			_, err := r.Stop(ctx(t), "d1", tt.want+time.Second)
			if !errors.Is(err, listener.ErrDrainTooLong) {
				t.Fatalf("Stop with a drain of %v = %v, want ErrDrainTooLong", tt.want+time.Second, err)
			}
			for _, s := range []string{"drain_timeout", "--max-drain-timeout", tt.want.String(), `"d1"`} {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not say %s", err, s)
				}
			}
			if got, err := r.Get("d1"); err != nil || got.State != listener.Listening {
				t.Errorf("after the refused Stop: %+v, %v; want it still listening", got, err)
			}
			if ok, err := refused(info.Address); ok || err != nil {
				t.Errorf("after the refused Stop, a dial: refused=%v err=%v", ok, err)
			}
			// The bound itself is allowed; with no connection, nothing
			// waits for it.
			if _, err := r.Stop(ctx(t), "d1", tt.want); err != nil {
				t.Errorf("Stop with a drain of exactly %v: %v", tt.want, err)
			}
		})
	}
}
