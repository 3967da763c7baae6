package main

// The console under load: headless Chromium on the page a daemon serves
// at /, while lines arrive at --latency-rate.

import (
	"context"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
)

// consoleRowCap is MAX_ROWS of gateway/console/assets/app.js: the rows
// the traffic view keeps.
const consoleRowCap = 1000

// consoleProbe runs in the page before its own scripts: it records every
// long task (PerformanceObserver, entryTypes longtask), the gap between
// animation frames, the DATA rows added to the traffic view, with the
// most rows the view held, and the page's own count of events
// (#traffic-count's data-total and data-buffered, which the page updates
// once a frame): shown is the events counted since reset when the page
// last had nothing buffered, that is every one of them rendered or, past
// the row cap, counted in its "older events not shown" note. reset
// starts the window over.
const consoleProbe = `(() => {
  const p = { tasks: [], gaps: [], rendered: 0, maxRows: 0, prev: 0, base: 0, counted: 0, shown: 0, first: 0, shownAt: 0 };
  const total = () => Number((document.getElementById('traffic-count') || { dataset: {} }).dataset.total || 0);
  p.reset = () => { p.tasks = []; p.gaps = []; p.rendered = 0; p.maxRows = 0; p.prev = 0; p.base = total(); p.counted = 0; p.shown = 0; p.first = 0; p.shownAt = 0; };
  new PerformanceObserver((l) => { for (const e of l.getEntries()) p.tasks.push(e.duration); }).observe({ entryTypes: ['longtask'] });
  const frame = (t) => { if (p.prev) p.gaps.push(t - p.prev); p.prev = t; requestAnimationFrame(frame); };
  requestAnimationFrame(frame);
  document.addEventListener('DOMContentLoaded', () => {
    const list = document.getElementById('traffic');
    new MutationObserver((ms) => {
      for (const m of ms) for (const n of m.addedNodes) {
        if (n.dataset && n.dataset.kind === 'DATA') p.rendered++;
      }
      p.maxRows = Math.max(p.maxRows, list.children.length);
    }).observe(list, { childList: true });
    const count = document.getElementById('traffic-count');
    new MutationObserver(() => {
      const now = performance.now();
      p.counted = total() - p.base;
      if (p.counted > 0 && !p.first) p.first = now;
      if (count.dataset.buffered === '0' && p.counted > p.shown) { p.shown = p.counted; p.shownAt = now; }
    }).observe(count, { attributes: true, childList: true });
  });
  window.__bench = p;
})()`

// consoleFigures is what the probe reports.
type consoleFigures struct {
	LongestTask float64 `json:"longestTask"`
	LongTasks   int     `json:"longTasks"`
	P99Gap      float64 `json:"p99Gap"`
	MaxGap      float64 `json:"maxGap"`
	Rendered    int     `json:"rendered"`
	Counted     int     `json:"counted"`
	Shown       int     `json:"shown"`
	Seconds     float64 `json:"seconds"`
	Rows        int     `json:"rows"`
	MaxRows     int     `json:"maxRows"`
}

const consoleReport = `(() => {
  const p = window.__bench;
  const gaps = p.gaps.slice().sort((a, b) => a - b);
  const at = (q) => gaps.length ? gaps[Math.min(gaps.length - 1, Math.max(0, Math.round(q * gaps.length) - 1))] : 0;
  return { longestTask: p.tasks.length ? Math.max(...p.tasks) : 0, longTasks: p.tasks.length,
    p99Gap: at(0.99), maxGap: gaps.length ? gaps[gaps.length - 1] : 0,
    rendered: p.rendered, counted: p.counted, shown: p.shown, seconds: (p.shownAt - p.first) / 1000,
    rows: document.getElementById('traffic').children.length, maxRows: p.maxRows };
})()`

