// Package policy decides which addresses the gateway may bind and dial.
//
// Whoever reaches the control plane can open ports and make outbound
// connections from the gateway's host, so the engine asks a Policy before
// each: CheckListen before binding, ResolveDial before dialing. A refusal
// wraps ErrDenied, which the RPC layer answers with PermissionDenied and the
// error's message, which names the rule that refused.
//
// # Rules
//
// The flags --allow-listen, --allow-dial and --deny-dial each take a
// comma-separated list of rules, such as "127.0.0.1:1024-65535,*.corp:443".
// A rule is HOST[:PORTS]. HOST is one of
//
//	"*"              any host
//	10.1.2.3, ::1    an IP address; IPv6 in brackets when PORTS follow: [::1]:80
//	10.0.0.0/8       a CIDR; [fd00::/8]:443 with ports. The bits after the prefix
//	                 length must be zero: 10.1.2.3/8 is an error, not 10.0.0.0/8
//	db.internal      a host name, matched case-insensitively, a trailing dot ignored
//	*.example.com    the names under example.com (a.example.com, a.b.example.com),
//	                 not example.com itself
//
// and PORTS is "*" (all ports, the default when omitted), a port such as
// 5432, or an inclusive range such as 8000-9000. An IPv6 host with two
// colons or more and no brackets has no ports: "::1:80" is an address.
// IPv4-mapped IPv6 rules (::ffff:10.0.0.0/104) are read as IPv4
// (10.0.0.0/8); zones (fe80::1%eth0) are not allowed in rules. Rule.String
// gives a rule's canonical text, as in "[fd00::/8]:443" or "10.0.0.0/8:*".
//
// # Matching
//
// An address is matched without its zone and, when IPv4-mapped
// (::ffff:169.254.169.254), as the IPv4 address it maps, so neither slips
// around a rule. IP and CIDR rules match addresses, name rules match names,
// "*" matches both.
//
// Listeners are checked on the host the caller asked for, as given: a name
// such as "localhost" by name (it is not resolved), an IP by IP. The
// unspecified addresses 0.0.0.0 and :: (and "", which binds both) mean every
// address, so only "*", a rule naming them, or 0.0.0.0/0 or ::/0 matches
// them. Port 0, "any free port", passes the port check of a rule that allows
// the host, and then takes a free port inside that rule's ports
// (ListenPorts): a narrowed --allow-listen holds for port 0 too.
//
// Dials are checked on the addresses they will reach: ResolveDial resolves a
// name once, checks each address and returns the ones allowed, which the
// caller dials as they are. Resolving again to dial would let a name whose
// DNS answer changes in between (DNS rebinding) reach an address the policy
// refused. Name rules match the name the caller gave, so a --deny-dial name
// rule does not stop a dial of the same address by IP or another name: deny
// addresses with CIDRs. The built-in deny ranges (BuiltinDeny) keep the
// link-local and cloud metadata addresses, and the IPv6 encodings that may
// reach any IPv4 address, closed even under an --allow-dial "*"; only an
// allow rule inside the range, or one for the exact name dialed, opens
// them. A NAT64 (64:ff9b::/96) or 6to4 (2002::/16) address is refused too
// when the IPv4 address it embeds is. The unspecified addresses are never dialed: connecting to
// 0.0.0.0 or :: reaches this host, around any rule for loopback.
package policy

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// ErrDenied is wrapped by every refusal of CheckListen and ResolveDial; the
// error's message says which rule refused.
var ErrDenied = errors.New("denied by policy")

// DeniedError is a refusal of CheckListen or ResolveDial: it wraps
// ErrDenied and names the rule, so that a caller can say which rule to
// change without reading the message.
type DeniedError struct {
	msg string
	// Flag is the flag whose rule refused ("--deny-dial", "--allow-dial",
	// "--allow-listen"), or "" for a built-in rule.
	Flag string
	// Rule is the rule that refused ("169.254.0.0/16", "10.0.0.0/8:22"), or
	// "" when it is the absence of a matching --allow-* rule.
	Rule string
}

func (e *DeniedError) Error() string { return e.msg + ": " + ErrDenied.Error() }

func (e *DeniedError) Unwrap() error { return ErrDenied }

