package servertest

import (
	"bufio"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// LineServer is a real TCP server of a line protocol on 127.0.0.1, for
// outbound connections to dial: it answers every line with what its
// handler returns ("" answers nothing), records the lines of each
// connection in order, and can be killed and started again on the same
// port, as a device or a server that restarts.
type LineServer struct {
	t      testing.TB
	addr   string
	answer func(line string) string

	mu    sync.Mutex // guards the fields below
	ln    net.Listener
	conns []net.Conn // by connection, as lines; nil once closed
	lines [][]string // by connection, in accept order
	wg    sync.WaitGroup
}

// EchoLine answers "echo " and the line.
func EchoLine(line string) string { return "echo " + line }

// NewLineServer starts a LineServer on 127.0.0.1:0 that answers with
// answer; the test's end kills it.
func NewLineServer(t testing.TB, answer func(line string) string) *LineServer {
	t.Helper()
	s := &LineServer{t: t, addr: "127.0.0.1:0", answer: answer}
	s.Start()
	t.Cleanup(s.Kill)
	return s
}

// Addr returns the server's address (the same across Kill and Start).
func (s *LineServer) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// Start binds the server's address again after a Kill (its first port),
// retrying for a second when something else took it meanwhile.
func (s *LineServer) Start() {
	s.t.Helper()
	var ln net.Listener
	var err error
	for range 50 {
		if ln, err = net.Listen("tcp", s.Addr()); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		s.t.Fatalf("binding %s: %v", s.Addr(), err)
	}
	s.mu.Lock()
	s.ln = ln
	s.addr = ln.Addr().String()
	s.mu.Unlock()
	s.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			if s.ln != ln {
				// Killed between Accept and here: Kill closed the
				// connections it knew, so this one is closed here, or
				// its reader would keep Kill waiting for ever.
				s.mu.Unlock()
				c.Close()
				return
			}
			s.conns = append(s.conns, c)
			s.lines = append(s.lines, nil)
			i := len(s.lines) - 1
			s.mu.Unlock()
			s.wg.Go(func() { s.serve(c, i) })
		}
	})
}

func (s *LineServer) serve(c net.Conn, i int) {
	defer func() {
		c.Close()
		s.mu.Lock()
		s.conns[i] = nil // Conn(i) is for open connections
		s.mu.Unlock()
	}()
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimSuffix(line, "\n")
		s.mu.Lock()
		s.lines[i] = append(s.lines[i], line)
		s.mu.Unlock()
		if reply := s.answer(line); reply != "" {
			if _, err := c.Write([]byte(reply + "\n")); err != nil {
				return
			}
		}
	}
}

// Kill closes the listener and every connection, and waits for them.
func (s *LineServer) Kill() {
	s.mu.Lock()
	if s.ln != nil {
		s.ln.Close()
		s.ln = nil
	}
	// Indexed as lines are, across restarts: entries go nil, never away.
	for i, c := range s.conns {
		if c != nil {
			c.Close()
			s.conns[i] = nil
		}
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// Accepted returns how many connections the server accepted in all.
func (s *LineServer) Accepted() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.lines)
}

// Lines returns the lines that connection i (0 for the first accepted)
// sent.
func (s *LineServer) Lines(i int) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.lines[i]...)
}

// Conn returns the server's end of connection i while it is open, nil once
// killed.
func (s *LineServer) Conn(i int) net.Conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	if i >= len(s.conns) {
		return nil
	}
	return s.conns[i] // nil once closed
}
