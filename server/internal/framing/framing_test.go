package framing_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/tcpgate/tcpgate/server/internal/framing"
)

// result is everything a splitter tells its user about one stream.
type result struct {
	frames         [][]byte
	err            error
	final, partial []byte
}

// run feeds chunks to a new splitter for c, each in an array of its own as
// the splitter takes ownership, then closes it. It fails t if an emitted frame
// changes afterwards, as frames are shared with readers.
func run(t testing.TB, c framing.Config, chunks [][]byte) result {
	t.Helper()
	s, err := framing.NewSplitter(c)
	if err != nil {
		t.Fatalf("NewSplitter(%+v): %v", c, err)
	}
	var r result
	var copies [][]byte
	emit := func(f []byte) {
		r.frames = append(r.frames, f)
		copies = append(copies, bytes.Clone(f))
	}
	for _, c := range chunks {
		if r.err = s.Feed(bytes.Clone(c), emit); r.err != nil {
			break
		}
	}
	if r.err == nil {
		r.final, r.partial = s.Close()
	}
	for i := range r.frames {
		if !bytes.Equal(r.frames[i], copies[i]) {
			t.Fatalf("frame %d changed after it was emitted: was %q, now %q", i, copies[i], r.frames[i])
		}
	}
	return r
}

// splits returns the ways the tests cut stream into chunks: whole, byte by
// byte, every cut in two and, for short streams, every cut in three.
func splits(stream []byte) map[string][][]byte {
	out := map[string][][]byte{"whole": {stream}}
	ones := make([][]byte, len(stream))
	for i := range stream {
		ones[i] = stream[i : i+1]
	}
	out["1-byte chunks"] = ones
	for i := 1; i < len(stream); i++ {
		out[fmt.Sprintf("cut at %d", i)] = [][]byte{stream[:i], stream[i:]}
		if len(stream) > 16 {
			continue
		}
		for j := i + 1; j < len(stream); j++ {
			out[fmt.Sprintf("cut at %d and %d", i, j)] = [][]byte{stream[:i], stream[i:j], stream[j:]}
		}
	}
	return out
}

// sameBytes is bytes.Equal that also tells nil (no frame) from empty.
func sameBytes(a, b []byte) bool {
	return (a == nil) == (b == nil) && bytes.Equal(a, b)
}

func framesString(frames [][]byte) string {
	q := make([]string, len(frames))
	for i, f := range frames {
		q[i] = fmt.Sprintf("%q", f)
	}
	return "[" + strings.Join(q, " ") + "]"
}

// prefixed encodes frames by hand, independently of Config.Encode.
func prefixed(size int, little bool, frames ...string) []byte {
	var out []byte
	for _, f := range frames {
		n := uint64(len(f))
		p := make([]byte, size)
		for i := range size {
			shift := 8 * (size - 1 - i)
			if little {
				shift = 8 * i
			}
			p[i] = byte(n >> shift)
		}
		out = append(out, p...)
		out = append(out, f...)
	}
	return out
}

type splitCase struct {
	name    string
	cfg     framing.Config
	stream  string
	frames  []string
	final   []byte // nil: no final frame
	partial []byte
	tooBig  bool // Feed fails with ErrFrameTooLarge after frames
}

