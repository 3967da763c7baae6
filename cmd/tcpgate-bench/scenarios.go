package main

// The scenarios. Each starts its own daemon, drives the load from this
// process or from children, records its metrics and stops the daemon.

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	crand "crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
)

// Bounds of the waits inside scenarios; a healthy run takes a fraction.
const (
	drainTimeout = 30 * time.Second // after the sender stops, until every subscriber has everything
	pollEvery    = 10 * time.Millisecond
)

var (
	rawFraming  = &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_RAW}
	lineFraming = &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE}
)

// withDaemon runs fn against a fresh daemon started with extra flags.
func withDaemon(ctx context.Context, o *options, b *bench, fn func(d *daemon) error, extra ...string) error {
	d, err := startDaemon(ctx, o.tcpgate, extra...)
	if err != nil {
		return err
	}
	ferr := fn(d)
	if err := d.stop(); err != nil {
		b.note("%v", err)
	}
	return ferr
}

// startSubscribers starts n subscribe children on listener id that decode
// as --decode says, and waits until each is live.
func startSubscribers(d *daemon, id string, n int, extra ...string) ([]*child, error) {
	return startDecoding(d, id, n, decodeMode, extra...)
}

// startDecoding starts n subscribe children on listener id that decode as
// decode says (wire or proto), and waits until each is live.
func startDecoding(d *daemon, id string, n int, decode string, extra ...string) ([]*child, error) {
	var subs []*child
	for range n {
		args := append([]string{"subscribe", "--server", d.addr, "--listener", id, "--policy", "backpressure", "--decode", decode}, extra...)
		c, _, err := startSelf(args...)
		if err != nil {
			closeAll(subs)
			return nil, err
		}
		subs = append(subs, c)
	}
	return subs, nil
}

// decodeMode is how subscribe children decode events (--decode of run).
var decodeMode = "wire"

// harnessCPU is the CPU the load generator used in a window of secs, in %
// of one core: this process since self0 plus the subscribers.
func harnessCPU(res []subResult, self0, secs float64) float64 {
	cpu := selfCPU() - self0
	for _, r := range res {
		cpu += r.CPUSeconds
	}
	return 100 * cpu / secs
}

func closeAll(cs []*child) {
	for _, c := range cs {
		c.close()
	}
}

// subResults reads every subscriber's result.
func subResults(subs []*child) ([]subResult, error) {
	res := make([]subResult, len(subs))
	for i, c := range subs {
		if err := c.result(drainTimeout, &res[i]); err != nil {
			return nil, err
		}
		if res[i].Error != "" {
			return nil, fmt.Errorf("subscriber %d: %s", i, res[i].Error)
		}
	}
	return res, nil
}

// blast writes chunk to addr over one connection until total bytes or the
// deadline, whichever comes first, then closes it. It returns the bytes
// written and when the first write started (Unix ns).
func blast(addr string, chunk []byte, total int64, until time.Time) (sent, startNs int64, err error) {
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		return 0, 0, err
	}
	defer nc.Close()
	// A stalled receiver fails the run instead of hanging it.
	_ = nc.SetWriteDeadline(until.Add(drainTimeout))
	startNs = time.Now().UnixNano()
	for sent < total && time.Now().Before(until) {
		p := chunk[:min(int64(len(chunk)), total-sent)]
		n, err := nc.Write(p)
		sent += int64(n)
		if err != nil {
			return sent, startNs, fmt.Errorf("sending to %s: %w", addr, err)
		}
	}
	return sent, startNs, nc.Close()
}

func mbps(bytes uint64, fromNs, toNs int64) float64 {
	if toNs <= fromNs {
		return 0
	}
	return float64(bytes) / (float64(toNs-fromNs) / 1e9) / 1e6
}

// rawChunk is what the raw sender writes: binary (not UTF-8, so the
// gateway sends it once, as data) in writes of 256 KiB.
var rawChunk = func() []byte {
	r := rand.New(rand.NewPCG(1, 2))
	b := make([]byte, 256<<10)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}()

