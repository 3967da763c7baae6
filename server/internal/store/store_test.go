package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

func recs(ss ...string) [][]byte {
	out := make([][]byte, len(ss))
	for i, s := range ss {
		out[i] = []byte(s)
	}
	return out
}

// TestLockTwoProcesses: a second process on the same file is refused with
// the file named, and may open it once the first has closed it.
func TestLockTwoProcesses(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state")
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	second := func() (string, error) {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), lockHelperEnv+"="+path)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := second()
	if err == nil || !strings.Contains(out, "locked") || !strings.Contains(out, path) {
		t.Errorf("second process while locked: %v, output %q; want a refusal naming %s", err, out, path)
	}
	if _, err := Open(path); !errors.Is(err, ErrLocked) {
		t.Errorf("second Open in the same process: %v, want ErrLocked", err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if out, err := second(); err != nil || !strings.Contains(out, "opened") {
		t.Errorf("second process after Close: %v, output %q", err, out)
	}
}

// TestRoundTrip: what a commit wrote is what Load reads, mode 0600, and
// no temp file is left behind.
func TestRoundTrip(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state")
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	want := recs(`{"a":1}`, `{"b":"x y"}`, "")
	f.Start(func() (uint64, [][]byte) { return 1, want })
	if err := f.Commit(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	f.Close()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", st.Mode().Perm())
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Errorf("temp file left: %s", e.Name())
		}
	}
	g, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	got, rep, err := g.Load()
	if err != nil || rep.Damaged() {
		t.Fatalf("Load: %v, report %v", err, rep)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("Load = %q, want %q", got, want)
	}
}

// TestDamage: a damaged file loses only its damaged lines, is renamed
// aside with its bytes intact, and the report says which lines went.
func TestDamage(t *testing.T) {
	good, err := Encode(recs("one", "two", "three"))
	if err != nil {
		t.Fatal(err)
	}
	flipped := bytes.Replace(good, []byte("two"), []byte("twx"), 1)
	for _, tc := range []struct {
		name     string
		content  []byte
		want     []string
		lostLine string
	}{
		{"bit flip in a record", flipped, []string{"one", "three"}, "line 3: checksum mismatch"},
		{"cut inside a record", good[:len(good)-12], []string{"one", "two"}, "cut short"},
		{"cut at a record's end", good[:bytes.LastIndex(good, []byte("end"))], []string{"one", "two", "three"}, "no end line"},
		{"garbage line", bytes.Replace(good, []byte("\nend"), []byte("\nnot a record\nend"), 1), []string{"one", "two", "three"}, "line 5: not a checksummed record"},
		{"not a state file", []byte("hello\n"), nil, "not the header"},
		{"empty", nil, nil, "empty file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "state")
			if err := os.WriteFile(path, tc.content, 0o600); err != nil {
				t.Fatal(err)
			}
			f, err := Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			got, rep, err := f.Load()
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(got) != fmt.Sprint(recs(tc.want...)) {
				t.Errorf("records %q, want %q", got, tc.want)
			}
			if !rep.Damaged() || !strings.Contains(strings.Join(rep.Lost, "; "), tc.lostLine) {
				t.Errorf("report %v, want one saying %q", rep.Lost, tc.lostLine)
			}
			aside, err := os.ReadFile(rep.RenamedTo)
			if err != nil || !bytes.Equal(aside, tc.content) || !strings.HasPrefix(rep.RenamedTo, path+".corrupt-") {
				t.Errorf("renamed aside to %q: %v, same bytes %v", rep.RenamedTo, err, bytes.Equal(aside, tc.content))
			}
			if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("damaged file still at %s: %v", path, err)
			}
		})
	}
}

