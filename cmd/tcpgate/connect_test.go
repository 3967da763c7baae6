package main

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
)

// FuzzParseSize: --queue never panics, every error names the flag, the
// unit's case does not matter, and the bytes of what it accepts, printed
// as a bare number, parse back to the same size.
func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"1000", "64KiB", "1MiB", "1mib", "2MB", "0", "", "KiB", "1.5MiB", "-1", "18446744073709551615", "18446744073709551615KiB", " 1 MiB "} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := parseSize("--queue", s)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "--queue ") {
				t.Fatalf("%q: error %q does not name the flag", s, err)
			}
			return
		}
		if upper, err := parseSize("--queue", strings.ToUpper(s)); err != nil || upper != n {
			t.Fatalf("%q = %d, but %q = %d, %v", s, n, strings.ToUpper(s), upper, err)
		}
		if again, err := parseSize("--queue", strconv.FormatUint(n, 10)); err != nil || again != n {
			t.Fatalf("%q = %d, but %d parses to %d, %v", s, n, n, again, err)
		}
	})
}

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want uint64
		ok   bool
	}{
		{"1000", 1000, true}, {"64KiB", 64 << 10, true}, {"1MiB", 1 << 20, true}, {"1mib", 1 << 20, true},
		{"2MB", 2e6, true}, {"3kb", 3000, true}, {"1GiB", 1 << 30, true}, {"512B", 512, true}, {"0", 0, true},
		{"1 MiB", 1 << 20, true},
		{"", 0, false}, {"MiB", 0, false}, {"1.5MiB", 0, false}, {"-1", 0, false}, {"1XB", 0, false},
		{"1TiB", 0, false}, {"18446744073709551615KiB", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parseSize("--queue", tt.in)
			if !tt.ok {
				if err == nil {
					t.Fatalf("parseSize(%q) = %d, want an error", tt.in, got)
				}
				if want := `--queue "` + tt.in + `": want a size in bytes such as 1000, 64KiB or 1MiB`; err.Error() != want {
					t.Fatalf("parseSize(%q) error %q, want %q", tt.in, err, want)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("parseSize(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestParseBackoff(t *testing.T) {
	tests := []struct {
		in           string
		initial, max time.Duration
		err          string // a part of the error; "" for none
	}{
		{in: "100ms:30s", initial: 100 * time.Millisecond, max: 30 * time.Second},
		{in: "1s", initial: time.Second},
		{in: "x:30s", err: `--backoff "x:30s": the initial delay`},
		{in: "1s:y", err: `--backoff "1s:y": the longest delay`},
		{in: "", err: "want INITIAL[:MAX]"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			initial, maxDelay, err := parseBackoff(tt.in)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("parseBackoff(%q) error %v, want one with %q", tt.in, err, tt.err)
				}
				return
			}
			if err != nil || initial != tt.initial || maxDelay != tt.max {
				t.Fatalf("parseBackoff(%q) = %v, %v, %v; want %v, %v", tt.in, initial, maxDelay, err, tt.initial, tt.max)
			}
		})
	}
}

func TestParseHeartbeat(t *testing.T) {
	tests := []struct {
		in       string
		interval time.Duration
		text     string
		err      string
	}{
		{in: "10s:PING", interval: 10 * time.Second, text: "PING"},
		{in: "500ms:a:b", interval: 500 * time.Millisecond, text: "a:b"}, // the text may hold colons
		{in: "10s", err: `--heartbeat "10s": want INTERVAL:TEXT`},
		{in: "10s:", err: `--heartbeat "10s:": want INTERVAL:TEXT`},
		{in: "often:PING", err: `--heartbeat "often:PING": the interval`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			interval, text, err := parseHeartbeat(tt.in)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("parseHeartbeat(%q) error %v, want one with %q", tt.in, err, tt.err)
				}
				return
			}
			if err != nil || interval != tt.interval || text != tt.text {
				t.Fatalf("parseHeartbeat(%q) = %v, %q, %v; want %v, %q", tt.in, interval, text, err, tt.interval, tt.text)
			}
		})
	}
}

