package conn

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"math/bits"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/tcpgate/tcpgate/server/internal/event"
	"github.com/tcpgate/tcpgate/server/internal/framing"
)

// readBufferSize is the most one read takes: large enough that a fast sender
// needs few reads. Read buffers are pooled and taken per read, so what a
// connection holds between reads is the bytes it read, not the buffer.
const readBufferSize = 64 << 10

// minReadSize is the read of a connection whose last read did not fill its
// buffer, which is likely to wait for the peer: through net.Conn.Read (TLS)
// that buffer is held for as long as the connection is idle, so it is
// small, as nats-server's read loop starts and shrinks to.
const minReadSize = 512

// maxTLSReadSize bounds reads through crypto/tls: one Read returns at most
// one record's plaintext, 16 KiB, so a larger buffer is never filled.
const maxTLSReadSize = 16 << 10

// readClasses is how many buffer sizes are pooled: minReadSize<<7 is
// readBufferSize.
const readClasses = 8

// readBuffers[i] pools read buffers of minReadSize<<i bytes.
var readBuffers [readClasses]sync.Pool

// readClass returns the index of the smallest pooled size that holds n.
func readClass(n int) int {
	if n <= minReadSize {
		return 0
	}
	return bits.Len(uint(n-1) / minReadSize)
}

// getReadBuffer returns a pooled buffer of at least n bytes (n at most
// readBufferSize); putReadBuffer gives it back.
func getReadBuffer(n int) *[]byte {
	i := readClass(n)
	if bp, ok := readBuffers[i].Get().(*[]byte); ok {
		return bp
	}
	b := make([]byte, minReadSize<<i)
	return &b
}

func putReadBuffer(bp *[]byte) { readBuffers[readClass(cap(*bp))].Put(bp) }

// readSizer sizes the reads of a connection read through net.Conn.Read,
// whose buffer is held while the read waits, in the manner of
// nats-server's read loop: a read that fills its buffer doubles the next
// one (up to max), a read that uses less than half of it halves it
// (down to minReadSize). And since a read that did not fill its buffer
// drained what was there, the read after it is likely to wait: it takes
// only minReadSize, and when that fills the next read is of the size
// reached before, so a busy connection does not start over.
type readSizer struct {
	max   int  // the largest read
	busy  int  // the size of a read after one that filled its buffer
	short bool // the last read did not fill its buffer
}

// busyReadSize is the first size a connection's reads grow from, once a
// small read has filled: a few KiB, as most messages are.
const busyReadSize = 4 << 10

func newReadSizer(max int) *readSizer {
	return &readSizer{max: max, busy: min(busyReadSize, max), short: true}
}

// next returns the size of the next read.
func (s *readSizer) next() int {
	if s.short {
		return min(minReadSize, s.max)
	}
	return s.busy
}

// update records that a read of size bytes returned n.
func (s *readSizer) update(size, n int) {
	if n < size {
		if !s.short && 2*n < size {
			s.busy = max(s.busy/2, min(minReadSize, s.max))
		}
		s.short = true
		return
	}
	if !s.short {
		s.busy = min(2*s.busy, s.max)
	}
	s.short = false
}

// readLoop reads until an error and returns the close reason it implies.
func (c *Conn) readLoop(splitter *framing.Splitter) event.CloseReason {
	maxRead := readBufferSize
	if c.cfg.Framing.Mode == framing.Raw && c.cfg.Framing.MaxFrameBytes < maxRead {
		maxRead = c.cfg.Framing.MaxFrameBytes
	}
	// A plain connection reads its socket directly, taking a buffer only
	// once there are bytes (rawread_linux.go): no read waits with one, so
	// every read may take the most. Through TLS the read waits inside
	// crypto/tls with the buffer it was given, so readSizer keeps that small.
	read := rawReader(c.nc)
	if read == nil {
		_, isTLS := c.nc.(*tls.Conn)
		if isTLS {
			maxRead = min(maxRead, maxTLSReadSize)
		}
		// In raw framing a read is a frame: a record that a small waiting
		// read took only the start of is completed from what crypto/tls
		// has already decrypted, so a message of one record stays one
		// frame, as it is over plain TCP.
		whole := isTLS && c.cfg.Framing.Mode == framing.Raw
		sizer := newReadSizer(maxRead)
		read = func(int) ([]byte, error) {
			size := sizer.next()
			chunk, err := c.read(size)
			sizer.update(size, len(chunk))
			if whole && err == nil && len(chunk) == size && size < maxRead {
				chunk, err = c.readDecrypted(chunk, maxRead)
			}
			return chunk, err
		}
	}
	var frames [][]byte
	emit := func(f []byte) { frames = append(frames, f) }
	for {
		idle := c.idle() // read anew each time: UpdateListener may change it
		if idle > 0 {
			_ = c.nc.SetReadDeadline(time.Now().Add(idle))
		}
		chunk, err := read(maxRead)
		if len(chunk) > 0 {
			n := uint64(len(chunk))
			c.counters.BytesIn.Add(n)
			for _, a := range c.cfg.Aggregates {
				a.BytesIn.Add(n)
			}
			frames = frames[:0]
			ferr := splitter.Feed(chunk, emit)
			if len(frames) > 0 && !c.frames(frames, retain(frames, len(chunk))) {
				return event.ReasonUnspecified // closed while waiting; Close set the reason
			}
			clear(frames)
			// A forwarded connection relays the bytes as they came, after
			// subscribers got their frames.
			if c.relay != nil && !c.relayOut(chunk) {
				return event.ReasonUnspecified
			}
			if ferr != nil {
				return event.ReasonFrameTooLarge
			}
		}
		if err != nil {
			return readReason(err, idle > 0)
		}
	}
}