// refusal is why a dial is refused; the zero value allows it.
type refusal struct {
	why, flag, rule string
}

// Resolver looks up the addresses of a host name; *net.Resolver is one.
// network is "ip", for both IPv4 and IPv6 addresses.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

var _ Resolver = (*net.Resolver)(nil)

// BuiltinDeny are the dial ranges refused unless an allow rule names them
// specifically (see ResolveDial). A metadata service hands out the host's
// cloud credentials to anything that connects, so each provider's address
// is here, in both families where the provider publishes one:
//
//   - 169.254.0.0/16, IPv4 link-local, holding the metadata service of most
//     clouds at 169.254.169.254;
//   - fe80::/10, IPv6 link-local (OpenStack serves metadata on
//     fe80::a9fe:a9fe);
//   - fd00:ec2::254/128, the AWS IPv6 metadata service;
//   - 100.100.100.200/32, Alibaba Cloud's metadata service;
//   - fd00:c1::a9fe:a9fe/128, Oracle Cloud's IPv6 metadata service;
//   - fd00:a9fe:a9fe::1/128, Akamai (Linode) Cloud's IPv6 metadata service;
//   - 64:ff9b:1::/48, the NAT64 prefix for local use (RFC 8215): the IPv4
//     address it reaches sits where the operator's prefix length puts it,
//     so it cannot be read back and the whole prefix is closed;
//   - ::/96, the deprecated IPv4-compatible addresses (RFC 4291), which a
//     tunnel may carry to the IPv4 address they hold; :: and ::1 are not
//     IPv4-compatible addresses, and ::1 stays open.
//
// Addresses of the NAT64 prefix 64:ff9b::/96 and of 6to4, 2002::/16, are
// checked as the IPv4 address they embed too.
//
// The IPv6 metadata addresses are the providers' own: AWS's in "Retrieve
// instance metadata" (docs.aws.amazon.com, AWSEC2 user guide); Akamai's in
// "Access the Metadata service API" (techdocs.akamai.com, "169.254.169.254
// and fd00:a9fe:a9fe::1"); Oracle's in its OKE worker bootstrap
// (oracle-terraform-modules/terraform-oci-oke, modules/workers/
// cloudinit-oke.sh, which falls back to http://[fd00:c1::a9fe:a9fe]/opc/v2).
// No other provider's IPv6 metadata address could be confirmed from what
// the provider publishes, so none other is listed.
var BuiltinDeny = []netip.Prefix{
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("fe80::/10"),
	netip.MustParsePrefix("fd00:ec2::254/128"),
	netip.MustParsePrefix("100.100.100.200/32"),
	netip.MustParsePrefix("fd00:c1::a9fe:a9fe/128"),
	netip.MustParsePrefix("fd00:a9fe:a9fe::1/128"),
	netip.MustParsePrefix("64:ff9b:1::/48"),
	ipv4Compatible,
}

// nat64 is the well-known NAT64 prefix (RFC 6052): 64:ff9b::a9fe:a9fe
// reaches 169.254.169.254 through a NAT64 gateway.
var nat64 = netip.MustParsePrefix("64:ff9b::/96")

// sixToFour is the 6to4 prefix (RFC 3056): 2002:a9fe:a9fe::1 reaches
// 169.254.169.254 through a 6to4 relay, the IPv4 address in bits 16-47.
var sixToFour = netip.MustParsePrefix("2002::/16")

// ipv4Compatible holds the IPv4-compatible addresses (::a9fe:a9fe), and
// also ::1, which deniedDial leaves open.
var ipv4Compatible = netip.MustParsePrefix("::/96")

// builtinWhy says, in refusals, what each BuiltinDeny range is.
var builtinWhy = map[netip.Prefix]string{
	netip.MustParsePrefix("169.254.0.0/16"):         "link-local and cloud metadata",
	netip.MustParsePrefix("fe80::/10"):              "IPv6 link-local",
	netip.MustParsePrefix("fd00:ec2::254/128"):      "AWS IPv6 metadata",
	netip.MustParsePrefix("100.100.100.200/32"):     "Alibaba Cloud metadata",
	netip.MustParsePrefix("fd00:c1::a9fe:a9fe/128"): "Oracle Cloud IPv6 metadata",
	netip.MustParsePrefix("fd00:a9fe:a9fe::1/128"):  "Akamai Cloud IPv6 metadata",
	netip.MustParsePrefix("64:ff9b:1::/48"):         "NAT64 for local use, which may reach any IPv4 address",
	ipv4Compatible:                                  "IPv4-compatible, which may reach the IPv4 address it holds",
}