// TestMissingFile: no file is an empty state, not damage.
func TestMissingFile(t *testing.T) {
	f, err := Open(filepath.Join(t.TempDir(), "state"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got, rep, err := f.Load()
	if err != nil || rep.Damaged() || len(got) != 0 {
		t.Errorf("Load of no file: %q %v %v", got, rep, err)
	}
}

// TestGroupCommit: many goroutines committing at once are covered by
// fewer writes than commits, and each returns only once a write at or
// past its version is on disk.
func TestGroupCommit(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state")
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var (
		mu      sync.Mutex
		version uint64
		state   []string
	)
	f.Start(func() (uint64, [][]byte) {
		mu.Lock()
		defer mu.Unlock()
		return version, recs(state...)
	})
	const goroutines, each = 32, 20
	var commits atomic.Uint64
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := range each {
				mu.Lock()
				version++
				v := version
				state = append(state, fmt.Sprintf("g%d-%d", g, i))
				mu.Unlock()
				if err := f.Commit(context.Background(), v); err != nil {
					t.Error(err)
					return
				}
				commits.Add(1)
				// What was acknowledged is on disk.
				b, err := os.ReadFile(path)
				if err != nil {
					t.Error(err)
					return
				}
				if !bytes.Contains(b, fmt.Appendf(nil, " g%d-%d\n", g, i)) {
					t.Errorf("g%d-%d acknowledged but not in the file", g, i)
				}
			}
		})
	}
	wg.Wait()
	if c, w := commits.Load(), f.Writes(); w >= c || c != goroutines*each {
		t.Errorf("%d commits made %d writes, want fewer writes than commits", c, w)
	} else {
		t.Logf("%d commits, %d writes", c, w)
	}
}

// TestCommitFailure: a write that fails is the error of the commits it
// covered, and a later commit tries again.
func TestCommitFailure(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "d")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "state")
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var v atomic.Uint64
	f.Start(func() (uint64, [][]byte) { return v.Load(), recs("x") })
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := f.Commit(context.Background(), v.Add(1)); err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("commit into a removed directory: %v, want an error naming %s", err, path)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := f.Commit(context.Background(), v.Add(1)); err != nil {
		t.Errorf("commit after the directory is back: %v", err)
	}
}

// TestBadRecord: a record holding a newline is refused, not written.
func TestBadRecord(t *testing.T) {
	if _, err := Encode(recs("a\nb")); !errors.Is(err, ErrBadRecord) {
		t.Errorf("Encode of a newline: %v, want ErrBadRecord", err)
	}
}

// FuzzDecode: whatever the bytes, Decode does not panic, and what it
// reads encodes back to a file that decodes to the same records, sound.
func FuzzDecode(f *testing.F) {
	good, _ := Encode(recs(`{"kind":"listener"}`, "two"))
	f.Add(good)
	f.Add(good[:len(good)-3])
	f.Add([]byte("tcpgate-state 1\nend 0\n"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		got, _ := Decode(b)
		enc, err := Encode(got)
		if err != nil {
			t.Fatalf("records Decode returned do not encode: %v", err)
		}
		again, rep := Decode(enc)
		if rep.Damaged() || fmt.Sprint(again) != fmt.Sprint(got) {
			t.Fatalf("re-decoded %q (%v), want %q", again, rep.Lost, got)
		}
	})
}

// BenchmarkGroupCommit: one op is one Commit of a new version, from
// -cpu × 16 goroutines at once (RunParallel's); writes/commit is what
// group commit saves over a write per change.
//
//	go test -run '^$' -bench GroupCommit -cpu 1,4 ./server/internal/store
func BenchmarkGroupCommit(b *testing.B) {
	f, err := Open(filepath.Join(b.TempDir(), "state"))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	var version atomic.Uint64
	records := recs(strings.Repeat("x", 200), strings.Repeat("y", 200))
	f.Start(func() (uint64, [][]byte) { return version.Load(), records })
	b.SetParallelism(16)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := f.Commit(context.Background(), version.Add(1)); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(f.Writes())/float64(b.N), "writes/commit")
}
