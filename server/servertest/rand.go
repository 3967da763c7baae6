package servertest

import (
	"math/rand/v2"
	"testing"

	"github.com/tcpgate/tcpgate/server/servertest/seed"
)

// Rand returns a random source for t whose seed is logged: from
// TCPGATE_TEST_SEED when set (to replay a failure), else from the clock.
// See package seed.
func Rand(t testing.TB) *rand.Rand {
	t.Helper()
	return seed.Rand(t)
}
