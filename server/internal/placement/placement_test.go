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

func TestCheck(t *testing.T) {
	for _, tc := range []struct {
		node string
		ok   bool
	}{{"", true}, {"a", true}, {"elsewhere", false}, {"A", false}} {
		err := placement.Check("node_id", tc.node, "a")
		if tc.ok {
			if err != nil {
				t.Errorf("Check(%q) = %v, want nil", tc.node, err)
			}
			continue
		}
		var ne *placement.NodeError
		if !errors.As(err, &ne) || !errors.Is(err, placement.ErrUnknownNode) || ne.Node != tc.node || ne.Field != "node_id" {
			t.Errorf("Check(%q) = %#v, want a NodeError of ErrUnknownNode naming node %q and field node_id", tc.node, err, tc.node)
		}
	}
}
