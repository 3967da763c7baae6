package rpc

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server/internal/conn"
	"github.com/tcpgate/tcpgate/server/internal/event"
	"github.com/tcpgate/tcpgate/server/internal/framing"
	"github.com/tcpgate/tcpgate/server/internal/listener"
)

// wantInvalid fails t unless err is InvalidArgument and its message contains
// every one of parts.
func wantInvalid(t *testing.T, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want InvalidArgument mentioning %q", parts)
	}
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.InvalidArgument {
		t.Fatalf("got %v, want status InvalidArgument", err)
	}
	for _, p := range parts {
		if !strings.Contains(st.Message(), p) {
			t.Errorf("message %q does not mention %q", st.Message(), p)
		}
	}
}

func TestFramingRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		in   *tcpgatev1.Framing
		// want is what framingToProto gives back: defaults filled in.
		want *tcpgatev1.Framing
		mode framing.Mode
	}{
		{
			name: "nil is raw with the default limit",
			in:   nil,
			want: &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_RAW, MaxFrameBytes: framing.DefaultMaxFrameBytes},
			mode: framing.Raw,
		},
		{
			name: "unspecified is raw",
			in:   &tcpgatev1.Framing{},
			want: &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_RAW, MaxFrameBytes: framing.DefaultMaxFrameBytes},
			mode: framing.Raw,
		},
		{
			name: "raw",
			in:   &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_RAW, MaxFrameBytes: 512},
			want: &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_RAW, MaxFrameBytes: 512},
			mode: framing.Raw,
		},
		{
			name: "line",
			in:   &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE},
			want: &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE, MaxFrameBytes: framing.DefaultMaxFrameBytes},
			mode: framing.Line,
		},
		{
			name: "delimiter",
			in:   &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_DELIMITER, Delimiter: []byte{0, 0xff}, MaxFrameBytes: 100},
			want: &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_DELIMITER, Delimiter: []byte{0, 0xff}, MaxFrameBytes: 100},
			mode: framing.Delimiter,
		},
		{
			name: "length prefix defaults to 4 bytes big-endian",
			in:   &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LENGTH_PREFIX},
			want: &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LENGTH_PREFIX, PrefixBytes: 4, MaxFrameBytes: framing.DefaultMaxFrameBytes},
			mode: framing.LengthPrefix,
		},
		{
			name: "length prefix 2 bytes little-endian",
			in:   &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LENGTH_PREFIX, PrefixBytes: 2, LittleEndian: true},
			want: &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LENGTH_PREFIX, PrefixBytes: 2, LittleEndian: true, MaxFrameBytes: framing.DefaultMaxFrameBytes},
			mode: framing.LengthPrefix,
		},
		{
			name: "fixed",
			in:   &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_FIXED, FixedSize: 16},
			want: &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_FIXED, FixedSize: 16, MaxFrameBytes: framing.DefaultMaxFrameBytes},
			mode: framing.Fixed,
		},
		{
			name: "fields of other modes are not echoed back",
			in:   &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE, Delimiter: []byte(";"), FixedSize: 3, LittleEndian: true},
			want: &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE, MaxFrameBytes: framing.DefaultMaxFrameBytes},
			mode: framing.Line,
		},
		{
			name: "max_frame_bytes at the cap",
			in:   &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_RAW, MaxFrameBytes: MaxFrameLimit},
			want: &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_RAW, MaxFrameBytes: MaxFrameLimit},
			mode: framing.Raw,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := framingFromProto("framing", tt.in, MaxFrameLimit)
			if err != nil {
				t.Fatalf("framingFromProto: %v", err)
			}
			if c.Mode != tt.mode {
				t.Errorf("mode = %v, want %v", c.Mode, tt.mode)
			}
			got := framingToProto(c)
			if !proto.Equal(got, tt.want) {
				t.Errorf("framingToProto = %v, want %v", got, tt.want)
			}
			// What the API shows must be accepted back as the same framing.
			again, err := framingFromProto("framing", got, MaxFrameLimit)
			if err != nil {
				t.Fatalf("framingFromProto of its own output: %v", err)
			}
			if back := framingToProto(again); !proto.Equal(back, got) {
				t.Errorf("second round trip = %v, want %v", back, got)
			}
		})
	}
}

