// Package dialer makes the gateway's outbound connections: one-shot sends
// (resolve and check the address against the dial policy, connect, write,
// optionally read the reply, close: kn-sock's send_tcp_message and
// send_tcp_bytes), and the connections that managed outbound connections
// and forwarding listeners keep (Dial). Send and Dial are its only ways to
// connect, and both resolve and check the policy in the same call, so
// that nothing dials around the policy.
package dialer

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tcpgate/tcpgate/server/internal/await"
	"github.com/tcpgate/tcpgate/server/internal/framing"
	"github.com/tcpgate/tcpgate/server/internal/policy"
)

// Errors of Send; callers test them with errors.Is. Timeouts wrap
// context.DeadlineExceeded.
var (
	// ErrRefused means nothing accepted the connection.
	ErrRefused = errors.New("connection refused")
	// ErrUnreachable means the address could not be reached, or is no
	// address (a failed lookup is a *net.DNSError, unwrapped).
	ErrUnreachable = errors.New("address unreachable")
	// ErrNoReply means the peer closed before a whole reply arrived.
	ErrNoReply = errors.New("peer closed before replying")
	// ErrReplyTooLarge means the reply exceeded Request.MaxReply.
	ErrReplyTooLarge = errors.New("reply too large")
	// ErrBroken means the connection failed while writing or reading.
	ErrBroken = errors.New("connection broken")
	// ErrHandshake means the TLS handshake failed.
	ErrHandshake = errors.New("TLS handshake failed")
	// ErrReplyTimeout is returned, with context.DeadlineExceeded, when the
	// payload was written but the reply did not come before the deadline.
	ErrReplyTimeout = errors.New("no reply in time")
)

// readSize is the buffer of one read of a reply.
const readSize = 64 << 10

// readBuffers are reused across sends: a reply is usually a few bytes, and a
// fresh zeroed 64 KiB buffer per call cost more than the rest of the call.
var readBuffers = sync.Pool{New: func() any { b := make([]byte, readSize); return &b }}

// Request is one send.
type Request struct {
	// Address is host:port, as the caller gave it (and as errors name it).
	// It is resolved once and checked against the policy; the addresses it
	// allows are dialed in order until one accepts.
	Address string
	Payload []byte
	// Framed writes Payload encoded with Framing (as conn.Conn.SendFrame
	// encodes it) instead of as it is. A payload the framing cannot encode
	// is refused before anything is resolved or dialed, with a
	// *framing.EncodeError.
	Framed bool
	Await  await.Mode
	// Framing encodes the payload when Framed and cuts the reply in Frame
	// mode; it must be normalized.
	Framing framing.Config
	// Match, in Frame mode, says which frame is the reply: frames that do
	// not match are skipped. Nil means the first frame.
	Match func(frame []byte) bool
	// MaxReply bounds the reply in bytes; it must be positive when awaiting.
	MaxReply int
	// TLS, when set, makes the exchange TLS; its ServerName must be set.
	TLS *tls.Config
}

// Result is what a send did.
type Result struct {
	BytesWritten int
	Reply        []byte
}

// Dialer sends. The zero value is ready to use, with the default policy.
type Dialer struct {
	// Policy decides what may be dialed; nil means the default policy
	// (see policy.Policy), never "anything goes". Set it before the first
	// Send; SetPolicy replaces it later.
	Policy *policy.Policy
	// KeepAlive is the TCP keep-alive period of a send's connection. Zero
	// turns keep-alive off: a one-shot exchange is bounded by its context,
	// so probes after 15 s idle would find nothing to keep, and setting
	// them up costs four system calls per send.
	KeepAlive time.Duration

	stats struct{ sends, failed, bytesOut, bytesIn atomic.Uint64 }

	// replaced is the policy SetPolicy put in Policy's place; nil until then.
	replaced atomic.Pointer[policy.Policy]

	wg sync.WaitGroup // lingering closes
	mu sync.Mutex     // guards the fields below
	// lingering are connections waiting for the peer to close first.
	lingering map[net.Conn]struct{}
	closed    bool
}

// SetPolicy replaces the dial policy for every dial from now on: a Send,
// a forwarding listener's dial to its target, an outbound connection's
// next reconnect. Connections already open stay open. Safe for concurrent
// use; p nil means the default policy.
func (d *Dialer) SetPolicy(p *policy.Policy) {
	if p == nil {
		p = &policy.Policy{}
	}
	d.replaced.Store(p)
}

