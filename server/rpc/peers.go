package rpc

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server/internal/page"
	"github.com/tcpgate/tcpgate/server/internal/placement"
)

// Routed control: in a cluster, a call about a connection or a listener
// that is not on the node called is made on the node it is on, and lists
// answer for every node. The call travels as its request message to the
// other node (Peers.Call), which runs it as a local call (ServePeer) and
// answers with its response or its status: validation, limits, the policy
// and the state file all take their usual path on the node that owns
// the object, and the response's header names that node.

// Peers reaches the other nodes of a cluster (cluster.Peers); nil in a
// single gateway.
type Peers interface {
	// Nodes returns the ids of the live nodes, this one included,
	// sorted.
	Nodes() []string
	// Call runs method (a GatewayService method name) on node with req
	// and fills resp. Its error is the status the node answered, or a
	// *placement.NodeError when it did not answer in time.
	Call(ctx context.Context, node, method string, req, resp proto.Message) error
}

// peerTimeout bounds a routed call whose context has no deadline.
const peerTimeout = 10 * time.Second

type peerKey struct{}

// fromPeer reports whether ctx is a call another node routed here: it
// runs here and is never routed on.
func fromPeer(ctx context.Context) bool {
	v, _ := ctx.Value(peerKey{}).(bool)
	return v
}

// routing reports whether calls on ctx may go to other nodes.
func (s *Service) routing(ctx context.Context) bool {
	return s.cfg.Peers != nil && !fromPeer(ctx)
}

// otherNodes returns the live nodes but this one.
func (s *Service) otherNodes() []string {
	return slices.DeleteFunc(s.cfg.Peers.Nodes(), func(n string) bool { return n == s.cfg.NodeID })
}

// withPeerTimeout bounds a routed call: by the caller's deadline, less a
// margin so that a node that does not answer is reported (Unavailable,
// NODE_UNAVAILABLE) before the caller's own deadline ends the call as a
// bare DeadlineExceeded; without a deadline, by peerTimeout plus extra
// (the call's own timeout: a Send's await).
func withPeerTimeout(ctx context.Context, extra time.Duration) (context.Context, context.CancelFunc) {
	if dl, ok := ctx.Deadline(); ok {
		margin := min(time.Until(dl)/10, 250*time.Millisecond)
		return context.WithDeadline(ctx, dl.Add(-margin))
	}
	return context.WithTimeout(ctx, peerTimeout+extra)
}

// onNode runs method on node when node names another live node of the
// cluster. It returns false when the call is this node's to make: node is
// empty or this node, or the gateway is not in a cluster (the engine then
// refuses another node itself).
func onNode[Resp proto.Message](s *Service, ctx context.Context, node, method string, req proto.Message, resp Resp) (Resp, bool, error) {
	if node == "" || node == s.cfg.NodeID || !s.routing(ctx) {
		return resp, false, nil
	}
	if !slices.Contains(s.cfg.Peers.Nodes(), node) {
		return resp, true, s.status(&placement.NodeError{Node: node, Err: placement.ErrUnknownNode, Detail: "the cluster has no live node of that id: " + strings.Join(s.cfg.Peers.Nodes(), ", ")})
	}
	ctx, cancel := withPeerTimeout(ctx, 0)
	defer cancel()
	if err := s.cfg.Peers.Call(ctx, node, method, req, resp); err != nil {
		return resp, true, s.status(err)
	}
	return resp, true, nil
}

// elsewhere runs method on the node that has the object a local call did
// not find: when err is notFound (the object's *_NOT_FOUND reason) and
// the gateway is in a cluster, every other node is asked at once, and the
// one that has it answers. When none has it the local error stands; when
// one did not answer in time, and none had it, the call is Unavailable
// with reason NODE_UNAVAILABLE naming the node.
func elsewhere[Resp proto.Message](s *Service, ctx context.Context, err error, notFound tcpgatev1.ErrorReason, method string, req proto.Message, newResp func() Resp, extra time.Duration) (Resp, error) {
	var zero Resp
	if r, _ := ReasonOf(err); r != notFound || !s.routing(ctx) {
		return zero, err
	}
	nodes := s.otherNodes()
	if len(nodes) == 0 {
		return zero, err
	}
	ctx, cancel := withPeerTimeout(ctx, extra)
	defer cancel()
	type answer struct {
		node string
		resp Resp
		err  error
	}
	answers := make(chan answer, len(nodes))
	var wg sync.WaitGroup
	for _, n := range nodes {
		wg.Go(func() {
			resp := newResp()
			answers <- answer{n, resp, s.cfg.Peers.Call(ctx, n, method, req, resp)}
		})
	}
	defer wg.Wait()
	defer cancel() // the others need not finish once one answered
	var silent []string
	for range nodes {
		a := <-answers
		if a.err == nil {
			return a.resp, nil
		}
		if r, _ := ReasonOf(a.err); r == notFound {
			continue
		}
		if errors.Is(a.err, placement.ErrClusterUnavailable) {
			return zero, s.status(a.err) // this node cannot reach any
		}
		if unreachable(a.err) {
			silent = append(silent, a.node)
			continue
		}
		return zero, s.status(a.err) // the owner answered with an error
	}
	if len(silent) > 0 {
		slices.Sort(silent)
		return zero, s.status(&placement.NodeError{Node: silent[0], Err: placement.ErrNodeUnavailable,
			Detail: fmt.Sprintf("the object is on no node that answered, and %s did not answer", strings.Join(silent, ", "))})
	}
	return zero, err
}