func splitCases() []splitCase {
	line := framing.Config{Mode: framing.Line}
	line3 := framing.Config{Mode: framing.Line, MaxFrameBytes: 3}
	delim := func(d string, maxFrame int) framing.Config {
		return framing.Config{Mode: framing.Delimiter, Delimiter: []byte(d), MaxFrameBytes: maxFrame}
	}
	fixed := func(size int) framing.Config { return framing.Config{Mode: framing.Fixed, FixedSize: size} }
	cases := []splitCase{
		{name: "line/one", cfg: line, stream: "abc\n", frames: []string{"abc"}},
		{name: "line/several", cfg: line, stream: "a\nbb\nccc\n", frames: []string{"a", "bb", "ccc"}},
		{name: "line/crlf", cfg: line, stream: "a\r\nb\n", frames: []string{"a", "b"}},
		{name: "line/cr inside kept", cfg: line, stream: "a\rb\n\r\r\n", frames: []string{"a\rb", "\r"}},
		{name: "line/empty lines", cfg: line, stream: "\n\r\n\n", frames: []string{"", "", ""}},
		{name: "line/empty stream", cfg: line, stream: ""},
		{name: "line/final", cfg: line, stream: "a\nbc", frames: []string{"a"}, final: []byte("bc")},
		{name: "line/final with cr", cfg: line, stream: "a\nbc\r", frames: []string{"a"}, final: []byte("bc")},
		{name: "line/final lone cr", cfg: line, stream: "\r", final: []byte{}},
		{name: "line/at limit", cfg: line3, stream: "abc\nabc\r\n", frames: []string{"abc", "abc"}},
		{name: "line/final at limit with cr", cfg: line3, stream: "abc\r", final: []byte("abc")},
		{name: "line/too large", cfg: line3, stream: "ab\nabcd\nx\n", frames: []string{"ab"}, tooBig: true},
		{name: "line/too large with cr", cfg: line3, stream: "abcd\r\n", tooBig: true},
		{name: "line/too large without newline", cfg: line3, stream: "ab\nabcd", frames: []string{"ab"}, tooBig: true},
		{name: "line/too large after cr", cfg: line3, stream: "abc\rx", tooBig: true},
		{name: "line/two crs too large", cfg: line3, stream: "abc\r\r\n", tooBig: true},

		{name: "delimiter/single byte", cfg: delim("\x00", 0), stream: "a\x00b\x00", frames: []string{"a", "b"}},
		{name: "delimiter/multi-byte", cfg: delim("||", 0), stream: "a||b|c||", frames: []string{"a", "b|c"}},
		{name: "delimiter/binary", cfg: delim("\x00\xff\n", 0), stream: "\xff\x00\x00\xff\n\n\x00\xff\n", frames: []string{"\xff\x00", "\n"}},
		{name: "delimiter/empty frames", cfg: delim("||", 0), stream: "||||x||", frames: []string{"", "", "x"}},
		{name: "delimiter/self-overlapping", cfg: delim("abab", 0), stream: "xabaabababyabab", frames: []string{"xaba", "aby"}},
		{name: "delimiter/back to back", cfg: delim("abab", 0), stream: "xabababab", frames: []string{"x", ""}},
		{name: "delimiter/match restarts", cfg: delim("aab", 0), stream: "aaabaaaab", frames: []string{"a", "aa"}},
		{name: "delimiter/repeated byte", cfg: delim("aa", 0), stream: "xaaayaa", frames: []string{"x", "ay"}},
		{name: "delimiter/final", cfg: delim("<END>", 0), stream: "a<END>bc", frames: []string{"a"}, final: []byte("bc")},
		{name: "delimiter/final with partial delimiter", cfg: delim("<END>", 0), stream: "a<END>bc<EN", frames: []string{"a"}, final: []byte("bc<EN")},
		{name: "delimiter/at limit", cfg: delim("||", 3), stream: "abc||", frames: []string{"abc"}},
		{name: "delimiter/too large", cfg: delim("||", 3), stream: "ab||abcd||", frames: []string{"ab"}, tooBig: true},
		{name: "delimiter/too large without delimiter", cfg: delim("||", 3), stream: "abcd", tooBig: true},
		{name: "delimiter/too large behind partial delimiter", cfg: delim("|||", 3), stream: "abcd||", tooBig: true},
		// The final "abc|" may have been "abc" + "||", so Feed accepts it, but
		// it is longer than the limit and thus not a frame.
		{name: "delimiter/too large found straddling", cfg: delim("aab", 3), stream: "xyzaaab", tooBig: true},
		{name: "delimiter/huge limit", cfg: delim("||", math.MaxInt), stream: "abc||de|", frames: []string{"abc"}, final: []byte("de|")},
		{name: "line/huge limit", cfg: framing.Config{Mode: framing.Line, MaxFrameBytes: math.MaxInt}, stream: "abc\nde\r", frames: []string{"abc"}, final: []byte("de")},
		{name: "delimiter/final over limit is partial", cfg: delim("||", 3), stream: "abc|", partial: []byte("abc|")},

		{name: "fixed/frames", cfg: fixed(3), stream: "abcdef", frames: []string{"abc", "def"}},
		{name: "fixed/size 1", cfg: fixed(1), stream: "ab", frames: []string{"a", "b"}},
		{name: "fixed/partial", cfg: fixed(3), stream: "abcdefg", frames: []string{"abc", "def"}, partial: []byte("g")},
		{name: "fixed/empty stream", cfg: fixed(3), stream: ""},
	}
	for _, size := range []int{1, 2, 4, 8} {
		for _, little := range []bool{false, true} {
			order := "big"
			if little {
				order = "little"
			}
			cfg := framing.Config{Mode: framing.LengthPrefix, PrefixBytes: size, LittleEndian: little, MaxFrameBytes: 300}
			name := fmt.Sprintf("length-prefix/%d %s/", size, order)
			cases = append(cases,
				splitCase{name: name + "frames", cfg: cfg, stream: string(prefixed(size, little, "a", "", "hello", "")), frames: []string{"a", "", "hello", ""}},
				splitCase{name: name + "partial payload", cfg: cfg, stream: string(prefixed(size, little, "a", "bc")[:1+size+size+1]), frames: []string{"a"}, partial: prefixed(size, little, "bc")[:size+1]},
				splitCase{name: name + "header only", cfg: cfg, stream: string(prefixed(size, little, "abc")[:size]), partial: prefixed(size, little, "abc")[:size]},
			)
			if size > 1 {
				cases = append(cases,
					splitCase{name: name + "partial header", cfg: cfg, stream: string(prefixed(size, little, "a", "bc")[:1+size+size-1]), frames: []string{"a"}, partial: prefixed(size, little, "bc")[:size-1]},
					splitCase{name: name + "at limit", cfg: cfg, stream: string(prefixed(size, little, strings.Repeat("x", 300))), frames: []string{strings.Repeat("x", 300)}},
					// Only the header of the oversized frame arrives: Feed fails on it.
					splitCase{name: name + "too large", cfg: cfg, stream: string(prefixed(size, little, "a", strings.Repeat("x", 301))[:1+2*size]), frames: []string{"a"}, tooBig: true},
				)
			}
		}
	}
	// 2^64-1 must not wrap around to a small or negative size.
	cases = append(cases, splitCase{name: "length-prefix/8 big/max uint64", cfg: framing.Config{Mode: framing.LengthPrefix, PrefixBytes: 8},
		stream: "\xff\xff\xff\xff\xff\xff\xff\xffabc", tooBig: true})
	return cases
}

