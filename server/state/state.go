// Package state keeps what the API made, as the requests that made it:
// the listeners (with the ports they were bound to) and the outbound
// connections. server/rpc records each change in it (rpc.State) and
// returns once it is saved; with a state file (--state-file) each version
// goes to disk through internal/store's group-commit writer, and the next
// start replays the requests through the same path the API takes.
//
// Each record is one line of the state file: a JSON object with the
// request under "listener" (a StartListenerRequest) or "connection" (a
// ConnectRequest), in protojson under the API's JSON names, the bound
// port under "boundPort", and "keyOmitted" when an inline private key
// was left out.
package state

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strconv"
	"sync"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	tcpgatev1 "github.com/tcpgate/tcpgate/gen/tcpgate/v1"
	"github.com/tcpgate/tcpgate/server/internal/store"
	"github.com/tcpgate/tcpgate/server/rpc"
)

var _ rpc.State = (*State)(nil)

// Kinds of record, as Declared is asked about them.
const (
	KindListener   = "listener"
	KindConnection = "connection"
)

// State is the API-made objects and, with a file, their saving.
type State struct {
	file       *store.File // nil: kept in memory, for ExportConfig
	inlineKeys bool
	log        *slog.Logger
	loaded     [][]byte // the file's records, until Restore
	damage     []string // what Load lost of a damaged file, for the report

	mu      sync.Mutex // guards the fields below
	version uint64
	seq     uint64 // orders records as they were first made
	recs    map[string]*entry
}

// entry is one record: its key ("listener/ID" or "connection/ID"), its
// order, and its line, encoded once when it changes.
type entry struct {
	seq  uint64
	line []byte
	rec  Record
}

// Record is one decoded record of the state file.
type Record struct {
	// Listener or Connection is set.
	Listener   *tcpgatev1.StartListenerRequest
	Connection *tcpgatev1.ConnectRequest
	// BoundPort is the port the listener was bound to, when it asked for
	// port 0.
	BoundPort uint32
	// KeyOmitted says an inline private key was left out of the request
	// (no --state-inline-keys): it cannot be restored.
	KeyOmitted bool
}

// ID is the record's listener or connection id.
func (r Record) ID() string {
	if r.Listener != nil {
		return r.Listener.GetListenerId()
	}
	return r.Connection.GetConnectionId()
}

// Kind is KindListener or KindConnection.
func (r Record) Kind() string {
	if r.Listener != nil {
		return KindListener
	}
	return KindConnection
}

type wire struct {
	Listener   json.RawMessage `json:"listener,omitempty"`
	Connection json.RawMessage `json:"connection,omitempty"`
	BoundPort  uint32          `json:"boundPort,omitempty"`
	KeyOmitted bool            `json:"keyOmitted,omitempty"`
}

// Encode is r's line of the state file.
func Encode(r Record) ([]byte, error) {
	var w wire
	var err error
	switch {
	case r.Listener != nil:
		w.Listener, err = protojson.Marshal(r.Listener)
	case r.Connection != nil:
		w.Connection, err = protojson.Marshal(r.Connection)
	default:
		return nil, errors.New("encoding a state record: neither listener nor connection")
	}
	if err != nil {
		return nil, fmt.Errorf("encoding a state record: %w", err)
	}
	w.BoundPort, w.KeyOmitted = r.BoundPort, r.KeyOmitted
	return json.Marshal(w) // compacts the protojson: one line
}

// Decode parses one line of the state file.
func Decode(line []byte) (Record, error) {
	var w wire
	if err := json.Unmarshal(line, &w); err != nil {
		return Record{}, fmt.Errorf("decoding a state record: %w", err)
	}
	var r Record
	r.BoundPort, r.KeyOmitted = w.BoundPort, w.KeyOmitted
	switch {
	case len(w.Listener) > 0 && len(w.Connection) > 0:
		return Record{}, errors.New("decoding a state record: both listener and connection")
	case len(w.Listener) > 0:
		r.Listener = &tcpgatev1.StartListenerRequest{}
		if err := protojson.Unmarshal(w.Listener, r.Listener); err != nil {
			return Record{}, fmt.Errorf("decoding a state record's listener: %w", err)
		}
		if r.Listener.GetListenerId() == "" {
			return Record{}, errors.New("decoding a state record: listener without listener_id")
		}
	case len(w.Connection) > 0:
		r.Connection = &tcpgatev1.ConnectRequest{}
		if err := protojson.Unmarshal(w.Connection, r.Connection); err != nil {
			return Record{}, fmt.Errorf("decoding a state record's connection: %w", err)
		}
		if r.Connection.GetConnectionId() == "" {
			return Record{}, errors.New("decoding a state record: connection without connection_id")
		}
	default:
		return Record{}, errors.New("decoding a state record: neither listener nor connection")
	}
	return r, nil
}

