package framing

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
)

// errClosed is returned by Feed after Close; callers never see it unless they
// break the contract that a closed splitter is not fed.
var errClosed = errors.New("framing: splitter closed")

// Splitter cuts the stream of one connection into frames. It is not safe for
// concurrent use: one connection's reader owns it.
type Splitter struct {
	cfg Config

	// fail is the KMP failure function of cfg.Delimiter (fail[i] is the
	// length of the longest proper prefix of Delimiter[:i+1] that is also its
	// suffix). It lets a delimiter that straddles chunks be found, and the
	// partial delimiter at the end of a chunk be measured, without rescanning
	// the pending bytes. Nil when the delimiter is a single byte.
	fail []int

	// pend holds the bytes of the frame in progress: for length-prefix, of
	// its payload.
	pend []byte
	// owned reports whether the splitter allocated pend and may append to
	// it; otherwise pend is the tail of the caller's previous chunk, kept
	// without a copy because the next chunk usually completes the frame.
	owned bool
	// match is, in delimiter mode, the length of the longest suffix of pend
	// that is a proper prefix of the delimiter: how much of a delimiter may
	// already have arrived.
	match int

	hdr  [8]byte // the length prefix of the frame in progress
	hdrN int     // how many bytes of hdr have arrived
	need int     // the payload size announced by hdr; -1 until hdr is complete

	// err is the error that ended the stream (the first from Feed, or
	// errClosed after Close); a splitter is not fed after it.
	err error
}

// NewSplitter validates c (see Config.Normalize) and returns a splitter for
// one connection. It copies c.Delimiter, so the caller may reuse it.
func NewSplitter(c Config) (*Splitter, error) {
	c, err := c.Normalize()
	if err != nil {
		return nil, err
	}
	s := &Splitter{cfg: c, need: -1}
	if c.Mode == Delimiter {
		s.cfg.Delimiter = bytes.Clone(c.Delimiter)
		if len(c.Delimiter) > 1 {
			s.fail = failure(s.cfg.Delimiter)
		}
	}
	return s, nil
}

// Feed hands the splitter the next chunk of the stream and calls emit for
// every frame that the stream now completes, in order.
//
// The splitter takes ownership of chunk: the caller must not modify it
// afterwards. A frame that lies wholly inside chunk is passed as a sub-slice
// of chunk (no copy); a frame that spans chunks is assembled into a freshly
// allocated slice. Emitted frames have their capacity clipped to their length
// and are never modified by the splitter, so they may be shared with many
// readers and kept indefinitely.
//
// Empty frames (an empty line, a zero length prefix) are emitted with length
// 0. In Raw mode chunk is one frame, cut into pieces of MaxFrameBytes if it is
// longer; an empty chunk emits nothing.
//
// A frame longer than MaxFrameBytes makes Feed return an error wrapping
// ErrFrameTooLarge as soon as that is certain, after emitting the frames
// before it: for length-prefix once the prefix has arrived; for line and
// delimiter once the bytes without a delimiter are too many even if a
// delimiter (for line, "\r\n") had begun at their end, so that whether a
// stream fails never depends on how it was cut into chunks. After an error
// the splitter must not be used again; further calls return the same error.
func (s *Splitter) Feed(chunk []byte, emit func(frame []byte)) error {
	if s.err != nil {
		return s.err
	}
	if len(chunk) == 0 {
		return nil
	}
	var err error
	switch s.cfg.Mode {
	case Raw:
		s.feedRaw(chunk, emit)
	case Line:
		err = s.feedLine(chunk, emit)
	case Delimiter:
		err = s.feedDelimiter(chunk, emit)
	case LengthPrefix:
		err = s.feedLengthPrefix(chunk, emit)
	case Fixed:
		s.feedFixed(chunk, emit)
	}
	if err != nil {
		s.err = err
		s.pend, s.owned = nil, false
	}
	return err
}