func TestSplitter(t *testing.T) {
	for _, tc := range splitCases() {
		t.Run(tc.name, func(t *testing.T) {
			for how, chunks := range splits([]byte(tc.stream)) {
				r := run(t, tc.cfg, chunks)
				if got, want := framesString(r.frames), framesString(toFrames(tc.frames)); got != want {
					t.Errorf("%s: frames %s, want %s", how, got, want)
				}
				if tc.tooBig != errors.Is(r.err, framing.ErrFrameTooLarge) || (!tc.tooBig && r.err != nil) {
					t.Errorf("%s: Feed error %v, want too large: %v", how, r.err, tc.tooBig)
				}
				if !sameBytes(r.final, tc.final) || !sameBytes(r.partial, tc.partial) {
					t.Errorf("%s: Close() = %q (nil %v), %q, want %q (nil %v), %q",
						how, r.final, r.final == nil, r.partial, tc.final, tc.final == nil, tc.partial)
				}
			}
		})
	}
}

func toFrames(s []string) [][]byte {
	out := make([][]byte, len(s))
	for i := range s {
		out[i] = []byte(s[i])
	}
	return out
}

func TestRaw(t *testing.T) {
	tests := []struct {
		name     string
		maxFrame int
		chunks   []string
		frames   []string
	}{
		{name: "chunk is frame", chunks: []string{"ab\n", "c", "", "de"}, frames: []string{"ab\n", "c", "de"}},
		{name: "at limit", maxFrame: 3, chunks: []string{"abc"}, frames: []string{"abc"}},
		{name: "longer than limit is cut", maxFrame: 3, chunks: []string{"abcdefg", "hi"}, frames: []string{"abc", "def", "g", "hi"}},
		{name: "multiple of limit", maxFrame: 2, chunks: []string{"abcd"}, frames: []string{"ab", "cd"}},
		{name: "nothing", chunks: []string{""}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := run(t, framing.Config{Mode: framing.Raw, MaxFrameBytes: tt.maxFrame}, toFrames(tt.chunks))
			if got, want := framesString(r.frames), framesString(toFrames(tt.frames)); got != want {
				t.Errorf("frames %s, want %s", got, want)
			}
			if r.err != nil || r.final != nil || r.partial != nil {
				t.Errorf("err %v, Close() = %q, %q; want nothing", r.err, r.final, r.partial)
			}
		})
	}
}

