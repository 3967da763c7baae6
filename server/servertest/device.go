package servertest

import (
	"net"
	"testing"
	"time"
)

// Device is a TCP server a test runs on 127.0.0.1, for the gateway's
// outbound connections to dial: it accepts every connection and hands
// them out in order.
type Device struct {
	t        testing.TB
	ln       net.Listener
	accepted chan net.Conn
}

// NewDevice starts a Device; the test's end closes it and every
// connection it accepted.
func NewDevice(t testing.TB) *Device {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d := &Device{t: t, ln: ln, accepted: make(chan net.Conn, 8)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			d.accepted <- c
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		close(d.accepted)
		for c := range d.accepted {
			c.Close()
		}
	})
	return d
}

// Addr is the address the device listens on.
func (d *Device) Addr() string { return d.ln.Addr().String() }

// Accepted gives the connections the device accepted and nobody took
// yet: a test selects on it to see that no connection came.
func (d *Device) Accepted() <-chan net.Conn { return d.accepted }

// Next returns the next connection the device accepts, failing the test
// when none comes within Wait; the test's end closes it.
func (d *Device) Next(what string) net.Conn {
	d.t.Helper()
	select {
	case c := <-d.accepted:
		d.t.Cleanup(func() { c.Close() })
		return c
	case <-time.After(Wait):
		d.t.Fatalf("%s: no connection within %v", what, Wait)
		return nil
	}
}
