package main

// The request/response scenarios: Send with AWAIT_MODE_FRAME over managed
// outbound connections the gateway keeps to a line responder, against two
// baselines of the same run with the same callers:
//
//   - A: a trivial gRPC unary echo server (the same Send messages, answered
//     at once): what gRPC itself costs, so that calls / A is what the
//     gateway adds beyond it;
//   - B: the same exchange made directly over kept TCP connections to the
//     same responder, with no gateway and no gRPC.

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
)

// reqrespLine is what every caller sends, and what the responder echoes.
const reqrespLine = "ping\n"

func runReqResp32(ctx context.Context, o *options, b *bench) error {
	return runReqResp(ctx, o, b, "reqresp32", 32)
}

func runReqResp1(ctx context.Context, o *options, b *bench) error {
	return runReqResp(ctx, o, b, "reqresp1", 1)
}

// callLoop runs callers goroutines that each call fn for d and returns
// calls per second and the latency summary; fn is told its caller's index.
// More than 1% of calls failing is an error.
func callLoop(ctx context.Context, callers int, d time.Duration, fn func(i int) error) (float64, *latencySummary, error) {
	lats := make([][]int64, callers)
	var failed atomic.Int64
	var firstErr error
	var errOnce sync.Once
	start := time.Now()
	until := start.Add(d)
	var wg sync.WaitGroup
	for i := range callers {
		wg.Go(func() {
			for time.Now().Before(until) && ctx.Err() == nil {
				t := time.Now()
				if err := fn(i); err != nil {
					failed.Add(1)
					errOnce.Do(func() { firstErr = err })
					continue
				}
				lats[i] = append(lats[i], time.Since(t).Nanoseconds())
			}
		})
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	all := slices.Concat(lats...)
	if n := failed.Load(); n > int64(len(all))/100 {
		return 0, nil, fmt.Errorf("%d of %d calls failed; first: %v", n, int64(len(all))+n, firstErr)
	}
	return float64(len(all)) / secs, summarize(all), nil
}

// runReqResp: callers concurrent Sends with AWAIT_MODE_FRAME, caller i to
// outbound connection i (as many connections as callers), each writing
// "ping\n" and awaiting the echoed line, for --duration; then the two
// baselines with the same callers.
func runReqResp(ctx context.Context, o *options, b *bench, name string, callers int) error {
	resp, target, err := startSelf("respond", "--lines")
	if err != nil {
		return err
	}
	defer resp.close()
	plural := map[bool]string{true: "s"}[callers > 1]

	var rate float64
	var daemonFlags []string
	var debugAddr string
	if o.profileDir != "" {
		port, err := freePort()
		if err != nil {
			return err
		}
		debugAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		daemonFlags = []string{"--debug-addr", debugAddr}
	}
	err = withDaemon(ctx, o, b, func(d *daemon) error {
		ids := make([]string, callers)
		for i := range ids {
			r, err := d.client.Connect(ctx, &tcpgatev1.ConnectRequest{Address: target, Framing: lineFraming})
			if err != nil {
				return fmt.Errorf("Connect to the responder: %w", err)
			}
			if st := r.GetConnection().GetState(); st != tcpgatev1.ConnectionState_CONNECTION_STATE_OPEN {
				return fmt.Errorf("Connect to the responder: state %s (%s), want OPEN", st, r.GetConnection().GetLastError())
			}
			ids[i] = r.GetConnection().GetConnectionId()
		}
		reqs := make([]*tcpgatev1.SendRequest, callers)
		for i, id := range ids {
			reqs[i] = &tcpgatev1.SendRequest{
				Target:     &tcpgatev1.SendRequest_ConnectionId{ConnectionId: id},
				Payload:    &tcpgatev1.SendRequest_Text{Text: reqrespLine},
				AwaitReply: &tcpgatev1.AwaitReply{Mode: tcpgatev1.AwaitMode_AWAIT_MODE_FRAME},
				Timeout:    durationpb.New(5 * time.Second),
			}
			if _, err := d.client.Send(ctx, reqs[i]); err != nil {
				return fmt.Errorf("warm-up Send: %w", err)
			}
		}
		cpu0 := cpuSeconds(d.pid())
		var s *latencySummary
		var secs float64
		profiled := make(chan error, 1)
		if debugAddr != "" {
			secs := max(1, int(o.duration/time.Second))
			path := filepath.Join(o.profileDir, fmt.Sprintf("%s-tcpgate-run%d.pprof", name, o.run))
			go func() { profiled <- fetchProfile(ctx, debugAddr, secs, path) }()
		} else {
			profiled <- nil
		}
		start := time.Now()
		rate, s, err = callLoop(ctx, callers, o.duration, func(i int) error {
			r, err := d.client.Send(ctx, reqs[i])
			if err == nil && r.GetReply().GetText() != "ping" {
				err = fmt.Errorf("reply %q, want %q", r.GetReply().GetText(), "ping")
			}
			return err
		})
		secs = time.Since(start).Seconds()
		if perr := <-profiled; perr != nil {
			b.note("%s: profile: %v", name, perr)
		}
		if err != nil {
			return err
		}
		b.add(name, fmt.Sprintf("calls/s, %d caller%s", callers, plural), "calls/s", rate)
		b.add(name, "p50", "µs", s.P50us)
		b.add(name, "p99", "µs", s.P99us)
		b.add(name, "tcpgate CPU", "% of 1 core", 100*(cpuSeconds(d.pid())-cpu0)/secs)
		return nil
	}, daemonFlags...)
	if err != nil {
		return err
	}

	// Baseline A: a gRPC server answering the same Send at once.
	echo, echoAddr, err := startSelf("grpc-echo")
	if err != nil {
		return err
	}
	cc, err := dialGateway(echoAddr)
	if err != nil {
		echo.close()
		return err
	}
	client := tcpgatev1.NewGatewayServiceClient(cc)
	req := &tcpgatev1.SendRequest{
		Target:     &tcpgatev1.SendRequest_ConnectionId{ConnectionId: "c-0123456789"},
		Payload:    &tcpgatev1.SendRequest_Text{Text: reqrespLine},
		AwaitReply: &tcpgatev1.AwaitReply{Mode: tcpgatev1.AwaitMode_AWAIT_MODE_FRAME},
		Timeout:    durationpb.New(5 * time.Second),
	}
	if _, err := client.Send(ctx, req); err != nil {
		cc.Close()
		echo.close()
		return fmt.Errorf("warm-up echo Send: %w", err)
	}
	grpcRate, gs, err := callLoop(ctx, callers, o.duration, func(int) error {
		r, err := client.Send(ctx, req)
		if err == nil && r.GetReply().GetText() != "ping" {
			err = fmt.Errorf("echo reply %q, want %q", r.GetReply().GetText(), "ping")
		}
		return err
	})
	cc.Close()
	echo.close()
	if err != nil {
		return fmt.Errorf("gRPC echo baseline: %w", err)
	}
	b.add(name, "A: gRPC unary echo server, same callers", "calls/s", grpcRate)
	b.add(name, "A: p50", "µs", gs.P50us)
	b.add(name, "A: p99", "µs", gs.P99us)
	b.add(name, "tcpgate / A (gRPC echo)", "ratio", rate/grpcRate)

	// Baseline B: the same exchange over kept TCP connections, one per
	// caller, to the same responder.
	conns := make([]*bufio.ReadWriter, callers)
	var ncs []net.Conn
	closeConns := func() {
		for _, nc := range ncs {
			nc.Close()
		}
		ncs = nil
	}
	defer closeConns()
	for i := range conns {
		nc, err := net.Dial("tcp", target)
		if err != nil {
			return fmt.Errorf("direct baseline: %w", err)
		}
		ncs = append(ncs, nc)
		conns[i] = bufio.NewReadWriter(bufio.NewReader(nc), bufio.NewWriter(nc))
	}
	directRate, ds, err := callLoop(ctx, callers, o.duration, func(i int) error {
		rw := conns[i]
		_ = ncs[i].SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := rw.WriteString(reqrespLine); err != nil {
			return err
		}
		if err := rw.Flush(); err != nil {
			return err
		}
		line, err := rw.ReadString('\n')
		if err == nil && line != reqrespLine {
			err = fmt.Errorf("direct reply %q, want %q", line, reqrespLine)
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("direct TCP baseline: %w", err)
	}
	b.add(name, "B: direct TCP over kept connections, same callers", "exchanges/s", directRate)
	b.add(name, "B: p50", "µs", ds.P50us)
	b.add(name, "B: p99", "µs", ds.P99us)
	b.add(name, "tcpgate / B (direct TCP)", "ratio", rate/directRate)
	// The responder reports once every connection it serves has closed.
	closeConns()
	var rr respondResult
	return resp.finish(&rr)
}

// echoService answers Send at once with the payload as its reply, as text:
// baseline A of the request/response scenarios.
type echoService struct {
	tcpgatev1.UnimplementedGatewayServiceServer
}

func (echoService) Send(_ context.Context, req *tcpgatev1.SendRequest) (*tcpgatev1.SendResponse, error) {
	text := req.GetText()
	if n := len(text); n > 0 && text[n-1] == '\n' {
		text = text[:n-1] // the frame, as line framing cuts it
	}
	return &tcpgatev1.SendResponse{
		BytesWritten:       uint64(len(req.GetText())),
		ConnectionsReached: 1,
		Reply:              &tcpgatev1.Reply{Text: text},
	}, nil
}

// grpcEchoMain serves echoService on 127.0.0.1:0 until stdin closes.
func grpcEchoMain(args []string) error {
	fs := flag.NewFlagSet("grpc-echo", flag.ContinueOnError)
	if err := fs.Parse(args); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := grpc.NewServer()
	tcpgatev1.RegisterGatewayServiceServer(srv, echoService{})
	ctx, cancel := stdinContext()
	defer cancel()
	stop := context.AfterFunc(ctx, srv.Stop)
	defer stop()
	fmt.Println("ready", ln.Addr())
	if err := srv.Serve(ln); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return err
	}
	return nil
}

// echoLines answers every line of nc with the same line, flushing when no
// more input is buffered, until the peer closes: the responder of the
// request/response scenarios, for the gateway and the direct baseline alike.
func echoLines(nc net.Conn, served *atomic.Uint64) {
	r := bufio.NewReaderSize(nc, 16<<10)
	w := bufio.NewWriterSize(nc, 16<<10)
	for {
		line, err := r.ReadSlice('\n')
		if err != nil {
			return
		}
		if _, err := w.Write(line); err != nil {
			return
		}
		served.Add(1)
		if r.Buffered() == 0 {
			if err := w.Flush(); err != nil {
				return
			}
		}
	}
}