// TestZeroCopy checks that frames inside one chunk are slices of it, clipped
// so that appending to one cannot overwrite the next.
func TestZeroCopy(t *testing.T) {
	tests := []struct {
		name    string
		cfg     framing.Config
		chunk   string
		offsets []int // where each frame starts in chunk
	}{
		{name: "raw", cfg: framing.Config{Mode: framing.Raw, MaxFrameBytes: 2}, chunk: "abcd", offsets: []int{0, 2}},
		{name: "line", cfg: framing.Config{Mode: framing.Line}, chunk: "ab\r\ncd\n", offsets: []int{0, 4}},
		{name: "delimiter", cfg: framing.Config{Mode: framing.Delimiter, Delimiter: []byte("||")}, chunk: "ab||cd||", offsets: []int{0, 4}},
		{name: "length-prefix", cfg: framing.Config{Mode: framing.LengthPrefix, PrefixBytes: 1}, chunk: "\x02ab\x02cd", offsets: []int{1, 4}},
		{name: "fixed", cfg: framing.Config{Mode: framing.Fixed, FixedSize: 2}, chunk: "abcd", offsets: []int{0, 2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := framing.NewSplitter(tt.cfg)
			if err != nil {
				t.Fatal(err)
			}
			chunk := []byte(tt.chunk)
			var frames [][]byte
			if err := s.Feed(chunk, func(f []byte) { frames = append(frames, f) }); err != nil {
				t.Fatal(err)
			}
			if len(frames) != len(tt.offsets) {
				t.Fatalf("got %d frames, want %d", len(frames), len(tt.offsets))
			}
			for i, f := range frames {
				if &f[0] != &chunk[tt.offsets[i]] {
					t.Errorf("frame %d %q is a copy, want chunk[%d:]", i, f, tt.offsets[i])
				}
				if cap(f) != len(f) {
					t.Errorf("frame %d has capacity %d beyond its length %d", i, cap(f), len(f))
				}
			}
			_ = append(frames[0], "XXXX"...)
			if string(frames[1]) != "cd" {
				t.Errorf("appending to frame 0 changed frame 1 to %q", frames[1])
			}
		})
	}
}

// TestSpanningFrameImmutable checks that a frame assembled from several
// chunks keeps its content while the splitter goes on buffering.
func TestSpanningFrameImmutable(t *testing.T) {
	tests := []struct {
		name   string
		cfg    framing.Config
		chunks []string
		want   string // the first frame
	}{
		{name: "line", cfg: framing.Config{Mode: framing.Line}, chunks: []string{"a", "b", "c\nd", "e", "f\n"}, want: "abc"},
		{name: "delimiter", cfg: framing.Config{Mode: framing.Delimiter, Delimiter: []byte("||")}, chunks: []string{"a", "b", "c|", "|d", "e", "f", "||"}, want: "abc"},
		{name: "length-prefix", cfg: framing.Config{Mode: framing.LengthPrefix, PrefixBytes: 1}, chunks: []string{"\x03a", "b", "c\x03d", "e", "f"}, want: "abc"},
		{name: "fixed", cfg: framing.Config{Mode: framing.Fixed, FixedSize: 3}, chunks: []string{"a", "b", "cd", "e", "f"}, want: "abc"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := framing.NewSplitter(tt.cfg)
			if err != nil {
				t.Fatal(err)
			}
			var frames [][]byte
			for _, c := range tt.chunks {
				if err := s.Feed([]byte(c), func(f []byte) { frames = append(frames, f) }); err != nil {
					t.Fatal(err)
				}
			}
			if len(frames) != 2 || string(frames[0]) != tt.want || string(frames[1]) != "def" {
				t.Fatalf("frames %s, want [%q \"def\"]", framesString(frames), tt.want)
			}
		})
	}
}

