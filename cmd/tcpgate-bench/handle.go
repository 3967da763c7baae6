package main

// The handle scenario: 64 TCP connections to a line listener, each in
// lockstep (a 100-byte line, then wait for the answer line), answered by
// Handle streams that a separate process runs with the generated client
// (1 stream, and 4 streams of one group), and, in the same run, by
// AUTO_REPLY_MODE_FIXED: the baseline of what the read loop answers by
// itself.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
)

const (
	// handleConns is how many connections the scenario drives, each in
	// lockstep, as the issue sets it.
	handleConns = 64
	// handleLineBytes is each request line, its "\n" included.
	handleLineBytes = 100
	// handleMaxExchanges bounds each connection's exchanges in a window,
	// whatever --duration: far above what a window of seconds reaches.
	handleMaxExchanges = 2_000_000
	// handleAnswer is the answer line, from the handlers and the fixed
	// reply alike.
	handleAnswer = "ok\n"
	// handleTarget100k is the absolute mark for one stream.
	handleTarget100k = 100_000
)

func runHandle(ctx context.Context, o *options, b *bench) error {
	const name = "handle"
	modes := []struct {
		label   string // the row's words
		prefix  string // of its p50 and p99 rows
		streams int    // Handle streams; 0: the fixed auto reply
	}{
		{"exchanges/s, 1 Handle stream", "1 stream", 1},
		{"exchanges/s, 4 Handle streams in one group", "4 streams", 4},
		{"exchanges/s, fixed auto reply (baseline)", "fixed", 0},
	}
	rates := map[int]float64{}
	for _, m := range modes {
		var rate float64
		var s *latencySummary
		err := withDaemon(ctx, o, b, func(d *daemon) error {
			var err error
			rate, s, err = handleRun(ctx, o, d, m.streams)
			return err
		})
		if err != nil {
			return fmt.Errorf("%s: %w", m.prefix, err)
		}
		rates[m.streams] = rate
		b.add(name, m.label, "exchanges/s", rate)
		b.add(name, m.prefix+": p50", "µs", s.P50us)
		b.add(name, m.prefix+": p99", "µs", s.P99us)
	}
	b.add(name, "1 stream / fixed", "ratio", rates[1]/rates[0])
	b.add(name, "1 stream / 100,000 exchanges/s", "ratio", rates[1]/handleTarget100k)
	return nil
}

// handleRun starts a line listener on d answered by streams Handle
// streams (one child process running them all, in one group) or, with 0,
// by a fixed reply, then drives the lockstep load for o.duration and
// returns exchanges/s and the latency of an exchange.
func handleRun(ctx context.Context, o *options, d *daemon, streams int) (float64, *latencySummary, error) {
	req := &tcpgatev1.StartListenerRequest{ListenerId: "hb", Host: "127.0.0.1", Framing: lineFraming}
	if streams == 0 {
		req.AutoReply = &tcpgatev1.AutoReply{Mode: tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_FIXED, Payload: &tcpgatev1.AutoReply_Text{Text: handleAnswer}}
	}
	sl, err := d.client.StartListener(ctx, req)
	if err != nil {
		return 0, nil, fmt.Errorf("StartListener: %w", err)
	}
	addr := sl.GetListener().GetAddress()
	var h *child
	if streams > 0 {
		// Registered before the first connection: ready means every
		// stream of the group is.
		if h, _, err = startSelf("handle", "--server", d.addr, "--listener", "hb", "--streams", fmt.Sprint(streams)); err != nil {
			return 0, nil, err
		}
		defer h.close()
	}
	rate, s, n, err := lockstep(ctx, addr, o.duration)
	if err != nil {
		return 0, nil, err
	}
	if h != nil {
		var res handleResult
		if err := h.finish(&res); err != nil {
			return 0, nil, err
		}
		if res.Error != "" {
			return 0, nil, fmt.Errorf("handler: %s", res.Error)
		}
		if res.Frames < n {
			return 0, nil, fmt.Errorf("handler answered %d frames, the clients read %d answers", res.Frames, n)
		}
	}
	return rate, s, nil
}

