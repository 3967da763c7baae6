package main_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server/servertest"
)

// TestServeTLSFiles runs the plain binary and names a FIFO and /dev/zero
// as TLS files over the API, without --tls-files-dir, with it (flag), and
// with it set to /dev itself (TCPGATE_TLS_FILES_DIR), where /dev/zero is
// inside the directory and only the descriptor's type refuses it. Every
// call returns InvalidArgument at once, naming the field; no call holds a
// thread or grows the daemon: its peak RSS (VmHWM) stays within
// rssMargin of what it was before the calls, and its thread count within
// threadMargin. Before the fix, a FIFO held each call until its deadline
// (one blocked thread each) and /dev/zero grew the daemon by gigabytes a
// second; a watchdog kills the daemon past the margin, so that such a
// failure ends in seconds instead of taking the machine's memory.
func TestServeTLSFiles(t *testing.T) {
	t.Parallel()
	const (
		calls = 32 // of each kind, at once
		// rssMargin is generous for the refused calls, which
		// allocate a few KiB each; a /dev/zero read passes it in tens
		// of milliseconds.
		rssMargin = 16 << 20
		// threadMargin leaves room for the runtime starting threads for
		// short syscalls; calls blocked in open would hold calls more.
		threadMargin = calls / 2
		// callDeadline is what a blocked call would wait before
		// DeadlineExceeded.
		callDeadline = 5 * time.Second
	)
	ca := servertest.NewCA(t)
	cert, key := ca.IssueLoopback(t)
	dir := t.TempDir()
	for name, b := range map[string][]byte{"server.pem": cert, "server-key.pem": key} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	fifo := filepath.Join(dir, "fifo.pem")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	zeroLink := filepath.Join(dir, "zero.pem")
	if err := os.Symlink("/dev/zero", zeroLink); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name  string
		env   []string
		args  []string
		paths []string // each named in every file field
		want  string   // the message after "FIELD: "
		works string   // a certificate path the daemon reads, if any
	}{
		{name: "without --tls-files-dir", env: hermeticEnv(),
			paths: []string{fifo, "/dev/zero"}, want: "file paths are not allowed"},
		{name: "with --tls-files-dir", env: hermeticEnv(), args: []string{"--tls-files-dir", dir},
			paths: []string{fifo, "/dev/zero", zeroLink}, want: "not an allowed file", works: filepath.Join(dir, "server.pem")},
		{name: "TCPGATE_TLS_FILES_DIR=/dev", env: hermeticEnv("TCPGATE_TLS_FILES_DIR=/dev"),
			paths: []string{"/dev/zero", "zero"}, want: "not an allowed file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := startPlainDaemon(t, tc.env, append([]string{"serve", "--grpc-addr", "127.0.0.1:0", "--http-addr", ""}, tc.args...)...)
			api := servertest.Client(t, d.waitServing(t))

			// One call first, so that the connection and the handler's
			// code are in the baseline.
			warm, cancel := context.WithTimeout(context.Background(), callTimeout)
			_, err := api.ListListeners(warm, &tcpgatev1.ListListenersRequest{})
			cancel()
			if err != nil {
				t.Fatal(err)
			}
			listen := func(tl *tcpgatev1.ListenerTLS) error {
				ctx, cancel := context.WithTimeout(context.Background(), callDeadline)
				defer cancel()
				_, err := api.StartListener(ctx, &tcpgatev1.StartListenerRequest{Host: "127.0.0.1", Tls: tl})
				return err
			}
			send := func(dt *tcpgatev1.DialTLS) error {
				ctx, cancel := context.WithTimeout(context.Background(), callDeadline)
				defer cancel()
				_, err := api.Send(ctx, &tcpgatev1.SendRequest{
					Target:  &tcpgatev1.SendRequest_Address{Address: "127.0.0.1:1"},
					Payload: &tcpgatev1.SendRequest_Text{Text: "x"},
					Tls:     dt,
				})
				return err
			}
			kinds := []struct {
				field string
				run   func(path string) error
			}{
				{"tls.cert_file", func(p string) error {
					return listen(&tcpgatev1.ListenerTLS{CertFile: p, KeyPem: string(key)})
				}},
				{"tls.key_file", func(p string) error {
					return listen(&tcpgatev1.ListenerTLS{CertPem: string(cert), KeyFile: p})
				}},
				{"tls.client_ca_file", func(p string) error {
					return listen(&tcpgatev1.ListenerTLS{CertPem: string(cert), KeyPem: string(key), ClientCaFile: p})
				}},
				{"tls.ca_file", func(p string) error { return send(&tcpgatev1.DialTLS{CaFile: p}) }},
			}
			// One round of calls per path, each checked on its own: a
			// FIFO holds calls (and threads), /dev/zero grows memory.
			for _, p := range tc.paths {
				t.Run(strings.ReplaceAll(p, dir, "DIR"), func(t *testing.T) {
					before, threads := d.peakRSS(t), procThreads(t, d)
					stopWatch := rssWatchdog(t, d, before+rssMargin)
					var (
						wg       sync.WaitGroup
						mu       sync.Mutex // guards failures
						failures []string
					)
					for i := range calls {
						k := kinds[i%len(kinds)]
						wg.Go(func() {
							err := k.run(p)
							if status.Code(err) != codes.InvalidArgument || !strings.HasPrefix(status.Convert(err).Message(), k.field+": "+tc.want) {
								mu.Lock()
								failures = append(failures, fmt.Sprintf("%s %s: %v", k.field, p, err))
								mu.Unlock()
							}
						})
					}
					wg.Wait()
					if killed := stopWatch(); killed != "" {
						t.Fatal(killed)
					}
					n := procThreads(t, d)
					for i, f := range failures {
						if i == 4 {
							t.Errorf("... %d of %d calls failed", len(failures), calls)
							break
						}
						t.Errorf("%s; want InvalidArgument starting FIELD: %s", f, tc.want)
					}
					after := d.peakRSS(t)
					t.Logf("peak RSS %s before, %s after %d calls (margin %s); threads %d before, %d after", mib(before), mib(after), calls, mib(rssMargin), threads, n)
					if after > before+rssMargin {
						t.Errorf("peak RSS grew from %s to %s, past the %s margin", mib(before), mib(after), mib(rssMargin))
					}
					if n > threads+threadMargin {
						t.Errorf("the daemon runs %d threads after the calls, %d before: calls are holding threads", n, threads)
					}
				})
			}

			if tc.works != "" {
				if err := listen(&tcpgatev1.ListenerTLS{CertFile: tc.works, KeyFile: "server-key.pem"}); err != nil {
					t.Errorf("StartListener with cert_file %s inside --tls-files-dir: %v", tc.works, err)
				}
			}
			d.stop(t)
		})
	}
}

