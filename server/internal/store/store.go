// Package store keeps one state file on disk: an exclusive lock on it,
// atomic writes, a group-commit writer, and a loader that keeps what it
// can read of a damaged file. It knows nothing of what the records mean:
// each is an opaque line of text (the translation layer writes JSON).
//
// # Format
//
// The file is text, one record per line, so that damage to a part of it
// costs the records of that part only:
//
//	tcpgate-state 1
//	<crc32c of the record, 8 hex digits> <record>
//	...
//	end <number of records>
//
// A line whose checksum does not match, or that is not of this shape, is
// lost alone; a missing end line says the file was cut short. Writes never
// leave a torn file (temp file, fsync, rename, fsync of the directory):
// damage comes from elsewhere (a disk, an editor, a copy cut short), so a
// damaged file is renamed aside (FILE.corrupt-TIME) and never deleted.
package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// header is the first line of every state file; its number is the
// format's version.
const header = "tcpgate-state 1"

// MaxRecordBytes bounds one record, so that a file of garbage without
// newlines cannot make Load hold it all as one line.
const MaxRecordBytes = 16 << 20

// Errors of the store.
var (
	// ErrLocked: another process (or another File of this one) holds the
	// state file.
	ErrLocked = errors.New("state file locked by another process")
	// ErrClosed: the File was closed.
	ErrClosed = errors.New("state file closed")
	// ErrBadRecord: a record holds a newline or is too long.
	ErrBadRecord = errors.New("record not storable")
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Snapshot returns the state as of version: the records to write, each
// one line. The group-commit writer calls it once per write, so it must
// return the newest state.
type Snapshot func() (version uint64, records [][]byte)

// File is an open, locked state file.
type File struct {
	path string
	lock *os.File // held open with an exclusive flock for the File's life

	kick chan struct{} // capacity 1: a write is wanted
	stop chan struct{} // closed by Close
	wg   sync.WaitGroup
	once sync.Once

	mu sync.Mutex // guards the fields below
	// saved is the newest version written and synced.
	saved uint64
	// failed is the newest version whose write failed, and err its error.
	failed uint64
	err    error
	// written is closed, and replaced, after each write.
	written chan struct{}
	writes  uint64
	started bool
}

// Open locks the state file at path (through path.lock, next to it) and
// returns it. A second Open of the same path, from any process, fails
// with ErrLocked naming the file while the first is open.
func Open(path string) (*File, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("state file %s: %w", path, err)
	}
	lockPath := abs + ".lock"
	lf, err := os.OpenFile(lockPath, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening the lock of state file %s: %w", abs, err)
	}
	if err := syscall.Flock(int(lf.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lf.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("state file %s (lock %s): %w", abs, lockPath, ErrLocked)
		}
		return nil, fmt.Errorf("locking state file %s: %w", abs, err)
	}
	return &File{
		path:    abs,
		lock:    lf,
		kick:    make(chan struct{}, 1),
		stop:    make(chan struct{}),
		written: make(chan struct{}),
	}, nil
}

// Path is the state file's absolute path.
func (f *File) Path() string { return f.path }

// Report says what Load could not read of a damaged file.
type Report struct {
	// Lost describes each part that was lost, with its line number.
	Lost []string
	// RenamedTo is where the damaged file went; empty when it was sound.
	RenamedTo string
}

// Damaged reports whether anything was lost.
func (r Report) Damaged() bool { return len(r.Lost) > 0 }

// Load reads the state file: every record it could read, in order, and a
// report of what it could not. A missing file is an empty state. A
// damaged file is renamed aside (never deleted); the next write makes a
// new one from what the caller keeps.
func (f *File) Load() ([][]byte, Report, error) {
	b, err := os.ReadFile(f.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, Report{}, nil
	}
	if err != nil {
		return nil, Report{}, fmt.Errorf("reading state file %s: %w", f.path, err)
	}
	recs, rep := Decode(b)
	if rep.Damaged() {
		aside := fmt.Sprintf("%s.corrupt-%s", f.path, time.Now().UTC().Format("20060102T150405.000000000Z"))
		if err := os.Rename(f.path, aside); err != nil {
			return nil, rep, fmt.Errorf("renaming damaged state file %s aside: %w", f.path, err)
		}
		if err := syncDir(filepath.Dir(f.path)); err != nil {
			return nil, rep, err
		}
		rep.RenamedTo = aside
	}
	return recs, rep, nil
}

// Decode parses a state file's bytes: the records whose line is sound,
// and a report of the lines that were not.
func Decode(b []byte) ([][]byte, Report) {
	var rep Report
	var recs [][]byte
	lines := bytes.SplitAfter(b, []byte("\n"))
	if len(lines) > 0 && len(lines[len(lines)-1]) == 0 {
		lines = lines[:len(lines)-1]
	}
	ended := false
	recordLines := 0 // sound or not, to check the end line against
	for i, raw := range lines {
		n := i + 1
		line, complete := bytes.CutSuffix(raw, []byte("\n"))
		switch {
		case ended:
			rep.Lost = append(rep.Lost, fmt.Sprintf("line %d: after the end line", n))
			continue
		case i == 0:
			if string(line) != header || !complete {
				rep.Lost = append(rep.Lost, fmt.Sprintf("line 1: not the header %q", header))
			}
			continue
		case !complete:
			rep.Lost = append(rep.Lost, fmt.Sprintf("line %d: cut short (no newline)", n))
			continue
		}
		if rest, ok := bytes.CutPrefix(line, []byte("end ")); ok {
			ended = true
			count, err := strconv.Atoi(string(rest))
			if err != nil || count != recordLines {
				rep.Lost = append(rep.Lost, fmt.Sprintf("line %d: end line says %q records, the file has %d", n, rest, recordLines))
			}
			continue
		}
		recordLines++
		rec, err := decodeLine(line)
		if err != nil {
			rep.Lost = append(rep.Lost, fmt.Sprintf("line %d: %v", n, err))
			continue
		}
		recs = append(recs, rec)
	}
	if len(lines) == 0 {
		rep.Lost = append(rep.Lost, "empty file: no header")
	}
	if !ended {
		rep.Lost = append(rep.Lost, fmt.Sprintf("no end line after line %d: the file was cut short", len(lines)))
	}
	return recs, rep
}

