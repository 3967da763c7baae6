package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// hostKind says what a rule's host matches.
type hostKind uint8

const (
	hostNone   hostKind = iota // the zero Rule: matches nothing
	hostAny                    // "*": every address and name
	hostPrefix                 // an IP or a CIDR
	hostName                   // one host name
	hostSuffix                 // "*.example.com": the names under example.com
)

// Rule is one entry of a rule list: a host pattern and a port range, parsed
// from text by ParseRule (see the package documentation for the syntax).
// Rules are comparable: two rules are == when they match the same hosts and
// ports, as the text is canonicalized. The zero Rule matches nothing.
type Rule struct {
	kind hostKind
	// prefix is the IP (a full-length prefix) or CIDR of a hostPrefix rule:
	// masked, without zone, IPv4-mapped IPv6 written as IPv4.
	prefix netip.Prefix
	// name is the name of a hostName rule, or the domain under which a
	// hostSuffix rule matches; lowercase, without a trailing dot.
	name string
	// lo and hi bound the ports matched, inclusive.
	lo, hi uint16
}

// ParseRule parses one rule, HOST[:PORTS]; surrounding white space is
// ignored. An error quotes the text and says what is wrong with it.
func ParseRule(s string) (Rule, error) {
	s = strings.TrimSpace(s)
	r, err := parseRule(s)
	if err != nil {
		return Rule{}, fmt.Errorf("rule %q: %w", s, err)
	}
	return r, nil
}

// ParseRules parses a comma-separated list of rules, such as the value of a
// flag; white space around entries is ignored. An empty (or blank) list is
// nil and no error; an empty entry is an error.
func ParseRules(list string) ([]Rule, error) {
	if strings.TrimSpace(list) == "" {
		return nil, nil
	}
	entries := strings.Split(list, ",")
	rules := make([]Rule, 0, len(entries))
	for i, e := range entries {
		if strings.TrimSpace(e) == "" {
			return nil, fmt.Errorf("rule list %q: entry %d is empty", list, i+1)
		}
		r, err := ParseRule(e)
		if err != nil {
			return nil, err
		}
		rules = append(rules, r)
	}
	return rules, nil
}

// String returns the rule's canonical text, which ParseRule parses back to
// the same rule: ports are always given ("*" for all), IPv6 hosts are
// bracketed, names are lowercase, and an IP is written without "/32" or
// "/128". The zero Rule is "<invalid rule>".
func (r Rule) String() string {
	var host string
	switch r.kind {
	case hostAny:
		host = "*"
	case hostPrefix:
		if r.prefix.IsSingleIP() {
			host = r.prefix.Addr().String()
		} else {
			host = r.prefix.String()
		}
		if r.prefix.Addr().Is6() {
			host = "[" + host + "]"
		}
	case hostName:
		host = r.name
	case hostSuffix:
		host = "*." + r.name
	default:
		return "<invalid rule>"
	}
	return host + ":" + r.portsString()
}

// portsString returns the PORTS part of the canonical text.
func (r Rule) portsString() string {
	switch {
	case r.lo == 0 && r.hi == 65535:
		return "*"
	case r.lo == r.hi:
		return strconv.Itoa(int(r.lo))
	default:
		return strconv.Itoa(int(r.lo)) + "-" + strconv.Itoa(int(r.hi))
	}
}

// matchPort reports whether port lies in r's port range.
func (r Rule) matchPort(port uint16) bool {
	return r.lo <= port && port <= r.hi
}

// matchAddr reports whether r's host matches a, which must be unmapped and
// without zone. The unspecified addresses (0.0.0.0, ::) mean "every address"
// to a listener, so only a rule for any host, one naming them exactly or a /0
// of their family matches them: 0.0.0.0/8 does not.
func (r Rule) matchAddr(a netip.Addr) bool {
	switch r.kind {
	case hostAny:
		return true
	case hostPrefix:
		if !r.prefix.Contains(a) {
			return false
		}
		return !a.IsUnspecified() || r.prefix.Bits() == 0 || r.prefix.IsSingleIP()
	}
	return false
}

// matchName reports whether r's host matches name, which must be
// normalized (see normalizeName). The empty name matches nothing.
func (r Rule) matchName(name string) bool {
	if name == "" {
		return false
	}
	switch r.kind {
	case hostAny:
		return true
	case hostName:
		return name == r.name
	case hostSuffix:
		return len(name) > len(r.name)+1 && strings.HasSuffix(name, r.name) && name[len(name)-len(r.name)-1] == '.'
	}
	return false
}

// normalizeName returns name as rules hold names: lowercase, without a
// trailing dot.
func normalizeName(name string) string {
	return strings.ToLower(strings.TrimSuffix(name, "."))
}

// parseRule parses trimmed text; its errors do not repeat the text.
func parseRule(s string) (Rule, error) {
	if s == "" {
		return Rule{}, errors.New("empty rule")
	}
	host, ports, hasPorts, bracketed, err := splitRule(s)
	if err != nil {
		return Rule{}, err
	}
	r := Rule{lo: 0, hi: 65535}
	if hasPorts {
		if r.lo, r.hi, err = parsePorts(ports); err != nil {
			return Rule{}, err
		}
	}
	if err := r.parseHost(host, bracketed); err != nil {
		return Rule{}, err
	}
	return r, nil
}

