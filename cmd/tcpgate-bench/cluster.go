package main

// The cluster row: a line listener on node a of a two-node cluster on NATS
// JetStream, its events decoded by a subscriber on node b, against the
// same load on a single node in the same run.

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"time"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
)

// The cluster's nodes: ids, and the loopback host each one's listeners
// bind, as scripts/run-cluster gives them.
const (
	clusterName    = "bench"
	listenerNode   = "a"
	listenerHost   = "127.0.0.11"
	subscriberNode = "b"
	subscriberHost = "127.0.0.12"
)

// natsListening matches nats-server's log line naming the address it
// serves clients on; with --port -1 that is the port it picked.
var natsListening = regexp.MustCompile(`Listening for client connections on (\S+)`)

// natsClientAddr returns the client address nats-server logged in log,
// and whether it has logged one and that it is ready.
func natsClientAddr(log string) (string, bool) {
	m := natsListening.FindStringSubmatch(log)
	if m == nil || !strings.Contains(log, "Server is ready") {
		return "", false
	}
	return m[1], true
}

// natsServer is a running nats-server with JetStream in a directory of
// its own.
type natsServer struct {
	c   *child
	dir string
	url string
}

// startNATS runs bin with JetStream on a port of 127.0.0.1 it picks
// itself (--port -1: no race for a free port), storing in a new temporary
// directory, and waits until it logs that it is ready.
func startNATS(ctx context.Context, bin string) (*natsServer, error) {
	dir, err := os.MkdirTemp("", "tcpgate-bench-nats-")
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "--jetstream", "--addr", "127.0.0.1", "--port", "-1", "--store_dir", dir,
		"--server_name", "tcpgate-bench")
	c, err := startChild("nats-server", cmd, false)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	ns := &natsServer{c: c, dir: dir}
	deadline := time.Now().Add(startTimeout)
	for {
		if addr, ok := natsClientAddr(c.stderr.String()); ok {
			ns.url = "nats://" + addr
			return ns, nil
		}
		select {
		case <-c.done:
			ns.stop()
			return nil, fmt.Errorf("nats-server exited before it was ready (%v): %s", c.err, c.stderr.String())
		case <-ctx.Done():
			ns.stop()
			return nil, ctx.Err()
		case <-time.After(pollEvery):
		}
		if time.Now().After(deadline) {
			ns.stop()
			return nil, fmt.Errorf("nats-server did not log \"Server is ready\" within %s: %s", startTimeout, c.stderr.String())
		}
	}
}

func (ns *natsServer) pid() int { return ns.c.cmd.Process.Pid }

// stop ends the server (SIGTERM, then SIGKILL after stopTimeout) and
// removes its store.
func (ns *natsServer) stop() {
	ns.c.close()
	os.RemoveAll(ns.dir)
}

// streamFigures are what measureStream measured of one topology.
type streamFigures struct {
	rate     float64   // DATA events per second at full speed, from the first write to the last receipt
	p50, p99 float64   // µs, send to decode, at --latency-rate
	cpu      []float64 // of each process given, % of one core, over the full-speed phase
}

// measureStream starts the line listener req describes through on, and a
// subscriber on sub that decodes every event with the generated client;
// sends --cluster-lines at full speed (each one must arrive), then
// --latency-rate lines/s for --latency-duration to a fresh subscriber
// that measures each line's send-to-decode time. cpuOf are the processes
// whose CPU over the full-speed phase is reported.
func measureStream(ctx context.Context, o *options, b *bench, on, sub *daemon, req *tcpgatev1.StartListenerRequest, cpuOf []int) (streamFigures, error) {
	var fig streamFigures
	id, addr, err := on.startListenerWith(ctx, req)
	if err != nil {
		return fig, err
	}
	subs, err := startDecoding(sub, id, 1, "proto")
	if err != nil {
		return fig, err
	}
	cpu0 := make([]float64, len(cpuOf))
	for i, pid := range cpuOf {
		cpu0[i] = cpuSeconds(pid)
	}
	t0 := time.Now()
	rates, _, err := fullSpeed(subs, addr, o.clusterLines)
	closeAll(subs)
	if err != nil {
		return fig, fmt.Errorf("full speed: %w", err)
	}
	secs := time.Since(t0).Seconds()
	for i, pid := range cpuOf {
		fig.cpu = append(fig.cpu, 100*(cpuSeconds(pid)-cpu0[i])/secs)
	}
	fig.rate = rates[0]
	if subs, err = startDecoding(sub, id, 1, "proto", "--latency", "--skip", warmup(o)); err != nil {
		return fig, err
	}
	defer closeAll(subs)
	res, _, err := pacedLines(o, b, "cluster", subs, addr)
	if err != nil {
		return fig, fmt.Errorf("paced: %w", err)
	}
	fig.p50, fig.p99 = res[0].Latency.P50us, res[0].Latency.P99us
	return fig, nil
}

