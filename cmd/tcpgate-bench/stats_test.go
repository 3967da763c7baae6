package main

import (
	"math"
	"os"
	"testing"

	"go.uber.org/goleak"
)

// TestMain is also the child processes of the scenarios a test runs: the
// orchestrator starts its own executable, this test binary, as a child.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && commands()[os.Args[1]] != nil {
		main()
		return
	}
	goleak.VerifyTestMain(m)
}

func TestMedian(t *testing.T) {
	tests := []struct {
		in   []float64
		want float64
	}{
		{[]float64{3}, 3},
		{[]float64{3, 1, 2}, 2},
		{[]float64{4, 1, 3, 2}, 2.5},
		{[]float64{1130, 1170, 1110}, 1130},
	}
	for _, tt := range tests {
		if got := median(tt.in); got != tt.want {
			t.Errorf("median(%v) = %v, want %v", tt.in, got, tt.want)
		}
	}
	if !math.IsNaN(median(nil)) {
		t.Error("median of nothing is not NaN")
	}
}

func TestFormat(t *testing.T) {
	tests := []struct {
		in   float64
		want string
	}{
		{math.NaN(), "n/a"},
		{0.5, "0.50"},
		{12.34, "12.3"},
		{282.4, "282"},
		{1834567, "1,830,000"},
		{9780, "9,780"},
		{-1234, "-1,230"},
	}
	for _, tt := range tests {
		if got := format(tt.in); got != tt.want {
			t.Errorf("format(%v) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// TestSummarize checks the quantiles on samples whose ranks are known:
// 1..1000 µs.
func TestSummarize(t *testing.T) {
	ns := make([]int64, 1000)
	for i := range ns {
		ns[len(ns)-1-i] = int64(i+1) * 1000 // reversed: summarize sorts
	}
	s := summarize(ns)
	if s.Samples != 1000 || s.P50us != 500 || s.P99us != 990 || s.P999us != 999 || s.MaxUs != 1000 {
		t.Fatalf("summary = %+v", *s)
	}
	if got := summarize(nil); got.Samples != 0 {
		t.Fatalf("summary of nothing = %+v", *got)
	}
}