// New is a State kept in memory only: ExportConfig without --state-file.
func New(log *slog.Logger) *State {
	if log == nil {
		log = slog.Default()
	}
	return &State{log: log, recs: map[string]*entry{}}
}

// Open locks and reads the state file at path: a second gateway on the
// same file is refused here. A damaged file is renamed aside, and what
// could be read of it is restored; the log says what was lost. With
// inlineKeys, inline private keys are saved (the file is 0600 either way).
func Open(path string, inlineKeys bool, log *slog.Logger) (*State, error) {
	st := New(log)
	st.inlineKeys = inlineKeys
	f, err := store.Open(path)
	if err != nil {
		return nil, err
	}
	lines, rep, err := f.Load()
	if err != nil {
		f.Close()
		return nil, err
	}
	if rep.Damaged() {
		st.log.Error("state file damaged: restoring what could be read", "file", f.Path(), "renamed_to", rep.RenamedTo,
			"records_read", len(lines), "lost", rep.Lost)
	}
	if rep.Damaged() {
		st.damage = append(st.damage, fmt.Sprintf("state file damaged: %d records read; renamed aside to %s", len(lines), rep.RenamedTo))
		for _, l := range rep.Lost {
			st.damage = append(st.damage, "lost: "+l)
		}
	}
	st.file, st.loaded = f, lines
	return st, nil
}

// restoreParallel bounds the outbound connections a restore makes at
// once: enough that a few targets that are down do not hold up the rest.
const restoreParallel = 16

// Restorer makes the objects of the state file again, as the API does
// (rpc.Service).
type Restorer interface {
	RestoreListener(ctx context.Context, req *tcpgatev1.StartListenerRequest, port uint32) (*tcpgatev1.Listener, bool, error)
	RestoreConnection(ctx context.Context, req *tcpgatev1.ConnectRequest) (*tcpgatev1.Connection, error)
}

// Report is what a restore did, one line per record that did not come
// back as it was.
type Report struct {
	Restored int
	Lines    []string
}

// Restore makes the file's objects again through r, keeping their ids,
// then starts saving. An object that declared says the config file
// declares is left to the config (it wins); one that fails is reported
// and the rest go on. Call it once, after Open.
func (st *State) Restore(ctx context.Context, r Restorer, declared func(kind, id string) bool) Report {
	var rep Report
	if st.file == nil {
		return rep
	}
	rep.Lines = append(rep.Lines, st.damage...)
	lost := false
	recs := make([]Record, 0, len(st.loaded))
	for i, line := range st.loaded {
		rec, err := Decode(line)
		if err != nil {
			rep.Lines = append(rep.Lines, fmt.Sprintf("record %d not restored: %v", i+1, err))
			lost = true
			continue
		}
		recs = append(recs, rec)
	}
	if restoreRecords(ctx, r, declared, recs, st.log, &rep, func(rec Record, l *tcpgatev1.Listener, _ bool) {
		if l != nil {
			st.PutListener(rec.Listener, l)
		} else {
			st.PutConnection(rec.Connection, rec.ID())
		}
	}) {
		lost = true
	}
	if lost {
		// What did not come back leaves the file at the next write; the
		// file as it was is kept next to it.
		// (A damaged file was renamed aside already: there is none.)
		if aside, err := st.file.CopyAside("unrestored"); err != nil && !errors.Is(err, os.ErrNotExist) {
			st.log.Error("keeping a copy of the state file", "error", err)
		} else if err == nil {
			rep.Lines = append(rep.Lines, "the state file as it was is kept at "+aside)
		}
	}
	st.loaded = nil
	st.file.Start(st.snapshot)
	st.mu.Lock()
	st.version++
	v := st.version
	st.mu.Unlock()
	if err := st.file.Commit(ctx, v); err != nil {
		rep.Lines = append(rep.Lines, "saving the restored state: "+err.Error())
		st.log.Error("saving the restored state", "error", err)
	}
	st.log.Info("state restored", "file", st.file.Path(), "restored", rep.Restored, "report", rep.Lines)
	return rep
}

