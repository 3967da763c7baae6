// Package config reads tcpgate's config file (serve --config): YAML that
// declares listeners (each a StartListenerRequest), outbound connections
// (each a ConnectRequest) and the daemon's flags (serve:), under the API's
// JSON field names (proto names are accepted too, as protojson accepts
// them), so that a listener moves from a curl call into the file
// unchanged.
//
// A File is the decoded tcpgatev1.Config and an index from every field's
// path to its line, so that an error found later, by the API's
// translation or by the engine, names the file, the line and the field as
// a decoding error does. Paths of TLS files are resolved relative to the
// file's directory: the file is the operator's, its paths are trusted.
//
// The package only reads; Declared (declared.go) starts what a File
// declares through the API's own translation, and applies a reload's
// difference.
package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"buf.build/go/protoyaml"
	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/reflect/protoreflect"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
)

// MaxFileBytes bounds a config file: a few thousand listeners fit in far
// less, and a file read whole must not be a way to exhaust memory.
const MaxFileBytes = 4 << 20

// Error is a config file's error: where it is and what is wrong. Line is
// 0 when the error is of the whole file.
type Error struct {
	// File is the config file's path, as given.
	File string
	// Line is the 1-based line of the field; 0 for the whole file.
	Line int
	// Field is the field's path by proto names
	// (listeners[1].auto_reply.rules[2].regex); empty for the whole file.
	Field string
	// Msg says what is wrong.
	Msg string
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	b.WriteString(": ")
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// File is a loaded config file.
type File struct {
	// Path is the file's path as given.
	Path string
	// Dir is the directory relative paths in it are resolved against.
	Dir string
	// Config is what it declares, TLS paths made absolute.
	Config *tcpgatev1.Config
	// Serve is its serve: section, flag name to values (one value but for
	// a list), in the file's order.
	Serve []Flag

	lines  map[string]int // field path (proto names) -> its key's line
	values map[string]int // field path -> its value's line
}

// Flag is one key of the serve: section.
type Flag struct {
	// Name is the flag's name (grpc-addr).
	Name string
	// Values are its values: one for a scalar, each item of a list.
	Values []string
	// Line is the key's line.
	Line int
}

// Load reads and decodes the config file at path.
func Load(path string) (*File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, &Error{File: path, Msg: fmt.Sprintf("reading the config file: %v", errors.Unwrap(err))}
	}
	defer f.Close()
	b := make([]byte, MaxFileBytes+1)
	n := 0
	for n < len(b) {
		m, err := f.Read(b[n:])
		n += m
		if err != nil {
			break
		}
	}
	if n > MaxFileBytes {
		return nil, &Error{File: path, Msg: fmt.Sprintf("larger than %d bytes", MaxFileBytes)}
	}
	dir, err := filepath.Abs(filepath.Dir(path))
	if err != nil {
		return nil, &Error{File: path, Msg: fmt.Sprintf("resolving its directory: %v", err)}
	}
	return Parse(path, dir, b[:n])
}

// Parse decodes data, the config file named path whose relative paths
// are resolved against dir.
func Parse(path, dir string, data []byte) (*File, error) {
	file := &File{Path: path, Dir: dir, Config: &tcpgatev1.Config{}, lines: make(map[string]int), values: make(map[string]int)}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, yamlError(path, err)
	}
	if doc.Kind == 0 {
		return file, nil // empty: declares nothing
	}
	root := &doc
	if root.Kind == yaml.DocumentNode {
		if len(root.Content) != 1 {
			return nil, &Error{File: path, Msg: "expected one YAML document"}
		}
		root = root.Content[0]
	}
	if root.Kind != yaml.MappingNode {
		return nil, &Error{File: path, Line: root.Line, Msg: "expected a mapping of listeners, connections and serve"}
	}
	file.index(root, file.Config.ProtoReflect().Descriptor(), "")
	if err := (protoyaml.UnmarshalOptions{Path: path}).Unmarshal(data, file.Config); err != nil {
		return nil, file.decodeError(err)
	}
	if err := file.check(); err != nil {
		return nil, err
	}
	if err := file.readServe(root); err != nil {
		return nil, err
	}
	file.resolvePaths()
	return file, nil
}

var yamlLine = regexp.MustCompile(`line (\d+)`)

