package main_test

import (
	"testing"

	"github.com/tcpgate/tcpgate/server/servertest"
)

// TestResumeAcrossRestart runs the built daemon, subscribes with grpcurl,
// sees events, stops the daemon with SIGTERM and starts it again, and
// resumes with the incarnation and the sequence after the last event seen,
// as the README says: the new gateway answers INCARNATION_CHANGED and
// replays its own events from the start, and a client that de-duplicates
// by (incarnation, sequence) keeps every event of both runs, although the
// sequences of the second run repeat those of the first.
func TestResumeAcrossRestart(t *testing.T) {
	t.Parallel()
	type key struct {
		inc string
		seq uint64
	}
	kept := map[key]eventJSON{}
	keep := func(inc string, evs []eventJSON) {
		for _, e := range evs {
			if e.Sequence != 0 {
				kept[key{inc, e.Sequence}] = e
			}
		}
	}
	// One run: a listener, a client that sends a line and closes.
	traffic := func(c client, id, line string) {
		var resp struct {
			Listener listenerJSON `json:"listener"`
		}
		c.call(t, "StartListener", map[string]any{"listener_id": id, "host": "127.0.0.1"}, &resp)
		conn := servertest.Dial(t, resp.Listener.Address)
		if _, err := conn.Write([]byte(line)); err != nil {
			t.Fatal(err)
		}
		conn.Close()
	}
	isKind := func(kind string) func(eventJSON) bool { return func(e eventJSON) bool { return e.Kind == kind } }

	first := startDaemon(t, hermeticEnv(), "serve", "--grpc-addr", "127.0.0.1:0", "--http-addr", "", "--node-id", "node-e2e")
	addr := first.waitServing(t)
	sub := subscribe(t, addr, map[string]any{})
	_, started := sub.waitFor(t, 0, "STREAM_STARTED", isKind(kindStreamStarted))
	inc1 := started.Header.Incarnation
	if inc1 == "" || started.Header.NodeID != "node-e2e" || started.Sequence != 0 {
		t.Fatalf("first event %+v, want STREAM_STARTED with the incarnation and node node-e2e", started)
	}
	traffic(client{addr: addr}, "before", "one")
	i, closed := sub.waitFor(t, 0, "CONNECTION_CLOSED", isKind(kindConnectionClosed))
	sub.mu.Lock()
	seen := append([]eventJSON(nil), sub.events[:i+1]...)
	sub.mu.Unlock()
	keep(inc1, seen)
	last := closed.Sequence
	first.stop(t)

	second := startDaemon(t, hermeticEnv(), "serve", "--grpc-addr", "127.0.0.1:0", "--http-addr", "", "--node-id", "node-e2e")
	addr2 := second.waitServing(t)
	traffic(client{addr: addr2}, "after", "two")
	resumed := subscribe(t, addr2, map[string]any{"since_incarnation": inc1, "since_sequence": last + 1})
	j, _ := resumed.waitFor(t, 0, "CONNECTION_CLOSED", isKind(kindConnectionClosed))
	resumed.mu.Lock()
	evs := append([]eventJSON(nil), resumed.events[:j+1]...)
	resumed.mu.Unlock()
	if len(evs) < 3 || evs[0].Kind != kindStreamStarted || evs[1].Kind != kindIncarnationChg {
		t.Fatalf("resumed stream starts %+v, want STREAM_STARTED then INCARNATION_CHANGED", evs)
	}
	inc2 := evs[0].Header.Incarnation
	if inc2 == "" || inc2 == inc1 || evs[1].Header.Incarnation != inc2 {
		t.Fatalf("incarnations %q then %q (INCARNATION_CHANGED says %q), want a new one", inc1, inc2, evs[1].Header.Incarnation)
	}
	if evs[2].Sequence != 1 || evs[2].ListenerID != "after" {
		t.Fatalf("replay starts with %+v, want sequence 1, the start of listener after", evs[2])
	}
	keep(inc2, evs)

	// Every event of both runs is kept, the data of both among them, even
	// where a sequence of the second run repeats one of the first.
	want := map[string]bool{"one": false, "two": false}
	repeated := false
	for k, e := range kept {
		if e.Kind == kindData {
			want[e.payload()] = true
		}
		if _, ok := kept[key{inc1, k.seq}]; ok && k.inc == inc2 {
			repeated = true
		}
	}
	if !want["one"] || !want["two"] {
		t.Fatalf("kept data %v, want both runs' lines", want)
	}
	if len(kept) != len(seen)-1+len(evs)-2 {
		t.Fatalf("kept %d events, want %d of the first run and %d of the second", len(kept), len(seen)-1, len(evs)-2)
	}
	if !repeated {
		t.Fatalf("no sequence of the second run repeats one of the first: the test shows nothing")
	}
}
