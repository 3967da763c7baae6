package pemfile_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tcpgate/tcpgate/server/internal/pemfile"
)

// callTimeout bounds each Read: a FIFO or /dev/zero read on a broken
// Reader would hang or grow until it, instead of forever.
const callTimeout = 5 * time.Second

const pemText = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"

// tree is an allowed directory and a directory outside it, with the files
// and links the tests read.
type tree struct {
	dir, outside string
}

func newTree(t *testing.T) tree {
	t.Helper()
	base := t.TempDir()
	tr := tree{dir: filepath.Join(base, "allowed"), outside: filepath.Join(base, "outside")}
	for _, d := range []string{tr.dir, filepath.Join(tr.dir, "sub"), tr.outside} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	write := func(p string, b []byte) {
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(tr.dir, "cert.pem"), []byte(pemText))
	write(filepath.Join(tr.dir, "sub", "ca.pem"), []byte(pemText))
	write(filepath.Join(tr.dir, "max.pem"), bytes.Repeat([]byte{'a'}, pemfile.MaxBytes))
	write(filepath.Join(tr.dir, "big.pem"), bytes.Repeat([]byte{'a'}, pemfile.MaxBytes+1))
	write(filepath.Join(tr.outside, "secret.pem"), []byte(pemText))
	link := func(target, name string) {
		if err := os.Symlink(target, filepath.Join(tr.dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	link(filepath.Join(tr.outside, "secret.pem"), "out-abs.pem")
	link("../outside/secret.pem", "out-rel.pem")
	link("/dev/zero", "zero.pem")
	link("cert.pem", "in-rel.pem")
	link(filepath.Join(tr.dir, "sub", "ca.pem"), "in-abs.pem")
	link("sub", "sublink")
	if err := syscall.Mkfifo(filepath.Join(tr.dir, "fifo.pem"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(tr.outside, "fifo.pem"), 0o600); err != nil {
		t.Fatal(err)
	}
	return tr
}

func read(t *testing.T, r *pemfile.Reader, path string, trust pemfile.Trust) ([]byte, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	type result struct {
		b   []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		b, err := r.Read(ctx, path, trust)
		done <- result{b, err}
	}()
	select {
	case res := <-done:
		return res.b, res.err
	case <-time.After(callTimeout + time.Second):
		// The Read ignores its context: a FIFO held the open. The
		// goroutine stays blocked; goleak will name it too.
		t.Fatalf("Read(%q) still blocked %v after it began", path, callTimeout+time.Second)
		return nil, nil
	}
}

// TestReadUntrusted: a path from the API is read only when it is a regular
// file inside the directory once symlinks are resolved; every other path
// gets the same ErrNotAllowed, whose message says nothing more.
func TestReadUntrusted(t *testing.T) {
	tr := newTree(t)
	r, err := pemfile.New(tr.dir)
	if err != nil {
		t.Fatal(err)
	}
	in := func(p ...string) string { return filepath.Join(append([]string{tr.dir}, p...)...) }

	for _, tc := range []struct {
		name, path string
	}{
		{"regular file inside", in("cert.pem")},
		{"relative to the directory", "cert.pem"},
		{"in a subdirectory", in("sub", "ca.pem")},
		{"relative symlink inside to inside", in("in-rel.pem")},
		{"absolute symlink inside to inside", in("in-abs.pem")},
		{"through a symlinked directory inside", in("sublink", "ca.pem")},
		{".. that stays inside", in("sub", "..", "cert.pem")},
		{"exactly the size bound", in("max.pem")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := read(t, r, tc.path, pemfile.Untrusted)
			if err != nil {
				t.Fatalf("Read(%q): %v", tc.path, err)
			}
			if len(b) == 0 || (len(b) != pemfile.MaxBytes && string(b) != pemText) {
				t.Fatalf("Read(%q) = %d bytes %.40q, want the file", tc.path, len(b), b)
			}
		})
	}

	for _, tc := range []struct {
		name, path string
		cause      string // in the RefusedError's cause, for the operator's log
	}{
		{"file outside", filepath.Join(tr.outside, "secret.pem"), "outside"},
		{"absolute symlink out of the directory", in("out-abs.pem"), "resolves to"},
		{"relative symlink out of the directory", in("out-rel.pem"), "resolves to"},
		{".. traversal", in("..", "outside", "secret.pem"), "outside"},
		{"relative .. traversal", "../outside/secret.pem", "outside"},
		{"missing file", in("missing.pem"), "no such file"},
		{"missing file outside", filepath.Join(tr.outside, "missing.pem"), "outside"},
		{"directory", in("sub"), "directory"},
		{"the directory itself", tr.dir, "directory"},
		{"FIFO inside", in("fifo.pem"), "FIFO"},
		{"FIFO outside", filepath.Join(tr.outside, "fifo.pem"), "outside"},
		{"/dev/zero", "/dev/zero", "outside"},
		{"symlink inside to /dev/zero", in("zero.pem"), "resolves to"},
		{"empty", "", "empty"},
		{"overlong", in(strings.Repeat("a/", 3000)), "longer than"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := read(t, r, tc.path, pemfile.Untrusted)
			if !errors.Is(err, pemfile.ErrNotAllowed) {
				t.Fatalf("Read(%q) = %d bytes, %v; want ErrNotAllowed", tc.path, len(b), err)
			}
			if err.Error() != "not an allowed file" {
				t.Errorf("message %q says more than %q", err, "not an allowed file")
			}
			var refused *pemfile.RefusedError
			if !errors.As(err, &refused) || !strings.Contains(refused.Cause.Error(), tc.cause) {
				t.Errorf("cause %v, want one mentioning %q for the log", err, tc.cause)
			}
		})
	}

	t.Run("over the size bound", func(t *testing.T) {
		_, err := read(t, r, in("big.pem"), pemfile.Untrusted)
		if !errors.Is(err, pemfile.ErrTooLarge) {
			t.Fatalf("err = %v, want ErrTooLarge", err)
		}
	})
	t.Run("context ended", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := r.Read(ctx, in("cert.pem"), pemfile.Untrusted); !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
	})
}

// TestReadDevInsideDir: with /dev allowed, /dev/zero is inside, yet the
// descriptor is no regular file and nothing is read from it.
func TestReadDevInsideDir(t *testing.T) {
	r, err := pemfile.New("/dev")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"/dev/zero", "zero", "/dev/null"} {
		_, err := read(t, r, p, pemfile.Untrusted)
		var refused *pemfile.RefusedError
		if !errors.As(err, &refused) || !strings.Contains(refused.Cause.Error(), "character device") {
			t.Errorf("Read(%q) = %v, want ErrNotAllowed for a character device", p, err)
		}
	}
}