// yamlError is a YAML syntax error as an Error with its line.
func yamlError(path string, err error) error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	e := &Error{File: path, Msg: msg}
	if m := yamlLine.FindStringSubmatch(msg); m != nil {
		e.Line, _ = strconv.Atoi(m[1])
		e.Msg = strings.TrimSpace(yamlLine.ReplaceAllString(msg, ""))
		e.Msg = strings.TrimPrefix(strings.TrimPrefix(e.Msg, ":"), " ")
	}
	return e
}

// protoyamlPos is how protoyaml starts each error: path:line:column.
var protoyamlPos = regexp.MustCompile(`^.*:(\d+):(\d+) (.*)$`)

// decodeError turns protoyaml's first error into an Error naming the
// field at its line.
func (f *File) decodeError(err error) error {
	first := err
	if j, ok := err.(interface{ Unwrap() []error }); ok && len(j.Unwrap()) > 0 {
		first = j.Unwrap()[0]
	}
	text, _, _ := strings.Cut(first.Error(), "\n")
	m := protoyamlPos.FindStringSubmatch(text)
	if m == nil {
		return &Error{File: f.Path, Msg: text}
	}
	line, _ := strconv.Atoi(m[1])
	return &Error{File: f.Path, Line: line, Field: f.fieldAt(line), Msg: m[3]}
}

// fieldAt returns the deepest field whose key is on line, or else whose
// value starts on it.
func (f *File) fieldAt(line int) string {
	for _, m := range []map[string]int{f.lines, f.values} {
		best := ""
		for p, l := range m {
			if l == line && len(p) > len(best) {
				best = p
			}
		}
		if best != "" {
			return best
		}
	}
	return ""
}

// index records the line of every field under n, a message of desc, by
// proto names whatever name the file used. Unknown keys are left to the
// decoder, which names them.
func (f *File) index(n *yaml.Node, desc protoreflect.MessageDescriptor, prefix string) {
	if n.Kind != yaml.MappingNode {
		return
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		fd := desc.Fields().ByJSONName(k.Value)
		if fd == nil {
			fd = desc.Fields().ByTextName(k.Value)
		}
		if fd == nil {
			f.lines[join(prefix, k.Value)] = k.Line
			continue
		}
		p := join(prefix, string(fd.Name()))
		f.lines[p], f.values[p] = k.Line, v.Line
		msg := fd.Message()
		switch {
		case msg == nil, msg.FullName() == "google.protobuf.Struct", msg.FullName() == "google.protobuf.Duration":
		case fd.IsList() && v.Kind == yaml.SequenceNode:
			for j, item := range v.Content {
				ip := fmt.Sprintf("%s[%d]", p, j)
				f.lines[ip] = item.Line
				f.index(item, msg, ip)
			}
		case !fd.IsList() && !fd.IsMap():
			f.index(v, msg, p)
		}
	}
}

func join(prefix, name string) string {
	if prefix == "" {
		return name
	}
	return prefix + "." + name
}

// Line returns the line of field (a path by proto names), or of the
// nearest field above it that the file sets; 0 when none.
func (f *File) Line(field string) int {
	for p := field; p != ""; p = parent(p) {
		if l, ok := f.lines[p]; ok {
			return l
		}
	}
	return 0
}

// parent drops the last element of a field path: a.b[2].c -> a.b[2] ->
// a.b -> a.
func parent(p string) string {
	i := strings.LastIndexAny(p, ".[")
	if i < 0 {
		return ""
	}
	return p[:i]
}

// FieldError is an Error of field, at its line.
func (f *File) FieldError(field, format string, args ...any) *Error {
	return &Error{File: f.Path, Line: f.Line(field), Field: field, Msg: fmt.Sprintf(format, args...)}
}

// check refuses what the decoder cannot: a declared object without its
// id, and an id declared twice.
func (f *File) check() error {
	seen := make(map[string]string)
	for i, l := range f.Config.GetListeners() {
		field := fmt.Sprintf("listeners[%d].listener_id", i)
		if l.GetListenerId() == "" {
			return f.FieldError(fmt.Sprintf("listeners[%d]", i), "listener_id is required in the config file")
		}
		if prev, ok := seen["l/"+l.GetListenerId()]; ok {
			return f.FieldError(field, "%q is declared twice (first at %s)", l.GetListenerId(), prev)
		}
		seen["l/"+l.GetListenerId()] = fmt.Sprintf("line %d", f.Line(field))
	}
	for i, c := range f.Config.GetConnections() {
		field := fmt.Sprintf("connections[%d].connection_id", i)
		if c.GetConnectionId() == "" {
			return f.FieldError(fmt.Sprintf("connections[%d]", i), "connection_id is required in the config file")
		}
		if prev, ok := seen["c/"+c.GetConnectionId()]; ok {
			return f.FieldError(field, "%q is declared twice (first at %s)", c.GetConnectionId(), prev)
		}
		seen["c/"+c.GetConnectionId()] = fmt.Sprintf("line %d", f.Line(field))
	}
	return nil
}

