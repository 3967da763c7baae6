package conn

import (
	"bytes"
	"errors"
	"io"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/tcpgate/tcpgate/server/internal/event"
	"github.com/tcpgate/tcpgate/server/internal/framing"
)

// readBufferSize is the most one read takes: large enough that a fast sender
// needs few reads, and the buffer is pooled so idle connections hold none.
const readBufferSize = 64 << 10

var readBuffers = sync.Pool{New: func() any { b := make([]byte, readBufferSize); return &b }}

// readLoop reads until an error and returns the close reason it implies.
func (c *Conn) readLoop(splitter *framing.Splitter) event.CloseReason {
	maxRead := readBufferSize
	if c.cfg.Framing.Mode == framing.Raw && c.cfg.Framing.MaxFrameBytes < maxRead {
		maxRead = c.cfg.Framing.MaxFrameBytes
	}
	var frames [][]byte
	emit := func(f []byte) { frames = append(frames, f) }
	drained := true
	for {
		if c.cfg.IdleTimeout > 0 {
			_ = c.nc.SetReadDeadline(time.Now().Add(c.cfg.IdleTimeout))
		}
		chunk, err := c.read(maxRead, drained)
		drained = len(chunk) < maxRead
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
			if ferr != nil {
				return event.ReasonFrameTooLarge
			}
		}
		if err != nil {
			return readReason(err, c.cfg.IdleTimeout > 0)
		}
	}
}

// read returns the next bytes in a slice of their own: frames cut from it
// are published and never change. When the previous read drained the socket
// it first waits for readability without a buffer, so an idle connection
// holds none; a busy one reads straight into a pooled buffer.
func (c *Conn) read(max int, wait bool) ([]byte, error) {
	if wait {
		if err := waitReadable(c.nc); err != nil {
			return nil, err
		}
	}
	bp := readBuffers.Get().(*[]byte)
	n, err := c.nc.Read((*bp)[:max])
	var chunk []byte
	if n > 0 {
		chunk = bytes.Clone((*bp)[:n]) // no zeroing, unlike make
	}
	readBuffers.Put(bp)
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
			Data:         f,
			Retained:     retained,
		}
		evs[i] = &block[i]
	}
	if err := c.cfg.Publisher.Publish(c.ctx, evs...); err != nil {
		return false
	}
	c.answer(frames, last)
	c.autoReply(frames)
	return true
}
