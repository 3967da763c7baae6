package server_test

// End-to-end benchmarks of the ingest path inside one process, for pprof:
// a TCP sender into a listener, the gateway, and gRPC subscribers over
// loopback. `make bench` measures the real daemon across processes
// (cmd/tcpgate-bench); these exist to profile it:
//
//	go test -run '^$' -bench 'Ingest' -cpuprofile cpu.prof -memprofile mem.prof ./server
//
// The subscribers walk the encoded responses for the fields they count
// instead of decoding every event, so the profile is mostly the gateway's.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/servertest"
)

// BenchmarkIngestRaw sends 64 KiB writes of binary data into a raw listener
// with one BACKPRESSURE subscriber; one op is one write.
func BenchmarkIngestRaw(b *testing.B) {
	chunk := make([]byte, 64<<10)
	for i := range chunk {
		chunk[i] = byte(i*7 + i>>8) // not UTF-8: sent once, as data
	}
	b.SetBytes(int64(len(chunk)))
	benchIngest(b, tcpgatev1.FramingMode_FRAMING_MODE_RAW, chunk, 1, b.N, 1)
}

// BenchmarkIngestLines sends 100-byte lines, 640 per write, into a line
// listener with 1 and 10 BACKPRESSURE subscribers; one op is one line.
func BenchmarkIngestLines(b *testing.B) {
	var chunk bytes.Buffer
	const perChunk = 640
	for i := range perChunk {
		line := fmt.Sprintf("line %07d ", i)
		chunk.WriteString(line + strings.Repeat("x", 99-len(line)) + "\n")
	}
	for _, subs := range []int{1, 10} {
		b.Run(fmt.Sprintf("subs=%d", subs), func(b *testing.B) {
			benchIngest(b, tcpgatev1.FramingMode_FRAMING_MODE_LINE, chunk.Bytes(), perChunk, b.N, subs)
		})
	}
}

// benchIngest writes frames frames (perChunk to a write of chunk) over one
// connection and waits until each of subs subscribers has them all. It
// reports the frames delivered per second over all subscribers.
func benchIngest(b *testing.B, mode tcpgatev1.FramingMode, chunk []byte, perChunk, frames, subs int) {
	g := servertest.Start(b, server.Config{})
	ctx := context.Background()
	l, err := g.Client.StartListener(ctx, &tcpgatev1.StartListenerRequest{
		Host: "127.0.0.1", Framing: &tcpgatev1.Framing{Mode: mode},
	})
	if err != nil {
		b.Fatal(err)
	}
	id, addr := l.GetListener().GetListenerId(), l.GetListener().GetAddress()

	got := make([]int, subs)
	errs := make([]error, subs)
	var wg sync.WaitGroup
	for i := range subs {
		// A connection each, as separate processes would have.
		cc, err := grpc.NewClient(g.Server.GRPCAddr(),
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithInitialWindowSize(1<<20), grpc.WithInitialConnWindowSize(4<<20))
		if err != nil {
			b.Fatal(err)
		}
		defer cc.Close()
		s, err := cc.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true},
			tcpgatev1.GatewayService_Subscribe_FullMethodName, grpc.ForceCodecV2(benchCodec{}))
		if err == nil {
			err = s.SendMsg(&tcpgatev1.SubscribeRequest{
				ListenerIds:  []string{id},
				SlowConsumer: tcpgatev1.SlowConsumerPolicy_SLOW_CONSUMER_POLICY_BACKPRESSURE,
			})
		}
		if err == nil {
			err = s.CloseSend()
		}
		if err == nil {
			_, err = s.Header() // live from here on
		}
		if err != nil {
			b.Fatal(err)
		}
		wg.Go(func() {
			var m benchMsg
			for !m.closed {
				if errs[i] = s.RecvMsg(&m); errs[i] != nil {
					return
				}
			}
			got[i] = m.frames
		})
	}

	nc, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for sent := 0; sent < frames; sent += perChunk {
		n := min(perChunk, frames-sent) * len(chunk) / perChunk
		if _, err := nc.Write(chunk[:n]); err != nil {
			b.Fatal(err)
		}
	}
	nc.Close()
	wg.Wait()
	b.StopTimer()
	for i := range subs {
		if errs[i] != nil {
			b.Fatalf("subscriber %d: %v", i, errs[i])
		}
		// Raw frames are reads, not writes: only lines are counted exactly.
		if mode == tcpgatev1.FramingMode_FRAMING_MODE_LINE && got[i] != frames {
			b.Fatalf("subscriber %d got %d frames, want %d", i, got[i], frames)
		}
	}
	if mode == tcpgatev1.FramingMode_FRAMING_MODE_LINE {
		b.ReportMetric(float64(frames*subs)/b.Elapsed().Seconds(), "frames/s")
	}
}

// benchCodec marshals requests as protobuf and counts the DATA events of
// responses into a *benchMsg without decoding them into messages.
type benchCodec struct{}

// benchMsg accumulates what a subscriber received.
type benchMsg struct {
	buf    []byte
	frames int
	closed bool // a CONNECTION_CLOSED came
}

func (benchCodec) Name() string { return "proto" }

func (benchCodec) Marshal(v any) (mem.BufferSlice, error) {
	b, err := proto.Marshal(v.(proto.Message))
	return mem.BufferSlice{mem.SliceBuffer(b)}, err
}

