package server_test

import (
	"bufio"
	"context"
	"net"
	"strings"
	"sync"
	"testing"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/servertest"
)

// BenchmarkHandleLockstep: 64 connections, each in lockstep (a 100-byte
// line, then its answer), answered by 1 or 4 Handle streams of one group,
// and by a fixed auto reply for comparison; exchanges/s over all of them.
func BenchmarkHandleLockstep(b *testing.B) {
	for _, bc := range []struct {
		name     string
		handlers int
	}{{"fixed", 0}, {"handle-1", 1}, {"handle-4", 4}} {
		b.Run(bc.name, func(b *testing.B) { benchLockstep(b, bc.handlers) })
	}
}

func benchLockstep(b *testing.B, handlers int) {
	const conns = 64
	g := servertest.Start(b, server.Config{})
	var ar *tcpgatev1.AutoReply
	if handlers == 0 {
		ar = &tcpgatev1.AutoReply{Mode: tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_FIXED, Payload: &tcpgatev1.AutoReply_Text{Text: "ok\n"}}
	}
	l := lineListener(b, g, ar)
	ctx, cancel := context.WithCancel(servertest.Context(b))
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	for range handlers {
		h := openHandle(b, g, &tcpgatev1.HandleRegistration{ListenerIds: []string{l.GetListenerId()}, Group: "bench"})
		wg.Go(func() {
			// Answers every frame of each batch in one request.
			for ctx.Err() == nil {
				resp, err := h.st.Recv()
				if err != nil {
					return
				}
				req := &tcpgatev1.HandleRequest{}
				for _, e := range resp.GetEvents() {
					if e.GetKind() == handleFrame {
						req.Replies = append(req.Replies, textReply(e.GetFrameId(), "ok"))
					}
				}
				if len(req.Replies) > 0 && h.st.Send(req) != nil {
					return
				}
			}
		})
	}
	line := []byte(strings.Repeat("x", 99) + "\n")
	cs := make([]*net.TCPConn, conns)
	rs := make([]*bufio.Reader, conns)
	for i := range cs {
		cs[i] = servertest.Dial(b, l.GetAddress())
		rs[i] = bufio.NewReader(cs[i])
	}
	b.ResetTimer()
	var cw sync.WaitGroup
	errs := make(chan error, conns)
	for i := range conns {
		n := b.N / conns
		if i < b.N%conns {
			n++
		}
		cw.Go(func() {
			for range n {
				if _, err := cs[i].Write(line); err != nil {
					errs <- err
					return
				}
				if _, err := rs[i].ReadString('\n'); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	cw.Wait()
	b.StopTimer()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "exchanges/s")
}