// runRaw: one TCP sender into a raw listener, one BACKPRESSURE subscriber
// in another process; then socat relaying the same bytes to a counter.
func runRaw(ctx context.Context, o *options, b *bench) error {
	var sent int64
	var gw float64
	err := withDaemon(ctx, o, b, func(d *daemon) error {
		id, addr, err := d.startListener(ctx, rawFraming)
		if err != nil {
			return err
		}
		subs, err := startSubscribers(d, id, 1)
		if err != nil {
			return err
		}
		defer closeAll(subs)
		cpu0, self0 := cpuSeconds(d.pid()), selfCPU()
		var startNs int64
		sent, startNs, err = blast(addr, rawChunk, o.rawBytes, time.Now().Add(o.duration))
		if err != nil {
			return err
		}
		res, err := subResults(subs)
		if err != nil {
			return err
		}
		r := res[0]
		if int64(r.Bytes) != sent || r.Dropped > 0 {
			b.note("raw: sent %d bytes, the subscriber got %d (dropped %d events)", sent, r.Bytes, r.Dropped)
		}
		gw = mbps(r.Bytes, startNs, r.LastNs)
		b.add("raw", "tcpgate: TCP in to gRPC subscriber", "MB/s", gw)
		secs := float64(r.LastNs-startNs) / 1e9
		b.add("raw", "tcpgate CPU", "% of 1 core", 100*(cpuSeconds(d.pid())-cpu0)/secs)
		b.add("raw", "sender + subscriber CPU", "% of 1 core", harnessCPU(res, self0, secs))
		b.add("raw", "DATA events (frames)", "events/s", float64(r.Frames)/(float64(r.LastNs-startNs)/1e9))
		return nil
	})
	if err != nil {
		return err
	}
	if o.socat == "" {
		return nil
	}
	res, startNs, err := socatRelay(o.socat, rawChunk, sent, false)
	if err != nil {
		return fmt.Errorf("socat baseline: %w", err)
	}
	relay := mbps(res.Bytes, startNs, res.LastNs)
	b.add("raw", "socat relay: TCP in to stdout of another process", "MB/s", relay)
	b.add("raw", "tcpgate / socat", "ratio", gw/relay)
	return nil
}

// socatRelay runs `socat -u TCP-LISTEN:PORT STDOUT | tcpgate-bench count`
// and sends it total bytes of chunk from the same sender as the gateway's
// scenarios; the counter counts lines too when lines is set. It returns
// what the counter saw and when the first write started (Unix ns).
func socatRelay(socat string, chunk []byte, total int64, lines bool) (countResult, int64, error) {
	var res countResult
	port, err := freePort()
	if err != nil {
		return res, 0, err
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return res, 0, err
	}
	self, err := os.Executable()
	if err != nil {
		return res, 0, err
	}
	countCmd := exec.Command(self, "count")
	if lines {
		countCmd.Args = append(countCmd.Args, "--lines")
	}
	countCmd.Stdin = pr
	count, err := startChild("count", countCmd, false)
	if err != nil {
		pr.Close()
		pw.Close()
		return res, 0, err
	}
	defer count.close()
	// -d -d logs "listening on" once the port is bound.
	socatCmd := exec.Command(socat, "-d", "-d", "-u", fmt.Sprintf("TCP-LISTEN:%d,bind=127.0.0.1,reuseaddr", port), "STDOUT")
	socatCmd.Stdout = pw
	relay, err := startChild("socat", socatCmd, false)
	pr.Close()
	pw.Close()
	if err != nil {
		return res, 0, err
	}
	defer relay.close()
	if l, err := count.line(startTimeout); err != nil || l != "ready" {
		return res, 0, fmt.Errorf("count: %q, %v", l, err)
	}
	deadline := time.Now().Add(startTimeout)
	for !strings.Contains(relay.stderr.String(), "listening on") {
		if time.Now().After(deadline) {
			return res, 0, fmt.Errorf("socat did not listen within %s: %s", startTimeout, relay.stderr.String())
		}
		time.Sleep(pollEvery)
	}
	sent, startNs, err := blast(net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), chunk, total, time.Now().Add(drainTimeout))
	if err != nil {
		return res, 0, err
	}
	if err := count.result(drainTimeout, &res); err != nil {
		return res, 0, err
	}
	if int64(res.Bytes) != sent {
		return res, 0, fmt.Errorf("sent %d bytes, counted %d", sent, res.Bytes)
	}
	return res, startNs, nil
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// lineBytes is the length of a line of the lines scenarios, '\n' included.
const lineBytes = 100

