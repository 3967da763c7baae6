// Command tcpgate-bench measures a real `tcpgate serve` process over
// loopback: ingest throughput, fan-out, latency, Send, and idle connections,
// with a socat relay as the baseline of the same run.
//
// `tcpgate-bench run` is the orchestrator that `make bench` calls. It starts
// a fresh daemon for every scenario and run, drives the load, and spawns
// copies of itself for the parts that must live in another process:
//
//	subscribe  a gRPC subscriber that counts DATA events (and measures latency)
//	subscribe-rest  a REST subscriber (NDJSON or SSE) that parses every line
//	subscribe-ws  a WebSocket client that counts the lines Node-RED sends (a baseline)
//	count      counts the bytes on its stdin (behind socat, the baseline)
//	respond    a TCP responder for one-shot Send calls (--lines: a line echo on kept connections)
//	grpc-echo  a gRPC server whose Send answers at once (a baseline)
//	hold       opens idle connections and holds them
//
// Every child prints "ready ..." once it is set up and one JSON line with its
// figures when it is done, and exits when its stdin closes, so a dying
// orchestrator leaves nothing behind.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
)

const usage = `usage: tcpgate-bench COMMAND [flags]

commands:
  run        run every scenario against bin/tcpgate and print the table (see run -h)
  subscribe  (child) subscribe to a gateway and count DATA events
  subscribe-rest  (child) the same over REST (NDJSON or SSE)
  subscribe-ws  (child) count the lines of a WebSocket (Node-RED, the baseline)
  count      (child) count the bytes on stdin
  respond    (child) answer every TCP connection's first read (--lines: echo every line)
  grpc-echo  (child) a gRPC server whose Send echoes its payload at once
  hold       (child) open idle connections and hold them until stdin closes
  handle     (child) Handle streams of one group answering every frame with "ok"
`

// commands are the subcommands, by name.
func commands() map[string]func([]string) error {
	return map[string]func([]string) error{
		"run":            runMain,
		"subscribe":      subscribeMain,
		"subscribe-rest": subscribeRESTMain,
		"subscribe-ws":   subscribeWSMain,
		"count":          countMain,
		"respond":        respondMain,
		"grpc-echo":      grpcEchoMain,
		"hold":           holdMain,
		"handle":         handleMain,
	}
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	cmd, ok := commands()[os.Args[1]]
	if !ok {
		fmt.Fprintf(os.Stderr, "tcpgate-bench: unknown command %q\n%s", os.Args[1], usage)
		os.Exit(2)
	}
	if err := cmd(os.Args[2:]); errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	} else if err != nil {
		fmt.Fprintf(os.Stderr, "tcpgate-bench %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}