// defaultListen is the rule that applies when Policy.AllowListen is empty.
var defaultListen = Rule{kind: hostAny, lo: 1024, hi: 65535}

// Policy decides binds and dials. The zero value (and a nil *Policy) is the
// default policy: listeners on any host above port 1023, dials to anywhere
// outside BuiltinDeny. A Policy is safe for concurrent use as long as its
// fields are not changed.
type Policy struct {
	// AllowListen are the hosts and ports that may be bound. Empty means the
	// default, "*:1024-65535". Port 0 is allowed for every allowed host, and
	// takes a port of the host's rules (ListenPorts).
	AllowListen []Rule
	// AllowDial are the addresses that may be dialed. Empty means any address
	// outside BuiltinDeny.
	AllowDial []Rule
	// DenyDial are refused before AllowDial is consulted; a match refuses.
	// Empty refuses nothing beyond BuiltinDeny.
	DenyDial []Rule
	// Resolver resolves the names dialed. Nil means net.DefaultResolver.
	Resolver Resolver
}

// CheckListen reports whether host:port may be bound, returning nil or an
// error wrapping ErrDenied. host is what the caller asked for: "" (every
// address), an IP such as "0.0.0.0", "::" or "127.0.0.1", or a name such as
// "localhost"; see the package documentation for how it is matched. A port
// outside 0-65535 is refused. Port 0 passes when some rule allows the host;
// ListenPorts says which ports such a listener may then take.
func (p *Policy) CheckListen(host string, port int) error {
	addr := net.JoinHostPort(host, strconv.Itoa(port))
	if port < 0 || port > 65535 {
		return &DeniedError{msg: fmt.Sprintf("binding %s: port %d out of range 0-65535", addr, port)}
	}
	for _, r := range p.listenRulesFor(host) {
		if port == 0 || r.matchPort(uint16(port)) {
			return nil
		}
	}
	return &DeniedError{msg: fmt.Sprintf("binding %s: not allowed by --allow-listen %s", addr, p.listenRulesString()), Flag: "--allow-listen"}
}

// ListenPorts returns, for a listener on host asking for port 0, up to n
// distinct ports to try, in random order, from the ranges of the rules
// that allow host. It returns nil when a rule allows every port from 1024
// up, which includes the kernel's ephemeral range: the kernel's own pick is
// then allowed. It returns nil too when no rule allows host (CheckListen
// refuses it).
func (p *Policy) ListenPorts(host string, n int) []int {
	var ranges [][2]int
	total := 0
	for _, r := range p.listenRulesFor(host) {
		if r.lo <= 1024 && r.hi == 65535 {
			return nil
		}
		lo := max(int(r.lo), 1) // port 0 in a range is no port to bind
		if lo > int(r.hi) {
			continue
		}
		ranges = append(ranges, [2]int{lo, int(r.hi)})
		total += int(r.hi) - lo + 1
	}
	seen := make(map[int]bool, min(n, total))
	var out []int
	for tries := 0; len(out) < min(n, total) && tries < 4*n; tries++ {
		// Overlapping ranges make some ports likelier; that is harmless.
		i := rand.IntN(total)
		for _, rg := range ranges {
			if size := rg[1] - rg[0] + 1; i >= size {
				i -= size
				continue
			}
			if port := rg[0] + i; !seen[port] {
				seen[port] = true
				out = append(out, port)
			}
			break
		}
	}
	return out
}

// listenRulesFor returns the listen rules that allow host, whatever their
// ports.
func (p *Policy) listenRulesFor(host string) []Rule {
	rules := []Rule{defaultListen}
	if p != nil && len(p.AllowListen) > 0 {
		rules = p.AllowListen
	}
	h := host
	if len(h) > 1 && h[0] == '[' && h[len(h)-1] == ']' {
		h = h[1 : len(h)-1]
	}
	var addrs []netip.Addr
	var name string
	if h == "" {
		// Go binds "" to both families ([::] in dual-stack mode).
		addrs = []netip.Addr{netip.IPv4Unspecified(), netip.IPv6Unspecified()}
	} else if a, err := netip.ParseAddr(h); err == nil {
		addrs = []netip.Addr{a.WithZone("").Unmap()}
	} else {
		name = normalizeName(h)
	}
	var out []Rule
	for _, r := range rules {
		if r.matchName(name) || slices.ContainsFunc(addrs, r.matchAddr) {
			out = append(out, r)
		}
	}
	return out
}

