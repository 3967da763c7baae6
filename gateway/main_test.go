package gateway_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a test leaves a goroutine behind: an event
// stream handler that never returned, a gRPC or HTTP connection left open.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
