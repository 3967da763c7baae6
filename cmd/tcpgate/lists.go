package main

import (
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server/rpc"
)

// maxPages bounds the pages a list command follows: at the gateway's
// largest page (1000) it is ten million items, far more than a gateway
// holds, so reaching it means the pages never end.
const maxPages = 10_000

// pageError is the error of page number page (0 the first): a token
// refused after the first page means the gateway restarted while the pages
// were read, which a person answers by running the command again.
func pageError(err error, page int) error {
	if reason, _ := rpc.ReasonOf(err); page > 0 && reason == tcpgatev1.ErrorReason_ERROR_REASON_INVALID_PAGE_TOKEN {
		return hinted{err, "the gateway restarted while the list was read page by page: run the command again"}
	}
	return err
}

// checkPageFlags checks --page-size and --limit.
func checkPageFlags(pageSize int32, limit int) error {
	switch {
	case pageSize < 0:
		return fmt.Errorf("--page-size: must not be negative, got %d (0: the gateway's default, 100; at most 1000)", pageSize)
	case limit < 0:
		return fmt.Errorf("--limit: must not be negative, got %d (0: every item)", limit)
	}
	return nil
}

// nextSize is the page_size of the next page: pageSize, but no more than
// the limit leaves to list.
func nextSize(pageSize int32, limit, listed int) int32 {
	if limit == 0 {
		return pageSize
	}
	left := int32(min(limit-listed, 1<<30))
	if pageSize == 0 || pageSize > left {
		return left
	}
	return pageSize
}

func newLsCmd(c *client) *cobra.Command {
	var (
		pageSize int32
		limit    int
	)
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List listeners with their counters",
		Long: "List listeners with their counters, oldest first. The gateway returns them a page at a time;\n" +
			"ls follows every page unless --limit stops it earlier.",
		Example: "  tcpgate ls\n  TCPGATE_SERVER=10.0.0.5:50051 tcpgate ls",
		Args:    cobra.NoArgs,
		RunE: c.run(func(cmd *cobra.Command, _ []string) error {
			if err := checkPageFlags(pageSize, limit); err != nil {
				return err
			}
			var all []*tcpgatev1.Listener
			req := &tcpgatev1.ListListenersRequest{}
			for page := 0; ; page++ {
				if page == maxPages {
					return fmt.Errorf("listing listeners: more than %d pages", maxPages)
				}
				req.PageSize = nextSize(pageSize, limit, len(all))
				ctx, cancel := c.ctx(cmd)
				resp, err := c.api.ListListeners(ctx, req)
				cancel()
				if err != nil {
					return pageError(err, page)
				}
				all = append(all, resp.GetListeners()...)
				if resp.GetNextPageToken() == "" || limit > 0 && len(all) >= limit {
					break
				}
				req.PageToken = resp.GetNextPageToken()
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			// NODE last: the columns before it stay where scripts that
			// split by position expect them.
			fmt.Fprintln(w, "ID\tADDRESS\tSTATE\tFRAMING\tOPEN\tTOTAL\tBYTES IN\tBYTES OUT\tFRAMES IN\tNODE")
			for _, l := range all {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%s\n", l.GetListenerId(), l.GetAddress(),
					strings.ToLower(strings.TrimPrefix(l.GetState().String(), "LISTENER_STATE_")), framingString(l.GetFraming()),
					l.GetConnectionsActive(), l.GetConnectionsTotal(), l.GetBytesIn(), l.GetBytesOut(), l.GetFramesIn(), orDash(l.GetNodeId()))
			}
			return w.Flush()
		}),
	}
	f := cmd.Flags()
	f.Int32Var(&pageSize, "page-size", 0, "listeners asked for per call (0: the gateway's default, 100; at most 1000)")
	f.IntVar(&limit, "limit", 0, "list at most this many listeners (0: every one)")
	return cmd
}

// connStates are the --state values, as the CLI shows them.
var connStates = map[string]tcpgatev1.ConnectionState{
	"open":        tcpgatev1.ConnectionState_CONNECTION_STATE_OPEN,
	"half-closed": tcpgatev1.ConnectionState_CONNECTION_STATE_HALF_CLOSED,
	"draining":    tcpgatev1.ConnectionState_CONNECTION_STATE_DRAINING,
	"connecting":  tcpgatev1.ConnectionState_CONNECTION_STATE_CONNECTING,
	"waiting":     tcpgatev1.ConnectionState_CONNECTION_STATE_WAITING,
}