// procThreads returns the daemon's thread count.
func procThreads(t *testing.T, d *daemon) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", d.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "Threads:"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				t.Fatalf("Threads: %q: %v", v, err)
			}
			return n
		}
	}
	t.Fatal("no Threads in /proc/PID/status")
	return 0
}

// rssWatchdog kills the daemon as soon as its resident set passes limit,
// so that an unbounded allocation fails the test in a moment instead of
// taking the machine's memory. stop ends the watch and says what it did,
// "" when it did nothing.
func rssWatchdog(t *testing.T, d *daemon, limit uint64) (stop func() string) {
	t.Helper()
	quit := make(chan struct{})
	done := make(chan string, 1)
	go func() {
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-quit:
				done <- ""
				return
			case <-tick.C:
			}
			n, err := memStatus(d.cmd.Process.Pid, "VmRSS")
			if err != nil {
				done <- "" // the daemon has exited; the calls report it
				return
			}
			if n > limit {
				_ = d.cmd.Process.Kill()
				done <- fmt.Sprintf("the daemon's RSS reached %s, past the limit of %s: killed", mib(n), mib(limit))
				return
			}
		}
	}()
	var once sync.Once
	var msg string
	return func() string {
		once.Do(func() { close(quit); msg = <-done })
		return msg
	}
}
