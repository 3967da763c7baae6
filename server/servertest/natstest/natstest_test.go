package natstest_test

import (
	"testing"

	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"

	"github.com/tcpgate/tcpgate/server/servertest/natstest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestStartRestart(t *testing.T) {
	s := natstest.Start(t)
	nc, err := nats.Connect(s.URL())
	if err != nil {
		t.Fatal(err)
	}
	nc.Close()
	url := s.URL()
	s.Restart()
	if s.URL() != url {
		t.Fatalf("URL after restart = %s, want %s", s.URL(), url)
	}
	nc, err = nats.Connect(s.URL())
	if err != nil {
		t.Fatalf("after restart: %v", err)
	}
	nc.Close()
}
