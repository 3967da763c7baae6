package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
)

// updateRequest is the UpdateListenerRequest of update's flags: the
// fields of the flags given, and only those, in its update mask.
func updateRequest(id string, o *listenOptions, changed func(flag string) bool) (*tcpgatev1.UpdateListenerRequest, error) {
	l := &tcpgatev1.StartListenerRequest{}
	var paths []string
	switch {
	case o.echo && changed("reply"):
		return nil, errors.New("--echo and --reply exclude each other")
	case changed("no-reply") && (o.echo || changed("reply") || changed("rule")):
		return nil, errors.New("--no-reply clears the auto reply and its rules: not with --echo, --reply or --rule")
	case changed("no-reply"):
		l.AutoReply = &tcpgatev1.AutoReply{Mode: tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_NONE}
	case o.echo:
		l.AutoReply = &tcpgatev1.AutoReply{Mode: tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_ECHO}
	case changed("reply"):
		l.AutoReply = &tcpgatev1.AutoReply{Mode: tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_FIXED,
			Payload: &tcpgatev1.AutoReply_Text{Text: o.reply}}
	}
	rules, err := parseRules(o.rules)
	if err != nil {
		return nil, err
	}
	l.AutoReply = autoReplyWithRules(l.AutoReply, rules)
	if l.AutoReply != nil {
		paths = append(paths, "auto_reply")
	}
	if changed("banner") {
		paths = append(paths, "on_connect")
		if o.banner != "" {
			l.OnConnect = &tcpgatev1.OnConnect{Payload: &tcpgatev1.OnConnect_Text{Text: o.banner}}
		}
	}
	if changed("max-conns") {
		paths = append(paths, "max_connections")
		l.MaxConnections = o.maxConns
	}
	if changed("idle") {
		paths = append(paths, "idle_timeout")
		l.IdleTimeout = durationpb.New(o.idle)
	}
	if changed("half-close") {
		paths = append(paths, "half_close_timeout")
		l.HalfCloseTimeout = durationpb.New(o.halfClose)
	}
	if len(paths) == 0 {
		return nil, errors.New("nothing to change: give --echo, --reply, --no-reply, --rule, --banner, --max-conns, --idle or --half-close")
	}
	return &tcpgatev1.UpdateListenerRequest{ListenerId: id, Listener: l, UpdateMask: &fieldmaskpb.FieldMask{Paths: paths}}, nil
}

func newUpdateCmd(c *client) *cobra.Command {
	var (
		o       listenOptions
		noReply bool
	)
	cmd := &cobra.Command{
		Use:     "update LISTENER",
		Aliases: []string{"update-listener"},
		Short:   "Change a running listener's replies, rules, banner, limit or timeouts in place",
		Long: "Change a running listener in place (UpdateListener): its port stays bound and its open\n" +
			"connections stay open, answering by the new settings from their next frame. Only what\n" +
			"the flags give changes. The auto reply and its rules change together: --rule without\n" +
			"--echo or --reply leaves frames no rule matches unanswered, and --no-reply clears both.\n" +
			"--banner '' removes the banner. Host, port, framing, TLS and forward need a new listener.",
		Example: "  tcpgate update rules --echo --rule 'PING=PONG' --rule 'QUIT=bye;close'\n" +
			"  tcpgate update demo --max-conns 10 --idle 30s\n" +
			"  tcpgate update demo --no-reply",
		Args: needArgs("LISTENER"),
		RunE: c.run(func(cmd *cobra.Command, args []string) error {
			req, err := updateRequest(args[0], &o, cmd.Flags().Changed)
			if err != nil {
				return err
			}
			ctx, cancel := c.ctx(cmd)
			defer cancel()
			resp, err := c.api.UpdateListener(ctx, req)
			if err != nil {
				return err
			}
			l := resp.GetListener()
			fmt.Fprintf(cmd.OutOrStdout(), "listener %s updated on %s: %s\n", l.GetListenerId(), l.GetAddress(), strings.Join(req.GetUpdateMask().GetPaths(), ", "))
			return nil
		}),
	}
	f := cmd.Flags()
	f.BoolVar(&o.echo, "echo", false, "write every frame back")
	f.StringVar(&o.reply, "reply", "", "write this text back for every frame")
	f.BoolVar(&noReply, "no-reply", false, "answer nothing: no auto reply, no rules")
	f.StringArrayVar(&o.rules, "rule", nil, ruleHelp)
	f.StringVar(&o.banner, "banner", "", "write this template first on every connection accepted from now on ('' for none)")
	f.Uint32Var(&o.maxConns, "max-conns", 0, "most connections open at once, for those accepted from now on (0: the gateway's --listener-max-connections)")
	f.DurationVar(&o.idle, "idle", 0, "close connections silent this long (0: the gateway's --idle-timeout)")
	f.DurationVar(&o.halfClose, "half-close", 0, "keep a connection writable this long after its client shuts down writing (0: close at once)")
	return cmd
}
