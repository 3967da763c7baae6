package main_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tcpgate/tcpgate/server/servertest"
)

// TestRunCluster runs make run-cluster's script as the README shows it,
// on free ports: it prints how to reach three nodes, they form one
// cluster (a listener on every node serves on each node's address), and
// Ctrl-C (SIGINT) stops them all, leaving nothing bound.
func TestRunCluster(t *testing.T) {
	free := func() string { return servertest.RefusedAddr(t) }
	port := func(addr string) string { _, p, _ := net.SplitHostPort(addr); return p }
	natsAddr := free()
	var grpcAddrs, grpcPorts, httpPorts []string
	for range 3 {
		a := free()
		grpcAddrs, grpcPorts, httpPorts = append(grpcAddrs, a), append(grpcPorts, port(a)), append(httpPorts, port(free()))
	}
	hosts := []string{"127.0.0.31", "127.0.0.32", "127.0.0.33"}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "../../scripts/run-cluster")
	cmd.Env = hermeticEnv("BIN="+filepath.Dir(tcpgateBin), "NATS_ADDR="+natsAddr,
		"GRPC_PORTS="+strings.Join(grpcPorts, " "), "HTTP_PORTS="+strings.Join(httpPorts, " "),
		"NODE_HOSTS="+strings.Join(hosts, " "), "CLUSTER_DIR="+t.TempDir(), "GORACE=atexit_sleep_ms=0")
	cmd.WaitDelay = waitDelay
	var stderr servertest.LogSink
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	lines := make(chan string, 64)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		done <- cmd.Wait()
	}()
	var printed []string
	for ready := false; !ready; {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("run-cluster ended before it was ready: %v\n%s\n%s", <-done, strings.Join(printed, "\n"), stderr.String())
			}
			printed = append(printed, l)
			ready = strings.Contains(l, "ready")
		case <-ctx.Done():
			t.Fatalf("run-cluster not ready in time:\n%s\n%s", strings.Join(printed, "\n"), stderr.String())
		}
	}
	for i, a := range grpcAddrs {
		row := fmt.Sprintf("node%d", i+1)
		if !strings.Contains(strings.Join(printed, "\n"), row) || !strings.Contains(strings.Join(printed, "\n"), a) {
			t.Errorf("run-cluster's table does not show %s at %s:\n%s", row, a, strings.Join(printed, "\n"))
		}
	}
	for _, hp := range httpPorts {
		waitNodes(t, "http://127.0.0.1:"+hp, 3)
	}
	runReadmeCluster(t, httpPorts, hosts)
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	for range lines {
	}
	if err := <-done; err == nil || !strings.Contains(err.Error(), "exit status 130") {
		t.Errorf("run-cluster after Ctrl-C: %v, want exit status 130 (as a shell reports an interrupt)\n%s", err, stderr.String())
	}
	for _, a := range append(grpcAddrs, natsAddr) {
		if c, err := net.DialTimeout("tcp", a, time.Second); err == nil {
			c.Close()
			t.Errorf("%s still bound after Ctrl-C", a)
		}
	}
}

// waitNodes waits until the node at base sees n live nodes (its
// tcpgate_cluster_nodes metric): the nodes of run-cluster serve before they
// have all seen each other.
func waitNodes(t *testing.T, base string, n int) {
	t.Helper()
	want := fmt.Sprintf("tcpgate_cluster_nodes %d\n", n)
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: callTimeout}
	servertest.EventuallyWithin(t, base+" to see "+fmt.Sprint(n)+" nodes", startTimeout, func() bool {
		resp, err := hc.Get(base + "/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return strings.Contains(string(b), want)
	})
}

