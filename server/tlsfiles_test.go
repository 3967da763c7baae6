package server_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/metrics"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/servertest"
)

// fileCallTimeout bounds each call that names a file. A call that a FIFO
// holds (the gateway blocked in open) gets DeadlineExceeded instead of the
// InvalidArgument the test wants.
const fileCallTimeout = 3 * time.Second

// heapGuard fails this test process at once when its heap passes limit, so
// that an unbounded read (/dev/zero read to the end) ends the test in a
// panic that says why, instead of taking the machine's memory. It stops at
// cleanup.
func heapGuard(t *testing.T, limit uint64) {
	t.Helper()
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			metrics.Read(s)
			if n := s[0].Value.Uint64(); n > limit {
				panic(fmt.Sprintf("%s: the heap holds %d MiB, past the test's %d MiB: a file named over the API is read without bound",
					t.Name(), n>>20, limit>>20))
			}
		}
	}()
	t.Cleanup(func() { close(stop); <-done })
}

// tlsFilesTree is an allowed directory holding the PKI's files and the
// things that must not be read, and a directory outside it.
type tlsFilesTree struct {
	dir, outside string
	pki          *secPKI
}

func newTLSFilesTree(t *testing.T) tlsFilesTree {
	t.Helper()
	pki := secNewPKI(t)
	base := t.TempDir()
	tr := tlsFilesTree{dir: filepath.Join(base, "tls"), outside: filepath.Join(base, "outside"), pki: pki}
	for _, d := range []string{tr.dir, filepath.Join(tr.dir, "sub"), tr.outside} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	for name, b := range map[string][]byte{
		"tls/server.pem":         pki.serverCert,
		"tls/server-key.pem":     pki.serverKey,
		"tls/ca.pem":             pki.ca.CertPEM,
		"tls/garbage.pem":        []byte("not PEM at all\n"),
		"tls/big.pem":            bytes.Repeat([]byte("x"), 1<<20+1),
		"outside/server.pem":     pki.serverCert,
		"outside/server-key.pem": pki.serverKey,
	} {
		if err := os.WriteFile(filepath.Join(base, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{filepath.Join(tr.dir, "fifo.pem"), filepath.Join(tr.outside, "fifo.pem")} {
		if err := syscall.Mkfifo(p, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for target, name := range map[string]string{
		filepath.Join(tr.outside, "server.pem"): "out.pem",
		"/dev/zero":                             "zero.pem",
		"server.pem":                            "in.pem",
	} {
		if err := os.Symlink(target, filepath.Join(tr.dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	return tr
}

// notAllowed are paths a caller may not have read, each of a different
// kind; the API must answer every one alike.
func (tr tlsFilesTree) notAllowed() map[string]string {
	return map[string]string{
		"file outside":                 filepath.Join(tr.outside, "server.pem"),
		"missing outside":              filepath.Join(tr.outside, "missing.pem"),
		"directory outside":            tr.outside,
		"FIFO outside":                 filepath.Join(tr.outside, "fifo.pem"),
		"/dev/zero":                    "/dev/zero",
		".. traversal":                 filepath.Join(tr.dir, "..", "outside", "server.pem"),
		"symlink inside to outside":    filepath.Join(tr.dir, "out.pem"),
		"symlink inside to /dev/zero":  filepath.Join(tr.dir, "zero.pem"),
		"missing inside":               filepath.Join(tr.dir, "missing.pem"),
		"directory inside":             filepath.Join(tr.dir, "sub"),
		"FIFO inside":                  filepath.Join(tr.dir, "fifo.pem"),
		"the process's own memory map": "/proc/self/maps",
	}
}

// fileCall makes one call that names path in field (a field of
// ListenerTLS or DialTLS), every other PEM given inline and valid.
type fileCall struct {
	rpc   string // the method called
	field string // as the error must name it
	call  func(ctx context.Context, g *servertest.Gateway, path string) error
}

func fileCalls(t *testing.T, pki *secPKI) []fileCall {
	cert, key, ca := string(pki.serverCert), string(pki.serverKey), string(pki.ca.CertPEM)
	listen := func(tl *tcpgatev1.ListenerTLS) func(ctx context.Context, g *servertest.Gateway) error {
		return func(ctx context.Context, g *servertest.Gateway) error {
			_, err := g.Client.StartListener(ctx, &tcpgatev1.StartListenerRequest{Host: "127.0.0.1", Tls: tl})
			return err
		}
	}
	// Send's TLS is built before anything is dialed; the address is
	// never reached.
	send := func(dt *tcpgatev1.DialTLS) func(ctx context.Context, g *servertest.Gateway) error {
		return func(ctx context.Context, g *servertest.Gateway) error {
			_, err := g.Client.Send(ctx, &tcpgatev1.SendRequest{
				Target:  &tcpgatev1.SendRequest_Address{Address: "127.0.0.1:1"},
				Payload: &tcpgatev1.SendRequest_Text{Text: "x"},
				Tls:     dt,
			})
			return err
		}
	}
	return []fileCall{
		{"StartListener", "tls.cert_file", func(ctx context.Context, g *servertest.Gateway, p string) error {
			return listen(&tcpgatev1.ListenerTLS{CertFile: p, KeyPem: key})(ctx, g)
		}},
		{"StartListener", "tls.key_file", func(ctx context.Context, g *servertest.Gateway, p string) error {
			return listen(&tcpgatev1.ListenerTLS{CertPem: cert, KeyFile: p})(ctx, g)
		}},
		{"StartListener", "tls.client_ca_file", func(ctx context.Context, g *servertest.Gateway, p string) error {
			return listen(&tcpgatev1.ListenerTLS{CertPem: cert, KeyPem: key, ClientCaFile: p})(ctx, g)
		}},
		{"Send", "tls.ca_file", func(ctx context.Context, g *servertest.Gateway, p string) error {
			return send(&tcpgatev1.DialTLS{CaFile: p})(ctx, g)
		}},
		{"Send", "tls.cert_file", func(ctx context.Context, g *servertest.Gateway, p string) error {
			return send(&tcpgatev1.DialTLS{CaPem: ca, CertFile: p, KeyPem: key})(ctx, g)
		}},
		{"Send", "tls.key_file", func(ctx context.Context, g *servertest.Gateway, p string) error {
			return send(&tcpgatev1.DialTLS{CaPem: ca, CertPem: cert, KeyFile: p})(ctx, g)
		}},
	}
}

// callFile runs c with path under fileCallTimeout.
func callFile(t *testing.T, g *servertest.Gateway, c fileCall, path string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), fileCallTimeout)
	defer cancel()
	return c.call(ctx, g, path)
}

// TestTLSFilesAPI: with --tls-files-dir, StartListener and Send read the
// files named inside it, and answer every other path (outside, missing, a
// directory, a FIFO, /dev/zero, a symlink out) with the same
// InvalidArgument "FIELD: not an allowed file", naming the field given, at
// once. The cause is logged for the operator only.
func TestTLSFilesAPI(t *testing.T) {
	heapGuard(t, 1<<30)
	tr := newTLSFilesTree(t)
	var logs servertest.LogSink
	g := servertest.Start(t, server.Config{
		TLSFilesDir: tr.dir,
		Logger:      slog.New(slog.NewTextHandler(&logs, nil)),
	})

	for _, c := range fileCalls(t, tr.pki) {
		for name, p := range tr.notAllowed() {
			t.Run(c.rpc+"/"+c.field+"/"+name, func(t *testing.T) {
				err := callFile(t, g, c, p)
				if status.Code(err) != codes.InvalidArgument {
					t.Fatalf("err = %v, want InvalidArgument", err)
				}
				if want := c.field + ": not an allowed file"; status.Convert(err).Message() != want {
					t.Fatalf("message %q, want exactly %q", status.Convert(err).Message(), want)
				}
			})
		}
	}
	// The operator's log says why, with the path.
	if !strings.Contains(logs.String(), "TLS file refused") || !strings.Contains(logs.String(), "FIFO") ||
		!strings.Contains(logs.String(), filepath.Join(tr.outside, "server.pem")) {
		t.Errorf("the log does not give the refusals' causes:\n%s", logs.String())
	}

	// Inside the directory, what is wrong with a file's content may be
	// said, naming the field.
	for _, tc := range []struct {
		name, field, file, want string
	}{
		{"over 1 MiB", "tls.cert_file", "big.pem", "tls.cert_file: larger than 1048576 bytes (1 MiB)"},
		{"a key as CA", "tls.ca_file", "server-key.pem", "tls.ca_file: no PEM certificate found"},
		{"garbage as client CA", "tls.client_ca_file", "garbage.pem", "tls.client_ca_file: no PEM certificate found"},
		{"garbage as certificate", "tls.cert_file", "garbage.pem", "tls.cert_file and tls.key_pem: certificate and key:"},
		{"a certificate as key", "tls.key_file", "server.pem", "tls.cert_pem and tls.key_file: certificate and key:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var c fileCall
			for _, fc := range fileCalls(t, tr.pki) {
				if fc.field == tc.field {
					c = fc
					break
				}
			}
			err := callFile(t, g, c, filepath.Join(tr.dir, tc.file))
			servertest.WantCode(t, err, codes.InvalidArgument)
			if msg := status.Convert(err).Message(); !strings.HasPrefix(msg, tc.want) || strings.Contains(msg, "PRIVATE KEY-----") {
				t.Errorf("message %q, want it to start with %q", msg, tc.want)
			}
		})
	}

	// Regular files inside are read, by absolute path, relative path or a
	// symlink inside to inside.
	for _, cert := range []string{filepath.Join(tr.dir, "server.pem"), "server.pem", filepath.Join(tr.dir, "in.pem")} {
		ctx, cancel := context.WithTimeout(context.Background(), fileCallTimeout)
		resp, err := g.Client.StartListener(ctx, &tcpgatev1.StartListenerRequest{
			Host: "127.0.0.1",
			Tls:  &tcpgatev1.ListenerTLS{CertFile: cert, KeyFile: "server-key.pem", ClientCaFile: filepath.Join(tr.dir, "ca.pem")},
		})
		cancel()
		if err != nil {
			t.Fatalf("StartListener with cert_file %s: %v", cert, err)
		}
		if !resp.GetListener().GetMutualTls() {
			t.Errorf("listener from files %v, want mutual TLS", resp.GetListener())
		}
	}
}

// TestTLSFilesNoDir: without --tls-files-dir, every path is refused, the
// message naming the field and the flag; inline PEM works.
func TestTLSFilesNoDir(t *testing.T) {
	heapGuard(t, 1<<30)
	tr := newTLSFilesTree(t)
	g := servertest.Start(t, server.Config{})
	paths := tr.notAllowed()
	paths["regular file"] = filepath.Join(tr.dir, "server.pem")
	for _, c := range fileCalls(t, tr.pki) {
		for name, p := range paths {
			t.Run(c.rpc+"/"+c.field+"/"+name, func(t *testing.T) {
				err := callFile(t, g, c, p)
				servertest.WantCode(t, err, codes.InvalidArgument)
				msg := status.Convert(err).Message()
				if !strings.HasPrefix(msg, c.field+": file paths are not allowed") || !strings.Contains(msg, "--tls-files-dir") {
					t.Fatalf("message %q, want %s refused, naming --tls-files-dir", msg, c.field)
				}
			})
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), fileCallTimeout)
	defer cancel()
	_, err := g.Client.StartListener(ctx, &tcpgatev1.StartListenerRequest{
		Host: "127.0.0.1",
		Tls:  &tcpgatev1.ListenerTLS{CertPem: string(tr.pki.serverCert), KeyPem: string(tr.pki.serverKey)},
	})
	if err != nil {
		t.Fatalf("StartListener with inline PEM: %v", err)
	}
}

// TestTLSFilesDirFlag: a --tls-files-dir that is no directory stops the
// gateway from starting, naming the flag.
func TestTLSFilesDirFlag(t *testing.T) {
	tr := newTLSFilesTree(t)
	for _, dir := range []string{filepath.Join(tr.dir, "missing"), filepath.Join(tr.dir, "server.pem")} {
		_, err := server.New(server.Config{GRPCAddr: "127.0.0.1:0", TLSFilesDir: dir, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err == nil || !strings.Contains(err.Error(), "--tls-files-dir") || !strings.Contains(err.Error(), dir) {
			t.Errorf("server.New with TLSFilesDir %s: %v, want an error naming the flag and the directory", dir, err)
		}
	}
}
