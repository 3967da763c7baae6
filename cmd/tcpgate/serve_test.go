package main

import (
	"testing"

	"github.com/spf13/pflag"

	"github.com/tcpgate/tcpgate/server"
)

// TestDefaultMaxConnections: the default --max-connections leaves the
// control plane's reserve of the open-file limit, and is a number, never
// unlimited, when the limit is above 2^24 (LimitNOFILE=infinity).
func TestDefaultMaxConnections(t *testing.T) {
	tests := []struct {
		limit uint64
		want  int
	}{
		{512, 512 - server.FDReserve},
		{1 << 20, 1<<20 - server.FDReserve},
		{1 << 24, 1<<24 - server.FDReserve},
		{1<<24 + 1, 100_000},
		{1 << 62, 100_000},
		{1<<64 - 1, 100_000}, // RLIM_INFINITY
		{0, 100_000},         // unknown
		{100, 64},            // below the reserve: the least default
	}
	for _, tt := range tests {
		if got := defaultMaxConnections(tt.limit, server.FDReserve); got != tt.want {
			t.Errorf("defaultMaxConnections(%d) = %d, want %d", tt.limit, got, tt.want)
		}
	}
}

// TestConnectionDefaults: --max-connections-per-ip defaults to a quarter
// of --max-connections with loopback peers exempt, and counts loopback
// peers once set; --max-connections leaves the control plane's caps as set.
func TestConnectionDefaults(t *testing.T) {
	tests := []struct {
		name         string
		args         []string
		wantMax      int
		wantPerIP    int
		wantLoopback bool
	}{
		{"defaults", nil, 4096 - server.FDReserve, (4096 - server.FDReserve) / 4, false},
		{"max-connections set", []string{"--max-connections", "1000"}, 1000, 250, false},
		{"per-ip set", []string{"--max-connections-per-ip", "10"}, 4096 - server.FDReserve, 10, true},
		{"larger control-plane caps", []string{"--max-http-connections", "500"}, 4096 - 500 - server.DefaultMaxGRPCConnections - server.FDSlack, (4096 - 500 - server.DefaultMaxGRPCConnections - server.FDSlack) / 4, false},
		{"no bound", []string{"--max-connections", "0"}, 0, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var cfg server.Config
			f := pflag.NewFlagSet("serve", pflag.ContinueOnError)
			f.IntVar(&cfg.MaxConnections, "max-connections", defaultMaxConnections(4096, server.FDReserve), "")
			f.IntVar(&cfg.MaxConnectionsPerIP, "max-connections-per-ip", 0, "")
			f.IntVar(&cfg.MaxHTTPConnections, "max-http-connections", server.DefaultMaxHTTPConnections, "")
			f.IntVar(&cfg.MaxGRPCConnections, "max-grpc-connections", server.DefaultMaxGRPCConnections, "")
			if err := f.Parse(tt.args); err != nil {
				t.Fatal(err)
			}
			connectionDefaults(f, &cfg, 4096)
			if cfg.MaxConnections != tt.wantMax || cfg.MaxConnectionsPerIP != tt.wantPerIP || cfg.PerIPLoopback != tt.wantLoopback {
				t.Errorf("max %d, per IP %d, loopback counted %v; want %d, %d, %v",
					cfg.MaxConnections, cfg.MaxConnectionsPerIP, cfg.PerIPLoopback, tt.wantMax, tt.wantPerIP, tt.wantLoopback)
			}
		})
	}
}