// TestConnectionLine: what connect prints for each outcome of the first
// attempt.
func TestConnectionLine(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		name string
		cn   *tcpgatev1.Connection
		want string
	}{
		{
			name: "open",
			cn: &tcpgatev1.Connection{ConnectionId: "feed", Address: "127.0.0.1:7000", RemoteAddress: "127.0.0.1:7000",
				State: tcpgatev1.ConnectionState_CONNECTION_STATE_OPEN, Generation: 1},
			want: "connection feed open to 127.0.0.1:7000 (generation 1)",
		},
		{
			name: "open by name",
			cn: &tcpgatev1.Connection{ConnectionId: "feed", Address: "localhost:7000", RemoteAddress: "[::1]:7000",
				State: tcpgatev1.ConnectionState_CONNECTION_STATE_OPEN, Generation: 3},
			want: "connection feed open to localhost:7000 at [::1]:7000 (generation 3)",
		},
		{
			name: "waiting",
			cn: &tcpgatev1.Connection{ConnectionId: "feed", Address: "127.0.0.1:7000", Attempts: 1,
				State: tcpgatev1.ConnectionState_CONNECTION_STATE_WAITING, LastError: "connection refused",
				NextAttemptAt: timestamppb.New(now.Add(87 * time.Millisecond))},
			want: "connection feed waiting to reconnect to 127.0.0.1:7000 in 87ms (1 failed attempt): connection refused",
		},
		{
			name: "connecting",
			cn: &tcpgatev1.Connection{ConnectionId: "feed", Address: "127.0.0.1:7000",
				State: tcpgatev1.ConnectionState_CONNECTION_STATE_CONNECTING},
			want: "connection feed connecting to 127.0.0.1:7000 (--timeout passed first; the gateway goes on trying)",
		},
		{
			name: "closed",
			cn: &tcpgatev1.Connection{ConnectionId: "feed", Address: "127.0.0.1:7000",
				State: tcpgatev1.ConnectionState_CONNECTION_STATE_CLOSED, LastError: "reset by peer"},
			want: "connection feed to 127.0.0.1:7000 closed: reset by peer",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := connectionLine(tt.cn, now); got != tt.want {
				t.Errorf("connectionLine = %q\nwant            %q", got, tt.want)
			}
		})
	}
}

// TestEventLineOutbound: subscribe's text line shows an outbound event's
// generation, a scheduled reconnect's attempt, delay and error, and a
// close's error.
func TestEventLineOutbound(t *testing.T) {
	at := timestamppb.New(time.Date(2026, 1, 2, 3, 4, 5, 0, time.Local))
	tests := []struct {
		name string
		e    *tcpgatev1.Event
		want string
	}{
		{
			name: "reconnect scheduled",
			e: &tcpgatev1.Event{Sequence: 9, Time: at, Kind: tcpgatev1.EventKind_EVENT_KIND_RECONNECT_SCHEDULED, ConnectionId: "feed",
				Generation: 2, Attempt: 3, Delay: durationpb.New(412345678 * time.Nanosecond), Error: "dial tcp 127.0.0.1:7000: connection refused"},
			want: `#9 03:04:05.000 reconnect_scheduled conn=feed gen=2 attempt=3 delay=412ms error="dial tcp 127.0.0.1:7000: connection refused"`,
		},
		{
			name: "closed with error",
			e: &tcpgatev1.Event{Sequence: 8, Time: at, Kind: tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED, ConnectionId: "feed",
				Generation: 2, RemoteAddress: "127.0.0.1:7000", CloseReason: tcpgatev1.CloseReason_CLOSE_REASON_HEARTBEAT_FAILED, Error: "no PONG within 1s"},
			want: `#8 03:04:05.000 connection_closed conn=feed gen=2 remote=127.0.0.1:7000 reason=heartbeat_failed error="no PONG within 1s"`,
		},
		{
			name: "data of a generation",
			e: &tcpgatev1.Event{Sequence: 7, Time: at, Kind: tcpgatev1.EventKind_EVENT_KIND_DATA, ConnectionId: "feed",
				Generation: 2, Text: "hello\n"},
			want: `#7 03:04:05.000 data conn=feed gen=2 6 bytes "hello\n"`,
		},
		{
			name: "sent data",
			e: &tcpgatev1.Event{Sequence: 6, Time: at, Kind: tcpgatev1.EventKind_EVENT_KIND_DATA, ConnectionId: "feed",
				Generation: 1, Direction: tcpgatev1.Direction_DIRECTION_SENT, Text: "LOGIN\n"},
			want: `#6 03:04:05.000 data conn=feed gen=1 sent 6 bytes "LOGIN\n"`,
		},
		{
			name: "accepted: no generation",
			e: &tcpgatev1.Event{Sequence: 5, Time: at, Kind: tcpgatev1.EventKind_EVENT_KIND_CONNECTION_OPENED, ListenerId: "demo",
				ConnectionId: "c-k3v7q2m5xa", RemoteAddress: "127.0.0.1:5000"},
			want: `#5 03:04:05.000 connection_opened listener=demo conn=c-k3v7q2m5xa remote=127.0.0.1:5000`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := eventLine(tt.e); got != tt.want {
				t.Errorf("eventLine = %s\nwant        %s", got, tt.want)
			}
		})
	}
}

