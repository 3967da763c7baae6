// Package proxyproto reads the PROXY protocol header (HAProxy's, version
// 1 text or version 2 binary) that a load balancer writes at the start of
// a connection to name the client it relays. It is pure: it reads from an
// io.Reader, exactly the header's bytes and never one past them, so that
// what the client sent after the header is still unread, for framing.
//
// The format is HAProxy's "The PROXY protocol" (versions 1 and 2):
// https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt
package proxyproto

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
)

// Mode says which header versions a listener takes.
type Mode int

// The modes. Every mode but None requires a header: a connection without
// one is refused, so that a client that reaches the port directly cannot
// pass as the balancer by leaving the header out.
const (
	// None means no header: the peer's address is the socket's.
	None Mode = iota
	// V1 takes a version 1 (text) header only.
	V1
	// V2 takes a version 2 (binary) header only.
	V2
	// Any takes a header of either version.
	Any
)

// String returns the mode's name, as the CLI's --proxy-protocol spells it.
func (m Mode) String() string {
	switch m {
	case None:
		return "none"
	case V1:
		return "v1"
	case V2:
		return "v2"
	case Any:
		return "any"
	}
	return "mode(" + strconv.Itoa(int(m)) + ")"
}

// takes reports whether m takes a header of version v.
func (m Mode) takes(v int) bool {
	return m == Any || (m == V1 && v == 1) || (m == V2 && v == 2)
}

// Errors of Read; callers test them with errors.Is. Each comes wrapped
// with what was wrong, in words for the person who set up the balancer.
var (
	// ErrMalformed means the bytes are not a PROXY header of any version,
	// or a header broken in its fields.
	ErrMalformed = errors.New("malformed PROXY protocol header")
	// ErrVersion means a well-formed start of a header of a version the
	// listener does not take.
	ErrVersion = errors.New("PROXY protocol version not taken")
	// ErrUnsupported means a well-formed header of an address family or
	// transport a TCP gateway cannot use (UNIX sockets, datagrams).
	ErrUnsupported = errors.New("PROXY protocol header of an unsupported kind")
)

// MaxV1Length is the longest version 1 header, its CRLF included, as the
// protocol defines it (a TCP6 line with the longest addresses and ports).
const MaxV1Length = 107

// MaxV2Length bounds a version 2 header, its 16 bytes of preamble
// included: the protocol allows 64 KiB of addresses and TLVs, but the
// addresses take at most 216 bytes and balancers add a few small TLVs
// (AWS's endpoint id, Azure's link id, a TLS summary), so 4 KiB takes
// every header seen in practice while a peer cannot make the gateway
// read 64 KiB before it is even admitted.
const MaxV2Length = 4096

// v1Prefix and v2Signature open the headers of each version.
var (
	v1Prefix    = []byte("PROXY ")
	v2Signature = []byte("\r\n\r\n\x00\r\nQUIT\n")
)

// v2PreambleLength is the fixed part of a version 2 header: the
// signature, the version and command, the family and transport, and the
// length of what follows.
const v2PreambleLength = 16

// Header is what a PROXY header says of the connection.
type Header struct {
	// Version is 1 or 2.
	Version int
	// Local says the header names no client (v1 UNKNOWN, v2 LOCAL, or v2
	// PROXY of an unspecified family: a balancer's health check): keep the
	// socket's addresses. Source and Destination are then zero.
	Local bool
	// Source is the client's address, as the balancer saw it.
	Source netip.AddrPort
	// Destination is the address the client connected to, on the balancer.
	Destination netip.AddrPort
	// Length is how many bytes the header took: exactly what Read read.
	Length int
}

// Read reads one PROXY header of a version mode takes from r, and not a
// byte more. It fails with an error wrapping ErrMalformed, ErrVersion or
// ErrUnsupported when the bytes are not such a header, or with r's error
// (io.ErrUnexpectedEOF when r ends within the header, or a deadline) when
// they stop coming. Read does not call r again once it has seen an error.
// Mode None takes no header, and Read refuses it.
func Read(r io.Reader, mode Mode) (Header, error) {
	if mode != V1 && mode != V2 && mode != Any {
		return Header{}, fmt.Errorf("reading PROXY protocol header: mode %v takes no header", mode)
	}
	// The shortest header of either version ("PROXY UNKNOWN\r\n" is 15
	// bytes, a version 2 preamble 16) is longer than either opening, so
	// the opening is read whole before the version is known; it is read
	// in two steps so that a client that sends no header at all (a plain
	// "hello\n") is refused at once rather than at the deadline.
	var buf [v2PreambleLength]byte
	if err := readFull(r, buf[:5]); err != nil {
		return Header{}, err
	}
	v, err := version(buf[:5], mode)
	if err != nil {
		return Header{}, err
	}
	if v == 1 {
		return readV1(r, buf[:5])
	}
	return readV2(r, buf[:5])
}