// Close ends the stream and returns what Feed could not emit, so that nothing
// is dropped silently.
//
// In Line and Delimiter modes, the bytes after the last delimiter are the
// final frame, as bufio.Scanner has it (line mode strips one trailing '\r';
// a stream ending in a lone "\r" thus has an empty, non-nil final frame).
// final is nil when the stream ends with a delimiter. A delimited final frame
// longer than MaxFrameBytes (possible when it ends with part of a delimiter)
// is returned as partial instead.
//
// In LengthPrefix and Fixed modes, the bytes of an incomplete frame,
// including those of its length prefix, are returned as partial.
//
// Raw mode returns nothing, as does a splitter whose Feed failed or that was
// already closed.
func (s *Splitter) Close() (final, partial []byte) {
	if s.err != nil {
		return nil, nil
	}
	s.err = errClosed
	pend := s.pend[:len(s.pend):len(s.pend)]
	s.pend, s.owned = nil, false
	switch s.cfg.Mode {
	case Line:
		if len(pend) > 0 {
			return trimCR(pend), nil
		}
	case Delimiter:
		if len(pend) > s.cfg.MaxFrameBytes {
			return nil, pend
		}
		if len(pend) > 0 {
			return pend, nil
		}
	case LengthPrefix:
		if s.hdrN > 0 {
			p := make([]byte, 0, s.hdrN+len(pend))
			p = append(p, s.hdr[:s.hdrN]...)
			return nil, append(p, pend...)
		}
	case Fixed:
		if len(pend) > 0 {
			return nil, pend
		}
	}
	return nil, nil
}

func (s *Splitter) feedRaw(chunk []byte, emit func([]byte)) {
	maxFrame := s.cfg.MaxFrameBytes
	for len(chunk) > maxFrame {
		emit(chunk[:maxFrame:maxFrame])
		chunk = chunk[maxFrame:]
	}
	emit(chunk[:len(chunk):len(chunk)])
}

// feedLine applies MaxFrameBytes to the line without its "\n" and one '\r'
// before it, so a CRLF line of exactly MaxFrameBytes passes; up to
// MaxFrameBytes+1 bytes without a newline are therefore held if the last is
// '\r'.
func (s *Splitter) feedLine(chunk []byte, emit func([]byte)) error {
	maxFrame := s.cfg.MaxFrameBytes
	if len(s.pend) > 0 {
		i := bytes.IndexByte(chunk, '\n')
		if i < 0 {
			n := len(s.pend) + len(chunk)
			if lineTooLong(n, chunk[len(chunk)-1] == '\r', maxFrame) {
				return lineError(n, maxFrame)
			}
			s.stash(chunk, addSat(maxFrame, 1))
			return nil
		}
		n := len(s.pend) + i
		last := s.pend[len(s.pend)-1]
		if i > 0 {
			last = chunk[i-1]
		}
		if lineTooLong(n, last == '\r', maxFrame) {
			return lineError(n, maxFrame)
		}
		emit(trimCR(s.join(chunk[:i])))
		chunk = chunk[i+1:]
	}
	for {
		i := bytes.IndexByte(chunk, '\n')
		if i < 0 {
			break
		}
		if lineTooLong(i, i > 0 && chunk[i-1] == '\r', maxFrame) {
			return lineError(i, maxFrame)
		}
		emit(trimCR(chunk[:i:i]))
		chunk = chunk[i+1:]
	}
	if n := len(chunk); n > 0 {
		if lineTooLong(n, chunk[n-1] == '\r', maxFrame) {
			return lineError(n, maxFrame)
		}
		s.pend, s.owned = chunk, false
	}
	return nil
}

// lineTooLong reports whether n bytes before a newline, or without one so
// far, make a line longer than maxFrame once a trailing '\r' is stripped.
func lineTooLong(n int, endsInCR bool, maxFrame int) bool {
	return n > maxFrame && (n-1 > maxFrame || !endsInCR)
}

func lineError(n, maxFrame int) error {
	return fmt.Errorf("reading line: %d bytes without a newline, limit is %d: %w", n, maxFrame, ErrFrameTooLarge)
}