// linesChunk is 640 lines of 100 bytes: one 64,000-byte write.
var linesChunk = func() []byte {
	var b bytes.Buffer
	for i := range 640 {
		line := fmt.Sprintf("line %07d ", i)
		b.WriteString(line + strings.Repeat("x", lineBytes-1-len(line)) + "\n")
	}
	return b.Bytes()
}()

// runLines1 is the headline figure: the same --lines 100-byte lines from
// the same sender, one after the other, to one subscriber that decodes
// every event with the generated Go client (what a user's program runs),
// to one that walks the encoding without decoding it (what the gateway
// alone can deliver), and through socat to a line counter (the baseline).
// Each subscriber has a daemon of its own; the ratio is of this run.
func runLines1(ctx context.Context, o *options, b *bench) error {
	const name = "lines"
	total := o.lines * lineBytes
	var rates [2]float64
	for i, decode := range []string{"proto", "wire"} {
		r, err := measureLines(ctx, o, b, name, 1, decode, total, drainTimeout)
		if err != nil {
			return fmt.Errorf("%s subscriber: %w", decode, err)
		}
		if r.sent != o.lines {
			return fmt.Errorf("%s subscriber: %d of %d lines sent within %s", decode, r.sent, o.lines, drainTimeout)
		}
		rates[i] = r.rate
		what := map[string]string{"proto": "decoding every event (generated client)", "wire": "walking the encoding (no decoding)"}[decode]
		b.add(name, "frames/s, 1 subscriber "+what, "frames/s", r.rate)
		b.add(name, "tcpgate CPU, "+decode, "% of 1 core", r.gatewayCPU)
		b.add(name, "subscriber CPU, "+decode, "% of 1 core", r.subscriberCPU)
		// CPU per line is what sharing two cores leaves of the figures
		// above when the machine is busy: compare these across runs.
		b.add(name, "tcpgate CPU per line, "+decode, "ns", r.gatewayCPU/100/r.rate*1e9)
		b.add(name, "subscriber CPU per line, "+decode, "ns", r.subscriberCPU/100/r.rate*1e9)
		b.add(name, "events per message, "+decode, "events", r.perMessage)
	}
	if o.socat == "" {
		b.note("lines: socat is not installed: no baseline")
		return nil
	}
	res, startNs, err := socatRelay(o.socat, linesChunk, total, true)
	if err != nil {
		return fmt.Errorf("socat baseline: %w", err)
	}
	if int64(res.Lines) != o.lines {
		return fmt.Errorf("socat baseline: sent %d lines, counted %d", o.lines, res.Lines)
	}
	relay := float64(res.Lines) / (float64(res.LastNs-startNs) / 1e9)
	b.add(name, "socat relay: lines to a line counter in another process", "lines/s", relay)
	b.add(name, "decoding / socat", "ratio", rates[0]/relay)
	b.add(name, "walking / socat", "ratio", rates[1]/relay)
	return nil
}

func runLines10(ctx context.Context, o *options, b *bench) error {
	r, err := measureLines(ctx, o, b, "lines10", 10, decodeMode, o.lineFrames*lineBytes, o.duration)
	if err != nil {
		return err
	}
	b.add("lines10", "frames/s, 10 subscribers", "frames/s", r.rate)
	b.add("lines10", "tcpgate CPU", "% of 1 core", r.gatewayCPU)
	b.add("lines10", "sender + subscribers CPU", "% of 1 core", r.harnessCPU)
	return nil
}

// linesFigures are what measureLines measured.
type linesFigures struct {
	sent          int64   // lines sent
	rate          float64 // DATA events received by all subscribers per second
	gatewayCPU    float64 // % of one core
	subscriberCPU float64 // the subscribers' once live, % of one core
	harnessCPU    float64 // the sender's and the subscribers', % of one core
	perMessage    float64 // DATA events per SubscribeResponse, on average
}

