package main

// The child processes: each prints "ready ..." when set up, one JSON line
// with its figures when done, and exits when its stdin closes.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
)

// gRPC windows of the benchmark's clients: the gateway's own sizes (see
// server.go), so the client side does not throttle a Subscribe stream.
const (
	clientStreamWindow = 1 << 20
	clientConnWindow   = 4 << 20
)

// dialGateway connects a gRPC client tuned for streaming throughput.
func dialGateway(addr string) (*grpc.ClientConn, error) {
	return dialTuned(addr, clientStreamWindow, clientConnWindow, 0)
}

// dialTuned connects a gRPC client with the windows and read buffer given,
// each as grpc-go's dial options set it; 0 leaves grpc-go's default.
func dialTuned(addr string, streamWindow, connWindow int32, readBuffer int) (*grpc.ClientConn, error) {
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16 << 20)),
	}
	if streamWindow > 0 {
		opts = append(opts, grpc.WithInitialWindowSize(streamWindow))
	}
	if connWindow > 0 {
		opts = append(opts, grpc.WithInitialConnWindowSize(connWindow))
	}
	if readBuffer > 0 {
		opts = append(opts, grpc.WithReadBufferSize(readBuffer))
	}
	return grpc.NewClient(addr, opts...)
}

// stdinContext is canceled when stdin reaches EOF: the orchestrator closed
// it, or died. Its reader ends with stdin or with the process.
func stdinContext() (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		cancel()
	}()
	return ctx, cancel
}

func printJSON(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = fmt.Printf("%s\n", b)
	return err
}

// subResult is what a subscribe child reports.
type subResult struct {
	Frames  uint64 `json:"frames"`
	Bytes   uint64 `json:"bytes"`
	Dropped uint64 `json:"dropped"`
	// FirstNs and LastNs are the wall-clock receipt times of the first and
	// last DATA event, in Unix nanoseconds.
	FirstNs int64 `json:"first_ns"`
	LastNs  int64 `json:"last_ns"`
	Closed  int   `json:"closed"`
	// Messages counts the SubscribeResponses received.
	Messages uint64 `json:"messages"`
	// CPUSeconds is the CPU time the subscriber used, start-up included.
	CPUSeconds float64 `json:"cpu_s"`
	// ReadyCPUSeconds is the part of CPUSeconds used before the
	// subscription was live: its start-up.
	ReadyCPUSeconds float64 `json:"ready_cpu_s"`
	// Latency summarizes receipt time less the send time written at the
	// start of each frame; only with --latency.
	Latency *latencySummary `json:"latency,omitempty"`
	Error   string          `json:"error,omitempty"`
}

type latencySummary struct {
	Samples int     `json:"samples"`
	P50us   float64 `json:"p50_us"`
	P99us   float64 `json:"p99_us"`
	P999us  float64 `json:"p999_us"`
	MaxUs   float64 `json:"max_us"`
}

// tsDigits is how many decimal digits of a Unix-nanosecond send time start
// each frame of the latency scenario.
const tsDigits = 19

var policies = map[string]tcpgatev1.SlowConsumerPolicy{
	"backpressure": tcpgatev1.SlowConsumerPolicy_SLOW_CONSUMER_POLICY_BACKPRESSURE,
	"drop_oldest":  tcpgatev1.SlowConsumerPolicy_SLOW_CONSUMER_POLICY_DROP_OLDEST,
	"disconnect":   tcpgatev1.SlowConsumerPolicy_SLOW_CONSUMER_POLICY_DISCONNECT,
}

