package main

// Processes the orchestrator starts: the daemon under test and the
// children, with what it reads of them from /proc.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
)

// Bounds of the waits on processes. Generous: reaching one is a failure,
// not a measurement.
const (
	startTimeout = 15 * time.Second // until the daemon logs "gateway serving", or a child "ready"
	stopTimeout  = 15 * time.Second // until a process exits after SIGTERM or closed stdin
)

// tailBuffer keeps the last bytes written to it: a process's stderr, for
// error messages.
type tailBuffer struct {
	mu  sync.Mutex // guards buf
	buf []byte
}

const tailBytes = 16 << 10

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - tailBytes; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.TrimSpace(string(t.buf))
}

// sysProcAttr kills a child when the orchestrator dies, so an interrupted
// run leaves no daemon or load behind.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

// servingLine matches the daemon's log line once gRPC is served.
var servingLine = regexp.MustCompile(`msg="gateway serving" .*\bgrpc_addr=("[^"]*"|\S+)`)

// daemon is a running `tcpgate serve`.
type daemon struct {
	cmd    *exec.Cmd
	addr   string
	stderr tailBuffer
	done   chan struct{} // closed once the process has exited and err is set
	err    error
	cc     *grpc.ClientConn
	client tcpgatev1.GatewayServiceClient
}

// startDaemon runs `bin serve` on 127.0.0.1:0 without REST, with extra
// flags, waits for it to serve and connects a client.
func startDaemon(ctx context.Context, bin string, extra ...string) (*daemon, error) {
	args := append([]string{"serve", "--grpc-addr", "127.0.0.1:0", "--http-addr", "", "--log-level", "info"}, extra...)
	d := &daemon{cmd: exec.Command(bin, args...), done: make(chan struct{})}
	// The daemon reads no TCPGATE_* settings of the caller's environment:
	// only the flags above count.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "TCPGATE_") {
			d.cmd.Env = append(d.cmd.Env, kv)
		}
	}
	d.cmd.SysProcAttr = sysProcAttr()
	pipe, err := d.cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := d.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", bin, err)
	}
	serving := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pipe)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(&d.stderr, line)
			if m := servingLine.FindStringSubmatch(line); m != nil {
				select {
				case serving <- strings.Trim(m[1], `"`):
				default:
				}
			}
		}
		_, _ = io.Copy(&d.stderr, pipe) // after an overlong line
		d.err = d.cmd.Wait()
		close(d.done)
	}()
	select {
	case d.addr = <-serving:
	case <-d.done:
		return nil, fmt.Errorf("tcpgate exited before serving: %v: %s", d.err, d.stderr.String())
	case <-time.After(startTimeout):
		d.kill()
		return nil, fmt.Errorf("tcpgate did not log \"gateway serving\" within %s: %s", startTimeout, d.stderr.String())
	case <-ctx.Done():
		d.kill()
		return nil, ctx.Err()
	}
	d.cc, err = dialGateway(d.addr)
	if err != nil {
		d.kill()
		return nil, err
	}
	d.client = tcpgatev1.NewGatewayServiceClient(d.cc)
	return d, nil
}

func (d *daemon) pid() int { return d.cmd.Process.Pid }

func (d *daemon) kill() {
	_ = d.cmd.Process.Kill()
	<-d.done
}

// stop sends SIGTERM and waits for a clean exit; it kills the daemon after
// stopTimeout.
func (d *daemon) stop() error {
	if d.cc != nil {
		d.cc.Close()
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(stopTimeout):
		d.kill()
		return fmt.Errorf("tcpgate did not exit within %s of SIGTERM; killed", stopTimeout)
	}
	if d.err != nil {
		return fmt.Errorf("tcpgate exited with %v: %s", d.err, d.stderr.String())
	}
	return nil
}

// startListener starts a listener on 127.0.0.1:0 and returns its id and
// bound address.
func (d *daemon) startListener(ctx context.Context, fr *tcpgatev1.Framing) (id, addr string, err error) {
	return d.startListenerWith(ctx, &tcpgatev1.StartListenerRequest{Host: "127.0.0.1", Framing: fr})
}

// startListenerWith starts the listener req describes.
func (d *daemon) startListenerWith(ctx context.Context, req *tcpgatev1.StartListenerRequest) (id, addr string, err error) {
	resp, err := d.client.StartListener(ctx, req)
	if err != nil {
		return "", "", fmt.Errorf("starting a listener: %w", err)
	}
	return resp.GetListener().GetListenerId(), resp.GetListener().GetAddress(), nil
}