// parseConnState reads --state: open, half-closed, draining, connecting
// or waiting (the API's names work too); empty means every state.
func parseConnState(s string) (tcpgatev1.ConnectionState, error) {
	if s == "" {
		return tcpgatev1.ConnectionState_CONNECTION_STATE_UNSPECIFIED, nil
	}
	key := strings.ReplaceAll(strings.TrimPrefix(strings.ToLower(s), "connection_state_"), "_", "-")
	if st, ok := connStates[key]; ok {
		return st, nil
	}
	return 0, fmt.Errorf("--state %q: want open, half-closed, draining, connecting or waiting", s)
}

// connStateString is a connection's state as --state spells it; closed,
// which no list shows, as CloseConnection and Connect may answer it.
func connStateString(st tcpgatev1.ConnectionState) string {
	if st == tcpgatev1.ConnectionState_CONNECTION_STATE_CLOSED {
		return "closed"
	}
	for name, v := range connStates {
		if v == st {
			return name
		}
	}
	return "-"
}

// originNames are the --origin values: the enum's names without
// ORIGIN_, in lower case.
var originNames = map[string]tcpgatev1.Origin{
	"accepted": tcpgatev1.Origin_ORIGIN_ACCEPTED,
	"outbound": tcpgatev1.Origin_ORIGIN_OUTBOUND,
}

// parseOrigins reads --origin values: accepted or outbound (the API's
// names, ORIGIN_ACCEPTED, work too), each value possibly a comma-separated
// list; none means every origin.
func parseOrigins(values []string) ([]tcpgatev1.Origin, error) {
	var out []tcpgatev1.Origin
	for _, v := range values {
		o, ok := originNames[strings.TrimPrefix(strings.ToLower(strings.TrimSpace(v)), "origin_")]
		if !ok {
			return nil, fmt.Errorf("--origin %q: want accepted or outbound", v)
		}
		out = append(out, o)
	}
	return out, nil
}

// originString is a connection's origin as --origin spells it.
func originString(o tcpgatev1.Origin) string {
	for name, v := range originNames {
		if v == o {
			return name
		}
	}
	return "-"
}

func newConnsCmd(c *client) *cobra.Command {
	var (
		listenerID, state, prefix string
		origins                   []string
		pageSize                  int32
		limit                     int
	)
	cmd := &cobra.Command{
		Use:   "conns [LISTENER]",
		Short: "List live connections, accepted and outbound, of one listener or all",
		Long: "List live connections in the order they were made: those listeners accepted and the\n" +
			"outbound ones `tcpgate connect` keeps. STATE is open, half-closed (the peer shut down\n" +
			"its sending side) or draining (their listener is stopping); an outbound connection is\n" +
			"also connecting (dialing, or awaiting its --expect) or waiting (down, to dial again).\n" +
			"REMOTE is the peer's address, or for an outbound connection the address it dials; GEN\n" +
			"numbers an outbound connection's sockets (one more on every reconnect), and LAST ERROR\n" +
			"says why its last attempt failed or its last socket ended. The filters combine. The\n" +
			"gateway returns connections a page at a time; conns follows every page unless --limit\n" +
			"stops it earlier.",
		Example: "  tcpgate conns\n  tcpgate conns demo\n  tcpgate conns --state half-closed --remote-prefix 10.1.\n" +
			"  tcpgate conns --listener demo --limit 20\n  tcpgate conns --origin outbound",
		Args: cobra.MaximumNArgs(1),
		RunE: c.run(func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 {
				if listenerID != "" && listenerID != args[0] {
					return fmt.Errorf("two listeners: LISTENER %q and --listener %q; give one", args[0], listenerID)
				}
				listenerID = args[0]
			}
			st, err := parseConnState(state)
			if err != nil {
				return err
			}
			if err := checkPageFlags(pageSize, limit); err != nil {
				return err
			}
			os, err := parseOrigins(origins)
			if err != nil {
				return err
			}
			req := &tcpgatev1.ListConnectionsRequest{ListenerId: listenerID, State: st, RemoteAddressPrefix: prefix, Origins: os}
			var all []*tcpgatev1.Connection
			for page := 0; ; page++ {
				if page == maxPages {
					return fmt.Errorf("listing connections: more than %d pages", maxPages)
				}
				req.PageSize = nextSize(pageSize, limit, len(all))
				ctx, cancel := c.ctx(cmd)
				resp, err := c.api.ListConnections(ctx, req)
				cancel()
				if err != nil {
					return pageError(err, page)
				}
				all = append(all, resp.GetConnections()...)
				if resp.GetNextPageToken() == "" || limit > 0 && len(all) >= limit {
					break
				}
				req.PageToken = resp.GetNextPageToken()
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			// The columns before ORIGIN are where they were before
			// outbound connections came, for scripts that split by
			// position; LAST ERROR, which has spaces, stays last.
			fmt.Fprintln(w, "ID\tLISTENER\tSTATE\tREMOTE\tOPENED\tBYTES IN\tBYTES OUT\tORIGIN\tGEN\tNODE\tLAST ERROR")
			for _, cn := range all {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\t%s\n", cn.GetConnectionId(), orDash(cn.GetListenerId()),
					connStateString(cn.GetState()), connRemote(cn), openedAt(cn), cn.GetBytesIn(), cn.GetBytesOut(),
					originString(cn.GetOrigin()), connGeneration(cn), orDash(cn.GetNodeId()), connLastError(cn))
			}
			return w.Flush()
		}),
	}
	f := cmd.Flags()
	f.StringVar(&listenerID, "listener", "", "only the connections of this listener (as the LISTENER argument)")
	f.StringVar(&state, "state", "", "only connections in this state: open, half-closed, draining, connecting or waiting")
	f.StringSliceVar(&origins, "origin", nil, "only connections of these origins, comma-separated or repeated: accepted or outbound")
	f.StringVar(&prefix, "remote-prefix", "", `only connections whose remote address starts with this ("10.1.", "[::1]:")`)
	f.Int32Var(&pageSize, "page-size", 0, "connections asked for per call (0: the gateway's default, 100; at most 1000)")
	f.IntVar(&limit, "limit", 0, "list at most this many connections (0: every one)")
	return cmd
}