// subscribeMain subscribes to one listener and counts DATA events until it
// has seen --conns CONNECTION_CLOSED events, stdin closes, or --timeout.
func subscribeMain(args []string) error {
	fs := flag.NewFlagSet("subscribe", flag.ContinueOnError)
	server := fs.String("server", "", "gateway gRPC address")
	listenerID := fs.String("listener", "", "listener to subscribe to")
	policy := fs.String("policy", "backpressure", "slow-consumer policy: backpressure, drop_oldest or disconnect")
	decode := fs.String("decode", "wire", "wire: walk the encoded events for the fields counted; proto: decode every event into a message")
	conns := fs.Int("conns", 1, "stop after this many CONNECTION_CLOSED events")
	latency := fs.Bool("latency", false, "frames start with a 19-digit Unix-nanosecond send time: report latency percentiles")
	skip := fs.Int("skip", 0, "latency: ignore this many first frames (warm-up)")
	timeout := fs.Duration("timeout", time.Minute, "give up after this long")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of this subscriber's whole life to this file")
	streamWindow := fs.Int("stream-window", clientStreamWindow, "gRPC stream window in bytes (grpc.WithInitialWindowSize); 0: grpc-go's default, which grows with the link")
	connWindow := fs.Int("conn-window", clientConnWindow, "gRPC connection window in bytes (grpc.WithInitialConnWindowSize); 0: grpc-go's default")
	readBuffer := fs.Int("read-buffer", 0, "gRPC read buffer in bytes (grpc.WithReadBufferSize); 0: grpc-go's default, 32 KiB")
	gogc := fs.Int("gogc", 0, "garbage collector target percentage, as debug.SetGCPercent or GOGC set it; 0: the runtime's (GOGC, or 100)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	pol, ok := policies[*policy]
	if !ok {
		return fmt.Errorf("--policy: unknown %q", *policy)
	}
	if *decode != "wire" && *decode != "proto" {
		return fmt.Errorf("--decode: %q is not wire or proto", *decode)
	}
	if *gogc > 0 {
		debug.SetGCPercent(*gogc)
	}
	if *cpuProfile != "" {
		stop, err := startCPUProfile(*cpuProfile)
		if err != nil {
			return err
		}
		defer stop()
	}
	ctx, cancel := stdinContext()
	defer cancel()
	ctx, cancelT := context.WithTimeout(ctx, *timeout)
	defer cancelT()

	cc, err := dialTuned(*server, int32(*streamWindow), int32(*connWindow), *readBuffer)
	if err != nil {
		return fmt.Errorf("dialing %s: %w", *server, err)
	}
	defer cc.Close()
	req := &tcpgatev1.SubscribeRequest{ListenerIds: []string{*listenerID}, SlowConsumer: pol}
	var wire grpc.ClientStream
	var typed grpc.ServerStreamingClient[tcpgatev1.SubscribeResponse]
	var stream grpc.ClientStream
	if *decode == "wire" {
		wire, err = cc.NewStream(ctx, subscribeDesc, tcpgatev1.GatewayService_Subscribe_FullMethodName, grpc.ForceCodecV2(wireCodec{}))
		if err == nil {
			err = wire.SendMsg(req)
		}
		if err == nil {
			err = wire.CloseSend()
		}
		stream = wire
	} else {
		// What a user's program runs: the generated client with
		// grpc-go's default codec, a new message per response.
		typed, err = tcpgatev1.NewGatewayServiceClient(cc).Subscribe(ctx, req)
		stream = typed
	}
	if err != nil {
		return fmt.Errorf("subscribing: %w", err)
	}
	// The header comes once the subscription is live: nothing sent after
	// "ready" is missed.
	if _, err := stream.Header(); err != nil {
		return fmt.Errorf("subscribing: %w", err)
	}
	fmt.Println("ready")

	res := subResult{ReadyCPUSeconds: selfCPU()}
	var lats []int64
	var now int64
	onEvent := func(kind tcpgatev1.EventKind, dataLen int, head []byte, dropped uint64) {
		switch kind {
		case tcpgatev1.EventKind_EVENT_KIND_DATA:
			if res.Frames == 0 {
				res.FirstNs = now
			}
			res.LastNs = now
			res.Frames++
			res.Bytes += uint64(dataLen)
			if *latency && res.Frames > uint64(*skip) && len(head) >= tsDigits {
				if sent, err := strconv.ParseInt(string(head[:tsDigits]), 10, 64); err == nil {
					lats = append(lats, now-sent)
				}
			}
		case tcpgatev1.EventKind_EVENT_KIND_EVENTS_DROPPED:
			res.Dropped += dropped
		case tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED:
			res.Closed++
		}
	}
	// The wire walk runs inside RecvMsg and stamps now itself.
	wmsg := &wireMsg{now: &now, fn: onEvent}
	for res.Closed < *conns {
		if wire != nil {
			if err = wire.RecvMsg(wmsg); err != nil {
				res.Error = err.Error()
				break
			}
			res.Messages++
			continue
		}
		resp, err := typed.Recv()
		if err != nil {
			res.Error = err.Error()
			break
		}
		now = time.Now().UnixNano()
		res.Messages++
		for _, e := range resp.GetEvents() {
			touch(e)
			d, n := e.GetData(), len(e.GetData())
			if t := e.GetText(); n == 0 && t != "" {
				// UTF-8 comes as text by default: only its head is copied.
				d, n = []byte(t[:min(len(t), headBytes)]), len(t)
			}
			onEvent(e.GetKind(), n, d[:min(len(d), headBytes)], e.GetDropped())
		}
	}
	if *latency {
		res.Latency = summarize(lats)
	}
	res.CPUSeconds = selfCPU()
	return printJSON(res)
}

// touched keeps what touch reads, so the compiler cannot drop the reads.
var touched uint64

// touch reads every field of e that a program of a user would, the way it
// would: the time as a time.Time, the ids and addresses as strings.
func touch(e *tcpgatev1.Event) {
	touched += e.GetSequence() + uint64(e.GetTime().AsTime().UnixNano()) + uint64(e.GetKind()) +
		uint64(len(e.GetListenerId())+len(e.GetConnectionId())+len(e.GetRemoteAddress())+len(e.GetLocalAddress())) +
		uint64(e.GetCloseReason()) + uint64(len(e.GetPeerSubject()))
}

// startCPUProfile profiles this process into path until the returned
// function is called.
func startCPUProfile(path string) (func(), error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("--cpuprofile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("--cpuprofile: %w", err)
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}

// selfCPU returns the user plus system CPU time this process has used.
func selfCPU() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

func summarize(ns []int64) *latencySummary {
	if len(ns) == 0 {
		return &latencySummary{}
	}
	slices.Sort(ns)
	us := func(q float64) float64 { return float64(ns[rank(len(ns), q)]) / 1e3 }
	return &latencySummary{
		Samples: len(ns),
		P50us:   us(0.50),
		P99us:   us(0.99),
		P999us:  us(0.999),
		MaxUs:   float64(ns[len(ns)-1]) / 1e3,
	}
}

// rank is the index of quantile q in n sorted samples (nearest rank).
func rank(n int, q float64) int {
	i := int(q*float64(n)+0.5) - 1
	return min(max(i, 0), n-1)
}

// countResult is what a count child reports.
type countResult struct {
	Bytes uint64 `json:"bytes"`
	// Lines counts '\n' bytes; only with --lines.
	Lines   uint64 `json:"lines,omitempty"`
	FirstNs int64  `json:"first_ns"`
	LastNs  int64  `json:"last_ns"`
	Error   string `json:"error,omitempty"`
}

// countMain counts the bytes on stdin until EOF. It is the consumer behind
// `socat -u TCP-LISTEN:... -` in the baseline; it reads in 64 KiB, as the
// gateway does. With --lines it also counts the lines, as a consumer of a
// line protocol must look at every byte to find them.
func countMain(args []string) error {
	fs := flag.NewFlagSet("count", flag.ContinueOnError)
	lines := fs.Bool("lines", false, "count the '\\n' bytes too")
	if err := fs.Parse(args); err != nil {
		return err
	}
	fmt.Println("ready")
	var res countResult
	buf := make([]byte, 64<<10)
	for {
		n, err := os.Stdin.Read(buf)
		if n > 0 {
			now := time.Now().UnixNano()
			if res.Bytes == 0 {
				res.FirstNs = now
			}
			res.LastNs = now
			res.Bytes += uint64(n)
			if *lines {
				res.Lines += uint64(bytes.Count(buf[:n], newline))
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				res.Error = err.Error()
			}
			break
		}
	}
	return printJSON(res)
}

var newline = []byte{'\n'}

// respondResult is what a respond child reports.
type respondResult struct {
	Served     uint64  `json:"served"`
	CPUSeconds float64 `json:"cpu_s"`
}

// respondMain listens on 127.0.0.1:0 and answers the first read of every
// connection with --reply, then reads until the peer closes: the responder
// of the one-shot Send scenario. The caller closes first, as a client does.
func respondMain(args []string) error {
	fs := flag.NewFlagSet("respond", flag.ContinueOnError)
	reply := fs.String("reply", "pong\n", "what to answer")
	lines := fs.Bool("lines", false, "answer every line of a connection with the same line, for as long as it stays open")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	ctx, cancel := stdinContext()
	defer cancel()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	fmt.Println("ready", ln.Addr())

	var served atomic.Uint64
	var wg sync.WaitGroup
	out := []byte(*reply)
	for {
		nc, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			time.Sleep(5 * time.Millisecond) // out of descriptors: let some close
			continue
		}
		wg.Go(func() {
			defer nc.Close()
			if *lines {
				echoLines(nc, &served)
				return
			}
			buf := make([]byte, 4<<10)
			if _, err := nc.Read(buf); err != nil {
				return
			}
			if _, err := nc.Write(out); err != nil {
				return
			}
			served.Add(1)
			for {
				if _, err := nc.Read(buf); err != nil {
					return
				}
			}
		})
	}
	wg.Wait()
	return printJSON(respondResult{Served: served.Load(), CPUSeconds: selfCPU()})
}

// holdResult is what a hold child reports for each dial command.
type holdResult struct {
	Opened  int    `json:"opened"`
	Failed  int    `json:"failed"`
	StartNs int64  `json:"start_ns"`
	EndNs   int64  `json:"end_ns"`
	Error   string `json:"error,omitempty"`
}

// holdMain opens idle connections to --addr and holds them until stdin
// closes. Each line "dial N" on stdin opens N more with --parallel dialers
// and reports a holdResult, so that the orchestrator can keep the
// gateway's accept queue from overflowing (the kernel would drop SYNs,
// and the clients retry only after a second).
func holdMain(args []string) error {
	fs := flag.NewFlagSet("hold", flag.ContinueOnError)
	addr := fs.String("addr", "", "address to connect to")
	parallel := fs.Int("parallel", 32, "concurrent dials")
	timeout := fs.Duration("timeout", 30*time.Second, "give up one dial command after this long")
	useTLS := fs.Bool("tls", false, "complete a TLS handshake on each connection (the server's certificate is not verified)")
	send := fs.Int("send", 0, "bytes each connection writes once connected (with --tls, up to 16384 is one record), then it idles")
	if err := fs.Parse(args); err != nil {
		return err
	}
	dial := func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		nc, err := d.DialContext(ctx, "tcp", *addr)
		if err != nil {
			return nil, err
		}
		if *useTLS {
			tc := tls.Client(nc, &tls.Config{InsecureSkipVerify: true})
			if err := tc.HandshakeContext(ctx); err != nil {
				nc.Close()
				return nil, fmt.Errorf("TLS handshake: %w", err)
			}
			nc = tc
		}
		if *send > 0 {
			if _, err := nc.Write(make([]byte, *send)); err != nil {
				nc.Close()
				return nil, fmt.Errorf("writing %d bytes: %w", *send, err)
			}
		}
		return nc, nil
	}
	var conns []net.Conn
	defer func() {
		for _, nc := range conns {
			nc.Close()
		}
	}()
	fmt.Println("ready")
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		var n int
		if _, err := fmt.Sscanf(sc.Text(), "dial %d", &n); err != nil {
			return fmt.Errorf("reading command %q: %w", sc.Text(), err)
		}
		opened, res := dialMany(dial, n, *parallel, *timeout)
		conns = append(conns, opened...)
		if err := printJSON(res); err != nil {
			return err
		}
	}
	return nil
}

// dialMany opens n connections with dial, from parallel dialers.
func dialMany(dial func(context.Context) (net.Conn, error), n, parallel int, timeout time.Duration) ([]net.Conn, holdResult) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	conns := make([]net.Conn, n)
	var next atomic.Int64
	var mu sync.Mutex // guards res.Failed and res.Error
	res := holdResult{StartNs: time.Now().UnixNano()}
	var wg sync.WaitGroup
	for range parallel {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				nc, err := dial(ctx)
				if err != nil {
					mu.Lock()
					res.Failed++
					if res.Error == "" {
						res.Error = err.Error()
					}
					mu.Unlock()
					continue
				}
				conns[i] = nc
			}
		})
	}
	wg.Wait()
	res.EndNs = time.Now().UnixNano()
	res.Opened = n - res.Failed
	return slices.DeleteFunc(conns, func(nc net.Conn) bool { return nc == nil }), res
}
