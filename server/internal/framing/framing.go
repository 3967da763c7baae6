// Package framing cuts the byte stream of one TCP connection into frames, and
// encodes frames so that a peer using the same framing reads them back.
//
// It knows nothing of protobuf: the RPC layer translates the API's Framing
// message into a Config. A Splitter is on the hot path of every connection, so
// a frame that lies inside one read is handed out as a sub-slice of that read
// and only frames that span reads are copied.
package framing

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strconv"
)

// Mode says where one frame ends and the next begins.
type Mode int

const (
	// Raw makes every chunk (one read from the connection) one frame, so frame
	// boundaries are wherever TCP happened to deliver them.
	Raw Mode = iota
	// Line ends frames with '\n'; the '\n' and one '\r' before it are
	// stripped, so both "a\n" and "a\r\n" are the frame "a".
	Line
	// Delimiter ends frames with Config.Delimiter, which is stripped.
	Delimiter
	// LengthPrefix starts every frame with its length, an unsigned integer of
	// Config.PrefixBytes bytes; the prefix is stripped.
	LengthPrefix
	// Fixed makes every frame exactly Config.FixedSize bytes.
	Fixed
)

// String returns the mode's lowercase name, such as "length-prefix".
func (m Mode) String() string {
	switch m {
	case Raw:
		return "raw"
	case Line:
		return "line"
	case Delimiter:
		return "delimiter"
	case LengthPrefix:
		return "length-prefix"
	case Fixed:
		return "fixed"
	default:
		return "Mode(" + strconv.Itoa(int(m)) + ")"
	}
}

// DefaultMaxFrameBytes is the largest frame accepted when Config.MaxFrameBytes
// is 0. A splitter buffers at most one frame, so this bounds the memory a
// single connection can make the gateway hold (a peer that never sends a
// newline, or announces a 4 GiB length prefix); 1 MiB is far above any
// line- or message-oriented protocol's frames yet lets thousands of
// connections fit in memory.
const DefaultMaxFrameBytes = 1 << 20

// DefaultPrefixBytes is the size of a length prefix when Config.PrefixBytes is
// 0: 4 bytes is the common choice of length-prefixed protocols and covers
// every frame up to 4 GiB, above any sensible MaxFrameBytes.
const DefaultPrefixBytes = 4

// MaxDelimiterBytes bounds Config.Delimiter. Every connection keeps its
// own copy of the delimiter and a match table of one int per byte, so a
// delimiter costs about nine times its length per connection, idle or not
// (a 3 MiB delimiter was 27 MiB a connection). 64 bytes holds the
// terminators protocols use ("\r\n", "\r\n\r\n", "\x00", "<END>", ...)
// with room to spare, and keeps that cost under 1 KiB.
const MaxDelimiterBytes = 64

// Config describes a framing. Its zero value is raw framing with the default
// limit.
type Config struct {
	// Mode says how frames are cut; the zero value is Raw.
	Mode Mode
	// Delimiter ends every frame in Delimiter mode: one or more arbitrary
	// bytes, at most MaxDelimiterBytes. Required there, ignored otherwise
	// (but still held to MaxDelimiterBytes).
	Delimiter []byte
	// PrefixBytes is the size of the length prefix in LengthPrefix mode: 1, 2,
	// 4 or 8. 0 means DefaultPrefixBytes.
	PrefixBytes int
	// LittleEndian selects the byte order of the length prefix; false means
	// big-endian (network order).
	LittleEndian bool
	// FixedSize is the size of every frame in Fixed mode. Required there
	// (0 is invalid), ignored otherwise.
	FixedSize int
	// MaxFrameBytes is the largest frame accepted, counting the frame as it is
	// emitted: without delimiter, "\r\n" or prefix. A longer frame fails Feed
	// with ErrFrameTooLarge, except in Raw mode, where a longer chunk is cut
	// into frames of MaxFrameBytes. 0 means DefaultMaxFrameBytes.
	MaxFrameBytes int
}

// ErrFrameTooLarge reports a frame longer than Config.MaxFrameBytes. Feed and
// Encode wrap it with the sizes involved.
var ErrFrameTooLarge = errors.New("frame too large")

// ErrInvalidConfig reports a Config that cannot be used. Normalize wraps it
// with the offending field, spelled as in the API (framing.delimiter, ...).
var ErrInvalidConfig = errors.New("invalid framing")

// DefaultAt is where a framing sits when nothing says otherwise: a
// listener's "framing" field.
const DefaultAt = "framing"