// version tells the version of a header from its first bytes, and refuses
// one that mode does not take.
func version(start []byte, mode Mode) (int, error) {
	var v int
	switch {
	case bytes.HasPrefix(v1Prefix, start):
		v = 1
	case bytes.HasPrefix(v2Signature, start):
		v = 2
	default:
		return 0, fmt.Errorf("%w: the connection begins with %q, not with %q (version 1) or the version 2 signature: is the balancer set to send PROXY protocol?", ErrMalformed, start, v1Prefix)
	}
	if !mode.takes(v) {
		return 0, fmt.Errorf("%w: a version %d header where the listener takes %s only: set the balancer or the listener's proxy_protocol to the same version", ErrVersion, v, mode)
	}
	return v, nil
}

// readFull is io.ReadFull with an end of input inside the header as
// io.ErrUnexpectedEOF, whatever was read before it.
func readFull(r io.Reader, p []byte) error {
	_, err := io.ReadFull(r, p)
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		return fmt.Errorf("reading PROXY protocol header: %w", err)
	}
	return nil
}

// readV1 reads the rest of a version 1 line whose first bytes are start,
// up to its CRLF. The line's end is not known ahead, so it reads no more
// than the line's end could be: two bytes at a time, one after a CR.
func readV1(r io.Reader, start []byte) (Header, error) {
	var line [MaxV1Length]byte
	n := copy(line[:], start)
	for {
		step := 2
		if line[n-1] == '\r' {
			step = 1
		}
		if n+step > MaxV1Length {
			return Header{}, fmt.Errorf("%w: version 1 line longer than %d bytes without its CRLF", ErrMalformed, MaxV1Length)
		}
		if err := readFull(r, line[n:n+step]); err != nil {
			return Header{}, err
		}
		// A CR must be followed by the LF that ends the line, which is
		// always the last byte read, as no read goes past a CR.
		for i := n; i < n+step; i++ {
			switch {
			case line[i-1] == '\r' && line[i] != '\n':
				return Header{}, fmt.Errorf("%w: version 1 line %q has a CR not followed by LF", ErrMalformed, line[:i+1])
			case line[i] == '\n' && line[i-1] == '\r':
				h, err := parseV1(line[:i+1])
				h.Length = i + 1
				return h, err
			case line[i] == '\n':
				return Header{}, fmt.Errorf("%w: version 1 line %q ends in LF without CR", ErrMalformed, line[:i+1])
			}
		}
		n += step
	}
}

// parseV1 parses a whole version 1 line, its CRLF included.
func parseV1(line []byte) (Header, error) {
	if !bytes.HasPrefix(line, v1Prefix) {
		return Header{}, fmt.Errorf("%w: version 1 line %q does not begin with %q", ErrMalformed, line, v1Prefix)
	}
	text := string(line[len(v1Prefix) : len(line)-2])
	if rest, ok := strings.CutPrefix(text, "UNKNOWN"); ok && (rest == "" || rest[0] == ' ') {
		// What follows UNKNOWN is the balancer's business: ignored.
		return Header{Version: 1, Local: true}, nil
	}
	fields := strings.Split(text, " ")
	if len(fields) != 5 {
		return Header{}, fmt.Errorf("%w: version 1 line %q: want \"PROXY TCP4|TCP6 SOURCE DESTINATION SPORT DPORT\" (single spaces) or \"PROXY UNKNOWN\"", ErrMalformed, line)
	}
	var want4 bool
	switch fields[0] {
	case "TCP4":
		want4 = true
	case "TCP6":
	default:
		return Header{}, fmt.Errorf("%w: version 1 line %q: protocol %q is not TCP4, TCP6 or UNKNOWN", ErrMalformed, line, fields[0])
	}
	src, err := v1Addr(fields[1], fields[3], want4)
	if err != nil {
		return Header{}, fmt.Errorf("%w: version 1 line %q: source: %w", ErrMalformed, line, err)
	}
	dst, err := v1Addr(fields[2], fields[4], want4)
	if err != nil {
		return Header{}, fmt.Errorf("%w: version 1 line %q: destination: %w", ErrMalformed, line, err)
	}
	return Header{Version: 1, Source: src, Destination: dst}, nil
}

