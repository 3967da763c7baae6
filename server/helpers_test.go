package server_test

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server/servertest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// wait bounds every wait in these tests; reaching it is a failure, not a
// measurement.
const wait = 10 * time.Second

func ctxT(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	t.Cleanup(cancel)
	return ctx
}

// stream is a live Subscribe call whose events are read on demand.
type stream struct {
	t      *testing.T
	events chan *tcpgatev1.Event
	errc   chan error
	cancel context.CancelFunc
}

// subscribe opens a Subscribe stream and returns once it is live (its
// headers arrived), so nothing published afterwards is missed.
func subscribe(t *testing.T, g *servertest.Gateway, req *tcpgatev1.SubscribeRequest) *stream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cl, err := g.Client.Subscribe(ctx, req)
	if err != nil {
		cancel()
		t.Fatalf("Subscribe: %v", err)
	}
	if _, err := cl.Header(); err != nil {
		cancel()
		t.Fatalf("Subscribe headers: %v", err)
	}
	recvStarted(t, cl)
	s := &stream{t: t, events: make(chan *tcpgatev1.Event, 1<<16), errc: make(chan error, 1), cancel: cancel}
	go func() {
		defer close(s.events)
		for {
			resp, err := cl.Recv()
			if err != nil {
				s.errc <- err
				return
			}
			for _, e := range resp.GetEvents() {
				select {
				case s.events <- e:
				case <-ctx.Done():
					s.errc <- ctx.Err()
					return
				}
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		for range s.events {
		}
	})
	return s
}

// next returns the next event, failing the test after wait.
func (s *stream) next() *tcpgatev1.Event {
	s.t.Helper()
	select {
	case e, ok := <-s.events:
		if !ok {
			s.t.Fatalf("stream ended: %v", <-s.errc)
		}
		return e
	case <-time.After(wait):
		s.t.Fatalf("no event within %s", wait)
	}
	return nil
}

// nextOf skips events until one of kind arrives.
func (s *stream) nextOf(kind tcpgatev1.EventKind) *tcpgatev1.Event {
	s.t.Helper()
	for {
		if e := s.next(); e.GetKind() == kind {
			return e
		}
	}
}

// end waits for the stream to end and returns its error.
func (s *stream) end() error {
	s.t.Helper()
	deadline := time.After(wait)
	for {
		select {
		case _, ok := <-s.events:
			if !ok {
				return <-s.errc
			}
		case <-deadline:
			s.t.Fatalf("stream did not end within %s", wait)
		}
	}
}

func startListener(t *testing.T, g *servertest.Gateway, req *tcpgatev1.StartListenerRequest) *tcpgatev1.Listener {
	t.Helper()
	if req.Host == "" {
		req.Host = "127.0.0.1"
	}
	resp, err := g.Client.StartListener(ctxT(t), req)
	if err != nil {
		t.Fatalf("StartListener: %v", err)
	}
	return resp.GetListener()
}

func dial(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, wait)
	if err != nil {
		t.Fatalf("dialing %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(wait))
	return c.(*net.TCPConn)
}

func readN(t *testing.T, c net.Conn, n int) []byte {
	t.Helper()
	buf := make([]byte, n)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("reading %d bytes: %v", n, err)
	}
	return buf
}

func wantCode(t *testing.T, err error, code codes.Code) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("got %v, want code %v", err, code)
	}
}

// peer is a plain Go TCP server for Send-to-address tests: it runs handle for
// every connection.
func peer(t *testing.T, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				if !errors.Is(err, net.ErrClosed) {
					t.Errorf("peer accept: %v", err)
				}
				return
			}
			wg.Go(func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(wait))
				handle(c)
			})
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return ln.Addr().String()
}

// payloadOf returns the bytes of an event or a reply, whichever field
// carries them: PAYLOAD_FORMAT_TEXT_OR_DATA, the default, sends valid
// UTF-8 as text and anything else as data.
func payloadOf(m interface {
	GetData() []byte
	GetText() string
}) []byte {
	if d := m.GetData(); len(d) > 0 {
		return d
	}
	return []byte(m.GetText())
}