func (benchCodec) Unmarshal(data mem.BufferSlice, v any) error {
	m := v.(*benchMsg)
	if n := data.Len(); cap(m.buf) < n {
		m.buf = make([]byte, n)
	}
	m.buf = m.buf[:data.Len()]
	data.CopyTo(m.buf)
	// SubscribeResponse.events = 1; Event.kind = 3.
	for b := m.buf; len(b) > 0; {
		_, _, n := protowire.ConsumeTag(b)
		if n < 0 {
			return errors.New("bad response")
		}
		ev, m2 := protowire.ConsumeBytes(b[n:])
		if m2 < 0 {
			return errors.New("bad event")
		}
		b = b[n+m2:]
		for len(ev) > 0 {
			num, typ, n := protowire.ConsumeTag(ev)
			if n < 0 {
				return errors.New("bad event field")
			}
			ev = ev[n:]
			if num == 3 && typ == protowire.VarintType {
				k, _ := protowire.ConsumeVarint(ev)
				switch tcpgatev1.EventKind(k) {
				case tcpgatev1.EventKind_EVENT_KIND_DATA:
					m.frames++
				case tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED:
					m.closed = true
				}
			}
			if n = protowire.ConsumeFieldValue(num, typ, ev); n < 0 {
				return errors.New("bad event field")
			}
			ev = ev[n:]
		}
	}
	return nil
}

// BenchmarkSendOneShot runs one-shot Sends with AWAIT_MODE_FIRST_READ from
// 32 concurrent callers to a responder on 127.0.0.1; one op is one call.
func BenchmarkSendOneShot(b *testing.B) {
	g := servertest.Start(b, server.Config{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer ln.Close()
	wg.Go(func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer nc.Close()
				buf := make([]byte, 512)
				if _, err := nc.Read(buf); err != nil {
					return
				}
				if _, err := nc.Write([]byte("pong\n")); err != nil {
					return
				}
				_, _ = nc.Read(buf) // until the gateway closes
			})
		}
	})
	req := &tcpgatev1.SendRequest{
		Target:     &tcpgatev1.SendRequest_Address{Address: ln.Addr().String()},
		Payload:    &tcpgatev1.SendRequest_Text{Text: "ping\n"},
		AwaitReply: &tcpgatev1.AwaitReply{Mode: tcpgatev1.AwaitMode_AWAIT_MODE_FIRST_READ},
	}
	b.ReportAllocs()
	b.SetParallelism(16) // 32 callers on 2 CPUs
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			r, err := g.Client.Send(context.Background(), req)
			if err != nil {
				b.Error(err)
				return
			}
			if r.GetReply().GetText() != "pong\n" {
				b.Errorf("reply %q", r.GetReply().GetText())
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "calls/s")
}

// BenchmarkSendReqResp runs Sends with AWAIT_MODE_FRAME from 32 concurrent
// callers, each on its own managed outbound connection to a line echo
// device on 127.0.0.1, as `make bench` scenario reqresp32 does; one op is
// one call. Its allocs/op are the gateway's and the gRPC client's.
func BenchmarkSendReqResp(b *testing.B) {
	g := servertest.Start(b, server.Config{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	// The device's connections stay open until the gateway closes them,
	// after the benchmark: they are closed here so that it can wait for
	// its goroutines.
	var (
		wg  sync.WaitGroup
		mu  sync.Mutex
		ncs []net.Conn
	)
	defer wg.Wait()
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for _, nc := range ncs {
			nc.Close()
		}
	}()
	defer ln.Close()
	wg.Go(func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			ncs = append(ncs, nc)
			mu.Unlock()
			wg.Go(func() {
				defer nc.Close()
				buf := make([]byte, 512)
				for {
					n, err := nc.Read(buf)
					if err != nil {
						return
					}
					if _, err := nc.Write(buf[:n]); err != nil {
						return
					}
				}
			})
		}
	})
	const callers = 32
	reqs := make(chan *tcpgatev1.SendRequest, callers)
	for range callers {
		c := g.Connect(b, &tcpgatev1.ConnectRequest{Address: ln.Addr().String(), Framing: &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE}})
		reqs <- &tcpgatev1.SendRequest{
			Target:     &tcpgatev1.SendRequest_ConnectionId{ConnectionId: c.GetConnectionId()},
			Payload:    &tcpgatev1.SendRequest_Text{Text: "ping\n"},
			AwaitReply: &tcpgatev1.AwaitReply{Mode: tcpgatev1.AwaitMode_AWAIT_MODE_FRAME},
		}
	}
	b.ReportAllocs()
	b.SetParallelism(callers / 2) // 32 callers on 2 CPUs
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		// One connection per caller: awaited replies on one connection
		// are answered in order, so callers sharing one would queue.
		var req *tcpgatev1.SendRequest
		select {
		case req = <-reqs:
		default:
			b.Error("more callers than connections")
			return
		}
		for pb.Next() {
			r, err := g.Client.Send(context.Background(), req)
			if err != nil {
				b.Error(err)
				return
			}
			if r.GetReply().GetText() != "ping" {
				b.Errorf("reply %q, want %q", r.GetReply().GetText(), "ping")
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "calls/s")
}
