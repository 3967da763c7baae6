package main

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os/signal"
	"strings"
	"syscall"
	"unicode/utf8"

	"github.com/spf13/cobra"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
)

// errStreamEnded is a Handle stream the gateway ended without an error:
// the handler has nothing left to do, but did not ask to stop.
var errStreamEnded = errors.New("the gateway ended the Handle stream")

func newHandleCmd(c *client) *cobra.Command {
	var (
		listeners, conns []string
		group, reply     string
		maxInFlight      uint32
	)
	cmd := &cobra.Command{
		Use:   "handle",
		Short: "Be the reply logic of connections: print every frame, answer each with --reply",
		Long: "Be the reply logic of connections, as kn-sock's example server is: a Handle\n" +
			"stream registered for --listener and --connection prints every connection that\n" +
			"opens, every frame that arrives (the connection, the peer, the data) and every\n" +
			"close, and answers each frame with --reply, written with the connection's\n" +
			"framing (a line gets its \"\\n\"). Without --reply, each frame is answered with\n" +
			"nothing, so that it does not wait for the listener's handler_timeout.\n\n" +
			"Handlers of one --group share the connections, each connection handled by one\n" +
			"of them; when one ends, its connections move to another. It runs until\n" +
			"interrupted (Ctrl-C), or fails when the gateway ends the stream.",
		Example: "  tcpgate handle --listener l1 --reply 'Message received'\n" +
			"  tcpgate handle --listener l1 --group workers --max-in-flight 256 --reply ok\n" +
			"  tcpgate handle --connection feed   # print a managed outbound connection's frames, answer nothing",
		Args: cobra.NoArgs,
		RunE: c.run(func(cmd *cobra.Command, _ []string) error {
			if len(listeners) == 0 && len(conns) == 0 {
				return fmt.Errorf("nothing to handle: give --listener or --connection")
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			h := &handler{out: cmd.OutOrStdout(), errOut: cmd.ErrOrStderr(), reply: reply, withReply: cmd.Flags().Changed("reply"), remotes: map[string]string{}}
			err := h.run(ctx, c.api, &tcpgatev1.HandleRegistration{ListenerIds: listeners, ConnectionIds: conns, Group: group, MaxInFlight: maxInFlight})
			if ctx.Err() != nil {
				return nil // interrupted
			}
			return err
		}),
	}
	f := cmd.Flags()
	f.StringArrayVar(&listeners, "listener", nil, "handle the connections of this listener (repeatable)")
	f.StringArrayVar(&conns, "connection", nil, "handle this managed outbound connection (repeatable)")
	f.StringVar(&group, "group", "", "the handler group to join: its handlers share the connections (default: a group of this handler alone)")
	f.Uint32Var(&maxInFlight, "max-in-flight", 0, "the most frames unanswered at once, beyond which the connections' reads wait (0: the gateway's default, 64)")
	f.StringVar(&reply, "reply", "", "the text to answer every frame with, framed as the connection's framing (default: answer with nothing)")
	return cmd
}

// handler is one Handle stream of the handle command.
type handler struct {
	out, errOut io.Writer
	reply       string
	withReply   bool
	remotes     map[string]string // connection id -> the peer's address, from OPENED
}

// run registers, then prints what arrives and answers every frame of a
// response in one request, until the stream ends.
func (h *handler) run(ctx context.Context, api tcpgatev1.GatewayServiceClient, reg *tcpgatev1.HandleRegistration) error {
	stream, err := api.Handle(ctx)
	if err != nil {
		return err
	}
	if err := stream.Send(&tcpgatev1.HandleRequest{Registration: reg}); err != nil {
		return recvError(stream.Recv())
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return recvError(resp, err)
		}
		if r := resp.GetRegistered(); r != nil {
			fmt.Fprintf(h.out, "registered stream=%s group=%s max_in_flight=%d\n", r.GetStreamId(), r.GetGroup(), r.GetMaxInFlight())
		}
		for _, rj := range resp.GetRejections() {
			fmt.Fprintf(h.errOut, "rejected frame=%d conn=%s %s: %s\n", rj.GetFrameId(), rj.GetConnectionId(), strings.TrimPrefix(rj.GetReason().String(), "ERROR_REASON_"), rj.GetMessage())
		}
		var replies []*tcpgatev1.HandleReply
		for _, e := range resp.GetEvents() {
			if r := h.event(e); r != nil {
				replies = append(replies, r)
			}
		}
		if len(replies) == 0 {
			continue
		}
		if err := stream.Send(&tcpgatev1.HandleRequest{Replies: replies}); err != nil {
			// The stream broke; Recv says why.
			return recvError(stream.Recv())
		}
	}
}

// event prints e and returns the reply to a frame.
func (h *handler) event(e *tcpgatev1.HandleEvent) *tcpgatev1.HandleReply {
	id := e.GetConnectionId()
	switch e.GetKind() {
	case tcpgatev1.HandleEventKind_HANDLE_EVENT_KIND_OPENED:
		h.remotes[id] = e.GetRemoteAddress()
		where := "listener=" + e.GetListenerId()
		if e.GetOrigin() == tcpgatev1.Origin_ORIGIN_OUTBOUND {
			where = "outbound"
		}
		fmt.Fprintf(h.out, "opened conn=%s %s remote=%s\n", id, where, e.GetRemoteAddress())
	case tcpgatev1.HandleEventKind_HANDLE_EVENT_KIND_CLOSED:
		delete(h.remotes, id)
		fmt.Fprintf(h.out, "closed conn=%s reason=%s\n", id, closeReasonString(e.GetCloseReason()))
	case tcpgatev1.HandleEventKind_HANDLE_EVENT_KIND_FRAME:
		d := payload(e.GetData(), e.GetText())
		mark := ""
		if e.GetRedelivered() {
			mark = " redelivered"
		}
		fmt.Fprintf(h.out, "received from %s conn=%s frame=%d%s: %s\n", orDash(h.remotes[id]), id, e.GetFrameId(), mark, printable(d))
		r := &tcpgatev1.HandleReply{FrameId: e.GetFrameId()}
		if h.withReply {
			r.Payload = &tcpgatev1.HandleReply_Text{Text: h.reply}
		}
		return r
	}
	return nil
}

// printable is a frame as the handle command prints it, as subscribe
// prints data: its size and quoted text, or hex when it is not UTF-8.
func printable(d []byte) string {
	if utf8.Valid(d) {
		return fmt.Sprintf("%d bytes %q", len(d), d)
	}
	return fmt.Sprintf("%d bytes hex=%s", len(d), hex.EncodeToString(d))
}

// recvError is why a Handle stream ended: the gateway's status, or, when
// it ended the stream cleanly, errStreamEnded.
func recvError(_ *tcpgatev1.HandleResponse, err error) error {
	if err == nil || errors.Is(err, io.EOF) {
		return errStreamEnded
	}
	return err
}
