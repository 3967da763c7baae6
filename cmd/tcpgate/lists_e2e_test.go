package main_test

import (
	"context"
	"fmt"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server/servertest"
)

// listsLoadTimeout bounds opening the connections of the heavy list test.
const listsLoadTimeout = 2 * time.Minute

// grpcDefaultMaxRecv is what a gRPC client reads of one message unless it
// says otherwise.
const grpcDefaultMaxRecv = 4 << 20

// TestListConnections15000E2E: ListConnections of 15,000 connections,
// over IPv6 with a listener id of 64 bytes, comes in pages that a gRPC
// client with its default 4 MiB limit reads: page_size 5000 is 1000,
// each page a small part of the limit, and the pages hold every
// connection once. Before, one response held all 15,000.
func TestListConnections15000E2E(t *testing.T) {
	if testing.Short() {
		t.Skip("15,000 connections; skipped with -short")
	}
	const n = 15000
	host := "::1"
	if ln, err := net.Listen("tcp6", "[::1]:0"); err != nil {
		host = "127.0.0.1"
	} else {
		ln.Close()
	}
	start := time.Now()
	_, api := plainAPI(t, "--max-connections", strconv.Itoa(n+100))
	ctx, cancel := context.WithTimeout(context.Background(), listsLoadTimeout+callTimeout)
	defer cancel()
	lid := strings.Repeat("l", 64)
	l, err := api.StartListener(ctx, &tcpgatev1.StartListenerRequest{ListenerId: lid, Host: host})
	if err != nil {
		t.Fatal(err)
	}
	holdIdle(t, l.GetListener().GetAddress(), n, false, nil)
	servertest.EventuallyWithin(t, fmt.Sprintf("%d connections open", n), listsLoadTimeout, func() bool {
		resp, err := api.GetListener(ctx, &tcpgatev1.GetListenerRequest{ListenerId: lid})
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetListener().GetConnectionsActive() == n
	})
	opened := time.Since(start)

	// The client is the default one: 4 MiB a message.
	seen := make(map[string]bool, n)
	req := &tcpgatev1.ListConnectionsRequest{PageSize: 5000}
	var pages, largest int
	listStart := time.Now()
	for pages = 1; ; pages++ {
		if pages > n {
			t.Fatal("the pages never end")
		}
		resp, err := api.ListConnections(ctx, req)
		if err != nil {
			t.Fatalf("page %d: %v", pages, err)
		}
		if got := len(resp.GetConnections()); got > 1000 {
			t.Fatalf("page %d holds %d connections, want at most 1000 (page_size 5000 is 1000)", pages, got)
		}
		largest = max(largest, proto.Size(resp))
		for _, c := range resp.GetConnections() {
			if seen[c.GetConnectionId()] {
				t.Fatalf("page %d lists %s again", pages, c.GetConnectionId())
			}
			seen[c.GetConnectionId()] = true
		}
		if resp.GetNextPageToken() == "" {
			break
		}
		req.PageToken = resp.GetNextPageToken()
	}
	t.Logf("%d connections to [%s] opened in %s; listed in %d pages in %s, the largest %d bytes", n, host,
		opened.Round(time.Millisecond), pages, time.Since(listStart).Round(time.Millisecond), largest)
	if len(seen) != n || pages != n/1000 {
		t.Errorf("%d connections in %d pages, want %d in %d", len(seen), pages, n, n/1000)
	}
	if largest > grpcDefaultMaxRecv/4 {
		t.Errorf("the largest page is %d bytes, want it well within gRPC's default %d", largest, grpcDefaultMaxRecv)
	}
}

