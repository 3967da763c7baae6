package framing_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/tcpgate/tcpgate/server/internal/framing"
)

// The fuzz targets check, for every mode, that how a stream is cut into
// chunks never changes what the splitter reports; that the whole stream gives
// what a naive model of the mode gives; and that frames encoded again read
// back as themselves. The seed corpus is under testdata/fuzz.

// cutStream cuts stream into chunks whose lengths cycle through cuts; a 0
// makes an empty chunk, which must be harmless.
func cutStream(stream, cuts []byte) [][]byte {
	if bytes.Count(cuts, []byte{0}) == len(cuts) {
		cuts = []byte{1}
	}
	var chunks [][]byte
	for i := 0; len(stream) > 0; i++ {
		n := min(int(cuts[i%len(cuts)]), len(stream))
		chunks = append(chunks, stream[:n])
		stream = stream[n:]
	}
	return chunks
}

// checkSame fails t unless both results are the same as a user sees them.
func checkSame(t *testing.T, what string, got, want result) {
	t.Helper()
	if g, w := framesString(got.frames), framesString(want.frames); g != w {
		t.Fatalf("%s: frames %s, want %s", what, g, w)
	}
	if (got.err == nil) != (want.err == nil) || errors.Is(got.err, framing.ErrFrameTooLarge) != errors.Is(want.err, framing.ErrFrameTooLarge) {
		t.Fatalf("%s: error %v, want %v", what, got.err, want.err)
	}
	if !sameBytes(got.final, want.final) || !sameBytes(got.partial, want.partial) {
		t.Fatalf("%s: Close() = %q (nil %v), %q; want %q (nil %v), %q",
			what, got.final, got.final == nil, got.partial, want.final, want.final == nil, want.partial)
	}
}

// checkStream runs stream whole and cut, compares both to the model and
// returns the result.
func checkStream(t *testing.T, cfg framing.Config, stream, cuts []byte, model result) result {
	whole := run(t, cfg, [][]byte{stream})
	checkSame(t, "whole stream against model", whole, model)
	checkSame(t, "cut stream against whole", run(t, cfg, cutStream(stream, cuts)), whole)
	return whole
}

// checkReencode encodes the frames of r, and its final frame where that is
// encodable, and checks that they read back as the same frames. Frames that
// Feed emitted must always be encodable.
func checkReencode(t *testing.T, cfg framing.Config, r result) {
	cfg, err := cfg.Normalize()
	if err != nil {
		t.Fatal(err)
	}
	var stream []byte
	want := r.frames
	for _, f := range r.frames {
		if stream, err = cfg.Encode(stream, f); err != nil {
			t.Fatalf("Encode(%q) of an emitted frame: %v", f, err)
		}
	}
	if r.final != nil {
		if s, err := cfg.Encode(stream, r.final); err == nil {
			stream = s
			want = append(want[:len(want):len(want)], r.final)
		} else if cfg.Mode == framing.Line {
			t.Fatalf("Encode(%q) of a final line: %v", r.final, err)
		}
	}
	checkSame(t, "encoded frames read back", run(t, cfg, [][]byte{stream}), result{frames: want})
}

func limit(l uint16) int { return int(l) } // 0 is the default

func FuzzRaw(f *testing.F) {
	f.Add([]byte("hello world"), []byte{3, 0, 5}, uint16(4))
	f.Add([]byte("abc"), []byte{}, uint16(0))
	f.Fuzz(func(t *testing.T, stream, cuts []byte, maxFrame uint16) {
		cfg := framing.Config{Mode: framing.Raw, MaxFrameBytes: limit(maxFrame)}
		cfg, _ = cfg.Normalize()
		chunks := cutStream(stream, cuts)
		// A raw frame is a chunk, cut at the limit: the model is the chunks.
		var model result
		for _, c := range chunks {
			for len(c) > 0 {
				n := min(len(c), cfg.MaxFrameBytes)
				model.frames = append(model.frames, c[:n])
				c = c[n:]
			}
		}
		checkSame(t, "raw frames against model", run(t, cfg, chunks), model)
	})
}

func FuzzLine(f *testing.F) {
	f.Add([]byte("a\r\nb\n\nc\rd\r"), []byte{1, 2}, uint16(0))
	f.Add([]byte("abc\r\nabcd\n"), []byte{4}, uint16(3))
	f.Add([]byte("abc\r"), []byte{3, 1}, uint16(3))
	f.Fuzz(func(t *testing.T, stream, cuts []byte, maxFrame uint16) {
		cfg := framing.Config{Mode: framing.Line, MaxFrameBytes: limit(maxFrame)}
		r := checkStream(t, cfg, stream, cuts, lineModel(stream, limit(maxFrame)))
		if r.err == nil {
			checkReencode(t, cfg, r)
		}
	})
}

// lineModel splits a whole stream into lines the obvious way.
func lineModel(stream []byte, maxFrame int) result {
	if maxFrame == 0 {
		maxFrame = framing.DefaultMaxFrameBytes
	}
	var r result
	lines := bytes.Split(stream, []byte("\n"))
	for i, l := range lines {
		l = bytes.TrimSuffix(l, []byte("\r"))
		if len(l) > maxFrame {
			r.err = framing.ErrFrameTooLarge
			return r
		}
		if i < len(lines)-1 {
			r.frames = append(r.frames, l)
		} else if len(lines[i]) > 0 {
			r.final = l
		}
	}
	return r
}