func newConnCmd(c *client) *cobra.Command {
	return &cobra.Command{
		Use:     "conn CONNECTION",
		Aliases: []string{"connection"},
		Short:   "Show one live connection with its state and counters",
		Example: "  tcpgate conn c-k3v7q2m5xa",
		Args:    needArgs("CONNECTION"),
		RunE: c.run(func(cmd *cobra.Command, args []string) error {
			ctx, cancel := c.ctx(cmd)
			defer cancel()
			resp, err := c.api.GetConnection(ctx, &tcpgatev1.GetConnectionRequest{ConnectionId: args[0]})
			if err != nil {
				return err
			}
			cn := resp.GetConnection()
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			var gen, attempts, next string
			if cn.GetOrigin() == tcpgatev1.Origin_ORIGIN_OUTBOUND {
				gen = fmt.Sprint(cn.GetGeneration())
				attempts = fmt.Sprint(cn.GetAttempts())
				if t := cn.GetNextAttemptAt(); t != nil {
					next = t.AsTime().Local().Format("2006-01-02 15:04:05.000")
				}
			}
			for _, row := range [][2]string{
				{"id", cn.GetConnectionId()},
				{"listener", cn.GetListenerId()},
				{"origin", originString(cn.GetOrigin())},
				{"node", cn.GetNodeId()},
				{"state", connStateString(cn.GetState())},
				{"address", cn.GetAddress()},
				{"remote", cn.GetRemoteAddress()},
				{"local", cn.GetLocalAddress()},
				{"peer subject", cn.GetPeerSubject()},
				{"generation", gen},
				{"opened", openedAtOrEmpty(cn)},
				{"failed attempts", attempts},
				{"next attempt", next},
				{"last error", cn.GetLastError()},
				{"bytes in", fmt.Sprint(cn.GetBytesIn())},
				{"bytes out", fmt.Sprint(cn.GetBytesOut())},
				{"frames in", fmt.Sprint(cn.GetFramesIn())},
				{"frames out", fmt.Sprint(cn.GetFramesOut())},
			} {
				if row[1] != "" {
					fmt.Fprintf(w, "%s:\t%s\n", row[0], row[1])
				}
			}
			return w.Flush()
		}),
	}
}

// orDash is s, or a dash where a table cell would be empty.
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// connRemote is the REMOTE of conns: the peer's address, or the address an
// outbound connection dials (it has no peer while down).
func connRemote(cn *tcpgatev1.Connection) string {
	if cn.GetOrigin() == tcpgatev1.Origin_ORIGIN_OUTBOUND && cn.GetAddress() != "" {
		return cn.GetAddress()
	}
	return orDash(cn.GetRemoteAddress())
}