func TestFramingFromProtoErrors(t *testing.T) {
	tests := []struct {
		name  string
		field string
		in    *tcpgatev1.Framing
		want  []string
	}{
		{"unknown mode", "framing", &tcpgatev1.Framing{Mode: 99}, []string{"framing.mode", "99"}},
		{"max_frame_bytes over the cap", "framing",
			&tcpgatev1.Framing{MaxFrameBytes: MaxFrameLimit + 1}, []string{"framing.max_frame_bytes", "3145728", "3145729"}},
		{"fixed_size over the cap", "framing",
			&tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_FIXED, FixedSize: MaxFrameLimit + 1}, []string{"framing.fixed_size"}},
		{"delimiter missing", "framing",
			&tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_DELIMITER}, []string{"framing.delimiter"}},
		{"delimiter missing in await_reply", "await_reply.framing",
			&tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_DELIMITER}, []string{"await_reply.framing.delimiter"}},
		{"max_frame_bytes over the cap in await_reply", "await_reply.framing",
			&tcpgatev1.Framing{MaxFrameBytes: 1 << 30}, []string{"await_reply.framing.max_frame_bytes"}},
		{"unknown mode in await_reply", "await_reply.framing",
			&tcpgatev1.Framing{Mode: -1}, []string{"await_reply.framing.mode"}},
		{"prefix of 3 bytes", "framing",
			&tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LENGTH_PREFIX, PrefixBytes: 3}, []string{"framing.prefix_bytes", "3"}},
		{"prefix of 3 bytes in await_reply", "await_reply.framing",
			&tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LENGTH_PREFIX, PrefixBytes: 3}, []string{"await_reply.framing.prefix_bytes"}},
		{"fixed without a size", "framing",
			&tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_FIXED}, []string{"framing.fixed_size"}},
		{"fixed larger than max_frame_bytes", "framing",
			&tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_FIXED, FixedSize: 10, MaxFrameBytes: 5}, []string{"framing.fixed_size", "framing.max_frame_bytes"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := framingFromProto(tt.field, tt.in, MaxFrameLimit)
			wantInvalid(t, err, tt.want...)
		})
	}
}

