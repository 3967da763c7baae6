package gateway_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
)

// eventStream is a live GET /v1/events response whose lines are read on
// demand.
type eventStream struct {
	t     *testing.T
	resp  *http.Response
	lines chan string
	errc  chan error // why the body ended: nil at a clean EOF
	// lastSequence is the Tcpgate-Last-Sequence response header, and
	// incarnation Tcpgate-Incarnation.
	lastSequence uint64
	incarnation  string
	// started is the STREAM_STARTED event every stream opens with, which
	// next and nextFrame take aside, and startFrame its SSE block.
	started    *tcpgatev1.Event
	startFrame sseFrame
}

// openEvents GETs /v1/events?query with header and returns once the
// response headers arrived with 200: from then on the subscription is live,
// so nothing that happens afterwards is missed.
func (r *rest) openEvents(query string, header http.Header) *eventStream {
	r.t.Helper()
	t := r.t
	ctx, cancel := context.WithCancel(context.Background())
	path := "/v1/events"
	if query != "" {
		path += "?" + query
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.Base+path, nil)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	for k, vs := range header {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	timer := time.AfterFunc(wait, cancel) // bounds the wait for headers
	resp, err := r.HTTP.Do(req)
	timer.Stop()
	if err != nil {
		cancel()
		t.Fatalf("GET %s: %v", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		cancel()
		t.Fatalf("GET %s = %d %s, want 200", path, resp.StatusCode, b)
	}
	s := &eventStream{t: t, resp: resp, lines: make(chan string, 1<<12), errc: make(chan error, 1)}
	raw := resp.Header.Get("Tcpgate-Last-Sequence")
	if s.lastSequence, err = strconv.ParseUint(raw, 10, 64); err != nil {
		resp.Body.Close()
		cancel()
		t.Fatalf("GET %s: Tcpgate-Last-Sequence = %q: %v", path, raw, err)
	}
	s.incarnation = resp.Header.Get("Tcpgate-Incarnation")
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(s.lines)
		br := bufio.NewReader(resp.Body)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				if line != "" {
					err = errors.New("body ended in the middle of a line: " + strconv.Quote(line))
				} else if errors.Is(err, io.EOF) {
					err = nil
				}
				s.errc <- err
				return
			}
			select {
			case s.lines <- strings.TrimSuffix(line, "\n"):
			case <-ctx.Done():
				s.errc <- ctx.Err()
				return
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		resp.Body.Close()
		<-done
	})
	return s
}

// close ends the stream from the client side.
func (s *eventStream) close() { s.resp.Body.Close() }

// nextLine returns the next line, failing the test after wait or when the
// stream ended.
func (s *eventStream) nextLine() string {
	s.t.Helper()
	select {
	case line, ok := <-s.lines:
		if !ok {
			s.t.Fatalf("event stream ended: %v", <-s.errc)
		}
		return line
	case <-time.After(wait):
		s.t.Fatalf("no line within %s", wait)
	}
	return ""
}

// rest returns every line until the body ends, and why it ended, failing
// the test if it does not end within wait.
func (s *eventStream) rest() ([]string, error) {
	s.t.Helper()
	var lines []string
	deadline := time.After(wait)
	for {
		select {
		case line, ok := <-s.lines:
			if !ok {
				return lines, <-s.errc
			}
			lines = append(lines, line)
		case <-deadline:
			s.t.Fatalf("event stream did not end within %s; got %q", wait, lines)
		}
	}
}

// decodeEvent decodes one event's JSON strictly.
func decodeEvent(t *testing.T, b string) *tcpgatev1.Event {
	t.Helper()
	e := &tcpgatev1.Event{}
	if err := protojson.Unmarshal([]byte(b), e); err != nil {
		t.Fatalf("event %s: %v", b, err)
	}
	return e
}

// next returns the next NDJSON event and its line.
func (s *eventStream) next() (*tcpgatev1.Event, string) {
	s.t.Helper()
	line := s.nextLine()
	if strings.HasPrefix(line, `{"error"`) {
		s.t.Fatalf("event stream failed: %s", line)
	}
	e := decodeEvent(s.t, line)
	if s.started == nil && e.GetKind() == tcpgatev1.EventKind_EVENT_KIND_STREAM_STARTED {
		s.started = e
		return s.next()
	}
	return e, line
}

// nextOf skips NDJSON events until one of kind arrives.
func (s *eventStream) nextOf(kind tcpgatev1.EventKind) *tcpgatev1.Event {
	s.t.Helper()
	for {
		if e, _ := s.next(); e.GetKind() == kind {
			return e
		}
	}
}

// sseFrame is one Server-Sent Events block: the lines up to a blank one.
type sseFrame struct {
	id, event, data, retry string
	hasID                  bool
	comments               []string
	lines                  []string
}

// nextFrame returns the next SSE block.
func (s *eventStream) nextFrame() sseFrame {
	s.t.Helper()
	var f sseFrame
	for {
		line := s.nextLine()
		if line == "" {
			if len(f.lines) == 0 {
				continue
			}
			if s.started == nil && strings.Contains(f.data, `"EVENT_KIND_STREAM_STARTED"`) {
				s.started, s.startFrame = decodeEvent(s.t, f.data), f
				f = sseFrame{}
				continue
			}
			return f
		}
		f.lines = append(f.lines, line)
		if c, ok := strings.CutPrefix(line, ":"); ok {
			f.comments = append(f.comments, strings.TrimPrefix(c, " "))
			continue
		}
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch field {
		case "id":
			f.id, f.hasID = value, true
		case "event":
			f.event = value
		case "data":
			if f.data != "" {
				f.data += "\n"
			}
			f.data += value
		case "retry":
			f.retry = value
		default:
			s.t.Fatalf("SSE line %q has an unknown field", line)
		}
	}
}

// nextSSE returns the next SSE event, skipping heartbeats and the retry
// advice; it checks that the event's id is its sequence.
func (s *eventStream) nextSSE() *tcpgatev1.Event {
	s.t.Helper()
	for {
		f := s.nextFrame()
		if f.data == "" {
			continue
		}
		if f.event != "" {
			s.t.Fatalf("SSE event %q: %s", f.event, f.data)
		}
		e := decodeEvent(s.t, f.data)
		if e.GetSequence() > 0 && f.id != s.incarnation+"-"+strconv.FormatUint(e.GetSequence(), 10) {
			s.t.Fatalf("SSE id %q, event sequence %d", f.id, e.GetSequence())
		}
		return e
	}
}

// streamError decodes a stream's final error, NDJSON's {"error": {...}}
// line or SSE's error event data.
func streamError(t *testing.T, b string) (code int, message string) {
	t.Helper()
	var st struct {
		Code    *int   `json:"code"`
		Message string `json:"message"`
	}
	if err := json.Unmarshal([]byte(b), &st); err != nil || st.Code == nil {
		t.Fatalf("stream error %s: not a status (%v)", b, err)
	}
	return *st.Code, st.Message
}
