package gateway

// An internal test, for strictJSON and strictQuery are unexported; the
// package's TestMain (main_test.go, package gateway_test) and its goleak
// check cover it, since both packages build into one test binary.

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/grpc-ecosystem/grpc-gateway/v2/utilities"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server/rpc"
)

// fuzzJSONPb is the marshaler New gives strictJSON.
func fuzzJSONPb() *runtime.JSONPb {
	return &runtime.JSONPb{
		MarshalOptions:   marshalOptions,
		UnmarshalOptions: protojson.UnmarshalOptions{DiscardUnknown: false},
	}
}

// fuzzBodyMessage returns an empty message of a type that a REST route
// takes as its body ("body: *" in gateway_http.yaml).
func fuzzBodyMessage(send bool) proto.Message {
	if send {
		return &tcpgatev1.SendRequest{}
	}
	return &tcpgatev1.StartListenerRequest{}
}

// FuzzDecodeBody: a request body never makes strictJSON panic. A body that
// is only whitespace is an empty request (io.EOF). A body it accepts, the
// plain protojson decoder accepts too, into the same message (strictJSON is
// never laxer), and that message encodes as the API's JSON and decodes
// back to itself. A body that is one JSON object with a single field of the
// message, which it refuses, gets an error that names that field.
func FuzzDecodeBody(f *testing.F) {
	seeds := []string{
		``, ` `, `{}`, `null`, `[]`, `"x"`, `{} x`, `{"a":1}{}`,
		`{"host": "127.0.0.1", "port": 0}`,
		`{"port": "0"}`, `{"port": 65536}`, `{"port": -1}`, `{"port": 1.5}`, `{"port": 4294967296}`,
		`{"listenerId": "a", "listener_id": "b"}`, `{"host": "a", "host": "b"}`,
		`{"framing": {"mode": "FRAMING_MODE_LENGTH_PREFIX", "prefixBytes": 2, "littleEndian": true}}`,
		`{"framing": {"mode": 99, "delimiter": "DQo="}}`, `{"framing": {"mode": "NOPE"}}`,
		`{"framing": {"bogus": 1}}`, `{"framing": "FRAMING_MODE_LINE"}`,
		`{"autoReply": {"mode": "AUTO_REPLY_MODE_FIXED", "text": "hi", "data": "AQ=="}}`,
		`{"idleTimeout": "1.5s"}`, `{"idleTimeout": "5x"}`, `{"idleTimeout": {"seconds": 1}}`,
		`{"tls": {"certPem": "x"}}`,
		`{"hots": "127.0.0.1"}`, `{"\u0070ort": "x"}`,
	}
	for _, s := range seeds {
		f.Add([]byte(s), false)
	}
	for _, s := range []string{
		`{"address": "127.0.0.1:9", "text": "x"}`,
		`{"address": "127.0.0.1:9", "text": "x", "data": "eA=="}`,
		`{"connectionId": "c1", "data": "not base64!"}`,
		`{"listenerId": "l", "text": "x", "awaitReply": {"mode": "AWAIT_MODE_FRAME", "framing": {"mode": "FRAMING_MODE_LINE"}}}`,
		`{"timeout": "-1s"}`, `{"timeout": "315576000001s"}`, `{"timeout": "1.0000000001s"}`,
		`{"text": 5}`, `{"text": "\ud800"}`,
	} {
		f.Add([]byte(s), true)
	}

	dec := strictJSON{fuzzJSONPb()}
	f.Fuzz(func(t *testing.T, body []byte, send bool) {
		msg := fuzzBodyMessage(send)
		err := dec.NewDecoder(bytes.NewReader(body)).Decode(msg)

		if len(bytes.Trim(body, " \t\r\n")) == 0 {
			if !errors.Is(err, io.EOF) {
				t.Fatalf("blank body %q: %v, want io.EOF", body, err)
			}
			return
		}
		if errors.Is(err, io.EOF) {
			t.Fatalf("body %q is not blank, yet it is taken for an empty request", body)
		}
		if err != nil {
			if err.Error() == "" {
				t.Fatalf("body %q: an empty error", body)
			}
			if k, ok := fuzzOneField(msg.ProtoReflect().Descriptor(), body); ok && !strings.Contains(err.Error(), k) {
				t.Fatalf("body %q: error %q does not name its one field %q", body, err, k)
			}
			return
		}

		plain := fuzzBodyMessage(send)
		if perr := (protojson.UnmarshalOptions{}).Unmarshal(body, plain); perr != nil {
			t.Fatalf("body %q: strictJSON accepted %v, protojson refuses it: %v", body, msg, perr)
		}
		if !proto.Equal(msg, plain) {
			t.Fatalf("body %q: strictJSON decoded %v, protojson %v", body, msg, plain)
		}

		enc, err := marshalOptions.Marshal(msg)
		if err != nil {
			t.Fatalf("body %q: decoded %v does not encode: %v", body, msg, err)
		}
		again := fuzzBodyMessage(send)
		if err := dec.NewDecoder(bytes.NewReader(enc)).Decode(again); err != nil {
			t.Fatalf("body %q: decoded %v, encoded %s, which does not decode: %v", body, msg, enc, err)
		}
		if !proto.Equal(msg, again) {
			t.Fatalf("body %q: decoded %v, encoded %s, decoded again %v", body, msg, enc, again)
		}
	})
}