func TestFeedAfterErrorOrClose(t *testing.T) {
	s, err := framing.NewSplitter(framing.Config{Mode: framing.Line, MaxFrameBytes: 2})
	if err != nil {
		t.Fatal(err)
	}
	emitted := 0
	emit := func([]byte) { emitted++ }
	first := s.Feed([]byte("abc"), emit)
	if !errors.Is(first, framing.ErrFrameTooLarge) {
		t.Fatalf("Feed(abc) = %v, want ErrFrameTooLarge", first)
	}
	if err := s.Feed([]byte("\n"), emit); err != first || emitted != 0 {
		t.Errorf("Feed after error = %v and %d frames, want the first error again and none", err, emitted)
	}

	s, err = framing.NewSplitter(framing.Config{Mode: framing.Line})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Feed([]byte("ab"), emit); err != nil {
		t.Fatal(err)
	}
	if final, _ := s.Close(); string(final) != "ab" {
		t.Errorf("Close() final = %q, want \"ab\"", final)
	}
	if final, partial := s.Close(); final != nil || partial != nil {
		t.Errorf("second Close() = %q, %q, want nothing", final, partial)
	}
	if err := s.Feed([]byte("\n"), emit); err == nil || emitted != 0 {
		t.Errorf("Feed after Close = %v and %d frames, want an error and none", err, emitted)
	}
}

func TestModeString(t *testing.T) {
	for m, want := range map[framing.Mode]string{
		framing.Raw: "raw", framing.Line: "line", framing.Delimiter: "delimiter",
		framing.LengthPrefix: "length-prefix", framing.Fixed: "fixed", framing.Mode(9): "Mode(9)",
	} {
		if got := m.String(); got != want {
			t.Errorf("Mode(%d).String() = %q, want %q", int(m), got, want)
		}
	}
}

func TestNormalize(t *testing.T) {
	tests := []struct {
		name  string
		cfg   framing.Config
		want  framing.Config
		field string // in the error; empty: valid
	}{
		{name: "zero is raw with defaults", cfg: framing.Config{},
			want: framing.Config{PrefixBytes: framing.DefaultPrefixBytes, MaxFrameBytes: framing.DefaultMaxFrameBytes}},
		{name: "explicit values kept", cfg: framing.Config{Mode: framing.LengthPrefix, PrefixBytes: 2, LittleEndian: true, MaxFrameBytes: 10},
			want: framing.Config{Mode: framing.LengthPrefix, PrefixBytes: 2, LittleEndian: true, MaxFrameBytes: 10}},
		{name: "fixed at limit", cfg: framing.Config{Mode: framing.Fixed, FixedSize: 10, MaxFrameBytes: 10},
			want: framing.Config{Mode: framing.Fixed, FixedSize: 10, PrefixBytes: framing.DefaultPrefixBytes, MaxFrameBytes: 10}},
		{name: "unknown mode", cfg: framing.Config{Mode: 5}, field: "framing.mode"},
		{name: "negative mode", cfg: framing.Config{Mode: -1}, field: "framing.mode"},
		{name: "delimiter missing", cfg: framing.Config{Mode: framing.Delimiter}, field: "framing.delimiter"},
		{name: "delimiter empty", cfg: framing.Config{Mode: framing.Delimiter, Delimiter: []byte{}}, field: "framing.delimiter"},
		{name: "delimiter at limit", cfg: framing.Config{Mode: framing.Delimiter, Delimiter: bytes.Repeat([]byte{'x'}, framing.MaxDelimiterBytes)},
			want: framing.Config{Mode: framing.Delimiter, Delimiter: bytes.Repeat([]byte{'x'}, framing.MaxDelimiterBytes), PrefixBytes: framing.DefaultPrefixBytes, MaxFrameBytes: framing.DefaultMaxFrameBytes}},
		{name: "delimiter above limit", cfg: framing.Config{Mode: framing.Delimiter, Delimiter: bytes.Repeat([]byte{'x'}, framing.MaxDelimiterBytes+1)}, field: "framing.delimiter"},
		{name: "delimiter of 3 MiB", cfg: framing.Config{Mode: framing.Delimiter, Delimiter: make([]byte, 3<<20)}, field: "framing.delimiter"},
		{name: "delimiter above limit, raw mode", cfg: framing.Config{Delimiter: bytes.Repeat([]byte{'x'}, framing.MaxDelimiterBytes+1)}, field: "framing.delimiter"},
		{name: "prefix 3", cfg: framing.Config{Mode: framing.LengthPrefix, PrefixBytes: 3}, field: "framing.prefix_bytes"},
		{name: "prefix negative", cfg: framing.Config{Mode: framing.LengthPrefix, PrefixBytes: -4}, field: "framing.prefix_bytes"},
		{name: "prefix 16", cfg: framing.Config{Mode: framing.LengthPrefix, PrefixBytes: 16}, field: "framing.prefix_bytes"},
		{name: "fixed size missing", cfg: framing.Config{Mode: framing.Fixed}, field: "framing.fixed_size"},
		{name: "fixed size negative", cfg: framing.Config{Mode: framing.Fixed, FixedSize: -1}, field: "framing.fixed_size"},
		{name: "fixed size above limit", cfg: framing.Config{Mode: framing.Fixed, FixedSize: 11, MaxFrameBytes: 10}, field: "framing.fixed_size"},
		{name: "fixed size above default limit", cfg: framing.Config{Mode: framing.Fixed, FixedSize: framing.DefaultMaxFrameBytes + 1}, field: "framing.fixed_size"},
		{name: "negative limit", cfg: framing.Config{Mode: framing.Line, MaxFrameBytes: -1}, field: "framing.max_frame_bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.cfg.Normalize()
			_, newErr := framing.NewSplitter(tt.cfg)
			if tt.field == "" {
				if err != nil || newErr != nil {
					t.Fatalf("Normalize() = %v, NewSplitter() = %v, want no error", err, newErr)
				}
				if fmt.Sprint(got) != fmt.Sprint(tt.want) {
					t.Errorf("Normalize() = %+v, want %+v", got, tt.want)
				}
				return
			}
			for _, err := range []error{err, newErr} {
				if !errors.Is(err, framing.ErrInvalidConfig) || !strings.Contains(err.Error(), tt.field) {
					t.Errorf("error %v, want ErrInvalidConfig naming %s", err, tt.field)
				}
			}
		})
	}
}

