package conn_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"math/big"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tcpgate/tcpgate/server/internal/conn"
	"github.com/tcpgate/tcpgate/server/internal/event"
	"github.com/tcpgate/tcpgate/server/internal/framing"
)

// serveTLS runs a Conn over a fresh TLS connection on 127.0.0.1 and
// returns it with the client end, handshake done.
func serveTLS(t *testing.T, cfg conn.Config) (*conn.Conn, *tls.Conn) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	fc, err := cfg.Framing.Normalize()
	if err != nil {
		t.Fatal(err)
	}
	cfg.Framing, cfg.ID, cfg.ListenerID = fc, "c1", "l1"
	sc, cc := pair(t)
	srv := tls.Server(sc, &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}})
	c := conn.New(t.Context(), srv, cfg)
	go c.Serve()
	t.Cleanup(func() {
		c.Close(event.ReasonShutdown)
		waitDone(t, c)
	})
	client := tls.Client(cc, &tls.Config{InsecureSkipVerify: true})
	if err := client.Handshake(); err != nil {
		t.Fatal(err)
	}
	return c, client
}

// Over TLS, where reads grow from 512 bytes and fall back to it when the
// peer pauses, frames of every size, written as records of every size,
// arrive whole and unchanged.
func TestTLSStream(t *testing.T) {
	rec := newRecorder()
	c, cc := serveTLS(t, conn.Config{Framing: framing.Config{Mode: framing.LengthPrefix}, Publisher: rec})
	var want []string
	var stream []byte
	for i := range 300 {
		p := strings.Repeat(string(rune('a'+i%26)), 1+i*397%40000)
		want = append(want, p)
		stream = binary.BigEndian.AppendUint32(stream, uint32(len(p)))
		stream = append(stream, p...)
	}
	go func() {
		for i := 0; len(stream) > 0; i++ {
			n := min(len(stream), 1+i*7919%70000)
			if _, err := cc.Write(stream[:n]); err != nil {
				return
			}
			stream = stream[n:]
			if i%10 == 0 {
				time.Sleep(time.Millisecond) // the reads drain, and wait small
			}
		}
		_ = cc.CloseWrite()
	}()
	evs := rec.waitClosed(t)
	waitDone(t, c)
	if got := dataOf(evs); !slices.Equal(got, want) {
		t.Fatalf("got %d frames, want %d unchanged", len(got), len(want))
	}
}

// A raw TLS listener: a short message to an idle connection is one DATA
// event, and a burst arrives in order, in events of at most one record.
func TestTLSRawReads(t *testing.T) {
	rec := newRecorder()
	_, cc := serveTLS(t, conn.Config{Framing: framing.Config{Mode: framing.Raw}, Publisher: rec})
	if _, err := cc.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	rec.WaitFor(t, "hello", func(evs []*event.Event) bool { return slices.Contains(dataOf(evs), "hello") })
	// A message of one record to an idle connection, whose waiting read is
	// small (512 bytes), is still one frame. 1000 bytes fit the first
	// record of a write from crypto/tls, whose records start at about
	// 1.2 KiB and grow.
	record := strings.Repeat("r", 1000)
	if _, err := cc.Write([]byte(record)); err != nil {
		t.Fatal(err)
	}
	rec.WaitFor(t, "the 1000-byte record", func(evs []*event.Event) bool {
		d := dataOf(evs)
		return len(d) > 1 && len(strings.Join(d[1:], "")) >= len(record)
	})
	if d := dataOf(rec.Events()); len(d) != 2 || d[1] != record {
		t.Fatalf("a 1000-byte record came as %d DATA events after hello, want one", len(d)-1)
	}
	burst := strings.Repeat("0123456789abcdef", 16<<10) // 256 KiB
	if _, err := cc.Write([]byte(burst)); err != nil {
		t.Fatal(err)
	}
	_ = cc.CloseWrite()
	evs := rec.waitClosed(t)
	got := dataOf(evs)
	if got[0] != "hello" || got[1] != record || strings.Join(got[2:], "") != burst {
		t.Fatalf("got %d events; want hello, then the %d-byte burst in order", len(got), len(burst))
	}
	for _, d := range got {
		if len(d) > 16<<10 {
			t.Fatalf("a DATA event of %d bytes: a read through TLS takes at most one record, 16 KiB", len(d))
		}
	}
}