// restoreRecords makes recs again through r, listeners first, then the
// outbound connections together; what declared says the config file
// declares is left to the config. done is called for each object that
// came back (l is nil for a connection; moved says a listener got a new
// port). Each record that did not come back has its line in rep; the
// result says whether one failed (one left to the config did not).
func restoreRecords(ctx context.Context, r Restorer, declared func(kind, id string) bool, recs []Record, log *slog.Logger, rep *Report, done func(rec Record, l *tcpgatev1.Listener, moved bool)) bool {
	lost := false
	var conns []Record
	for _, rec := range recs {
		what := rec.Kind() + " " + rec.ID()
		switch {
		case declared != nil && declared(rec.Kind(), rec.ID()):
			rep.Lines = append(rep.Lines, what+" not restored: the config file declares that id, and the config wins")
			log.Warn("state object not restored: the config file declares its id", "kind", rec.Kind(), "id", rec.ID())
			continue
		case rec.KeyOmitted:
			rep.Lines = append(rep.Lines, what+" not restored: its inline TLS private key was not saved (start with --state-inline-keys to save such keys)")
			log.Warn("state object not restored: its inline TLS private key was not saved (--state-inline-keys)", "kind", rec.Kind(), "id", rec.ID())
			continue
		}
		if rec.Listener == nil {
			conns = append(conns, rec)
			continue
		}
		l, moved, err := r.RestoreListener(ctx, rec.Listener, rec.BoundPort)
		if err != nil {
			rep.Lines = append(rep.Lines, fmt.Sprintf("%s not restored: %v", what, err))
			log.Error("state listener not restored", "id", rec.ID(), "error", err)
			lost = true
			continue
		}
		if moved {
			rep.Lines = append(rep.Lines, fmt.Sprintf("%s: its old port %d is in use; restored on %s", what, rec.BoundPort, l.GetAddress()))
			log.Warn("state listener restored on a new port: its old one is in use", "id", rec.ID(), "old_port", rec.BoundPort, "address", l.GetAddress())
		}
		done(rec, l, moved)
		rep.Restored++
	}
	// Outbound connections together: each Connect waits up to its timeout
	// for the first dial, which a target that is down would make a boot
	// of many connections wait for in turn.
	errs := make([]error, len(conns))
	var wg sync.WaitGroup
	sem := make(chan struct{}, restoreParallel)
	for i, rec := range conns {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			_, errs[i] = r.RestoreConnection(ctx, rec.Connection)
		})
	}
	wg.Wait()
	for i, rec := range conns {
		if err := errs[i]; err != nil {
			rep.Lines = append(rep.Lines, fmt.Sprintf("connection %s not restored: %v", rec.ID(), err))
			log.Error("state connection not restored", "id", rec.ID(), "error", err)
			lost = true
			continue
		}
		done(rec, nil, false)
		rep.Restored++
	}
	return lost
}

// Path is the state file's path; empty without one.
func (st *State) Path() string {
	if st.file == nil {
		return ""
	}
	return st.file.Path()
}

// Writes is how many times the state file was written.
func (st *State) Writes() uint64 {
	if st.file == nil {
		return 0
	}
	return st.file.Writes()
}

// Close stops saving and releases the state file's lock. It is
// idempotent.
func (st *State) Close() error {
	if st.file == nil {
		return nil
	}
	return st.file.Close()
}

func (st *State) snapshot() (uint64, [][]byte) {
	st.mu.Lock()
	defer st.mu.Unlock()
	es := make([]*entry, 0, len(st.recs))
	for _, e := range st.recs {
		es = append(es, e)
	}
	slices.SortFunc(es, func(a, b *entry) int { return cmp.Compare(a.seq, b.seq) })
	lines := make([][]byte, len(es))
	for i, e := range es {
		lines[i] = e.line
	}
	return st.version, lines
}

// put records rec under key and returns the new version.
func (st *State) put(key string, rec Record) uint64 {
	line, err := Encode(rec)
	st.mu.Lock()
	defer st.mu.Unlock()
	if err != nil {
		// A request the API took always encodes; should one not, the
		// old record stays rather than a broken line.
		st.log.Error("encoding a state record", "key", key, "error", err)
		return 0
	}
	e := st.recs[key]
	if e == nil {
		st.seq++
		e = &entry{seq: st.seq}
		st.recs[key] = e
	}
	e.line, e.rec = line, rec
	st.version++
	return st.version
}

func (st *State) delete(key string) uint64 {
	st.mu.Lock()
	defer st.mu.Unlock()
	if _, ok := st.recs[key]; !ok {
		return 0
	}
	delete(st.recs, key)
	st.version++
	return st.version
}

// PutListener implements rpc.State.
func (st *State) PutListener(req *tcpgatev1.StartListenerRequest, l *tcpgatev1.Listener) uint64 {
	rec := listenerRecord(req, l, st.inlineKeys, st.log)
	return st.put(KindListener+"/"+rec.ID(), rec)
}