// TestCLIListsE2E: `tcpgate conns` follows every page (150 connections are
// more than the gateway's page of 100), stops at --limit, filters by
// --listener, --state and --remote-prefix; `tcpgate conn ID` shows one;
// `tcpgate ls` follows pages.
func TestCLIListsE2E(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	tg := cliRunner{env: hermeticEnv("TCPGATE_SERVER=" + g.grpcAddr)}
	listen := func(id string, args ...string) string {
		out, _ := tg.mustRun(t, append([]string{"listen", "0", "--host", "127.0.0.1", "--id", id}, args...)...)
		m := regexp.MustCompile(`listening on (127\.0\.0\.1:\d+)`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("tcpgate listen printed %q", out)
		}
		return m[1]
	}
	many, other := listen("many"), listen("other", "--half-close", "30s")
	listen("third")
	// rows returns the rows of a table the CLI printed, without its header.
	rows := func(out string) [][]string {
		var rs [][]string
		for i, line := range slices.Collect(strings.Lines(out)) {
			if i > 0 {
				rs = append(rs, strings.Fields(line))
			}
		}
		return rs
	}
	// waitRows runs tcpgate with args until it prints n rows.
	waitRows := func(n int, args ...string) [][]string {
		var got [][]string
		servertest.EventuallyWithin(t, fmt.Sprintf("tcpgate %s printing %d rows", strings.Join(args, " "), n), eventTimeout, func() bool {
			got = rows(tg.mustRunOut(t, args...))
			return len(got) == n
		})
		return got
	}
	holdIdle(t, many, 150, false, nil)
	waitRows(150, "conns")
	// Accepted after the 150: the last of the list.
	c := servertest.DialFrom(t, "127.0.0.2", other)
	remote := c.LocalAddr().String()
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	waitRows(1, "conns", "--state", "half-closed")
	all := waitRows(151, "conns")
	if all[150][1] != "other" || all[150][2] != "half-closed" || all[150][3] != remote {
		t.Errorf("the last row = %v, want other's half-closed connection from %s", all[150], remote)
	}
	for _, r := range all[:150] {
		if r[1] != "many" || r[2] != "open" {
			t.Errorf("row %v, want an open connection of many", r)
		}
	}
	for name, tt := range map[string]struct {
		args []string
		want int
	}{
		"--limit":                         {[]string{"conns", "--limit", "120"}, 120},
		"--limit and --page-size":         {[]string{"conns", "--limit", "75", "--page-size", "20"}, 75},
		"--page-size":                     {[]string{"conns", "--page-size", "7"}, 151},
		"--listener":                      {[]string{"conns", "--listener", "many"}, 150},
		"LISTENER":                        {[]string{"conns", "other"}, 1},
		"--listener of none":              {[]string{"conns", "--listener", "third"}, 0},
		"--state open":                    {[]string{"conns", "--state", "open"}, 150},
		"--state HALF_CLOSED":             {[]string{"conns", "--state", "CONNECTION_STATE_HALF_CLOSED"}, 1},
		"--state draining":                {[]string{"conns", "--state", "draining"}, 0},
		"--remote-prefix":                 {[]string{"conns", "--remote-prefix", "127.0.0.2:"}, 1},
		"--remote-prefix and --state":     {[]string{"conns", "--remote-prefix", "127.0.0.1:", "--state", "open"}, 150},
		"--remote-prefix, --state, other": {[]string{"conns", "--remote-prefix", "127.0.0.1:", "--listener", "other"}, 0},
		"--origin accepted":               {[]string{"conns", "--origin", "accepted"}, 151},
		"--origin outbound":               {[]string{"conns", "--origin", "outbound"}, 0},
		"--origin both":                   {[]string{"conns", "--origin", "outbound,ORIGIN_ACCEPTED"}, 151},
		"--origin and --listener":         {[]string{"conns", "--origin", "accepted", "--listener", "other"}, 1},
	} {
		if got := rows(tg.mustRunOut(t, tt.args...)); len(got) != tt.want {
			t.Errorf("%s: tcpgate %s printed %d rows, want %d", name, strings.Join(tt.args, " "), len(got), tt.want)
		}
	}
	for _, args := range [][]string{
		{"conns", "--state", "closed"},
		{"conns", "--origin", "inbound"},
		{"conns", "--page-size", "-1"},
		{"conns", "--limit", "-1"},
		{"conns", "many", "--listener", "other"},
	} {
		if _, stderr, err := tg.run(t, args...); err == nil || !strings.Contains(stderr, args[len(args)-2]) {
			t.Errorf("tcpgate %s: %v, stderr %q; want a failure naming %s", strings.Join(args, " "), err, stderr, args[len(args)-2])
		}
	}

	id := all[150][0]
	out := tg.mustRunOut(t, "conn", id)
	for _, want := range []string{"id:", id, "listener:", "other", "origin:", "accepted", "state:", "half-closed", "remote:", remote} {
		if !strings.Contains(out, want) {
			t.Errorf("tcpgate conn %s:\n%s\nwant it to show %q", id, out, want)
		}
	}
	if _, stderr, err := tg.run(t, "conn", "c-nosuchconn"); err == nil || !strings.Contains(stderr, "NotFound") || !strings.Contains(stderr, "c-nosuchconn") {
		t.Errorf("tcpgate conn of no connection: %v, stderr %q; want NotFound naming it", err, stderr)
	}

	ls := rows(tg.mustRunOut(t, "ls", "--page-size", "1"))
	var ids []string
	for _, r := range ls {
		ids = append(ids, r[0])
	}
	if !slices.Equal(ids, []string{"many", "other", "third"}) {
		t.Errorf("tcpgate ls --page-size 1 listed %v, want [many other third]", ids)
	}
	if got := rows(tg.mustRunOut(t, "ls", "--limit", "2")); len(got) != 2 {
		t.Errorf("tcpgate ls --limit 2 printed %d rows, want 2", len(got))
	}
}

// mustRunOut is mustRun's stdout.
func (r cliRunner) mustRunOut(t *testing.T, args ...string) string {
	t.Helper()
	out, _ := r.mustRun(t, args...)
	return out
}
