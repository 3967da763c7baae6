package proxyproto_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net/netip"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/tcpgate/tcpgate/server/internal/proxyproto"
)

// tail is what a client sends after the header: it must stay unread.
const tail = "first frame\n"

var (
	src4 = netip.MustParseAddrPort("203.0.113.7:51000")
	dst4 = netip.MustParseAddrPort("198.51.100.1:443")
	src6 = netip.MustParseAddrPort("[2001:db8::7]:51000")
	dst6 = netip.MustParseAddrPort("[2001:db8::1]:443")
)

// v2 builds a version 2 header by hand: verCmd, famTrans and body as
// given, the length field from body unless length is set.
func v2(verCmd, famTrans byte, body []byte, length int) []byte {
	b := []byte("\r\n\r\n\x00\r\nQUIT\n")
	b = append(b, verCmd, famTrans)
	if length < 0 {
		length = len(body)
	}
	b = binary.BigEndian.AppendUint16(b, uint16(length))
	return append(b, body...)
}

func TestRead(t *testing.T) {
	tlv := []byte{0x04, 0x00, 0x03, 'a', 'b', 'c', 0x05, 0x00, 0x00}
	tests := []struct {
		name   string
		in     []byte
		mode   proxyproto.Mode
		want   proxyproto.Header // Length is checked against the header's bytes
		hdrLen int               // 0: len(in)
	}{
		{"v1 TCP4", proxyproto.AppendV1(nil, src4, dst4), proxyproto.V1, proxyproto.Header{Version: 1, Source: src4, Destination: dst4}, 0},
		{"v1 TCP6", proxyproto.AppendV1(nil, src6, dst6), proxyproto.Any, proxyproto.Header{Version: 1, Source: src6, Destination: dst6}, 0},
		{"v1 longest", []byte("PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"), proxyproto.V1,
			proxyproto.Header{Version: 1, Source: netip.MustParseAddrPort("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"), Destination: netip.MustParseAddrPort("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535")}, 0},
		{"v1 UNKNOWN", []byte("PROXY UNKNOWN\r\n"), proxyproto.V1, proxyproto.Header{Version: 1, Local: true}, 0},
		{"v1 UNKNOWN with addresses", []byte("PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"), proxyproto.Any, proxyproto.Header{Version: 1, Local: true}, 0},
		{"v2 IPv4", proxyproto.AppendV2(nil, src4, dst4, nil), proxyproto.V2, proxyproto.Header{Version: 2, Source: src4, Destination: dst4}, 0},
		{"v2 IPv6", proxyproto.AppendV2(nil, src6, dst6, nil), proxyproto.Any, proxyproto.Header{Version: 2, Source: src6, Destination: dst6}, 0},
		{"v2 IPv4 with TLVs", proxyproto.AppendV2(nil, src4, dst4, tlv), proxyproto.V2, proxyproto.Header{Version: 2, Source: src4, Destination: dst4}, 0},
		{"v2 LOCAL", proxyproto.AppendV2(nil, netip.AddrPort{}, netip.AddrPort{}, nil), proxyproto.V2, proxyproto.Header{Version: 2, Local: true}, 0},
		{"v2 LOCAL with addresses", v2(0x20, 0x11, make([]byte, 12), -1), proxyproto.V2, proxyproto.Header{Version: 2, Local: true}, 0},
		{"v2 PROXY of AF_UNSPEC", v2(0x21, 0x00, nil, -1), proxyproto.V2, proxyproto.Header{Version: 2, Local: true}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// One byte per read too: a header may come in many segments.
			for _, r := range []io.Reader{
				bytes.NewReader(append(append([]byte(nil), tt.in...), tail...)),
				iotest.OneByteReader(bytes.NewReader(append(append([]byte(nil), tt.in...), tail...))),
			} {
				h, err := proxyproto.Read(r, tt.mode)
				if err != nil {
					t.Fatalf("Read(%q): %v", tt.in, err)
				}
				want := tt.want
				want.Length = len(tt.in)
				if h != want {
					t.Errorf("Read(%q) = %+v, want %+v", tt.in, h, want)
				}
				rest, _ := io.ReadAll(r)
				if string(rest) != tail {
					t.Errorf("after the header the reader holds %q, want %q", rest, tail)
				}
			}
		})
	}
}