func FuzzDelimiter(f *testing.F) {
	f.Add([]byte("a||b|c||||d|"), []byte{1, 2}, []byte("||"), uint16(0))
	f.Add([]byte("xabaabababyabab"), []byte{3}, []byte("abab"), uint16(3))
	f.Add([]byte("abc|"), []byte{2}, []byte("||"), uint16(3))
	f.Add([]byte("a\x00b\x00"), []byte{}, []byte{0}, uint16(1))
	f.Fuzz(func(t *testing.T, stream, cuts, delim []byte, maxFrame uint16) {
		if len(delim) > framing.MaxDelimiterBytes {
			cfg := framing.Config{Mode: framing.Delimiter, Delimiter: delim}
			if _, err := framing.NewSplitter(cfg); !errors.Is(err, framing.ErrInvalidConfig) {
				t.Fatalf("NewSplitter with a delimiter of %d bytes: %v, want ErrInvalidConfig", len(delim), err)
			}
			delim = delim[:framing.MaxDelimiterBytes]
		}
		if len(delim) == 0 {
			delim = []byte("\r\n")
		}
		cfg := framing.Config{Mode: framing.Delimiter, Delimiter: delim, MaxFrameBytes: limit(maxFrame)}
		r := checkStream(t, cfg, stream, cuts, delimiterModel(stream, delim, limit(maxFrame)))
		if r.err == nil {
			checkReencode(t, cfg, r)
		}
	})
}

// delimiterModel splits a whole stream at delimiters the obvious way.
func delimiterModel(stream, delim []byte, maxFrame int) result {
	if maxFrame == 0 {
		maxFrame = framing.DefaultMaxFrameBytes
	}
	var r result
	rest := stream
	for {
		i := bytes.Index(rest, delim)
		if i < 0 {
			break
		}
		if i > maxFrame {
			r.err = framing.ErrFrameTooLarge
			return r
		}
		r.frames = append(r.frames, rest[:i])
		rest = rest[i+len(delim):]
	}
	// The tail fails only if it is too long even should the start of a
	// delimiter at its end be completed.
	started := 0
	for n := len(delim) - 1; n > 0; n-- {
		if bytes.HasSuffix(rest, delim[:n]) {
			started = n
			break
		}
	}
	switch {
	case len(rest)-started > maxFrame:
		r.err = framing.ErrFrameTooLarge
	case len(rest) > maxFrame:
		r.partial = rest
	case len(rest) > 0:
		r.final = rest
	}
	return r
}

func FuzzLengthPrefix(f *testing.F) {
	f.Add([]byte("\x00\x01a\x00\x00\x00\x03abc\x00"), []byte{1, 3}, uint8(1), false, uint16(0))
	f.Add([]byte("\x01\x00\x00\x00a\x05"), []byte{2}, uint8(2), true, uint16(4))
	f.Add([]byte("\xff\xff\xff\xff\xff\xff\xff\xff"), []byte{3}, uint8(3), false, uint16(0))
	f.Fuzz(func(t *testing.T, stream, cuts []byte, prefix uint8, little bool, maxFrame uint16) {
		size := []int{1, 2, 4, 8}[prefix%4]
		cfg := framing.Config{Mode: framing.LengthPrefix, PrefixBytes: size, LittleEndian: little, MaxFrameBytes: limit(maxFrame)}
		r := checkStream(t, cfg, stream, cuts, lengthPrefixModel(stream, size, little, limit(maxFrame)))
		if r.err == nil {
			checkReencode(t, cfg, r)
		}
	})
}

// lengthPrefixModel reads a whole stream of length-prefixed frames.
func lengthPrefixModel(stream []byte, size int, little bool, maxFrame int) result {
	if maxFrame == 0 {
		maxFrame = framing.DefaultMaxFrameBytes
	}
	var r result
	for len(stream) >= size {
		var b [8]byte
		if little {
			copy(b[:], stream[:size])
		} else {
			copy(b[8-size:], stream[:size])
		}
		var n uint64
		if little {
			n = binary.LittleEndian.Uint64(b[:])
		} else {
			n = binary.BigEndian.Uint64(b[:])
		}
		if n > uint64(maxFrame) {
			r.err = framing.ErrFrameTooLarge
			return r
		}
		if uint64(len(stream)-size) < n {
			break
		}
		r.frames = append(r.frames, stream[size:size+int(n)])
		stream = stream[size+int(n):]
	}
	if len(stream) > 0 {
		r.partial = stream
	}
	return r
}

func FuzzFixed(f *testing.F) {
	f.Add([]byte("abcdefg"), []byte{2, 0, 1}, uint8(2))
	f.Add([]byte("abc"), []byte{}, uint8(0))
	f.Fuzz(func(t *testing.T, stream, cuts []byte, size uint8) {
		n := 1 + int(size%64)
		cfg := framing.Config{Mode: framing.Fixed, FixedSize: n}
		var model result
		rest := stream
		for len(rest) >= n {
			model.frames = append(model.frames, rest[:n])
			rest = rest[n:]
		}
		if len(rest) > 0 {
			model.partial = rest
		}
		r := checkStream(t, cfg, stream, cuts, model)
		checkReencode(t, cfg, r)
	})
}
