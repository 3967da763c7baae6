// Package pemfile reads the PEM files that TLS settings name by path:
// certificates, keys and CA bundles.
//
// A path given over the API is a question about the gateway's filesystem
// asked by whoever holds the control plane, and a read of it runs in the
// gateway. A Reader therefore answers only inside one directory the
// operator allows (--tls-files-dir), and reads only what a PEM file can be:
//
//   - The path, once symlinks are resolved, must stay inside the directory.
//     It is opened through an os.Root of the directory, so a component
//     swapped for a symlink between the check and the open cannot lead out.
//   - It is opened with O_NONBLOCK, so a FIFO cannot hold the open, and the
//     opened descriptor must be a regular file (fstat, not a stat of the
//     name, which could change in between): no FIFO, device (/dev/zero),
//     socket or directory is ever read.
//   - At most MaxBytes are read, in chunks, and the read stops when the
//     caller's context ends.
//
// Every refusal of a path, whatever its cause (outside the directory,
// missing, unreadable, a directory, a FIFO), is the same ErrNotAllowed, so
// the answer tells a caller nothing about files it may not read. The cause
// rides along in a RefusedError for the operator's log. Only a file inside
// the directory that was opened may be described further (ErrTooLarge, and
// what the caller's PEM parser says of its content).
//
// Who named the path decides the rule (Trust): paths from the API and from
// saved state (which API callers wrote) are Untrusted; paths in the
// operator's own configuration file are Trusted and may name any regular
// file, read under the same bounds. A config loader passes Trusted; nothing
// else may.
package pemfile

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// MaxBytes bounds a file: a certificate chain is a few KiB, and a large CA
// bundle (Mozilla's roots are about 220 KB) fits with room to spare, while
// a call's files (at most three) stay within a few MiB of memory, no more
// than one inline request may cost.
const MaxBytes = 1 << 20

// chunk is how much one read takes between checks of the context.
const chunk = 64 << 10

// maxPath is Linux's PATH_MAX: no longer path names a file, and a refused
// one is logged, so its length is bounded too.
const maxPath = 4096

var (
	// ErrNoDir refuses an Untrusted path when no directory is allowed.
	ErrNoDir = errors.New("file paths are not allowed: the gateway allows no directory for them")
	// ErrNotAllowed refuses an Untrusted path that is not a regular file
	// inside the allowed directory, whatever the reason.
	ErrNotAllowed = errors.New("not an allowed file")
	// ErrTooLarge refuses a file of more than MaxBytes.
	ErrTooLarge = fmt.Errorf("larger than %d bytes (1 MiB)", MaxBytes)
)

// RefusedError is ErrNotAllowed with its cause. Its message is
// ErrNotAllowed's alone: the cause (which names the path and what the
// filesystem said of it) is for the operator's log, never for the caller.
type RefusedError struct {
	Path  string
	Cause error
}

func (e *RefusedError) Error() string { return ErrNotAllowed.Error() }

// Unwrap makes errors.Is(err, ErrNotAllowed) true; the cause is not
// reachable by errors.Is, so a caller mapping errors cannot leak it.
func (e *RefusedError) Unwrap() error { return ErrNotAllowed }

func refused(path string, cause error) error { return &RefusedError{Path: path, Cause: cause} }

var (
	errOutside   = errors.New("outside the allowed directory")
	errIrregular = errors.New("not a regular file")
)

// Trust says who named a path.
type Trust int

const (
	// Untrusted paths come from API callers, or from saved state that API
	// callers wrote: only regular files inside the allowed directory.
	Untrusted Trust = iota
	// Trusted paths come from the operator's own configuration: any
	// regular file the gateway's user can read, under the same bounds.
	// Relative paths are taken as they are; a config loader resolves them
	// against the config file's directory first.
	Trusted
)

// Reader reads PEM files under the rules above. A nil *Reader, like one
// made by New(""), refuses every Untrusted path.
type Reader struct {
	dir   string // the allowed directory, absolute, symlinks resolved; "" allows none
	given string // the same as the operator wrote it, absolute and clean
}