func TestReadRefuses(t *testing.T) {
	long := "PROXY TCP6 " + strings.Repeat("f", 100) + "\r\n"
	tests := []struct {
		name string
		in   []byte
		mode proxyproto.Mode
		want error
		says string // part of the error's text
	}{
		{"no header", []byte("hello there\n"), proxyproto.Any, proxyproto.ErrMalformed, "not with"},
		{"v1 where v2 is taken", proxyproto.AppendV1(nil, src4, dst4), proxyproto.V2, proxyproto.ErrVersion, "version 1 header"},
		{"v2 where v1 is taken", proxyproto.AppendV2(nil, src4, dst4, nil), proxyproto.V1, proxyproto.ErrVersion, "version 2 header"},
		{"v1 unknown protocol", []byte("PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n"), proxyproto.V1, proxyproto.ErrMalformed, "UDP4"},
		{"v1 TCP4 with IPv6", []byte("PROXY TCP4 ::1 ::2 1 2\r\n"), proxyproto.V1, proxyproto.ErrMalformed, "not IPv4"},
		{"v1 TCP6 with IPv4", []byte("PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n"), proxyproto.V1, proxyproto.ErrMalformed, "not IPv6"},
		{"v1 port too big", []byte("PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n"), proxyproto.V1, proxyproto.ErrMalformed, "port"},
		{"v1 port leading zero", []byte("PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n"), proxyproto.V1, proxyproto.ErrMalformed, "port"},
		{"v1 zone", []byte("PROXY TCP6 fe80::1%eth0 fe80::2 1 2\r\n"), proxyproto.V1, proxyproto.ErrMalformed, "zone"},
		{"v1 missing field", []byte("PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n"), proxyproto.V1, proxyproto.ErrMalformed, "single spaces"},
		{"v1 double space", []byte("PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n"), proxyproto.V1, proxyproto.ErrMalformed, "single spaces"},
		{"v1 LF without CR", []byte("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"), proxyproto.V1, proxyproto.ErrMalformed, "without CR"},
		{"v1 CR without LF", []byte("PROXY TCP4 1.2.3.4\r5.6.7.8 1 2\r\n"), proxyproto.V1, proxyproto.ErrMalformed, "CR not followed"},
		{"v1 too long", []byte(long), proxyproto.V1, proxyproto.ErrMalformed, "longer than 107"},
		{"v1 cut short", []byte("PROXY TCP4 1.2.3.4"), proxyproto.V1, io.ErrUnexpectedEOF, "reading"},
		{"v2 bad version nibble", v2(0x11, 0x11, make([]byte, 12), -1), proxyproto.V2, proxyproto.ErrMalformed, "version nibble"},
		{"v2 bad command", v2(0x22, 0x11, make([]byte, 12), -1), proxyproto.V2, proxyproto.ErrMalformed, "command"},
		{"v2 UNIX", v2(0x21, 0x31, make([]byte, 216), -1), proxyproto.V2, proxyproto.ErrUnsupported, "UNIX"},
		{"v2 datagram", v2(0x21, 0x12, make([]byte, 12), -1), proxyproto.V2, proxyproto.ErrUnsupported, "STREAM"},
		{"v2 unknown family", v2(0x21, 0x41, make([]byte, 12), -1), proxyproto.V2, proxyproto.ErrMalformed, "family"},
		{"v2 short addresses", v2(0x21, 0x21, make([]byte, 12), -1), proxyproto.V2, proxyproto.ErrMalformed, "fewer than the 36"},
		{"v2 too long", v2(0x21, 0x11, nil, proxyproto.MaxV2Length), proxyproto.V2, proxyproto.ErrMalformed, "more than the 4096"},
		{"v2 cut short", v2(0x21, 0x11, make([]byte, 4), 12), proxyproto.V2, io.ErrUnexpectedEOF, "reading"},
		{"v2 bad TLV", proxyproto.AppendV2(nil, src4, dst4, []byte{0x04, 0x00, 0x09, 'a'}), proxyproto.V2, proxyproto.ErrMalformed, "TLV"},
		{"v2 TLV cut", proxyproto.AppendV2(nil, src4, dst4, []byte{0x04, 0x00}), proxyproto.V2, proxyproto.ErrMalformed, "TLV"},
		{"v2 bad signature", []byte("\r\n\r\n\x00\r\nQUIX\n\x21\x11\x00\x0c"), proxyproto.V2, proxyproto.ErrMalformed, "signature"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := proxyproto.Read(bytes.NewReader(tt.in), tt.mode)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Read(%q) = %v, want %v", tt.in, err, tt.want)
			}
			if !strings.Contains(err.Error(), tt.says) {
				t.Errorf("Read(%q): error %q does not say %q", tt.in, err, tt.says)
			}
		})
	}
}