// runReadmeCluster runs the README's cluster walkthrough as pasted, with
// run-cluster's default addresses replaced by the test's, and checks what
// each command shows.
func runReadmeCluster(t *testing.T, httpPorts, hosts []string) {
	t.Helper()
	requireTool(t, "curl")
	code := sectionBlocks(t, readmeBlocks(t), "A cluster of gateways", "sh")
	if len(code) != 1 {
		t.Fatalf("README section \"A cluster of gateways\" has %d sh blocks, want 1", len(code))
	}
	port := freePort(t)
	repl := strings.NewReplacer(
		"127.0.0.1:50080", "127.0.0.1:"+httpPorts[0], "127.0.0.1:50081", "127.0.0.1:"+httpPorts[1], "127.0.0.1:50082", "127.0.0.1:"+httpPorts[2],
		"127.0.0.11", hosts[0], "127.0.0.12", hosts[1], "127.0.0.13", hosts[2], "7300", port)
	cmds := splitCommands(t, code[0])
	if len(cmds) != 4 {
		t.Fatalf("README cluster walkthrough: %d commands, want 4 (start, list, send, events)", len(cmds))
	}
	run := func(c shellCommand) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		defer cancel()
		out, err := exec.CommandContext(ctx, "bash", "-c", repl.Replace(c.text)).Output()
		if err != nil {
			t.Fatalf("README.md:%d: %v\n%s", c.line, err, out)
		}
		return string(out)
	}
	var started struct{ Listener listenerJSON }
	decodeJSON(t, run(cmds[0]), &started)
	if !started.Listener.EveryNode || started.Listener.Address != hosts[1]+":"+port || started.Listener.NodeID != "node2" {
		t.Fatalf("README.md:%d: the listener %+v, want every node, on node2 at %s:%s", cmds[0].line, started.Listener, hosts[1], port)
	}
	var list struct{ Listeners []listenerJSON }
	decodeJSON(t, run(cmds[1]), &list)
	if len(list.Listeners) != 3 {
		t.Fatalf("README.md:%d: %d listeners, want one per node: %+v", cmds[1].line, len(list.Listeners), list.Listeners)
	}
	for i, l := range list.Listeners {
		if l.NodeID != fmt.Sprintf("node%d", i+1) || l.Address != hosts[i]+":"+port {
			t.Errorf("README.md:%d: listener %d: %+v, want node%d at %s:%s", cmds[1].line, i, l, i+1, hosts[i], port)
		}
	}
	var sent struct {
		Reply struct{ Text string } `json:"reply"`
	}
	decodeJSON(t, run(cmds[2]), &sent)
	if strings.TrimSuffix(sent.Reply.Text, "\n") != "hi node3" {
		t.Fatalf("README.md:%d: reply %q, want node3's echo \"hi node3\"", cmds[2].line, sent.Reply.Text)
	}
	// The stream runs until stopped: read it until it shows what the
	// commands above made, from sequence 1.
	ctx, cancel := context.WithTimeout(context.Background(), eventTimeout)
	defer cancel()
	stream := exec.CommandContext(ctx, "bash", "-c", repl.Replace(cmds[3].text))
	stream.WaitDelay = waitDelay
	out, err := stream.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); stream.Wait() }()
	sc := bufio.NewScanner(out)
	startedOn := map[string]bool{}
	first := true
	for sc.Scan() {
		var e eventJSON
		decodeJSON(t, sc.Text(), &e)
		if e.Kind == kindStreamStarted {
			continue
		}
		if first && e.Sequence != 1 {
			t.Fatalf("README.md:%d: the stream starts at sequence %d (%+v), want 1 (the cluster's stream from its start)", cmds[3].line, e.Sequence, e)
		}
		first = false
		if e.Kind == "EVENT_KIND_LISTENER_STARTED" && e.ListenerID == "echo" {
			startedOn[e.NodeID] = true
		}
		if e.Kind == kindData && e.payload() == "hi node3" {
			if e.NodeID != "node3" || len(startedOn) != 3 {
				t.Fatalf("README.md:%d: node3's data %+v after listener starts on %v, want node3 after all three", cmds[3].line, e, startedOn)
			}
			return
		}
	}
	t.Fatalf("README.md:%d: the stream ended (%v) before node3's data; listener starts seen on %v", cmds[3].line, sc.Err(), startedOn)
}