// fuzzOneField returns the key of body when body is a JSON object with
// exactly one member whose key names a field of md: a failure to decode it
// can only be that field's.
func fuzzOneField(md protoreflect.MessageDescriptor, body []byte) (string, bool) {
	d := json.NewDecoder(bytes.NewReader(body))
	if tok, err := d.Token(); err != nil || tok != json.Delim('{') {
		return "", false
	}
	tok, err := d.Token()
	key, ok := tok.(string)
	if err != nil || !ok || fieldByName(md, key) == nil {
		return "", false
	}
	var value json.RawMessage
	if err := d.Decode(&value); err != nil {
		return "", false
	}
	if tok, err := d.Token(); err != nil || tok != json.Delim('}') {
		return "", false
	}
	if _, err := d.Token(); err != io.EOF {
		return "", false // something after the object
	}
	return key, true
}

// fuzzQueryRoute returns an empty message of a type that a REST route
// fills from its query, with index choosing which, and that route as
// routeQuery names it.
func fuzzQueryRoute(index uint8) (proto.Message, string) {
	switch index % 7 {
	case 0:
		return &tcpgatev1.SubscribeRequest{}, "GET /v1/events"
	case 1:
		return &tcpgatev1.ListConnectionsRequest{}, "GET /v1/connections"
	case 3:
		return &tcpgatev1.GetListenerRequest{}, "GET /v1/listeners/{listener_id=*}"
	case 4:
		return &tcpgatev1.ListListenersRequest{}, "GET /v1/listeners"
	case 5:
		return &tcpgatev1.GetConnectionRequest{}, "GET /v1/connections/{connection_id=*}"
	case 6:
		return &tcpgatev1.CloseConnectionRequest{}, "DELETE /v1/connections/{connection_id=*}"
	}
	return &tcpgatev1.StopListenerRequest{}, "DELETE /v1/listeners/{listener_id=*}"
}

