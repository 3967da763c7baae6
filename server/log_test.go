package server_test

import (
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"testing"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/servertest"
)

// TestListenerLogLines: with --log-format text and json alike, at debug
// level, the daemon logs exactly one "listener started" and one "listener
// stopped" line per listener, stopped by StopListener or by shutdown, each
// carrying the listener's id and bound address; every line parses in its
// format; and none holds the bytes that went through the listener, in
// either direction, raw, base64 or hex.
func TestListenerLogLines(t *testing.T) {
	const (
		payloadIn  = "LOG-PAYLOAD-IN-7f3a"     // a client sends it to the listener
		payloadOut = "LOG-PAYLOAD-OUT-91c2"    // Send writes it to that client
		reply      = "LOG-AUTO-REPLY-5e8d-xyz" // the listener's auto reply
	)
	for _, format := range []string{"text", "json"} {
		t.Run(format, func(t *testing.T) {
			var logs servertest.LogSink
			opts := &slog.HandlerOptions{Level: slog.LevelDebug}
			var h slog.Handler = slog.NewTextHandler(&logs, opts)
			if format == "json" {
				h = slog.NewJSONHandler(&logs, opts)
			}
			g := servertest.Start(t, server.Config{Logger: slog.New(h)})
			sub := g.Subscribe(t, &tcpgatev1.SubscribeRequest{})

			// "byrpc" is stopped by StopListener, "byshutdown" by the
			// gateway's shutdown.
			byRPC := g.StartListener(t, &tcpgatev1.StartListenerRequest{ListenerId: "byrpc",
				AutoReply: &tcpgatev1.AutoReply{Mode: tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_FIXED, Payload: &tcpgatev1.AutoReply_Text{Text: reply}}})

			byShutdown := g.StartListener(t, &tcpgatev1.StartListenerRequest{ListenerId: "byshutdown"})
			c := servertest.Dial(t, byRPC.GetAddress())
			if _, err := c.Write([]byte(payloadIn)); err != nil {
				t.Fatal(err)
			}
			if got := servertest.ReadN(t, c, len(reply)); string(got) != reply {
				t.Fatalf("auto reply %q, want %q", got, reply)
			}
			data := sub.NextOf(tcpgatev1.EventKind_EVENT_KIND_DATA)
			if string(payloadOf(data)) != payloadIn {
				t.Fatalf("DATA event %q, want %q", payloadOf(data), payloadIn)
			}
			if _, err := g.Client.Send(servertest.Context(t), &tcpgatev1.SendRequest{
				Target:  &tcpgatev1.SendRequest_ConnectionId{ConnectionId: data.GetConnectionId()},
				Payload: &tcpgatev1.SendRequest_Text{Text: payloadOut},
			}); err != nil {
				t.Fatalf("Send: %v", err)
			}
			if got := servertest.ReadN(t, c, len(payloadOut)); string(got) != payloadOut {
				t.Fatalf("client read %q, want %q", got, payloadOut)
			}
			c.Close()
			sub.NextOf(tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED)
			if _, err := g.Client.StopListener(servertest.Context(t), &tcpgatev1.StopListenerRequest{ListenerId: "byrpc"}); err != nil {
				t.Fatalf("StopListener: %v", err)
			}
			if err := g.Stop(); err != nil {
				t.Fatalf("stopping: %v", err)
			}

			out := logs.String()
			lines, err := logParse(format, out)
			if err != nil {
				t.Fatalf("%v; logs:\n%s", err, out)
			}
			addrs := map[string]string{"byrpc": byRPC.GetAddress(), "byshutdown": byShutdown.GetAddress()}
			for _, msg := range []string{"listener started", "listener stopped"} {
				seen := map[string]int{}
				for _, l := range lines {
					if l["msg"] != msg {
						continue
					}
					id := l["listener_id"]
					seen[id]++
					if want, ok := addrs[id]; !ok {
						t.Errorf("%q line for listener_id %q, which was never started: %v", msg, id, l)
					} else if l["address"] != want {
						t.Errorf("%q line for %s has address %q, want %q", msg, id, l["address"], want)
					}
				}
				for id := range addrs {
					if seen[id] != 1 {
						t.Errorf("%d %q lines for %s, want 1; logs:\n%s", seen[id], msg, id, out)
					}
				}
			}
			// The stop line counts what went through instead of showing it.
			for _, l := range lines {
				if l["msg"] == "listener stopped" && l["listener_id"] == "byrpc" {
					wantIn, wantOut := strconv.Itoa(len(payloadIn)), strconv.Itoa(len(reply)+len(payloadOut))
					if l["connections_total"] != "1" || l["bytes_in"] != wantIn || l["bytes_out"] != wantOut {
						t.Errorf("stop line of byrpc = %v, want connections_total 1, bytes_in %s, bytes_out %s", l, wantIn, wantOut)
					}
				}
			}
			for _, p := range []string{payloadIn, payloadOut, reply} {
				for _, enc := range []string{p, base64.StdEncoding.EncodeToString([]byte(p)), hex.EncodeToString([]byte(p))} {
					if strings.Contains(out, enc) {
						t.Errorf("the logs contain %q (payload %q):\n%s", enc, p, out)
					}
				}
			}
		})
	}
}

// logParse splits out into its lines and parses each in format ("text"
// or "json") into its attributes, values as strings. A line that does not
// parse is an error.
func logParse(format, out string) ([]map[string]string, error) {
	var lines []map[string]string
	for i, line := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		var (
			attrs map[string]string
			err   error
		)
		if format == "json" {
			attrs, err = logParseJSON(line)
		} else {
			attrs, err = logParseText(line)
		}
		if err != nil {
			return nil, fmt.Errorf("log line %d %q is not %s: %w", i+1, line, format, err)
		}
		lines = append(lines, attrs)
	}
	return lines, nil
}

func logParseJSON(line string) (map[string]string, error) {
	var raw map[string]any
	if err := json.Unmarshal([]byte(line), &raw); err != nil {
		return nil, err
	}
	attrs := make(map[string]string, len(raw))
	for k, v := range raw {
		attrs[k] = fmt.Sprint(v)
	}
	return attrs, nil
}

// logParseText parses a line of slog.TextHandler: key=value pairs
// separated by single spaces, a value quoted as strconv.Quote does when it
// needs to be.
func logParseText(line string) (map[string]string, error) {
	attrs := map[string]string{}
	for line != "" {
		key, rest, ok := strings.Cut(line, "=")
		if !ok || key == "" || strings.ContainsAny(key, ` "`) {
			return nil, fmt.Errorf("no key=value at %q", line)
		}
		var value string
		if strings.HasPrefix(rest, `"`) {
			q, err := strconv.QuotedPrefix(rest)
			if err != nil {
				return nil, fmt.Errorf("value of %s: %w", key, err)
			}
			value, _ = strconv.Unquote(q)
			rest = rest[len(q):]
			if rest != "" {
				if rest[0] != ' ' {
					return nil, fmt.Errorf("no space after the value of %s", key)
				}
				rest = rest[1:]
			}
		} else {
			value, rest, _ = strings.Cut(rest, " ")
		}
		if _, dup := attrs[key]; dup {
			return nil, fmt.Errorf("key %s twice", key)
		}
		attrs[key] = value
		line = rest
	}
	return attrs, nil
}
