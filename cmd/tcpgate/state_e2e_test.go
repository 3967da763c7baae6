package main_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/encoding/protojson"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server/servertest"
)

// TestStateRestartE2E runs the built daemon with --state-file, makes a
// listener with rules and an outbound connection through the API, stops
// it with SIGTERM and starts it again: both are back with their ids and
// ports, the rule answers, the connection reconnects, a subscriber
// resuming from the first run sees the new incarnation and the restored
// listener's start; a second daemon on the same file refuses to start;
// and `tcpgate config export` prints YAML that decodes into the Config
// message.
func TestStateRestartE2E(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "tcpgate.state")
	peer := servertest.NewLineServer(t, servertest.EchoLine)
	serve := []string{"serve", "--grpc-addr", "127.0.0.1:0", "--http-addr", "", "--state-file", path}

	first := startDaemon(t, hermeticEnv(), serve...)
	c := client{addr: first.waitServing(t)}
	var started struct {
		Listener listenerJSON `json:"listener"`
		Header   struct {
			Incarnation  string `json:"incarnation"`
			LastSequence uint64 `json:"lastSequence,string"`
		} `json:"header"`
	}
	c.call(t, "StartListener", map[string]any{"listener_id": "rules", "host": "127.0.0.1",
		"framing":    map[string]any{"mode": "FRAMING_MODE_LINE"},
		"auto_reply": map[string]any{"rules": []any{map[string]any{"kind": "MATCH_KIND_REGEX", "regex": `^PING (\d+)$`, "reply_text": "PONG {{1}}"}}}}, &started)
	var connected struct{}
	c.call(t, "Connect", map[string]any{"connection_id": "feed", "address": peer.Addr(), "framing": map[string]any{"mode": "FRAMING_MODE_LINE"}}, &connected)
	first.stop(t)

	second := startDaemon(t, hermeticEnv(), serve...)
	addr2 := second.waitServing(t)
	c2 := client{addr: addr2}
	var got struct {
		Listener listenerJSON `json:"listener"`
	}
	c2.call(t, "GetListener", map[string]any{"listener_id": "rules"}, &got)
	if got.Listener.Address != started.Listener.Address {
		t.Errorf("listener rules back on %s, want its old address %s", got.Listener.Address, started.Listener.Address)
	}
	rc := servertest.Dial(t, got.Listener.Address)
	if _, err := rc.Write([]byte("PING 42\n")); err != nil {
		t.Fatal(err)
	}
	if line, err := bufio.NewReader(rc).ReadString('\n'); err != nil || line != "PONG 42\n" {
		t.Errorf("restored rule answered %q, %v; want PONG 42", line, err)
	}
	servertest.Eventually(t, "feed reconnected", func() bool {
		var conn struct {
			Connection struct {
				State string `json:"state"`
			} `json:"connection"`
		}
		c2.call(t, "GetConnection", map[string]any{"connection_id": "feed"}, &conn)
		return conn.Connection.State == "CONNECTION_STATE_OPEN"
	})

	// A subscriber resuming from the first run.
	resumed := subscribe(t, addr2, map[string]any{"since_incarnation": started.Header.Incarnation, "since_sequence": started.Header.LastSequence + 1})
	_, inc := resumed.waitFor(t, 0, "INCARNATION_CHANGED", func(e eventJSON) bool { return e.Kind == kindIncarnationChg })
	if inc.Header.Incarnation == "" || inc.Header.Incarnation == started.Header.Incarnation {
		t.Errorf("INCARNATION_CHANGED carries %q, want a new incarnation (the first was %q)", inc.Header.Incarnation, started.Header.Incarnation)
	}
	resumed.waitFor(t, 0, "the restored listener's LISTENER_STARTED", func(e eventJSON) bool {
		return e.Kind == "EVENT_KIND_LISTENER_STARTED" && e.ListenerID == "rules" && e.LocalAddress == started.Listener.Address
	})

	// One daemon per state file.
	if out := runFailing(t, hermeticEnv(), serve...); !strings.Contains(out, "locked") || !strings.Contains(out, path) {
		t.Errorf("second daemon on the state file: %s; want a refusal naming the locked file", out)
	}

	// config export prints the API-made objects as a config file.
	out, _ := cliRunner{env: hermeticEnv()}.mustRun(t, "config", "export", "--server", addr2)
	var doc any
	if err := yaml.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("config export printed no YAML: %v\n%s", err, out)
	}
	j, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	var cfg tcpgatev1.Config
	if err := protojson.Unmarshal(j, &cfg); err != nil {
		t.Fatalf("config export's YAML is not a Config: %v\n%s", err, out)
	}
	_, port, _ := strings.Cut(started.Listener.Address, ":")
	if len(cfg.GetListeners()) != 1 || cfg.GetListeners()[0].GetListenerId() != "rules" || fmt.Sprint(cfg.GetListeners()[0].GetPort()) != port ||
		len(cfg.GetListeners()[0].GetAutoReply().GetRules()) != 1 || len(cfg.GetConnections()) != 1 || cfg.GetConnections()[0].GetConnectionId() != "feed" {
		t.Errorf("config export = %v, want listener rules on port %s with its rule and connection feed\n%s", &cfg, port, out)
	}
	second.stop(t)
}