// measureLines starts a daemon with a line-framed listener and n
// BACKPRESSURE subscribers in other processes that decode as decode says,
// then sends total bytes of 100-byte lines over one connection, for at
// most window. The rate is the frames delivered to all subscribers over
// the time from the first write to the last receipt; each subscriber must
// get every line sent. With --profile, the daemon's CPU profile over
// --profile-seconds from the first write and each subscriber's are written
// there.
func measureLines(ctx context.Context, o *options, b *bench, name string, n int, decode string, total int64, window time.Duration) (linesFigures, error) {
	var fig linesFigures
	var daemonFlags, subFlags []string
	var debugAddr string
	if o.profileDir != "" {
		port, err := freePort()
		if err != nil {
			return fig, err
		}
		debugAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		daemonFlags = []string{"--debug-addr", debugAddr}
	}
	prefix := filepath.Join(o.profileDir, fmt.Sprintf("%s-%s-run%d", name, decode, o.run))
	err := withDaemon(ctx, o, b, func(d *daemon) error {
		id, addr, err := d.startListener(ctx, lineFraming)
		if err != nil {
			return err
		}
		var subs []*child
		defer func() { closeAll(subs) }()
		for i := range n {
			subFlags = o.subscriberArgs
			if o.profileDir != "" {
				subFlags = append(slices.Clip(subFlags), "--cpuprofile", fmt.Sprintf("%s-subscriber%d.pprof", prefix, i))
			}
			c, err := startDecoding(d, id, 1, decode, subFlags...)
			if err != nil {
				return err
			}
			subs = append(subs, c...)
		}
		var profiled chan error
		if debugAddr != "" {
			profiled = make(chan error, 1)
			go func() { profiled <- fetchProfile(ctx, debugAddr, o.profileSeconds, prefix+"-daemon.pprof") }()
		}
		cpu0, self0 := cpuSeconds(d.pid()), selfCPU()
		sent, startNs, err := blast(addr, linesChunk, total, time.Now().Add(window))
		if err != nil {
			return err
		}
		res, err := subResults(subs)
		if err != nil {
			return err
		}
		frames := uint64(sent / lineBytes)
		var got, subCPU, msgs float64
		var last int64
		for i, r := range res {
			got += float64(r.Frames)
			subCPU += r.CPUSeconds - r.ReadyCPUSeconds
			msgs += float64(r.Messages)
			last = max(last, r.LastNs)
			if r.Frames != frames || r.Dropped > 0 {
				b.note("%s: %s subscriber %d got %d of %d frames (dropped %d)", name, decode, i, r.Frames, frames, r.Dropped)
			}
		}
		secs := float64(last-startNs) / 1e9
		fig = linesFigures{
			sent:          sent / lineBytes,
			rate:          got / secs,
			gatewayCPU:    100 * (cpuSeconds(d.pid()) - cpu0) / secs,
			subscriberCPU: 100 * subCPU / secs,
			harnessCPU:    harnessCPU(res, self0, secs),
			perMessage:    got / max(msgs, 1),
		}
		if profiled != nil {
			if err := <-profiled; err != nil {
				b.note("%s: profiling the daemon: %v", name, err)
			}
		}
		return nil
	}, daemonFlags...)
	return fig, err
}