// FuzzParseQuery: a query string never makes strictQuery or checkParams
// panic; checkParams refuses a query that is not valid UTF-8, and passes
// a query only if strictQuery finds every parameter a field (so no route
// ignores a parameter, whether or not its generated handler parses the
// query); a query
// with parameters that name no field is refused, naming the first of them
// in sorted order (quoted, so the same query always gets the same error); and a refused query
// of one parameter names that parameter, as the caller spelt it or by its
// field's proto name.
func FuzzParseQuery(f *testing.F) {
	for _, s := range []string{
		"", "kinds=EVENT_KIND_DATA&kinds=EVENT_KIND_CONNECTION_OPENED", "kinds=99", "kinds=-1", "kinds=EVENT_KIND_NOPE",
		"kind=EVENT_KIND_DATA", "sinceSequence=18446744073709551616", "since_sequence=1", "slowConsumer=SLOW_CONSUMER_POLICY_DISCONNECT",
		"listenerIds=a&listenerIds=b", "sinceSequence=1&sinceSequence=2", "kinds.x=1", "=1", "a=%zz",
		"includeSent=true", "include_sent=1", "includeSent=false&includeSent=true", "includeSent=yes", "includeSent.x=true",
	} {
		f.Add(s, uint8(0))
	}
	for _, s := range []string{"listenerId=keep", "listenerID=keep", "listener_id=", "listenerId=a&listenerId=b"} {
		f.Add(s, uint8(1))
	}
	for _, s := range []string{"drainTimeout=1m30s", "drainTimeout=-1s", "drainTimeout=5", "drainTimeout.seconds=5", "drainTimeout.nanos=-1", "drainTimout=5s"} {
		f.Add(s, uint8(2))
	}

	for _, s := range []string{"", "bogus=1", "listenerId=%FF", "%FF=1", "listener_id=x", "state=LISTENING"} {
		f.Add(s, uint8(3))
		f.Add(s, uint8(4))
	}
	for _, s := range []string{"", "connectionId=c-abcdefghij", "verbose=1", "pageSize=2", "origins=ORIGIN_ACCEPTED"} {
		f.Add(s, uint8(5))
		f.Add(s, uint8(6))
	}

	f.Fuzz(func(t *testing.T, query string, index uint8) {
		msg, route := fuzzQueryRoute(index)
		md := msg.ProtoReflect().Descriptor()
		path := map[string]string{}
		if strings.Contains(route, "{listener_id=*}") {
			path["listener_id"] = "keep"
		}
		if strings.Contains(route, "{connection_id=*}") {
			path["connection_id"] = "c-abcdefghij"
		}
		checked := checkParams(route, query, path)
		values, err := url.ParseQuery(query)
		if err != nil {
			if checked == nil {
				t.Fatalf("query %q is malformed (%v), yet checkParams passed it", query, err)
			}
			return // net/http answers 400 before the gateway sees it
		}
		if !utf8.ValidString(query) {
			unescaped := false
			for k, vs := range values {
				unescaped = unescaped || !utf8.ValidString(k) || slices.ContainsFunc(vs, func(v string) bool { return !utf8.ValidString(v) })
			}
			if unescaped && (checked == nil || !strings.Contains(checked.Error(), "UTF-8")) {
				t.Fatalf("query %q is not valid UTF-8, yet checkParams says %v", query, checked)
			}
		}
		if checked == nil {
			for key := range values {
				if checkPath(md, key) != nil {
					t.Fatalf("query %q: checkParams passed %q, which names no field of %s", query, key, md.Name())
				}
			}
		}
		err = (&strictQuery{}).Parse(msg, values, utilities.NewDoubleArray(nil))
		for _, key := range slices.Sorted(maps.Keys(values)) {
			if checkPath(md, key) == nil {
				continue
			}
			if err == nil || !strings.Contains(err.Error(), rpc.Quote(key)) {
				t.Fatalf("query %q: parameter %q names no field of %s, yet the error is %v", query, key, md.Name(), err)
			}
			break // the first unknown parameter is the one named
		}
		if err == nil || len(values) != 1 {
			return
		}
		for key := range values {
			names := []string{key}
			if i := strings.LastIndexByte(key, '.'); i >= 0 {
				names = append(names, key[i+1:])
			}
			if fd := fieldByNamePath(md, key); fd != nil {
				names = append(names, string(fd.Name()))
			}
			named := false
			for _, n := range names {
				named = named || strings.Contains(err.Error(), n) || strings.Contains(err.Error(), strconv.Quote(n)) || strings.Contains(err.Error(), rpc.Quote(n))
			}
			if !named {
				t.Fatalf("query %q: error %q names none of %q", query, err, names)
			}
		}
	})
}

// fieldByNamePath resolves a dotted query parameter to its last field, or
// nil when some part names no field.
func fieldByNamePath(md protoreflect.MessageDescriptor, key string) protoreflect.FieldDescriptor {
	var fd protoreflect.FieldDescriptor
	for _, p := range strings.Split(key, ".") {
		if md == nil {
			return nil
		}
		if fd = fieldByName(md, p); fd == nil {
			return nil
		}
		md = fd.Message()
	}
	return fd
}