// TestReadNoDir: without an allowed directory every path is refused,
// existing or not, and the reason says so.
func TestReadNoDir(t *testing.T) {
	tr := newTree(t)
	r, err := pemfile.New("")
	if err != nil {
		t.Fatal(err)
	}
	for _, reader := range []*pemfile.Reader{r, nil} {
		for _, p := range []string{filepath.Join(tr.dir, "cert.pem"), "/dev/zero", filepath.Join(tr.dir, "fifo.pem"), "missing"} {
			if _, err := read(t, reader, p, pemfile.Untrusted); !errors.Is(err, pemfile.ErrNoDir) {
				t.Errorf("Read(%q) = %v, want ErrNoDir", p, err)
			}
		}
	}
}

// TestReadTrusted: a path from the operator's configuration may name any
// regular file, and is read under the same bounds: no FIFO, no device,
// nothing over MaxBytes.
func TestReadTrusted(t *testing.T) {
	tr := newTree(t)
	r, err := pemfile.New("")
	if err != nil {
		t.Fatal(err)
	}
	if b, err := read(t, r, filepath.Join(tr.outside, "secret.pem"), pemfile.Trusted); err != nil || string(b) != pemText {
		t.Fatalf("Read trusted = %q, %v; want the file", b, err)
	}
	for _, tc := range []struct{ path, want string }{
		{filepath.Join(tr.outside, "fifo.pem"), "a FIFO"},
		{"/dev/zero", "a character device"},
		{tr.outside, "a directory"},
		{filepath.Join(tr.dir, "big.pem"), "larger than"},
		{filepath.Join(tr.outside, "missing.pem"), "no such file"},
	} {
		_, err := read(t, r, tc.path, pemfile.Trusted)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), tc.path) {
			t.Errorf("Read trusted %q = %v, want an error naming the path and %q", tc.path, err, tc.want)
		}
	}
}

// TestNew: the allowed directory must exist and be one; a symlink to it is
// resolved, and paths through either name are inside.
func TestNew(t *testing.T) {
	tr := newTree(t)
	for _, bad := range []string{filepath.Join(tr.dir, "missing"), filepath.Join(tr.dir, "cert.pem")} {
		if _, err := pemfile.New(bad); err == nil || !strings.Contains(err.Error(), bad) {
			t.Errorf("New(%q) = %v, want an error naming it", bad, err)
		}
	}
	link := filepath.Join(tr.outside, "dirlink")
	if err := os.Symlink(tr.dir, link); err != nil {
		t.Fatal(err)
	}
	r, err := pemfile.New(link)
	if err != nil {
		t.Fatal(err)
	}
	if r.Dir() != tr.dir {
		t.Errorf("Dir() = %q, want %q", r.Dir(), tr.dir)
	}
	for _, p := range []string{filepath.Join(link, "cert.pem"), filepath.Join(tr.dir, "cert.pem")} {
		if _, err := read(t, r, p, pemfile.Untrusted); err != nil {
			t.Errorf("Read(%q): %v", p, err)
		}
	}
}
