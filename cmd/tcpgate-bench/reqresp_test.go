package main

import (
	"strings"
	"testing"
)

// TestReqRespRows runs the request/response scenario with 32 callers once,
// for a short window, against a daemon built from this tree, and reads its
// JSON: the gateway's calls/s, p50 and p99 come first, then baseline A
// (the gRPC echo server) and B (direct TCP) with their ratios, the ratio
// to A carrying the target of 0.6. A failed call fails the run.
func TestReqRespRows(t *testing.T) {
	b := runScenario(t, "--scenarios", "reqresp32", "--duration", "300ms")
	for _, n := range b.Notes {
		if strings.HasPrefix(n, "reqresp") || strings.Contains(n, "failed") {
			t.Errorf("note: %s", n)
		}
	}
	want := []string{
		"calls/s, 32 callers", "p50", "p99", "tcpgate CPU",
		"A: gRPC unary echo server, same callers", "A: p50", "A: p99", "tcpgate / A (gRPC echo)",
		"B: direct TCP over kept connections, same callers", "B: p50", "B: p99", "tcpgate / B (direct TCP)",
	}
	var got []string
	for _, m := range b.Metrics {
		if m.Scenario != "reqresp32" {
			continue
		}
		got = append(got, m.Name)
		if len(m.Values) != 1 || !(m.Values[0] > 0) {
			t.Errorf("%s: values %v, want one above 0", m.Name, m.Values)
		}
		if m.Name == "tcpgate / A (gRPC echo)" && (m.Target == nil || m.Target.Op != ">=" || m.Target.Value != 0.6) {
			t.Errorf("%s: target %v, want >= 0.6", m.Name, m.Target)
		}
	}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("reqresp32 rows\n got %q\nwant %q", got, want)
	}
}