// TestNewSplitterCopiesDelimiter checks that a caller reusing the
// configuration's delimiter does not change a running splitter.
func TestNewSplitterCopiesDelimiter(t *testing.T) {
	d := []byte("||")
	s, err := framing.NewSplitter(framing.Config{Mode: framing.Delimiter, Delimiter: d})
	if err != nil {
		t.Fatal(err)
	}
	copy(d, "##")
	var frames [][]byte
	if err := s.Feed([]byte("a||b##"), func(f []byte) { frames = append(frames, f) }); err != nil {
		t.Fatal(err)
	}
	if got := framesString(frames); got != `["a"]` {
		t.Errorf("frames %s, want [\"a\"]", got)
	}
}

func TestEncodeRoundTrip(t *testing.T) {
	long := strings.Repeat("x", 300)
	tests := []struct {
		name   string
		cfg    framing.Config
		frames []string
	}{
		{name: "line", cfg: framing.Config{Mode: framing.Line}, frames: []string{"a", "", "b\rc", "ends in cr\r", "\r\r", long}},
		{name: "line at limit with cr", cfg: framing.Config{Mode: framing.Line, MaxFrameBytes: 3}, frames: []string{"ab\r", "abc", ""}},
		{name: "delimiter", cfg: framing.Config{Mode: framing.Delimiter, Delimiter: []byte("<END>")}, frames: []string{"a", "", "<EN", "<END", "b<E", long}},
		{name: "delimiter binary", cfg: framing.Config{Mode: framing.Delimiter, Delimiter: []byte{0}}, frames: []string{"\xff\n", ""}},
		{name: "length-prefix 1", cfg: framing.Config{Mode: framing.LengthPrefix, PrefixBytes: 1}, frames: []string{"a", "", long[:255]}},
		{name: "length-prefix 2 little", cfg: framing.Config{Mode: framing.LengthPrefix, PrefixBytes: 2, LittleEndian: true}, frames: []string{"a", "", long}},
		{name: "length-prefix 4", cfg: framing.Config{Mode: framing.LengthPrefix}, frames: []string{"a", "", long}},
		{name: "length-prefix 8 little", cfg: framing.Config{Mode: framing.LengthPrefix, PrefixBytes: 8, LittleEndian: true}, frames: []string{"a", "", long}},
		{name: "fixed", cfg: framing.Config{Mode: framing.Fixed, FixedSize: 3}, frames: []string{"abc", "\n\r\x00", "xyz"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := tt.cfg.Normalize()
			if err != nil {
				t.Fatal(err)
			}
			var stream []byte
			for _, f := range tt.frames {
				if stream, err = cfg.Encode(stream, []byte(f)); err != nil {
					t.Fatalf("Encode(%q): %v", f, err)
				}
			}
			for how, chunks := range map[string][][]byte{"whole": {stream}, "1-byte chunks": splits(stream)["1-byte chunks"]} {
				r := run(t, cfg, chunks)
				if got, want := framesString(r.frames), framesString(toFrames(tt.frames)); got != want || r.err != nil {
					t.Errorf("%s: frames %s, error %v; want %s", how, got, r.err, want)
				}
				if r.final != nil || r.partial != nil {
					t.Errorf("%s: Close() = %q, %q, want nothing left", how, r.final, r.partial)
				}
			}
		})
	}
}

