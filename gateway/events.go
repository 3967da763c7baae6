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
	"sync/atomic"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/grpc-ecosystem/grpc-gateway/v2/utilities"
	"google.golang.org/grpc/codes"
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
// text/event-stream. The stream is a hub subscriber of its own
// (cfg.Events), with no gRPC call in between; each batch is written and
// flushed at once.
func (g *Gateway) events(w http.ResponseWriter, r *http.Request, _ map[string]string) {
	sse := acceptsSSE(r)
	m := &runtime.JSONPb{MarshalOptions: marshalOptions}
	fail := func(err error) { errorHandler(r.Context(), g.mux, m, w, r, err) }

	req := &tcpgatev1.SubscribeRequest{}
	if err := runtime.PopulateQueryParameters(req, r.URL.Query(), utilities.NewDoubleArray(nil)); err != nil {
		fail(rpc.Status(codes.InvalidArgument, tcpgatev1.ErrorReason_ERROR_REASON_MALFORMED_REQUEST, fmt.Sprintf("query: %v", err), nil))
		return
	}
	if g.ctx.Err() != nil {
		fail(rpc.Status(codes.Unavailable, tcpgatev1.ErrorReason_ERROR_REASON_SHUTTING_DOWN, "gateway shutting down", nil))
		return
	}
	var st *rpc.EventStream
	var err error
	if sse {
		// A reconnecting EventSource sends the URL it first opened, whose
		// sinceSequence is where that first stream began, and
		// Last-Event-ID, where it left off: the header wins, or every
		// reconnect would replay what the page already has. A position
		// the gateway cannot serve is no error (see SubscribeSSE).
		st, err = g.cfg.Events.SubscribeSSE(req, r.Header.Get("Last-Event-ID"))
	} else {
		st, err = g.cfg.Events.Subscribe(req)
	}
	if err != nil {
		fail(err)
		return
	}
	defer st.Close()

	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	rc := http.NewResponseController(w)
	// The deadline stays on the connection after the handler: clear it
	// for the next request on a kept-alive connection, once nothing below
	// can set it again.
	defer func() { _ = rc.SetWriteDeadline(time.Time{}) }()
	// Every write gets rpc.StreamWriteTimeout: a client that accepts
	// nothing for that long is stuck, and its stream ends. Once the
	// gateway shuts down (its hub or this REST gateway closes), what is
	// left to write (the final error line) gets rpc.FinalWriteTimeout, a
	// write in progress included, so that a client that does not read
	// holds no shutdown. A DISCONNECT subscriber that fell behind keeps
	// the usual bound for what remains, its error line included.
	var ending atomic.Bool
	endSoon := func() {
		ending.Store(true)
		_ = rc.SetWriteDeadline(time.Now().Add(rpc.FinalWriteTimeout))
	}
	// afterClose, not context.AfterFunc: its stop waits for f, so no
	// deadline is set on the connection after the handler returned.
	stopClose := rpc.AfterClose(g.ctx.Done(), func() {
		endSoon()
		cancel()
	})
	defer stopClose()
	stopDone := rpc.AfterClose(st.ShuttingDown(), endSoon)
	defer stopDone()

	h := w.Header()
	if sse {
		h.Set("Content-Type", contentSSE)
	} else {
		h.Set("Content-Type", contentNDJSON)
	}
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no") // nginx: do not buffer the stream
	h.Set("Tcpgate-Last-Sequence", strconv.FormatUint(st.LastSequence(), 10))
	h.Set("Tcpgate-Incarnation", st.Incarnation())
	h.Set("Tcpgate-Node-Id", st.NodeID())
	w.WriteHeader(http.StatusOK)
	bw := bufio.NewWriterSize(w, 32<<10)
	// arm gives the writes that follow rpc.StreamWriteTimeout, unless the
	// stream is ending.
	arm := func() {
		if ending.Load() {
			return
		}
		_ = rc.SetWriteDeadline(time.Now().Add(rpc.StreamWriteTimeout))
		if ending.Load() { // endSoon ran in between: its deadline holds
			_ = rc.SetWriteDeadline(time.Now().Add(rpc.FinalWriteTimeout))
		}
	}
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
	arm()
	if err := flush(); err != nil {
		return
	}

	var batch []rpc.JSONEvent
	nextBeat := time.Now().Add(g.cfg.Heartbeat)
	for {
		wait := ctx
		cancelWait := context.CancelFunc(func() {})
		if sse {
			wait, cancelWait = context.WithDeadline(ctx, nextBeat)
		}
		batch, err = st.Next(wait, batch[:0])
		cancelWait()
		arm()
		if werr := writeBatch(bw, sse, st.Incarnation(), batch); werr != nil {
			return
		}
		clear(batch)
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			// The heartbeat is due: an idle SSE stream gets a comment
			// line, so that proxies keep it open.
			fmt.Fprint(bw, ": heartbeat\n\n")
			nextBeat = time.Now().Add(g.cfg.Heartbeat)
			err = nil
		}
		if err != nil {
			if r.Context().Err() != nil {
				return // the client went away
			}
			g.endStream(bw, sse, err)
			_ = flush()
			return
		}
		if ferr := flush(); ferr != nil {
			return
		}
	}
}

// writeBatch writes events; over SSE, each id is "INCARNATION-SEQUENCE"
// of the stream's incarnation inc (rpc.AppendEventID).
func writeBatch(w *bufio.Writer, sse bool, inc string, events []rpc.JSONEvent) error {
	var id []byte
	for _, e := range events {
		if sse {
			if e.HasID {
				w.WriteString("id: ")
				id = rpc.AppendEventID(id[:0], inc, e.ID)
				w.Write(id)
				w.WriteByte('\n')
			}
			w.WriteString("data: ")
			w.Write(e.JSON)
			w.WriteString("\n\n")
		} else {
			w.Write(e.JSON)
			w.WriteByte('\n')
		}
	}
	// bufio keeps the first write error; the next flush reports it too.
	if _, err := w.Write(nil); err != nil {
		return err
	}
	return nil
}

// endStream writes why the stream ended, so a client can tell a shutdown
// or a slow-consumer disconnect from a dropped connection: a last
// {"error": {...}} line, or an SSE "error" event.
func (g *Gateway) endStream(w io.Writer, sse bool, err error) {
	if err == nil || errors.Is(err, io.EOF) {
		return
	}
	st := status.Convert(err)
	if errors.Is(err, context.Canceled) || st.Code() == codes.Canceled {
		st = rpc.StatusOf(codes.Unavailable, tcpgatev1.ErrorReason_ERROR_REASON_SHUTTING_DOWN, "gateway shutting down; resubscribe with since_incarnation and since_sequence (the last sequence seen + 1) to resume", nil)
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