// v1Addr parses an address and a port of a version 1 line, the address of
// the family the line names.
func v1Addr(host, port string, want4 bool) (netip.AddrPort, error) {
	ip, err := netip.ParseAddr(host)
	switch {
	case err != nil:
		return netip.AddrPort{}, fmt.Errorf("address %q is not an IP address", host)
	case ip.Zone() != "":
		return netip.AddrPort{}, fmt.Errorf("address %q has a zone", host)
	case want4 && !ip.Is4():
		return netip.AddrPort{}, fmt.Errorf("address %q is not IPv4, as TCP4 says", host)
	case !want4 && !ip.Is6():
		return netip.AddrPort{}, fmt.Errorf("address %q is not IPv6, as TCP6 says", host)
	}
	// Decimal, without sign or leading zeros, as the protocol writes it.
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || (len(port) > 1 && port[0] == '0') {
		return netip.AddrPort{}, fmt.Errorf("port %q is not a number from 0 to 65535", port)
	}
	return netip.AddrPortFrom(ip, uint16(p)), nil
}

// The version 2 commands, families and transports a TCP gateway uses.
const (
	v2Local     = 0x0
	v2Proxy     = 0x1
	familyUnset = 0x0
	familyInet  = 0x1
	familyInet6 = 0x2
	familyUnix  = 0x3
	transStream = 0x1
)

// readV2 reads the rest of a version 2 header whose first bytes are start:
// the preamble, then exactly the length it declares.
func readV2(r io.Reader, start []byte) (Header, error) {
	var pre [v2PreambleLength]byte
	n := copy(pre[:], start)
	if err := readFull(r, pre[n:]); err != nil {
		return Header{}, err
	}
	if !bytes.Equal(pre[:len(v2Signature)], v2Signature) {
		return Header{}, fmt.Errorf("%w: the connection begins with %q, not the version 2 signature", ErrMalformed, pre[:len(v2Signature)])
	}
	verCmd, famTrans := pre[12], pre[13]
	length := int(binary.BigEndian.Uint16(pre[14:16]))
	if ver := verCmd >> 4; ver != 2 {
		return Header{}, fmt.Errorf("%w: version 2 signature with version nibble %d, not 2", ErrMalformed, ver)
	}
	cmd := verCmd & 0x0f
	if cmd != v2Local && cmd != v2Proxy {
		return Header{}, fmt.Errorf("%w: version 2 command %#x is neither LOCAL (0x0) nor PROXY (0x1)", ErrMalformed, cmd)
	}
	if v2PreambleLength+length > MaxV2Length {
		return Header{}, fmt.Errorf("%w: version 2 header of %d bytes, more than the %d taken: have the balancer send fewer TLVs", ErrMalformed, v2PreambleLength+length, MaxV2Length)
	}
	body := make([]byte, length)
	if err := readFull(r, body); err != nil {
		return Header{}, err
	}
	h, err := parseV2(cmd, famTrans, body)
	h.Length = v2PreambleLength + length
	return h, err
}

