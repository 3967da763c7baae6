package main_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// The binaries under test, built once by TestMain into a temporary directory.
var (
	tcpgateBin string
	grpcurlBin string
)

// buildTimeout bounds building both binaries. A cold build cache with -race
// takes over a minute on a small machine; a warm one takes seconds.
const buildTimeout = 5 * time.Minute

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

// runMain builds the binaries, runs the tests, then looks for leaked
// goroutines, as goleak.VerifyTestMain does, and removes the binaries.
func runMain(m *testing.M) int {
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

	code := m.Run()
	if err := goleak.Find(); err != nil {
		fmt.Fprintf(os.Stderr, "goleak: errors on successful test run: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// buildBinaries builds tcpgate (with -race when the test binary has it, so
// a data race in the daemon makes it exit with status 66 and fails the
// test) and the grpcurl pinned in go.mod, in parallel.
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
	tcpgateArgs := []string{"build", "-o", tcpgateBin}
	if raceEnabled() {
		tcpgateArgs = append(tcpgateArgs, "-race")
	}
	tcpgateArgs = append(tcpgateArgs, "./cmd/tcpgate")
	builds := [][]string{
		tcpgateArgs,
		{"build", "-o", grpcurlBin, "github.com/fullstorydev/grpcurl/cmd/grpcurl"},
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
