package cluster

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/tcpgate/tcpgate/server/internal/placement"
)

// Routed calls travel as NATS requests to tcpgate.NAME.node.ID.call: the
// method in a header, the request message as the body. The answer's
// status header says whether its body is the response message or a
// google.rpc.Status.
const (
	methodHeader   = "Tcpgate-Method"
	deadlineHeader = "Tcpgate-Deadline" // unix nanoseconds
	statusHeader   = "Tcpgate-Status"   // "ok" or "error"
	// maxServing bounds the routed calls a node runs at once; more wait
	// in NATS's buffer for the subscription.
	maxServing = 256
)

// Handler runs a routed call (rpc.Service.ServePeer).
type Handler func(ctx context.Context, method string, body []byte) ([]byte, error)

// Nodes returns the ids of the live nodes, this one included, sorted
// (rpc.Peers).
func (c *Cluster) Nodes() []string {
	infos := c.presence.nodes()
	out := make([]string, len(infos))
	for i, n := range infos {
		out[i] = n.Node
	}
	return out
}

// Call runs method on node (rpc.Peers). A node that does not answer
// within ctx, or is not connected, is a *placement.NodeError with
// placement.ErrNodeUnavailable; this node's own NATS connection being
// down is placement.ErrClusterUnavailable.
func (c *Cluster) Call(ctx context.Context, node, method string, req, resp proto.Message) error {
	if !c.nc.IsConnected() {
		return fmt.Errorf("calling %s on node %s: %w: this node's connection to NATS is down", method, node, placement.ErrClusterUnavailable)
	}
	body, err := proto.Marshal(req)
	if err != nil {
		return err
	}
	msg := &nats.Msg{Subject: c.subject("node", node, "call"), Data: body, Header: nats.Header{}}
	msg.Header.Set(methodHeader, method)
	if dl, ok := ctx.Deadline(); ok {
		msg.Header.Set(deadlineHeader, strconv.FormatInt(dl.UnixNano(), 10))
	}
	start := time.Now()
	reply, err := c.nc.RequestMsgWithContext(ctx, msg)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return &placement.NodeError{Node: node, Err: placement.ErrNodeUnavailable, Detail: "it is not connected to the cluster"}
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout):
		return &placement.NodeError{Node: node, Err: placement.ErrNodeUnavailable, Detail: fmt.Sprintf("no answer to %s within %v", method, time.Since(start).Round(time.Millisecond))}
	case err != nil && ctx.Err() != nil:
		return ctx.Err()
	case err != nil:
		return fmt.Errorf("calling %s on node %s: %w: %v", method, node, placement.ErrClusterUnavailable, err)
	}
	if reply.Header.Get(statusHeader) != "ok" {
		st := new(spb.Status)
		if err := proto.Unmarshal(reply.Data, st); err != nil {
			return fmt.Errorf("calling %s on node %s: the answer does not decode: %w", method, node, err)
		}
		return status.ErrorProto(st)
	}
	if err := proto.Unmarshal(reply.Data, resp); err != nil {
		return fmt.Errorf("calling %s on node %s: the answer does not decode: %w", method, node, err)
	}
	return nil
}

// Serve runs the calls other nodes route to this one with h, until
// Close.
func (c *Cluster) Serve(h Handler) error {
	slots := make(chan struct{}, maxServing)
	ctx, cancel := context.WithCancel(context.Background())
	sub, err := c.nc.Subscribe(c.subject("node", c.cfg.Node, "call"), func(m *nats.Msg) {
		slots <- struct{}{}
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			defer func() { <-slots }()
			c.serveOne(ctx, h, m)
		}()
	})
	if err != nil {
		cancel()
		return fmt.Errorf("cluster %q: serving routed calls: %w", c.cfg.Name, err)
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		<-c.closed
		_ = sub.Unsubscribe()
		cancel()
	}()
	return nil
}

func (c *Cluster) serveOne(ctx context.Context, h Handler, m *nats.Msg) {
	if ns, err := strconv.ParseInt(m.Header.Get(deadlineHeader), 10, 64); err == nil {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, time.Unix(0, ns))
		defer cancel()
	}
	out, err := h(ctx, m.Header.Get(methodHeader), m.Data)
	reply := &nats.Msg{Header: nats.Header{}}
	if err != nil {
		reply.Header.Set(statusHeader, "error")
		reply.Data, _ = proto.Marshal(status.Convert(err).Proto())
	} else {
		reply.Header.Set(statusHeader, "ok")
		reply.Data = out
	}
	if rerr := m.RespondMsg(reply); rerr != nil {
		c.cfg.Log.Warn("cluster: a routed call's answer was not sent", "method", m.Header.Get(methodHeader), "error", rerr)
	}
}