// child is a running copy of this binary in one of its child modes, or
// another program (socat).
type child struct {
	name   string
	cmd    *exec.Cmd
	stdin  io.WriteCloser // nil when stdin is not ours
	lines  chan string    // stdout, line by line; closed at EOF
	stderr tailBuffer
	done   chan struct{}
	err    error
}

// startSelf starts this binary with args and waits for its "ready" line,
// returning what follows "ready".
func startSelf(args ...string) (*child, string, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, "", err
	}
	c, err := startChild(args[0], exec.Command(self, args...), true)
	if err != nil {
		return nil, "", err
	}
	ready, err := c.line(startTimeout)
	if err != nil {
		c.close()
		return nil, "", err
	}
	if !strings.HasPrefix(ready, "ready") {
		c.close()
		return nil, "", fmt.Errorf("%s: got %q, want ready", c.name, ready)
	}
	return c, strings.TrimSpace(strings.TrimPrefix(ready, "ready")), nil
}

// startChild starts cmd, with a stdin pipe when withStdin (closing it asks
// the child to finish) and its stdout read line by line unless cmd.Stdout
// is set.
func startChild(name string, cmd *exec.Cmd, withStdin bool) (*child, error) {
	c := &child{name: name, cmd: cmd, lines: make(chan string, 16), done: make(chan struct{})}
	cmd.SysProcAttr = sysProcAttr()
	cmd.Stderr = &c.stderr
	cmd.WaitDelay = time.Second
	if withStdin {
		w, err := cmd.StdinPipe()
		if err != nil {
			return nil, err
		}
		c.stdin = w
	}
	var out io.ReadCloser
	if cmd.Stdout == nil {
		var err error
		if out, err = cmd.StdoutPipe(); err != nil {
			return nil, err
		}
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", c.name, err)
	}
	go func() {
		if out != nil {
			sc := bufio.NewScanner(out)
			sc.Buffer(nil, 1<<20)
			for sc.Scan() {
				c.lines <- sc.Text()
			}
		}
		close(c.lines)
		c.err = cmd.Wait()
		close(c.done)
	}()
	return c, nil
}

// line returns the child's next stdout line, waiting at most timeout.
func (c *child) line(timeout time.Duration) (string, error) {
	select {
	case l, ok := <-c.lines:
		if !ok {
			<-c.done
			return "", fmt.Errorf("%s exited (%v): %s", c.name, c.err, c.stderr.String())
		}
		return l, nil
	case <-time.After(timeout):
		return "", fmt.Errorf("%s: no output within %s: %s", c.name, timeout, c.stderr.String())
	}
}

// result reads the child's JSON result line into v.
func (c *child) result(timeout time.Duration, v any) error {
	l, err := c.line(timeout)
	if err != nil {
		return err
	}
	if err := json.Unmarshal([]byte(l), v); err != nil {
		return fmt.Errorf("%s: reading %q: %w", c.name, l, err)
	}
	return nil
}

// finish closes the child's stdin, reads its JSON result line into v, and
// waits for it to exit.
func (c *child) finish(v any) error {
	c.stdin.Close()
	err := c.result(stopTimeout, v)
	c.close()
	return err
}

// close asks the child to finish by closing its stdin, and kills it after
// stopTimeout. It may be called more than once.
func (c *child) close() {
	if c.stdin != nil {
		c.stdin.Close()
	} else {
		_ = c.cmd.Process.Signal(syscall.SIGTERM)
	}
	go func() {
		for range c.lines { // unblock the reader if nobody reads the rest
		}
	}()
	select {
	case <-c.done:
	case <-time.After(stopTimeout):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}

// rssBytes returns the resident set of process pid from /proc.
func rssBytes(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range bytes.Lines(b) {
		if rest, ok := bytes.CutPrefix(line, []byte("VmRSS:")); ok {
			f := strings.Fields(string(rest))
			if len(f) < 1 {
				break
			}
			kb, err := strconv.ParseInt(f[0], 10, 64)
			return kb << 10, err
		}
	}
	return 0, errors.New("no VmRSS in /proc status")
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat times: 100 on every
// Linux architecture Go supports.
const clockTicks = 100

// cpuSeconds returns the user plus system CPU time process pid has used.
func cpuSeconds(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name may hold spaces; the fields after it are plain.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	// After the name: state is field 3, utime 14, stime 15 (1-based).
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseFloat(f[11], 64)
	s, _ := strconv.ParseFloat(f[12], 64)
	return (u + s) / clockTicks
}