// splitRule cuts HOST[:PORTS]. An IPv6 host with ports is bracketed; an
// unbracketed host with two colons or more is IPv6 without ports, so
// "::1:80" is the address ::1:80, not port 80 of ::1.
func splitRule(s string) (host, ports string, hasPorts, bracketed bool, err error) {
	switch {
	case s[0] == '[':
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return "", "", false, false, errors.New(`missing "]" after an IPv6 host`)
		}
		host, rest := s[1:end], s[end+1:]
		if rest != "" {
			if rest[0] != ':' {
				return "", "", false, false, fmt.Errorf(`unexpected %q after "]": want ":PORTS" or nothing`, rest)
			}
			ports, hasPorts = rest[1:], true
		}
		s, bracketed = host, true
	case strings.Count(s, ":") >= 2:
	default:
		if i := strings.IndexByte(s, ':'); i >= 0 {
			s, ports, hasPorts = s[:i], s[i+1:], true
		}
	}
	if s == "" {
		return "", "", false, false, errors.New("empty host (use \"*\" for any host)")
	}
	if hasPorts && ports == "" {
		return "", "", false, false, errors.New(`no ports after ":" (use "*" for all ports)`)
	}
	return s, ports, hasPorts, bracketed, nil
}

// parsePorts parses "*", "PORT" or "LO-HI".
func parsePorts(s string) (lo, hi uint16, err error) {
	if s == "*" {
		return 0, 65535, nil
	}
	if l, h, ok := strings.Cut(s, "-"); ok {
		if lo, err = parsePort(l); err != nil {
			return 0, 0, err
		}
		if hi, err = parsePort(h); err != nil {
			return 0, 0, err
		}
		if lo > hi {
			return 0, 0, fmt.Errorf("port range %q ends before it starts", s)
		}
		return lo, hi, nil
	}
	lo, err = parsePort(s)
	return lo, lo, err
}

// parsePort parses a decimal port, 0 to 65535. Unlike strconv.Atoi it
// refuses signs, so every accepted text is digits only.
func parsePort(s string) (uint16, error) {
	if s == "" {
		return 0, errors.New("empty port in range")
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, fmt.Errorf("port %q is not a number (want \"*\", a port or a range such as 8000-9000)", s)
		}
	}
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil {
		return 0, fmt.Errorf("port %q out of range 0-65535", s)
	}
	return uint16(n), nil
}

// parseHost sets r's host from s: "*", an IP, a CIDR, a name or a wildcard
// name. bracketed says s was written in brackets, which only IPv6 may be.
func (r *Rule) parseHost(s string, bracketed bool) error {
	if s == "*" && !bracketed {
		r.kind = hostAny
		return nil
	}
	if strings.ContainsRune(s, '%') {
		return fmt.Errorf("host %q: zones are not allowed in rules (a rule without the zone matches every interface)", s)
	}
	var p netip.Prefix
	switch {
	case strings.ContainsRune(s, '/'):
		var err error
		if p, err = netip.ParsePrefix(s); err != nil {
			return fmt.Errorf("invalid CIDR %q: %w", s, err)
		}
		if m := p.Masked(); m != p {
			return fmt.Errorf("CIDR %q has bits set after the /%d (did you mean %s?)", s, p.Bits(), m)
		}
	case strings.ContainsRune(s, ':'):
		a, err := netip.ParseAddr(s)
		if err != nil {
			return fmt.Errorf("invalid IPv6 address %q: %w", s, err)
		}
		p = netip.PrefixFrom(a, a.BitLen())
	default:
		if a, err := netip.ParseAddr(s); err == nil {
			p = netip.PrefixFrom(a, a.BitLen())
			break
		}
		if bracketed {
			return fmt.Errorf("host %q: brackets are only for IPv6 hosts", s)
		}
		return r.parseName(s)
	}
	if bracketed && !p.Addr().Is6() {
		return fmt.Errorf("host %q: brackets are only for IPv6 hosts", s)
	}
	// Addresses are unmapped before they are matched, so an IPv4-mapped rule
	// must be one for IPv4 or it would never match.
	if p.Addr().Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	r.kind, r.prefix = hostPrefix, p
	return nil
}

// parseName sets r's host from a host name or a wildcard name.
func (r *Rule) parseName(s string) error {
	r.kind = hostName
	name := s
	if rest, ok := strings.CutPrefix(s, "*."); ok {
		if rest == "" || rest == "." {
			return fmt.Errorf("wildcard %q names no domain (want \"*.example.com\")", s)
		}
		r.kind, name = hostSuffix, rest
	}
	name = normalizeName(name)
	if err := checkName(name); err != nil {
		return fmt.Errorf("host name %q: %w", s, err)
	}
	r.name = name
	return nil
}

// checkName checks a normalized host name: dot-separated labels of letters,
// digits, '-' and '_' (found in service names), within DNS's length limits.
// The last label must not look numeric: resolvers such as glibc's read
// "10.1" or "0x7f.1" as IPv4 addresses, and a name rule for them would never
// match the address they stand for. This also catches "host:80,443", where
// "443" is a rule of its own.
func checkName(name string) error {
	if len(name) > 253 {
		return fmt.Errorf("longer than 253 characters")
	}
	labels := strings.Split(name, ".")
	for _, l := range labels {
		if l == "" {
			return errors.New("empty label")
		}
		if len(l) > 63 {
			return fmt.Errorf("label %q longer than 63 characters", l)
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				if c == '*' {
					return errors.New(`"*" may only be the whole host or start a wildcard "*.domain"`)
				}
				return fmt.Errorf("invalid character %q", c)
			}
		}
	}
	if last := labels[len(labels)-1]; numeric(last) {
		return fmt.Errorf("ends in the number %q, so it is neither an IP address nor a host name (one rule per port: HOST:80,HOST:443)", last)
	}
	return nil
}

// numeric reports whether a label reads as a number: decimal, or hex with
// "0x".
func numeric(label string) bool {
	digits := label
	if h, ok := strings.CutPrefix(label, "0x"); ok {
		digits = h
		if digits == "" {
			return true
		}
		return strings.Trim(digits, "0123456789abcdef") == ""
	}
	return strings.Trim(digits, "0123456789") == ""
}
