package main_test

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// testReadmeHandle runs the README's section "Handling connections from
// your own code (Handle)" as pasted: its grpcurl command (with the built
// grpcurl and the test gateway's address) reads the registration and then
// what the test types, the JSON reply of the section with the frame id
// grpcurl printed; a client of listener demo reads the answer.
func testReadmeHandle(t *testing.T, blocks []codeBlock) {
	const section = "Handling connections from your own code"
	bash := requireTool(t, "bash")
	sh := sectionBlocks(t, blocks, section, "sh")
	js := sectionBlocks(t, blocks, section, "json")
	if len(sh) != 1 || len(js) != 1 {
		t.Fatalf("README section %q has %d sh and %d json blocks, want 1 each", section, len(sh), len(js))
	}
	g := startGateway(t)
	c := client{addr: g.grpcAddr}
	var started struct {
		Listener struct{ Address string }
	}
	c.call(t, "StartListener", map[string]any{
		"listener_id": "demo", "host": "127.0.0.1",
		"auto_reply": map[string]any{"mode": "AUTO_REPLY_MODE_FIXED", "text": "Message received"},
	}, &started)

	script := strings.ReplaceAll(sh[0].text, "go tool grpcurl", grpcurlBin)
	script = strings.ReplaceAll(script, "127.0.0.1:50051", g.grpcAddr)
	if !strings.Contains(script, grpcurlBin) || !strings.Contains(script, g.grpcAddr) {
		t.Fatalf("README.md:%d: the command runs no go tool grpcurl on 127.0.0.1:50051", sh[0].line)
	}
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bash, "-c", script)
	cmd.Env = hermeticEnv()
	cmd.WaitDelay = waitDelay
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu  sync.Mutex
		out bytes.Buffer
	)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		r := bufio.NewReader(stdout)
		for {
			line, err := r.ReadString('\n')
			mu.Lock()
			out.WriteString(line)
			mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	// saw waits for grpcurl to print a match of re, and returns it.
	saw := func(what string, re *regexp.Regexp) []string {
		t.Helper()
		deadline := time.Now().Add(callTimeout)
		for time.Now().Before(deadline) {
			mu.Lock()
			m := re.FindStringSubmatch(out.String())
			mu.Unlock()
			if m != nil {
				return m
			}
			time.Sleep(10 * time.Millisecond)
		}
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("grpcurl printed no %s:\n%s\n%s", what, out.String(), stderr.String())
		return nil
	}
	saw("registered", regexp.MustCompile(`"registered"`))

	nc, err := net.DialTimeout("tcp", started.Listener.Address, callTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(callTimeout))
	if _, err := nc.Write([]byte("hello\n")); err != nil {
		t.Fatal(err)
	}
	id := saw("FRAME with a frameId", regexp.MustCompile(`"frameId": "(\d+)"`))[1]
	reply := regexp.MustCompile(`"frame_id": "\d+"`).ReplaceAllString(js[0].text, `"frame_id": "`+id+`"`)
	if _, err := io.WriteString(stdin, reply); err != nil {
		t.Fatal(err)
	}
	want := "Message received"
	got := make([]byte, len(want))
	if _, err := io.ReadFull(nc, got); err != nil || string(got) != want {
		t.Fatalf("the client read %q (%v), want %q", got, err, want)
	}
	// Ending the input ends the stream, and grpcurl with it.
	stdin.Close()
	<-copied
	if err := cmd.Wait(); err != nil {
		t.Fatalf("grpcurl: %v\n%s\n%s", err, out.String(), stderr.String())
	}
	if strings.Contains(out.String(), "rejection") {
		t.Fatalf("the reply was rejected:\n%s", out.String())
	}
}