func TestEncode(t *testing.T) {
	big := bytes.Repeat([]byte("x"), 300)
	tests := []struct {
		name   string
		cfg    framing.Config
		frame  []byte
		want   []byte // when no error
		tooBig bool   // the error also wraps ErrFrameTooLarge
		fails  bool
		// reason is part of the EncodeError's Reason, when set.
		reason string
		// raw skips Normalize: Encode fills defaults itself and rejects
		// what it cannot encode rather than misbehave.
		raw bool
	}{
		{name: "raw as is", cfg: framing.Config{Mode: framing.Raw, MaxFrameBytes: 1}, frame: []byte("a\nb"), want: []byte("a\nb")},
		{name: "line", cfg: framing.Config{Mode: framing.Line}, frame: []byte("ab"), want: []byte("ab\n")},
		{name: "line ending in cr", cfg: framing.Config{Mode: framing.Line}, frame: []byte("ab\r"), want: []byte("ab\r\r\n")},
		{name: "line with newline", cfg: framing.Config{Mode: framing.Line}, frame: []byte("a\nb"), fails: true, reason: "newline at byte 1"},
		{name: "line too long", cfg: framing.Config{Mode: framing.Line, MaxFrameBytes: 2}, frame: []byte("abc"), fails: true, tooBig: true, reason: "max_frame_bytes (2)"},
		{name: "delimiter", cfg: framing.Config{Mode: framing.Delimiter, Delimiter: []byte("||")}, frame: []byte("a|b"), want: []byte("a|b||")},
		{name: "delimiter inside", cfg: framing.Config{Mode: framing.Delimiter, Delimiter: []byte("||")}, frame: []byte("a||b"), fails: true, reason: "contains the delimiter at byte 1"},
		{name: "delimiter completed early", cfg: framing.Config{Mode: framing.Delimiter, Delimiter: []byte("||")}, frame: []byte("a|"), fails: true, reason: "ends with the start of the delimiter"},
		{name: "delimiter too long", cfg: framing.Config{Mode: framing.Delimiter, Delimiter: []byte("|"), MaxFrameBytes: 2}, frame: []byte("abc"), fails: true, tooBig: true},
		{name: "prefix big endian", cfg: framing.Config{Mode: framing.LengthPrefix, PrefixBytes: 2}, frame: []byte("ab"), want: []byte("\x00\x02ab")},
		{name: "prefix little endian", cfg: framing.Config{Mode: framing.LengthPrefix, PrefixBytes: 4, LittleEndian: true}, frame: []byte("ab"), want: []byte("\x02\x00\x00\x00ab")},
		{name: "prefix 1 at 255", cfg: framing.Config{Mode: framing.LengthPrefix, PrefixBytes: 1}, frame: big[:255], want: append([]byte{255}, big[:255]...)},
		{name: "prefix 1 overflows", cfg: framing.Config{Mode: framing.LengthPrefix, PrefixBytes: 1}, frame: big[:256], fails: true, tooBig: true, reason: "1-byte length prefix can say (at most 255)"},
		{name: "prefix above limit", cfg: framing.Config{Mode: framing.LengthPrefix, MaxFrameBytes: 299}, frame: big, fails: true, tooBig: true},
		{name: "fixed", cfg: framing.Config{Mode: framing.Fixed, FixedSize: 2}, frame: []byte("ab"), want: []byte("ab")},
		{name: "fixed short", cfg: framing.Config{Mode: framing.Fixed, FixedSize: 2}, frame: []byte("a"), fails: true, reason: "fixed_size, 2 bytes"},
		{name: "fixed long", cfg: framing.Config{Mode: framing.Fixed, FixedSize: 2}, frame: []byte("abc"), fails: true},
		{name: "unnormalized defaults", raw: true, cfg: framing.Config{Mode: framing.LengthPrefix}, frame: []byte("ab"), want: []byte("\x00\x00\x00\x02ab")},
		{name: "unnormalized bad prefix", raw: true, cfg: framing.Config{Mode: framing.LengthPrefix, PrefixBytes: 3}, frame: []byte("ab"), fails: true},
		{name: "unnormalized no delimiter", raw: true, cfg: framing.Config{Mode: framing.Delimiter}, frame: []byte("ab"), fails: true},
		{name: "unknown mode", raw: true, cfg: framing.Config{Mode: 7}, frame: []byte("ab"), fails: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := tt.cfg
			if !tt.raw {
				var err error
				if cfg, err = cfg.Normalize(); err != nil {
					t.Fatal(err)
				}
			}
			dst := []byte("before")
			got, err := cfg.Encode(dst, tt.frame)
			if tt.fails {
				if !errors.Is(err, framing.ErrUnencodable) || errors.Is(err, framing.ErrFrameTooLarge) != tt.tooBig {
					t.Errorf("Encode() error %v, want ErrUnencodable (and ErrFrameTooLarge: %v)", err, tt.tooBig)
				}
				if string(got) != "before" {
					t.Errorf("Encode() failed but returned %q, want dst unchanged", got)
				}
				var enc *framing.EncodeError
				if !errors.As(err, &enc) || enc.Size != len(tt.frame) || enc.Mode != cfg.Mode || enc.Reason == "" || !strings.Contains(enc.Reason, tt.reason) {
					t.Errorf("Encode() error %#v, want an *EncodeError of %d bytes in mode %v whose reason says %q", err, len(tt.frame), cfg.Mode, tt.reason)
				}
				return
			}
			if err != nil || !bytes.Equal(got, append([]byte("before"), tt.want...)) {
				t.Errorf("Encode() = %q, %v, want %q", got, err, "before"+string(tt.want))
			}
		})
	}
}