// connGeneration is the GEN of conns: an outbound connection's socket
// number, a dash for an accepted one, which has one socket only.
func connGeneration(cn *tcpgatev1.Connection) string {
	if cn.GetOrigin() != tcpgatev1.Origin_ORIGIN_OUTBOUND {
		return "-"
	}
	return fmt.Sprint(cn.GetGeneration())
}

// connLastError is the LAST ERROR of conns, the last column, so that an
// error's spaces do not shift the others.
func connLastError(cn *tcpgatev1.Connection) string {
	return orDash(cn.GetLastError())
}

// openedAtOrEmpty is when the connection opened, or nothing when it has
// no time of its own (an outbound connection not yet connected).
func openedAtOrEmpty(cn *tcpgatev1.Connection) string {
	if cn.GetOpenedAt() == nil {
		return ""
	}
	return cn.GetOpenedAt().AsTime().Local().Format(time.DateTime)
}

// openedAt is the OPENED of conns: a date and a time, or a dash.
func openedAt(cn *tcpgatev1.Connection) string {
	return orDash(openedAtOrEmpty(cn))
}

func newListenerCmd(c *client) *cobra.Command {
	return &cobra.Command{
		Use:     "listener LISTENER",
		Short:   "Show one listener with its replies, banner and counters",
		Example: "  tcpgate listener demo",
		Args:    needArgs("LISTENER"),
		RunE: c.run(func(cmd *cobra.Command, args []string) error {
			ctx, cancel := c.ctx(cmd)
			defer cancel()
			resp, err := c.api.GetListener(ctx, &tcpgatev1.GetListenerRequest{ListenerId: args[0]})
			if err != nil {
				return err
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			for _, row := range listenerRows(resp.GetListener()) {
				fmt.Fprintf(w, "%s:\t%s\n", row[0], row[1])
			}
			return w.Flush()
		}),
	}
}

// listenerRows are the rows `tcpgate listener` prints: those with a value,
// and a rule row per reply rule, as --rule takes it.
func listenerRows(l *tcpgatev1.Listener) [][2]string {
	var fwd string
	if f := l.GetForward(); f != nil {
		fwd = f.GetAddress()
	}
	rows := [][2]string{
		{"id", l.GetListenerId()},
		{"address", l.GetAddress()},
		{"state", strings.ToLower(strings.TrimPrefix(l.GetState().String(), "LISTENER_STATE_"))},
		{"node", l.GetNodeId()},
		{"every node", everyNodeString(l.GetEveryNode())},
		{"framing", framingString(l.GetFraming())},
		{"forward", fwd},
		{"auto reply", autoReplyString(l.GetAutoReply())},
		{"banner", bannerString(l.GetOnConnect())},
	}
	for i, r := range l.GetAutoReply().GetRules() {
		rows = append(rows, [2]string{fmt.Sprintf("rule %d", i), formatRule(r)})
	}
	rows = append(rows,
		[2]string{"open", fmt.Sprint(l.GetConnectionsActive())},
		[2]string{"total", fmt.Sprint(l.GetConnectionsTotal())},
		[2]string{"bytes in", fmt.Sprint(l.GetBytesIn())},
		[2]string{"bytes out", fmt.Sprint(l.GetBytesOut())},
		[2]string{"frames in", fmt.Sprint(l.GetFramesIn())},
		[2]string{"frames out", fmt.Sprint(l.GetFramesOut())},
	)
	kept := rows[:0]
	for _, row := range rows {
		if row[1] != "" {
			kept = append(kept, row)
		}
	}
	return kept
}

// everyNodeString is the "every node" row: yes, or empty (no row) for a
// listener of one node.
func everyNodeString(every bool) string {
	if every {
		return "yes"
	}
	return ""
}

// autoReplyString is the reply of frames no rule answers: echo, the fixed
// reply quoted, or empty for none.
func autoReplyString(ar *tcpgatev1.AutoReply) string {
	switch ar.GetMode() {
	case tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_ECHO:
		return "echo"
	case tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_FIXED:
		if d, ok := ar.GetPayload().(*tcpgatev1.AutoReply_Data); ok {
			return "hex:" + hex.EncodeToString(d.Data)
		}
		return strconv.Quote(ar.GetText())
	}
	return ""
}

// bannerString is a listener's banner: its template quoted, or its bytes
// in hex.
func bannerString(oc *tcpgatev1.OnConnect) string {
	switch p := oc.GetPayload().(type) {
	case *tcpgatev1.OnConnect_Text:
		return strconv.Quote(p.Text)
	case *tcpgatev1.OnConnect_Data:
		return "hex:" + hex.EncodeToString(p.Data)
	}
	return ""
}
