package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/grpc-ecosystem/grpc-gateway/v2/utilities"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/dynamicpb"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server/rpc"
)

// maxBodyBytes bounds a request body: the largest Send payload is 4 MiB by
// default, which base64 grows by a third.
const maxBodyBytes = 8 << 20

// jsonSpace is the whitespace JSON allows around a value (RFC 8259).
// bytes.TrimSpace would also take \v, \f and Unicode spaces, letting a
// body of them pass for an empty one, or trail the object unnoticed.
const jsonSpace = " \t\r\n"

// strictJSON is protojson for request bodies, stricter than grpc-gateway's
// default: an error names the field that is wrong, and anything after the
// JSON object is an error instead of being ignored.
type strictJSON struct {
	*runtime.JSONPb
}

// NewDecoder implements runtime.Marshaler.
func (m strictJSON) NewDecoder(r io.Reader) runtime.Decoder {
	return runtime.DecoderFunc(func(v any) error {
		msg, ok := v.(proto.Message)
		if !ok {
			return m.JSONPb.NewDecoder(r).Decode(v)
		}
		data, err := io.ReadAll(io.LimitReader(r, maxBodyBytes+1))
		if err != nil {
			return fmt.Errorf("reading request body: %w", err)
		}
		if len(data) > maxBodyBytes {
			return fmt.Errorf("request body larger than %d bytes", maxBodyBytes)
		}
		if len(bytes.Trim(data, jsonSpace)) == 0 {
			return io.EOF // an empty body is an empty request
		}
		dec := json.NewDecoder(bytes.NewReader(data))
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return fmt.Errorf("malformed JSON: %v", err)
		}
		if rest := bytes.Trim(data[dec.InputOffset():], jsonSpace); len(rest) > 0 {
			return fmt.Errorf("malformed JSON: unexpected data after the object at byte %d", dec.InputOffset())
		}
		if err := m.Unmarshal(raw, msg); err != nil {
			return fieldError(msg.ProtoReflect().Descriptor(), raw, err, "")
		}
		return nil
	})
}

// protojsonNoise is the position protojson puts in its messages, which says
// nothing to a person looking at their own request.
// (protojson separates words with U+00A0 at random, on purpose.)
var protojsonNoise = regexp.MustCompile(`^proto:[\s\x{a0}]*(syntax error[\s\x{a0}]*)?(\(line \d+:\d+\):[\s\x{a0}]*)?`)

// fieldError finds which field of raw makes it fail to decode as md, by
// decoding one field at a time, and names it: "timeout: invalid
// google.protobuf.Duration value "5x"". It returns err itself, tidied, when
// no single field is to blame.
func fieldError(md protoreflect.MessageDescriptor, raw json.RawMessage, err error, prefix string) error {
	var fields map[string]json.RawMessage
	if json.Unmarshal(raw, &fields) == nil {
		keys := make([]string, 0, len(fields))
		for k := range fields {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			one, _ := json.Marshal(map[string]json.RawMessage{k: fields[k]})
			ferr := unmarshalInto(md, one)
			if ferr == nil {
				continue
			}
			fd := fieldByName(md, k)
			if fd == nil {
				break // unknown field: protojson's own message names it
			}
			path := prefix + k // as the caller spelt it
			if fd.Kind() == protoreflect.MessageKind && !fd.IsList() && !fd.IsMap() && isObject(fields[k]) {
				return fieldError(fd.Message(), fields[k], ferr, path+".")
			}
			return fmt.Errorf("%s: %s", path, protojsonNoise.ReplaceAllString(ferr.Error(), ""))
		}
	}
	msg := protojsonNoise.ReplaceAllString(err.Error(), "")
	if prefix != "" {
		return fmt.Errorf("%s: %s", strings.TrimSuffix(prefix, "."), msg)
	}
	return errors.New(msg)
}

func unmarshalInto(md protoreflect.MessageDescriptor, data []byte) error {
	return (&runtime.JSONPb{}).Unmarshal(data, dynamicpb.NewMessage(md))
}

func isObject(raw json.RawMessage) bool {
	b := bytes.TrimSpace(raw)
	return len(b) > 0 && b[0] == '{'
}

// fieldByName finds a field by its JSON (lowerCamelCase) or proto name.
func fieldByName(md protoreflect.MessageDescriptor, name string) protoreflect.FieldDescriptor {
	if fd := md.Fields().ByJSONName(name); fd != nil {
		return fd
	}
	return md.Fields().ByName(protoreflect.Name(name))
}

// strictQuery parses query parameters as grpc-gateway does, but refuses a
// parameter that names no field, so a misspelt filter is a 400 instead of
// a request that silently does something else.
type strictQuery struct {
	runtime.DefaultQueryParser
}

// Parse implements runtime.QueryParameterParser.
func (q *strictQuery) Parse(msg proto.Message, values url.Values, filter *utilities.DoubleArray) error {
	md := msg.ProtoReflect().Descriptor()
	// In order, so that a query with several wrong parameters always gets
	// the same error.
	for _, key := range slices.Sorted(maps.Keys(values)) {
		if err := checkPath(md, key); err != nil {
			return err
		}
	}
	return q.DefaultQueryParser.Parse(msg, values, filter)
}

