package main

// The streams for browsers: tcpgate's SSE against Node-RED 4's WebSocket
// (tcp in -> websocket out), and the console's own load of 10 SSE
// subscribers.

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"
)

// httpBase is the REST base URL the daemon logged, for a daemon started
// with --http-addr.
func (d *daemon) httpBase() (string, error) {
	m := httpAddrLine.FindStringSubmatch(d.stderr.String())
	if m == nil {
		return "", fmt.Errorf("the daemon logged no http_addr: %s", d.stderr.String())
	}
	return "http://" + strings.Trim(m[1], `"`), nil
}

// startSSE starts n SSE subscribers (what a dashboard runs: EventSource
// and JSON.parse of every event) on listener id, each in its own process.
func startSSE(base, id string, n int, extra ...string) ([]*child, error) {
	var subs []*child
	for range n {
		c, _, err := startSelf(append([]string{"subscribe-rest", "--url", base, "--listener", id, "--policy", "backpressure", "--sse"}, extra...)...)
		if err != nil {
			closeAll(subs)
			return nil, err
		}
		subs = append(subs, c)
	}
	return subs, nil
}

// fullSpeed sends lines 100-byte lines to addr over one connection as fast
// as it goes, and returns each subscriber's lines per second, from the
// first write to its last receipt. A subscriber that missed a line fails
// the run.
func fullSpeed(subs []*child, addr string, lines int64) ([]float64, []subResult, error) {
	sent, startNs, err := blast(addr, linesChunk, lines*lineBytes, time.Now().Add(drainTimeout))
	if err != nil {
		return nil, nil, err
	}
	res, err := subResults(subs)
	if err != nil {
		return nil, nil, err
	}
	var rates []float64
	for i, r := range res {
		if r.Frames != uint64(sent/lineBytes) || r.Dropped > 0 {
			return nil, nil, fmt.Errorf("subscriber %d got %d of %d lines (dropped %d)", i, r.Frames, sent/lineBytes, r.Dropped)
		}
		rates = append(rates, float64(r.Frames)/(float64(r.LastNs-startNs)/1e9))
	}
	return rates, res, nil
}

// pacedLines sends --latency-duration of lines at --latency-rate to addr
// over a connection of its own, each starting with its send time, and
// returns what the subscribers measured. Missing lines and a late sender
// are noted.
func pacedLines(o *options, b *bench, name string, subs []*child, addr string) ([]subResult, float64, error) {
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, 0, err
	}
	defer nc.Close()
	frames := pacedFrames(o)
	rate, late, err := pace(nc, frames, o.latencyRate, o.latencyDuration+drainTimeout)
	if err != nil {
		return nil, 0, err
	}
	if err := nc.Close(); err != nil {
		return nil, 0, err
	}
	res, err := subResults(subs)
	if err != nil {
		return nil, 0, err
	}
	for i, r := range res {
		if int(r.Frames) != frames || r.Dropped > 0 {
			b.note("%s: subscriber %d got %d of %d paced lines (dropped %d)", name, i, r.Frames, frames, r.Dropped)
		}
		if r.Latency == nil || r.Latency.Samples == 0 {
			return nil, 0, fmt.Errorf("subscriber %d measured no latency", i)
		}
	}
	if late > frames/100 {
		b.note("%s: the sender ran more than 1 ms behind schedule for %d of %d lines", name, late, frames)
	}
	return res, rate, nil
}

// pacedFrames is how many lines the paced phases send.
func pacedFrames(o *options) int {
	return max(1, int(o.latencyDuration.Seconds()*float64(o.latencyRate)))
}

// warmup is the count of lines each latency measurement skips: the first
// tenth of a second.
func warmup(o *options) string { return strconv.Itoa(o.latencyRate / 10) }

