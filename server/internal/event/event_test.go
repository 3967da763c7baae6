package event_test

import (
	"strings"
	"testing"
	"unsafe"

	"github.com/tcpgate/tcpgate/server/internal/event"
)

func TestKindString(t *testing.T) {
	tests := []struct {
		kind event.Kind
		want string
	}{
		{event.KindUnspecified, "unspecified"},
		{event.ListenerStarted, "listener_started"},
		{event.ListenerStopped, "listener_stopped"},
		{event.ConnectionOpened, "connection_opened"},
		{event.Data, "data"},
		{event.ConnectionClosed, "connection_closed"},
		{event.EventsDropped, "events_dropped"},
		{event.StreamStarted, "stream_started"},
		{event.IncarnationChanged, "incarnation_changed"},
		{event.ReconnectScheduled, "reconnect_scheduled"},
		{event.Kind(-1), "unspecified"},
		{event.ListenerUpdated, "listener_updated"},
		{event.EventsLost, "events_lost"},
		{event.EventsLost + 1, "unspecified"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			if got := tt.kind.String(); got != tt.want {
				t.Errorf("Kind(%d).String() = %q, want %q", int(tt.kind), got, tt.want)
			}
		})
	}
}

func TestCloseReasonString(t *testing.T) {
	tests := []struct {
		reason event.CloseReason
		want   string
	}{
		{event.ReasonUnspecified, "unspecified"},
		{event.ReasonPeerClosed, "peer_closed"},
		{event.ReasonPeerReset, "peer_reset"},
		{event.ReasonFrameTooLarge, "frame_too_large"},
		{event.ReasonIdleTimeout, "idle_timeout"},
		{event.ReasonListenerStopped, "listener_stopped"},
		{event.ReasonClosedByAPI, "closed_by_api"},
		{event.ReasonReadError, "read_error"},
		{event.ReasonWriteError, "write_error"},
		{event.ReasonLimitReached, "limit_reached"},
		{event.ReasonShutdown, "shutdown"},
		{event.ReasonTLSHandshake, "tls_handshake_failed"},
		{event.ReasonReplyTimeout, "reply_timeout"},
		{event.ReasonHeartbeatFailed, "heartbeat_failed"},
		{event.ReasonOnConnectFailed, "on_connect_failed"},
		{event.ReasonReconnectGaveUp, "reconnect_gave_up"},
		{event.ReasonForwardFailed, "forward_failed"},
		{event.ReasonNodeLost, "node_lost"},
		{event.ReasonProxyHeaderInvalid, "proxy_header_invalid"},
		{event.CloseReason(-1), "unspecified"},
		{event.NumReasons, "unspecified"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			if got := tt.reason.String(); got != tt.want {
				t.Errorf("CloseReason(%d).String() = %q, want %q", int(tt.reason), got, tt.want)
			}
		})
	}
}

// Every defined value has a name of its own: a new constant without a case
// in String would read as "unspecified" in logs.
func TestStringsAreDistinct(t *testing.T) {
	kinds := map[string]event.Kind{}
	for k := event.ListenerStarted; k <= event.ReconnectScheduled; k++ {
		s := k.String()
		if prev, ok := kinds[s]; ok || s == "unspecified" {
			t.Errorf("Kind(%d).String() = %q, also the name of Kind(%d)", int(k), s, int(prev))
		}
		kinds[s] = k
	}
	reasons := map[string]event.CloseReason{}
	for r := event.ReasonPeerClosed; r < event.NumReasons; r++ {
		s := r.String()
		if prev, ok := reasons[s]; ok || s == "unspecified" {
			t.Errorf("CloseReason(%d).String() = %q, also the name of CloseReason(%d)", int(r), s, int(prev))
		}
		reasons[s] = r
	}
}

func TestSize(t *testing.T) {
	base := event.Event{Kind: event.Data}
	empty := base.Size()
	// The struct itself, its queue and ring slots, and its cached header.
	if least := int(unsafe.Sizeof(event.Event{})) + 3*8 + 48; empty < least {
		t.Fatalf("Size of an empty event = %d, want at least %d: the struct, its slots and its cached header", empty, least)
	}
	tests := []struct {
		name string
		ev   *event.Event
		grow int
	}{
		{"1-byte payload", &event.Event{Data: []byte("x")}, 1},
		{"64 KiB payload", &event.Event{Data: make([]byte, 64<<10)}, 64 << 10},
		// Strings count twice: in the event and in the header the RPC
		// layer caches on it (Memo).
		{"listener id", &event.Event{ListenerID: "listener-1"}, 2 * len("listener-1")},
		{"connection id", &event.Event{ConnectionID: "c42"}, 2 * len("c42")},
		{"addresses", &event.Event{RemoteAddr: "127.0.0.1:5555", LocalAddr: "127.0.0.1:6666"}, 2 * 28},
		{"peer subject", &event.Event{PeerSubject: "CN=client"}, 2 * len("CN=client")},
		{"error", &event.Event{Error: "connection refused"}, 2 * len("connection refused")},
		// A frame cut from a larger read keeps its share of the read alive.
		{"retained read", &event.Event{Data: []byte("x"), Retained: 40000}, 1 + 40000},
		{"everything", &event.Event{
			ListenerID: "l1", ConnectionID: "c1", RemoteAddr: "a", LocalAddr: "b",
			Data: []byte(strings.Repeat("z", 1000)),
		}, 2*(2+2+1+1) + 1000},
		{"numbers cost nothing extra", &event.Event{Sequence: 1 << 40, Dropped: 7, CloseReason: event.ReasonShutdown}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.ev.Size(); got != empty+tt.grow {
				t.Errorf("Size() = %d, want %d (overhead %d + %d)", got, empty+tt.grow, empty, tt.grow)
			}
		})
	}
}
