package server_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"

	"google.golang.org/grpc/status"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/servertest"
)

// Bounds on what a refusal of an oversized input may cost: an error
// message quotes at most rpc.MaxEcho (128) bytes of each value it names,
// and a log line holds a few such messages.
const (
	echoMaxMessage = 1 << 10
	echoMaxLogLine = 4 << 10
)

// TestEchoBounded sends a 3 MiB id to every method that takes an id, over
// gRPC and REST, and a 1 MB path without the token: every error message
// and every log line stays within a few KiB (they used to quote the whole
// input: a 15.7 MB log line for the id, 1.3 MB for the path), and still
// says how long the value was.
func TestEchoBounded(t *testing.T) {
	var logs servertest.LogSink
	g := servertest.Start(t, server.Config{HTTPAddr: "127.0.0.1:0", Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	g.StartListener(t, &tcpgatev1.StartListenerRequest{ListenerId: "keep"})
	id := strings.Repeat("x", 3<<20)
	c := g.Client
	text := &tcpgatev1.SendRequest_Text{Text: "x"}
	calls := map[string]func(ctx context.Context) error{
		"GetListener": func(ctx context.Context) error {
			_, err := c.GetListener(ctx, &tcpgatev1.GetListenerRequest{ListenerId: id})
			return err
		},
		"StopListener": func(ctx context.Context) error {
			_, err := c.StopListener(ctx, &tcpgatev1.StopListenerRequest{ListenerId: id})
			return err
		},
		"StartListener": func(ctx context.Context) error {
			_, err := c.StartListener(ctx, &tcpgatev1.StartListenerRequest{ListenerId: id, Host: "127.0.0.1"})
			return err
		},
		"ListConnections": func(ctx context.Context) error {
			_, err := c.ListConnections(ctx, &tcpgatev1.ListConnectionsRequest{ListenerId: id})
			return err
		},
		"CloseConnection": func(ctx context.Context) error {
			_, err := c.CloseConnection(ctx, &tcpgatev1.CloseConnectionRequest{ConnectionId: id})
			return err
		},
		"Send to a connection": func(ctx context.Context) error {
			_, err := c.Send(ctx, &tcpgatev1.SendRequest{Target: &tcpgatev1.SendRequest_ConnectionId{ConnectionId: id}, Payload: text})
			return err
		},
		"Send to a listener": func(ctx context.Context) error {
			_, err := c.Send(ctx, &tcpgatev1.SendRequest{Target: &tcpgatev1.SendRequest_ListenerId{ListenerId: id}, Payload: text})
			return err
		},
		"Send to an address": func(ctx context.Context) error {
			_, err := c.Send(ctx, &tcpgatev1.SendRequest{Target: &tcpgatev1.SendRequest_Address{Address: id + ":80"}, Payload: text})
			return err
		},
		"Send to a host": func(ctx context.Context) error {
			_, err := c.Send(ctx, &tcpgatev1.SendRequest{Target: &tcpgatev1.SendRequest_Address{Address: strings.Repeat("h", 200) + ":80"}, Payload: text})
			return err
		},
		"Subscribe": func(ctx context.Context) error {
			st, err := c.Subscribe(ctx, &tcpgatev1.SubscribeRequest{ListenerIds: []string{id}})
			if err != nil {
				return err
			}
			_, err = st.Recv()
			return err
		},
	}
	for name, call := range calls {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(servertest.Context(t))
			defer cancel()
			err := call(ctx)
			if err == nil {
				t.Fatal("a 3 MiB id was accepted")
			}
			if msg := status.Convert(err).Message(); len(msg) > echoMaxMessage {
				t.Fatalf("error message of %d bytes, want at most %d: %.200q...", len(msg), echoMaxMessage, msg)
			}
		})
	}

	restDo := func(t *testing.T, base, method, path, body string) (int, []byte) {
		t.Helper()
		req, err := http.NewRequestWithContext(servertest.Context(t), method, base+path, strings.NewReader(body))
		if err != nil {
			t.Fatalf("%.300s", err)
		}
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s %.40s...: %.300s", method, path, err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, b
	}
	// A request line holds at most net/http's 1 MiB of headers, so a path
	// carries less than a body does.
	long := strings.Repeat("p", 1_000_000)
	for _, tt := range []struct {
		name, method, path, body string
	}{
		{"id in a body", http.MethodPost, "/v1/send", `{"connectionId": "` + id + `", "text": "x"}`},
		{"id in a path", http.MethodGet, "/v1/listeners/" + long, ""},
		{"id in a query", http.MethodGet, "/v1/connections?listenerId=" + long, ""},
		{"unknown query parameter", http.MethodGet, "/v1/listeners?" + long + "=1", ""},
		{"unknown path", http.MethodGet, "/v1/" + long, ""},
		{"wrong method", http.MethodPut, "/v1/listeners/" + long, "{}"},
	} {
		t.Run("REST "+tt.name, func(t *testing.T) {
			code, body := restDo(t, g.BaseURL, tt.method, tt.path, tt.body)
			if code < 400 || code >= 500 {
				t.Fatalf("status %d, want a 4xx; body %.200q", code, body)
			}
			if len(body) > echoMaxMessage {
				t.Fatalf("error body of %d bytes, want at most %d: %.200q...", len(body), echoMaxMessage, body)
			}
		})
	}

	var authLogs servertest.LogSink
	auth := servertest.Start(t, server.Config{AuthToken: secToken, HTTPAddr: "127.0.0.1:0", Logger: slog.New(slog.NewTextHandler(&authLogs, nil))})
	t.Run("REST path without the token", func(t *testing.T) {
		code, body := restDo(t, auth.BaseURL, http.MethodGet, "/v1/listeners/"+long, "")
		if code != http.StatusUnauthorized {
			t.Fatalf("status %d, want 401; body %.200q", code, body)
		}
		if len(body) > echoMaxMessage {
			t.Fatalf("error body of %d bytes: %.200q...", len(body), body)
		}
	})

	for name, l := range map[string]*servertest.LogSink{"gateway": &logs, "gateway with a token": &authLogs} {
		out := l.String()
		want := "rpc failed"
		if l == &authLogs {
			want = "HTTP request refused"
		}
		if !strings.Contains(out, want) {
			t.Errorf("%s: no %q line logged; the bound would hold for nothing", name, want)
		}
		length := "bytes)" // rpc.Quote in an error message
		if l == &authLogs {
			length = "path_bytes=" // beside the clipped path of a refusal
		}
		if !strings.Contains(out, length) {
			t.Errorf("%s: no logged value says how long it was (%q)", name, length)
		}
		for _, line := range strings.Split(out, "\n") {
			if len(line) > echoMaxLogLine {
				t.Errorf("%s: log line of %d bytes, want at most %d: %.300q...", name, len(line), echoMaxLogLine, line)
			}
		}
	}
}