// TestStateKill9E2E: 8 clients start and stop listeners over REST as fast
// as they can while the daemon is killed with SIGKILL at a random moment.
// The state file left is whole (never torn), holds every listener whose
// start was acknowledged and not one whose stop was, and the next daemon
// starts from it with those listeners.
func TestStateKill9E2E(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "tcpgate.state")
	d := startDaemon(t, hermeticEnv(), "serve", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--state-file", path)
	d.waitServing(t)
	m := httpAddrLine.FindStringSubmatch(d.stderr.String())
	if m == nil {
		t.Fatalf("no REST address in the log:\n%s", d.stderr.String())
	}
	base := "http://" + strings.Trim(m[1], `"`)

	const (
		clients   = 8
		churnFor  = 2 * time.Second
		maxOps    = 400 // per client
		opTimeout = 5 * time.Second
	)
	rnd := servertest.Rand(t)
	killAfter := 300*time.Millisecond + time.Duration(rnd.Int64N(int64(1200*time.Millisecond)))

	// For each id: the last operation acknowledged before the kill, and
	// whether one was still unanswered when it came.
	type idState struct {
		acked   string // "start" or "stop"
		pending bool
	}
	var (
		mu     sync.Mutex
		ids    = map[string]*idState{}
		killed atomic.Bool
		acks   atomic.Int64
	)
	hc := &http.Client{Timeout: opTimeout}
	op := func(id, what string) bool {
		mu.Lock()
		st := ids[id]
		if st == nil {
			st = &idState{}
			ids[id] = st
		}
		st.pending = true
		mu.Unlock()
		var req *http.Request
		if what == "start" {
			req, _ = http.NewRequest(http.MethodPost, base+"/v1/listeners", strings.NewReader(`{"listenerId":"`+id+`","host":"127.0.0.1"}`))
			req.Header.Set("Content-Type", "application/json")
		} else {
			req, _ = http.NewRequest(http.MethodDelete, base+"/v1/listeners/"+id, nil)
		}
		resp, err := hc.Do(req)
		if err != nil {
			return false
		}
		resp.Body.Close()
		ok := resp.StatusCode == http.StatusOK
		// Read before the kill is sent: the daemon answered, so it had
		// saved the change.
		if ok && !killed.Load() {
			mu.Lock()
			st.acked, st.pending = what, false
			mu.Unlock()
			acks.Add(1)
		}
		return ok
	}
	var wg sync.WaitGroup
	deadline := time.Now().Add(churnFor)
	for g := range clients {
		wg.Go(func() {
			for n := 0; n < maxOps && time.Now().Before(deadline); n++ {
				id := fmt.Sprintf("g%d-%d", g, n)
				if !op(id, "start") {
					return
				}
				// Every other listener is stopped again.
				if n%2 == 1 && !op(id, "stop") {
					return
				}
			}
		})
	}
	time.Sleep(killAfter)
	killed.Store(true)
	if err := d.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	d.waitExit(t, exitTimeout)
	if acks.Load() == 0 {
		t.Fatalf("no change acknowledged in %v before the kill: the test shows nothing", killAfter)
	}

	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	inFile := stateFileListeners(t, b)
	checked := 0
	mu.Lock()
	for id, st := range ids {
		if st.pending || st.acked == "" {
			continue // either state is right for a change in flight at the kill
		}
		checked++
		if want := st.acked == "start"; inFile[id] != want {
			t.Errorf("listener %s: last acknowledged %s, in the state file %v", id, st.acked, inFile[id])
		}
	}
	mu.Unlock()
	t.Logf("killed after %v: %d changes acknowledged, %d ids checked, %d listeners in the file", killAfter, acks.Load(), checked, len(inFile))

	// The next daemon starts from the file: the lock died with the process.
	next := startDaemon(t, hermeticEnv(), "serve", "--grpc-addr", "127.0.0.1:0", "--http-addr", "", "--state-file", path)
	var list struct {
		Listeners []listenerJSON `json:"listeners"`
	}
	client{addr: next.waitServing(t)}.call(t, "ListListeners", map[string]any{"page_size": 1000}, &list)
	if len(list.Listeners) != len(inFile) {
		t.Errorf("restarted with %d listeners, the file holds %d", len(list.Listeners), len(inFile))
	}
	next.stop(t)
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// stateFileListeners checks that b is a whole state file, as
// server/internal/store documents it (header, checksummed lines, end
// line with the count), and returns the ids of its listeners.
func stateFileListeners(t *testing.T, b []byte) map[string]bool {
	t.Helper()
	lines := strings.Split(string(b), "\n")
	if len(lines) < 3 || lines[0] != "tcpgate-state 1" || lines[len(lines)-1] != "" {
		t.Fatalf("state file is not whole:\n%s", b)
	}
	body := lines[1 : len(lines)-2]
	if lines[len(lines)-2] != "end "+strconv.Itoa(len(body)) {
		t.Fatalf("state file ends %q with %d records: torn", lines[len(lines)-2], len(body))
	}
	ids := map[string]bool{}
	for i, l := range body {
		sum, rec, _ := strings.Cut(l, " ")
		if fmt.Sprintf("%08x", crc32.Checksum([]byte(rec), castagnoli)) != sum {
			t.Fatalf("state file line %d: checksum mismatch: %q", i+2, l)
		}
		var r struct {
			Listener struct {
				ListenerID string `json:"listenerId"`
			} `json:"listener"`
		}
		if err := json.Unmarshal([]byte(rec), &r); err != nil {
			t.Fatalf("state file line %d: %v", i+2, err)
		}
		ids[r.Listener.ListenerID] = true
	}
	return ids
}
