// Command tcpgate is the gRPC-managed TCP gateway: `tcpgate serve` runs the
// daemon.
package main

import (
	"fmt"
	"os"
	"runtime/debug"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

func main() {
	if err := newRootCmd().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "tcpgate:", err)
		os.Exit(1)
	}
}

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "tcpgate",
		Short: "A gRPC-managed TCP gateway",
		Long: "tcpgate starts and stops raw TCP listeners, keeps connections to servers, sends\n" +
			"TCP messages and bytes, and streams what its connections receive, all driven over\n" +
			"gRPC or REST.\n\n" +
			"`tcpgate serve` runs the gateway; the other commands drive a running one\n" +
			"at --server (env TCPGATE_SERVER, default 127.0.0.1:50051).",
		Example: "  tcpgate serve &\n" +
			"  tcpgate listen 9000 --host 127.0.0.1 --reply 'Message received'\n" +
			"  tcpgate send 127.0.0.1:9000 'Hello, World!' --await first\n" +
			"  tcpgate connect 127.0.0.1:7000 --id feed --framing line   # keep a connection to a server\n" +
			"  tcpgate subscribe --listener l1",
		Version:       version(),
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newServeCmd())
	addClientCommands(root)
	return root
}

// version says which build this is, from what `go build` stamped into the
// binary: the module's version, and the commit it was built from.
func version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := bi.Main.Version
	if v == "" {
		v = "(devel)"
	}
	var rev, when, dirty string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.time":
			when = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = ", modified"
			}
		}
	}
	if rev != "" {
		v += fmt.Sprintf(" (commit %s, %s%s)", rev, when, dirty)
	}
	return v + " " + bi.GoVersion
}

// envPrefix prefixes the environment variable of every flag:
// --grpc-addr is also TCPGATE_GRPC_ADDR.
const envPrefix = "TCPGATE_"

// envAnnotation names a flag's environment variable where the usual name
// would be ambiguous (see setEnvName).
const envAnnotation = "tcpgate-env"

// envName returns the environment variable that sets a flag.
func envName(f *pflag.Flag) string {
	if v := f.Annotations[envAnnotation]; len(v) == 1 {
		return v[0]
	}
	return envPrefix + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
}

// setEnvName gives flag the environment variable env instead of the usual
// one.
func setEnvName(flags *pflag.FlagSet, flag, env string) {
	if err := flags.SetAnnotation(flag, envAnnotation, []string{env}); err != nil {
		panic(err) // a flag name misspelled in this file
	}
}

// applyEnv sets every flag not given on the command line from its
// environment variable, so flags win over the environment.
func applyEnv(flags *pflag.FlagSet) error {
	var err error
	flags.VisitAll(func(f *pflag.Flag) {
		if err != nil || f.Changed {
			return
		}
		if v, ok := os.LookupEnv(envName(f)); ok {
			if serr := flags.Set(f.Name, v); serr != nil {
				err = fmt.Errorf("%s=%q: %w", envName(f), v, serr)
			}
		}
	})
	return err
}
