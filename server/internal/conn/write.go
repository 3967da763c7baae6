package conn

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/tcpgate/tcpgate/server/internal/event"
)

func (c *Conn) autoReply(frames [][]byte) []byte {
	switch c.cfg.AutoReply.Mode {
	case Echo:
		var out []byte
		for _, f := range frames {
			var err error
			if out, err = c.cfg.Framing.Encode(out, f); err != nil {
				// A frame the framing cannot encode back (none today) is skipped.
				continue
			}
		}
		return out
	case Fixed:
		out := make([]byte, 0, len(frames)*len(c.cfg.AutoReply.Payload))
		for range frames {
			out = append(out, c.cfg.AutoReply.Payload...)
		}
		return out
	}
	return nil
}

// write writes p in its turn with the write timeout. A failed write
// closes the connection: the peer is not reading.
func (c *Conn) write(p []byte) error {
	c.writeTurn <- struct{}{}
	defer func() { <-c.writeTurn }()
	return c.writeInTurn(p, time.Time{})
}

// writeInTurn writes p, the caller holding the write turn, within the write
// timeout and by deadline when that is sooner (zero: no deadline of its
// own). A write that fails or times out after writing part of p closes the
// connection, whose byte stream now holds a partial message; one that ran
// out of the caller's time before writing a byte leaves it open.
func (c *Conn) writeInTurn(p []byte, deadline time.Time) error {
	dl := time.Now().Add(c.cfg.WriteTimeout)
	callers := !deadline.IsZero() && deadline.Before(dl)
	if callers {
		dl = deadline
	}
	_ = c.nc.SetWriteDeadline(dl)
	n, err := c.nc.Write(p)
	c.counters.BytesOut.Add(uint64(n))
	if n > 0 {
		c.counters.FramesOut.Add(1)
	}
	for _, a := range c.cfg.Aggregates {
		a.BytesOut.Add(uint64(n))
		if n > 0 {
			a.FramesOut.Add(1)
		}
	}
	if err == nil {
		return nil
	}
	timedOut := errors.Is(err, os.ErrDeadlineExceeded)
	if callers && timedOut && n == 0 {
		return fmt.Errorf("writing to %s: peer took nothing before the send's timeout: %w", c.cfg.ID, context.DeadlineExceeded)
	}
	c.Close(event.ReasonWriteError)
	switch {
	case callers && timedOut:
		return fmt.Errorf("writing to %s: peer took %d of %d bytes before the send's timeout; the connection is closed: %w", c.cfg.ID, n, len(p), context.DeadlineExceeded)
	case timedOut:
		return fmt.Errorf("writing to %s: peer did not read for %s: %w", c.cfg.ID, c.cfg.WriteTimeout, ErrWriteTimeout)
	}
	return fmt.Errorf("writing to %s: %w", c.cfg.ID, ErrClosed)
}