// ConfigError is what Normalize returns: it wraps ErrInvalidConfig and names
// the field, so that the RPC layer can point a form at it without reading
// the message. A framing sits in more than one place of the API (a
// listener's framing, a Send's await_reply.framing): the error keeps the
// framing's field apart from where the framing sits, and Under places it,
// so that no caller edits the field's name out of a string.
type ConfigError struct {
	// At is where the framing sits, as the API spells it: DefaultAt, or
	// what Under set ("await_reply.framing").
	At string
	// Field is the framing's own field: "delimiter".
	Field string
	// Reason says what is wrong with it and what it may be.
	Reason string
}

// Path is the field's path in the API: "framing.delimiter",
// "await_reply.framing.delimiter".
func (e *ConfigError) Path() string { return e.At + "." + e.Field }

// Under returns the error of a framing that sits at at
// ("await_reply.framing") rather than at DefaultAt.
func (e *ConfigError) Under(at string) *ConfigError {
	c := *e
	c.At = at
	return &c
}

func (e *ConfigError) Error() string {
	return e.Path() + ": " + e.Reason + ": " + ErrInvalidConfig.Error()
}

func (e *ConfigError) Unwrap() error { return ErrInvalidConfig }

func invalidConfig(field, format string, args ...any) error {
	return &ConfigError{At: DefaultAt, Field: field, Reason: fmt.Sprintf(format, args...)}
}

// ErrUnencodable reports a frame that Encode cannot write such that a peer
// using the same framing reads it back as that one frame: a line containing
// '\n', a frame of the wrong fixed size, a length that does not fit the
// prefix, ... It lets the RPC layer answer such requests as invalid arguments.
var ErrUnencodable = errors.New("frame cannot be encoded")

// EncodeError is what Encode returns for a frame it cannot encode: it wraps
// ErrUnencodable, and ErrFrameTooLarge when it is a matter of size, and says
// why in Reason, so that a caller can name the field the frame came from
// next to the reason without taking the message apart.
type EncodeError struct {
	// Mode is the framing's mode.
	Mode Mode
	// Size is the frame's length in bytes.
	Size int
	// Reason says why the frame cannot be encoded, in terms of the
	// framing's fields as the API spells them (max_frame_bytes, ...).
	Reason string
	// TooLarge is set when the frame is refused for its size alone.
	TooLarge bool
}

func (e *EncodeError) Error() string {
	return fmt.Sprintf("encoding %s frame of %d bytes: %s: %v", e.Mode, e.Size, e.Reason, ErrUnencodable)
}

// Unwrap returns ErrUnencodable, and ErrFrameTooLarge when TooLarge.
func (e *EncodeError) Unwrap() []error {
	if e.TooLarge {
		return []error{ErrUnencodable, ErrFrameTooLarge}
	}
	return []error{ErrUnencodable}
}

func unencodable(c Config, frame []byte, tooLarge bool, format string, args ...any) error {
	return &EncodeError{Mode: c.Mode, Size: len(frame), Reason: fmt.Sprintf(format, args...), TooLarge: tooLarge}
}

// Normalize returns c with defaults filled in (PrefixBytes, MaxFrameBytes)
// after validating it. An error wraps ErrInvalidConfig and starts with the
// field's name in the API, so that the user knows what to change.
func (c Config) Normalize() (Config, error) {
	switch c.Mode {
	case Raw, Line, Delimiter, LengthPrefix, Fixed:
	default:
		return Config{}, invalidConfig("mode", "unknown mode %d", int(c.Mode))
	}
	if c.MaxFrameBytes < 0 {
		return Config{}, invalidConfig("max_frame_bytes", "must not be negative, got %d", c.MaxFrameBytes)
	}
	if c.MaxFrameBytes == 0 {
		c.MaxFrameBytes = DefaultMaxFrameBytes
	}
	if c.PrefixBytes == 0 {
		c.PrefixBytes = DefaultPrefixBytes
	}
	// Checked in every mode: a bad value is a mistake even where it is unused.
	switch c.PrefixBytes {
	case 1, 2, 4, 8:
	default:
		return Config{}, invalidConfig("prefix_bytes", "must be 1, 2, 4 or 8, got %d", c.PrefixBytes)
	}
	if len(c.Delimiter) > MaxDelimiterBytes {
		return Config{}, invalidConfig("delimiter", "%d bytes, more than the limit of %d", len(c.Delimiter), MaxDelimiterBytes)
	}
	if c.FixedSize < 0 {
		return Config{}, invalidConfig("fixed_size", "must not be negative, got %d", c.FixedSize)
	}
	switch c.Mode {
	case Delimiter:
		if len(c.Delimiter) == 0 {
			return Config{}, invalidConfig("delimiter", "required in delimiter mode")
		}
	case Fixed:
		if c.FixedSize == 0 {
			return Config{}, invalidConfig("fixed_size", "required (> 0) in fixed mode")
		}
		if c.FixedSize > c.MaxFrameBytes {
			return Config{}, invalidConfig("fixed_size", "%d exceeds framing.max_frame_bytes %d", c.FixedSize, c.MaxFrameBytes)
		}
	}
	return c, nil
}

