package main_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server/servertest"
)

// connectionsPageJSON is a ListConnectionsResponse as curl and grpcurl
// print it.
type connectionsPageJSON struct {
	Connections []struct {
		ConnectionID  string `json:"connectionId"`
		ListenerID    string `json:"listenerId"`
		RemoteAddress string `json:"remoteAddress"`
		State         string `json:"state"`
	} `json:"connections"`
	NextPageToken string `json:"nextPageToken"`
	Header        struct {
		Incarnation string `json:"incarnation"`
	} `json:"header"`
}

// TestReadmeListsSnippets runs the README's section "Lists a page at a
// time" as pasted, against a gateway of its own with three clients
// connected to its listener.
func TestReadmeListsSnippets(t *testing.T) {
	t.Parallel()
	requireTool(t, "curl")
	code := sectionBlocks(t, readmeBlocks(t), "Lists a page at a time", "sh")
	if len(code) != 1 {
		t.Fatalf("README section \"Lists a page at a time\" has %d sh blocks, want 1", len(code))
	}
	g := startGateway(t)
	sh := newSnippetShell(t, g, map[string]string{"G": g.grpcAddr, "H": "http://" + g.httpAddr, "T": tcpgateBin})
	// The CLI's default --server is make run's address, the test's is not.
	sh.env = append(sh.env, "TCPGATE_SERVER="+g.grpcAddr)
	laddr := net.JoinHostPort("127.0.0.1", sh.port)
	api := servertest.Client(t, g.grpcAddr)

	var remotes, ids []string // of the clients, in acceptance order
	checked := map[string]bool{}
	for _, c := range splitCommands(t, code[0]) {
		text, ok := sh.prepare(t, c)
		if !ok {
			continue
		}
		if strings.Contains(text, "$C") {
			// C was taken from a list the snippet printed: the first
			// client's connection.
			if len(ids) == 0 || sh.vars["C"] != ids[0] {
				t.Fatalf("README.md:%d: %s uses C=%q, want the first client's %q (ids %v)", c.line, text, sh.vars["C"], ids, ids)
			}
		}
		out := sh.mustRun(t, c, text)
		page := func() connectionsPageJSON {
			var p connectionsPageJSON
			decodeJSON(t, out, &p)
			if p.Header.Incarnation == "" {
				t.Errorf("README.md:%d: %s\nprinted %s, want a header with the incarnation", c.line, text, out)
			}
			return p
		}
		pageRemotes := func(p connectionsPageJSON) []string {
			var rs []string
			for _, cn := range p.Connections {
				rs = append(rs, cn.RemoteAddress)
			}
			return rs
		}
		switch {
		case strings.Contains(text, "$H/v1/listeners --json"):
			checked["start"] = true
			if !strings.Contains(out, `"LISTENER_STATE_LISTENING"`) {
				t.Fatalf("README.md:%d: %s\nprinted %s, want a listening listener", c.line, text, out)
			}
			// The README's clients in other terminals.
			for range 3 {
				_, local := dialLocal(t, laddr)
				remotes = append(remotes, local)
			}
			ids = readmeWaitListed(t, api, remotes)
		case strings.HasPrefix(text, "t=; while "):
			checked["loop"] = true
			var got []string
			dec := json.NewDecoder(strings.NewReader(out))
			var n int
			for ; dec.More(); n++ {
				var p connectionsPageJSON
				if err := dec.Decode(&p); err != nil {
					t.Fatalf("README.md:%d: %s\nprinted %s: %v", c.line, text, out, err)
				}
				got = append(got, pageRemotes(p)...)
			}
			if n != 2 || !slices.Equal(got, remotes) {
				t.Errorf("README.md:%d: the loop printed %d pages of %v, want 2 pages of %v", c.line, n, got, remotes)
			}
		case strings.Contains(text, "pageSize=2"):
			checked["page"] = true
			if p := page(); !slices.Equal(pageRemotes(p), remotes[:2]) || p.NextPageToken == "" {
				t.Errorf("README.md:%d: %s\nprinted %s, want the first two of %v and a nextPageToken", c.line, text, out, remotes)
			}
		case strings.Contains(text, "remoteAddressPrefix="):
			checked["filters"] = true
			if p := page(); !slices.Equal(pageRemotes(p), remotes) {
				t.Errorf("README.md:%d: %s\nprinted %s, want %v", c.line, text, out, remotes)
			}
		case strings.Contains(text, service+"/ListConnections"):
			checked["grpcurl page"] = true
			if p := page(); !slices.Equal(pageRemotes(p), remotes[:2]) || p.NextPageToken == "" {
				t.Errorf("README.md:%d: %s\nprinted %s, want the first two of %v and a nextPageToken", c.line, text, out, remotes)
			}
		case strings.Contains(text, "/v1/connections/$C") || strings.Contains(text, service+"/GetConnection"):
			checked[map[bool]string{true: "grpcurl get", false: "curl get"}[strings.Contains(text, "grpcurl")]] = true
			var resp struct {
				Connection struct {
					ConnectionID string `json:"connectionId"`
					State        string `json:"state"`
				} `json:"connection"`
			}
			decodeJSON(t, out, &resp)
			if resp.Connection.ConnectionID != ids[0] || resp.Connection.State != "CONNECTION_STATE_OPEN" {
				t.Errorf("README.md:%d: %s\nprinted %s, want %s, open", c.line, text, out, ids[0])
			}
		case strings.HasPrefix(text, "$T conns "):
			rows := strings.Count(out, "\n") - 1
			want := 3
			checked[text] = true
			if rows != want || !strings.Contains(out, ids[0]) || !strings.Contains(out, " open ") {
				t.Errorf("README.md:%d: %s\nprinted\n%s\nwant %d open connections", c.line, text, out, want)
			}
		case strings.HasPrefix(text, "$T conn "):
			checked["conn"] = true
			if !strings.Contains(out, ids[0]) || !strings.Contains(out, remotes[0]) {
				t.Errorf("README.md:%d: %s\nprinted\n%s\nwant %s from %s", c.line, text, out, ids[0], remotes[0])
			}
		}
	}
	for _, what := range []string{"start", "page", "loop", "filters", "grpcurl page", "curl get", "grpcurl get", "conn"} {
		if !checked[what] {
			t.Errorf("README section \"Lists a page at a time\" has no %s command the test recognizes", what)
		}
	}
	var conns int
	for what := range checked {
		if strings.HasPrefix(what, "$T conns ") {
			conns++
		}
	}
	if conns < 2 {
		t.Errorf("README section \"Lists a page at a time\" has %d tcpgate conns commands, want the filters and the paging", conns)
	}
	g.d.stop(t)
}

