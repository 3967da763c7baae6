package state

import (
	"testing"

	"google.golang.org/protobuf/proto"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
)

// TestClusterValueRoundTrip: a record and its node decode as they were
// stored; a listener on every node has no node.
func TestClusterValueRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		rec  Record
		node string
	}{
		{Record{Listener: &tcpgatev1.StartListenerRequest{ListenerId: "l.1", EveryNode: true}, BoundPort: 4000}, ""},
		{Record{Connection: &tcpgatev1.ConnectRequest{ConnectionId: "c~1", Address: "127.0.0.1:9", TakeOver: true}}, "node-b"},
	} {
		b, err := EncodeClusterValue(tc.rec, tc.node)
		if err != nil {
			t.Fatal(err)
		}
		got, node, err := DecodeClusterValue(b)
		if err != nil {
			t.Fatalf("decoding %s: %v", b, err)
		}
		if node != tc.node || got.BoundPort != tc.rec.BoundPort || !proto.Equal(got.Listener, tc.rec.Listener) || !proto.Equal(got.Connection, tc.rec.Connection) {
			t.Fatalf("round trip of %s: %+v on %q", b, got, node)
		}
	}
	for _, bad := range []string{``, `{}`, `{"record":{}}`, `{"node":"a","record":{"listener":{}}}`, `{"record":{"connection":{"connectionId":"c"},"listener":{"listenerId":"l"}}}`, `[1]`} {
		if _, _, err := DecodeClusterValue([]byte(bad)); err == nil {
			t.Errorf("DecodeClusterValue(%s): no error", bad)
		}
	}
}

// FuzzDecodeClusterValue: whatever the bucket holds, decoding returns an
// error or a record that encodes and decodes to itself.
func FuzzDecodeClusterValue(f *testing.F) {
	f.Add([]byte(`{"node":"a","record":{"listener":{"listenerId":"l","port":80},"boundPort":80}}`))
	f.Add([]byte(`{"record":{"connection":{"connectionId":"c","address":"127.0.0.1:1","takeOver":true},"keyOmitted":true}}`))
	f.Add([]byte(`{"node":"","record":null}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		rec, node, err := DecodeClusterValue(b)
		if err != nil {
			return
		}
		again, err := EncodeClusterValue(rec, node)
		if err != nil {
			t.Fatalf("a decoded record does not encode: %v", err)
		}
		rec2, node2, err := DecodeClusterValue(again)
		if err != nil || node2 != node || rec2.ID() != rec.ID() || rec2.Kind() != rec.Kind() || rec2.BoundPort != rec.BoundPort || rec2.KeyOmitted != rec.KeyOmitted {
			t.Fatalf("round trip of %q: %+v on %q, %v", again, rec2, node2, err)
		}
	})
}