// New returns a Reader allowing Untrusted paths inside dir; "" allows none.
// dir must exist and be a directory.
func New(dir string) (*Reader, error) {
	if dir == "" {
		return &Reader{}, nil
	}
	given, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("allowed directory %s: %w", dir, err)
	}
	real, err := filepath.EvalSymlinks(given)
	if err != nil {
		return nil, fmt.Errorf("allowed directory %s: %w", dir, err)
	}
	fi, err := os.Stat(real)
	if err != nil {
		return nil, fmt.Errorf("allowed directory %s: %w", dir, err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("allowed directory %s: not a directory", dir)
	}
	return &Reader{dir: real, given: given}, nil
}

// Dir returns the allowed directory, symlinks resolved; "" when none is.
func (r *Reader) Dir() string {
	if r == nil {
		return ""
	}
	return r.dir
}

// Read returns the contents of the file at path, under the rules of trust.
// An Untrusted relative path is taken inside the allowed directory.
// Errors: ErrNoDir, ErrNotAllowed (as a *RefusedError), ErrTooLarge, the
// context's error, or for Trusted paths the filesystem's own.
func (r *Reader) Read(ctx context.Context, path string, trust Trust) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if trust == Trusted {
		return readTrusted(ctx, path)
	}
	if r == nil || r.dir == "" {
		return nil, ErrNoDir
	}
	if path == "" {
		return nil, refused(path, errors.New("empty path"))
	}
	if len(path) > maxPath {
		return nil, refused(path[:maxPath]+"...", fmt.Errorf("path longer than %d bytes", maxPath))
	}
	p := path
	if !filepath.IsAbs(p) {
		p = filepath.Join(r.dir, p)
	}
	p = filepath.Clean(p)
	// Lexically inside first, so that a path elsewhere is refused without
	// a single lookup outside the directory.
	if _, ok := within(r.dir, p); !ok {
		if _, ok := within(r.given, p); !ok {
			return nil, refused(path, errOutside)
		}
	}
	real, err := filepath.EvalSymlinks(p)
	if err != nil {
		return nil, refused(path, err)
	}
	rel, ok := within(r.dir, real)
	if !ok {
		return nil, refused(path, fmt.Errorf("%w: resolves to %s", errOutside, real))
	}
	root, err := os.OpenRoot(r.dir)
	if err != nil {
		return nil, refused(path, err)
	}
	defer root.Close()
	f, err := root.OpenFile(rel, openFlags, 0)
	if err != nil {
		return nil, refused(path, err)
	}
	defer f.Close()
	b, err := readRegular(ctx, f)
	switch {
	case err == nil:
		return b, nil
	case errors.Is(err, ErrTooLarge):
		return nil, ErrTooLarge
	case ctx.Err() != nil && errors.Is(err, ctx.Err()):
		return nil, err
	}
	return nil, refused(path, err)
}

// within returns p relative to dir when p is dir or lies under it.
func within(dir, p string) (string, bool) {
	rel, err := filepath.Rel(dir, p)
	if err != nil || !filepath.IsLocal(rel) {
		return "", false
	}
	return rel, true
}

func readTrusted(ctx context.Context, path string) ([]byte, error) {
	f, err := os.OpenFile(path, openFlags, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := readRegular(ctx, f)
	if err != nil && (ctx.Err() == nil || !errors.Is(err, ctx.Err())) {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return b, err
}

// readRegular reads f, which must be a regular file (by fstat) of at most
// MaxBytes, checking ctx between chunks. The size fstat reports is only a
// hint: files such as those of /proc say 0 and hold more, so the bound is
// held on the bytes read.
func readRegular(ctx context.Context, f *os.File) ([]byte, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: %s", errIrregular, kind(fi.Mode()))
	}
	if fi.Size() > MaxBytes {
		return nil, ErrTooLarge
	}
	// One byte more than the file's size, so that a file which is what
	// fstat says meets EOF without growing the buffer.
	buf := make([]byte, 0, fi.Size()+1)
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := f.Read(buf[len(buf):min(cap(buf), len(buf)+chunk, MaxBytes+1)])
		buf = buf[:len(buf)+n]
		if len(buf) > MaxBytes {
			return nil, ErrTooLarge
		}
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

// kind names what a file that is not regular is, for the operator's log.
func kind(m os.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&os.ModeNamedPipe != 0:
		return "a FIFO"
	case m&os.ModeCharDevice != 0:
		return "a character device"
	case m&os.ModeDevice != 0:
		return "a block device"
	case m&os.ModeSocket != 0:
		return "a socket"
	}
	return "of mode " + m.String()
}