func TestDurationFromProto(t *testing.T) {
	const def = 7 * time.Second
	tests := []struct {
		name    string
		in      *durationpb.Duration
		want    time.Duration
		wantErr []string
	}{
		{"unset is the default", nil, def, nil},
		{"zero is the default", &durationpb.Duration{}, def, nil},
		{"positive", durationpb.New(1500 * time.Millisecond), 1500 * time.Millisecond, nil},
		{"one nanosecond", &durationpb.Duration{Nanos: 1}, time.Nanosecond, nil},
		{"negative", durationpb.New(-time.Second), 0, []string{"drain_timeout", "negative", "-1s"}},
		{"negative nanos only", &durationpb.Duration{Nanos: -5}, 0, []string{"drain_timeout", "negative"}},
		{"mixed signs", &durationpb.Duration{Seconds: 1, Nanos: -1}, 0, []string{"drain_timeout"}},
		{"nanos out of range", &durationpb.Duration{Nanos: 1_000_000_000}, 0, []string{"drain_timeout"}},
		{"seconds out of range", &durationpb.Duration{Seconds: 400_000_000_000}, 0, []string{"drain_timeout"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := durationFromProto("drain_timeout", tt.in, def)
			if tt.wantErr != nil {
				wantInvalid(t, err, tt.wantErr...)
				return
			}
			if err != nil {
				t.Fatalf("durationFromProto: %v", err)
			}
			if got != tt.want {
				t.Errorf("durationFromProto = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestAutoReplyFromProto(t *testing.T) {
	fixed := tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_FIXED
	tests := []struct {
		name    string
		in      *tcpgatev1.AutoReply
		want    conn.AutoReply
		wantErr []string
	}{
		{"unset is none", nil, conn.AutoReply{Mode: conn.NoAutoReply}, nil},
		{"unspecified is none", &tcpgatev1.AutoReply{}, conn.AutoReply{Mode: conn.NoAutoReply}, nil},
		{"none", &tcpgatev1.AutoReply{Mode: tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_NONE}, conn.AutoReply{Mode: conn.NoAutoReply}, nil},
		{"echo", &tcpgatev1.AutoReply{Mode: tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_ECHO}, conn.AutoReply{Mode: conn.Echo}, nil},
		{"fixed text", &tcpgatev1.AutoReply{Mode: fixed, Payload: &tcpgatev1.AutoReply_Text{Text: "ok\n"}},
			conn.AutoReply{Mode: conn.Fixed, Payload: []byte("ok\n")}, nil},
		{"fixed data", &tcpgatev1.AutoReply{Mode: fixed, Payload: &tcpgatev1.AutoReply_Data{Data: []byte{0, 0xff}}},
			conn.AutoReply{Mode: conn.Fixed, Payload: []byte{0, 0xff}}, nil},
		{"fixed at the size cap", &tcpgatev1.AutoReply{Mode: fixed, Payload: &tcpgatev1.AutoReply_Data{Data: make([]byte, MaxFrameLimit)}},
			conn.AutoReply{Mode: conn.Fixed, Payload: make([]byte, MaxFrameLimit)}, nil},
		{"fixed without payload", &tcpgatev1.AutoReply{Mode: fixed}, conn.AutoReply{}, []string{"auto_reply", "FIXED needs text or data"}},
		{"fixed over the size cap", &tcpgatev1.AutoReply{Mode: fixed, Payload: &tcpgatev1.AutoReply_Data{Data: make([]byte, MaxFrameLimit+1)}},
			conn.AutoReply{}, []string{"auto_reply", "3145728"}},
		{"text without fixed", &tcpgatev1.AutoReply{Payload: &tcpgatev1.AutoReply_Text{Text: "x"}}, conn.AutoReply{}, []string{"auto_reply.mode", "FIXED"}},
		{"data with none", &tcpgatev1.AutoReply{Mode: tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_NONE, Payload: &tcpgatev1.AutoReply_Data{Data: []byte("x")}},
			conn.AutoReply{}, []string{"auto_reply.mode"}},
		{"text with echo", &tcpgatev1.AutoReply{Mode: tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_ECHO, Payload: &tcpgatev1.AutoReply_Text{Text: "x"}},
			conn.AutoReply{}, []string{"auto_reply.mode", "ECHO"}},
		{"unknown mode", &tcpgatev1.AutoReply{Mode: 42}, conn.AutoReply{}, []string{"auto_reply.mode", "42"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := autoReplyFromProto(tt.in)
			if tt.wantErr != nil {
				wantInvalid(t, err, tt.wantErr...)
				return
			}
			if err != nil {
				t.Fatalf("autoReplyFromProto: %v", err)
			}
			if got.Mode != tt.want.Mode || !bytes.Equal(got.Payload, tt.want.Payload) {
				t.Errorf("autoReplyFromProto = {%v %q}, want {%v %q}", got.Mode, got.Payload, tt.want.Mode, tt.want.Payload)
			}
		})
	}
}

func TestAutoReplyToProto(t *testing.T) {
	fixed := tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_FIXED
	tests := []struct {
		name string
		in   conn.AutoReply
		want *tcpgatev1.AutoReply
	}{
		{"none", conn.AutoReply{}, &tcpgatev1.AutoReply{Mode: tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_NONE}},
		{"echo", conn.AutoReply{Mode: conn.Echo}, &tcpgatev1.AutoReply{Mode: tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_ECHO}},
		{"utf-8 shows as text", conn.AutoReply{Mode: conn.Fixed, Payload: []byte("héllo")},
			&tcpgatev1.AutoReply{Mode: fixed, Payload: &tcpgatev1.AutoReply_Text{Text: "héllo"}}},
		{"binary shows as data", conn.AutoReply{Mode: conn.Fixed, Payload: []byte{0xc3, 0x28}},
			&tcpgatev1.AutoReply{Mode: fixed, Payload: &tcpgatev1.AutoReply_Data{Data: []byte{0xc3, 0x28}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := autoReplyToProto(tt.in)
			if !proto.Equal(got, tt.want) {
				t.Fatalf("autoReplyToProto = %v, want %v", got, tt.want)
			}
			back, err := autoReplyFromProto(got)
			if err != nil {
				t.Fatalf("autoReplyFromProto of its output: %v", err)
			}
			if back.Mode != tt.in.Mode || !bytes.Equal(back.Payload, tt.in.Payload) {
				t.Errorf("round trip = {%v %q}, want {%v %q}", back.Mode, back.Payload, tt.in.Mode, tt.in.Payload)
			}
		})
	}
}

func TestCheckAddress(t *testing.T) {
	tests := []struct {
		addr string
		ok   bool
	}{
		{"127.0.0.1:80", true},
		{"localhost:1", true},
		{"example.com:65535", true},
		{"[::1]:8080", true},
		{"[fe80::1%eth0]:22", true},
		{"127.0.0.1", false},
		{"[::1]", false},
		{"::1:80", false},
		{":80", false},
		{"[]:80", false},
		{"host:", false},
		{"host:0", false},
		{"host:65536", false},
		{"host:-1", false},
		{"host:http", false},
		{"", false},
	}
	for _, tt := range tests {
		t.Run(tt.addr, func(t *testing.T) {
			err := checkAddress(tt.addr)
			if tt.ok {
				if err != nil {
					t.Errorf("checkAddress(%q) = %v, want nil", tt.addr, err)
				}
				return
			}
			wantInvalid(t, err, "address", tt.addr)
		})
	}
}

// The enums of the engine reach the API under the same names.
func TestEnumMappings(t *testing.T) {
	for k := event.ListenerStarted; k <= event.EventsDropped; k++ {
		t.Run(k.String(), func(t *testing.T) {
			pk, ok := eventKinds[k]
			if !ok {
				t.Fatalf("event kind %v has no API value", k)
			}
			if want := "EVENT_KIND_" + strings.ToUpper(k.String()); pk.String() != want {
				t.Errorf("event kind %v maps to %v, want %s", k, pk, want)
			}
			back, ok := kindFromProto(pk)
			if !ok || back != k {
				t.Errorf("kindFromProto(%v) = %v, %v; want %v, true", pk, back, ok, k)
			}
		})
	}
	for _, pk := range []tcpgatev1.EventKind{tcpgatev1.EventKind_EVENT_KIND_UNSPECIFIED, 99} {
		if k, ok := kindFromProto(pk); ok {
			t.Errorf("kindFromProto(%v) = %v, true; want false", pk, k)
		}
	}
	for r := event.ReasonPeerClosed; r <= event.ReasonShutdown; r++ {
		t.Run(r.String(), func(t *testing.T) {
			pr, ok := closeReasons[r]
			if !ok {
				t.Fatalf("close reason %v has no API value", r)
			}
			if want := "CLOSE_REASON_" + strings.ToUpper(r.String()); pr.String() != want {
				t.Errorf("close reason %v maps to %v, want %s", r, pr, want)
			}
		})
	}
	for s, want := range map[listener.State]string{
		listener.Listening: "LISTENER_STATE_LISTENING",
		listener.Draining:  "LISTENER_STATE_DRAINING",
		listener.Stopped:   "LISTENER_STATE_STOPPED",
	} {
		if got := listenerToProto(listener.Info{State: s}).GetState().String(); got != want {
			t.Errorf("listener state %d maps to %s, want %s", s, got, want)
		}
	}
}

func TestListenerToProto(t *testing.T) {
	created := time.Date(2025, 1, 2, 3, 4, 5, 6, time.UTC)
	info := listener.Info{
		Spec: listener.Spec{
			ID:             "web",
			Framing:        framing.Config{Mode: framing.Line, MaxFrameBytes: 64},
			AutoReply:      conn.AutoReply{Mode: conn.Echo},
			MaxConnections: 3,
			IdleTimeout:    2 * time.Second,
		},
		Address:           "127.0.0.1:4000",
		State:             listener.Draining,
		CreatedAt:         created,
		ConnectionsActive: 2,
		ConnectionsTotal:  9,
		BytesIn:           10,
		BytesOut:          11,
		FramesIn:          12,
		FramesOut:         13,
	}
	want := &tcpgatev1.Listener{
		ListenerId:        "web",
		Address:           "127.0.0.1:4000",
		State:             tcpgatev1.ListenerState_LISTENER_STATE_DRAINING,
		Framing:           &tcpgatev1.Framing{Mode: tcpgatev1.FramingMode_FRAMING_MODE_LINE, MaxFrameBytes: 64},
		AutoReply:         &tcpgatev1.AutoReply{Mode: tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_ECHO},
		ConnectionsActive: 2,
		ConnectionsTotal:  9,
		BytesIn:           10,
		BytesOut:          11,
		FramesIn:          12,
		FramesOut:         13,
		CreatedAt:         timestamppb.New(created),
		MaxConnections:    3,
		IdleTimeout:       durationpb.New(2 * time.Second),
		Source:            tcpgatev1.Source_SOURCE_API,
	}
	if got := listenerToProto(info); !proto.Equal(got, want) {
		t.Errorf("listenerToProto =\n%v\nwant\n%v", got, want)
	}
	info.IdleTimeout = 0
	if got := listenerToProto(info); got.IdleTimeout != nil {
		t.Errorf("idle_timeout = %v for a listener without one, want unset", got.IdleTimeout)
	}
}

func TestEventToProtoReuse(t *testing.T) {
	t1 := time.Date(2025, 5, 6, 7, 8, 9, 123456789, time.UTC)
	t2 := t1.Add(time.Hour + time.Nanosecond)
	text := &event.Event{
		Sequence: 1, Time: t1, Kind: event.Data, ListenerID: "l1", ConnectionID: "c1",
		RemoteAddr: "127.0.0.1:1", LocalAddr: "127.0.0.1:2", Data: []byte("hello"),
	}
	binary := &event.Event{
		Sequence: 2, Time: t2, Kind: event.Data, ListenerID: "l1", ConnectionID: "c1",
		Data: []byte{0xff, 0xfe, 0x00},
	}
	closed := &event.Event{
		Sequence: 3, Time: t2, Kind: event.ConnectionClosed, ListenerID: "l2", ConnectionID: "c9",
		CloseReason: event.ReasonIdleTimeout,
	}
	dropped := &event.Event{Time: t1, Kind: event.EventsDropped, Dropped: 17}

	// One message goes through every event in turn, as a Subscribe batch
	// reuses its messages; each result must equal a fresh conversion.
	reused := new(tcpgatev1.Event)
	for i, e := range []*event.Event{text, binary, closed, dropped, text} {
		eventToProto(reused, e, formatBoth)
		fresh := new(tcpgatev1.Event)
		eventToProto(fresh, e, formatBoth)
		if !proto.Equal(reused, fresh) {
			t.Errorf("event %d: reused message =\n%v\nfresh =\n%v", i, reused, fresh)
		}
		if got := reused.GetTime().AsTime(); !got.Equal(e.Time) {
			t.Errorf("event %d: time = %v, want %v", i, got, e.Time)
		}
	}

	eventToProto(reused, text, formatBoth)
	if reused.Text != "hello" || !bytes.Equal(reused.Data, []byte("hello")) {
		t.Fatalf("text event: text %q data %q, want both hello", reused.Text, reused.Data)
	}
	eventToProto(reused, binary, formatBoth)
	if reused.Text != "" {
		t.Errorf("binary event on a reused message kept text %q", reused.Text)
	}
	if !bytes.Equal(reused.Data, binary.Data) {
		t.Errorf("binary event data = %x, want %x", reused.Data, binary.Data)
	}
	if reused.RemoteAddress != "" || reused.LocalAddress != "" {
		t.Errorf("binary event kept addresses %q %q of the previous event", reused.RemoteAddress, reused.LocalAddress)
	}
	eventToProto(reused, closed, formatBoth)
	if reused.Data != nil || reused.Text != "" {
		t.Errorf("close event kept data %q text %q", reused.Data, reused.Text)
	}
	if reused.CloseReason != tcpgatev1.CloseReason_CLOSE_REASON_IDLE_TIMEOUT || reused.Kind != tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED {
		t.Errorf("close event: kind %v reason %v", reused.Kind, reused.CloseReason)
	}
	eventToProto(reused, dropped, formatBoth)
	if reused.CloseReason != tcpgatev1.CloseReason_CLOSE_REASON_UNSPECIFIED || reused.Dropped != 17 || reused.Sequence != 0 {
		t.Errorf("dropped marker: reason %v dropped %d sequence %d", reused.CloseReason, reused.Dropped, reused.Sequence)
	}
}