// trimCR strips one trailing '\r' and clips the capacity, so that a reader
// appending to the frame cannot overwrite the stream after it.
func trimCR(b []byte) []byte {
	if n := len(b); n > 0 && b[n-1] == '\r' {
		return b[: n-1 : n-1]
	}
	return b[:len(b):len(b)]
}

func (s *Splitter) feedDelimiter(chunk []byte, emit func([]byte)) error {
	if len(s.pend) > 0 {
		var err error
		if chunk, err = s.finishDelimited(chunk, emit); err != nil {
			return err
		}
	}
	delim := s.cfg.Delimiter
	maxFrame := s.cfg.MaxFrameBytes
	for len(chunk) > 0 {
		i := bytes.Index(chunk, delim)
		if i < 0 {
			break
		}
		if i > maxFrame {
			return delimiterError(i, maxFrame)
		}
		emit(chunk[:i:i])
		chunk = chunk[i+len(delim):]
	}
	if len(chunk) > 0 {
		q := s.suffixMatch(chunk)
		if len(chunk)-q > maxFrame {
			return delimiterError(len(chunk)-q, maxFrame)
		}
		s.pend, s.owned, s.match = chunk, false, q
	}
	return nil
}

// finishDelimited looks in chunk for the end of the pending frame, emits the
// frame if it is there and returns the rest of chunk; otherwise it keeps chunk
// as part of the frame and returns nothing.
func (s *Splitter) finishDelimited(chunk []byte, emit func([]byte)) ([]byte, error) {
	delim := s.cfg.Delimiter
	maxFrame := s.cfg.MaxFrameBytes
	// A delimiter that began in pend ends within the first len(delim)-1 bytes
	// of chunk: continue the match state over just those.
	q := s.match
	head := chunk[:min(len(delim)-1, len(chunk))]
	for i, b := range head {
		if q = s.step(q, b); q == len(delim) {
			n := len(s.pend) + i + 1 - len(delim)
			if n > maxFrame {
				return nil, delimiterError(n, maxFrame)
			}
			frame := s.pend[:n:n]
			s.pend, s.owned, s.match = nil, false, 0
			emit(frame)
			return chunk[i+1:], nil
		}
	}
	if i := bytes.Index(chunk, delim); i >= 0 {
		n := len(s.pend) + i
		if n > maxFrame {
			return nil, delimiterError(n, maxFrame)
		}
		s.match = 0
		emit(s.join(chunk[:i]))
		return chunk[i+len(delim):], nil
	}
	if len(chunk) > len(head) {
		q = s.suffixMatch(chunk)
	}
	// The frame is at least as long as the bytes before the partial delimiter
	// at their end; failing earlier would make the outcome depend on where the
	// stream was cut.
	n := len(s.pend) + len(chunk)
	if n-q > maxFrame {
		return nil, delimiterError(n-q, maxFrame)
	}
	s.stash(chunk, addSat(maxFrame, len(delim)-1))
	s.match = q
	return nil, nil
}

func delimiterError(n, maxFrame int) error {
	return fmt.Errorf("reading delimited frame: %d bytes without a delimiter, limit is %d: %w", n, maxFrame, ErrFrameTooLarge)
}

// failure returns the KMP failure function of p.
func failure(p []byte) []int {
	f := make([]int, len(p))
	k := 0
	for i := 1; i < len(p); i++ {
		for k > 0 && p[i] != p[k] {
			k = f[k-1]
		}
		if p[i] == p[k] {
			k++
		}
		f[i] = k
	}
	return f
}

// step advances the delimiter match state q (how many bytes of the delimiter
// end the stream so far) by the byte b.
func (s *Splitter) step(q int, b byte) int {
	delim := s.cfg.Delimiter
	for q > 0 && delim[q] != b {
		q = s.fail[q-1]
	}
	if delim[q] == b {
		q++
	}
	return q
}