// policy is the dial policy in force.
func (d *Dialer) policy() *policy.Policy {
	if p := d.replaced.Load(); p != nil {
		return p
	}
	return d.Policy
}

// Stats are a Dialer's counters since it was made.
type Stats struct {
	// Sends counts sends, Failed those that returned an error.
	Sends, Failed uint64
	// BytesOut counts payload bytes written, BytesIn reply bytes returned.
	BytesOut, BytesIn uint64
}

// Stats returns the counters. Safe for concurrent use.
func (d *Dialer) Stats() Stats {
	return Stats{
		Sends: d.stats.sends.Load(), Failed: d.stats.failed.Load(),
		BytesOut: d.stats.bytesOut.Load(), BytesIn: d.stats.bytesIn.Load(),
	}
}

// Linger bounds of a graceful close: how long and how much the gateway
// reads, after its own half-close, for the peer to close first.
const (
	lingerTimeout = 2 * time.Second
	lingerBytes   = 1 << 20
)

// Send resolves req.Address once, refuses it when the policy allows none
// of its addresses (an error wrapping policy.ErrDenied), connects to the
// first allowed one that accepts, writes req.Payload and awaits the reply
// as asked. The policy holds for what is dialed: the addresses checked
// are the ones dialed, never a second lookup's. ctx bounds the whole
// exchange. A refused send is not counted in Stats: nothing was dialed.
func (d *Dialer) Send(ctx context.Context, req Request) (Result, error) {
	if req.Framed {
		p, err := req.Framing.Encode(nil, req.Payload)
		if err != nil {
			return Result{}, fmt.Errorf("sending to %s: %w", req.Address, err)
		}
		req.Payload = p
	}
	addrs, err := d.policy().ResolveDial(ctx, req.Address)
	if err != nil {
		var dns *net.DNSError
		if errors.Is(err, policy.ErrDenied) || errors.As(err, &dns) {
			return Result{}, err
		}
		// Not host:port with a numeric port: no address to reach, as a
		// dial of it would have said.
		return Result{}, fmt.Errorf("connecting to %s: %w: %w", req.Address, ErrUnreachable, err)
	}
	res, err := d.send(ctx, req, addrs)
	d.stats.sends.Add(1)
	d.stats.bytesOut.Add(uint64(res.BytesWritten))
	d.stats.bytesIn.Add(uint64(len(res.Reply)))
	if err != nil {
		d.stats.failed.Add(1)
	}
	return res, err
}

func (d *Dialer) send(ctx context.Context, req Request, addrs []string) (Result, error) {
	nc, err := d.dial(ctx, addrs)
	if err != nil {
		return Result{}, dialError(ctx, req.Address, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = nc.SetDeadline(dl)
	}
	// Cancellation without a deadline still unblocks I/O at once.
	stop := context.AfterFunc(ctx, func() { _ = nc.SetDeadline(time.Unix(1, 0)) })
	if req.TLS != nil {
		tc := tls.Client(nc, req.TLS)
		if err := tc.HandshakeContext(ctx); err != nil {
			stop()
			nc.Close()
			if ctx.Err() != nil {
				return Result{}, fmt.Errorf("TLS handshake with %s: %w", req.Address, ctx.Err())
			}
			return Result{}, fmt.Errorf("TLS handshake with %s: %w: %w", req.Address, ErrHandshake, err)
		}
		nc = tc
	}
	res, err := exchange(ctx, nc, req)
	stop()
	if err != nil || req.Await == await.UntilClose {
		// Broken, or the peer has closed already.
		nc.Close()
		return res, err
	}
	d.linger(nc)
	return res, nil
}

// linger closes nc gracefully in the background: the gateway half-closes,
// then reads and discards what the peer still sends until it closes too
// (lingerTimeout and lingerBytes at most). Closing at once with unread
// bytes pending would send the peer a reset instead of a clean end, and a
// peer still writing its reply would see "connection reset".
func (d *Dialer) linger(nc net.Conn) {
	cw, ok := nc.(interface{ CloseWrite() error })
	if !ok || cw.CloseWrite() != nil {
		nc.Close()
		return
	}
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		nc.Close()
		return
	}
	if d.lingering == nil {
		d.lingering = make(map[net.Conn]struct{})
	}
	d.lingering[nc] = struct{}{}
	d.wg.Add(1)
	d.mu.Unlock()
	go func() {
		defer d.wg.Done()
		_ = nc.SetDeadline(time.Now().Add(lingerTimeout))
		bp := readBuffers.Get().(*[]byte)
		for read := 0; read < lingerBytes; {
			n, err := nc.Read(*bp)
			read += n
			if err != nil {
				break
			}
		}
		readBuffers.Put(bp)
		nc.Close()
		d.mu.Lock()
		delete(d.lingering, nc)
		d.mu.Unlock()
	}()
}

