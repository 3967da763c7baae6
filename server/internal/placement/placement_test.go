package placement_test

import (
	"errors"
	"fmt"
	"testing"

	"go.uber.org/goleak"

	"github.com/tcpgate/tcpgate/server/internal/placement"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestNodeError(t *testing.T) {
	err := fmt.Errorf("sending: %w", &placement.NodeError{Node: "b", Err: placement.ErrNodeUnavailable, Detail: "no answer in 2s"})
	if !errors.Is(err, placement.ErrNodeUnavailable) || errors.Is(err, placement.ErrUnknownNode) {
		t.Fatalf("errors.Is on %v: wrong sentinel", err)
	}
	var ne *placement.NodeError
	if !errors.As(err, &ne) || ne.Node != "b" {
		t.Fatalf("errors.As(%v) = %v, want node b", err, ne)
	}
	if want := `sending: node "b": node unavailable: no answer in 2s`; err.Error() != want {
		t.Fatalf("Error() = %q, want %q", err.Error(), want)
	}
}