// fetchProfile writes the CPU profile of secs seconds that the daemon's
// pprof endpoint at addr serves to path.
func fetchProfile(ctx context.Context, addr string, secs int, path string) error {
	url := fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", addr, secs)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// runLatency: one sender paced at --latency-rate frames per second, each
// 100-byte line starting with its send time; one subscriber in another
// process computes receipt less send time. The first 0.1 s is warm-up.
func runLatency(ctx context.Context, o *options, b *bench) error {
	return withDaemon(ctx, o, b, func(d *daemon) error {
		id, addr, err := d.startListener(ctx, lineFraming)
		if err != nil {
			return err
		}
		subs, err := startSubscribers(d, id, 1, "--latency", "--skip", strconv.Itoa(o.latencyRate/10))
		if err != nil {
			return err
		}
		defer closeAll(subs)
		nc, err := net.Dial("tcp", addr)
		if err != nil {
			return err
		}
		defer nc.Close()
		frames := int(o.latencyDuration.Seconds() * float64(o.latencyRate))
		rate, late, err := pace(nc, frames, o.latencyRate, o.latencyDuration+drainTimeout)
		if err != nil {
			return err
		}
		if err := nc.Close(); err != nil {
			return err
		}
		res, err := subResults(subs)
		if err != nil {
			return err
		}
		r := res[0]
		if int(r.Frames) != frames || r.Dropped > 0 {
			b.note("latency: subscriber got %d of %d frames (dropped %d)", r.Frames, frames, r.Dropped)
		}
		if late > frames/100 {
			b.note("latency: the sender ran more than 1 ms behind schedule for %d of %d frames", late, frames)
		}
		l := r.Latency
		b.add("latency", "sent rate", "frames/s", rate)
		b.add("latency", "p50", "µs", l.P50us)
		b.add("latency", "p99", "µs", l.P99us)
		b.add("latency", "p99.9", "µs", l.P999us)
		b.add("latency", "max", "µs", l.MaxUs)
		return nil
	})
}

// pace writes frames 100-byte lines to nc at rate lines per second, each
// starting with its send time in Unix nanoseconds (tsDigits digits), with
// a write deadline of bound. It returns the rate achieved and how many
// lines were written more than 1 ms behind schedule.
func pace(nc net.Conn, frames, rate int, bound time.Duration) (float64, int, error) {
	interval := time.Second / time.Duration(rate)
	line := []byte(strings.Repeat("x", lineBytes-1) + "\n")
	line[tsDigits] = ' '
	_ = nc.SetWriteDeadline(time.Now().Add(bound))
	start := time.Now()
	late := 0
	for i := range frames {
		due := start.Add(time.Duration(i) * interval)
		// Go's timers sleep at least about a millisecond here;
		// nanosleep wakes within tens of microseconds.
		if wait := time.Until(due); wait > 0 {
			ts := syscall.NsecToTimespec(int64(wait))
			_ = syscall.Nanosleep(&ts, nil)
		} else if -wait > time.Millisecond {
			late++
		}
		strconv.AppendInt(line[:0], time.Now().UnixNano(), 10)
		if _, err := nc.Write(line); err != nil {
			return 0, late, fmt.Errorf("pacing lines: %w", err)
		}
	}
	return float64(frames) / time.Since(start).Seconds(), late, nil
}

func runSendOneShot1(ctx context.Context, o *options, b *bench) error {
	return runSendOneShot(ctx, o, b, "send1", 1)
}

func runSendOneShot32(ctx context.Context, o *options, b *bench) error {
	return runSendOneShot(ctx, o, b, "send32", 32)
}

// runSendOneShot: callers concurrent one-shot Sends with
// AWAIT_MODE_FIRST_READ to a responder in another process, for --duration.
func runSendOneShot(ctx context.Context, o *options, b *bench, name string, callers int) error {
	resp, target, err := startSelf("respond")
	if err != nil {
		return err
	}
	defer resp.close()
	var self0, secs, rate float64
	err = withDaemon(ctx, o, b, func(d *daemon) error {
		req := &tcpgatev1.SendRequest{
			Target:     &tcpgatev1.SendRequest_Address{Address: target},
			Payload:    &tcpgatev1.SendRequest_Text{Text: "ping\n"},
			AwaitReply: &tcpgatev1.AwaitReply{Mode: tcpgatev1.AwaitMode_AWAIT_MODE_FIRST_READ},
			Timeout:    durationpb.New(5 * time.Second),
		}
		// One warm-up call: the gRPC connection is up before the clock starts.
		if _, err := d.client.Send(ctx, req); err != nil {
			return fmt.Errorf("warm-up Send: %w", err)
		}
		cpu0 := cpuSeconds(d.pid())
		self0 = selfCPU()
		lats := make([][]int64, callers)
		var failed atomic.Int64
		var firstErr error
		var errOnce sync.Once
		start := time.Now()
		until := start.Add(o.duration)
		var wg sync.WaitGroup
		for i := range callers {
			wg.Go(func() {
				for time.Now().Before(until) && ctx.Err() == nil {
					t := time.Now()
					r, err := d.client.Send(ctx, req)
					if err == nil && r.GetReply().GetText() != "pong\n" {
						err = fmt.Errorf("reply %q, want %q", r.GetReply().GetText(), "pong\n")
					}
					if err != nil {
						failed.Add(1)
						errOnce.Do(func() { firstErr = err })
						continue
					}
					lats[i] = append(lats[i], time.Since(t).Nanoseconds())
				}
			})
		}
		wg.Wait()
		secs = time.Since(start).Seconds()
		all := slices.Concat(lats...)
		if n := failed.Load(); n > 0 {
			b.note("%s: %d of %d calls failed; first: %v", name, n, int64(len(all))+n, firstErr)
		}
		s := summarize(all)
		rate = float64(len(all)) / secs
		b.add(name, fmt.Sprintf("calls/s, %d caller%s", callers, map[bool]string{true: "s"}[callers > 1]), "calls/s", rate)
		b.add(name, "p50", "µs", s.P50us)
		b.add(name, "p99", "µs", s.P99us)
		b.add(name, "tcpgate CPU", "% of 1 core", 100*(cpuSeconds(d.pid())-cpu0)/secs)
		return nil
	})
	if err != nil {
		return err
	}
	// The responder's CPU since it started is its CPU in the window: it
	// idles before and after.
	callersCPU := selfCPU() - self0
	respCPU := cpuSeconds(resp.cmd.Process.Pid)
	b.add(name, "callers + responder CPU", "% of 1 core", 100*(callersCPU+respCPU)/secs)

	// Baseline, after the gateway has stopped: the same TCP exchange made
	// directly by as many goroutines of this process (connect, write
	// "ping\n", read the reply, close), against the same responder: what a
	// program does without a gateway, and the ceiling of the TCP part of a
	// one-shot Send on this machine.
	direct, directCPU, err := directExchanges(ctx, target, callers, o.duration)
	if err != nil {
		return fmt.Errorf("direct TCP baseline: %w", err)
	}
	b.add(name, "direct TCP exchanges (no gateway, same callers and responder)", "exchanges/s", direct)
	b.add(name, "direct exchange CPU (caller side)", "µs per exchange", directCPU)
	b.add(name, "tcpgate calls / direct exchanges", "ratio", rate/direct)
	var rr respondResult
	return resp.finish(&rr)
}

// directExchanges makes one-shot TCP exchanges with target from callers
// goroutines for d: connect, write "ping\n", read the reply, close. It
// returns exchanges per second and this process's CPU per exchange in µs.
func directExchanges(ctx context.Context, target string, callers int, d time.Duration) (float64, float64, error) {
	var done, failed atomic.Int64
	cpu0 := selfCPU()
	start := time.Now()
	until := start.Add(d)
	var wg sync.WaitGroup
	for range callers {
		wg.Go(func() {
			buf := make([]byte, 64)
			var dialer net.Dialer
			for time.Now().Before(until) && ctx.Err() == nil {
				c, err := dialer.DialContext(ctx, "tcp", target)
				if err != nil {
					failed.Add(1)
					continue
				}
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				_, err = c.Write([]byte("ping\n"))
				if err == nil {
					var n int
					n, err = c.Read(buf)
					if err == nil && string(buf[:n]) != "pong\n" {
						err = fmt.Errorf("reply %q", buf[:n])
					}
				}
				c.Close()
				if err != nil {
					failed.Add(1)
					continue
				}
				done.Add(1)
			}
		})
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	n := done.Load()
	if n == 0 || failed.Load() > n/100 {
		return 0, 0, fmt.Errorf("%d exchanges done, %d failed", n, failed.Load())
	}
	return float64(n) / secs, (selfCPU() - cpu0) * 1e6 / float64(n), nil
}

// sendConnCallers and sendConnPayload shape the Send-to-connection load: a
// few callers with 64 KiB each keep the connection's writer busy.
const (
	sendConnCallers = 4
	sendConnPayload = 64 << 10
)

// runSendConn: Send with connection_id to a connection accepted by a
// listener; the TCP client counts what arrives, for --duration.
func runSendConn(ctx context.Context, o *options, b *bench) error {
	return withDaemon(ctx, o, b, func(d *daemon) error {
		id, addr, err := d.startListener(ctx, rawFraming)
		if err != nil {
			return err
		}
		nc, err := net.Dial("tcp", addr)
		if err != nil {
			return err
		}
		defer nc.Close()
		var received atomic.Int64
		readDone := make(chan struct{})
		go func() {
			defer close(readDone)
			buf := make([]byte, 256<<10)
			for {
				n, err := nc.Read(buf)
				received.Add(int64(n))
				if err != nil {
					return
				}
			}
		}()
		defer func() { nc.Close(); <-readDone }()

		var connID string
		for deadline := time.Now().Add(startTimeout); connID == ""; time.Sleep(pollEvery) {
			lc, err := d.client.ListConnections(ctx, &tcpgatev1.ListConnectionsRequest{ListenerId: id})
			if err != nil {
				return err
			}
			if len(lc.GetConnections()) > 0 {
				connID = lc.GetConnections()[0].GetConnectionId()
			} else if time.Now().After(deadline) {
				return errors.New("the connection did not show in ListConnections")
			}
		}
		req := &tcpgatev1.SendRequest{
			Target:  &tcpgatev1.SendRequest_ConnectionId{ConnectionId: connID},
			Payload: &tcpgatev1.SendRequest_Data{Data: rawChunk[:sendConnPayload]},
		}
		cpu0 := cpuSeconds(d.pid())
		var sent atomic.Int64
		var firstErr error
		var errOnce sync.Once
		start := time.Now()
		until := start.Add(o.duration)
		var wg sync.WaitGroup
		for range sendConnCallers {
			wg.Go(func() {
				for time.Now().Before(until) && ctx.Err() == nil {
					r, err := d.client.Send(ctx, req)
					if err != nil {
						errOnce.Do(func() { firstErr = err })
						return
					}
					sent.Add(int64(r.GetBytesWritten()))
				}
			})
		}
		wg.Wait()
		if firstErr != nil {
			return fmt.Errorf("Send: %w", firstErr)
		}
		for deadline := time.Now().Add(drainTimeout); received.Load() < sent.Load(); time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				return fmt.Errorf("the client got %d of %d bytes", received.Load(), sent.Load())
			}
		}
		secs := time.Since(start).Seconds()
		b.add("sendconn", "Send to an open connection", "MB/s", float64(received.Load())/secs/1e6)
		b.add("sendconn", "calls/s (64 KiB each, 4 callers)", "calls/s", float64(sent.Load()/sendConnPayload)/secs)
		b.add("sendconn", "tcpgate CPU", "% of 1 core", 100*(cpuSeconds(d.pid())-cpu0)/secs)
		return nil
	})
}