// TestFlagOfField: every field of ConnectRequest the gateway may name in an
// error leads to the flag that sets it; a field of no flag to none.
func TestFlagOfField(t *testing.T) {
	for field, want := range map[string]string{
		"reconnect.initial_backoff": "--backoff",
		"reconnect.max_attempts":    "--max-attempts",
		"heartbeat.interval":        "--heartbeat",
		"heartbeat.expect.regex":    "--heartbeat-expect",
		"on_connect.text":           "--on-connect or --on-connect-hex",
		"on_connect.timeout":        "--expect-timeout",
		"framing.delimiter":         "--framing (--max-frame)",
		"framing.max_frame_bytes":   "--max-frame",
		"queue_while_down_bytes":    "--queue",
		"tls.ca_pem":                "--target-tls and its kin",
		"address":                   "HOST:PORT",
		"keep_alive.idle":           "--keepalive",
		"tcp_user_timeout":          "--user-timeout",
		"forward":                   "",
		"":                          "",
	} {
		if got := flagOfField(field); got != want {
			t.Errorf("flagOfField(%q) = %q, want %q", field, got, want)
		}
	}
}

// TestConnectRequest: each connect flag sets its field of ConnectRequest,
// and a flag left out leaves its field unset for the gateway's default.
func TestConnectRequest(t *testing.T) {
	ms := func(n int) *durationpb.Duration { return durationpb.New(time.Duration(n) * time.Millisecond) }
	prefix := func(s string) *tcpgatev1.ReplyMatch {
		return &tcpgatev1.ReplyMatch{Rule: &tcpgatev1.ReplyMatch_Prefix{Prefix: s}}
	}
	line := tcpgatev1.FramingMode_FRAMING_MODE_LINE
	tests := []struct {
		name string
		args []string
		want *tcpgatev1.ConnectRequest
	}{
		{name: "defaults", want: &tcpgatev1.ConnectRequest{Address: "a:1"}},
		{
			name: "framing and id",
			args: []string{"--id", "feed", "--framing", "line", "--max-frame", "4096"},
			want: &tcpgatev1.ConnectRequest{ConnectionId: "feed", Address: "a:1", Framing: &tcpgatev1.Framing{Mode: line, MaxFrameBytes: 4096}},
		},
		{
			name: "reconnect",
			args: []string{"--backoff", "50ms:2s", "--max-attempts", "7"},
			want: &tcpgatev1.ConnectRequest{Address: "a:1", Reconnect: &tcpgatev1.Reconnect{InitialBackoff: ms(50), MaxBackoff: ms(2000), MaxAttempts: 7}},
		},
		{
			name: "no reconnect",
			args: []string{"--no-reconnect"},
			want: &tcpgatev1.ConnectRequest{Address: "a:1", Reconnect: &tcpgatev1.Reconnect{Disabled: true}},
		},
		{
			name: "on-connect with its reply",
			args: []string{"--framing", "line", "--on-connect", "LOGIN x", "--framed", "--expect", "OK", "--expect-timeout", "3s"},
			want: &tcpgatev1.ConnectRequest{Address: "a:1", Framing: &tcpgatev1.Framing{Mode: line},
				OnConnect: &tcpgatev1.OnConnect{Payload: &tcpgatev1.OnConnect_Text{Text: "LOGIN x"}, Framed: true, Expect: prefix("OK"), Timeout: ms(3000)}},
		},
		{
			name: "on-connect bytes",
			args: []string{"--on-connect-hex", "00 01ff"},
			want: &tcpgatev1.ConnectRequest{Address: "a:1", OnConnect: &tcpgatev1.OnConnect{Payload: &tcpgatev1.OnConnect_Data{Data: []byte{0, 1, 0xff}}}},
		},
		{
			name: "heartbeat",
			args: []string{"--heartbeat", "10s:PING", "--heartbeat-expect", "PONG", "--framed"},
			want: &tcpgatev1.ConnectRequest{Address: "a:1", Heartbeat: &tcpgatev1.Heartbeat{Interval: ms(10000),
				Payload: &tcpgatev1.Heartbeat_Text{Text: "PING"}, Framed: true, Expect: prefix("PONG")}},
		},
		{
			name: "dead peers and the queue",
			args: []string{"--idle", "1m", "--keepalive", "30s:10s:3", "--user-timeout", "20s", "--queue", "64KiB", "--timeout", "2s"},
			want: &tcpgatev1.ConnectRequest{Address: "a:1", IdleTimeout: ms(60000), TcpUserTimeout: ms(20000), Timeout: ms(2000),
				KeepAlive: &tcpgatev1.TcpKeepAlive{Idle: ms(30000), Interval: ms(10000), Count: 3}, QueueWhileDownBytes: 64 << 10},
		},
		{
			name: "keep-alive off",
			args: []string{"--keepalive", "off"},
			want: &tcpgatev1.ConnectRequest{Address: "a:1", KeepAlive: &tcpgatev1.TcpKeepAlive{Disabled: true}},
		},
		{
			name: "keep-alive idle only",
			args: []string{"--keepalive", "45s"},
			want: &tcpgatev1.ConnectRequest{Address: "a:1", KeepAlive: &tcpgatev1.TcpKeepAlive{Idle: ms(45000)}},
		},
		{
			name: "placed on a node, taken over when it is lost",
			args: []string{"--node", "b", "--take-over"},
			want: &tcpgatev1.ConnectRequest{Address: "a:1", NodeId: "b", TakeOver: true},
		},
		{
			name: "target TLS",
			args: []string{"--target-tls", "--target-server-name", "plc.example", "--target-insecure"},
			want: &tcpgatev1.ConnectRequest{Address: "a:1", Tls: &tcpgatev1.DialTLS{ServerName: "plc.example", InsecureSkipVerify: true}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var o connectOptions
			fs := pflag.NewFlagSet("connect", pflag.ContinueOnError)
			o.addFlags(fs)
			if err := fs.Parse(tt.args); err != nil {
				t.Fatal(err)
			}
			got, err := o.request("a:1", fs.Changed)
			if err != nil {
				t.Fatalf("request: %v", err)
			}
			if !proto.Equal(got, tt.want) {
				t.Errorf("request(%q)\n = %v\nwant %v", tt.args, got, tt.want)
			}
		})
	}
}