// lockstep runs handleConns connections to addr, each writing a
// handleLineBytes line and reading the answer line before the next, for
// d or handleMaxExchanges each. It returns exchanges/s, their latency and
// how many there were (the warm-up exchange of each connection included).
func lockstep(ctx context.Context, addr string, d time.Duration) (float64, *latencySummary, uint64, error) {
	line := []byte(strings.Repeat("x", handleLineBytes-1) + "\n")
	conns := make([]net.Conn, handleConns)
	rws := make([]*bufio.ReadWriter, handleConns)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	exchange := func(i int) error {
		_ = conns[i].SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := rws[i].Write(line); err != nil {
			return err
		}
		if err := rws[i].Flush(); err != nil {
			return err
		}
		got, err := rws[i].ReadString('\n')
		if err == nil && got != handleAnswer {
			err = fmt.Errorf("answer %q, want %q", got, handleAnswer)
		}
		return err
	}
	for i := range conns {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return 0, nil, 0, err
		}
		conns[i], rws[i] = c, bufio.NewReadWriter(bufio.NewReader(c), bufio.NewWriter(c))
		if err := exchange(i); err != nil { // warm-up: the connection is handled
			return 0, nil, 0, fmt.Errorf("warm-up exchange: %w", err)
		}
	}
	lats := make([][]int64, handleConns)
	errs := make([]error, handleConns)
	start := time.Now()
	until := start.Add(d)
	var wg sync.WaitGroup
	for i := range conns {
		wg.Go(func() {
			for n := 0; n < handleMaxExchanges && time.Now().Before(until) && ctx.Err() == nil; n++ {
				t := time.Now()
				if err := exchange(i); err != nil {
					errs[i] = err // lockstep: a lost answer ends the connection's run
					return
				}
				lats[i] = append(lats[i], time.Since(t).Nanoseconds())
			}
		})
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	if err := errors.Join(errs...); err != nil {
		return 0, nil, 0, err
	}
	all := slices.Concat(lats...)
	return float64(len(all)) / secs, summarize(all), uint64(len(all) + handleConns), nil
}

// handleResult is what a handle child reports once stdin closes.
type handleResult struct {
	Frames uint64 `json:"frames"`
	Error  string `json:"error,omitempty"`
}

// handleMain is the handle child: --streams Handle streams of one group
// on --listener, each answering every frame of a response with
// handleAnswer's line in one request, until stdin closes. It prints
// "ready" once every stream is registered, then the frames it answered.
func handleMain(args []string) error {
	fs := flag.NewFlagSet("handle", flag.ContinueOnError)
	server := fs.String("server", "", "gateway gRPC address")
	listenerID := fs.String("listener", "", "listener to handle")
	streams := fs.Int("streams", 1, "Handle streams, in one group")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cc, err := dialGateway(*server)
	if err != nil {
		return err
	}
	defer cc.Close()
	client := tcpgatev1.NewGatewayServiceClient(cc)
	ctx, cancel := stdinContext()
	defer cancel()

	var frames atomic.Uint64
	type handle struct {
		st tcpgatev1.GatewayService_HandleClient
	}
	hs := make([]handle, *streams)
	for i := range hs {
		st, err := client.Handle(ctx)
		if err != nil {
			return err
		}
		reg := &tcpgatev1.HandleRegistration{ListenerIds: []string{*listenerID}, Group: "bench", MaxInFlight: handleConns}
		if err := st.Send(&tcpgatev1.HandleRequest{Registration: reg}); err != nil {
			return err
		}
		resp, err := st.Recv()
		if err != nil {
			return fmt.Errorf("registering: %w", err)
		}
		if resp.GetRegistered() == nil {
			return fmt.Errorf("registering: got %v", resp)
		}
		hs[i].st = st
	}
	fmt.Println("ready")

	errc := make(chan error, len(hs))
	var wg sync.WaitGroup
	for _, h := range hs {
		wg.Go(func() {
			answer := &tcpgatev1.HandleReply_Text{Text: strings.TrimSuffix(handleAnswer, "\n")}
			var replies []*tcpgatev1.HandleReply
			for {
				resp, err := h.st.Recv()
				if err != nil {
					if ctx.Err() == nil && !errors.Is(err, io.EOF) {
						errc <- err
					}
					return
				}
				replies = replies[:0]
				for _, e := range resp.GetEvents() {
					if e.GetKind() == tcpgatev1.HandleEventKind_HANDLE_EVENT_KIND_FRAME {
						replies = append(replies, &tcpgatev1.HandleReply{FrameId: e.GetFrameId(), Payload: answer})
					}
				}
				if len(resp.GetRejections()) > 0 {
					errc <- fmt.Errorf("rejected: %v", resp.GetRejections()[0])
					return
				}
				if len(replies) == 0 {
					continue
				}
				if err := h.st.Send(&tcpgatev1.HandleRequest{Replies: replies}); err != nil {
					if ctx.Err() == nil {
						errc <- err
					}
					return
				}
				frames.Add(uint64(len(replies)))
			}
		})
	}
	<-ctx.Done()
	wg.Wait()
	res := handleResult{Frames: frames.Load()}
	select {
	case err := <-errc:
		res.Error = err.Error()
	default:
	}
	out, _ := json.Marshal(res)
	fmt.Println(string(out))
	return nil
}
