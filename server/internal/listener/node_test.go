package listener_test

import (
	"context"
	"errors"
	"testing"

	"github.com/tcpgate/tcpgate/server/internal/listener"
	"github.com/tcpgate/tcpgate/server/internal/placement"
	"github.com/tcpgate/tcpgate/server/internal/registry"
)

// A single gateway is a cluster of one node: a listener asked of its own
// node, of no node or of every node starts on it and reports its node;
// one asked of another node is refused before anything binds, naming the
// node and the field.
func TestStartNode(t *testing.T) {
	r, rec := newGateway(t, listener.Config{Node: "a"}, registry.Config{Node: "a"})
	for _, spec := range []listener.Spec{{}, {Node: "a"}, {EveryNode: true}} {
		info := start(t, r, spec)
		if info.Node != "a" || info.EveryNode != spec.EveryNode {
			t.Errorf("Start(%+v): Node %q, EveryNode %v; want node a, every node %v", spec, info.Node, info.EveryNode, spec.EveryNode)
		}
		if got, err := r.Get(info.ID); err != nil || got.Node != "a" {
			t.Errorf("Get(%s) = node %q, %v; want node a", info.ID, got.Node, err)
		}
	}

	before := len(rec.Events())
	for _, check := range []func(listener.Spec) error{
		func(s listener.Spec) error { _, err := r.Start(context.Background(), s); return err },
		r.Check,
	} {
		err := check(listener.Spec{Host: "127.0.0.1", Node: "elsewhere"})
		var ne *placement.NodeError
		if !errors.Is(err, placement.ErrUnknownNode) || !errors.As(err, &ne) || ne.Node != "elsewhere" || ne.Field != "node_id" {
			t.Fatalf("node elsewhere: %v, want ErrUnknownNode naming node elsewhere and field node_id", err)
		}
	}
	if n := len(rec.Events()); n != before {
		t.Errorf("a refused Start published %d events", n-before)
	}
	if n := len(r.List()); n != 3 {
		t.Errorf("%d listeners after the refused Start, want the 3 started", n)
	}
}