// runBrowser: the same 100-byte lines into tcpgate, to one SSE subscriber
// in another process that decodes each event's JSON, and into Node-RED 4
// (tcp in -> websocket out), to a WebSocket client in another process:
// first --browser-lines at full speed, then --latency-rate lines/s for
// --latency-duration with each line's send time in it. Node-RED runs
// after the daemon has stopped, in the same run.
func runBrowser(ctx context.Context, o *options, b *bench) error {
	const name = "browser"
	var sseRate, sseP99 float64
	err := withDaemon(ctx, o, b, func(d *daemon) error {
		base, err := d.httpBase()
		if err != nil {
			return err
		}
		id, addr, err := d.startListener(ctx, lineFraming)
		if err != nil {
			return err
		}
		subs, err := startSSE(base, id, 1)
		if err != nil {
			return err
		}
		cpu0 := cpuSeconds(d.pid())
		t0 := time.Now()
		rates, _, err := fullSpeed(subs, addr, o.browserLines)
		closeAll(subs)
		if err != nil {
			return fmt.Errorf("sse: %w", err)
		}
		sseRate = rates[0]
		b.add(name, "tcpgate SSE: lines/s, 1 subscriber", "lines/s", sseRate)
		b.add(name, "tcpgate SSE: tcpgate CPU", "% of 1 core", 100*(cpuSeconds(d.pid())-cpu0)/time.Since(t0).Seconds())
		if subs, err = startSSE(base, id, 1, "--latency", "--skip", warmup(o)); err != nil {
			return err
		}
		defer closeAll(subs)
		res, _, err := pacedLines(o, b, name, subs, addr)
		if err != nil {
			return fmt.Errorf("sse, paced: %w", err)
		}
		sseP99 = res[0].Latency.P99us
		b.add(name, "tcpgate SSE: p50 at 10,000 lines/s", "µs", res[0].Latency.P50us)
		b.add(name, "tcpgate SSE: p99 at 10,000 lines/s", "µs", sseP99)
		return nil
	}, "--http-addr", "127.0.0.1:0")
	if err != nil {
		return err
	}
	if err := noderedInstalled(o.noderedDir); err != nil {
		b.note("browser: the Node-RED baseline is unavailable: %v", err)
		return nil
	}
	nr, err := startNodeRED(ctx, o.noderedDir)
	if err != nil {
		return fmt.Errorf("node-red baseline: %w", err)
	}
	defer nr.stop()
	ws, _, err := startSelf("subscribe-ws", "--url", nr.wsURL, "--frames", strconv.FormatInt(o.browserLines, 10))
	if err != nil {
		return fmt.Errorf("node-red baseline: %w", err)
	}
	cpu0 := cpuSeconds(nr.pid())
	t0 := time.Now()
	rates, _, err := fullSpeed([]*child{ws}, nr.tcpAddr, o.browserLines)
	ws.close()
	if err != nil {
		return fmt.Errorf("node-red baseline: %w", err)
	}
	b.add(name, "Node-RED 4 WebSocket: lines/s, 1 client", "lines/s", rates[0])
	b.add(name, "Node-RED 4 WebSocket: Node-RED CPU", "% of 1 core", 100*(cpuSeconds(nr.pid())-cpu0)/time.Since(t0).Seconds())
	b.add(name, "tcpgate / Node-RED, lines/s", "ratio", sseRate/rates[0])
	ws, _, err = startSelf("subscribe-ws", "--url", nr.wsURL, "--frames", strconv.Itoa(pacedFrames(o)), "--latency", "--skip", warmup(o))
	if err != nil {
		return fmt.Errorf("node-red baseline: %w", err)
	}
	defer ws.close()
	res, _, err := pacedLines(o, b, name, []*child{ws}, nr.tcpAddr)
	if err != nil {
		return fmt.Errorf("node-red baseline, paced: %w", err)
	}
	b.add(name, "Node-RED 4 WebSocket: p50 at 10,000 lines/s", "µs", res[0].Latency.P50us)
	b.add(name, "Node-RED 4 WebSocket: p99 at 10,000 lines/s", "µs", res[0].Latency.P99us)
	b.add(name, "tcpgate / Node-RED, p99", "ratio", sseP99/res[0].Latency.P99us)
	return nil
}

// sseSubscribers is the console's own load: the subscribers of the sse10
// scenario.
const sseSubscribers = 10

// runSSE10: --browser-lines at full speed, then --latency-rate lines/s,
// to 10 SSE subscribers at once, each in its own process.
func runSSE10(ctx context.Context, o *options, b *bench) error {
	const name = "sse10"
	return withDaemon(ctx, o, b, func(d *daemon) error {
		base, err := d.httpBase()
		if err != nil {
			return err
		}
		id, addr, err := d.startListener(ctx, lineFraming)
		if err != nil {
			return err
		}
		subs, err := startSSE(base, id, sseSubscribers)
		if err != nil {
			return err
		}
		rates, _, err := fullSpeed(subs, addr, o.browserLines)
		closeAll(subs)
		if err != nil {
			return err
		}
		var total float64
		for _, r := range rates {
			total += r
		}
		b.add(name, "lines/s each, 10 SSE subscribers (median)", "lines/s", median(rates))
		b.add(name, "lines/s each, 10 SSE subscribers (slowest)", "lines/s", slices.Min(rates))
		b.add(name, "lines/s total, 10 SSE subscribers", "lines/s", total)
		if subs, err = startSSE(base, id, sseSubscribers, "--latency", "--skip", warmup(o)); err != nil {
			return err
		}
		defer closeAll(subs)
		res, _, err := pacedLines(o, b, name, subs, addr)
		if err != nil {
			return fmt.Errorf("paced: %w", err)
		}
		var p50, p99 []float64
		for _, r := range res {
			p50 = append(p50, r.Latency.P50us)
			p99 = append(p99, r.Latency.P99us)
		}
		b.add(name, "p50 at 10,000 lines/s, 10 subscribers (median of them)", "µs", median(p50))
		b.add(name, "p99 at 10,000 lines/s, 10 subscribers (worst of them)", "µs", slices.Max(p99))
		return nil
	}, "--http-addr", "127.0.0.1:0")
}
