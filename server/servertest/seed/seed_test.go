package seed_test

import (
	"fmt"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/tcpgate/tcpgate/server/servertest/seed"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeT records what Rand logs and whether it failed the test.
type fakeT struct {
	testing.TB
	logs  []string
	fatal string
}

func (f *fakeT) Helper() {}

func (f *fakeT) Logf(format string, args ...any) {
	f.logs = append(f.logs, fmt.Sprintf(format, args...))
}

func (f *fakeT) Fatalf(format string, args ...any) { f.fatal = fmt.Sprintf(format, args...) }

func draw(f *fakeT) []uint64 {
	r := seed.Rand(f)
	out := make([]uint64, 8)
	for i := range out {
		out[i] = r.Uint64()
	}
	return out
}

// TestReplay: a seed set in TCPGATE_TEST_SEED gives the same numbers each
// time and is logged with how to replay it; without it each source has a
// seed of its own, logged too.
func TestReplay(t *testing.T) {
	t.Setenv(seed.Env, "12345")
	var a, b fakeT
	if x, y := draw(&a), draw(&b); fmt.Sprint(x) != fmt.Sprint(y) {
		t.Errorf("the same seed drew %v and %v", x, y)
	}
	if len(a.logs) != 1 || !strings.Contains(a.logs[0], "random seed 12345") || !strings.Contains(a.logs[0], "TCPGATE_TEST_SEED=12345") {
		t.Errorf("logged %q, want the seed and how to replay it", a.logs)
	}

	t.Setenv(seed.Env, "")
	var c, d fakeT
	if x, y := draw(&c), draw(&d); fmt.Sprint(x) == fmt.Sprint(y) {
		t.Errorf("two sources from the clock drew the same %v", x)
	}
	if len(c.logs) != 1 || len(d.logs) != 1 || c.logs[0] == d.logs[0] || !strings.Contains(c.logs[0], "random seed ") {
		t.Errorf("logged %q and %q, want a seed each", c.logs, d.logs)
	}
}

// TestBadSeed: a seed that is not a number fails the test, naming the
// variable, rather than running with another seed.
func TestBadSeed(t *testing.T) {
	t.Setenv(seed.Env, "abc")
	var f fakeT
	seed.Rand(&f)
	if !strings.Contains(f.fatal, "TCPGATE_TEST_SEED") || !strings.Contains(f.fatal, `"abc"`) {
		t.Errorf("failed with %q, want the variable and its value named", f.fatal)
	}
}