// holders split the idle connections between children, so that no process
// needs more descriptors than the open-file limit.
const holders = 2

// Dialing proceeds in steps of connStep, with at most connsAhead dialed
// but not yet accepted: well inside the kernel's accept queue (somaxconn,
// 4096 by default), so no SYN is dropped and retried a second later, and
// the rate measured is the gateway's.
const (
	connStep   = 500
	connsAhead = 2000
)

// runConns: --conns idle plain connections.
func runConns(ctx context.Context, o *options, b *bench) error {
	return runIdle(ctx, o, b, "conns", false, 0)
}

// runTLSConns: --conns idle TLS connections, each idle from the end of its
// handshake.
func runTLSConns(ctx context.Context, o *options, b *bench) error {
	return runIdle(ctx, o, b, "tlsconns", true, 0)
}

// tlsRecord is the most plaintext one TLS record carries.
const tlsRecord = 16 << 10

// runTLSConns16K: --conns TLS connections that each send one full-size
// record after the handshake, then idle: crypto/tls keeps a buffer that
// held such a record for the life of the connection.
func runTLSConns16K(ctx context.Context, o *options, b *bench) error {
	return runIdle(ctx, o, b, "tlsconns16k", true, tlsRecord)
}

// runIdle: --conns idle connections opened by children against one
// listener (with TLS when useTLS, each writing send bytes first); the
// daemon's RSS per connection once settled, and accepts/s from the first
// dial until GetListener counts them all (and, with send, their bytes).
func runIdle(ctx context.Context, o *options, b *bench, name string, useTLS bool, send int) error {
	return withDaemon(ctx, o, b, func(d *daemon) error {
		req := &tcpgatev1.StartListenerRequest{Host: "127.0.0.1", Framing: rawFraming}
		holdArgs := []string{"--parallel", "64"}
		if useTLS {
			cert, key, err := selfSigned()
			if err != nil {
				return err
			}
			req.Tls = &tcpgatev1.ListenerTLS{CertPem: string(cert), KeyPem: string(key)}
			holdArgs = append(holdArgs, "--tls")
		}
		if send > 0 {
			holdArgs = append(holdArgs, "--send", strconv.Itoa(send))
		}
		id, addr, err := d.startListenerWith(ctx, req)
		if err != nil {
			return err
		}
		before, err := settledRSS(d.pid(), 5*time.Second)
		if err != nil {
			return err
		}
		var hs []*child
		defer func() { closeAll(hs) }()
		for range holders {
			c, _, err := startSelf(append([]string{"hold", "--addr", addr}, holdArgs...)...)
			if err != nil {
				return err
			}
			hs = append(hs, c)
		}
		perHolder := make([]int, holders) // connections asked of each
		steps := make([]int, holders)     // dial commands sent to each
		capacity := (o.conns + holders - 1) / holders
		cpu0 := cpuSeconds(d.pid())
		start := time.Now()
		var allAt time.Time
		var cpu1 float64
		dialed, h := 0, 0
		for deadline := time.Now().Add(drainTimeout); ; {
			l, err := d.client.GetListener(ctx, &tcpgatev1.GetListenerRequest{ListenerId: id})
			if err != nil {
				return err
			}
			active := int(l.GetListener().GetConnectionsActive())
			if active >= o.conns && l.GetListener().GetBytesIn() >= uint64(o.conns*send) {
				allAt, cpu1 = time.Now(), cpuSeconds(d.pid())
				break
			}
			for dialed < o.conns && dialed-active < connsAhead {
				n := min(connStep, o.conns-dialed, capacity-perHolder[h])
				if _, err := fmt.Fprintf(hs[h].stdin, "dial %d\n", n); err != nil {
					return err
				}
				perHolder[h] += n
				steps[h]++
				dialed += n
				h = (h + 1) % holders
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%d of %d connections active, %d of %d bytes read, after %s", active, o.conns,
					l.GetListener().GetBytesIn(), o.conns*send, drainTimeout)
			}
			time.Sleep(time.Millisecond)
		}
		for i, c := range hs {
			for range steps[i] {
				var r holdResult
				if err := c.result(drainTimeout, &r); err != nil {
					return err
				}
				if r.Failed > 0 {
					return fmt.Errorf("hold: %d connections failed: %s", r.Failed, r.Error)
				}
			}
		}
		after, err := settledRSS(d.pid(), 10*time.Second)
		if err != nil {
			return err
		}
		acceptSecs := allAt.Sub(start).Seconds()
		b.add(name, "RSS per idle connection", "KiB", float64(after-before)/float64(o.conns)/1024)
		b.add(name, "accepts/s", "conns/s", float64(o.conns)/acceptSecs)
		b.add(name, "tcpgate CPU while accepting", "% of 1 core", 100*(cpu1-cpu0)/acceptSecs)
		b.add(name, "tcpgate RSS at "+strconv.Itoa(o.conns)+" connections", "MiB", float64(after)/(1<<20))
		return nil
	})
}

// settledRSS samples the RSS of pid every 250 ms until it changed by less
// than 0.5% over a second, or bound passes; it returns the last sample.
func settledRSS(pid int, bound time.Duration) (int64, error) {
	var samples []int64
	deadline := time.Now().Add(bound)
	for {
		r, err := rssBytes(pid)
		if err != nil {
			return 0, err
		}
		samples = append(samples, r)
		if n := len(samples); n >= 5 {
			old := samples[n-5]
			if diff := r - old; diff < 0 && -diff*200 < r || diff >= 0 && diff*200 < r {
				return r, nil
			}
		}
		if time.Now().After(deadline) {
			return r, nil
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// selfSigned returns a certificate and key, PEM, for 127.0.0.1: the
// holders do not verify it, and what is measured is the connections.
func selfSigned() (cert, key []byte, err error) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), crand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "tcpgate-bench"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(crand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		return nil, nil, err
	}
	kder, err := x509.MarshalECPrivateKey(priv)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), nil
}