// suffixMatch returns the length of the longest suffix of b that is a proper
// prefix of the delimiter, given that b holds no whole delimiter. Such a
// suffix is shorter than the delimiter, so only that many bytes are scanned.
func (s *Splitter) suffixMatch(b []byte) int {
	q := 0
	for _, c := range b[max(0, len(b)-(len(s.cfg.Delimiter)-1)):] {
		q = s.step(q, c)
	}
	return q
}

func (s *Splitter) feedLengthPrefix(chunk []byte, emit func([]byte)) error {
	pb := s.cfg.PrefixBytes
	for {
		if s.need < 0 {
			if len(chunk) == 0 {
				return nil
			}
			n := copy(s.hdr[s.hdrN:pb], chunk)
			s.hdrN += n
			chunk = chunk[n:]
			if s.hdrN < pb {
				return nil
			}
			size, err := s.frameSize()
			if err != nil {
				return err
			}
			s.need = size
		}
		missing := s.need - len(s.pend)
		if len(chunk) < missing {
			s.stash(chunk, s.need)
			return nil
		}
		var frame []byte
		if len(s.pend) == 0 {
			frame = chunk[:missing:missing]
		} else {
			frame = s.join(chunk[:missing])
		}
		chunk = chunk[missing:]
		s.need, s.hdrN = -1, 0
		emit(frame)
	}
}

// frameSize decodes the complete length prefix in hdr and checks it against
// MaxFrameBytes before anything is buffered for the frame.
func (s *Splitter) frameSize() (int, error) {
	h := s.hdr[:s.cfg.PrefixBytes]
	var order binary.ByteOrder = binary.BigEndian
	if s.cfg.LittleEndian {
		order = binary.LittleEndian
	}
	var size uint64
	switch len(h) {
	case 1:
		size = uint64(h[0])
	case 2:
		size = uint64(order.Uint16(h))
	case 4:
		size = uint64(order.Uint32(h))
	case 8:
		size = order.Uint64(h)
	}
	if size > uint64(s.cfg.MaxFrameBytes) {
		return 0, fmt.Errorf("reading length prefix: frame of %d bytes announced, limit is %d: %w", size, s.cfg.MaxFrameBytes, ErrFrameTooLarge)
	}
	return int(size), nil
}

func (s *Splitter) feedFixed(chunk []byte, emit func([]byte)) {
	size := s.cfg.FixedSize
	if len(s.pend) > 0 {
		missing := size - len(s.pend)
		if len(chunk) < missing {
			s.stash(chunk, size)
			return
		}
		emit(s.join(chunk[:missing]))
		chunk = chunk[missing:]
	}
	for len(chunk) >= size {
		emit(chunk[:size:size])
		chunk = chunk[size:]
	}
	if len(chunk) > 0 {
		s.pend, s.owned = chunk, false
	}
}

// stash appends b to the frame in progress, which will never exceed limit
// bytes: a buffer is not grown beyond what the frame can use.
func (s *Splitter) stash(b []byte, limit int) {
	if len(b) == 0 {
		return
	}
	if len(s.pend) == 0 {
		s.pend, s.owned = b, false
		return
	}
	n := len(s.pend) + len(b)
	if !s.owned || n > cap(s.pend) {
		// Doubling keeps a frame arriving in many small reads linear.
		c := max(min(max(2*len(s.pend), 512), limit), n)
		buf := make([]byte, len(s.pend), c)
		copy(buf, s.pend)
		s.pend, s.owned = buf, true
	}
	s.pend = append(s.pend, b...)
}

// join returns the frame in progress completed by b. The result is memory of
// its own that the splitter never touches again, as emitted frames must stay
// immutable; pend starts afresh.
func (s *Splitter) join(b []byte) []byte {
	var f []byte
	if n := len(s.pend) + len(b); s.owned && n <= cap(s.pend) {
		f = append(s.pend, b...)
	} else {
		f = make([]byte, n)
		copy(f[copy(f, s.pend):], b)
	}
	s.pend, s.owned = nil, false
	return f[:len(f):len(f)]
}
