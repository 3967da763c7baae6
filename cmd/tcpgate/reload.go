package main

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/spf13/pflag"

	"github.com/tcpgate/tcpgate/server"
)

// reloadable are the serve flags a running gateway takes again without a
// restart (server.Reloadable), each with why it can. The other flags are
// fixed at start: addresses and TLS on or off are bound sockets and
// installed interceptors; the control plane's connection and stream caps
// and --max-send-bytes are set in the gRPC and HTTP servers, and checked
// with --max-connections against the open-file reserve; queue, ring,
// frame and timeout sizes are handed to connections and listeners as they
// are made, so a new value would hold for some and not others.
var reloadable = map[string]string{
	"allow-listen":    "checked at every StartListener",
	"allow-dial":      "checked at every dial",
	"deny-dial":       "checked at every dial",
	"cors-origins":    "checked at every REST request",
	"max-listeners":   "checked at every StartListener",
	"max-subscribers": "checked at every Subscribe",
	"auth-token-file": "read again; checked at every call",
	"tls-cert":        "read again; served at every handshake",
	"tls-key":         "read again with --tls-cert",
}

// changedFlags names the flags of f set so far: after applyEnv, those the
// command line or a TCPGATE_* variable set, which a config file re-read by
// a reload cannot change.
func changedFlags(f *pflag.FlagSet) map[string]bool {
	set := make(map[string]bool)
	f.Visit(func(fl *pflag.Flag) { set[fl.Name] = true })
	return set
}

// reloadFlags applies to srv the serve flags of a config file read again:
// file is its serve section (flag name to value, as on the command line),
// running the serve flags in force, pinned the flags the command line or
// the environment set (changedFlags), which keep their value. A flag
// neither pinned nor in the file goes back to its default.
//
// Every new value is parsed and checked, and the token file read again,
// before anything changes; on an error nothing does. Then the reloadable
// flags that changed are applied, through srv.Reconfigure, and set in
// running, so the next reload compares with them; the others that changed
// are listed in needRestart and left as they are. A token file and a
// certificate are read again even when their names did not change, so
// that files rewritten in place rotate the token and the certificate.
// Callers serialize their calls.
func reloadFlags(srv *server.Server, running *pflag.FlagSet, pinned map[string]bool, file map[string]string) (applied, needRestart []string, err error) {
	var (
		cfg server.Config
		o   serveOptions
	)
	next := pflag.NewFlagSet("serve", pflag.ContinueOnError)
	serveFlags(next, &cfg, &o)
	for name := range file {
		if running.Lookup(name) == nil {
			return nil, nil, fmt.Errorf("serve: unknown flag %q", name)
		}
	}
	var changed []string
	running.VisitAll(func(fl *pflag.Flag) {
		if err != nil {
			return
		}
		v, inFile := file[fl.Name]
		switch {
		case pinned[fl.Name]:
			v = fl.Value.String()
		case !inFile:
			v = fl.DefValue
		}
		if serr := setFlag(next, fl.Name, v); serr != nil {
			err = fmt.Errorf("serve: %s: %w", fl.Name, serr)
			return
		}
		if next.Lookup(fl.Name).Value.String() != fl.Value.String() {
			changed = append(changed, fl.Name)
		}
	})
	if err != nil {
		return nil, nil, err
	}
	token, err := readToken(o.tokenFile)
	if err != nil {
		return nil, nil, err
	}
	var apply []string
	for _, name := range changed {
		if _, ok := reloadable[name]; ok {
			apply = append(apply, name)
		} else {
			needRestart = append(needRestart, name)
		}
	}
	done, err := srv.Reconfigure(server.Reloadable{
		AuthToken: token, TLSCert: cfg.TLSCert, TLSKey: cfg.TLSKey,
		AllowListen: cfg.AllowListen, AllowDial: cfg.AllowDial, DenyDial: cfg.DenyDial,
		CORSOrigins:  cfg.CORSOrigins,
		MaxListeners: cfg.MaxListeners, MaxSubscribers: cfg.MaxSubscribers,
	})
	if err != nil {
		return nil, nil, err
	}
	for _, name := range apply {
		if serr := setFlag(running, name, next.Lookup(name).Value.String()); serr != nil {
			// Parsed above by the same flag type: cannot fail.
			return nil, nil, fmt.Errorf("serve: %s: %w", name, serr)
		}
	}
	// A file rewritten under the same name counts as applied too.
	for _, name := range done {
		if name == "auth-token" {
			name = "auth-token-file"
		}
		if !slices.Contains(apply, name) {
			apply = append(apply, name)
		}
	}
	slices.Sort(apply)
	return apply, needRestart, nil
}

// setFlag sets flag name of f to v as the command line would, replacing a
// list flag's whole value rather than appending to it.
func setFlag(f *pflag.FlagSet, name, v string) error {
	fl := f.Lookup(name)
	if fl == nil {
		return errors.New("no such flag")
	}
	if sv, ok := fl.Value.(pflag.SliceValue); ok {
		if v == "[]" || v == "" {
			return sv.Replace(nil)
		}
		return sv.Replace(splitList(v))
	}
	return fl.Value.Set(v)
}

// splitList splits a list flag's value, "a,b" or as pflag prints it,
// "[a,b]".
func splitList(v string) []string {
	v = strings.TrimSuffix(strings.TrimPrefix(v, "["), "]")
	if v == "" {
		return nil
	}
	return strings.Split(v, ",")
}