// runCluster measures, in one run, a single daemon with the subscriber on
// it (the baseline), then NATS with JetStream and two cluster nodes, the
// listener on a and the subscriber on b: what the cluster's stream costs
// a user who reads a listener's events on another node.
func runCluster(ctx context.Context, o *options, b *bench) error {
	if o.natsServer == "" {
		return nil // noted once, at the start
	}
	var single streamFigures
	err := withDaemon(ctx, o, b, func(d *daemon) error {
		var err error
		single, err = measureStream(ctx, o, b, d, d, &tcpgatev1.StartListenerRequest{Host: "127.0.0.1", Framing: lineFraming}, []int{d.pid()})
		return err
	})
	if err != nil {
		return fmt.Errorf("single node: %w", err)
	}
	clustered, err := measureCluster(ctx, o, b)
	if err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	addClusterRows(b, o, single, clustered)
	return nil
}

// measureCluster starts NATS and the two nodes, measures the stream from
// a's listener to b's subscriber, and stops them, the nodes first.
func measureCluster(ctx context.Context, o *options, b *bench) (streamFigures, error) {
	var fig streamFigures
	ns, err := startNATS(ctx, o.natsServer)
	if err != nil {
		return fig, err
	}
	defer ns.stop()
	node := func(id, host string) []string {
		return []string{"--cluster", ns.url, "--cluster-name", clusterName, "--node-id", id, "--node-host", host}
	}
	err = withDaemon(ctx, o, b, func(a *daemon) error {
		return withDaemon(ctx, o, b, func(bn *daemon) error {
			// Host left empty: the listener binds a's --node-host.
			req := &tcpgatev1.StartListenerRequest{NodeId: listenerNode, Framing: lineFraming}
			var err error
			fig, err = measureStream(ctx, o, b, a, bn, req, []int{a.pid(), bn.pid(), ns.pid()})
			return err
		}, node(subscriberNode, subscriberHost)...)
	}, node(listenerNode, listenerHost)...)
	return fig, err
}

// addClusterRows records one run's figures of both topologies and their
// ratios.
func addClusterRows(b *bench, o *options, single, clustered streamFigures) {
	const name = "cluster"
	rate := format(float64(o.latencyRate))
	b.add(name, "frames/s, single node (subscriber on the listener's node)", "frames/s", single.rate)
	b.add(name, "single node: p50 at "+rate+" lines/s", "µs", single.p50)
	b.add(name, "single node: p99 at "+rate+" lines/s", "µs", single.p99)
	b.add(name, "frames/s, cluster (listener on node a, subscriber on node b)", "frames/s", clustered.rate)
	b.add(name, "cluster: p50 at "+rate+" lines/s", "µs", clustered.p50)
	b.add(name, "cluster: p99 at "+rate+" lines/s", "µs", clustered.p99)
	b.add(name, "cluster / single node, frames/s", "ratio", clustered.rate/single.rate)
	b.add(name, "cluster / single node, p50", "ratio", clustered.p50/single.p50)
	b.add(name, "cluster / single node, p99", "ratio", clustered.p99/single.p99)
	addCPU(b, name, single, "single node: tcpgate")
	addCPU(b, name, clustered, "cluster: node a", "cluster: node b", "cluster: NATS")
}

// addCPU records the CPU of the processes measureStream was given, under
// whose names, in order; a process it did not measure has no row.
func addCPU(b *bench, scenario string, f streamFigures, whose ...string) {
	for i, who := range whose[:min(len(whose), len(f.cpu))] {
		b.add(scenario, who+" CPU at full speed", "% of 1 core", f.cpu[i])
	}
}
