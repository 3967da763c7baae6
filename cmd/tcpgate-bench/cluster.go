package main

// The cluster row: a line listener on node a of a two-node cluster on NATS
// JetStream, its events decoded by a subscriber on node b, against the
// same load on a single node in the same run.

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
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
	// It logs to stderr, which the child keeps the tail of; nothing reads
	// its stdout, so that must not be a pipe that could fill.
	cmd.Stdout = io.Discard
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
// whose CPU over the full-speed phase is reported; profiles maps a file to
// the --debug-addr of a daemon whose CPU profile of --profile-seconds from
// the first write goes there. label names the topology in the notes.
func measureStream(ctx context.Context, o *options, b *bench, label string, on, sub *daemon, req *tcpgatev1.StartListenerRequest, cpuOf []int, profiles map[string]string) (streamFigures, error) {
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
	profiled := make(chan error, len(profiles))
	for path, debugAddr := range profiles {
		go func() { profiled <- fetchProfile(ctx, debugAddr, o.profileSeconds, path) }()
	}
	t0 := time.Now()
	rates, _, err := fullSpeed(subs, addr, o.clusterLines)
	secs := time.Since(t0).Seconds()
	for i, pid := range cpuOf {
		fig.cpu = append(fig.cpu, 100*(cpuSeconds(pid)-cpu0[i])/secs)
	}
	closeAll(subs)
	for range profiles {
		if perr := <-profiled; perr != nil {
			b.note("%s: profiling a daemon: %v", label, perr)
		}
	}
	if err != nil {
		return fig, fmt.Errorf("full speed: %w", err)
	}
	fig.rate = rates[0]
	if subs, err = startDecoding(sub, id, 1, "proto", "--latency", "--skip", warmup(o)); err != nil {
		return fig, err
	}
	defer closeAll(subs)
	res, _, err := pacedLines(o, b, label, subs, addr)
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
	profile, err := newProfiles(o, "single")
	if err != nil {
		return err
	}
	var single streamFigures
	err = withDaemon(ctx, o, b, func(d *daemon) error {
		var err error
		single, err = measureStream(ctx, o, b, "cluster, single node", d, d, &tcpgatev1.StartListenerRequest{Host: "127.0.0.1", Framing: lineFraming},
			[]int{d.pid()}, profile.paths)
		return err
	}, profile.flags("single")...)
	if err != nil {
		return fmt.Errorf("single node: %w", err)
	}
	profile, err = newProfiles(o, "node-"+listenerNode, "node-"+subscriberNode)
	if err != nil {
		return err
	}
	remote, local, err := measureCluster(ctx, o, b, profile)
	if err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	addClusterRows(b, o, single, remote, local)
	return nil
}

// measureCluster starts NATS and the two nodes, measures the stream from
// a's listener to b's subscriber (remote), then to a subscriber on a itself
// (local: a cluster node's hub takes even its own events from the
// stream), and stops them, the nodes first.
func measureCluster(ctx context.Context, o *options, b *bench, profile *profiles) (remote, local streamFigures, err error) {
	ns, err := startNATS(ctx, o.natsServer)
	if err != nil {
		return remote, local, err
	}
	defer ns.stop()
	node := func(id, host string) []string {
		return append([]string{"--cluster", ns.url, "--cluster-name", clusterName, "--node-id", id, "--node-host", host},
			profile.flags("node-"+id)...)
	}
	err = withDaemon(ctx, o, b, func(a *daemon) error {
		return withDaemon(ctx, o, b, func(bn *daemon) error {
			// Host left empty: the listener binds a's --node-host.
			req := &tcpgatev1.StartListenerRequest{NodeId: listenerNode, Framing: lineFraming}
			pids := []int{a.pid(), bn.pid(), ns.pid()}
			var err error
			if remote, err = measureStream(ctx, o, b, "cluster, subscriber on node "+subscriberNode, a, bn, req, pids, profile.paths); err != nil {
				return fmt.Errorf("subscriber on node %s: %w", subscriberNode, err)
			}
			if local, err = measureStream(ctx, o, b, "cluster, subscriber on node "+listenerNode, a, a, req, pids, nil); err != nil {
				return fmt.Errorf("subscriber on node %s: %w", listenerNode, err)
			}
			return nil
		}, node(subscriberNode, subscriberHost)...)
	}, node(listenerNode, listenerHost)...)
	return remote, local, err
}

