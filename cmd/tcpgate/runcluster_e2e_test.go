package main_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
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
	every := startEveryNode(t, client{addr: grpcAddrs[1]}, 3)
	for _, l := range every {
		h, _, _ := net.SplitHostPort(l.Address)
		want := hosts[int(l.NodeID[len(l.NodeID)-1]-'1')]
		if h != want {
			t.Errorf("%s's listener on %s, want %s (its --node-host)", l.NodeID, l.Address, want)
		}
		echoes(t, l.Address, "hello "+l.NodeID)
	}
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
