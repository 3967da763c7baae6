package main

import (
	"math"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// natsLog is what nats-server 2 logs up to readiness with --port -1.
const natsLog = `[17949] 2026/12/02 18:02:51.462840 [INF] Starting JetStream
[17949] 2026/12/02 18:02:51.463286 [INF] Took 426.877µs to start JetStream
[17949] 2026/12/02 18:02:51.463792 [INF] Listening for client connections on 127.0.0.1:44451
[17949] 2026/12/02 18:02:51.463828 [INF] Server is ready
`

func TestNATSClientAddr(t *testing.T) {
	tests := []struct {
		name, log, want string
		ok              bool
	}{
		{"ready", natsLog, "127.0.0.1:44451", true},
		{"listening, not ready yet", natsLog[:strings.Index(natsLog, "Server is ready")], "", false},
		{"starting", "[1] [INF] Starting nats-server\n", "", false},
		{"nothing", "", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := natsClientAddr(tt.log)
			if got != tt.want || ok != tt.ok {
				t.Errorf("natsClientAddr = %q, %v; want %q, %v", got, ok, tt.want, tt.ok)
			}
		})
	}
}

// FuzzNATSClientAddr: whatever the log holds, the address found is a
// non-empty word of it, and none is found before the server is ready.
func FuzzNATSClientAddr(f *testing.F) {
	f.Add(natsLog)
	f.Add("Listening for client connections on \nServer is ready")
	f.Add("Server is ready Listening for client connections on [::1]:4222")
	f.Fuzz(func(t *testing.T, log string) {
		addr, ok := natsClientAddr(log)
		if !ok {
			if addr != "" {
				t.Fatalf("not ready, yet address %q", addr)
			}
			return
		}
		if !strings.Contains(log, "Server is ready") {
			t.Fatalf("ready without the ready line: %q", log)
		}
		if addr == "" || strings.ContainsAny(addr, " \t\n") || !strings.Contains(log, "on "+addr) {
			t.Fatalf("address %q is not the word after the listening line in %q", addr, log)
		}
	})
}

// TestClusterRowsFromFigures: the rows of one run, in the order the table
// shows them, the ratios of the cluster's figures over the single node's,
// and a CPU row only for a process that was measured.
func TestClusterRowsFromFigures(t *testing.T) {
	b := &bench{}
	o := &options{latencyRate: 10000}
	single := streamFigures{rate: 400_000, p50: 100, p99: 1000, cpu: []float64{90}}
	remote := streamFigures{rate: 100_000, p50: 500, p99: 4000, cpu: []float64{80, 40}} // NATS not measured
	local := streamFigures{rate: 200_000, p50: 300, p99: 2000}
	addClusterRows(b, o, single, remote, local)
	want := []struct {
		name string
		v    float64
	}{
		{"frames/s, single node (subscriber on the listener's node)", 400_000},
		{"single node: p50 at 10,000 lines/s", 100},
		{"single node: p99 at 10,000 lines/s", 1000},
		{"frames/s, cluster (listener on node a, subscriber on node b)", 100_000},
		{"cluster: p50 at 10,000 lines/s", 500},
		{"cluster: p99 at 10,000 lines/s", 4000},
		{"cluster / single node, frames/s", 0.25},
		{"cluster / single node, p50", 5},
		{"cluster / single node, p99", 4},
		{"frames/s, cluster, subscriber on node a (the listener's)", 200_000},
		{"cluster, subscriber on node a: p50 at 10,000 lines/s", 300},
		{"cluster, subscriber on node a: p99 at 10,000 lines/s", 2000},
		{"single node: tcpgate CPU at full speed", 90},
		{"cluster: node a CPU at full speed", 80},
		{"cluster: node b CPU at full speed", 40},
		{"single node: CPU per line (tcpgate)", 0.9 / 400_000 * 1e6},
		{"cluster: CPU per line (nodes a and b, NATS)", 1.2 / 100_000 * 1e6},
	}
	if len(b.Metrics) != len(want) {
		var got []string
		for _, m := range b.Metrics {
			got = append(got, m.Name)
		}
		t.Fatalf("rows %q, want %d of them", got, len(want))
	}
	for i, w := range want {
		m := b.Metrics[i]
		if m.Scenario != "cluster" || m.Name != w.name || len(m.Values) != 1 || math.Abs(m.Values[0]-w.v) > 1e-9*w.v {
			t.Errorf("row %d: %s %q %v, want cluster %q [%v]", i, m.Scenario, m.Name, m.Values, w.name, w.v)
		}
	}
	// A second run adds its values to the same rows.
	addClusterRows(b, o, single, remote, local)
	if len(b.Metrics) != len(want) || len(b.Metrics[0].Values) != 2 {
		t.Errorf("after a second run: %d rows, the first with %v", len(b.Metrics), b.Metrics[0].Values)
	}
}

// TestClusterScenario runs the cluster scenario once, with 2,000 lines at
// full speed and 0.2 s of paced lines, against a daemon and a NATS server
// built from this tree's go.mod, and reads its JSON: every row has a
// figure, so every subscriber got every line (a missing one fails the
// run, which shows in the notes).
func TestClusterScenario(t *testing.T) {
	if testing.Short() {
		t.Skip("builds nats-server and runs a scenario")
	}
	nats := filepath.Join(t.TempDir(), "nats-server")
	build := exec.Command("go", "build", "-o", nats, "github.com/nats-io/nats-server/v2")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building nats-server: %v\n%s", err, out)
	}
	b := runScenario(t, "--scenarios", "cluster", "--nats-server", nats, "--cluster-lines", "2000", "--latency-duration", "200ms")
	for _, n := range b.Notes {
		if strings.Contains(n, "behind schedule") || strings.HasPrefix(n, "other processes") {
			continue // a busy machine, not a fault
		}
		t.Errorf("note: %s", n)
	}
	rows := 0
	for _, m := range b.Metrics {
		if m.Scenario != "cluster" {
			continue
		}
		rows++
		// CPU is counted in ticks of 10 ms: a short phase may use none.
		if cpu := strings.Contains(m.Name, "CPU"); len(m.Values) != 1 || !(m.Values[0] > 0 || cpu && m.Values[0] == 0) {
			t.Errorf("%s: values %v, want one above 0", m.Name, m.Values)
		}
	}
	if rows != 18 {
		t.Errorf("%d cluster rows, want 18 (three topologies, the ratios, 4 processes' CPU, 2 of CPU per line)", rows)
	}
}
