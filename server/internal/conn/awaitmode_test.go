package conn_test

import (
	"context"
	"io"
	"testing"

	"github.com/tcpgate/tcpgate/server/internal/await"
	"github.com/tcpgate/tcpgate/server/internal/conn"
)

// TestSendFirstReadIsNextFrame: on a kept connection, whose reads its
// framing cuts, await.FirstRead waits for the next frame as await.Frame
// does, not for the bytes of one read: a peer answering two lines in one
// write answers with the first.
func TestSendFirstReadIsNextFrame(t *testing.T) {
	for _, mode := range []await.Mode{await.FirstRead, await.Frame} {
		c, cc := serve(t, conn.Config{Framing: lineFraming(), Publisher: newRecorder()})
		peerDone := make(chan error, 1)
		go func() {
			q := make([]byte, 2)
			if _, err := io.ReadFull(cc, q); err != nil {
				peerDone <- err
				return
			}
			_, err := cc.Write([]byte("one\ntwo\n"))
			peerDone <- err
		}()
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		reply, err := c.Send(ctx, []byte("q\n"), conn.Await{Mode: mode, MaxBytes: 1024})
		cancel()
		if err != nil {
			t.Fatalf("mode %d: Send: %v", mode, err)
		}
		if string(reply) != "one" {
			t.Errorf("mode %d: reply %q, want the next frame %q", mode, reply, "one")
		}
		if err := <-peerDone; err != nil {
			t.Fatalf("peer: %v", err)
		}
		_ = cc.Close()
	}
}
