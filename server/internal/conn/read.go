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
			if len(frames) > 0 && !c.frames(frames) {
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

// frames publishes frames in order, answers awaiters and auto replies. It
// reports false when the connection closed while a publish was waiting.
func (c *Conn) frames(frames [][]byte) bool {
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
		}
		evs[i] = &block[i]
	}
	if err := c.cfg.Publisher.PublishWait(c.ctx, evs...); err != nil {
		return false
	}
	c.answer(frames, last)
	c.autoReply(frames)
	return true
}
