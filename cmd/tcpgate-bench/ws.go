package main

// The WebSocket client child, which counts the lines Node-RED's
// `websocket out` node sends (the baseline of the browser scenario), and
// Node-RED itself.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/coder/websocket"
)

// subscribeWSMain reads WebSocket messages from --url, one line each, until
// it has --frames of them, none came for --idle after the first, stdin
// closes, or --timeout. It reports them as a subscribe child does.
func subscribeWSMain(args []string) error {
	fs := flag.NewFlagSet("subscribe-ws", flag.ContinueOnError)
	url := fs.String("url", "", "the WebSocket to read, ws://host:port/path")
	frames := fs.Uint64("frames", 1, "stop after this many messages")
	idle := fs.Duration("idle", 5*time.Second, "stop when no message came for this long after the first (a baseline that lost lines)")
	timeout := fs.Duration("timeout", time.Minute, "give up after this long")
	latency := fs.Bool("latency", false, "measure receipt time less the send time at the start of each message")
	skip := fs.Int("skip", 0, "with --latency: ignore the first this many messages (warm-up)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, cancel := stdinContext()
	defer cancel()
	ctx, cancelT := context.WithTimeout(ctx, *timeout)
	defer cancelT()
	res := subResult{ReadyCPUSeconds: selfCPU()}
	dctx, cancelD := context.WithTimeout(ctx, startTimeout)
	c, _, err := websocket.Dial(dctx, *url, nil)
	cancelD()
	if err != nil {
		return fmt.Errorf("dialing %s: %w", *url, err)
	}
	defer c.CloseNow()
	fmt.Println("ready")

	var lats []int64
	for res.Frames < *frames {
		rctx, cancelR := ctx, context.CancelFunc(func() {})
		if res.Frames > 0 {
			rctx, cancelR = context.WithTimeout(ctx, *idle)
		}
		_, msg, err := c.Read(rctx)
		cancelR()
		if err != nil {
			if !errors.Is(err, context.DeadlineExceeded) || res.Frames == 0 {
				res.Error = err.Error()
			}
			break
		}
		now := time.Now().UnixNano()
		if res.Frames == 0 {
			res.FirstNs = now
		}
		res.LastNs = now
		res.Frames++
		res.Messages++
		res.Bytes += uint64(len(msg))
		if *latency && res.Frames > uint64(*skip) && len(msg) >= tsDigits {
			if sent, err := strconv.ParseInt(string(msg[:tsDigits]), 10, 64); err == nil {
				lats = append(lats, now-sent)
			}
		}
	}
	if *latency {
		res.Latency = summarize(lats)
	}
	res.CPUSeconds = selfCPU()
	return printJSON(res)
}

// noderedPath is where Node-RED's WebSocket listener serves the lines.
const noderedPath = "/lines"

// noderedStarts bounds the tries at free ports: another process may take
// a port between freePort closing it and Node-RED binding it.
const noderedStarts = 3

// nodered is a running Node-RED 4 whose `tcp in` node (server mode,
// a stream of strings split on "\n") feeds its `websocket out` node.
type nodered struct {
	proc    *child
	tcpAddr string // where the lines go in
	wsURL   string // where they come out
	dir     string // its userDir, removed by stop
}

// noderedInstalled says whether dir holds an installed Node-RED
// (`npm ci` there, which `make bench` runs), and why not.
func noderedInstalled(dir string) error {
	if _, err := exec.LookPath("node"); err != nil {
		return fmt.Errorf("node is not installed: %w", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "node-red", "red.js")); err != nil {
		return fmt.Errorf("node-red is not installed in %s (run `npm ci` there; `make bench` does): %w", dir, err)
	}
	return nil
}

// startNodeRED writes a flow with the tcp in node on a free port into a
// temporary userDir and runs Node-RED from dir with dir/settings.js, its
// HTTP server (and so the WebSocket) on 127.0.0.1 at another free port.
// It returns once the tcp in port accepts connections.
func startNodeRED(ctx context.Context, dir string) (*nodered, error) {
	var last error
	for range noderedStarts {
		n, err := tryNodeRED(ctx, dir)
		if err == nil {
			return n, nil
		}
		last = err
		if ctx.Err() != nil {
			break
		}
	}
	return nil, fmt.Errorf("starting node-red: %w", last)
}

func tryNodeRED(ctx context.Context, dir string) (*nodered, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	tcpPort, err := freePort()
	if err != nil {
		return nil, err
	}
	uiPort, err := freePort()
	if err != nil {
		return nil, err
	}
	userDir, err := os.MkdirTemp("", "tcpgate-bench-nodered-")
	if err != nil {
		return nil, err
	}
	flow := fmt.Sprintf(noderedFlow, tcpPort, noderedPath)
	if err := os.WriteFile(filepath.Join(userDir, "flows.json"), []byte(flow), 0o644); err != nil {
		os.RemoveAll(userDir)
		return nil, err
	}
	cmd := exec.Command("node", filepath.Join(dir, "node_modules", "node-red", "red.js"),
		"--settings", filepath.Join(dir, "settings.js"), "--userDir", userDir, "flows.json")
	cmd.Env = append(os.Environ(), "NODE_RED_PORT="+strconv.Itoa(uiPort))
	var out tailBuffer
	cmd.Stdout = &out
	proc, err := startChild("node-red", cmd, false)
	if err != nil {
		os.RemoveAll(userDir)
		return nil, err
	}
	n := &nodered{
		proc:    proc,
		tcpAddr: net.JoinHostPort("127.0.0.1", strconv.Itoa(tcpPort)),
		wsURL:   fmt.Sprintf("ws://127.0.0.1:%d%s", uiPort, noderedPath),
		dir:     userDir,
	}
	// The tcp in node listens once the flows have started, after the
	// HTTP server: then both ends are up.
	deadline := time.Now().Add(startTimeout)
	for {
		select {
		case <-proc.done:
			n.stop()
			return nil, fmt.Errorf("node-red exited (%v): %s %s", proc.err, out.String(), proc.stderr.String())
		case <-ctx.Done():
			n.stop()
			return nil, ctx.Err()
		default:
		}
		if nc, err := net.DialTimeout("tcp", n.tcpAddr, time.Second); err == nil {
			nc.Close()
			return n, nil
		}
		if time.Now().After(deadline) {
			n.stop()
			return nil, fmt.Errorf("node-red's tcp in did not listen within %s: %s %s", startTimeout, out.String(), proc.stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// pid is Node-RED's process id.
func (n *nodered) pid() int { return n.proc.cmd.Process.Pid }

// stop ends Node-RED (SIGTERM, then SIGKILL after stopTimeout) and removes
// its userDir.
func (n *nodered) stop() {
	n.proc.close()
	os.RemoveAll(n.dir)
}

// noderedFlow is the flow of a dashboard builder: tcp in (server mode on
// port %d, a stream of strings split on "\n", one message per line) wired
// to websocket out on a listener at path %s, which sends each message's
// payload to every client.
const noderedFlow = `[
  {"id": "tab", "type": "tab", "label": "bench"},
  {"id": "tcpin", "type": "tcp in", "z": "tab", "name": "lines", "server": "server", "host": "", "port": "%d",
   "datamode": "stream", "datatype": "utf8", "newline": "\\n", "topic": "", "trim": false, "base64": false, "tls": "",
   "wires": [["wsout"]]},
  {"id": "wsout", "type": "websocket out", "z": "tab", "name": "to browsers", "server": "wsl", "client": "", "wires": []},
  {"id": "wsl", "type": "websocket-listener", "path": "%s", "wholemsg": "false"}
]
`