func TestReadModeNone(t *testing.T) {
	if _, err := proxyproto.Read(strings.NewReader("PROXY UNKNOWN\r\n"), proxyproto.None); err == nil {
		t.Fatal("Read with mode None took a header")
	}
}

// strictReader hands out at most chunk bytes per call, counts what it
// handed out, and fails the test when read again after an error.
type strictReader struct {
	t      *testing.T
	data   []byte
	chunk  int
	n      int
	failed bool
}

func (r *strictReader) Read(p []byte) (int, error) {
	if r.failed {
		r.t.Fatal("Read called again after an error")
	}
	if r.n == len(r.data) {
		r.failed = true
		return 0, io.EOF
	}
	k := min(len(p), r.chunk, len(r.data)-r.n)
	copy(p, r.data[r.n:r.n+k])
	r.n += k
	return k, nil
}

// FuzzParse: Read never panics, never reads past the header it returns
// (nor, refusing one, past the longest header), and what it parses
// writes out again as the same header.
func FuzzParse(f *testing.F) {
	f.Add(proxyproto.AppendV1(nil, src4, dst4), uint8(3), uint8(7))
	f.Add(proxyproto.AppendV1(nil, src6, dst6), uint8(1), uint8(1))
	f.Add([]byte("PROXY UNKNOWN\r\nGET / HTTP/1.0\r\n"), uint8(3), uint8(2))
	f.Add(proxyproto.AppendV2(nil, src4, dst4, []byte{1, 0, 1, 'x'}), uint8(2), uint8(5))
	f.Add(proxyproto.AppendV2(nil, src6, dst6, nil), uint8(3), uint8(16))
	f.Add(proxyproto.AppendV2(nil, netip.AddrPort{}, netip.AddrPort{}, nil), uint8(2), uint8(1))
	f.Add([]byte("hello\n"), uint8(3), uint8(4))
	f.Fuzz(func(t *testing.T, data []byte, mode, chunk uint8) {
		m := proxyproto.Mode(mode % 4)
		r := &strictReader{t: t, data: data, chunk: int(chunk%32) + 1}
		h, err := proxyproto.Read(r, m)
		if m == proxyproto.None {
			if err == nil || r.n != 0 {
				t.Fatalf("mode None: err %v after reading %d bytes", err, r.n)
			}
			return
		}
		if err != nil {
			if r.n > proxyproto.MaxV2Length {
				t.Fatalf("refusing %q, Read read %d bytes, more than any header", data, r.n)
			}
			return
		}
		if r.n != h.Length {
			t.Fatalf("Read(%q) read %d bytes for a header of %d", data, r.n, h.Length)
		}
		if h.Local {
			return
		}
		var again []byte
		if h.Version == 1 {
			again = proxyproto.AppendV1(nil, h.Source, h.Destination)
		} else {
			again = proxyproto.AppendV2(nil, h.Source, h.Destination, nil)
		}
		h2, err := proxyproto.Read(bytes.NewReader(again), m)
		if err != nil {
			t.Fatalf("the header %+v written out as %q does not read back: %v", h, again, err)
		}
		if h2.Source != h.Source || h2.Destination != h.Destination || h2.Version != h.Version {
			t.Fatalf("round trip of %+v gave %+v", h, h2)
		}
	})
}
