// Package placement names where an object of the gateway runs: on which
// node of a cluster, and the errors of reaching a node. A single gateway is
// a cluster of one node, so these words mean the same there: the only node
// is the gateway itself.
package placement

import (
	"errors"
	"fmt"
)

var (
	// ErrUnknownNode: a node id names no node of the cluster, or the
	// gateway is not in a cluster and the id is not its own.
	ErrUnknownNode = errors.New("unknown node")
	// ErrNodeUnavailable: the node that owns an object, or that was asked
	// to run one, did not answer in time.
	ErrNodeUnavailable = errors.New("node unavailable")
	// ErrClusterUnavailable: the gateway's connection to the cluster is
	// down.
	ErrClusterUnavailable = errors.New("cluster unavailable")
)

// NodeError says which node an error concerns. Err is one of the errors
// above.
type NodeError struct {
	Node string
	Err  error
	// Detail, when set, says more in words (what the node was asked, what
	// the cluster answered).
	Detail string
	// Field, when set, is the request field that named the node
	// ("node_id"), so that the API can point a form at it.
	Field string
}

// Check refuses node as the node of an object placed by a gateway whose
// own node id is self and which knows no other node: a single gateway,
// the cluster of one node. Empty means the node called, and self is
// always itself; any other id is a *NodeError with ErrUnknownNode naming
// field.
func Check(field, node, self string) error {
	if node == "" || node == self {
		return nil
	}
	return &NodeError{Node: node, Err: ErrUnknownNode, Field: field,
		Detail: fmt.Sprintf("this gateway is node %q and is not in a cluster (--cluster): leave %s empty or name %q", self, field, self)}
}

func (e *NodeError) Error() string {
	msg := fmt.Sprintf("node %q: %v", e.Node, e.Err)
	if e.Detail != "" {
		msg += ": " + e.Detail
	}
	return msg
}

func (e *NodeError) Unwrap() error { return e.Err }