func checkPath(md protoreflect.MessageDescriptor, key string) error {
	parts := strings.Split(key, ".")
	for i, p := range parts {
		fd := fieldByName(md, p)
		if fd == nil {
			return fmt.Errorf("query parameter %s: %s has no field %s", rpc.Quote(key), md.Name(), rpc.Quote(p))
		}
		if i < len(parts)-1 {
			if fd.Kind() != protoreflect.MessageKind {
				return fmt.Errorf("query parameter %s: %s is not a message", rpc.Quote(key), rpc.Quote(p))
			}
			md = fd.Message()
		}
	}
	return nil
}

// routeQuery is the request message whose fields each route takes as query
// parameters, by "METHOD pattern" as runtime.HTTPPattern spells it. A
// route not here takes none: its request comes in the JSON body (body "*"
// in gateway_http.yaml) or it has no parameters.
//
// grpc-gateway's generated handlers parse the query only when the request
// has a field that neither the path nor the body binds, so GET
// /v1/listeners and GET /v1/listeners/{listener_id} never saw their query
// and ignored any parameter; checkParams checks every route's query
// itself, the same way, whatever the generator decided.
var routeQuery = map[string]protoreflect.MessageDescriptor{
	"DELETE /v1/listeners/{listener_id=*}":     (&tcpgatev1.StopListenerRequest{}).ProtoReflect().Descriptor(),
	"GET /v1/listeners/{listener_id=*}":        (&tcpgatev1.GetListenerRequest{}).ProtoReflect().Descriptor(),
	"PATCH /v1/listeners/{listener_id=*}":      (&tcpgatev1.UpdateListenerRequest{}).ProtoReflect().Descriptor(),
	"GET /v1/listeners":                        (&tcpgatev1.ListListenersRequest{}).ProtoReflect().Descriptor(),
	"GET /v1/connections":                      (&tcpgatev1.ListConnectionsRequest{}).ProtoReflect().Descriptor(),
	"GET /v1/connections/{connection_id=*}":    (&tcpgatev1.GetConnectionRequest{}).ProtoReflect().Descriptor(),
	"DELETE /v1/connections/{connection_id=*}": (&tcpgatev1.CloseConnectionRequest{}).ProtoReflect().Descriptor(),
	"GET /v1/events":                           (&tcpgatev1.SubscribeRequest{}).ProtoReflect().Descriptor(),
	"GET /healthz":                             (&healthpb.HealthCheckRequest{}).ProtoReflect().Descriptor(),
}

// checkParams runs before every route's handler. It answers 400, naming
// the parameter, when a path parameter or a query parameter is not valid
// UTF-8 (a proto string cannot hold it: it used to fail as a 500 when the
// request was marshaled), when a query parameter names no field of the
// route's request, or one the path already sets.
func (g *Gateway) checkParams(next runtime.HandlerFunc) runtime.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request, pathParams map[string]string) {
		route := r.Method + " "
		if p, ok := runtime.HTTPPattern(r.Context()); ok {
			route += p.String()
		}
		if err := checkParams(route, r.URL.RawQuery, pathParams); err != nil {
			_, out := runtime.MarshalerForRequest(g.mux, r)
			runtime.HTTPError(r.Context(), g.mux, out, w, r, rpc.Status(codes.InvalidArgument, tcpgatev1.ErrorReason_ERROR_REASON_MALFORMED_REQUEST, err.Error(), nil))
			return
		}
		next(w, r, pathParams)
	}
}

// checkParams checks the path parameters and the query of a request to
// route ("GET /v1/listeners/{listener_id=*}"; see routeQuery).
func checkParams(route, rawQuery string, pathParams map[string]string) error {
	for _, k := range slices.Sorted(maps.Keys(pathParams)) {
		if !utf8.ValidString(pathParams[k]) {
			return fmt.Errorf("%s: %s in the path is not valid UTF-8", k, rpc.Quote(pathParams[k]))
		}
	}
	values, err := url.ParseQuery(rawQuery)
	if err != nil {
		return fmt.Errorf("malformed query: %v", err)
	}
	keys := slices.Sorted(maps.Keys(values))
	for _, key := range keys {
		if !utf8.ValidString(key) {
			return fmt.Errorf("query parameter %s: the name is not valid UTF-8", rpc.Quote(key))
		}
		for _, v := range values[key] {
			if !utf8.ValidString(v) {
				return fmt.Errorf("query parameter %s: %s is not valid UTF-8", rpc.Quote(key), rpc.Quote(v))
			}
		}
	}
	md := routeQuery[route]
	for _, key := range keys {
		if md == nil {
			return fmt.Errorf("query parameter %s: %s takes no query parameters", rpc.Quote(key), rpc.Quote(route))
		}
		if err := checkPath(md, key); err != nil {
			return err
		}
		top := fieldByName(md, strings.Split(key, ".")[0])
		if _, inPath := pathParams[string(top.Name())]; inPath {
			return fmt.Errorf("query parameter %s: %s is set by the path", rpc.Quote(key), top.Name())
		}
	}
	return nil
}