// readServe reads the serve: section's keys in the file's order, each a
// scalar or a list of scalars.
func (f *File) readServe(root *yaml.Node) error {
	var serve *yaml.Node
	for i := 0; i+1 < len(root.Content); i += 2 {
		if root.Content[i].Value == "serve" {
			serve = root.Content[i+1]
		}
	}
	if serve == nil || serve.Tag == "!!null" {
		return nil
	}
	if serve.Kind != yaml.MappingNode {
		return &Error{File: f.Path, Line: serve.Line, Field: "serve", Msg: "expected a mapping of flag names to values"}
	}
	for i := 0; i+1 < len(serve.Content); i += 2 {
		k, v := serve.Content[i], serve.Content[i+1]
		fl := Flag{Name: k.Value, Line: k.Line}
		switch v.Kind {
		case yaml.ScalarNode:
			if v.Tag != "!!null" {
				fl.Values = []string{v.Value}
			}
		case yaml.SequenceNode:
			fl.Values = []string{}
			for _, item := range v.Content {
				if item.Kind != yaml.ScalarNode {
					return &Error{File: f.Path, Line: item.Line, Field: "serve." + k.Value, Msg: "expected a scalar in the list"}
				}
				fl.Values = append(fl.Values, item.Value)
			}
		default:
			return &Error{File: f.Path, Line: v.Line, Field: "serve." + k.Value, Msg: "expected a scalar or a list of scalars"}
		}
		f.Serve = append(f.Serve, fl)
	}
	return nil
}

// resolvePaths makes every TLS file path absolute, relative to f.Dir.
func (f *File) resolvePaths() {
	abs := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(f.Dir, *p)
		}
	}
	dial := func(t *tcpgatev1.DialTLS) {
		if t == nil {
			return
		}
		abs(&t.CaFile)
		abs(&t.CertFile)
		abs(&t.KeyFile)
	}
	for _, l := range f.Config.GetListeners() {
		if t := l.GetTls(); t != nil {
			abs(&t.CertFile)
			abs(&t.KeyFile)
			abs(&t.ClientCaFile)
		}
		dial(l.GetForward().GetTls())
	}
	for _, c := range f.Config.GetConnections() {
		dial(c.GetTls())
	}
}

// Listener returns the declared listener of id, with its index; nil when
// the file does not declare it.
func (f *File) Listener(id string) (*tcpgatev1.StartListenerRequest, int) {
	for i, l := range f.Config.GetListeners() {
		if l.GetListenerId() == id {
			return l, i
		}
	}
	return nil, -1
}

// Connection returns the declared connection of id, with its index; nil
// when the file does not declare it.
func (f *File) Connection(id string) (*tcpgatev1.ConnectRequest, int) {
	for i, c := range f.Config.GetConnections() {
		if c.GetConnectionId() == id {
			return c, i
		}
	}
	return nil, -1
}

// ServeValues returns the serve: section as flag name to its values, for
// comparing two files' flags.
func (f *File) ServeValues() map[string][]string {
	m := make(map[string][]string, len(f.Serve))
	for _, fl := range f.Serve {
		m[fl.Name] = fl.Values
	}
	return m
}

// ChangedFlags returns the names of the flags whose values differ
// between old and f (set, changed or removed), sorted.
func (f *File) ChangedFlags(old *File) []string {
	a, b := old.ServeValues(), f.ServeValues()
	var names []string
	for k, v := range b {
		if w, ok := a[k]; !ok || strings.Join(v, "\x00") != strings.Join(w, "\x00") || len(v) != len(w) {
			names = append(names, k)
		}
	}
	for k := range a {
		if _, ok := b[k]; !ok {
			names = append(names, k)
		}
	}
	sort.Strings(names)
	return names
}
