package main

import (
	"strings"
	"testing"
)

// TestHandleRows runs the handle scenario once, for a short window,
// against a daemon built from this tree, and reads its JSON: one Handle
// stream, four in one group and the fixed reply, each with its p50 and
// p99, then the ratio to the fixed reply with the target of 0.5
// and the mark of 100,000 exchanges/s. A lost answer fails the run, and
// so does a handler that answered fewer frames than the clients read.
func TestHandleRows(t *testing.T) {
	b := runScenario(t, "--scenarios", "handle", "--duration", "300ms")
	for _, n := range b.Notes {
		if strings.HasPrefix(n, "handle") || strings.Contains(n, "failed") {
			t.Errorf("note: %s", n)
		}
	}
	want := []string{
		"exchanges/s, 1 Handle stream", "1 stream: p50", "1 stream: p99",
		"exchanges/s, 4 Handle streams in one group", "4 streams: p50", "4 streams: p99",
		"exchanges/s, fixed auto reply (baseline)", "fixed: p50", "fixed: p99",
		"1 stream / fixed", "1 stream / 100,000 exchanges/s",
	}
	targets := map[string]float64{"1 stream / fixed": 0.5, "1 stream / 100,000 exchanges/s": 1}
	var got []string
	for _, m := range b.Metrics {
		if m.Scenario != "handle" {
			continue
		}
		got = append(got, m.Name)
		if len(m.Values) != 1 || !(m.Values[0] > 0) {
			t.Errorf("%s: values %v, want one above 0", m.Name, m.Values)
		}
		if v, ok := targets[m.Name]; ok && (m.Target == nil || m.Target.Op != ">=" || m.Target.Value != v) {
			t.Errorf("%s: target %v, want >= %v", m.Name, m.Target, v)
		}
	}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("handle rows\n got %q\nwant %q", got, want)
	}
}
