package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestLinesHeadline runs the lines scenario once, with 20,000 lines,
// against a daemon built from this tree, and reads its JSON as a reader of
// docs/BENCHMARKS.md would read the table: the first row is the
// subscriber that decodes every event with the generated client, the
// wire-walking one follows, and with socat installed the baseline and the
// ratio decoding/socat with its target of 0.3 close the scenario. Every
// subscriber got every line.
func TestLinesHeadline(t *testing.T) {
	b := runScenario(t, "--scenarios", "lines", "--lines", "20000")
	for _, n := range b.Notes {
		if strings.Contains(n, "not installed") {
			continue // a baseline this machine lacks: checked below
		}
		if strings.HasPrefix(n, "lines") || strings.Contains(n, "failed") {
			t.Errorf("note: %s", n)
		}
	}
	var names []string
	for _, m := range b.Metrics {
		if m.Scenario != "lines" {
			continue
		}
		names = append(names, m.Name)
		if len(m.Values) != 1 || !(m.Values[0] > 0) {
			t.Errorf("%s: values %v, want one above 0", m.Name, m.Values)
		}
	}
	const (
		headline = "frames/s, 1 subscriber decoding every event (generated client)"
		second   = "frames/s, 1 subscriber walking the encoding (no decoding)"
		ratio    = "decoding / socat"
	)
	if len(names) == 0 || names[0] != headline {
		t.Fatalf("lines rows %q: the first is not %q", names, headline)
	}
	if !slices.Contains(names, second) {
		t.Errorf("lines rows %q: no %q", names, second)
	}
	if _, err := exec.LookPath("socat"); err != nil {
		t.Log("socat is not installed: no baseline to check")
		return
	}
	for _, m := range b.Metrics {
		if m.Scenario == "lines" && m.Name == ratio {
			if m.Target == nil || m.Target.Op != ">=" || m.Target.Value != 0.3 {
				t.Errorf("%s: target %v, want >= 0.3", ratio, m.Target)
			}
			return
		}
	}
	t.Errorf("lines rows %q: no %q", names, ratio)
}

// runScenario builds the daemon from this tree and runs the bench once
// with args (a scenario and its knobs) against it, returning what its JSON
// says, as a reader of docs/BENCHMARKS.md would read the table.
func runScenario(t *testing.T, args ...string) bench {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the daemon and runs a scenario")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "tcpgate")
	build := exec.Command("go", "build", "-o", bin, "github.com/tcpgate/tcpgate/cmd/tcpgate")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the daemon: %v\n%s", err, out)
	}
	out := filepath.Join(dir, "bench.json")
	stdout := os.Stdout
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer devnull.Close()
	os.Stdout = devnull // the table; the JSON is what is read
	err = runMain(append([]string{"--tcpgate", bin, "--runs", "1", "--settle", "0s", "--json", out}, args...))
	os.Stdout = stdout
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var b bench
	if err := json.Unmarshal(raw, &b); err != nil {
		t.Fatal(err)
	}
	return b
}