// read reads up to size bytes through net.Conn.Read and returns them in a
// slice of their own: frames cut from it are published and never change,
// and it pins no more than the bytes read. The pooled buffer is held while
// the read waits, which is why readSizer keeps a waiting read small.
func (c *Conn) read(size int) ([]byte, error) {
	bp := getReadBuffer(size)
	n, err := c.nc.Read((*bp)[:size])
	var chunk []byte
	if n > 0 {
		chunk = bytes.Clone((*bp)[:n]) // no zeroing, unlike make
	}
	putReadBuffer(bp)
	return chunk, err
}

// readDecrypted appends to chunk, up to max bytes in all, what the TLS
// connection returns without waiting for its peer: the rest of the record
// whose start chunk holds, which crypto/tls has decrypted already, and the
// records it has already read from the socket. A read
// deadline of now makes crypto/tls return at once when it has nothing
// buffered (a timeout, which it does not keep as the connection's error);
// the idle deadline is set again after.
func (c *Conn) readDecrypted(chunk []byte, max int) ([]byte, error) {
	_ = c.nc.SetReadDeadline(time.Now())
	var err error
	// Record by record: crypto/tls returns one record's plaintext a Read,
	// and may hold several already read from the socket (a writer's
	// records start small, 1 KiB or so, and grow).
	for len(chunk) < max {
		bp := getReadBuffer(max - len(chunk))
		var n int
		n, err = c.nc.Read((*bp)[:max-len(chunk)])
		chunk = append(chunk, (*bp)[:n]...)
		putReadBuffer(bp)
		if err != nil || n == 0 {
			break
		}
	}
	var deadline time.Time
	if idle := c.idle(); idle > 0 {
		deadline = time.Now().Add(idle)
	}
	_ = c.nc.SetReadDeadline(deadline)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		err = nil // nothing more was buffered
	}
	return chunk, err
}

func readReason(err error, idle bool) event.CloseReason {
	switch {
	case errors.Is(err, io.EOF):
		return event.ReasonPeerClosed
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return event.ReasonPeerReset
	case idle && errors.Is(err, os.ErrDeadlineExceeded):
		return event.ReasonIdleTimeout
	}
	return event.ReasonReadError
}

// retain keeps the frames cut from one read of n bytes from pinning more
// memory than their events account for: frames that cover less than half
// of the read are copied out of it, into one buffer of their own; otherwise
// each frame's event carries its share of what no frame covers (returned,
// for event.Event.Retained). A 1-byte frame thus never holds a 64 KiB read.
func retain(frames [][]byte, n int) int {
	covered := 0
	for _, f := range frames {
		covered += len(f)
	}
	if covered >= n {
		return 0 // the frames cover the read, or were assembled out of it
	}
	if 2*covered >= n {
		return (n - covered + len(frames) - 1) / len(frames)
	}
	buf := make([]byte, 0, covered)
	for i, f := range frames {
		start := len(buf)
		buf = append(buf, f...)
		frames[i] = buf[start:len(buf):len(buf)]
	}
	return 0
}

// frames publishes frames in order, answers awaiters and auto replies;
// each frame's event retains that many bytes of shared memory beyond it
// (see retain). It reports false when the connection closed while a
// publish was waiting.
func (c *Conn) frames(frames [][]byte, retained int) bool {
	n := uint64(len(frames))
	// FramesIn numbers the frames as they complete: an awaiter answers
	// only frames after those counted when its write began.
	last := c.counters.FramesIn.Add(n)
	for _, a := range c.cfg.Aggregates {
		a.FramesIn.Add(n)
	}
	// One allocation for the events of a read, not one per frame.
	block := make([]event.Event, len(frames))
	evs := make([]*event.Event, len(frames))
	now := time.Now()
	for i, f := range frames {
		block[i] = event.Event{
			Time:         now,
			Kind:         event.Data,
			ListenerID:   c.cfg.ListenerID,
			ConnectionID: c.cfg.ID,
			Origin:       c.cfg.Origin,
			Generation:   c.cfg.Generation,
			Data:         f,
			Retained:     retained,
		}
		evs[i] = &block[i]
	}
	if err := c.cfg.Publisher.Publish(c.ctx, evs...); err != nil {
		return false
	}
	ruled := c.matchRules(frames)
	c.answer(frames, last, ruled)
	c.respond(frames, ruled)
	return true
}
