package main_test

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp/syntax"
	"runtime/debug"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// The binaries under test, built once by TestMain into a temporary
// directory; empty in a process that runs no test (see needBinaries).
var (
	tcpgateBin string
	grpcurlBin string
	// plainBin is tcpgate built without -race, whose memory is what a
	// user's daemon uses: memory bounds are measured on it (memory_e2e_test.go).
	plainBin string
	// natsBin is the NATS server pinned in go.mod, for make run-cluster's
	// script (runcluster_e2e_test.go).
	natsBin string
)

// buildTimeout bounds building both binaries. A cold build cache with -race
// takes over a minute on a small machine; a warm one takes seconds.
const buildTimeout = 5 * time.Minute

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

// runMain builds the binaries when a test may need them, runs the tests,
// then looks for leaked goroutines, as goleak.VerifyTestMain does, and
// removes the binaries.
func runMain(m *testing.M) int {
	flag.Parse()
	if needBinaries() {
		dir, err := os.MkdirTemp("", "tcpgate-e2e-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "creating the binary directory:", err)
			return 1
		}
		defer os.RemoveAll(dir)

		if err := buildBinaries(dir); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}

	code := m.Run()
	if err := goleak.Find(); err != nil {
		fmt.Fprintf(os.Stderr, "goleak: errors on successful test run: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// needBinaries reports whether this process may run a test, and so needs
// the binaries. A fuzz worker runs only its fuzz target, -test.list only
// lists, and a -test.run pattern that matches only the empty string (the
// "-run '^$'" of `make fuzz`) selects no test, since no test's name is
// empty. Building there would cost every fuzz worker the build time out of
// its -fuzztime, which at a few seconds leaves no time to fuzz at all.
func needBinaries() bool {
	if flagValue("test.fuzzworker") == "true" || flagValue("test.list") != "" {
		return false
	}
	return !matchesOnlyEmpty(flagValue("test.run"))
}

// flagValue returns the value of the flag named name, or "" when no such
// flag is defined.
func flagValue(name string) string {
	if f := flag.Lookup(name); f != nil {
		return f.Value.String()
	}
	return ""
}

// matchesOnlyEmpty reports whether pattern, a -test.run pattern, matches
// nothing but the empty string: it is made of anchors alone, such as "^$".
// An empty pattern matches every test, so it is not.
func matchesOnlyEmpty(pattern string) bool {
	if pattern == "" {
		return false
	}
	re, err := syntax.Parse(pattern, syntax.Perl)
	if err != nil {
		return false // the testing package reports it
	}
	var anchorsOnly func(re *syntax.Regexp) bool
	anchorsOnly = func(re *syntax.Regexp) bool {
		switch re.Op {
		case syntax.OpEmptyMatch, syntax.OpBeginLine, syntax.OpEndLine, syntax.OpBeginText, syntax.OpEndText:
			return true
		case syntax.OpConcat, syntax.OpCapture:
			for _, sub := range re.Sub {
				if !anchorsOnly(sub) {
					return false
				}
			}
			return true
		}
		return false
	}
	return anchorsOnly(re)
}

// buildBinaries builds tcpgate (with -race when the test binary has it, so
// a data race in the daemon makes it exit with status 66 and fails the
// test, and then once more without it for the memory tests) and the
// grpcurl pinned in go.mod, in parallel.
func buildBinaries(dir string) error {
	goBin, err := exec.LookPath("go")
	if err != nil {
		return fmt.Errorf("finding the go command: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()

	out, err := exec.CommandContext(ctx, goBin, "env", "GOMOD").Output()
	if err != nil {
		return fmt.Errorf("running go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return fmt.Errorf("go env GOMOD: not inside a module (got %q)", gomod)
	}
	root := filepath.Dir(gomod)

	tcpgateBin = filepath.Join(dir, "tcpgate")
	grpcurlBin = filepath.Join(dir, "grpcurl")
	natsBin = filepath.Join(dir, "nats-server")
	plainBin = tcpgateBin
	tcpgateArgs := []string{"build", "-o", tcpgateBin}
	if raceEnabled() {
		tcpgateArgs = append(tcpgateArgs, "-race")
	}
	tcpgateArgs = append(tcpgateArgs, "./cmd/tcpgate")
	builds := [][]string{
		tcpgateArgs,
		{"build", "-o", grpcurlBin, "github.com/fullstorydev/grpcurl/cmd/grpcurl"},
		{"build", "-o", natsBin, "github.com/nats-io/nats-server/v2"},
	}
	if raceEnabled() {
		plainBin = filepath.Join(dir, "tcpgate-plain")
		builds = append(builds, []string{"build", "-o", plainBin, "./cmd/tcpgate"})
	}

	errs := make([]error, len(builds))
	var wg sync.WaitGroup
	for i, args := range builds {
		wg.Go(func() {
			cmd := exec.CommandContext(ctx, goBin, args...)
			cmd.Dir = root
			if out, err := cmd.CombinedOutput(); err != nil {
				errs[i] = fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out)
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// raceEnabled reports whether this test binary was built with -race.
func raceEnabled() bool {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, s := range info.Settings {
		if s.Key == "-race" {
			return s.Value == "true"
		}
	}
	return false
}

// TestMatchesOnlyEmpty: the patterns that select no test skip the build;
// every pattern that may select one, or that is unusual, keeps it.
func TestMatchesOnlyEmpty(t *testing.T) {
	tests := []struct {
		pattern string
		want    bool
	}{
		{"^$", true},
		{"$^", true},
		{`^\z`, true},
		{"^()$", true},
		{"", false}, // every test
		{".", false},
		{"^TestE2E$", false},
		{"^$|Test", false},
		{"^$/sub", false},
		{"x*", false},
		{"(", false}, // malformed: left to the testing package
	}
	for _, tt := range tests {
		t.Run(tt.pattern, func(t *testing.T) {
			if got := matchesOnlyEmpty(tt.pattern); got != tt.want {
				t.Fatalf("matchesOnlyEmpty(%q) = %v, want %v", tt.pattern, got, tt.want)
			}
		})
	}
}
