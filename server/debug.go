package server

import (
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"runtime"
	"time"

	"github.com/tcpgate/tcpgate/gateway"
)

// newDebug binds the profiling endpoint: net/http/pprof on a mux of its own,
// never on the REST address, so profiles are only where they were asked for.
func (s *Server) newDebug() error {
	if !isLoopback(s.cfg.DebugAddr) && !s.cfg.Insecure {
		return fmt.Errorf("--debug-addr %s is not a loopback address: profiles show the gateway's memory, payloads included; pass --insecure to accept that", s.cfg.DebugAddr)
	}
	ln, err := net.Listen("tcp", s.cfg.DebugAddr)
	if err != nil {
		return fmt.Errorf("binding debug address %s: %w", s.cfg.DebugAddr, err)
	}
	// GET (and so HEAD) only: pprof's handlers ignore the method, so any
	// other method would be served a profile too. Anything else is a 405
	// from the mux, and only once the token has been checked. Symbol
	// lookups go in the query (GET /debug/pprof/symbol?0x4a2b...).
	mux := http.NewServeMux()
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	// Block and mutex profiles are empty unless sampling is on; a rate of
	// one event per 10 µs blocked, and 1 in 100 contentions, costs little.
	runtime.SetBlockProfileRate(int((10 * time.Microsecond).Nanoseconds()))
	runtime.SetMutexProfileFraction(100)
	// The same checks as the REST API: the token when there is one, the
	// Origin guard, and on loopback the Host guard, or a web page could
	// reach the profiles through DNS rebinding. No CORS: a preflight here
	// needs the token like any request.
	gcfg := gateway.Config{Logger: s.log, LoopbackOnly: isLoopback(s.cfg.DebugAddr), Refused: s.rpcs.refuse}
	if s.auth != nil {
		gcfg.Auth = s.auth
	}
	s.debugLn = ln
	s.debugSrv = &http.Server{Handler: gateway.Protect(mux, gcfg), ReadHeaderTimeout: 10 * time.Second}
	return nil
}

// DebugAddr returns the bound profiling address, or "" without one.
func (s *Server) DebugAddr() string {
	if s.debugLn == nil {
		return ""
	}
	return s.debugLn.Addr().String()
}
