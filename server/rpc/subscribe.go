package rpc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server/internal/event"
	"github.com/tcpgate/tcpgate/server/internal/hub"
)

// Subscribe over gRPC: the request checked and turned into hub options,
// and the stream (stream.go opens it for gRPC and REST alike).

// HeaderLastSequence is the response header of Subscribe, sent as soon as
// the subscription is live: the newest sequence at that moment. A client
// that waits for the headers knows that nothing after it will be missed.
const HeaderLastSequence = "tcpgate-last-sequence"

// subscription validates req, exactly as Subscribe and the REST event
// stream both need it, and returns the hub options and payload format it
// asks for.
func (s *Service) subscription(req *tcpgatev1.SubscribeRequest) (hub.SubscribeOptions, payloadFormat, error) {
	opts := hub.SubscribeOptions{
		Filter: hub.Filter{
			ListenerIDs:   req.GetListenerIds(),
			ConnectionIDs: req.GetConnectionIds(),
			IncludeSent:   req.GetIncludeSent(),
		},
		Since:      req.GetSinceSequence(),
		QueueBytes: s.cfg.SubscriberQueueBytes,
	}
	// The hub bounds how many ids a filter holds (its own decision, as for
	// every subscriber); each id is held to the rule of the ids it names.
	if err := checkFilterIDs("listener_ids", req.GetListenerIds()); err != nil {
		return opts, 0, err
	}
	if err := checkFilterIDs("connection_ids", req.GetConnectionIds()); err != nil {
		return opts, 0, err
	}
	for i, k := range req.GetKinds() {
		ek, ok := kindFromProto(k)
		if !ok {
			return opts, 0, invalid(fmt.Sprintf("kinds[%d]", i), "%s cannot be filtered on", k)
		}
		// The markers (EVENTS_DROPPED, STREAM_STARTED,
		// INCARNATION_CHANGED) are always sent, whatever the filter: the
		// hub never publishes them, so naming them matches nothing more.
		opts.Filter.Kinds = append(opts.Filter.Kinds, ek)
	}
	os, err := originsFromProto("origins", req.GetOrigins())
	if err != nil {
		return opts, 0, err
	}
	opts.Filter.Origins = os
	if inc := req.GetSinceIncarnation(); inc != "" {
		if err := checkID("since_incarnation", inc); err != nil {
			return opts, 0, err
		}
		opts.Incarnation = inc
	}
	policy, ok := policies[req.GetSlowConsumer()]
	if !ok {
		return opts, 0, invalid("slow_consumer", "unknown value %d", int32(req.GetSlowConsumer()))
	}
	opts.Policy = policy
	format, err := formatFromProto("payload_format", req.GetPayloadFormat())
	if err != nil {
		return opts, 0, err
	}
	return opts, format, nil
}

// checkFilterIDs checks each id of a Subscribe filter, up to one more than
// the hub allows: a longer list is the hub's refusal, not a reason to
// check a million ids first.
func checkFilterIDs(field string, ids []string) error {
	for i, id := range ids[:min(len(ids), hub.MaxFilterIDs+1)] {
		if err := checkID(fmt.Sprintf("%s[%d]", field, i), id); err != nil {
			return err
		}
	}
	return nil
}

// streamError is the status that ends an event stream whose Next returned
// err, with ctx the stream's context.
func (s *Service) streamError(ctx context.Context, err error) error {
	if errors.Is(err, hub.ErrClosed) {
		return Status(codes.Unavailable, tcpgatev1.ErrorReason_ERROR_REASON_SHUTTING_DOWN, "gateway shutting down; resubscribe with since_incarnation and since_sequence (the last sequence seen + 1) to resume", nil)
	}
	if ctx.Err() != nil {
		return s.status(ctx.Err())
	}
	return s.status(err)
}

// Subscribe implements GatewayService.Subscribe.
func (s *Service) Subscribe(req *tcpgatev1.SubscribeRequest, stream grpc.ServerStreamingServer[tcpgatev1.SubscribeResponse]) error {
	opts, format, err := s.subscription(req)
	if err != nil {
		return err
	}
	sub, err := s.openStream(opts)
	if err != nil {
		return err
	}
	defer sub.Close()
	// The newest sequence as the subscription went live, not read again:
	// an event published since is one the stream carries.
	if err := stream.SendHeader(metadata.Pairs(
		HeaderLastSequence, strconv.FormatUint(sub.header.LastSequence, 10),
		HeaderIncarnation, sub.header.Incarnation,
		HeaderNodeID, sub.header.Node,
	)); err != nil {
		return err
	}

	// A send that cannot complete within its bound (the client does not
	// read) ends the stream, by closing its connection (see ConnTracker);
	// once the gateway shuts down, the bound is FinalWriteTimeout.
	ctx := stream.Context()
	var remote net.Addr
	if p, ok := peer.FromContext(ctx); ok {
		remote = p.Addr
	}
	watch := newSendWatch(func() {
		closed := s.cfg.Conns.close(remote)
		s.log.Warn("subscriber accepts nothing; ending its stream", "remote_addr", fmt.Sprint(remote), "connection_closed", closed)
	})
	defer watch.stop()
	stopEnding := AfterClose(s.cfg.Hub.Closed(), watch.shorten)
	defer stopEnding()

	var batch []*event.Event
	var els []element
	for {
		batch, err = sub.Next(ctx, batch[:0])
		// Not stream.Send(*SubscribeResponse): the server's Codec
		// (codec.go) encodes an eventBatch, the engine's events as they
		// are, into the same bytes, caching each event's encoding for
		// every other subscriber and sending large payloads without
		// copying them. SendMsg takes any message the codec knows. A hub
		// batch is cut by what is sent, so that each message stays
		// within what a client reads by default.
		var eerr error
		if els, eerr = elements(els[:0], batch, format); eerr != nil {
			return s.status(eerr)
		}
		for rest, restEls := batch, els; len(rest) > 0; {
			n := fitBatch(restEls, maxMessageBytes)
			watch.begin()
			serr := stream.SendMsg(eventBatch{events: rest[:n], format: format, els: restEls[:n]})
			watch.end()
			if serr != nil {
				return serr
			}
			rest, restEls = rest[n:], restEls[n:]
		}
		clear(batch)
		clear(els)
		if err != nil {
			return s.streamError(ctx, err)
		}
	}
}
