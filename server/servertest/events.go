package servertest

import (
	"bufio"
	"context"
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

// EventStream is a live GET /v1/events response, NDJSON or Server-Sent
// Events, whose lines are read on demand. A goroutine it owns reads the
// body into a buffer of 4 Ki lines; the test's end cancels the request
// and waits for that goroutine.
type EventStream struct {
	// Resp is the response; its body is the goroutine's to read.
	Resp *http.Response
	// LastSequence is the Tcpgate-Last-Sequence response header, and
	// Incarnation Tcpgate-Incarnation.
	LastSequence uint64
	Incarnation  string
	// Started is the STREAM_STARTED event every stream opens with, which
	// Next and NextBlock take aside once they meet it, and StartBlock its
	// SSE block.
	Started    *tcpgatev1.Event
	StartBlock SSEBlock

	t     testing.TB
	lines chan string
	errc  chan error // why the body ended: nil at a clean EOF
}

// SSEHeader is what a browser's EventSource sends: Accept:
// text/event-stream, and Last-Event-ID when lastEventID is not empty (a
// reconnect).
func SSEHeader(lastEventID string) http.Header {
	h := http.Header{"Accept": {"text/event-stream"}}
	if lastEventID != "" {
		h.Set("Last-Event-ID", lastEventID)
	}
	return h
}

// OpenEvents GETs /v1/events?query with header and returns once the
// response headers arrived with 200 (failing the test otherwise, or after
// Wait): from then on the subscription is live, so nothing that happens
// afterwards is missed.
func (r *REST) OpenEvents(query string, header http.Header) *EventStream {
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
	timer := time.AfterFunc(Wait, cancel) // bounds the wait for headers
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
	s := &EventStream{t: t, Resp: resp, lines: make(chan string, 1<<12), errc: make(chan error, 1)}
	raw := resp.Header.Get("Tcpgate-Last-Sequence")
	if s.LastSequence, err = strconv.ParseUint(raw, 10, 64); err != nil {
		resp.Body.Close()
		cancel()
		t.Fatalf("GET %s: Tcpgate-Last-Sequence = %q: %v", path, raw, err)
	}
	s.Incarnation = resp.Header.Get("Tcpgate-Incarnation")
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

// Close ends the stream from the client side.
func (s *EventStream) Close() { s.Resp.Body.Close() }

// NextLine returns the next line, without its newline, failing the test
// after Wait or when the stream ended.
func (s *EventStream) NextLine() string {
	s.t.Helper()
	select {
	case line, ok := <-s.lines:
		if !ok {
			s.t.Fatalf("event stream ended: %v", <-s.errc)
		}
		return line
	case <-time.After(Wait):
		s.t.Fatalf("no line within %s", Wait)
	}
	return ""
}

// Quiet fails the test if an NDJSON event arrives within bound (see
// Stream.Quiet); the stream's STREAM_STARTED, when not yet read, is taken
// aside into Started.
func (s *EventStream) Quiet(bound time.Duration) {
	s.t.Helper()
	deadline := time.After(bound)
	for {
		select {
		case line, ok := <-s.lines:
			if !ok {
				s.t.Fatalf("event stream ended: %v", <-s.errc)
			}
			if e := DecodeEvent(s.t, line); s.Started == nil && e.GetKind() == tcpgatev1.EventKind_EVENT_KIND_STREAM_STARTED {
				s.Started = e
				continue
			}
			s.t.Fatalf("got %s, want no event within %s", line, bound)
		case <-deadline:
			return
		}
	}
}

// Rest returns every line until the body ends, and why it ended, failing
// the test if it does not end within Wait.
func (s *EventStream) Rest() ([]string, error) {
	s.t.Helper()
	var lines []string
	deadline := time.After(Wait)
	for {
		select {
		case line, ok := <-s.lines:
			if !ok {
				return lines, <-s.errc
			}
			lines = append(lines, line)
		case <-deadline:
			s.t.Fatalf("event stream did not end within %s; got %q", Wait, lines)
		}
	}
}

// DecodeEvent decodes one event's JSON strictly.
func DecodeEvent(t testing.TB, b string) *tcpgatev1.Event {
	t.Helper()
	e := &tcpgatev1.Event{}
	if err := protojson.Unmarshal([]byte(b), e); err != nil {
		t.Fatalf("event %s: %v", b, err)
	}
	return e
}

// Next returns the next NDJSON event and its line, taking the stream's
// STREAM_STARTED aside into Started; an error line fails the test.
func (s *EventStream) Next() (*tcpgatev1.Event, string) {
	s.t.Helper()
	line := s.NextLine()
	if strings.HasPrefix(line, `{"error"`) {
		s.t.Fatalf("event stream failed: %s", line)
	}
	e := DecodeEvent(s.t, line)
	if s.Started == nil && e.GetKind() == tcpgatev1.EventKind_EVENT_KIND_STREAM_STARTED {
		s.Started = e
		return s.Next()
	}
	return e, line
}

// NextOf skips NDJSON events until one of kind arrives.
func (s *EventStream) NextOf(kind tcpgatev1.EventKind) *tcpgatev1.Event {
	s.t.Helper()
	for {
		if e, _ := s.Next(); e.GetKind() == kind {
			return e
		}
	}
}

// SSEBlock is one Server-Sent Events block: the lines up to a blank one,
// and what its fields say (data lines joined by newlines).
type SSEBlock struct {
	ID, Event, Data, Retry string
	// HasID says the block has an id: line, even an empty one.
	HasID    bool
	Comments []string
	Lines    []string
}

// NextBlock returns the next SSE block, taking the stream's
// STREAM_STARTED block aside into Started and StartBlock.
func (s *EventStream) NextBlock() SSEBlock {
	s.t.Helper()
	for {
		b := s.ReadBlock()
		if s.Started == nil && strings.Contains(b.Data, `"EVENT_KIND_STREAM_STARTED"`) {
			s.Started, s.StartBlock = DecodeEvent(s.t, b.Data), b
			continue
		}
		return b
	}
}

// ReadBlock returns the next SSE block as it is, STREAM_STARTED's
// included; a line of a field SSE does not define fails the test.
func (s *EventStream) ReadBlock() SSEBlock {
	s.t.Helper()
	var b SSEBlock
	for {
		line := s.NextLine()
		if line == "" {
			if len(b.Lines) == 0 {
				continue
			}
			return b
		}
		b.Lines = append(b.Lines, line)
		if c, ok := strings.CutPrefix(line, ":"); ok {
			b.Comments = append(b.Comments, strings.TrimPrefix(c, " "))
			continue
		}
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch field {
		case "id":
			b.ID, b.HasID = value, true
		case "event":
			b.Event = value
		case "data":
			if b.Data != "" {
				b.Data += "\n"
			}
			b.Data += value
		case "retry":
			b.Retry = value
		default:
			s.t.Fatalf("SSE line %q has an unknown field", line)
		}
	}
}

// NextSSE returns the next SSE event, skipping heartbeats and the retry
// advice; an event: block fails the test, and so does an id that is not
// INCARNATION-SEQUENCE of the event's sequence.
func (s *EventStream) NextSSE() *tcpgatev1.Event {
	s.t.Helper()
	for {
		b := s.NextBlock()
		if b.Data == "" {
			continue
		}
		if b.Event != "" {
			s.t.Fatalf("SSE event %q: %s", b.Event, b.Data)
		}
		e := DecodeEvent(s.t, b.Data)
		if e.GetSequence() > 0 && b.ID != s.Incarnation+"-"+strconv.FormatUint(e.GetSequence(), 10) {
			s.t.Fatalf("SSE id %q, event sequence %d", b.ID, e.GetSequence())
		}
		return e
	}
}
