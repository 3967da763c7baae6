package gateway

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/grpc-ecosystem/grpc-gateway/v2/utilities"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server/rpc"
)

// Content types of the event stream.
const (
	contentNDJSON = "application/x-ndjson"
	contentSSE    = "text/event-stream"
)

// events serves GET /v1/events: one JSON object per event and line
// (NDJSON), or Server-Sent Events when the client accepts
// text/event-stream. Each batch from the gRPC stream is written and flushed
// at once.
func (g *Gateway) events(w http.ResponseWriter, r *http.Request, _ map[string]string) {
	sse := acceptsSSE(r)
	m := &runtime.JSONPb{MarshalOptions: marshalOptions}
	fail := func(err error) { runtime.DefaultHTTPErrorHandler(r.Context(), g.mux, m, w, r, err) }

	req := &tcpgatev1.SubscribeRequest{}
	if err := runtime.PopulateQueryParameters(req, r.URL.Query(), utilities.NewDoubleArray(nil)); err != nil {
		fail(status.Errorf(codes.InvalidArgument, "query: %v", err))
		return
	}
	// A reconnecting EventSource sends the URL it first opened, whose
	// sinceSequence is where that first stream began, and Last-Event-ID,
	// where it left off: the header wins, or every reconnect would replay
	// what the page already has.
	if id := r.Header.Get("Last-Event-ID"); id != "" && sse {
		seq, err := strconv.ParseUint(strings.TrimSpace(id), 10, 64)
		if err != nil {
			fail(status.Errorf(codes.InvalidArgument, "Last-Event-ID: %q is not a sequence number", id))
			return
		}
		// An EventSource resumes after the last event it saw.
		req.SinceSequence = seq + 1
	}

	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	stop := context.AfterFunc(g.ctx, cancel) // the gateway is closing
	defer stop()
	if auth := r.Header.Get("Authorization"); auth != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", auth)
	}
	stream, err := g.client.Subscribe(ctx, req)
	if err != nil {
		fail(err)
		return
	}
	md, err := stream.Header()
	if err != nil {
		fail(err)
		return
	}
	if len(md.Get(rpc.HeaderLastSequence)) == 0 {
		// No headers means the call failed before the subscription started.
		_, err := stream.Recv()
		if err == nil {
			err = status.Error(codes.Internal, "event stream started without headers")
		}
		fail(err)
		return
	}

	h := w.Header()
	if sse {
		h.Set("Content-Type", contentSSE)
	} else {
		h.Set("Content-Type", contentNDJSON)
	}
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no") // nginx: do not buffer the stream
	h.Set("Tcpgate-Last-Sequence", md.Get(rpc.HeaderLastSequence)[0])
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	bw := bufio.NewWriterSize(w, 32<<10)
	flush := func() error {
		if err := bw.Flush(); err != nil {
			return err
		}
		return rc.Flush()
	}
	if sse {
		// Tells EventSource how long to wait before it reconnects.
		fmt.Fprint(bw, "retry: 2000\n\n")
	}
	if err := flush(); err != nil {
		return
	}

	batches := make(chan *tcpgatev1.SubscribeResponse)
	errc := make(chan error, 1)
	go recvAll(ctx, stream, batches, errc)
	defer func() {
		cancel()
		for range batches {
		}
	}()

	var heartbeat <-chan time.Time
	if sse {
		t := time.NewTicker(g.cfg.Heartbeat)
		defer t.Stop()
		heartbeat = t.C
	}
	for {
		select {
		case resp, ok := <-batches:
			if !ok {
				g.endStream(bw, sse, <-errc, r.Context().Err() != nil)
				_ = flush()
				return
			}
			if err := writeBatch(bw, sse, resp.GetEvents()); err != nil {
				return
			}
			if err := flush(); err != nil {
				return
			}
		case <-heartbeat:
			fmt.Fprint(bw, ": heartbeat\n\n")
			if err := flush(); err != nil {
				return
			}
		}
	}
}

// recvAll forwards every batch of stream to batches until it ends, then
// sends the error that ended it and closes batches.
func recvAll(ctx context.Context, stream grpc.ServerStreamingClient[tcpgatev1.SubscribeResponse], batches chan<- *tcpgatev1.SubscribeResponse, errc chan<- error) {
	defer close(batches)
	for {
		resp, err := stream.Recv()
		if err != nil {
			errc <- err
			return
		}
		select {
		case batches <- resp:
		case <-ctx.Done():
			errc <- ctx.Err()
			return
		}
	}
}

func writeBatch(w io.Writer, sse bool, events []*tcpgatev1.Event) error {
	for _, e := range events {
		b, err := marshalOptions.Marshal(e)
		if err != nil {
			return err
		}
		if sse {
			if e.GetSequence() > 0 {
				fmt.Fprintf(w, "id: %d\n", e.GetSequence())
			}
			fmt.Fprintf(w, "data: %s\n\n", b)
		} else if _, err := fmt.Fprintf(w, "%s\n", b); err != nil {
			return err
		}
	}
	return nil
}

// endStream writes why the stream ended, so a client can tell a shutdown
// or a slow-consumer disconnect from a dropped connection: a last
// {"error": {...}} line, or an SSE "error" event.
func (g *Gateway) endStream(w io.Writer, sse bool, err error, clientGone bool) {
	if clientGone || err == nil || errors.Is(err, io.EOF) {
		return
	}
	st := status.Convert(err)
	if errors.Is(err, context.Canceled) || st.Code() == codes.Canceled {
		st = status.New(codes.Unavailable, "gateway shutting down; resubscribe with since_sequence to resume")
	}
	b, merr := protojson.Marshal(st.Proto())
	if merr != nil {
		g.log.Error("encoding stream error", "error", merr)
		return
	}
	if sse {
		fmt.Fprintf(w, "event: error\ndata: %s\n\n", b)
		return
	}
	fmt.Fprintf(w, "{\"error\":%s}\n", b)
}

// acceptsSSE reports whether the client asked for Server-Sent Events.
func acceptsSSE(r *http.Request) bool {
	for _, part := range strings.Split(r.Header.Get("Accept"), ",") {
		if mt, _, err := mime.ParseMediaType(strings.TrimSpace(part)); err == nil && mt == contentSSE {
			return true
		}
	}
	return false
}