// listenerRecord is the record of listener l that req started: the
// request with l's id, the bound port when it asked for port 0, and its
// inline private keys left out unless inlineKeys.
func listenerRecord(req *tcpgatev1.StartListenerRequest, l *tcpgatev1.Listener, inlineKeys bool, log *slog.Logger) Record {
	req = proto.CloneOf(req)
	req.ListenerId = l.GetListenerId()
	rec := Record{Listener: req}
	if req.GetPort() == 0 {
		if _, p, err := net.SplitHostPort(l.GetAddress()); err == nil {
			if n, err := strconv.ParseUint(p, 10, 16); err == nil {
				rec.BoundPort = uint32(n)
			}
		}
	}
	if !inlineKeys && stripListenerKeys(req) {
		rec.KeyOmitted = true
		log.Warn("listener saved without its inline TLS private key: it will not be restored (--state-inline-keys saves such keys)", "id", req.GetListenerId())
	}
	return rec
}

// connectionRecord is the record of outbound connection id that req
// made, its inline private key left out unless inlineKeys.
func connectionRecord(req *tcpgatev1.ConnectRequest, id string, inlineKeys bool, log *slog.Logger) Record {
	req = proto.CloneOf(req)
	req.ConnectionId = id
	rec := Record{Connection: req}
	if !inlineKeys && stripDialKey(req.GetTls()) {
		rec.KeyOmitted = true
		log.Warn("connection saved without its inline TLS private key: it will not be restored (--state-inline-keys saves such keys)", "id", id)
	}
	return rec
}

// RecordedListener implements rpc.State.
func (st *State) RecordedListener(id string) (*tcpgatev1.StartListenerRequest, bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	e := st.recs[KindListener+"/"+id]
	if e == nil {
		return nil, false
	}
	return proto.CloneOf(e.rec.Listener), true
}

// DeleteListener implements rpc.State.
func (st *State) DeleteListener(id string) uint64 { return st.delete(KindListener + "/" + id) }

// PutConnection implements rpc.State.
func (st *State) PutConnection(req *tcpgatev1.ConnectRequest, id string) uint64 {
	return st.put(KindConnection+"/"+id, connectionRecord(req, id, st.inlineKeys, st.log))
}

// DeleteConnection implements rpc.State.
func (st *State) DeleteConnection(id string) uint64 { return st.delete(KindConnection + "/" + id) }

// Save implements rpc.State.
func (st *State) Save(ctx context.Context, version uint64) error {
	if st.file == nil || version == 0 {
		return nil
	}
	return st.file.Commit(ctx, version)
}

// Export implements rpc.State: the recorded objects in the order they
// were made, a listener on the port it is bound to, inline private keys
// left out.
func (st *State) Export(context.Context) (*tcpgatev1.Config, error) {
	st.mu.Lock()
	es := make([]*entry, 0, len(st.recs))
	for _, e := range st.recs {
		es = append(es, e)
	}
	st.mu.Unlock()
	slices.SortFunc(es, func(a, b *entry) int { return cmp.Compare(a.seq, b.seq) })
	recs := make([]Record, len(es))
	for i, e := range es {
		recs[i] = e.rec
	}
	return exportRecords(recs), nil
}

// exportRecords is recs as a config file declares them.
func exportRecords(recs []Record) *tcpgatev1.Config {
	cfg := &tcpgatev1.Config{}
	for _, r := range recs {
		switch {
		case r.Listener != nil:
			l := proto.CloneOf(r.Listener)
			if l.GetPort() == 0 {
				l.Port = r.BoundPort
			}
			stripListenerKeys(l)
			cfg.Listeners = append(cfg.Listeners, l)
		case r.Connection != nil:
			c := proto.CloneOf(r.Connection)
			stripDialKey(c.GetTls())
			cfg.Connections = append(cfg.Connections, c)
		}
	}
	return cfg
}

// stripListenerKeys clears the inline private keys of a listener request
// and reports whether it had one.
func stripListenerKeys(req *tcpgatev1.StartListenerRequest) bool {
	had := false
	if t := req.GetTls(); t != nil && t.GetKeyPem() != "" {
		t.KeyPem, had = "", true
	}
	if stripDialKey(req.GetForward().GetTls()) {
		had = true
	}
	return had
}

func stripDialKey(t *tcpgatev1.DialTLS) bool {
	if t == nil || t.GetKeyPem() == "" {
		return false
	}
	t.KeyPem = ""
	return true
}
