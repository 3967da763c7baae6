package main

import (
	"maps"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestBrowserRows runs the browser, sse10 and console scenarios once, at
// tiny counts, against a daemon built from this tree, and reads the JSON:
// tcpgate's SSE rows, with every line delivered and a latency measured;
// Node-RED's rows and the two ratios with the targets when Node-RED
// is installed in bench/nodered (`make bench` installs it); the 10
// subscribers' rows; and, with chromium installed, the console's rows with
// the page's rows in the DOM no more than its cap.
func TestBrowserRows(t *testing.T) {
	nodered, err := filepath.Abs("../../bench/nodered")
	if err != nil {
		t.Fatal(err)
	}
	b := runScenario(t, "--scenarios", "browser,sse10,console", "--browser-lines", "5000",
		"--latency-rate", "2000", "--latency-duration", "500ms", "--console-duration", "750ms", "--nodered", nodered)
	haveNodeRED := noderedInstalled(nodered) == nil
	_, chromiumErr := exec.LookPath("chromium")
	for _, n := range b.Notes {
		switch {
		case strings.Contains(n, "failed"), strings.Contains(n, " of ") && strings.Contains(n, " got "):
			t.Errorf("note: %s", n)
		case strings.Contains(n, "Node-RED baseline is unavailable") && haveNodeRED:
			t.Errorf("note: %s, with Node-RED installed", n)
		}
	}
	rows := map[string]map[string]*metric{}
	for _, m := range b.Metrics {
		if rows[m.Scenario] == nil {
			rows[m.Scenario] = map[string]*metric{}
		}
		rows[m.Scenario][m.Name] = m
	}
	type want struct {
		scenario, name string
		zeroOK         bool // a count that may be 0 (no long task)
		target         *target
		when           bool
	}
	wants := []want{
		{"browser", "tcpgate SSE: lines/s, 1 subscriber", false, nil, true},
		{"browser", "tcpgate SSE: p50 at 10,000 lines/s", false, nil, true},
		{"browser", "tcpgate SSE: p99 at 10,000 lines/s", false, nil, true},
		{"browser", "Node-RED 4 WebSocket: lines/s, 1 client", false, nil, haveNodeRED},
		{"browser", "Node-RED 4 WebSocket: p99 at 10,000 lines/s", false, nil, haveNodeRED},
		{"browser", "tcpgate / Node-RED, lines/s", false, &target{">=", 5}, haveNodeRED},
		{"browser", "tcpgate / Node-RED, p99", false, &target{"<=", 1}, haveNodeRED},
		{"sse10", "lines/s each, 10 SSE subscribers (median)", false, nil, true},
		{"sse10", "lines/s total, 10 SSE subscribers", false, nil, true},
		{"sse10", "p99 at 10,000 lines/s, 10 subscribers (worst of them)", false, nil, true},
		{"console", "longest task (PerformanceObserver longtask; 0: none over 50 ms)", true, nil, chromiumErr == nil},
		{"console", "p99 frame gap (requestAnimationFrame)", false, nil, chromiumErr == nil},
		{"console", "events shown/s, as the page saw them", false, nil, chromiumErr == nil},
		{"console", "rows in the DOM, most at once", false, nil, chromiumErr == nil},
	}
	for _, w := range wants {
		t.Run(w.scenario+"/"+w.name, func(t *testing.T) {
			m := rows[w.scenario][w.name]
			if !w.when {
				if m != nil {
					t.Errorf("row present without what it measures: %v", m.Values)
				}
				t.Skip("not installed here")
			}
			if m == nil {
				t.Fatalf("no row; rows: %v", slices.Sorted(maps.Keys(rows[w.scenario])))
			}
			if len(m.Values) != 1 || m.Values[0] < 0 || (!w.zeroOK && !(m.Values[0] > 0)) {
				t.Errorf("values %v, want one above 0", m.Values)
			}
			if w.target != nil && (m.Target == nil || *m.Target != *w.target) {
				t.Errorf("target %v, want %v", m.Target, w.target)
			}
		})
	}
	if m := rows["console"]["rows in the DOM, most at once"]; m != nil && m.Values[0] > consoleRowCap {
		t.Errorf("the traffic view held %v rows, over its cap of %d", m.Values[0], consoleRowCap)
	}
}

// TestNodeREDUnavailable runs the browser scenario with a Node-RED
// directory that holds no install: tcpgate's rows are there, Node-RED's
// are not, and a note says why.
func TestNodeREDUnavailable(t *testing.T) {
	b := runScenario(t, "--scenarios", "browser", "--browser-lines", "2000",
		"--latency-rate", "2000", "--latency-duration", "200ms", "--nodered", t.TempDir())
	var names []string
	for _, m := range b.Metrics {
		names = append(names, m.Name)
	}
	if !slices.Contains(names, "tcpgate SSE: lines/s, 1 subscriber") {
		t.Errorf("rows %q: no tcpgate SSE row", names)
	}
	if slices.ContainsFunc(names, func(n string) bool { return strings.Contains(n, "Node-RED") }) {
		t.Errorf("rows %q: Node-RED rows without Node-RED", names)
	}
	if !slices.ContainsFunc(b.Notes, func(n string) bool { return strings.Contains(n, "Node-RED baseline is unavailable") }) {
		t.Errorf("notes %q: none says the Node-RED baseline is unavailable", b.Notes)
	}
}
