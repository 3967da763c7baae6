package main

// The REST subscriber child and the scenario that sets it against a gRPC
// subscriber in the same run.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"flag"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/valyala/fastjson"
)

// subscribeRESTMain reads GET /v1/events as NDJSON or SSE and counts DATA
// events, parsing every line as JSON, until it has seen --conns
// CONNECTION_CLOSED events, stdin closes, or --timeout.
func subscribeRESTMain(args []string) error {
	fs := flag.NewFlagSet("subscribe-rest", flag.ContinueOnError)
	base := fs.String("url", "", "the gateway's REST base URL, http://host:port")
	listenerID := fs.String("listener", "", "listener to subscribe to")
	policy := fs.String("policy", "backpressure", "slow-consumer policy: backpressure, drop_oldest or disconnect")
	sse := fs.Bool("sse", false, "ask for Server-Sent Events instead of NDJSON")
	conns := fs.Int("conns", 1, "stop after this many CONNECTION_CLOSED events")
	timeout := fs.Duration("timeout", time.Minute, "give up after this long")
	latency := fs.Bool("latency", false, "measure receipt time less the send time at the start of each frame's text")
	skip := fs.Int("skip", 0, "with --latency: ignore the first this many frames (warm-up)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	pol, ok := policies[*policy]
	if !ok {
		return fmt.Errorf("--policy: unknown %q", *policy)
	}
	ctx, cancel := stdinContext()
	defer cancel()
	ctx, cancelT := context.WithTimeout(ctx, *timeout)
	defer cancelT()

	q := url.Values{"listenerIds": {*listenerID}, "slowConsumer": {pol.String()}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, *base+"/v1/events?"+q.Encode(), nil)
	if err != nil {
		return err
	}
	if *sse {
		req.Header.Set("Accept", "text/event-stream")
	}
	hc := &http.Client{Transport: &http.Transport{Proxy: nil, DisableCompression: true}}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("subscribing: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("subscribing: HTTP %s", resp.Status)
	}
	// The headers come once the subscription is live.
	fmt.Println("ready")

	var res subResult
	br := bufio.NewReaderSize(resp.Body, 256<<10)
	// fastjson parses the whole line, as JSON.parse would in a browser
	// or json.loads in Python (both in C): encoding/json, at about 2 µs a
	// line here, would measure itself rather than the gateway.
	var p fastjson.Parser
	var lats []int64
	for res.Closed < *conns {
		line, err := br.ReadSlice('\n')
		if err != nil {
			res.Error = err.Error()
			break
		}
		now := time.Now().UnixNano()
		if *sse {
			var ok bool
			if line, ok = bytes.CutPrefix(line, []byte("data: ")); !ok {
				continue // id:, retry:, comments and blank lines
			}
		}
		v, err := p.ParseBytes(line)
		if err != nil {
			res.Error = fmt.Sprintf("parsing %.80q: %v", line, err)
			break
		}
		switch string(v.GetStringBytes("kind")) {
		case "EVENT_KIND_DATA":
			if res.Frames == 0 {
				res.FirstNs = now
			}
			res.LastNs = now
			res.Frames++
			if t := v.GetStringBytes("text"); t != nil {
				res.Bytes += uint64(len(t))
				if *latency && res.Frames > uint64(*skip) && len(t) >= tsDigits {
					if sent, err := strconv.ParseInt(string(t[:tsDigits]), 10, 64); err == nil {
						lats = append(lats, now-sent)
					}
				}
			} else {
				d, err := base64.StdEncoding.DecodeString(string(v.GetStringBytes("data")))
				if err != nil {
					res.Error = fmt.Sprintf("data of %.80q: %v", line, err)
				}
				res.Bytes += uint64(len(d))
			}
		case "EVENT_KIND_EVENTS_DROPPED":
			n, err := strconv.ParseUint(string(v.GetStringBytes("dropped")), 10, 64)
			if err != nil {
				res.Error = fmt.Sprintf("dropped of %.80q: %v", line, err)
			}
			res.Dropped += n
		case "EVENT_KIND_CONNECTION_CLOSED":
			res.Closed++
		case "":
			if v.Get("error") != nil {
				res.Error = strings.TrimSpace(string(line))
			}
		}
		if res.Error != "" {
			break
		}
	}
	if *latency {
		res.Latency = summarize(lats)
	}
	res.CPUSeconds = selfCPU()
	return printJSON(res)
}

// httpAddrLine matches the REST address in the daemon's serving line.
var httpAddrLine = regexp.MustCompile(`msg="gateway serving" .*\bhttp_addr=("[^"]*"|\S+)`)

// runREST: 100-byte lines into a line-framed listener, to one BACKPRESSURE
// subscriber at a time, in the same daemon: gRPC decoding every event
// into a message, then NDJSON, then SSE, each an HTTP client in another
// process that parses every line as JSON. It records each one's frames per
// second and the REST ones as a fraction of gRPC's.
func runREST(ctx context.Context, o *options, b *bench) error {
	return withDaemon(ctx, o, b, func(d *daemon) error {
		m := httpAddrLine.FindStringSubmatch(d.stderr.String())
		if m == nil {
			return fmt.Errorf("the daemon logged no http_addr: %s", d.stderr.String())
		}
		base := "http://" + strings.Trim(m[1], `"`)
		id, addr, err := d.startListener(ctx, lineFraming)
		if err != nil {
			return err
		}
		rates := map[string]float64{}
		for _, s := range []struct {
			name string
			args []string
		}{
			{"grpc", []string{"subscribe", "--server", d.addr, "--listener", id, "--policy", "backpressure", "--decode", "proto"}},
			{"ndjson", []string{"subscribe-rest", "--url", base, "--listener", id, "--policy", "backpressure"}},
			{"sse", []string{"subscribe-rest", "--url", base, "--listener", id, "--policy", "backpressure", "--sse"}},
		} {
			sub, _, err := startSelf(s.args...)
			if err != nil {
				return err
			}
			cpu0 := cpuSeconds(d.pid())
			sent, startNs, err := blast(addr, linesChunk, o.lineFrames*lineBytes, time.Now().Add(o.duration))
			if err != nil {
				sub.close()
				return err
			}
			res, err := subResults([]*child{sub})
			sub.close()
			if err != nil {
				return fmt.Errorf("%s: %w", s.name, err)
			}
			r := res[0]
			if frames := uint64(sent / lineBytes); r.Frames != frames || r.Dropped > 0 {
				b.note("rest: the %s subscriber got %d of %d frames (dropped %d)", s.name, r.Frames, frames, r.Dropped)
			}
			secs := float64(r.LastNs-startNs) / 1e9
			rates[s.name] = float64(r.Frames) / secs
			b.add("rest", s.name+" frames/s, 1 subscriber", "frames/s", rates[s.name])
			b.add("rest", s.name+": tcpgate CPU", "% of 1 core", 100*(cpuSeconds(d.pid())-cpu0)/secs)
			b.add("rest", s.name+": subscriber CPU", "% of 1 core", 100*r.CPUSeconds/secs)
		}
		if g := rates["grpc"]; g > 0 {
			b.add("rest", "ndjson / grpc", "ratio", rates["ndjson"]/g)
			b.add("rest", "sse / grpc", "ratio", rates["sse"]/g)
		}
		return nil
	}, "--http-addr", "127.0.0.1:0")
}