// profiles are the daemons of one topology to profile, with --profile.
type profiles struct {
	addrs map[string]string // the --debug-addr of each daemon, by name
	paths map[string]string // file -> the daemon's --debug-addr
}

// newProfiles picks a loopback address for the pprof endpoint of each
// daemon named in who (single, node-a, ...) and the file its profile goes
// to; without --profile, none.
func newProfiles(o *options, who ...string) (*profiles, error) {
	p := &profiles{addrs: map[string]string{}, paths: map[string]string{}}
	if o.profileDir == "" {
		return p, nil
	}
	for _, w := range who {
		port, err := freePort()
		if err != nil {
			return nil, fmt.Errorf("--profile: %w", err)
		}
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		p.addrs[w] = addr
		p.paths[filepath.Join(o.profileDir, fmt.Sprintf("cluster-%s-run%d.pprof", w, o.run))] = addr
	}
	return p, nil
}

// flags are the daemon named who's flags that serve its pprof endpoint.
func (p *profiles) flags(who string) []string {
	if addr, ok := p.addrs[who]; ok {
		return []string{"--debug-addr", addr}
	}
	return nil
}

// addClusterRows records one run's figures of the single node, of the
// cluster with the subscriber on the other node (remote) and on the
// listener's (local), and the ratios of remote over single.
func addClusterRows(b *bench, o *options, single, remote, local streamFigures) {
	const name = "cluster"
	rate := format(float64(o.latencyRate))
	b.add(name, "frames/s, single node (subscriber on the listener's node)", "frames/s", single.rate)
	b.add(name, "single node: p50 at "+rate+" lines/s", "µs", single.p50)
	b.add(name, "single node: p99 at "+rate+" lines/s", "µs", single.p99)
	b.add(name, "frames/s, cluster (listener on node a, subscriber on node b)", "frames/s", remote.rate)
	b.add(name, "cluster: p50 at "+rate+" lines/s", "µs", remote.p50)
	b.add(name, "cluster: p99 at "+rate+" lines/s", "µs", remote.p99)
	b.add(name, "cluster / single node, frames/s", "ratio", remote.rate/single.rate)
	b.add(name, "cluster / single node, p50", "ratio", remote.p50/single.p50)
	b.add(name, "cluster / single node, p99", "ratio", remote.p99/single.p99)
	b.add(name, "frames/s, cluster, subscriber on node a (the listener's)", "frames/s", local.rate)
	b.add(name, "cluster, subscriber on node a: p50 at "+rate+" lines/s", "µs", local.p50)
	b.add(name, "cluster, subscriber on node a: p99 at "+rate+" lines/s", "µs", local.p99)
	addCPU(b, name, single, "single node: tcpgate")
	addCPU(b, name, remote, "cluster: node a", "cluster: node b", "cluster: NATS")
	// CPU per line is what the figures above cost, whatever else the
	// machine ran: compare these across runs.
	b.add(name, "single node: CPU per line (tcpgate)", "µs", cpuPerLine(single))
	b.add(name, "cluster: CPU per line (nodes a and b, NATS)", "µs", cpuPerLine(remote))
}

// cpuPerLine is the CPU of every process measured per line delivered at
// full speed, in µs.
func cpuPerLine(f streamFigures) float64 {
	var cpu float64
	for _, c := range f.cpu {
		cpu += c
	}
	if f.rate <= 0 {
		return 0
	}
	return cpu / 100 / f.rate * 1e6
}

// addCPU records the CPU of the processes measureStream was given, under
// whose names, in order; a process it did not measure has no row.
func addCPU(b *bench, scenario string, f streamFigures, whose ...string) {
	for i, who := range whose[:min(len(whose), len(f.cpu))] {
		b.add(scenario, who+" CPU at full speed", "% of 1 core", f.cpu[i])
	}
}