// listenRulesString names the listen rules in force, for refusals.
func (p *Policy) listenRulesString() string {
	if p != nil && len(p.AllowListen) > 0 {
		return briefRules(p.AllowListen)
	}
	return fmt.Sprintf("%q (the default)", defaultListen)
}

// briefRules quotes a rule list for an error message, eliding after a few
// rules so that a long flag does not drown the message.
func briefRules(rules []Rule) string {
	const shown = 5
	var b strings.Builder
	for i, r := range rules[:min(len(rules), shown)] {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(r.String())
	}
	s := strconv.Quote(b.String())
	if len(rules) > shown {
		s += fmt.Sprintf(" (and %d more)", len(rules)-shown)
	}
	return s
}

// ResolveDial resolves address, "host:port" with a numeric port, once and
// returns the addresses that may be dialed, as "ip:port" strings (IPv6 in
// brackets) in the resolver's order without duplicates; the caller dials
// exactly these, so that the policy holds for what is dialed (a second
// resolution could answer differently). An IP host is not looked up; a name
// is, with ctx and the network "ip". IPv4-mapped addresses are returned as
// IPv4, which they reach; zones are kept.
//
// Each address is refused, in this order, when
//   - it is unspecified (0.0.0.0, ::, or an empty host), which reaches this
//     host;
//   - a DenyDial rule matches it (by IP or CIDR, or by the name the caller
//     gave) and the port;
//   - it lies in a BuiltinDeny range and no AllowDial rule opens it: a rule
//     whose IP or CIDR lies inside that range and matches the address, or a
//     rule for exactly the name the caller gave, matching the port in either
//     case ("*" and 0.0.0.0/0 do not open the range);
//   - it is a NAT64 (64:ff9b::/96) or 6to4 (2002::/16) address and the IPv4
//     address it embeds is refused by the two rules above;
//   - AllowDial is not empty and none of its rules matches it (by IP or
//     CIDR, or by name) and the port.
//
// When no address is left the error wraps ErrDenied and names the address
// and the rule that refused the first one, as in
//
//	dialing metadata.internal:80 (169.254.169.254): denied by the built-in rule "169.254.0.0/16" (link-local and cloud metadata); allow it with --allow-dial 169.254.169.254/32,*: denied by policy
//
// A malformed address or a failed lookup is returned wrapped, without
// ErrDenied; the error names the address and the host.
func (p *Policy) ResolveDial(ctx context.Context, address string) ([]string, error) {
	if p == nil {
		p = &Policy{}
	}
	host, portText, err := net.SplitHostPort(address)
	if err != nil {
		return nil, fmt.Errorf("dialing %s: %w", address, err)
	}
	port, err := parsePort(portText)
	if err != nil {
		return nil, fmt.Errorf("dialing %s: %w", address, err)
	}
	var addrs []netip.Addr
	var name string
	if host == "" {
		// Go dials the local system for an empty host.
		addrs = []netip.Addr{netip.IPv4Unspecified()}
	} else if a, err := netip.ParseAddr(host); err == nil {
		addrs = []netip.Addr{a}
	} else {
		name = normalizeName(host)
		r := p.Resolver
		if r == nil {
			r = net.DefaultResolver
		}
		if addrs, err = r.LookupNetIP(ctx, "ip", host); err != nil {
			return nil, fmt.Errorf("dialing %s: resolving %s: %w", address, host, err)
		}
		if len(addrs) == 0 {
			return nil, fmt.Errorf("dialing %s: resolving %s: no addresses", address, host)
		}
	}
	var out []string
	var refused netip.Addr
	var why refusal
	for _, a := range addrs {
		a = a.Unmap() // keeps the zone of an IPv6 address
		if reason := p.refuseDial(a.WithZone(""), name, port); reason.why != "" {
			if why.why == "" {
				refused, why = a, reason
			}
			continue
		}
		s := netip.AddrPortFrom(a, port).String()
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	if len(out) == 0 {
		what := address
		if a := refused.String(); a != host {
			what += " (" + a + ")"
		}
		return nil, &DeniedError{msg: fmt.Sprintf("dialing %s: %s", what, why.why), Flag: why.flag, Rule: why.rule}
	}
	return out, nil
}

// refuseDial returns why a dial of a (unmapped, without zone) port, reached
// through name ("" for an IP literal), is refused, or "" if it is allowed.
func (p *Policy) refuseDial(a netip.Addr, name string, port uint16) refusal {
	if !a.IsValid() {
		return refusal{why: "the resolver returned an invalid address"}
	}
	if a.IsUnspecified() {
		return refusal{why: fmt.Sprintf("denied by the built-in rule %q (the unspecified address, which reaches this host; dial a loopback address instead)", a), rule: a.String()}
	}
	if reason := p.deniedDial(a, name, port); reason.why != "" {
		return reason
	}
	if v4, through := embeddedIPv4(a); through != "" {
		if reason := p.deniedDial(v4, name, port); reason.why != "" {
			reason.why = fmt.Sprintf("%s reached through %s: %s", v4, through, reason.why)
			return reason
		}
	}
	if len(p.AllowDial) == 0 {
		return refusal{}
	}
	for _, r := range p.AllowDial {
		if r.matchPort(port) && (r.matchAddr(a) || r.matchName(name)) {
			return refusal{}
		}
	}
	return refusal{why: "not matched by any --allow-dial rule", flag: "--allow-dial"}
}

// embeddedIPv4 returns the IPv4 address that a reaches through a
// translator or relay, and the name of the mechanism, or "" when a embeds
// none that can be read back.
func embeddedIPv4(a netip.Addr) (netip.Addr, string) {
	b := a.As16()
	switch {
	case nat64.Contains(a):
		return netip.AddrFrom4([4]byte(b[12:])), "NAT64"
	case sixToFour.Contains(a):
		return netip.AddrFrom4([4]byte(b[2:6])), "6to4"
	}
	return netip.Addr{}, ""
}

// deniedDial returns why a --deny-dial rule or a BuiltinDeny range refuses
// a dial of a port through name, or "".
func (p *Policy) deniedDial(a netip.Addr, name string, port uint16) refusal {
	for _, r := range p.DenyDial {
		if r.matchPort(port) && (r.matchAddr(a) || r.matchName(name)) {
			return refusal{why: fmt.Sprintf("denied by --deny-dial rule %q", r), flag: "--deny-dial", rule: r.String()}
		}
	}
	for _, b := range BuiltinDeny {
		b = b.Masked()
		if b == ipv4Compatible && a == netip.IPv6Loopback() {
			continue // ::1 lies in ::/96 but is loopback, not IPv4-compatible
		}
		if b.Contains(a) && !p.opens(b, a, name, port) {
			why := ""
			if w := builtinWhy[b]; w != "" {
				why = " (" + w + ")"
			}
			fix := netip.PrefixFrom(a, a.BitLen()).String()
			if len(p.AllowDial) == 0 {
				// An allow list of this address alone would refuse all others.
				fix += ",*"
			}
			return refusal{why: fmt.Sprintf("denied by the built-in rule %q%s; allow it with --allow-dial %s", b, why, fix), rule: b.String()}
		}
	}
	return refusal{}
}

// opens reports whether an AllowDial rule opens the BuiltinDeny range b for
// a dial of a port through name: one whose IP or CIDR lies inside b and
// holds a, or one for exactly that name. A wider rule, up to "*", does not:
// the built-in ranges are closed unless named.
func (p *Policy) opens(b netip.Prefix, a netip.Addr, name string, port uint16) bool {
	for _, r := range p.AllowDial {
		if !r.matchPort(port) {
			continue
		}
		switch r.kind {
		case hostPrefix:
			if r.prefix.Bits() >= b.Bits() && b.Contains(r.prefix.Addr()) && r.prefix.Contains(a) {
				return true
			}
		case hostName:
			if name != "" && r.name == name {
				return true
			}
		}
	}
	return false
}