// Close ends lingering closes at once and waits for them. Sends after Close
// still work but close without lingering.
func (d *Dialer) Close() {
	d.mu.Lock()
	d.closed = true
	for nc := range d.lingering {
		nc.Close()
	}
	d.mu.Unlock()
	d.wg.Wait()
}

// DialRequest is one connection to keep.
type DialRequest struct {
	// Address is host:port, as the caller gave it (and as errors name
	// it). It is resolved at every Dial, so that each attempt is checked
	// against the policy with the addresses it will dial.
	Address string
	// TLS, when set, makes the connection TLS, handshaken within Dial's
	// context; its ServerName must be set.
	TLS *tls.Config
	// KeepAlive sets the TCP keep-alive probes (Enable is implied); its
	// zero fields are Go's defaults: probes after 15 s idle, every 15 s,
	// 9 of them (see net.KeepAliveConfig).
	KeepAlive net.KeepAliveConfig
	// NoKeepAlive turns the probes off; KeepAlive is then ignored.
	NoKeepAlive bool
	// UserTimeout sets TCP_USER_TIMEOUT: how long written bytes may stay
	// unacknowledged before the kernel drops the connection; 0 leaves the
	// kernel's default. Only on Linux; elsewhere it is ignored.
	UserTimeout time.Duration
}

// Dial resolves req.Address, refuses it when the policy allows none of its
// addresses (an error wrapping policy.ErrDenied), connects to the first
// allowed one that accepts and, with req.TLS, completes the handshake. Its
// errors are Send's: ErrRefused, ErrUnreachable, ErrHandshake, a
// *net.DNSError, or ctx's error. The caller owns the connection.
func (d *Dialer) Dial(ctx context.Context, req DialRequest) (net.Conn, error) {
	addrs, err := d.policy().ResolveDial(ctx, req.Address)
	if err != nil {
		var dns *net.DNSError
		if errors.Is(err, policy.ErrDenied) || errors.As(err, &dns) {
			return nil, err
		}
		return nil, fmt.Errorf("connecting to %s: %w: %w", req.Address, ErrUnreachable, err)
	}
	nd := net.Dialer{KeepAliveConfig: req.KeepAlive, Control: userTimeout(req.UserTimeout)}
	nd.KeepAliveConfig.Enable = true
	if req.NoKeepAlive {
		nd.KeepAliveConfig, nd.KeepAlive = net.KeepAliveConfig{}, -1
	}
	var nc net.Conn
	var first error
	for _, addr := range addrs {
		if nc, err = nd.DialContext(ctx, "tcp", addr); err == nil {
			break
		}
		if first == nil {
			first = err
		}
		if ctx.Err() != nil {
			break
		}
	}
	if nc == nil {
		return nil, dialError(ctx, req.Address, first)
	}
	if req.TLS == nil {
		return nc, nil
	}
	tc := tls.Client(nc, req.TLS)
	if err := tc.HandshakeContext(ctx); err != nil {
		nc.Close()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("TLS handshake with %s: %w", req.Address, ctx.Err())
		}
		return nil, fmt.Errorf("TLS handshake with %s: %w: %w", req.Address, ErrHandshake, err)
	}
	return tc, nil
}

// exchange writes the payload and reads the reply as asked.
func exchange(ctx context.Context, nc net.Conn, req Request) (Result, error) {
	n, err := nc.Write(req.Payload)
	res := Result{BytesWritten: n}
	if err != nil {
		return res, ioError(ctx, "writing to", req.Address, err)
	}
	switch req.Await {
	case await.FirstRead:
		bp := readBuffers.Get().(*[]byte)
		n, err := nc.Read((*bp)[:min(req.MaxReply, readSize)])
		res.Reply = bytes.Clone((*bp)[:n])
		readBuffers.Put(bp)
		if err != nil && !errors.Is(err, io.EOF) {
			return res, replyError(ctx, req.Address, err)
		}
		if res.Reply == nil {
			res.Reply = []byte{}
		}
	case await.Frame:
		res.Reply, err = readFrame(nc, req)
		if err != nil {
			return res, replyError(ctx, req.Address, err)
		}
	case await.UntilClose:
		if cw, ok := nc.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
		res.Reply, err = readAll(nc, req.MaxReply)
		if err != nil {
			return res, replyError(ctx, req.Address, err)
		}
	}
	return res, nil
}