// unreachable reports whether err says a node could not be reached,
// rather than being a status the node answered.
func unreachable(err error) bool {
	var ne *placement.NodeError
	if errors.As(err, &ne) {
		return true
	}
	r, _ := ReasonOf(err)
	return r == tcpgatev1.ErrorReason_ERROR_REASON_NODE_UNAVAILABLE || r == tcpgatev1.ErrorReason_ERROR_REASON_CLUSTER_UNAVAILABLE
}

// clusterToken is a list's page token in a cluster: the node the next
// page starts on, and that node's own token.
func clusterToken(node, inner string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(node + "\x00" + inner))
}

func parseClusterToken(tok string, nodes []string) (node, inner string, err error) {
	if tok == "" {
		return nodes[0], "", nil
	}
	b, derr := base64.RawURLEncoding.DecodeString(tok)
	node, inner, ok := strings.Cut(string(b), "\x00")
	if derr != nil || !ok || !slices.Contains(nodes, node) {
		return "", "", invalid("page_token", "not a page token of this cluster, or its node is gone: list again from the first page")
	}
	return node, inner, nil
}

// listAll makes one page of a cluster-wide list: the nodes in id order,
// each node's objects in its own order, page by page. get lists one node
// (this one locally), items and next read a response.
func listAll[Req proto.Message, Resp proto.Message](s *Service, ctx context.Context, method string, req Req, size int32, token string,
	local func(context.Context, Req) (Resp, error), newResp func() Resp,
	with func(r Req, size int32, token string) Req, move func(dst, src Resp) int, nextToken func(Resp) string, setNext func(Resp, string),
) (Resp, error) {
	nodes := s.cfg.Peers.Nodes()
	start, inner, err := parseClusterToken(token, nodes)
	var zero Resp
	if err != nil {
		return zero, err
	}
	n, err := page.Size(int(size))
	if err != nil {
		return zero, s.status(err)
	}
	out := newResp()
	left := int32(n)
	for i := slices.Index(nodes, start); i < len(nodes); i++ {
		node := nodes[i]
		r := with(req, left, inner)
		var resp Resp
		if node == s.cfg.NodeID {
			resp, err = local(ctx, r)
		} else {
			resp = newResp()
			cctx, cancel := withPeerTimeout(ctx, 0)
			err = s.cfg.Peers.Call(cctx, node, method, r, resp)
			cancel()
		}
		if err != nil {
			return zero, s.status(err)
		}
		left -= int32(move(out, resp))
		inner = ""
		if nt := nextToken(resp); nt != "" {
			setNext(out, clusterToken(node, nt))
			return out, nil
		}
		if left <= 0 {
			if i+1 < len(nodes) {
				setNext(out, clusterToken(nodes[i+1], ""))
			}
			return out, nil
		}
	}
	return out, nil
}

// ServePeer runs a call another node routed here: method names the
// GatewayService method, body is its request message. It returns the
// response message, or the status error the call ended with.
func (s *Service) ServePeer(ctx context.Context, method string, body []byte) ([]byte, error) {
	m, ok := peerMethods[method]
	if !ok {
		return nil, Status(codes.Unimplemented, tcpgatev1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT, "method "+method+" is not routed between nodes (a node of another release?)", nil)
	}
	resp, err := m(s, context.WithValue(ctx, peerKey{}, true), body)
	if err != nil {
		return nil, err
	}
	return proto.Marshal(resp)
}

type peerFunc func(s *Service, ctx context.Context, body []byte) (proto.Message, error)

func peerMethod[Req proto.Message, Resp proto.Message](newReq func() Req, call func(*Service, context.Context, Req) (Resp, error)) peerFunc {
	return func(s *Service, ctx context.Context, body []byte) (proto.Message, error) {
		req := newReq()
		if err := proto.Unmarshal(body, req); err != nil {
			return nil, Status(codes.InvalidArgument, tcpgatev1.ErrorReason_ERROR_REASON_MALFORMED_REQUEST, "routed request does not decode: "+err.Error(), nil)
		}
		return call(s, ctx, req)
	}
}
