package dialer_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/tcpgate/tcpgate/server/internal/await"
	"github.com/tcpgate/tcpgate/server/internal/dialer"
	"github.com/tcpgate/tcpgate/server/internal/framing"
)

// With Match, AWAIT Frame skips the frames that do not match: in one read,
// across reads, and in the partial frame left when the peer closes.
func TestSendFrameMatch(t *testing.T) {
	ack := func(f []byte) bool { return bytes.HasPrefix(f, []byte("ack")) }
	tests := []struct {
		name    string
		out     [][]byte
		close   bool
		want    string
		wantErr error
	}{
		{name: "after others in one read", out: [][]byte{[]byte("hello\nnotice\nack 1\n")}, want: "ack 1"},
		{name: "across reads", out: [][]byte{[]byte("hel"), []byte("lo\nac"), []byte("k 2\nack 3\n")}, want: "ack 2"},
		{name: "the final partial frame", out: [][]byte{[]byte("hello\nack 4")}, close: true, want: "ack 4"},
		{name: "none matches", out: [][]byte{[]byte("hello\nnope")}, close: true, wantErr: dialer.ErrNoReply},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := reply(tt.out...)
			if tt.close {
				h = replyAndClose(tt.out...)
			}
			fc, err := framing.Config{Mode: framing.Line}.Normalize()
			if err != nil {
				t.Fatal(err)
			}
			res, err := send(t, dialer.Request{
				Address: peer(t, h), Payload: []byte("q\n"), Await: await.Frame,
				Framing: fc, Match: ack, MaxReply: 1024,
			})
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Send = %q, %v; want %v", res.Reply, err, tt.wantErr)
				}
				return
			}
			if err != nil || string(res.Reply) != tt.want {
				t.Fatalf("Send = %q, %v; want %q", res.Reply, err, tt.want)
			}
		})
	}
}