// readmeWaitListed waits until the gateway lists the connections from
// remotes and returns their ids, in the same order.
func readmeWaitListed(t *testing.T, api tcpgatev1.GatewayServiceClient, remotes []string) []string {
	t.Helper()
	var got, ids []string
	servertest.EventuallyWithin(t, fmt.Sprintf("the gateway listing %v", remotes), eventTimeout, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		resp, err := api.ListConnections(ctx, &tcpgatev1.ListConnectionsRequest{})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		got, ids = nil, nil
		for _, c := range resp.GetConnections() {
			got = append(got, c.GetRemoteAddress())
			ids = append(ids, c.GetConnectionId())
		}
		return slices.Equal(got, remotes)
	})
	return ids
}

// TestReadmeSendDialsAnew: the README says where it shows a Send to an
// address that every such Send dials a connection of its own.
func TestReadmeSendDialsAnew(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, walk, _ := strings.Cut(string(readme), "\n## Walkthrough with grpcurl\n")
	walk, _, _ = strings.Cut(walk, "\n## ")
	if !strings.Contains(strings.Join(strings.Fields(walk), " "), "Every Send to an `address` dials a new connection of its own") {
		t.Error("README.md's walkthrough, where it sends to an address, does not say that every Send to an address dials a new connection of its own")
	}
}