func decodeLine(line []byte) ([]byte, error) {
	sum, rec, ok := bytes.Cut(line, []byte(" "))
	if !ok || len(sum) != 8 {
		return nil, errors.New("not a checksummed record")
	}
	want, err := strconv.ParseUint(string(sum), 16, 32)
	if err != nil {
		return nil, errors.New("not a checksummed record")
	}
	if crc32.Checksum(rec, castagnoli) != uint32(want) {
		return nil, errors.New("checksum mismatch")
	}
	return bytes.Clone(rec), nil
}

// Encode is the file's bytes for records; ErrBadRecord when one holds a
// newline or is longer than MaxRecordBytes.
func Encode(records [][]byte) ([]byte, error) {
	var buf bytes.Buffer
	buf.WriteString(header + "\n")
	for i, r := range records {
		if bytes.IndexByte(r, '\n') >= 0 || len(r) > MaxRecordBytes {
			return nil, fmt.Errorf("record %d: %w", i, ErrBadRecord)
		}
		fmt.Fprintf(&buf, "%08x ", crc32.Checksum(r, castagnoli))
		buf.Write(r)
		buf.WriteByte('\n')
	}
	fmt.Fprintf(&buf, "end %d\n", len(records))
	return buf.Bytes(), nil
}

// Start runs the group-commit writer over snap until Close. Call it once,
// after Load.
func (f *File) Start(snap Snapshot) {
	f.mu.Lock()
	if f.started {
		f.mu.Unlock()
		return
	}
	f.started = true
	f.mu.Unlock()
	f.wg.Go(func() { f.writeLoop(snap) })
}

func (f *File) writeLoop(snap Snapshot) {
	for {
		select {
		case <-f.stop:
			return
		case <-f.kick:
		}
		v, recs := snap()
		err := f.write(recs)
		f.mu.Lock()
		if err != nil {
			f.failed, f.err = v, err
		} else if v > f.saved {
			f.saved = v
		}
		f.writes++
		close(f.written)
		f.written = make(chan struct{})
		f.mu.Unlock()
	}
}

// Commit returns once the state of version (or a newer one) is on disk,
// synced. Callers that commit while a write is in progress are covered
// together by the next one: many commits, few writes.
func (f *File) Commit(ctx context.Context, version uint64) error {
	for {
		f.mu.Lock()
		if f.saved >= version {
			f.mu.Unlock()
			return nil
		}
		if f.failed >= version {
			err := f.err
			f.mu.Unlock()
			return err
		}
		if !f.started {
			f.mu.Unlock()
			return fmt.Errorf("committing to %s: writer not started", f.path)
		}
		written := f.written
		f.mu.Unlock()
		select {
		case f.kick <- struct{}{}:
		default: // a write is already wanted; it takes the newest snapshot
		}
		select {
		case <-written:
		case <-ctx.Done():
			return ctx.Err()
		case <-f.stop:
			return ErrClosed
		}
	}
}

// Writes is how many writes the File has made: with Commit's count, what
// group commit saved.
func (f *File) Writes() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.writes
}

// write replaces the file with records: a temp file in the same
// directory, synced, renamed over the file, and the directory synced, so
// that a crash leaves the old file or the new one.
func (f *File) write(records [][]byte) error {
	b, err := Encode(records)
	if err != nil {
		return fmt.Errorf("writing state file %s: %w", f.path, err)
	}
	dir := filepath.Dir(f.path)
	tmp, err := os.CreateTemp(dir, filepath.Base(f.path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("writing state file %s: %w", f.path, err)
	}
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := tmp.Chmod(0o600); err != nil {
		return fmt.Errorf("writing state file %s: %w", f.path, err)
	}
	if _, err := tmp.Write(b); err != nil {
		return fmt.Errorf("writing state file %s: %w", f.path, err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("syncing state file %s: %w", f.path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing state file %s: %w", f.path, err)
	}
	if err := os.Rename(tmp.Name(), f.path); err != nil {
		return fmt.Errorf("replacing state file %s: %w", f.path, err)
	}
	ok = true
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("syncing directory %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("syncing directory %s: %w", dir, err)
	}
	return nil
}

// Close stops the writer, waits for a write in progress, and releases
// the lock. Commits waiting then return ErrClosed. It is idempotent.
func (f *File) Close() error {
	var err error
	f.once.Do(func() {
		close(f.stop)
		f.wg.Wait()
		err = f.lock.Close() // releases the flock
	})
	return err
}

// CopyAside copies the state file, as it is now, to FILE.tag-TIME and
// returns that path: what a restore could not bring back is kept there.
func (f *File) CopyAside(tag string) (string, error) {
	b, err := os.ReadFile(f.path)
	if err != nil {
		return "", fmt.Errorf("copying state file %s aside: %w", f.path, err)
	}
	aside := fmt.Sprintf("%s.%s-%s", f.path, tag, time.Now().UTC().Format("20060102T150405.000000000Z"))
	if err := os.WriteFile(aside, b, 0o600); err != nil {
		return "", fmt.Errorf("copying state file %s aside: %w", f.path, err)
	}
	return aside, nil
}