// parseV2 parses what follows a version 2 preamble: the addresses of its
// family, then TLVs, which are checked for shape and skipped.
func parseV2(cmd, famTrans byte, body []byte) (Header, error) {
	family, trans := famTrans>>4, famTrans&0x0f
	if cmd == v2Local {
		// A health check of the balancer's own: the addresses, if any,
		// are to be ignored.
		return Header{Version: 2, Local: true}, nil
	}
	var size int
	switch family {
	case familyUnset:
		// The balancer does not know the client: keep the socket's, as
		// the protocol allows.
		return Header{Version: 2, Local: true}, nil
	case familyInet:
		size = 12
	case familyInet6:
		size = 36
	case familyUnix:
		return Header{}, fmt.Errorf("%w: version 2 header of a UNIX socket client: a TCP listener takes TCP clients only", ErrUnsupported)
	default:
		return Header{}, fmt.Errorf("%w: version 2 address family %#x is not AF_UNSPEC, AF_INET, AF_INET6 or AF_UNIX", ErrMalformed, family)
	}
	if trans != transStream {
		return Header{}, fmt.Errorf("%w: version 2 transport %#x is not STREAM (0x1): a TCP listener takes TCP clients only", ErrUnsupported, trans)
	}
	if len(body) < size {
		return Header{}, fmt.Errorf("%w: version 2 header declares %d bytes, fewer than the %d of its addresses", ErrMalformed, len(body), size)
	}
	if err := checkTLVs(body[size:]); err != nil {
		return Header{}, err
	}
	a := body[:size]
	h := Header{Version: 2}
	if family == familyInet {
		h.Source = netip.AddrPortFrom(netip.AddrFrom4([4]byte(a[0:4])), binary.BigEndian.Uint16(a[8:10]))
		h.Destination = netip.AddrPortFrom(netip.AddrFrom4([4]byte(a[4:8])), binary.BigEndian.Uint16(a[10:12]))
		return h, nil
	}
	h.Source = netip.AddrPortFrom(netip.AddrFrom16([16]byte(a[0:16])), binary.BigEndian.Uint16(a[32:34]))
	h.Destination = netip.AddrPortFrom(netip.AddrFrom16([16]byte(a[16:32])), binary.BigEndian.Uint16(a[34:36]))
	return h, nil
}

// checkTLVs checks that b is a whole number of TLVs (a type byte, a
// two-byte length, that many bytes), none of which is read further.
func checkTLVs(b []byte) error {
	for len(b) > 0 {
		if len(b) < 3 {
			return fmt.Errorf("%w: version 2 TLV cut short: %d bytes left, a TLV takes at least 3", ErrMalformed, len(b))
		}
		n := int(binary.BigEndian.Uint16(b[1:3]))
		if len(b) < 3+n {
			return fmt.Errorf("%w: version 2 TLV of type %#x declares %d bytes, only %d are left", ErrMalformed, b[0], n, len(b)-3)
		}
		b = b[3+n:]
	}
	return nil
}

// AppendV1 appends a version 1 header naming src and dst (of one family),
// or an UNKNOWN one when src is not valid. For tests, and for whoever
// writes headers for a tcpgate listener.
func AppendV1(b []byte, src, dst netip.AddrPort) []byte {
	if !src.IsValid() {
		return append(b, "PROXY UNKNOWN\r\n"...)
	}
	proto := "TCP6"
	if src.Addr().Is4() {
		proto = "TCP4"
	}
	return fmt.Appendf(b, "PROXY %s %s %s %d %d\r\n", proto, src.Addr(), dst.Addr(), src.Port(), dst.Port())
}

// AppendV2 appends a version 2 PROXY header naming src and dst (of one
// family), followed by tlvs (already encoded), or a LOCAL one when src is
// not valid.
func AppendV2(b []byte, src, dst netip.AddrPort, tlvs []byte) []byte {
	b = append(b, v2Signature...)
	if !src.IsValid() {
		b = append(b, 0x20|v2Local, 0)
		b = binary.BigEndian.AppendUint16(b, uint16(len(tlvs)))
		return append(b, tlvs...)
	}
	if src.Addr().Is4() {
		b = append(b, 0x20|v2Proxy, familyInet<<4|transStream)
		b = binary.BigEndian.AppendUint16(b, uint16(12+len(tlvs)))
		s, d := src.Addr().As4(), dst.Addr().As4()
		b = append(append(b, s[:]...), d[:]...)
	} else {
		b = append(b, 0x20|v2Proxy, familyInet6<<4|transStream)
		b = binary.BigEndian.AppendUint16(b, uint16(36+len(tlvs)))
		s, d := src.Addr().As16(), dst.Addr().As16()
		b = append(append(b, s[:]...), d[:]...)
	}
	b = binary.BigEndian.AppendUint16(b, src.Port())
	b = binary.BigEndian.AppendUint16(b, dst.Port())
	return append(b, tlvs...)
}
