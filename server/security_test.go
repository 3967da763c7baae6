package server_test

// The security tests docs/SECURITY.md promises: authentication on every
// gRPC method, TLS and mutual TLS on the control plane, TLS listeners and
// sends, the listen and dial policy, and logs free of tokens and payloads.

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	reflectionv1 "google.golang.org/grpc/reflection/grpc_reflection_v1"
	reflectionv1alpha "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server"
	"github.com/tcpgate/tcpgate/server/servertest"
)

// secToken is the control plane's token in these tests.
const secToken = "s3cret"

// secConn is a gRPC client of addr with creds (and opts), closed when the
// test ends.
func secConn(t *testing.T, addr string, creds credentials.TransportCredentials, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient(addr, append([]grpc.DialOption{grpc.WithTransportCredentials(creds)}, opts...)...)
	if err != nil {
		t.Fatalf("dialing %s: %v", addr, err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// secBearer is per-call credentials sending "authorization: Bearer TOKEN"
// over plain text too (these tests run on loopback).
type secBearer string

func (b secBearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

func (secBearer) RequireTransportSecurity() bool { return false }

// secAuth returns ctx with one "authorization" header per value.
func secAuth(ctx context.Context, values ...string) context.Context {
	for _, v := range values {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", v)
	}
	return ctx
}

// secMethod is one method of GatewayService as its service descriptor
// names it: stream is nil for unary methods.
type secMethod struct {
	name   string
	stream *grpc.StreamDesc
	desc   protoreflect.MethodDescriptor
}

// secMethods lists every method of GatewayService from the generated
// grpc.ServiceDesc, with its protobuf descriptor, so that a method added to
// the service is tested without touching the test.
func secMethods(t *testing.T) []secMethod {
	t.Helper()
	sd := tcpgatev1.GatewayService_ServiceDesc
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(sd.ServiceName))
	if err != nil {
		t.Fatalf("finding service %s: %v", sd.ServiceName, err)
	}
	svc, ok := d.(protoreflect.ServiceDescriptor)
	if !ok {
		t.Fatalf("%s is a %T, not a service", sd.ServiceName, d)
	}
	var ms []secMethod
	for _, m := range sd.Methods {
		ms = append(ms, secMethod{name: m.MethodName})
	}
	for _, s := range sd.Streams {
		ms = append(ms, secMethod{name: s.StreamName, stream: &grpc.StreamDesc{
			StreamName: s.StreamName, ServerStreams: s.ServerStreams, ClientStreams: s.ClientStreams,
		}})
	}
	for i := range ms {
		ms[i].desc = svc.Methods().ByName(protoreflect.Name(ms[i].name))
		if ms[i].desc == nil {
			t.Fatalf("method %s of the ServiceDesc is not in the descriptor of %s", ms[i].name, sd.ServiceName)
		}
	}
	if len(ms) != svc.Methods().Len() {
		t.Fatalf("the ServiceDesc has %d methods, the descriptor %d", len(ms), svc.Methods().Len())
	}
	return ms
}

// secNew returns an empty message of a descriptor's type.
func secNew(t *testing.T, md protoreflect.MessageDescriptor) proto.Message {
	t.Helper()
	mt, err := protoregistry.GlobalTypes.FindMessageByName(md.FullName())
	if err != nil {
		t.Fatalf("message type %s: %v", md.FullName(), err)
	}
	return mt.New().Interface()
}

// secInvoke calls m with an empty request and returns the call's error. A
// stream counts as accepted (nil) once the server sent its headers: the
// handler is running, so every interceptor let it through.
func secInvoke(ctx context.Context, t *testing.T, cc *grpc.ClientConn, m secMethod) error {
	t.Helper()
	full := "/" + tcpgatev1.GatewayService_ServiceDesc.ServiceName + "/" + m.name
	in, out := secNew(t, m.desc.Input()), secNew(t, m.desc.Output())
	if m.stream == nil {
		return cc.Invoke(ctx, full, in, out)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cs, err := cc.NewStream(ctx, m.stream, full)
	if err != nil {
		return err
	}
	if err := cs.SendMsg(in); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	if err := cs.CloseSend(); err != nil {
		return err
	}
	md, err := cs.Header()
	if err != nil {
		return err
	}
	if md == nil {
		// Ended without headers (trailers only): RecvMsg has the status.
		if err := cs.RecvMsg(out); !errors.Is(err, io.EOF) {
			return err
		}
	}
	return nil
}

// TestAuthEveryMethod: with a token, every method of GatewayService, read
// from its service descriptor, refuses a call without the token or with a
// wrong one, and takes one with the right token; health stays open;
// reflection needs the token unless public.
func TestAuthEveryMethod(t *testing.T) {
	// StartListener's empty request binds every interface: the listen
	// policy refuses that (after authentication), so nothing is bound.
	g := servertest.Start(t, server.Config{AuthToken: secToken, AllowListen: "127.0.0.1"})
	cc := secConn(t, g.Server.GRPCAddr(), insecure.NewCredentials())
	methods := secMethods(t)
	if len(methods) < 8 {
		t.Fatalf("only %d methods found", len(methods))
	}

	refused := []struct {
		name   string
		values []string
	}{
		{"no token", nil},
		{"wrong token", []string{"Bearer nope"}},
		{"Basic scheme", []string{"Basic " + base64.StdEncoding.EncodeToString([]byte("admin:"+secToken))}},
		{"token without scheme", []string{secToken}},
		{"token scheme only", []string{"Token " + secToken}},
		{"empty bearer", []string{"Bearer "}},
		{"token with suffix", []string{"Bearer " + secToken + "x"}},
		{"token prefix", []string{"Bearer " + secToken[:len(secToken)-1]}},
		{"wrong and right", []string{"Bearer nope", "Bearer " + secToken}},
	}
	for _, m := range methods {
		t.Run(m.name, func(t *testing.T) {
			for _, r := range refused {
				err := secInvoke(secAuth(servertest.Context(t), r.values...), t, cc, m)
				if status.Code(err) != codes.Unauthenticated {
					t.Errorf("%s: %v, want Unauthenticated", r.name, err)
				}
				if err != nil && strings.Contains(status.Convert(err).Message(), "nope") {
					t.Errorf("%s: the error echoes the token sent: %v", r.name, err)
				}
			}
			for _, v := range []string{"Bearer " + secToken, "bearer " + secToken} {
				err := secInvoke(secAuth(servertest.Context(t), v), t, cc, m)
				if c := status.Code(err); c == codes.Unauthenticated || c == codes.Unimplemented {
					t.Errorf("with %q: %v, want the call to reach the method", v, err)
				} else {
					t.Logf("with the token: %v", status.Code(err))
				}
			}
		})
	}

	t.Run("per-call credentials", func(t *testing.T) {
		authed := secConn(t, g.Server.GRPCAddr(), insecure.NewCredentials(), grpc.WithPerRPCCredentials(secBearer(secToken)))
		if _, err := tcpgatev1.NewGatewayServiceClient(authed).ListListeners(servertest.Context(t), &tcpgatev1.ListListenersRequest{}); err != nil {
			t.Fatalf("ListListeners with the token: %v", err)
		}
		// Subscribe's stream starts (headers with the last sequence) only
		// after the token was checked.
		ctx, cancel := context.WithCancel(servertest.Context(t))
		defer cancel()
		st, err := tcpgatev1.NewGatewayServiceClient(authed).Subscribe(ctx, &tcpgatev1.SubscribeRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if md, err := st.Header(); err != nil || len(md.Get("tcpgate-last-sequence")) == 0 {
			t.Fatalf("Subscribe with the token: headers %v, %v", md, err)
		}
		cancel()
		// servertest's own client has no token.
		_, err = g.Client.ListListeners(servertest.Context(t), &tcpgatev1.ListListenersRequest{})
		servertest.WantCode(t, err, codes.Unauthenticated)
	})

	t.Run("health without token", func(t *testing.T) {
		h := healthpb.NewHealthClient(cc)
		resp, err := h.Check(servertest.Context(t), &healthpb.HealthCheckRequest{})
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("Health/Check = %v, %v; want SERVING", resp, err)
		}
		ctx, cancel := context.WithCancel(servertest.Context(t))
		defer cancel()
		w, err := h.Watch(ctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if resp, err := w.Recv(); err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("Health/Watch = %v, %v; want SERVING", resp, err)
		}
	})

	t.Run("reflection needs the token", func(t *testing.T) {
		if err := secReflect(servertest.Context(t), cc); status.Code(err) != codes.Unauthenticated {
			t.Errorf("reflection v1 without token: %v, want Unauthenticated", err)
		}
		if err := secReflectAlpha(servertest.Context(t), cc); status.Code(err) != codes.Unauthenticated {
			t.Errorf("reflection v1alpha without token: %v, want Unauthenticated", err)
		}
		if err := secReflect(secAuth(servertest.Context(t), "Bearer nope"), cc); status.Code(err) != codes.Unauthenticated {
			t.Errorf("reflection v1 with a wrong token: %v, want Unauthenticated", err)
		}
		if err := secReflect(secAuth(servertest.Context(t), "Bearer "+secToken), cc); err != nil {
			t.Errorf("reflection v1 with the token: %v", err)
		}
	})

	t.Run("public reflection", func(t *testing.T) {
		pub := servertest.Start(t, server.Config{AuthToken: secToken, PublicReflection: true})
		if err := secReflect(servertest.Context(t), pub.Conn); err != nil {
			t.Errorf("public reflection v1 without token: %v", err)
		}
		if err := secReflectAlpha(servertest.Context(t), pub.Conn); err != nil {
			t.Errorf("public reflection v1alpha without token: %v", err)
		}
		// Only reflection is public.
		_, err := pub.Client.ListListeners(servertest.Context(t), &tcpgatev1.ListListenersRequest{})
		servertest.WantCode(t, err, codes.Unauthenticated)
	})

	t.Run("no token configured", func(t *testing.T) {
		open := servertest.Start(t, server.Config{})
		if _, err := open.Client.ListListeners(secAuth(servertest.Context(t), "Bearer whatever"), &tcpgatev1.ListListenersRequest{}); err != nil {
			t.Fatalf("ListListeners on a gateway without a token: %v", err)
		}
	})
}

// TestAuthCoversEveryService: the gateway serves exactly the services whose
// authentication is tested (GatewayService method by method above; health
// open for probes and reflection behind the token, by hand). A service
// registered later fails this test until its authentication is decided
// and tested too.
func TestAuthCoversEveryService(t *testing.T) {
	g := servertest.Start(t, server.Config{AuthToken: secToken})
	cc := secConn(t, g.Server.GRPCAddr(), insecure.NewCredentials())
	ctx, cancel := context.WithCancel(secAuth(servertest.Context(t), "Bearer "+secToken))
	defer cancel()
	st, err := reflectionv1.NewServerReflectionClient(cc).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&reflectionv1.ServerReflectionRequest{MessageRequest: &reflectionv1.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	resp, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, svc := range resp.GetListServicesResponse().GetService() {
		got = append(got, svc.GetName())
	}
	slices.Sort(got)
	want := []string{
		"grpc.health.v1.Health",
		"grpc.reflection.v1.ServerReflection",
		"grpc.reflection.v1alpha.ServerReflection",
		tcpgatev1.GatewayService_ServiceDesc.ServiceName,
	}
	if !slices.Equal(got, want) {
		t.Fatalf("services served: %v, want %v (a new service needs its authentication tested here)", got, want)
	}
}

// secReflect lists the services through reflection v1.
func secReflect(ctx context.Context, cc *grpc.ClientConn) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := reflectionv1.NewServerReflectionClient(cc).ServerReflectionInfo(ctx)
	if err != nil {
		return err
	}
	if err := st.Send(&reflectionv1.ServerReflectionRequest{
		MessageRequest: &reflectionv1.ServerReflectionRequest_ListServices{},
	}); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	resp, err := st.Recv()
	if err != nil {
		return err
	}
	if len(resp.GetListServicesResponse().GetService()) == 0 {
		return errors.New("reflection listed no services")
	}
	return nil
}

// secReflectAlpha lists the services through reflection v1alpha.
func secReflectAlpha(ctx context.Context, cc *grpc.ClientConn) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := reflectionv1alpha.NewServerReflectionClient(cc).ServerReflectionInfo(ctx)
	if err != nil {
		return err
	}
	if err := st.Send(&reflectionv1alpha.ServerReflectionRequest{
		MessageRequest: &reflectionv1alpha.ServerReflectionRequest_ListServices{},
	}); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	resp, err := st.Recv()
	if err != nil {
		return err
	}
	if len(resp.GetListServicesResponse().GetService()) == 0 {
		return errors.New("reflection listed no services")
	}
	return nil
}

// secPKI is a test CA with a server certificate for loopback, written to
// files as the daemon's flags take them.
type secPKI struct {
	ca               *servertest.CA
	serverCert       []byte
	serverKey        []byte
	caFile, certFile string
	keyFile          string
}

func secNewPKI(t *testing.T) *secPKI {
	t.Helper()
	ca := servertest.NewCA(t)
	cert, key := ca.IssueLoopback(t)
	files := servertest.WriteFiles(t, map[string][]byte{"ca.pem": ca.CertPEM, "server.pem": cert, "server-key.pem": key})
	return &secPKI{ca: ca, serverCert: cert, serverKey: key,
		caFile: files["ca.pem"], certFile: files["server.pem"], keyFile: files["server-key.pem"]}
}

// clientCert issues a client certificate with common name cn.
func (p *secPKI) clientCert(t *testing.T, cn string) tls.Certificate {
	t.Helper()
	cert, key := p.ca.Issue(t, cn, nil, nil, true)
	return servertest.KeyPair(t, cert, key)
}

// secHTTPS is an HTTP client with its own transport and TLS configuration,
// whose idle connections close when the test ends.
func secHTTPS(t *testing.T, cfg *tls.Config) *http.Client {
	t.Helper()
	tr := &http.Transport{Proxy: nil, TLSClientConfig: cfg, ForceAttemptHTTP2: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: wait}
}

// secGet GETs url and returns the status and body, or the error.
func secGet(t *testing.T, hc *http.Client, url string) (int, string, error) {
	t.Helper()
	req, err := http.NewRequestWithContext(servertest.Context(t), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// secListListeners calls ListListeners on cc.
func secListListeners(t *testing.T, cc *grpc.ClientConn) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	_, err := tcpgatev1.NewGatewayServiceClient(cc).ListListeners(ctx, &tcpgatev1.ListListenersRequest{})
	return err
}

// TestControlPlaneTLS: with --tls-cert and --tls-key, gRPC and REST speak
// TLS only.
func TestControlPlaneTLS(t *testing.T) {
	pki := secNewPKI(t)
	g := servertest.Start(t, server.Config{TLSCert: pki.certFile, TLSKey: pki.keyFile, HTTPAddr: "127.0.0.1:0"})
	grpcAddr, httpAddr := g.Server.GRPCAddr(), g.Server.HTTPAddr()

	t.Run("gRPC over TLS", func(t *testing.T) {
		cc := secConn(t, grpcAddr, credentials.NewTLS(&tls.Config{RootCAs: pki.ca.Pool()}))
		if err := secListListeners(t, cc); err != nil {
			t.Fatalf("ListListeners over TLS: %v", err)
		}
	})
	t.Run("gRPC in plain text fails", func(t *testing.T) {
		cc := secConn(t, grpcAddr, insecure.NewCredentials())
		if err := secListListeners(t, cc); status.Code(err) != codes.Unavailable {
			t.Fatalf("ListListeners in plain text: %v, want Unavailable", err)
		}
	})
	t.Run("gRPC trusting another CA fails", func(t *testing.T) {
		other := servertest.NewCA(t)
		cc := secConn(t, grpcAddr, credentials.NewTLS(&tls.Config{RootCAs: other.Pool()}))
		if err := secListListeners(t, cc); status.Code(err) != codes.Unavailable {
			t.Fatalf("ListListeners trusting another CA: %v, want Unavailable", err)
		}
	})

	t.Run("REST over HTTPS", func(t *testing.T) {
		hc := secHTTPS(t, &tls.Config{RootCAs: pki.ca.Pool()})
		code, body, err := secGet(t, hc, "https://"+httpAddr+"/v1/listeners")
		if err != nil || code != http.StatusOK {
			t.Fatalf("GET /v1/listeners over HTTPS = %d %s, %v", code, body, err)
		}

		// The NDJSON event stream over HTTPS delivers an event.
		ctx, cancel := context.WithCancel(servertest.Context(t))
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+httpAddr+"/v1/events", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("GET /v1/events over HTTPS: %v", err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET /v1/events over HTTPS = %d", resp.StatusCode)
		}
		cc := secConn(t, grpcAddr, credentials.NewTLS(&tls.Config{RootCAs: pki.ca.Pool()}))
		if _, err := tcpgatev1.NewGatewayServiceClient(cc).StartListener(servertest.Context(t), &tcpgatev1.StartListenerRequest{
			ListenerId: "over-tls", Host: "127.0.0.1",
		}); err != nil {
			t.Fatalf("StartListener over TLS: %v", err)
		}
		lines := make(chan string, 16)
		go func() {
			defer close(lines)
			sc := bufio.NewScanner(resp.Body)
			for sc.Scan() {
				lines <- sc.Text()
			}
		}()
		deadline := time.After(wait)
		for got := false; !got; {
			select {
			case line, ok := <-lines:
				if !ok {
					t.Fatal("event stream ended before LISTENER_STARTED")
				}
				e := &tcpgatev1.Event{}
				if err := protojson.Unmarshal([]byte(line), e); err != nil {
					t.Fatalf("event %s: %v", line, err)
				}
				got = e.GetKind() == tcpgatev1.EventKind_EVENT_KIND_LISTENER_STARTED && e.GetListenerId() == "over-tls"
			case <-deadline:
				t.Fatalf("no LISTENER_STARTED event within %s", wait)
			}
		}
		cancel()
		resp.Body.Close()
		for range lines {
		}
	})
	t.Run("plain HTTP fails", func(t *testing.T) {
		hc := secHTTPS(t, nil)
		code, body, err := secGet(t, hc, "http://"+httpAddr+"/v1/listeners")
		if err == nil && code == http.StatusOK {
			t.Fatalf("GET /v1/listeners in plain HTTP = %d %s, want a failure", code, body)
		}
		if strings.Contains(body, "listeners") {
			t.Errorf("plain HTTP got an API answer: %s", body)
		}
	})
	t.Run("HTTPS trusting another CA fails", func(t *testing.T) {
		hc := secHTTPS(t, &tls.Config{RootCAs: servertest.NewCA(t).Pool()})
		if code, _, err := secGet(t, hc, "https://"+httpAddr+"/v1/listeners"); err == nil {
			t.Fatalf("GET /v1/listeners trusting another CA = %d, want a certificate error", code)
		}
	})
}

// TestControlPlaneMutualTLS: with --client-ca, gRPC and REST clients must
// present a certificate the CA signed; mutual TLS alone may guard a
// non-loopback address.
func TestControlPlaneMutualTLS(t *testing.T) {
	pki := secNewPKI(t)
	g := servertest.Start(t, server.Config{
		TLSCert: pki.certFile, TLSKey: pki.keyFile, ClientCA: pki.caFile, HTTPAddr: "127.0.0.1:0",
	})
	grpcAddr, httpAddr := g.Server.GRPCAddr(), g.Server.HTTPAddr()
	good := pki.clientCert(t, "operator")
	otherCA := servertest.NewCA(t)
	oc, ok := otherCA.Issue(t, "intruder", nil, nil, true)
	foreign := servertest.KeyPair(t, oc, ok)

	clients := []struct {
		name  string
		certs []tls.Certificate
		works bool
	}{
		{"without a certificate", nil, false},
		{"with a certificate of another CA", []tls.Certificate{foreign}, false},
		{"with a certificate of the client CA", []tls.Certificate{good}, true},
	}
	for _, c := range clients {
		t.Run("gRPC "+c.name, func(t *testing.T) {
			cc := secConn(t, grpcAddr, credentials.NewTLS(&tls.Config{RootCAs: pki.ca.Pool(), Certificates: c.certs}))
			err := secListListeners(t, cc)
			if c.works && err != nil {
				t.Fatalf("ListListeners: %v", err)
			}
			if !c.works && err == nil {
				t.Fatal("ListListeners succeeded, want a refused handshake")
			}
		})
		t.Run("HTTPS "+c.name, func(t *testing.T) {
			hc := secHTTPS(t, &tls.Config{RootCAs: pki.ca.Pool(), Certificates: c.certs})
			code, body, err := secGet(t, hc, "https://"+httpAddr+"/v1/listeners")
			if c.works && (err != nil || code != http.StatusOK) {
				t.Fatalf("GET /v1/listeners = %d %s, %v", code, body, err)
			}
			if !c.works && err == nil {
				t.Fatalf("GET /v1/listeners = %d %s, want a refused handshake", code, body)
			}
		})
	}

	t.Run("client CA needs a server certificate", func(t *testing.T) {
		_, err := server.New(server.Config{GRPCAddr: "127.0.0.1:0", ClientCA: pki.caFile})
		if err == nil || !strings.Contains(err.Error(), "--client-ca") {
			t.Fatalf("server.New with ClientCA alone: %v, want an error naming --client-ca", err)
		}
	})

	t.Run("token in clear text", func(t *testing.T) {
		for _, tc := range []struct {
			cfg  server.Config
			warn bool
		}{
			{server.Config{GRPCAddr: "0.0.0.0:0", AuthToken: "tok-0123456789abcdef"}, true},
			{server.Config{GRPCAddr: "0.0.0.0:0", AuthToken: "tok-0123456789abcdef", TLSCert: pki.certFile, TLSKey: pki.keyFile}, false},
			{server.Config{GRPCAddr: "127.0.0.1:0", AuthToken: "tok-0123456789abcdef"}, false},
		} {
			var logs servertest.LogSink
			tc.cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
			s, err := server.New(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			_ = s.Run(ctx)
			if got := strings.Contains(logs.String(), "clear text"); got != tc.warn {
				t.Errorf("%s, TLS %v: warned %v, want %v; logs:\n%s", tc.cfg.GRPCAddr, tc.cfg.TLSCert != "", got, tc.warn, logs.String())
			}
			if strings.Contains(logs.String(), tc.cfg.AuthToken) {
				t.Errorf("the token is in the logs:\n%s", logs.String())
			}
		}
	})

	t.Run("exposed address", func(t *testing.T) {
		// TLS without client certificates authenticates nobody.
		if _, err := server.New(server.Config{GRPCAddr: "0.0.0.0:0", TLSCert: pki.certFile, TLSKey: pki.keyFile}); err == nil ||
			!strings.Contains(err.Error(), "--grpc-addr") {
			t.Fatalf("server.New on 0.0.0.0 with TLS but no client CA: %v, want an error naming --grpc-addr", err)
		}
		// Mutual TLS does; servertest's own plain client never connects.
		exposed := servertest.Start(t, server.Config{
			GRPCAddr: "0.0.0.0:0", TLSCert: pki.certFile, TLSKey: pki.keyFile, ClientCA: pki.caFile,
		})
		_, port, err := net.SplitHostPort(exposed.Server.GRPCAddr())
		if err != nil {
			t.Fatal(err)
		}
		local := net.JoinHostPort("127.0.0.1", port)
		cc := secConn(t, local, credentials.NewTLS(&tls.Config{RootCAs: pki.ca.Pool(), Certificates: []tls.Certificate{good}}))
		if err := secListListeners(t, cc); err != nil {
			t.Fatalf("ListListeners with a client certificate: %v", err)
		}
		anon := secConn(t, local, credentials.NewTLS(&tls.Config{RootCAs: pki.ca.Pool()}))
		if err := secListListeners(t, anon); err == nil {
			t.Fatal("ListListeners without a client certificate succeeded")
		}
	})
}

// secTLSDial connects to a TLS listener with cfg; the connection closes
// when the test ends.
func secTLSDial(t *testing.T, addr string, cfg *tls.Config) (*tls.Conn, error) {
	t.Helper()
	d := &net.Dialer{Timeout: wait}
	c, err := tls.DialWithDialer(d, "tcp", addr, cfg)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(wait))
	return c, nil
}

// secNextOfListener skips events until one of kind on listener lid.
func secNextOfListener(s *servertest.Stream, lid string, kind tcpgatev1.EventKind) *tcpgatev1.Event {
	for {
		if e := s.NextOf(kind); e.GetListenerId() == lid {
			return e
		}
	}
}

// TestTLSListener: a listener with a certificate speaks TLS; with a client
// CA it requires client certificates and names their subject in events and
// connections.
func TestTLSListener(t *testing.T) {
	pki := secNewPKI(t)
	g := servertest.Start(t, server.Config{TLSFilesDir: filepath.Dir(pki.certFile)})
	sub := g.Subscribe(t, &tcpgatev1.SubscribeRequest{})

	t.Run("TLS", func(t *testing.T) {
		l := g.StartListener(t, &tcpgatev1.StartListenerRequest{
			ListenerId: "tls", Tls: &tcpgatev1.ListenerTLS{CertPem: string(pki.serverCert), KeyPem: string(pki.serverKey)},
		})
		if !l.GetTls() || l.GetMutualTls() {
			t.Fatalf("listener tls = %v, mutual_tls = %v; want true, false", l.GetTls(), l.GetMutualTls())
		}
		c, err := secTLSDial(t, l.GetAddress(), &tls.Config{RootCAs: pki.ca.Pool()})
		if err != nil {
			t.Fatalf("TLS dial: %v", err)
		}
		if _, err := c.Write([]byte("hi")); err != nil {
			t.Fatal(err)
		}
		if e := secNextOfListener(sub, "tls", tcpgatev1.EventKind_EVENT_KIND_DATA); e.GetText() != "hi" {
			t.Fatalf("DATA %q, want %q (decrypted)", e.GetText(), "hi")
		}
		resp, err := g.Client.GetListener(servertest.Context(t), &tcpgatev1.GetListenerRequest{ListenerId: "tls"})
		if err != nil || !resp.GetListener().GetTls() {
			t.Fatalf("GetListener = %v, %v; want tls true", resp, err)
		}

		// A plain TCP client gets no further than the handshake.
		raw := servertest.Dial(t, l.GetAddress())
		if _, err := raw.Write([]byte("GET / HTTP/1.0\r\n\r\n")); err != nil {
			t.Fatal(err)
		}
		e := secNextOfListener(sub, "tls", tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED)
		if e.GetCloseReason() != tcpgatev1.CloseReason_CLOSE_REASON_TLS_HANDSHAKE_FAILED {
			t.Errorf("plain client closed with %v, want CLOSE_REASON_TLS_HANDSHAKE_FAILED", e.GetCloseReason())
		}
		if len(payloadOf(e)) != 0 {
			t.Errorf("plain client's bytes reached the event: %q", payloadOf(e))
		}
	})

	t.Run("mutual TLS", func(t *testing.T) {
		l := g.StartListener(t, &tcpgatev1.StartListenerRequest{
			ListenerId: "mtls",
			Tls: &tcpgatev1.ListenerTLS{
				CertPem: string(pki.serverCert), KeyPem: string(pki.serverKey), ClientCaPem: string(pki.ca.CertPEM),
			},
		})
		if !l.GetTls() || !l.GetMutualTls() {
			t.Fatalf("listener tls = %v, mutual_tls = %v; want both true", l.GetTls(), l.GetMutualTls())
		}

		c, err := secTLSDial(t, l.GetAddress(), &tls.Config{RootCAs: pki.ca.Pool(), Certificates: []tls.Certificate{pki.clientCert(t, "sensor-7")}})
		if err != nil {
			t.Fatalf("TLS dial with a client certificate: %v", err)
		}
		opened := secNextOfListener(sub, "mtls", tcpgatev1.EventKind_EVENT_KIND_CONNECTION_OPENED)
		if !strings.Contains(opened.GetPeerSubject(), "CN=sensor-7") {
			t.Errorf("CONNECTION_OPENED peer_subject = %q, want CN=sensor-7", opened.GetPeerSubject())
		}
		if _, err := c.Write([]byte("reading")); err != nil {
			t.Fatal(err)
		}
		if e := secNextOfListener(sub, "mtls", tcpgatev1.EventKind_EVENT_KIND_DATA); e.GetText() != "reading" {
			t.Errorf("DATA %q, want %q", e.GetText(), "reading")
		}
		conns, err := g.Client.ListConnections(servertest.Context(t), &tcpgatev1.ListConnectionsRequest{ListenerId: "mtls"})
		if err != nil || len(conns.GetConnections()) != 1 {
			t.Fatalf("ListConnections = %v, %v; want one connection", conns, err)
		}
		if got := conns.GetConnections()[0]; got.GetConnectionId() != opened.GetConnectionId() || !strings.Contains(got.GetPeerSubject(), "CN=sensor-7") {
			t.Errorf("connection = %v, want %s with peer_subject CN=sensor-7", got, opened.GetConnectionId())
		}
		c.Close()
		secNextOfListener(sub, "mtls", tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED)

		otherCA := servertest.NewCA(t)
		oc, ok := otherCA.Issue(t, "intruder", nil, nil, true)
		for _, tc := range []struct {
			name  string
			certs []tls.Certificate
		}{
			{"without a certificate", nil},
			{"with a certificate of another CA", []tls.Certificate{servertest.KeyPair(t, oc, ok)}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				c, err := secTLSDial(t, l.GetAddress(), &tls.Config{RootCAs: pki.ca.Pool(), Certificates: tc.certs})
				if err == nil {
					// TLS 1.3: the client learns of the refusal on its
					// first read.
					_, _ = c.Write([]byte("let me in"))
					if _, err := c.Read(make([]byte, 1)); err == nil {
						t.Error("the connection without an accepted certificate is usable")
					}
				}
				e := secNextOfListener(sub, "mtls", tcpgatev1.EventKind_EVENT_KIND_CONNECTION_CLOSED)
				if e.GetCloseReason() != tcpgatev1.CloseReason_CLOSE_REASON_TLS_HANDSHAKE_FAILED {
					t.Errorf("closed with %v, want CLOSE_REASON_TLS_HANDSHAKE_FAILED", e.GetCloseReason())
				}
			})
		}
	})

	t.Run("bad PEM", func(t *testing.T) {
		for _, tc := range []struct {
			name  string
			tls   *tcpgatev1.ListenerTLS
			field string
		}{
			{"bad certificate", &tcpgatev1.ListenerTLS{CertPem: "not a certificate", KeyPem: string(pki.serverKey)}, "tls.cert_pem"},
			{"key of another certificate", &tcpgatev1.ListenerTLS{CertPem: string(pki.serverCert), KeyPem: string(secOtherKey(t, pki))}, "tls.cert_pem"},
			{"bad client CA", &tcpgatev1.ListenerTLS{CertPem: string(pki.serverCert), KeyPem: string(pki.serverKey), ClientCaPem: "nope"}, "tls.client_ca_pem"},
			{"no key", &tcpgatev1.ListenerTLS{CertPem: string(pki.serverCert)}, "tls"},
			{"pem and file", &tcpgatev1.ListenerTLS{CertPem: string(pki.serverCert), CertFile: pki.certFile, KeyPem: string(pki.serverKey)}, "tls.cert_pem"},
			{"missing file", &tcpgatev1.ListenerTLS{CertFile: pki.certFile + ".missing", KeyFile: pki.keyFile}, "tls.cert_file"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				_, err := g.Client.StartListener(servertest.Context(t), &tcpgatev1.StartListenerRequest{Host: "127.0.0.1", Tls: tc.tls})
				servertest.WantCode(t, err, codes.InvalidArgument)
				if msg := status.Convert(err).Message(); !strings.HasPrefix(msg, tc.field) {
					t.Errorf("message %q does not name %s", msg, tc.field)
				}
				if strings.Contains(status.Convert(err).Message(), "PRIVATE KEY") {
					t.Errorf("the error echoes the key: %v", err)
				}
			})
		}
		resp, err := g.Client.ListListeners(servertest.Context(t), &tcpgatev1.ListListenersRequest{})
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range resp.GetListeners() {
			if l.GetListenerId() != "tls" && l.GetListenerId() != "mtls" {
				t.Errorf("a refused StartListener left listener %v", l)
			}
		}
	})

	t.Run("files", func(t *testing.T) {
		l := g.StartListener(t, &tcpgatev1.StartListenerRequest{
			ListenerId: "tls-files",
			Tls:        &tcpgatev1.ListenerTLS{CertFile: pki.certFile, KeyFile: pki.keyFile, ClientCaFile: pki.caFile},
		})
		if !l.GetTls() || !l.GetMutualTls() {
			t.Fatalf("listener tls = %v, mutual_tls = %v; want both true", l.GetTls(), l.GetMutualTls())
		}
		c, err := secTLSDial(t, l.GetAddress(), &tls.Config{RootCAs: pki.ca.Pool(), Certificates: []tls.Certificate{pki.clientCert(t, "from-files")}})
		if err != nil {
			t.Fatalf("TLS dial: %v", err)
		}
		if _, err := c.Write([]byte("files")); err != nil {
			t.Fatal(err)
		}
		if e := secNextOfListener(sub, "tls-files", tcpgatev1.EventKind_EVENT_KIND_DATA); e.GetText() != "files" {
			t.Errorf("DATA %q, want %q", e.GetText(), "files")
		}
	})
}

// secOtherKey returns a key that is not the server certificate's.
func secOtherKey(t *testing.T, p *secPKI) []byte {
	t.Helper()
	_, key := p.ca.IssueLoopback(t)
	return key
}

// secTLSPeer is a TLS echo server on 127.0.0.1 with cfg: it answers the
// first read with the same bytes. It counts the payloads it received.
func secTLSPeer(t *testing.T, cfg *tls.Config) (addr string, received *atomic.Int64) {
	t.Helper()
	received = new(atomic.Int64)
	addr = servertest.Peer(t, func(c net.Conn) {
		tc := tls.Server(c, cfg)
		if err := tc.Handshake(); err != nil {
			return
		}
		buf := make([]byte, 1024)
		n, err := tc.Read(buf)
		if err != nil {
			return
		}
		received.Add(1)
		_, _ = tc.Write(buf[:n])
	})
	return addr, received
}

// TestTLSSend: Send to an address speaks TLS with Send.tls, verifying the
// peer against the given CA or the system's, and presents a client
// certificate when given one.
func TestTLSSend(t *testing.T) {
	pki := secNewPKI(t)
	g := servertest.Start(t, server.Config{TLSFilesDir: filepath.Dir(pki.caFile)})
	serverCert := servertest.KeyPair(t, pki.serverCert, pki.serverKey)
	addr, received := secTLSPeer(t, &tls.Config{Certificates: []tls.Certificate{serverCert}})
	mutualAddr, mutualReceived := secTLSPeer(t, &tls.Config{
		Certificates: []tls.Certificate{serverCert}, ClientCAs: pki.ca.Pool(), ClientAuth: tls.RequireAndVerifyClientCert,
	})
	clientCert, clientKey := pki.ca.Issue(t, "tcpgate", nil, nil, true)
	// Next to the CA, in the one directory --tls-files-dir allows.
	files := map[string]string{}
	for name, b := range map[string][]byte{"client.pem": clientCert, "client-key.pem": clientKey} {
		files[name] = filepath.Join(filepath.Dir(pki.caFile), name)
		if err := os.WriteFile(files[name], b, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	send := func(t *testing.T, to string, dt *tcpgatev1.DialTLS) (*tcpgatev1.SendResponse, error) {
		t.Helper()
		return g.Client.Send(servertest.Context(t), &tcpgatev1.SendRequest{
			Target:     &tcpgatev1.SendRequest_Address{Address: to},
			Payload:    &tcpgatev1.SendRequest_Text{Text: "over tls"},
			AwaitReply: &tcpgatev1.AwaitReply{Mode: tcpgatev1.AwaitMode_AWAIT_MODE_FIRST_READ},
			Tls:        dt,
		})
	}
	works := func(t *testing.T, to string, dt *tcpgatev1.DialTLS) {
		t.Helper()
		resp, err := send(t, to, dt)
		if err != nil {
			t.Fatalf("Send: %v", err)
		}
		if resp.GetReply().GetText() != "over tls" {
			t.Fatalf("reply %q, want the echo %q", resp.GetReply().GetText(), "over tls")
		}
	}
	// A refused peer gets no payload: verification fails before any is
	// written.
	fails := func(t *testing.T, to string, dt *tcpgatev1.DialTLS, code codes.Code, msg string) {
		t.Helper()
		before := received.Load()
		_, err := send(t, to, dt)
		servertest.WantCode(t, err, code)
		if m := status.Convert(err).Message(); !strings.Contains(m, msg) {
			t.Errorf("message %q does not mention %q", m, msg)
		}
		if n := received.Load() - before; n != 0 {
			t.Errorf("the peer received %d payloads over the refused connection", n)
		}
	}

	t.Run("CA", func(t *testing.T) { works(t, addr, &tcpgatev1.DialTLS{CaPem: string(pki.ca.CertPEM)}) })
	t.Run("CA file", func(t *testing.T) { works(t, addr, &tcpgatev1.DialTLS{CaFile: pki.caFile}) })
	t.Run("system roots", func(t *testing.T) {
		fails(t, addr, &tcpgatev1.DialTLS{}, codes.Unavailable, "TLS handshake")
	})
	t.Run("another CA", func(t *testing.T) {
		fails(t, addr, &tcpgatev1.DialTLS{CaPem: string(servertest.NewCA(t).CertPEM)}, codes.Unavailable, "TLS handshake")
	})
	t.Run("insecure skip verify", func(t *testing.T) { works(t, addr, &tcpgatev1.DialTLS{InsecureSkipVerify: true}) })
	t.Run("server name mismatch", func(t *testing.T) {
		fails(t, addr, &tcpgatev1.DialTLS{CaPem: string(pki.ca.CertPEM), ServerName: "other.example"}, codes.Unavailable, "TLS handshake")
	})
	t.Run("server name match", func(t *testing.T) {
		works(t, addr, &tcpgatev1.DialTLS{CaPem: string(pki.ca.CertPEM), ServerName: "localhost"})
	})
	t.Run("plain peer", func(t *testing.T) {
		plain := servertest.Peer(t, func(c net.Conn) { _, _ = io.Copy(c, c) })
		_, err := send(t, plain, &tcpgatev1.DialTLS{CaPem: string(pki.ca.CertPEM)})
		if err == nil {
			t.Fatal("a TLS Send to a plain TCP peer succeeded")
		}
	})
	t.Run("mutual with a client certificate", func(t *testing.T) {
		works(t, mutualAddr, &tcpgatev1.DialTLS{CaPem: string(pki.ca.CertPEM), CertPem: string(clientCert), KeyPem: string(clientKey)})
	})
	t.Run("mutual with certificate files", func(t *testing.T) {
		works(t, mutualAddr, &tcpgatev1.DialTLS{CaFile: pki.caFile, CertFile: files["client.pem"], KeyFile: files["client-key.pem"]})
	})
	t.Run("mutual without a client certificate", func(t *testing.T) {
		before := mutualReceived.Load()
		_, err := send(t, mutualAddr, &tcpgatev1.DialTLS{CaPem: string(pki.ca.CertPEM)})
		servertest.WantCode(t, err, codes.Unavailable)
		if n := mutualReceived.Load() - before; n != 0 {
			t.Errorf("the peer accepted %d payloads from a client without a certificate", n)
		}
	})

	t.Run("invalid", func(t *testing.T) {
		for _, tc := range []struct {
			name  string
			req   *tcpgatev1.SendRequest
			field string
		}{
			{"connection target", &tcpgatev1.SendRequest{
				Target:  &tcpgatev1.SendRequest_ConnectionId{ConnectionId: "c1"},
				Payload: &tcpgatev1.SendRequest_Text{Text: "x"},
				Tls:     &tcpgatev1.DialTLS{InsecureSkipVerify: true},
			}, "tls"},
			{"listener target", &tcpgatev1.SendRequest{
				Target:  &tcpgatev1.SendRequest_ListenerId{ListenerId: "l1"},
				Payload: &tcpgatev1.SendRequest_Text{Text: "x"},
				Tls:     &tcpgatev1.DialTLS{},
			}, "tls"},
			{"bad CA", &tcpgatev1.SendRequest{
				Target:  &tcpgatev1.SendRequest_Address{Address: addr},
				Payload: &tcpgatev1.SendRequest_Text{Text: "x"},
				Tls:     &tcpgatev1.DialTLS{CaPem: "nope"},
			}, "tls.ca_pem"},
			{"certificate without key", &tcpgatev1.SendRequest{
				Target:  &tcpgatev1.SendRequest_Address{Address: addr},
				Payload: &tcpgatev1.SendRequest_Text{Text: "x"},
				Tls:     &tcpgatev1.DialTLS{CertPem: string(clientCert)},
			}, "tls"},
			{"bad certificate", &tcpgatev1.SendRequest{
				Target:  &tcpgatev1.SendRequest_Address{Address: addr},
				Payload: &tcpgatev1.SendRequest_Text{Text: "x"},
				Tls:     &tcpgatev1.DialTLS{CertPem: "nope", KeyPem: string(clientKey)},
			}, "tls.cert_pem"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				_, err := g.Client.Send(servertest.Context(t), tc.req)
				servertest.WantCode(t, err, codes.InvalidArgument)
				if msg := status.Convert(err).Message(); !strings.HasPrefix(msg, tc.field) {
					t.Errorf("message %q does not name %s", msg, tc.field)
				}
			})
		}
	})
}

// TestPolicy: the listen and dial policy refuses with PermissionDenied (403
// over REST) naming the rule, before binding or dialing.
func TestPolicy(t *testing.T) {
	// A peer that counts connections: refused sends must not reach it.
	var reached atomic.Int64
	target := servertest.Peer(t, func(c net.Conn) {
		reached.Add(1)
		buf := make([]byte, 64)
		n, _ := c.Read(buf)
		_, _ = c.Write(buf[:n])
	})
	_, port, _ := net.SplitHostPort(target)
	send := func(t *testing.T, g *servertest.Gateway, addr string) error {
		t.Helper()
		_, err := g.Client.Send(servertest.Context(t), &tcpgatev1.SendRequest{
			Target:     &tcpgatev1.SendRequest_Address{Address: addr},
			Payload:    &tcpgatev1.SendRequest_Text{Text: "x"},
			AwaitReply: &tcpgatev1.AwaitReply{Mode: tcpgatev1.AwaitMode_AWAIT_MODE_FIRST_READ},
		})
		return err
	}
	denied := func(t *testing.T, err error, mentions ...string) {
		t.Helper()
		servertest.WantCode(t, err, codes.PermissionDenied)
		msg := status.Convert(err).Message()
		for _, m := range mentions {
			if !strings.Contains(msg, m) {
				t.Errorf("message %q does not mention %q", msg, m)
			}
		}
	}
	listen := func(t *testing.T, g *servertest.Gateway, host string, port uint32) error {
		t.Helper()
		_, err := g.Client.StartListener(servertest.Context(t), &tcpgatev1.StartListenerRequest{Host: host, Port: port})
		return err
	}

	t.Run("deny dial", func(t *testing.T) {
		g := servertest.Start(t, server.Config{DenyDial: "127.0.0.2/32"})
		before := reached.Load()
		denied(t, send(t, g, "127.0.0.2:"+port), `--deny-dial rule "127.0.0.2`)
		if err := send(t, g, target); err != nil {
			t.Errorf("Send to %s, not denied: %v", target, err)
		}
		if got := reached.Load() - before; got != 1 {
			t.Errorf("the peer saw %d connections, want 1 (the allowed send)", got)
		}
	})

	t.Run("deny dial by resolved address", func(t *testing.T) {
		g := servertest.Start(t, server.Config{DenyDial: "127.0.0.0/8,::1/128"})
		before := reached.Load()
		denied(t, send(t, g, "localhost:"+port), "--deny-dial")
		denied(t, send(t, g, target), `--deny-dial rule "127.0.0.0/8`)
		denied(t, send(t, g, "[::ffff:127.0.0.1]:"+port), "--deny-dial")
		if got := reached.Load() - before; got != 0 {
			t.Errorf("the peer saw %d connections from denied sends", got)
		}
	})

	t.Run("default dial policy", func(t *testing.T) {
		g := servertest.Start(t, server.Config{})
		for _, addr := range []string{
			"169.254.169.254:80",
			"[::ffff:169.254.169.254]:80",
			"[fe80::1]:80",
			"[fd00:ec2::254]:80",
			"0.0.0.0:" + port,
			"[::]:" + port,
		} {
			t.Run(addr, func(t *testing.T) { denied(t, send(t, g, addr), "denied by the built-in rule") })
		}
		if err := send(t, g, target); err != nil {
			t.Errorf("Send to loopback under the default policy: %v", err)
		}
	})

	t.Run("allow dial", func(t *testing.T) {
		g := servertest.Start(t, server.Config{AllowDial: "127.0.0.1:" + port + ",*:1"})
		if err := send(t, g, target); err != nil {
			t.Errorf("Send to the allowed %s: %v", target, err)
		}
		other := refusedPort(t)
		denied(t, send(t, g, "127.0.0.1:"+other), "--allow-dial")
		// "*" does not open the metadata range.
		denied(t, send(t, g, "169.254.169.254:1"), "169.254.0.0/16")
	})

	t.Run("allow listen", func(t *testing.T) {
		g := servertest.Start(t, server.Config{AllowListen: "127.0.0.1:20000-30000"})
		// Port 0 takes a free port inside the rule, not the kernel's pick.
		for range 5 {
			resp, err := g.Client.StartListener(servertest.Context(t), &tcpgatev1.StartListenerRequest{Host: "127.0.0.1"})
			if err != nil {
				t.Fatalf("StartListener 127.0.0.1:0: %v", err)
			}
			_, p, _ := net.SplitHostPort(resp.GetListener().GetAddress())
			if n, _ := strconv.Atoi(p); n < 20000 || n > 30000 {
				t.Errorf("port 0 bound %s, outside --allow-listen 127.0.0.1:20000-30000", resp.GetListener().GetAddress())
			}
		}
		denied(t, listen(t, g, "127.0.0.1", 1234), "--allow-listen", "127.0.0.1:20000-30000")
		denied(t, listen(t, g, "", 0), "--allow-listen")
		denied(t, listen(t, g, "0.0.0.0", 0), "--allow-listen")
		denied(t, listen(t, g, "::1", 0), "--allow-listen")
		denied(t, listen(t, g, "localhost", 0), "--allow-listen")
	})

	t.Run("default listen policy", func(t *testing.T) {
		g := servertest.Start(t, server.Config{})
		denied(t, listen(t, g, "127.0.0.1", 80), "--allow-listen", "1024-65535")
		denied(t, listen(t, g, "127.0.0.1", 1023), "--allow-listen")
		if err := listen(t, g, "127.0.0.1", 0); err != nil {
			t.Errorf("StartListener 127.0.0.1:0: %v", err)
		}
	})

	t.Run("REST 403", func(t *testing.T) {
		g := servertest.Start(t, server.Config{HTTPAddr: "127.0.0.1:0"})
		tr := &http.Transport{Proxy: nil}
		t.Cleanup(tr.CloseIdleConnections)
		hc := &http.Client{Transport: tr, Timeout: wait}
		for _, tc := range []struct{ path, body string }{
			{"/v1/send", `{"address":"169.254.169.254:80","text":"x"}`},
			{"/v1/listeners", `{"host":"127.0.0.1","port":80}`},
		} {
			resp, err := hc.Post(g.BaseURL+tc.path, "application/json", strings.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(b), `"code":7`) {
				t.Errorf("POST %s %s = %d %s, want 403 with code 7", tc.path, tc.body, resp.StatusCode, b)
			}
		}
	})
}

// refusedPort returns a port on 127.0.0.1 nobody listens on.
func refusedPort(t *testing.T) string {
	t.Helper()
	_, port, _ := net.SplitHostPort(servertest.RefusedAddr(t))
	return port
}

// TestTokenNeverLogged: at debug level, with calls that succeed, fail
// authentication and fail otherwise, the logs hold neither the token, nor a
// wrong token, nor payload bytes.
func TestTokenNeverLogged(t *testing.T) {
	const (
		token   = "tok-4d2c9a7e-never-logged"
		wrong   = "wrongtoken123"
		payload = "PAYLOAD-MARKER-42"
	)
	var logs servertest.LogSink
	for _, format := range []string{"text", "json"} {
		t.Run(format, func(t *testing.T) {
			var h slog.Handler = slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})
			if format == "json" {
				h = slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})
			}
			g := servertest.Start(t, server.Config{AuthToken: token, HTTPAddr: "127.0.0.1:0", Logger: slog.New(h), DenyDial: "127.0.0.2/32"})
			secDriveWithSecrets(t, g, token, wrong, payload)
			if err := g.Stop(); err != nil {
				t.Fatalf("stopping: %v", err)
			}
		})
	}
	out := logs.String()
	if !strings.Contains(out, "rpc failed") || !strings.Contains(out, "Unauthenticated") {
		t.Fatalf("the logs lack the failed calls, so this test shows nothing:\n%s", out)
	}
	for _, secret := range []string{token, wrong, payload, base64.StdEncoding.EncodeToString([]byte(payload))} {
		if strings.Contains(out, secret) {
			t.Errorf("the logs contain %q:\n%s", secret, out)
		}
	}
}