// runConsole: a daemon with the console on, a line-framed listener, and
// headless Chromium on the console; once the page's stream is live, lines
// arrive at --latency-rate for --console-duration while the probe watches
// the page. It records the longest task, the p99 and longest gap between
// frames, the events the page counted and showed per second, and the
// rows left in the DOM, which the page caps.
func runConsole(ctx context.Context, o *options, b *bench) error {
	const name = "console"
	if o.chromium == "" {
		return nil // noted once by runMain
	}
	return withDaemon(ctx, o, b, func(d *daemon) error {
		base, err := d.httpBase()
		if err != nil {
			return err
		}
		_, addr, err := d.startListener(ctx, lineFraming)
		if err != nil {
			return err
		}
		opts := append(chromedp.DefaultExecAllocatorOptions[:],
			chromedp.ExecPath(o.chromium),
			chromedp.WindowSize(1280, 800),
			// Loopback only: no proxy, nothing fetched in the background.
			chromedp.Flag("no-proxy-server", true),
			chromedp.Flag("disable-component-update", true),
		)
		if os.Geteuid() == 0 {
			opts = append(opts, chromedp.NoSandbox) // Chromium refuses root with its sandbox
		}
		actx, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
		defer cancelAlloc()
		bctx, cancelB := chromedp.NewContext(actx)
		defer cancelB()
		// The first run starts the browser, without a timeout: a timeout
		// there would stop it.
		if err := chromedp.Do(bctx); err != nil {
			return fmt.Errorf("starting chromium: %w", err)
		}
		sctx, cancelS := context.WithTimeout(bctx, startTimeout+drainTimeout)
		defer cancelS()
		err = chromedp.Do(sctx,
			func(ctx context.Context, t *chromedp.Target) (chromedp.Void, error) {
				_, err := cdp.Call(ctx, t, page.AddScriptToEvaluateOnNewDocument, page.AddScriptToEvaluateOnNewDocumentParams{Source: consoleProbe})
				return chromedp.Void{}, err
			},
			chromedp.Navigate(base+"/"),
			func(ctx context.Context, t *chromedp.Target) (chromedp.Void, error) {
				_, err := chromedp.Poll[bool](`document.getElementById('status').textContent.startsWith('live') && !!window.__bench`,
					chromedp.WithPollingInterval(50*time.Millisecond))(ctx, t)
				return chromedp.Void{}, err
			},
			func(ctx context.Context, t *chromedp.Target) (chromedp.Void, error) {
				_, err := chromedp.Evaluate[bool](`window.__bench.reset(), true`)(ctx, t)
				return chromedp.Void{}, err
			},
		)
		if err != nil {
			return fmt.Errorf("opening the console: %w", err)
		}
		nc, err := net.Dial("tcp", addr)
		if err != nil {
			return err
		}
		defer nc.Close()
		frames := max(1, int(o.consoleDuration.Seconds()*float64(o.latencyRate)))
		rate, late, err := pace(nc, frames, o.latencyRate, o.consoleDuration+drainTimeout)
		if err != nil {
			return err
		}
		if late > frames/100 {
			b.note("console: the sender ran more than 1 ms behind schedule for %d of %d lines", late, frames)
		}
		wctx, cancelW := context.WithTimeout(bctx, drainTimeout)
		defer cancelW()
		// The lines and the connection's CONNECTION_OPENED.
		events := frames + 1
		_, err = chromedp.Run(wctx, chromedp.Poll[bool](fmt.Sprintf(`window.__bench.shown >= %d`, events),
			chromedp.WithPollingInterval(100*time.Millisecond)))
		rctx, cancelR := context.WithTimeout(bctx, startTimeout)
		defer cancelR()
		fig, rerr := chromedp.Run(rctx, chromedp.Evaluate[consoleFigures](consoleReport))
		if rerr != nil {
			return fmt.Errorf("reading the probe: %w", rerr)
		}
		if err != nil {
			// A page that falls behind is a figure, not a failure: the
			// rate below is what it managed.
			if fig.Shown == 0 {
				return fmt.Errorf("the page showed none of %d events: %w", events, err)
			}
			b.note("console: the page counted %d and showed %d of %d events within %s of the last write", fig.Counted, fig.Shown, events, drainTimeout)
		}
		if fig.MaxRows > consoleRowCap {
			b.note("console: the traffic view held %d rows, over its cap of %d", fig.MaxRows, consoleRowCap)
		}
		b.add(name, "sent rate", "lines/s", rate)
		b.add(name, "longest task (PerformanceObserver longtask; 0: none over 50 ms)", "ms", fig.LongestTask)
		b.add(name, "long tasks (over 50 ms)", "tasks", float64(fig.LongTasks))
		b.add(name, "p99 frame gap (requestAnimationFrame)", "ms", fig.P99Gap)
		b.add(name, "longest frame gap", "ms", fig.MaxGap)
		b.add(name, "events shown/s, as the page saw them", "events/s", float64(fig.Shown)/max(fig.Seconds, 1e-3))
		b.add(name, "DATA rows built (the rest counted in a note)", "rows", float64(fig.Rendered))
		b.add(name, "rows in the DOM, most at once", "rows", float64(fig.MaxRows))
		return nil
	}, "--http-addr", "127.0.0.1:0")
}