// Encode appends frame to dst, encoded so that a peer using the same framing
// reads it back as this one frame: raw as is, a line with "\n", a delimited
// frame with the delimiter, a length-prefixed frame after its prefix, a fixed
// frame as is. A line ending in '\r' gets "\r\n", since a lone "\n" would
// have the reader strip the frame's own '\r'.
//
// c must be normalized. A frame that cannot be read back as itself (longer
// than MaxFrameBytes or than the prefix can announce, not FixedSize bytes, a
// line containing '\n', a delimited frame in which the delimiter would be
// found early) returns dst unchanged and an *EncodeError, which wraps
// ErrUnencodable, and also ErrFrameTooLarge when it is a matter of size. Raw frames are never
// refused: raw framing cannot promise the peer one read per frame anyway.
func (c Config) Encode(dst, frame []byte) ([]byte, error) {
	maxFrame := c.MaxFrameBytes
	if maxFrame == 0 {
		maxFrame = DefaultMaxFrameBytes
	}
	if c.Mode != Raw && c.Mode != Fixed && len(frame) > maxFrame {
		return dst, unencodable(c, frame, true, "longer than the framing's max_frame_bytes (%d)", maxFrame)
	}
	switch c.Mode {
	case Raw:
		return append(dst, frame...), nil
	case Line:
		if bytes.IndexByte(frame, '\n') >= 0 {
			return dst, unencodable(c, frame, false, "contains a newline at byte %d, where the peer would end the line", bytes.IndexByte(frame, '\n'))
		}
		dst = append(dst, frame...)
		if len(frame) > 0 && frame[len(frame)-1] == '\r' {
			dst = append(dst, '\r')
		}
		return append(dst, '\n'), nil
	case Delimiter:
		if len(c.Delimiter) == 0 {
			return dst, unencodable(c, frame, false, "the framing has no delimiter")
		}
		start := len(dst)
		dst = append(dst, frame...)
		dst = append(dst, c.Delimiter...)
		// The reader cuts at the first delimiter, which must be ours: the frame
		// may neither contain it nor end with a part of it that ours completes.
		if i := bytes.Index(dst[start:], c.Delimiter); i != len(frame) {
			if i+len(c.Delimiter) <= len(frame) {
				return dst[:start], unencodable(c, frame, false, "contains the delimiter at byte %d, where the peer would end the frame", i)
			}
			return dst[:start], unencodable(c, frame, false, "ends with the start of the delimiter (from byte %d), so the peer would end the frame early", i)
		}
		return dst, nil
	case LengthPrefix:
		pb := c.PrefixBytes
		if pb == 0 {
			pb = DefaultPrefixBytes
		}
		if pb < 8 && uint64(len(frame)) >= 1<<(8*pb) {
			return dst, unencodable(c, frame, true, "longer than a %d-byte length prefix can say (at most %d)", pb, uint64(1)<<(8*pb)-1)
		}
		var order binary.AppendByteOrder = binary.BigEndian
		if c.LittleEndian {
			order = binary.LittleEndian
		}
		switch pb {
		case 1:
			dst = append(dst, byte(len(frame)))
		case 2:
			dst = order.AppendUint16(dst, uint16(len(frame)))
		case 4:
			dst = order.AppendUint32(dst, uint32(len(frame)))
		case 8:
			dst = order.AppendUint64(dst, uint64(len(frame)))
		default:
			return dst, unencodable(c, frame, false, "the framing's prefix_bytes is %d, not 1, 2, 4 or 8", pb)
		}
		return append(dst, frame...), nil
	case Fixed:
		if len(frame) != c.FixedSize {
			return dst, unencodable(c, frame, false, "every frame is the framing's fixed_size, %d bytes", c.FixedSize)
		}
		return append(dst, frame...), nil
	default:
		return dst, unencodable(c, frame, false, "unknown mode")
	}
}

// addSat returns a+b, saturating at math.MaxInt instead of wrapping: limits
// derived from a caller's huge MaxFrameBytes must stay huge.
func addSat(a, b int) int {
	if a > math.MaxInt-b {
		return math.MaxInt
	}
	return a + b
}
