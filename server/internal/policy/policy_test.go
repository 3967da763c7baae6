package policy_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/tcpgate/tcpgate/server/internal/policy"
)

func TestParseRule(t *testing.T) {
	tests := []struct {
		in   string
		want string // the canonical text
	}{
		{"*", "*:*"},
		{"*:*", "*:*"},
		{"*:443", "*:443"},
		{"10.1.2.3", "10.1.2.3:*"},
		{"10.1.2.3:5432", "10.1.2.3:5432"},
		{"10.1.2.3/32", "10.1.2.3:*"},
		{"::1", "[::1]:*"},
		{"[::1]", "[::1]:*"},
		{"[::1]:80", "[::1]:80"},
		{"[0:0::1]:80", "[::1]:80"},
		{"::1:80", "[::1:80]:*"}, // two colons: an address, not a port
		{"10.0.0.0/8", "10.0.0.0/8:*"},
		{"10.0.0.0/8:*", "10.0.0.0/8:*"},
		{"0.0.0.0/0", "0.0.0.0/0:*"},
		{"fd00::/8", "[fd00::/8]:*"},
		{"[fd00::/8]:443", "[fd00::/8]:443"},
		{"[FD00::/8]:443", "[fd00::/8]:443"},
		{"::ffff:169.254.169.254", "169.254.169.254:*"},
		{"[::ffff:169.254.0.0/112]:80", "169.254.0.0/16:80"},
		{"db.internal", "db.internal:*"},
		{"DB.Internal.:5432", "db.internal:5432"},
		{"_sip._tcp.example.com:5060", "_sip._tcp.example.com:5060"},
		{"localhost", "localhost:*"},
		{"*.example.com", "*.example.com:*"},
		{"*.Example.COM.:8000-9000", "*.example.com:8000-9000"},
		{"host:8000-9000", "host:8000-9000"},
		{"host:0-65535", "host:*"},
		{"host:80-80", "host:80"},
		{"host:0", "host:0"},
		{"host:65535", "host:65535"},
		{"host:080", "host:80"},
		{"  10.0.0.1:80\t", "10.0.0.1:80"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			r, err := policy.ParseRule(tt.in)
			if err != nil {
				t.Fatalf("ParseRule(%q): %v", tt.in, err)
			}
			if got := r.String(); got != tt.want {
				t.Fatalf("ParseRule(%q).String() = %q, want %q", tt.in, got, tt.want)
			}
			again, err := policy.ParseRule(r.String())
			if err != nil || again != r {
				t.Fatalf("ParseRule(%q) = %v, %v; want the same rule", r.String(), again, err)
			}
		})
	}
}

func TestParseRuleErrors(t *testing.T) {
	tests := []struct {
		in   string
		want string // in the error, after the quoted text
	}{
		{"", "empty rule"},
		{"   ", "empty rule"},
		{"10.0.0.0/33", "invalid CIDR"},
		{"10.1.2.3/8", "did you mean 10.0.0.0/8?"},
		{"fd00::1/8", "did you mean fd00::/8?"},
		{"host:70000", `port "70000" out of range 0-65535`},
		{"host:9000-8000", `port range "9000-8000" ends before it starts`},
		{"host:8000-", "empty port"},
		{"host:-8000", "empty port"},
		{"host:", "no ports"},
		{"host:http", `port "http" is not a number`},
		{"host:+80", `port "+80" is not a number`},
		{"host:80,443", `port "80,443" is not a number`},
		{"[::1", `missing "]"`},
		{"[::1]80", `unexpected "80" after "]"`},
		{"[::1]:", "no ports"},
		{"[10.0.0.1]:80", "brackets are only for IPv6"},
		{"[db.internal]:80", "brackets are only for IPv6"},
		{"[*]:80", "brackets are only for IPv6"},
		{"1.2.3.4:80:90", "invalid IPv6 address"},
		{"fe80::1%eth0", "zones are not allowed"},
		{"a b", "invalid character ' '"},
		{":80", "empty host"},
		{"[]:80", "empty host"},
		{"*.", "names no domain"},
		{"*..", "names no domain"},
		{"*.*.com", `"*" may only be the whole host`},
		{"db*.com", `"*" may only be the whole host`},
		{"a..b", "empty label"},
		{".", "empty label"},
		{"443", `ends in the number "443"`},
		{"10.1", `ends in the number "1"`},
		{"host.0x7f", "ends in the number"},
		{"*.10.0.0", "ends in the number"},
		{strings.Repeat("a", 64) + ".com", "longer than 63"},
		{strings.Repeat("a.", 127) + "com", "longer than 253"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			r, err := policy.ParseRule(tt.in)
			if err == nil {
				t.Fatalf("ParseRule(%q) = %v, want an error", tt.in, r)
			}
			quoted := "rule " + strconv.Quote(strings.TrimSpace(tt.in)) + ": "
			if msg := err.Error(); !strings.HasPrefix(msg, quoted) || !strings.Contains(msg, tt.want) {
				t.Fatalf("ParseRule(%q) error %q, want it to start with %q and contain %q", tt.in, msg, quoted, tt.want)
			}
		})
	}
}