func TestParseKeepAlive(t *testing.T) {
	for _, s := range []string{"", "x", "1s:y", "1s:2s:z", "1s:2s:3:4", "on"} {
		if ka, err := parseKeepAlive(s); err == nil || !strings.HasPrefix(err.Error(), `--keepalive "`+s+`"`) {
			t.Errorf("parseKeepAlive(%q) = %v, %v; want an error naming --keepalive and the value", s, ka, err)
		}
	}
}

// The placement flags that cannot go together are refused before any
// call, naming both.
func TestPlacementFlagsExclude(t *testing.T) {
	var co connectOptions
	fs := pflag.NewFlagSet("connect", pflag.ContinueOnError)
	co.addFlags(fs)
	if err := fs.Parse([]string{"--take-over", "--no-reconnect"}); err != nil {
		t.Fatal(err)
	}
	if _, err := co.request("a:1", fs.Changed); err == nil || !strings.Contains(err.Error(), "--take-over") || !strings.Contains(err.Error(), "--no-reconnect") {
		t.Errorf("connect --take-over --no-reconnect: %v, want an error naming both", err)
	}

	var lo listenOptions
	fs = pflag.NewFlagSet("listen", pflag.ContinueOnError)
	lo.addFlags(fs)
	if err := fs.Parse([]string{"--node", "b", "--every-node"}); err != nil {
		t.Fatal(err)
	}
	if _, err := lo.request("0", fs.Changed); err == nil || !strings.Contains(err.Error(), "--node") || !strings.Contains(err.Error(), "--every-node") {
		t.Errorf("listen --node b --every-node: %v, want an error naming both", err)
	}
	for _, args := range [][]string{{"--node", "b"}, {"--every-node"}} {
		var o listenOptions
		fs := pflag.NewFlagSet("listen", pflag.ContinueOnError)
		o.addFlags(fs)
		if err := fs.Parse(args); err != nil {
			t.Fatal(err)
		}
		req, err := o.request("0", fs.Changed)
		if err != nil || req.GetNodeId() != o.node || req.GetEveryNode() != o.everyNode || (req.GetNodeId() == "" && !req.GetEveryNode()) {
			t.Errorf("listen %q = %v, %v; want node_id or every_node set", args, req, err)
		}
	}
}
