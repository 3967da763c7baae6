package state

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
)

// TestRecordRoundTrip: a record encodes to one line that decodes to the
// same request.
func TestRecordRoundTrip(t *testing.T) {
	for _, rec := range []Record{
		{Listener: &tcpgatev1.StartListenerRequest{ListenerId: "l", Host: "127.0.0.1",
			AutoReply: &tcpgatev1.AutoReply{Mode: tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_FIXED, Payload: &tcpgatev1.AutoReply_Text{Text: "a\nb"}}}, BoundPort: 4000},
		{Connection: &tcpgatev1.ConnectRequest{ConnectionId: "c", Address: "127.0.0.1:1"}, KeyOmitted: true},
	} {
		line, err := Encode(rec)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(line), "\n") {
			t.Errorf("record %s is more than one line: %q", rec.ID(), line)
		}
		got, err := Decode(line)
		if err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(got.Listener, rec.Listener) || !proto.Equal(got.Connection, rec.Connection) || got.BoundPort != rec.BoundPort || got.KeyOmitted != rec.KeyOmitted {
			t.Errorf("record %s came back as %+v", rec.ID(), got)
		}
	}
}

// TestDecodeRefuses: lines that are not a record are errors, not
// half-made objects.
func TestDecodeRefuses(t *testing.T) {
	for _, tc := range []struct{ name, line, want string }{
		{"not JSON", `{"listener":`, "decoding"},
		{"neither", `{"boundPort":1}`, "neither"},
		{"both", `{"listener":{"listenerId":"a"},"connection":{"connectionId":"b"}}`, "both"},
		{"listener without id", `{"listener":{"host":"x"}}`, "listener_id"},
		{"connection without id", `{"connection":{"address":"x:1"}}`, "connection_id"},
		{"unknown field of the request", `{"listener":{"listenerId":"a","nope":1}}`, "nope"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Decode([]byte(tc.line)); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Decode(%s) = %v, want an error saying %q", tc.line, err, tc.want)
			}
		})
	}
}

// FuzzDecode: no line makes Decode panic, and a record it accepts has
// its id and encodes back to a line that decodes the same.
func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"listener":{"listenerId":"l","host":"127.0.0.1"},"boundPort":4000}`))
	f.Add([]byte(`{"connection":{"connectionId":"c","address":"127.0.0.1:1"},"keyOmitted":true}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, line []byte) {
		rec, err := Decode(line)
		if err != nil {
			return
		}
		if rec.ID() == "" {
			t.Fatalf("accepted a record without an id: %q", line)
		}
		again, err := Encode(rec)
		if err != nil {
			t.Fatal(err)
		}
		back, err := Decode(again)
		if err != nil || !proto.Equal(back.Listener, rec.Listener) || !proto.Equal(back.Connection, rec.Connection) {
			t.Fatalf("%q re-encoded to %q, decoded %v", line, again, err)
		}
	})
}

// TestRecordedListener: what UpdateListener reads back is the request as
// recorded, with its id, and a copy: changing it changes nothing until it
// is put back.
func TestRecordedListener(t *testing.T) {
	st := New(nil)
	req := &tcpgatev1.StartListenerRequest{Host: "127.0.0.1", MaxConnections: 3}
	v1 := st.PutListener(req, &tcpgatev1.Listener{ListenerId: "l", Address: "127.0.0.1:4000"})
	got, ok := st.RecordedListener("l")
	if !ok || got.GetListenerId() != "l" || got.GetMaxConnections() != 3 {
		t.Fatalf("RecordedListener = %v, %v", got, ok)
	}
	got.MaxConnections = 9
	if again, _ := st.RecordedListener("l"); again.GetMaxConnections() != 3 {
		t.Errorf("changing the copy changed the record: %v", again)
	}
	if v2 := st.PutListener(got, &tcpgatev1.Listener{ListenerId: "l", Address: "127.0.0.1:4000"}); v2 <= v1 {
		t.Errorf("versions %d then %d, want them to grow", v1, v2)
	}
	if l := mustExport(t, st).GetListeners(); len(l) != 1 || l[0].GetMaxConnections() != 9 || l[0].GetPort() != 4000 {
		t.Errorf("Export after the update = %v", l)
	}
	if _, ok := st.RecordedListener("nope"); ok {
		t.Error("RecordedListener of an unknown id found one")
	}
	if st.DeleteListener("l") == 0 || st.DeleteListener("l") != 0 {
		t.Error("DeleteListener: want a version once, then 0")
	}
}

func mustExport(t *testing.T, st *State) *tcpgatev1.Config {
	t.Helper()
	cfg, err := st.Export(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}
