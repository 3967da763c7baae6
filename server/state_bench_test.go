package server_test

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/servertest"
)

// BenchmarkStartListenerState measures what --state-file costs a change:
// one op is a StartListener (timed, its median reported as median-µs)
// then a StopListener of it, without and with a state file, whose every
// change is fsynced before the call returns.
//
//	go test -run '^$' -bench StartListenerState -benchtime 200x ./server
func BenchmarkStartListenerState(b *testing.B) {
	for _, tc := range []struct {
		name string
		file bool
	}{{"no-state-file", false}, {"state-file", true}} {
		b.Run(tc.name, func(b *testing.B) {
			cfg := server.Config{}
			if tc.file {
				cfg.StateFile = filepath.Join(b.TempDir(), "state")
			}
			g := servertest.Start(b, cfg)
			ctx := context.Background()
			took := make([]time.Duration, 0, b.N)
			i := 0
			for b.Loop() {
				id := fmt.Sprintf("b%d", i)
				i++
				start := time.Now()
				if _, err := g.Client.StartListener(ctx, &tcpgatev1.StartListenerRequest{ListenerId: id, Host: "127.0.0.1"}); err != nil {
					b.Fatal(err)
				}
				took = append(took, time.Since(start))
				if _, err := g.Client.StopListener(ctx, &tcpgatev1.StopListenerRequest{ListenerId: id}); err != nil {
					b.Fatal(err)
				}
			}
			slices.Sort(took)
			b.ReportMetric(float64(took[len(took)/2].Microseconds()), "median-µs")
		})
	}
}