// chunked returns a stream of copies of record cut into chunks of chunkSize,
// just long enough that it can be fed over and over: its length is a multiple
// of both.
func chunked(record []byte, chunkSize int) (chunks [][]byte, records int) {
	a, b := len(record), chunkSize
	for b != 0 {
		a, b = b, a%b
	}
	records = chunkSize / a
	stream := bytes.Repeat(record, records)
	for len(stream) > 0 {
		chunks = append(chunks, stream[:chunkSize])
		stream = stream[chunkSize:]
	}
	return chunks, records
}

func benchmarkSplitter(b *testing.B, cfg framing.Config, record []byte) {
	chunks, records := chunked(record, 64<<10)
	s, err := framing.NewSplitter(cfg)
	if err != nil {
		b.Fatal(err)
	}
	frames := 0
	emit := func([]byte) { frames++ }
	b.SetBytes(int64(len(chunks)) * 64 << 10)
	b.ReportAllocs()
	for b.Loop() {
		for _, c := range chunks {
			if err := s.Feed(c, emit); err != nil {
				b.Fatal(err)
			}
		}
	}
	if want := b.N * records; frames != want {
		b.Fatalf("got %d frames, want %d", frames, want)
	}
	b.ReportMetric(float64(frames)/b.Elapsed().Seconds(), "frames/s")
}

// BenchmarkLine100 feeds 100-byte lines in 64 KiB reads, the target workload.
func BenchmarkLine100(b *testing.B) {
	line := append(bytes.Repeat([]byte("x"), 99), '\n')
	benchmarkSplitter(b, framing.Config{Mode: framing.Line}, line)
}

// BenchmarkLengthPrefix feeds 100-byte payloads after 4-byte prefixes in
// 64 KiB reads.
func BenchmarkLengthPrefix(b *testing.B) {
	record := binary.BigEndian.AppendUint32(nil, 100)
	record = append(record, bytes.Repeat([]byte("x"), 100)...)
	benchmarkSplitter(b, framing.Config{Mode: framing.LengthPrefix}, record)
}

// BenchmarkRaw feeds 64 KiB reads, each one frame.
func BenchmarkRaw(b *testing.B) {
	benchmarkSplitter(b, framing.Config{Mode: framing.Raw}, bytes.Repeat([]byte("x"), 64<<10))
}
