// Package seed gives tests a random source whose seed they log, so a
// failure can be replayed with TCPGATE_TEST_SEED. It imports nothing of
// tcpgate, so the engine's own tests (and the rpc package's internal ones,
// which cannot import servertest) use it too; daemon tests call
// servertest.Rand.
package seed

import (
	"math/rand/v2"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"time"
)

// Env is the variable that replays a run: its value is the seed a failed
// test logged.
const Env = "TCPGATE_TEST_SEED"

// drawn counts the sources made from the clock, so that two made within
// one tick of a coarse clock still get seeds of their own.
var drawn atomic.Uint64

// Rand returns a source seeded from TCPGATE_TEST_SEED when it is set, else
// from the clock, and logs the seed and how to replay it. A value of Env
// that is not a number fails the test rather than silently picking
// another seed.
func Rand(t testing.TB) *rand.Rand {
	t.Helper()
	s := uint64(time.Now().UnixNano()) + drawn.Add(1)
	if v := os.Getenv(Env); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("reading %s=%q: want an unsigned decimal seed: %v", Env, v, err)
		}
		s = n
	}
	t.Logf("random seed %d (replay with %s=%d)", s, Env, s)
	return rand.New(rand.NewPCG(s, s^0x9e3779b97f4a7c15))
}
