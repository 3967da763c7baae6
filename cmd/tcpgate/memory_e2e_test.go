package main_test

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
)

// Memory bounds are asserted on the daemon a user runs: plainBin, built
// without -race (whose shadow memory would multiply every figure), under
// the load of the repro, against the peak resident set the kernel records
// (VmHWM), with the margin each test states.

// startPlainDaemon starts tcpgate built without -race; see startDaemon.
func startPlainDaemon(t *testing.T, env []string, args ...string) *daemon {
	t.Helper()
	return startDaemonBin(t, plainBin, env, args...)
}

// memStatus returns the field of /proc/PID/status named key ("VmHWM",
// "VmRSS"), in bytes.
func memStatus(pid int, key string) (uint64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), ":")
		if !ok || name != key {
			continue
		}
		kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(val), " kB"), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/%d/status %s: %q: %w", pid, key, val, err)
		}
		return kb << 10, nil
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("/proc/%d/status has no %s", pid, key)
}

// peakRSS returns the daemon's peak resident set so far (VmHWM).
func (d *daemon) peakRSS(t *testing.T) uint64 {
	t.Helper()
	n, err := memStatus(d.cmd.Process.Pid, "VmHWM")
	if err != nil {
		t.Fatalf("reading the daemon's peak RSS: %v", err)
	}
	return n
}

// rss returns the daemon's resident set now (VmRSS).
func (d *daemon) rss(t *testing.T) uint64 {
	t.Helper()
	n, err := memStatus(d.cmd.Process.Pid, "VmRSS")
	if err != nil {
		t.Fatalf("reading the daemon's RSS: %v", err)
	}
	return n
}

// mib formats n bytes in MiB for test messages.
func mib(n uint64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// TestMemStatus reads this test process's own figures: both exist, and the
// peak is at least the current resident set.
func TestMemStatus(t *testing.T) {
	pid := os.Getpid()
	// The resident set first: the peak read after it can only be higher.
	rss, err := memStatus(pid, "VmRSS")
	if err != nil {
		t.Fatal(err)
	}
	hwm, err := memStatus(pid, "VmHWM")
	if err != nil {
		t.Fatal(err)
	}
	if rss == 0 || hwm < rss {
		t.Fatalf("VmRSS %s, VmHWM %s: want 0 < VmRSS <= VmHWM", mib(rss), mib(hwm))
	}
	if _, err := memStatus(pid, "VmNothing"); err == nil {
		t.Fatal("memStatus found a field that does not exist")
	}
}
