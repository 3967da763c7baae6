package console_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a test leaves a goroutine behind: a gateway
// not stopped, a browser not closed.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