// dial connects to the first of addrs, which the policy allowed, that
// accepts.
func (d *Dialer) dial(ctx context.Context, addrs []string) (net.Conn, error) {
	nd := net.Dialer{KeepAlive: d.KeepAlive}
	if nd.KeepAlive == 0 {
		nd.KeepAlive = -1
	}
	var first error
	for _, addr := range addrs {
		nc, err := nd.DialContext(ctx, "tcp", addr)
		if err == nil {
			return nc, nil
		}
		if first == nil {
			first = err
		}
		if ctx.Err() != nil {
			break
		}
	}
	return nil, first
}

func readFrame(nc net.Conn, req Request) ([]byte, error) {
	fc := req.Framing
	if fc.MaxFrameBytes > req.MaxReply {
		fc.MaxFrameBytes = req.MaxReply
	}
	sp, err := framing.NewSplitter(fc)
	if err != nil {
		return nil, err
	}
	var frame []byte
	got := false
	emit := func(f []byte) {
		if !got && (req.Match == nil || req.Match(f)) {
			frame, got = f, true
		}
	}
	bp := readBuffers.Get().(*[]byte)
	defer readBuffers.Put(bp)
	buf := *bp
	for !got {
		n, rerr := nc.Read(buf)
		if n > 0 {
			chunk := bytes.Clone(buf[:n])
			if err := sp.Feed(chunk, emit); err != nil && !got {
				if errors.Is(err, framing.ErrFrameTooLarge) {
					limit := "await_reply.max_bytes"
					if fc.MaxFrameBytes < req.MaxReply {
						limit = "await_reply.framing.max_frame_bytes"
					}
					return nil, fmt.Errorf("more than %d bytes (%s): %w", fc.MaxFrameBytes, limit, ErrReplyTooLarge)
				}
				return nil, err
			}
		}
		if got {
			break
		}
		if errors.Is(rerr, io.EOF) {
			if final, _ := sp.Close(); final != nil && (req.Match == nil || req.Match(final)) {
				return final, nil
			}
			return nil, ErrNoReply
		}
		if rerr != nil {
			return nil, rerr
		}
	}
	return frame, nil
}

func readAll(nc net.Conn, limit int) ([]byte, error) {
	var out []byte
	bp := readBuffers.Get().(*[]byte)
	defer readBuffers.Put(bp)
	buf := *bp
	for {
		n, err := nc.Read(buf)
		if len(out)+n > limit {
			return nil, fmt.Errorf("more than %d bytes (await_reply.max_bytes): %w", limit, ErrReplyTooLarge)
		}
		out = append(out, buf[:n]...)
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

func dialError(ctx context.Context, addr string, err error) error {
	switch {
	case ctx.Err() != nil:
		return fmt.Errorf("connecting to %s: %w", addr, ctx.Err())
	case errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Errorf("connecting to %s: %w", addr, context.DeadlineExceeded)
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("connecting to %s: %w", addr, ErrRefused)
	}
	return fmt.Errorf("connecting to %s: %w: %w", addr, ErrUnreachable, err)
}

// replyError is ioError for reading the reply: a deadline there is the
// reply's timeout, told apart from one while connecting or writing.
func replyError(ctx context.Context, addr string, err error) error {
	err = ioError(ctx, "reading reply from", addr, err)
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%w: %w", ErrReplyTimeout, err)
	}
	return err
}

func ioError(ctx context.Context, what, addr string, err error) error {
	switch {
	case errors.Is(err, ErrReplyTooLarge), errors.Is(err, ErrNoReply):
		return fmt.Errorf("%s %s: %w", what, addr, err)
	case ctx.Err() != nil:
		return fmt.Errorf("%s %s: %w", what, addr, ctx.Err())
	case errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Errorf("%s %s: %w", what, addr, context.DeadlineExceeded)
	}
	return fmt.Errorf("%s %s: %w: %w", what, addr, ErrBroken, err)
}