// secDriveWithSecrets makes calls carrying token, a wrong token and payload
// over gRPC and REST: successes, authentication failures, other failures,
// sends that reach a listener (so events carry the payload) and sends that
// fail.
func secDriveWithSecrets(t *testing.T, g *servertest.Gateway, token, wrong, payload string) {
	t.Helper()
	good := secConn(t, g.Server.GRPCAddr(), insecure.NewCredentials(), grpc.WithPerRPCCredentials(secBearer(token)))
	api := tcpgatev1.NewGatewayServiceClient(good)
	bad := tcpgatev1.NewGatewayServiceClient(secConn(t, g.Server.GRPCAddr(), insecure.NewCredentials(), grpc.WithPerRPCCredentials(secBearer(wrong))))

	// A subscriber that sees the payload in events.
	ctx, cancel := context.WithCancel(servertest.Context(t))
	defer cancel()
	sub, err := api.Subscribe(ctx, &tcpgatev1.SubscribeRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sub.Header(); err != nil {
		t.Fatal(err)
	}
	resp, err := api.StartListener(servertest.Context(t), &tcpgatev1.StartListenerRequest{
		ListenerId: "secrets", Host: "127.0.0.1",
		AutoReply: &tcpgatev1.AutoReply{Mode: tcpgatev1.AutoReplyMode_AUTO_REPLY_MODE_FIXED, Payload: &tcpgatev1.AutoReply_Text{Text: payload}},
	})
	if err != nil {
		t.Fatalf("StartListener: %v", err)
	}
	laddr := resp.GetListener().GetAddress()
	r, err := api.Send(servertest.Context(t), &tcpgatev1.SendRequest{
		Target:     &tcpgatev1.SendRequest_Address{Address: laddr},
		Payload:    &tcpgatev1.SendRequest_Text{Text: payload},
		AwaitReply: &tcpgatev1.AwaitReply{Mode: tcpgatev1.AwaitMode_AWAIT_MODE_FIRST_READ},
	})
	if err != nil || r.GetReply().GetText() != payload {
		t.Fatalf("Send = %v, %v", r, err)
	}
	for seen := false; !seen; {
		b, err := sub.Recv()
		if err != nil {
			t.Fatalf("Subscribe: %v", err)
		}
		for _, e := range b.GetEvents() {
			seen = seen || e.GetText() == payload
		}
	}

	// Failures, each with the payload or a token in the request.
	failing := []*tcpgatev1.SendRequest{
		{Target: &tcpgatev1.SendRequest_Address{Address: "127.0.0.1:" + refusedPort(t)}, Payload: &tcpgatev1.SendRequest_Text{Text: payload}},
		{Target: &tcpgatev1.SendRequest_Address{Address: "127.0.0.2:9"}, Payload: &tcpgatev1.SendRequest_Text{Text: payload}},
		{Target: &tcpgatev1.SendRequest_ConnectionId{ConnectionId: "nope"}, Payload: &tcpgatev1.SendRequest_Text{Text: payload}},
		{Target: &tcpgatev1.SendRequest_Address{Address: laddr}, Payload: &tcpgatev1.SendRequest_Text{Text: payload}, Tls: &tcpgatev1.DialTLS{CaPem: payload}},
		{Target: &tcpgatev1.SendRequest_Address{Address: laddr}, Payload: &tcpgatev1.SendRequest_Text{Text: payload}, Tls: &tcpgatev1.DialTLS{InsecureSkipVerify: true}},
	}
	for _, req := range failing {
		if _, err := api.Send(servertest.Context(t), req); err == nil {
			t.Errorf("Send %v succeeded, want a failure", req)
		}
	}
	if _, err := bad.Send(servertest.Context(t), &tcpgatev1.SendRequest{
		Target: &tcpgatev1.SendRequest_Address{Address: laddr}, Payload: &tcpgatev1.SendRequest_Text{Text: payload},
	}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("Send with a wrong token: %v", err)
	}
	if _, err := bad.ListListeners(servertest.Context(t), &tcpgatev1.ListListenersRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("ListListeners with a wrong token: %v", err)
	}
	if _, err := api.GetListener(servertest.Context(t), &tcpgatev1.GetListenerRequest{ListenerId: "missing"}); status.Code(err) != codes.NotFound {
		t.Errorf("GetListener missing: %v", err)
	}

	// REST: right, wrong and missing tokens, a send with the payload, and
	// a body that does not parse around it.
	tr := &http.Transport{Proxy: nil}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: wait}
	for _, tc := range []struct{ auth, method, path, body string }{
		{"Bearer " + token, http.MethodGet, "/v1/listeners", ""},
		{"Bearer " + token, http.MethodPost, "/v1/send", `{"address":"` + laddr + `","text":"` + payload + `"}`},
		{"Bearer " + token, http.MethodPost, "/v1/send", `{"address":"` + laddr + `","text":` + payload + `}`},
		{"Bearer " + token, http.MethodPost, "/v1/send", `{"address":"169.254.169.254:80","text":"` + payload + `"}`},
		{"Bearer " + wrong, http.MethodGet, "/v1/listeners", ""},
		{"Bearer " + wrong, http.MethodPost, "/v1/send", `{"address":"` + laddr + `","text":"` + payload + `"}`},
		{"Basic " + wrong, http.MethodGet, "/v1/events", ""},
		{"", http.MethodGet, "/metrics", ""},
	} {
		var body io.Reader
		if tc.body != "" {
			body = strings.NewReader(tc.body)
		}
		req, err := http.NewRequestWithContext(servertest.Context(t), tc.method, g.BaseURL+tc.path, body)
		if err != nil {
			t.Fatal(err)
		}
		if body != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		if tc.auth != "" {
			req.Header.Set("Authorization", tc.auth)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", tc.method, tc.path, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	if _, err := api.StopListener(servertest.Context(t), &tcpgatev1.StopListenerRequest{ListenerId: "secrets"}); err != nil {
		t.Errorf("StopListener: %v", err)
	}
}
