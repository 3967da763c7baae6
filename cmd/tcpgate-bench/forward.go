package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
)

// The forward scenario: bulk bytes both ways at once over one connection
// through a relay to a target in this process, with no subscriber: first a
// forwarding listener, then socat relaying to the same target in the same
// run (`socat TCP-LISTEN:PORT,fork,reuseaddr TCP:target`, socat's own
// buffers). The figure is the bytes of both directions over the time until
// both have ended.

// bulkTarget is the target of the relays: for each connection it writes
// rawChunk for the send window and half-closes, while it reads and counts
// what comes until the end of stream.
type bulkTarget struct {
	ln      net.Listener
	window  time.Duration
	results chan bulkSide
	wg      sync.WaitGroup
}

// bulkSide is what one end of the connection moved: the bytes it wrote and
// read, when its reading ended (Unix ns), and what went wrong.
type bulkSide struct {
	wrote, read int64
	endNs       int64
	err         error
}

func startBulkTarget(window time.Duration) (*bulkTarget, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	t := &bulkTarget{ln: ln, window: window, results: make(chan bulkSide, 4)}
	t.wg.Go(func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			t.wg.Go(func() {
				defer nc.Close()
				t.results <- bulk(nc, time.Now().Add(window))
			})
		}
	})
	return t, nil
}

func (t *bulkTarget) addr() string { return t.ln.Addr().String() }

func (t *bulkTarget) close() {
	_ = t.ln.Close()
	t.wg.Wait()
}

// bulk writes rawChunk to nc until the deadline, half-closes, and reads
// what comes until the end of stream, both at once.
func bulk(nc net.Conn, until time.Time) bulkSide {
	_ = nc.SetDeadline(until.Add(drainTimeout))
	var side bulkSide
	var werr error
	var wg sync.WaitGroup
	wg.Go(func() {
		for time.Now().Before(until) {
			n, err := nc.Write(rawChunk)
			side.wrote += int64(n)
			if err != nil {
				werr = fmt.Errorf("writing: %w", err)
				return
			}
		}
		werr = nc.(*net.TCPConn).CloseWrite()
	})
	buf := make([]byte, 256<<10)
	for {
		n, err := nc.Read(buf)
		side.read += int64(n)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			side.err = fmt.Errorf("reading: %w", err)
			break
		}
	}
	side.endNs = time.Now().UnixNano()
	wg.Wait()
	if side.err == nil {
		side.err = werr
	}
	return side
}

// bulkThrough runs one bulk exchange through the relay at addr to t and
// returns its MB/s, both directions counted.
func bulkThrough(addr string, t *bulkTarget) (float64, error) {
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		return 0, err
	}
	defer nc.Close()
	startNs := time.Now().UnixNano()
	client := bulk(nc, time.Now().Add(t.window))
	var far bulkSide
	select {
	case far = <-t.results:
	case <-time.After(drainTimeout):
		return 0, errors.New("the target did not finish")
	}
	switch {
	case client.err != nil:
		return 0, fmt.Errorf("client: %w", client.err)
	case far.err != nil:
		return 0, fmt.Errorf("target: %w", far.err)
	case client.wrote != far.read || far.wrote != client.read:
		return 0, fmt.Errorf("client wrote %d, the target read %d; the target wrote %d, the client read %d", client.wrote, far.read, far.wrote, client.read)
	}
	return mbps(uint64(client.read+far.read), startNs, max(client.endNs, far.endNs)), nil
}

func runForward(ctx context.Context, o *options, b *bench) error {
	tgt, err := startBulkTarget(o.duration)
	if err != nil {
		return err
	}
	defer tgt.close()
	var gw float64
	err = withDaemon(ctx, o, b, func(d *daemon) error {
		_, addr, err := d.startListenerWith(ctx, &tcpgatev1.StartListenerRequest{
			Host: "127.0.0.1", Forward: &tcpgatev1.Forward{Address: tgt.addr()},
		})
		if err != nil {
			return err
		}
		cpu0, start := cpuSeconds(d.pid()), time.Now()
		if gw, err = bulkThrough(addr, tgt); err != nil {
			return fmt.Errorf("forwarding listener: %w", err)
		}
		b.add("forward", "tcpgate: forwarding listener, both ways at once", "MB/s", gw)
		b.add("forward", "tcpgate CPU", "% of 1 core", 100*(cpuSeconds(d.pid())-cpu0)/time.Since(start).Seconds())
		return nil
	})
	if err != nil {
		return err
	}
	if o.socat == "" {
		b.note("forward: socat is not installed: no baseline")
		return nil
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	// -d -d logs "listening on" once the port is bound.
	cmd := exec.Command(o.socat, "-d", "-d", fmt.Sprintf("TCP-LISTEN:%d,bind=127.0.0.1,fork,reuseaddr", port), "TCP:"+tgt.addr())
	relay, err := startChild("socat", cmd, false)
	if err != nil {
		return err
	}
	defer relay.close()
	deadline := time.Now().Add(startTimeout)
	for !strings.Contains(relay.stderr.String(), "listening on") {
		if time.Now().After(deadline) {
			return fmt.Errorf("socat did not listen within %s: %s", startTimeout, relay.stderr.String())
		}
		time.Sleep(pollEvery)
	}
	sr, err := bulkThrough(net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), tgt)
	if err != nil {
		return fmt.Errorf("socat baseline: %w", err)
	}
	b.add("forward", "socat relay (fork), both ways at once", "MB/s", sr)
	b.add("forward", "tcpgate / socat", "ratio", gw/sr)
	return nil
}