func TestParseRules(t *testing.T) {
	tests := []struct {
		name, in string
		want     []string // canonical texts; nil for none
		err      string
	}{
		{name: "empty", in: ""},
		{name: "blank", in: " \t "},
		{name: "one", in: "10.0.0.0/8", want: []string{"10.0.0.0/8:*"}},
		{name: "flag example", in: "127.0.0.1:1024-65535,*.corp:443", want: []string{"127.0.0.1:1024-65535", "*.corp:443"}},
		{name: "spaces around entries", in: " [::1]:80 , db.internal ,*", want: []string{"[::1]:80", "db.internal:*", "*:*"}},
		{name: "empty entry", in: "a,,b", err: `rule list "a,,b": entry 2 is empty`},
		{name: "trailing comma", in: "a,", err: `rule list "a,": entry 2 is empty`},
		{name: "port list", in: "db:80,443", err: `rule "443": host name "443": ends in the number`},
		{name: "bad entry", in: "a, 10.0.0.0/33", err: `rule "10.0.0.0/33": invalid CIDR`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rules, err := policy.ParseRules(tt.in)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("ParseRules(%q) = %v, %v; want an error containing %q", tt.in, rules, err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseRules(%q): %v", tt.in, err)
			}
			if tt.want == nil && rules != nil {
				t.Fatalf("ParseRules(%q) = %#v, want nil", tt.in, rules)
			}
			var got []string
			for _, r := range rules {
				got = append(got, r.String())
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("ParseRules(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

// rules parses a rule list for a test.
func rules(t *testing.T, list string) []policy.Rule {
	t.Helper()
	rs, err := policy.ParseRules(list)
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

func TestRuleZero(t *testing.T) {
	p := policy.Policy{AllowListen: []policy.Rule{{}}}
	if err := p.CheckListen("127.0.0.1", 8080); !errors.Is(err, policy.ErrDenied) {
		t.Fatalf("the zero Rule allowed a listener: %v", err)
	}
	if got := (policy.Rule{}).String(); got != "<invalid rule>" {
		t.Fatalf("Rule{}.String() = %q", got)
	}
}

func TestCheckListen(t *testing.T) {
	const custom = "127.0.0.1:1024-65535,*.corp:443"
	type check struct {
		host string
		port int
		ok   bool
	}
	tests := []struct {
		name   string
		allow  string
		checks []check
	}{
		{"default", "", []check{
			{"", 1023, false}, {"", 1024, true}, {"", 0, true}, {"", 65535, true},
			{"0.0.0.0", 80, false}, {"0.0.0.0", 8080, true}, {"::", 8080, true},
			{"127.0.0.1", 1, false}, {"127.0.0.1", 1024, true}, {"localhost", 8080, true},
			{"", -1, false}, {"", 65536, false},
		}},
		{"custom", custom, []check{
			{"127.0.0.1", 8080, true}, {"127.0.0.1", 1024, true}, {"127.0.0.1", 80, false},
			{"127.0.0.1", 0, true}, {"::ffff:127.0.0.1", 8080, true}, {"[127.0.0.1]", 8080, true},
			{"10.0.0.1", 8080, false}, {"0.0.0.0", 8080, false}, {"", 8080, false}, {"::", 8080, false},
			{"localhost", 8080, false}, // names are matched as given, not resolved
			{"a.corp", 443, true}, {"A.b.CORP.", 443, true}, {"a.corp", 0, true},
			{"a.corp", 444, false}, {"corp", 443, false}, {"acorp", 443, false}, {"a.xcorp", 443, false},
		}},
		{"cidr", "10.0.0.0/8", []check{
			{"10.1.2.3", 80, true}, {"::ffff:10.1.2.3", 80, true}, {"11.0.0.1", 80, false},
			{"0.0.0.0", 80, false}, {"", 80, false}, {"ten.example", 80, false},
		}},
		{"unspecified needs a rule naming it", "0.0.0.0/8,[::/1]", []check{
			{"0.0.0.0", 8080, false}, {"", 8080, false}, {"::", 8080, false},
			{"0.1.2.3", 8080, true}, {"::1", 8080, true},
		}},
		{"IPv4 /0", "0.0.0.0/0", []check{
			{"0.0.0.0", 80, true}, {"", 80, true}, {"192.0.2.1", 80, true}, {"::", 80, false}, {"::1", 80, false},
		}},
		{"IPv6 /0", "::/0", []check{
			{"::", 80, true}, {"", 80, true}, {"::1", 80, true}, {"0.0.0.0", 80, false},
		}},
		{"exact 0.0.0.0", "0.0.0.0:9000", []check{
			{"0.0.0.0", 9000, true}, {"", 9000, true}, {"0.0.0.0", 9001, false}, {"127.0.0.1", 9000, false},
		}},
		{"any host", "*:8000", []check{
			{"", 8000, true}, {"0.0.0.0", 8000, true}, {"::", 8000, true}, {"localhost", 8000, true},
			{"192.0.2.1", 8000, true}, {"", 8001, false}, {"", 0, true},
		}},
		{"IPv6", "[::1]:8000,[fe80::/10]", []check{
			{"::1", 8000, true}, {"[::1]", 8000, true}, {"::1", 8001, false},
			{"fe80::1%eth0", 80, true}, {"fe80::1", 80, true}, {"fd00::1", 80, false},
		}},
		{"name", "localhost", []check{
			{"localhost", 80, true}, {"LocalHost.", 80, true}, {"127.0.0.1", 80, false}, {"a.localhost", 80, false},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := &policy.Policy{AllowListen: rules(t, tt.allow)}
			for _, c := range tt.checks {
				err := p.CheckListen(c.host, c.port)
				if c.ok && err != nil {
					t.Errorf("CheckListen(%q, %d): %v, want it allowed", c.host, c.port, err)
				}
				if !c.ok && !errors.Is(err, policy.ErrDenied) {
					t.Errorf("CheckListen(%q, %d) = %v, want ErrDenied", c.host, c.port, err)
				}
			}
		})
	}
}

// TestListenPorts: port 0 under a narrowed --allow-listen takes its port
// from the ranges of the rules allowing the host, never the kernel's pick.
func TestListenPorts(t *testing.T) {
	tests := []struct {
		name, allow, host string
		n                 int
		ranges            [][2]int // nil: the kernel may pick
		want              int      // ports returned
	}{
		{name: "default", host: "127.0.0.1", n: 8},
		{name: "every port from 1024", allow: "127.0.0.1:1024-65535", host: "127.0.0.1", n: 8},
		{name: "every port", allow: "*", host: "127.0.0.1", n: 8},
		{name: "one range", allow: "127.0.0.1:20000-20009", host: "127.0.0.1", n: 64, ranges: [][2]int{{20000, 20009}}, want: 10},
		{name: "fewer asked than the range", allow: "127.0.0.1:20000-29999", host: "127.0.0.1", n: 5, ranges: [][2]int{{20000, 29999}}, want: 5},
		{name: "two rules for the host", allow: "127.0.0.1:7000,10.0.0.0/8:9000-9001,127.0.0.0/8:8000-8001", host: "127.0.0.1", n: 64,
			ranges: [][2]int{{7000, 7000}, {8000, 8001}}, want: 3},
		{name: "a rule for another host that covers all", allow: "10.0.0.1,127.0.0.1:7000", host: "127.0.0.1", n: 64,
			ranges: [][2]int{{7000, 7000}}, want: 1},
		{name: "port 0 alone is no port", allow: "127.0.0.1:0", host: "127.0.0.1", n: 8, ranges: [][2]int{}, want: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := &policy.Policy{AllowListen: rules(t, tt.allow)}
			got := p.ListenPorts(tt.host, tt.n)
			if tt.ranges == nil {
				if got != nil {
					t.Fatalf("ListenPorts = %v, want nil (the kernel picks)", got)
				}
				return
			}
			if len(got) != tt.want {
				t.Fatalf("ListenPorts = %v: %d ports, want %d", got, len(got), tt.want)
			}
			seen := map[int]bool{}
			for _, port := range got {
				if seen[port] {
					t.Errorf("port %d twice in %v", port, got)
				}
				seen[port] = true
				in := false
				for _, r := range tt.ranges {
					in = in || r[0] <= port && port <= r[1]
				}
				if !in {
					t.Errorf("port %d outside %v", port, tt.ranges)
				}
				if err := p.CheckListen(tt.host, port); err != nil {
					t.Errorf("ListenPorts gave %d, which CheckListen refuses: %v", port, err)
				}
			}
		})
	}
}

func TestCheckListenMessage(t *testing.T) {
	tests := []struct {
		name, allow string
		host        string
		port        int
		want        string
	}{
		{"default", "", "", 80, `binding :80: not allowed by --allow-listen "*:1024-65535" (the default): denied by policy`},
		{"custom", "127.0.0.1:1024-65535,*.corp:443", "127.0.0.1", 80,
			`binding 127.0.0.1:80: not allowed by --allow-listen "127.0.0.1:1024-65535,*.corp:443": denied by policy`},
		{"IPv6", "[::1]:8000", "::1", 80, `binding [::1]:80: not allowed by --allow-listen "[::1]:8000": denied by policy`},
		{"long list", "a,b,c,d,e,f,g", "h", 80, `binding h:80: not allowed by --allow-listen "a:*,b:*,c:*,d:*,e:*" (and 2 more): denied by policy`},
		{"bad port", "", "", 70000, `binding :70000: port 70000 out of range 0-65535: denied by policy`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := policy.Policy{AllowListen: rules(t, tt.allow)}
			err := p.CheckListen(tt.host, tt.port)
			if err == nil || err.Error() != tt.want {
				t.Fatalf("CheckListen(%q, %d) = %v, want %q", tt.host, tt.port, err, tt.want)
			}
		})
	}
}

func TestNilPolicy(t *testing.T) {
	var p *policy.Policy
	if err := p.CheckListen("", 8080); err != nil {
		t.Errorf("nil Policy refused a default listener: %v", err)
	}
	if err := p.CheckListen("", 80); !errors.Is(err, policy.ErrDenied) {
		t.Errorf("nil Policy allowed port 80: %v", err)
	}
	if got, err := p.ResolveDial(context.Background(), "127.0.0.1:80"); err != nil || !slices.Equal(got, []string{"127.0.0.1:80"}) {
		t.Errorf("nil Policy ResolveDial = %q, %v", got, err)
	}
	if _, err := p.ResolveDial(context.Background(), "169.254.169.254:80"); !errors.Is(err, policy.ErrDenied) {
		t.Errorf("nil Policy allowed the metadata address: %v", err)
	}
}

// ctxKey marks the context a test passes, to see that it reaches the
// resolver.
type ctxKey struct{}

// fakeResolver answers from a map, keyed by the host as asked, and records
// its calls.
type fakeResolver struct {
	t     *testing.T
	addrs map[string][]netip.Addr
	calls []string
}

// errLookup is what fakeResolver returns for names it does not know.
var errLookup = errors.New("no such host")

func (f *fakeResolver) LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error) {
	f.calls = append(f.calls, host)
	if network != "ip" {
		f.t.Errorf("LookupNetIP(%q, %q): want the network \"ip\"", network, host)
	}
	if ctx.Value(ctxKey{}) != "test" {
		f.t.Errorf("LookupNetIP(%q): not called with the caller's context", host)
	}
	a, ok := f.addrs[host]
	if !ok {
		return nil, errLookup
	}
	return a, nil
}

// addrs parses IP addresses for a test.
func addrs(s ...string) []netip.Addr {
	var out []netip.Addr
	for _, a := range s {
		out = append(out, netip.MustParseAddr(a))
	}
	return out
}

// names is what the fake DNS of TestResolveDial answers.
var names = map[string][]netip.Addr{
	"metadata.internal": addrs("169.254.169.254"),
	"other.internal":    addrs("169.254.169.254"),
	"evil.example":      addrs("169.254.169.254"),
	"two.example":       addrs("169.254.169.254", "93.184.216.34"),
	"mixed.example":     addrs("10.0.0.1", "192.0.2.1"),
	"dup.example":       addrs("192.0.2.7", "::ffff:192.0.2.7", "192.0.2.7", "2001:db8::7"),
	"mapped.example":    addrs("::ffff:169.254.169.254"),
	"zone.example":      addrs("fe80::1%eth0"),
	"zero.example":      addrs("0.0.0.0"),
	"a.evil.example":    addrs("192.0.2.66"),
	"DB.internal.":      addrs("192.0.2.10"),
	"db.internal":       addrs("192.0.2.10"),
	"pg.internal":       addrs("10.0.0.5"),
	"empty.example":     {},
	"sixtofour.example": addrs("2002:a9fe:a9fe::1"),
}

func TestResolveDial(t *testing.T) {
	tests := []struct {
		name        string
		allow, deny string
		address     string
		want        []string // nil: refused
		err         string   // the whole message of a refusal, or a part if it ends in "..."
	}{
		// The default policy.
		{name: "loopback", address: "127.0.0.1:80", want: []string{"127.0.0.1:80"}},
		{name: "IPv6 loopback", address: "[::1]:80", want: []string{"[::1]:80"}},
		{name: "mapped loopback", address: "[::ffff:127.0.0.1]:80", want: []string{"127.0.0.1:80"}},
		{name: "metadata", address: "169.254.169.254:80",
			err: `dialing 169.254.169.254:80: denied by the built-in rule "169.254.0.0/16" (link-local and cloud metadata); allow it with --allow-dial 169.254.169.254/32,*: denied by policy`},
		{name: "IPv6 link-local", address: "[fe80::1]:80",
			err: `dialing [fe80::1]:80: denied by the built-in rule "fe80::/10" (IPv6 link-local); allow it with --allow-dial fe80::1/128,*: denied by policy`},
		{name: "IPv6 link-local with zone", address: "[fe80::1%eth0]:80",
			err: `dialing [fe80::1%eth0]:80: denied by the built-in rule "fe80::/10" (IPv6 link-local); allow it with --allow-dial fe80::1/128,*: denied by policy`},
		{name: "mapped metadata", address: "[::ffff:169.254.169.254]:80",
			err: `dialing [::ffff:169.254.169.254]:80 (169.254.169.254): denied by the built-in rule "169.254.0.0/16" (link-local and cloud metadata); allow it with --allow-dial 169.254.169.254/32,*: denied by policy`},
		{name: "AWS IPv6 metadata", address: "[fd00:ec2::254]:80",
			err: `dialing [fd00:ec2::254]:80: denied by the built-in rule "fd00:ec2::254/128" (AWS IPv6 metadata); allow it with --allow-dial fd00:ec2::254/128,*: denied by policy`},
		{name: "next to AWS IPv6 metadata", address: "[fd00:ec2::253]:80", want: []string{"[fd00:ec2::253]:80"}},
		{name: "Alibaba metadata", address: "100.100.100.200:80",
			err: `dialing 100.100.100.200:80: denied by the built-in rule "100.100.100.200/32" (Alibaba Cloud metadata); allow it with --allow-dial 100.100.100.200/32,*: denied by policy`},
		{name: "metadata through NAT64", address: "[64:ff9b::a9fe:a9fe]:80",
			err: `dialing [64:ff9b::a9fe:a9fe]:80: 169.254.169.254 reached through NAT64: denied by the built-in rule "169.254.0.0/16"...`},
		{name: "denied CIDR through NAT64", deny: "10.0.0.0/8", address: "[64:ff9b::a01:203]:80",
			err: `dialing [64:ff9b::a01:203]:80: 10.1.2.3 reached through NAT64: denied by --deny-dial rule "10.0.0.0/8:*": denied by policy`},
		{name: "public address through NAT64", address: "[64:ff9b::c000:201]:80", want: []string{"[64:ff9b::c000:201]:80"}},
		{name: "NAT64 allowed by an IPv6 rule", allow: "[64:ff9b::/96]", address: "[64:ff9b::c000:201]:80", want: []string{"[64:ff9b::c000:201]:80"}},
		{name: "metadata through 6to4", address: "[2002:a9fe:a9fe::1]:80",
			err: `dialing [2002:a9fe:a9fe::1]:80: 169.254.169.254 reached through 6to4: denied by the built-in rule "169.254.0.0/16" (link-local and cloud metadata); allow it with --allow-dial 169.254.169.254/32,*: denied by policy`},
		{name: "Alibaba metadata through 6to4", address: "[2002:6464:64c8:1::5]:80",
			err: `dialing [2002:6464:64c8:1::5]:80: 100.100.100.200 reached through 6to4: denied by the built-in rule "100.100.100.200/32"...`},
		{name: "denied CIDR through 6to4", deny: "10.0.0.0/8", address: "[2002:a01:203::]:80",
			err: `dialing [2002:a01:203::]:80: 10.1.2.3 reached through 6to4: denied by --deny-dial rule "10.0.0.0/8:*": denied by policy`},
		{name: "public address through 6to4", address: "[2002:c000:201::1]:80", want: []string{"[2002:c000:201::1]:80"}},
		{name: "6to4 allowed by an IPv6 rule", allow: "[2002::/16]", address: "[2002:c000:201::1]:80", want: []string{"[2002:c000:201::1]:80"}},
		{name: "6to4 metadata not opened by an IPv6 rule", allow: "[2002::/16]", address: "[2002:a9fe:a9fe::]:80", err: `... reached through 6to4: denied by the built-in rule "169.254.0.0/16"...`},
		{name: "6to4 metadata opened by its IPv4 rule", allow: "169.254.169.254/32,*", address: "[2002:a9fe:a9fe::]:80", want: []string{"[2002:a9fe:a9fe::]:80"}},
		{name: "NAT64 local use", address: "[64:ff9b:1::a9fe:a9fe]:80",
			err: `dialing [64:ff9b:1::a9fe:a9fe]:80: denied by the built-in rule "64:ff9b:1::/48" (NAT64 for local use, which may reach any IPv4 address); allow it with --allow-dial 64:ff9b:1::a9fe:a9fe/128,*: denied by policy`},
		{name: "NAT64 local use, other embedding", address: "[64:ff9b:1:a9fe:a9:fe00::]:80", err: `... denied by the built-in rule "64:ff9b:1::/48"...`},
		{name: "NAT64 local use, public address", address: "[64:ff9b:1::c000:201]:80", err: `... denied by the built-in rule "64:ff9b:1::/48"...`},
		{name: "next to NAT64 local use", address: "[64:ff9b:2::c000:201]:80", want: []string{"[64:ff9b:2::c000:201]:80"}},
		{name: "NAT64 local use opened by its range", allow: "[64:ff9b:1::/48]:80", address: "[64:ff9b:1::c000:201]:80", want: []string{"[64:ff9b:1::c000:201]:80"}},
		{name: "IPv4-compatible metadata", address: "[::169.254.169.254]:80",
			err: `dialing [::169.254.169.254]:80 (::a9fe:a9fe): denied by the built-in rule "::/96" (IPv4-compatible, which may reach the IPv4 address it holds); allow it with --allow-dial ::a9fe:a9fe/128,*: denied by policy`},
		{name: "IPv4-compatible public address", address: "[::c000:201]:80", err: `dialing [::c000:201]:80: denied by the built-in rule "::/96"...`},
		{name: "IPv4-compatible, low address", address: "[::2]:80", err: `dialing [::2]:80: denied by the built-in rule "::/96"...`},
		{name: "IPv4-compatible not opened by ::/0", allow: "::/0", address: "[::c000:201]:80", err: `... denied by the built-in rule "::/96"...`},
		{name: "IPv4-compatible opened by its address", allow: "[::c000:201]", address: "[::c000:201]:80", want: []string{"[::c000:201]:80"}},
		{name: "IPv6 loopback allowed under ::/0", allow: "::/0", address: "[::1]:80", want: []string{"[::1]:80"}},
		{name: "next to IPv4-compatible", address: "[::1:0:0:1]:80", want: []string{"[::1:0:0:1]:80"}},
		{name: "Oracle IPv6 metadata", address: "[fd00:c1::a9fe:a9fe]:80",
			err: `dialing [fd00:c1::a9fe:a9fe]:80: denied by the built-in rule "fd00:c1::a9fe:a9fe/128" (Oracle Cloud IPv6 metadata); allow it with --allow-dial fd00:c1::a9fe:a9fe/128,*: denied by policy`},
		{name: "Akamai IPv6 metadata", address: "[fd00:a9fe:a9fe::1]:80",
			err: `dialing [fd00:a9fe:a9fe::1]:80: denied by the built-in rule "fd00:a9fe:a9fe::1/128" (Akamai Cloud IPv6 metadata); allow it with --allow-dial fd00:a9fe:a9fe::1/128,*: denied by policy`},
		{name: "name of 6to4 metadata", address: "sixtofour.example:80",
			err: `dialing sixtofour.example:80 (2002:a9fe:a9fe::1): 169.254.169.254 reached through 6to4: denied by the built-in rule "169.254.0.0/16"...`},
		{name: "name of metadata", address: "metadata.internal:80",
			err: `dialing metadata.internal:80 (169.254.169.254): denied by the built-in rule "169.254.0.0/16" (link-local and cloud metadata); allow it with --allow-dial 169.254.169.254/32,*: denied by policy`},
		{name: "name of mapped metadata", address: "mapped.example:80",
			err: `dialing mapped.example:80 (169.254.169.254): denied by the built-in rule "169.254.0.0/16"...`},
		{name: "name of link-local with zone", address: "zone.example:80",
			err: `dialing zone.example:80 (fe80::1%eth0): denied by the built-in rule "fe80::/10"...`},
		{name: "name of denied and allowed", address: "two.example:443", want: []string{"93.184.216.34:443"}},
		{name: "duplicates", address: "dup.example:80", want: []string{"192.0.2.7:80", "[2001:db8::7]:80"}},
		{name: "unspecified", address: "0.0.0.0:80",
			err: `dialing 0.0.0.0:80: denied by the built-in rule "0.0.0.0" (the unspecified address, which reaches this host; dial a loopback address instead): denied by policy`},
		{name: "empty host", address: ":80", err: `dialing :80 (0.0.0.0): denied by the built-in rule "0.0.0.0"...`},
		{name: "IPv6 unspecified", address: "[::]:80", err: `dialing [::]:80: denied by the built-in rule "::"...`},
		{name: "mapped unspecified", address: "[::ffff:0.0.0.0]:80", err: `dialing [::ffff:0.0.0.0]:80 (0.0.0.0): denied by the built-in rule "0.0.0.0"...`},
		{name: "name of unspecified", address: "zero.example:80", err: `dialing zero.example:80 (0.0.0.0): denied by the built-in rule "0.0.0.0"...`},

		// Deny rules.
		{name: "deny CIDR", deny: "10.0.0.0/8", address: "10.1.2.3:22",
			err: `dialing 10.1.2.3:22: denied by --deny-dial rule "10.0.0.0/8:*": denied by policy`},
		{name: "deny CIDR, mapped", deny: "10.0.0.0/8", address: "[::ffff:10.1.2.3]:22",
			err: `dialing [::ffff:10.1.2.3]:22 (10.1.2.3): denied by --deny-dial rule "10.0.0.0/8:*": denied by policy`},
		{name: "deny CIDR, outside", deny: "10.0.0.0/8", address: "11.0.0.1:22", want: []string{"11.0.0.1:22"}},
		{name: "deny CIDR, name resolving to it", deny: "10.0.0.0/8", address: "pg.internal:5432",
			err: `dialing pg.internal:5432 (10.0.0.5): denied by --deny-dial rule "10.0.0.0/8:*": denied by policy`},
		{name: "deny CIDR, name resolving to it and another", deny: "10.0.0.0/8", address: "mixed.example:80", want: []string{"192.0.2.1:80"}},
		{name: "deny IPv6 CIDR", deny: "2001:db8::/32", address: "[2001:db8::1]:80",
			err: `dialing [2001:db8::1]:80: denied by --deny-dial rule "[2001:db8::/32]:*": denied by policy`},
		{name: "deny wildcard name", deny: "*.evil.example", address: "a.evil.example:80",
			err: `dialing a.evil.example:80 (192.0.2.66): denied by --deny-dial rule "*.evil.example:*": denied by policy`},
		{name: "deny wildcard name, not the domain", deny: "*.evil.example", address: "dup.example:80", want: []string{"192.0.2.7:80", "[2001:db8::7]:80"}},
		{name: "deny name, any case and trailing dot", deny: "db.internal:5432", address: "DB.internal.:5432",
			err: `dialing DB.internal.:5432 (192.0.2.10): denied by --deny-dial rule "db.internal:5432": denied by policy`},
		{name: "deny name, other port", deny: "db.internal:5432", address: "db.internal:80", want: []string{"192.0.2.10:80"}},
		{name: "deny name, by IP", deny: "db.internal", address: "192.0.2.10:80", want: []string{"192.0.2.10:80"}},
		{name: "deny port", deny: "*:22", address: "127.0.0.1:22", err: `dialing 127.0.0.1:22: denied by --deny-dial rule "*:22": denied by policy`},
		{name: "deny port, other port", deny: "*:22", address: "127.0.0.1:23", want: []string{"127.0.0.1:23"}},
		{name: "deny range, start", deny: "10.0.0.0/8:8000-9000", address: "10.0.0.1:8000", err: `... denied by --deny-dial rule "10.0.0.0/8:8000-9000": denied by policy`},
		{name: "deny range, end", deny: "10.0.0.0/8:8000-9000", address: "10.0.0.1:9000", err: `... denied by --deny-dial rule "10.0.0.0/8:8000-9000": denied by policy`},
		{name: "deny range, below", deny: "10.0.0.0/8:8000-9000", address: "10.0.0.1:7999", want: []string{"10.0.0.1:7999"}},
		{name: "deny range, above", deny: "10.0.0.0/8:8000-9000", address: "10.0.0.1:9001", want: []string{"10.0.0.1:9001"}},
		{name: "deny names first refusing rule", deny: "10.0.0.0/8,10.1.0.0/16", address: "10.1.0.1:80", err: `... denied by --deny-dial rule "10.0.0.0/8:*": denied by policy`},
		{name: "deny before allow", allow: "10.0.0.0/8", deny: "10.1.0.0/16", address: "10.1.0.1:80", err: `... denied by --deny-dial rule "10.1.0.0/16:*": denied by policy`},
		{name: "deny before allow, outside", allow: "10.0.0.0/8", deny: "10.1.0.0/16", address: "10.2.0.1:80", want: []string{"10.2.0.1:80"}},
		{name: "deny before an allow that opens metadata", allow: "169.254.169.254/32", deny: "169.254.0.0/16", address: "169.254.169.254:80",
			err: `... denied by --deny-dial rule "169.254.0.0/16:*": denied by policy`},

		// Allow lists.
		{name: "allow CIDR", allow: "10.0.0.0/8:5432,db.internal:5432", address: "10.1.1.1:5432", want: []string{"10.1.1.1:5432"}},
		{name: "allow CIDR, other port", allow: "10.0.0.0/8:5432,db.internal:5432", address: "10.1.1.1:80",
			err: `dialing 10.1.1.1:80: not matched by any --allow-dial rule: denied by policy`},
		{name: "allow CIDR, outside", allow: "10.0.0.0/8:5432,db.internal:5432", address: "192.0.2.1:5432",
			err: `dialing 192.0.2.1:5432: not matched by any --allow-dial rule: denied by policy`},
		{name: "allow by name", allow: "10.0.0.0/8:5432,db.internal:5432", address: "db.internal:5432", want: []string{"192.0.2.10:5432"}},
		{name: "allow by resolved IP", allow: "10.0.0.0/8:5432,db.internal:5432", address: "pg.internal:5432", want: []string{"10.0.0.5:5432"}},
		{name: "allow name, not by IP", allow: "db.internal", address: "192.0.2.10:80", err: `... not matched by any --allow-dial rule: denied by policy`},
		{name: "allow wildcard", allow: "*.example", address: "dup.example:80", want: []string{"192.0.2.7:80", "[2001:db8::7]:80"}},
		{name: "allow any does not open metadata", allow: "*", address: "169.254.169.254:80",
			err: `dialing 169.254.169.254:80: denied by the built-in rule "169.254.0.0/16" (link-local and cloud metadata); allow it with --allow-dial 169.254.169.254/32: denied by policy`},
		{name: "allow any, by name", allow: "*", address: "evil.example:80",
			err: `dialing evil.example:80 (169.254.169.254): denied by the built-in rule "169.254.0.0/16" (link-local and cloud metadata); allow it with --allow-dial 169.254.169.254/32: denied by policy`},
		{name: "allow 0.0.0.0/0 does not open metadata", allow: "0.0.0.0/0", address: "169.254.169.254:80", err: `... denied by the built-in rule "169.254.0.0/16"...`},
		{name: "allow ::/0 does not open link-local", allow: "::/0", address: "[fe80::1]:80", err: `... denied by the built-in rule "fe80::/10"...`},
		{name: "allow a wider CIDR does not open metadata", allow: "169.254.0.0/15", address: "169.254.169.254:80", err: `... denied by the built-in rule "169.254.0.0/16"...`},
		{name: "allow fd00::/8 does not open AWS metadata", allow: "fd00::/8", address: "[fd00:ec2::254]:80", err: `... denied by the built-in rule "fd00:ec2::254/128"...`},
		{name: "allow metadata IP", allow: "169.254.169.254/32,*", address: "169.254.169.254:80", want: []string{"169.254.169.254:80"}},
		{name: "allow metadata IP, by name", allow: "169.254.169.254", address: "evil.example:80", want: []string{"169.254.169.254:80"}},
		{name: "allow metadata IP, mapped", allow: "169.254.169.254", address: "[::ffff:169.254.169.254]:80", want: []string{"169.254.169.254:80"}},
		{name: "allow metadata IP, rest of range", allow: "169.254.169.254/32,*", address: "169.254.1.1:80", err: `... denied by the built-in rule "169.254.0.0/16"...`},
		{name: "allow metadata IP, and the rest", allow: "169.254.169.254/32,*", address: "192.0.2.1:80", want: []string{"192.0.2.1:80"}},
		{name: "allow metadata IP alone", allow: "169.254.169.254/32", address: "192.0.2.1:80", err: `... not matched by any --allow-dial rule: denied by policy`},
		{name: "allow metadata IP, other port", allow: "169.254.169.254:443", address: "169.254.169.254:80", err: `... denied by the built-in rule "169.254.0.0/16"...`},
		{name: "allow link-local range", allow: "169.254.0.0/16", address: "169.254.1.1:80", want: []string{"169.254.1.1:80"}},
		{name: "allow IPv6 link-local, zone kept", allow: "[fe80::/10]", address: "zone.example:80", want: []string{"[fe80::1%eth0]:80"}},
		{name: "allow AWS IPv6 metadata", allow: "[fd00:ec2::254]:80", address: "[fd00:ec2::254]:80", want: []string{"[fd00:ec2::254]:80"}},
		{name: "allow exact name opens metadata", allow: "metadata.internal:80", address: "metadata.internal:80", want: []string{"169.254.169.254:80"}},
		{name: "allow exact name, another name", allow: "metadata.internal:80", address: "other.internal:80", err: `... denied by the built-in rule "169.254.0.0/16"...`},
		{name: "allow wildcard name does not open metadata", allow: "*.internal", address: "metadata.internal:80", err: `... denied by the built-in rule "169.254.0.0/16"...`},
		{name: "allow does not open unspecified", allow: "0.0.0.0,*", address: "0.0.0.0:80", err: `... denied by the built-in rule "0.0.0.0"...`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := &fakeResolver{t: t, addrs: names}
			p := policy.Policy{AllowDial: rules(t, tt.allow), DenyDial: rules(t, tt.deny), Resolver: res}
			ctx := context.WithValue(context.Background(), ctxKey{}, "test")
			got, err := p.ResolveDial(ctx, tt.address)
			host, _, _ := net.SplitHostPort(tt.address)
			if _, err := netip.ParseAddr(host); err != nil && host != "" {
				if len(res.calls) != 1 {
					t.Errorf("resolved %q %d times, want once", host, len(res.calls))
				}
			} else if len(res.calls) != 0 {
				t.Errorf("looked up %q for an IP address", res.calls)
			}
			if tt.want != nil {
				if err != nil || !slices.Equal(got, tt.want) {
					t.Fatalf("ResolveDial(%q) = %q, %v; want %q", tt.address, got, err, tt.want)
				}
				return
			}
			if !errors.Is(err, policy.ErrDenied) {
				t.Fatalf("ResolveDial(%q) = %q, %v; want ErrDenied", tt.address, got, err)
			}
			if got != nil {
				t.Errorf("ResolveDial(%q) returned %q with its error", tt.address, got)
			}
			if msg := err.Error(); !matchElided(msg, tt.err) {
				t.Fatalf("ResolveDial(%q) error\n%q, want\n%q", tt.address, msg, tt.err)
			}
		})
	}
}

// matchElided reports whether msg is pattern, where each "..." in pattern
// stands for any text.
func matchElided(msg, pattern string) bool {
	parts := strings.Split(pattern, "...")
	if len(parts) == 1 {
		return msg == pattern
	}
	first, last := parts[0], parts[len(parts)-1]
	if !strings.HasPrefix(msg, first) || !strings.HasSuffix(msg[len(first):], last) {
		return false
	}
	msg = msg[len(first) : len(msg)-len(last)]
	for _, p := range parts[1 : len(parts)-1] {
		i := strings.Index(msg, p)
		if i < 0 {
			return false
		}
		msg = msg[i+len(p):]
	}
	return true
}

func TestResolveDialErrors(t *testing.T) {
	tests := []struct {
		address string
		want    string
		is      error
	}{
		{"unknown.example:80", "dialing unknown.example:80: resolving unknown.example: no such host", errLookup},
		{"empty.example:80", "dialing empty.example:80: resolving empty.example: no addresses", nil},
		{"db.internal", "dialing db.internal: address db.internal: missing port in address", nil},
		{"db.internal:http", `dialing db.internal:http: port "http" is not a number`, nil},
		{"db.internal:70000", `dialing db.internal:70000: port "70000" out of range 0-65535`, nil},
	}
	for _, tt := range tests {
		t.Run(tt.address, func(t *testing.T) {
			p := policy.Policy{Resolver: &fakeResolver{t: t, addrs: names}}
			ctx := context.WithValue(context.Background(), ctxKey{}, "test")
			got, err := p.ResolveDial(ctx, tt.address)
			if err == nil || !strings.HasPrefix(err.Error(), tt.want) {
				t.Fatalf("ResolveDial(%q) = %q, %v; want an error starting %q", tt.address, got, err, tt.want)
			}
			if errors.Is(err, policy.ErrDenied) {
				t.Errorf("ResolveDial(%q) error %q wraps ErrDenied", tt.address, err)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("ResolveDial(%q) error %q does not wrap %q", tt.address, err, tt.is)
			}
		})
	}
}

// rebinder answers each lookup with the next of its answers, as a DNS server
// rebinding a name would.
type rebinder struct {
	answers [][]netip.Addr
	calls   int
}

func (r *rebinder) LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error) {
	a := r.answers[min(r.calls, len(r.answers)-1)]
	r.calls++
	return a, nil
}

func TestResolveDialResolvesOnce(t *testing.T) {
	r := &rebinder{answers: [][]netip.Addr{addrs("192.0.2.1"), addrs("169.254.169.254")}}
	p := policy.Policy{Resolver: r}
	got, err := p.ResolveDial(context.Background(), "rebind.example:80")
	if err != nil || !slices.Equal(got, []string{"192.0.2.1:80"}) {
		t.Fatalf("ResolveDial = %q, %v; want the first answer", got, err)
	}
	if r.calls != 1 {
		t.Fatalf("resolved %d times, want once", r.calls)
	}
}

func TestResolveDialCanceled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := (&policy.Policy{}).ResolveDial(ctx, "tcpgate-policy-test.invalid:80")
	if !errors.Is(err, context.Canceled) || errors.Is(err, policy.ErrDenied) {
		t.Fatalf("ResolveDial with a canceled context: %v, want context.Canceled", err)
	}
}

func TestResolveDialSystemResolver(t *testing.T) {
	p := policy.Policy{}
	got, err := p.ResolveDial(context.Background(), "localhost:80")
	if err != nil || len(got) == 0 {
		t.Fatalf("ResolveDial(localhost:80) = %q, %v", got, err)
	}
	for _, a := range got {
		if a != "127.0.0.1:80" && a != "[::1]:80" {
			t.Errorf("localhost resolved to %q, want loopback", a)
		}
	}

	p.DenyDial = rules(t, "127.0.0.0/8,::1/128")
	got, err = p.ResolveDial(context.Background(), "localhost:80")
	if !errors.Is(err, policy.ErrDenied) {
		t.Fatalf("ResolveDial(localhost:80) with loopback denied = %q, %v; want ErrDenied", got, err)
	}
	msg := err.Error()
	if !strings.HasPrefix(msg, "dialing localhost:80 (") ||
		!strings.Contains(msg, `denied by --deny-dial rule "127.0.0.0/8:*"`) && !strings.Contains(msg, `denied by --deny-dial rule "[::1]:*"`) {
		t.Fatalf("error %q does not name the address and the deny rule", msg)
	}
}
