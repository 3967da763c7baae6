package main

// The orchestrator: `tcpgate-bench run`.

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// options are the flags of `run`. Every scenario is bounded in time and in
// count; the defaults keep a 3-run `make bench` near eleven minutes.
type options struct {
	tcpgate   string
	runs      int
	jsonPath  string
	scenarios []string
	timeout   time.Duration
	settle    time.Duration
	socat     string // path of socat; empty when it is not installed

	rawBytes        int64
	lines           int64 // the lines scenario: exactly this many lines to each subscriber and to socat
	lineFrames      int64
	duration        time.Duration // send window of the throughput scenarios
	latencyDuration time.Duration
	latencyRate     int
	conns           int
	browserLines    int64         // browser, sse10: lines sent at full speed to each subscriber
	noderedDir      string        // browser: where Node-RED 4 is installed (npm ci)
	consoleDuration time.Duration // console: how long lines arrive at --latency-rate while the page is open
	chromium        string        // console: path of chromium; empty when it is not installed
	natsServer      string        // cluster: path of nats-server; empty when it is not built
	clusterLines    int64         // cluster: lines sent at full speed to each topology's subscriber, all of them

	profileDir     string // the lines scenarios write CPU profiles here; empty: none
	profileSeconds int    // how long the daemon's profile lasts from the first write
	run            int    // the run under way, from 1, for the profiles' names
	subscriberArgs []string
}

// scenario runs once per run against fresh daemons and records metrics.
type scenario struct {
	name string
	run  func(ctx context.Context, o *options, b *bench) error
}

var scenarios = []scenario{
	{"raw", runRaw},
	{"lines", runLines1},
	{"lines10", runLines10},
	{"rest", runREST},
	{"latency", runLatency},
	{"send1", runSendOneShot1},
	{"send32", runSendOneShot32},
	{"sendconn", runSendConn},
	{"reqresp32", runReqResp32},
	{"reqresp1", runReqResp1},
	{"handle", runHandle},
	{"conns", runConns},
	{"tlsconns", runTLSConns},
	{"tlsconns16k", runTLSConns16K},
	{"forward", runForward},
	{"browser", runBrowser},
	{"sse10", runSSE10},
	{"console", runConsole},
	{"cluster", runCluster},
}

func scenarioNames() []string {
	var names []string
	for _, s := range scenarios {
		names = append(names, s.name)
	}
	return names
}

func runMain(args []string) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	o := options{}
	fs.StringVar(&o.tcpgate, "tcpgate", "bin/tcpgate", "the tcpgate binary to measure")
	fs.IntVar(&o.runs, "runs", 3, "runs of every scenario; the table shows medians")
	fs.StringVar(&o.jsonPath, "json", "bin/bench.json", "write the results as JSON here (empty: don't)")
	only := fs.String("scenarios", strings.Join(scenarioNames(), ","), "comma-separated scenarios to run")
	fs.DurationVar(&o.timeout, "timeout", 20*time.Minute, "abandon the whole run after this long")
	fs.Int64Var(&o.rawBytes, "raw-bytes", 2<<30, "raw ingest: most bytes sent per run (also bounded by --duration)")
	fs.Int64Var(&o.lines, "lines", 1_000_000, "lines: 100-byte lines sent to each subscriber and to socat, all of them, in every run")
	fs.Int64Var(&o.lineFrames, "line-frames", 10_000_000, "lines10, rest: most 100-byte lines sent per run (also bounded by --duration)")
	fs.DurationVar(&o.duration, "duration", 3*time.Second, "send window of the throughput scenarios")
	fs.DurationVar(&o.latencyDuration, "latency-duration", 5*time.Second, "latency, browser, sse10, cluster: how long to send at --latency-rate")
	fs.IntVar(&o.latencyRate, "latency-rate", 10000, "latency, browser, sse10, console, cluster: lines per second of the paced phases")
	fs.Int64Var(&o.browserLines, "browser-lines", 200_000, "browser, sse10: 100-byte lines sent at full speed to each subscriber, all of them")
	fs.StringVar(&o.noderedDir, "nodered", "bench/nodered", "browser: the directory of Node-RED 4 (`npm ci` there installs it; make bench does)")
	fs.DurationVar(&o.consoleDuration, "console-duration", 5*time.Second, "console: how long lines arrive at --latency-rate while the page is open")
	fs.StringVar(&o.natsServer, "nats-server", "bin/nats-server", "cluster: the `path` of the NATS server to run (go build -o bin/nats-server github.com/nats-io/nats-server/v2 builds it; make bench does)")
	fs.Int64Var(&o.clusterLines, "cluster-lines", 200_000, "cluster: 100-byte lines sent at full speed to the single node's subscriber and to the cluster's, all of them")
	fs.IntVar(&o.conns, "conns", 15000, "connections: idle connections to hold")
	fs.DurationVar(&o.settle, "settle", 5*time.Second, "before each scenario, wait up to this long for other processes to leave the CPUs idle")
	fs.StringVar(&decodeMode, "decode", decodeMode, "how the subscribers of the scenarios other than lines decode: wire (walk the encoding for the fields counted) or proto (full messages); lines runs both")
	fs.StringVar(&o.profileDir, "profile", "", "lines, lines10, reqresp32, reqresp1, cluster: write CPU profiles of each daemon (through --debug-addr), and of the lines scenarios' subscribers, into this directory")
	subArgs := fs.String("subscriber-args", "", "lines, lines10: more flags for the gRPC subscribers, space-separated (see tcpgate-bench subscribe -h: --read-buffer, --stream-window, --conn-window)")
	fs.IntVar(&o.profileSeconds, "profile-seconds", 2, "with --profile: seconds of the daemon's profile, from the first write (send enough --lines to fill them)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if o.runs < 1 {
		return errors.New("--runs must be at least 1")
	}
	o.subscriberArgs = strings.Fields(*subArgs)
	if o.browserLines < 1 || o.latencyRate < 1 || o.clusterLines < 1 {
		return errors.New("--browser-lines, --cluster-lines and --latency-rate must be at least 1")
	}
	if o.lines < 1 {
		return errors.New("--lines must be at least 1")
	}
	if decodeMode != "wire" && decodeMode != "proto" {
		return fmt.Errorf("--decode: %q is not wire or proto", decodeMode)
	}
	if o.profileDir != "" {
		if o.profileSeconds < 1 {
			return errors.New("--profile-seconds must be at least 1")
		}
		if err := os.MkdirAll(o.profileDir, 0o755); err != nil {
			return fmt.Errorf("--profile: %w", err)
		}
	}
	for _, name := range strings.Split(*only, ",") {
		if name = strings.TrimSpace(name); name == "" {
			continue
		}
		if !slices.Contains(scenarioNames(), name) {
			return fmt.Errorf("--scenarios: unknown %q (have %s)", name, strings.Join(scenarioNames(), ", "))
		}
		o.scenarios = append(o.scenarios, name)
	}
	if _, err := os.Stat(o.tcpgate); err != nil {
		return fmt.Errorf("--tcpgate: %w (build it with `go build -o bin/ ./cmd/tcpgate`)", err)
	}
	b := newBench(&o)
	if path, err := exec.LookPath("socat"); err == nil {
		o.socat = path
	} else if slices.Contains(o.scenarios, "raw") {
		b.note("socat is not installed: the raw-ingest baseline is unavailable")
	}
	if path, err := exec.LookPath("chromium"); err == nil {
		o.chromium = path
	} else if slices.Contains(o.scenarios, "console") {
		b.note("chromium is not installed: the console scenario is unavailable")
	}
	if _, err := os.Stat(o.natsServer); err != nil {
		if slices.Contains(o.scenarios, "cluster") {
			b.note("cluster: --nats-server: %v (build it with `go build -o bin/nats-server github.com/nats-io/nats-server/v2`): the cluster scenario is unavailable", err)
		}
		o.natsServer = ""
	}
	checkFileLimit(&o, b)

	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	started := time.Now()
	for run := 1; run <= o.runs; run++ {
		o.run = run
		for _, s := range scenarios {
			if !slices.Contains(o.scenarios, s.name) {
				continue
			}
			if ctx.Err() != nil {
				b.note("run %d: %s skipped: the run exceeded --timeout %s", run, s.name, o.timeout)
				continue
			}
			fmt.Fprintf(os.Stderr, "run %d/%d: %s ...", run, o.runs, s.name)
			b.Background = append(b.Background, quietMachine(o.settle))
			t := time.Now()
			err := s.run(ctx, &o, b)
			fmt.Fprintf(os.Stderr, " %.1fs\n", time.Since(t).Seconds())
			if err != nil {
				b.note("run %d: %s failed: %v", run, s.name, err)
				fmt.Fprintf(os.Stderr, "  error: %v\n", err)
			}
		}
	}
	b.Elapsed = time.Since(started).Round(time.Second).String()
	b.finish()
	b.printTable(os.Stdout)
	if o.jsonPath != "" {
		out, err := json.MarshalIndent(b, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(o.jsonPath, append(out, '\n'), 0o644); err != nil {
			return err
		}
		fmt.Printf("\nJSON: %s\n", o.jsonPath)
	}
	return nil
}

// checkFileLimit notes when the open-file limit cannot hold the
// connections scenario: the daemon and each holder need o.conns (or half)
// descriptors.
func checkFileLimit(o *options, b *bench) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return
	}
	b.Machine.OpenFiles = rl.Cur
	if slices.ContainsFunc(o.scenarios, func(s string) bool { return strings.HasSuffix(strings.TrimSuffix(s, "16k"), "conns") }) && rl.Cur < uint64(o.conns)+512 {
		b.note("open-file limit %d is below --conns %d plus the daemon's reserve: expect refused connections", rl.Cur, o.conns)
	}
}

// target is what a metric should reach.
type target struct {
	Op    string  `json:"op"` // ">=" or "<="
	Value float64 `json:"value"`
}

func (t *target) String() string {
	if t == nil {
		return ""
	}
	return t.Op + " " + format(t.Value)
}

// metric is one figure of one scenario over the runs.
type metric struct {
	Scenario string    `json:"scenario"`
	Name     string    `json:"metric"`
	Unit     string    `json:"unit"`
	Values   []float64 `json:"values"`
	Median   float64   `json:"median"`
	Target   *target   `json:"target,omitempty"`
	Pass     *bool     `json:"pass,omitempty"`
}

// machine describes where the figures were measured.
type machine struct {
	CPUs      int    `json:"cpus"`
	Model     string `json:"cpu_model"`
	Kernel    string `json:"kernel"`
	Go        string `json:"go"`
	OpenFiles uint64 `json:"open_files"`
}

// bench collects the metrics and notes of a whole run; it is also the JSON
// document.
type bench struct {
	Command string `json:"command"`
	// Tree is `git describe --always --dirty` of the working directory, when
	// it is a checkout: which code was measured.
	Tree    string  `json:"tree,omitempty"`
	Date    string  `json:"date"`
	Machine machine `json:"machine"`
	Runs    int     `json:"runs"`
	Elapsed string  `json:"elapsed"`
	// Background is the CPU, in cores, that other processes used right
	// before each scenario run.
	Background []float64 `json:"background_cpu_cores"`
	Metrics    []*metric `json:"metrics"`
	Notes      []string  `json:"notes,omitempty"`
}

func newBench(o *options) *bench {
	return &bench{
		Command: strings.Join(os.Args, " "),
		Tree:    gitTree(),
		Date:    time.Now().UTC().Format(time.RFC3339),
		Machine: machine{CPUs: runtime.NumCPU(), Model: cpuModel(), Kernel: kernel(), Go: runtime.Version()},
		Runs:    o.runs,
	}
}

// targets are the goals, by scenario and metric.
var targets = map[[2]string]*target{
	{"raw", "tcpgate / socat"}:     {">=", 1.5},
	{"forward", "tcpgate / socat"}: {">=", 0.8},
	{"lines", "frames/s, 1 subscriber decoding every event (generated client)"}: {">=", 1e6},
	{"lines", "decoding / socat"}:                {">=", 0.3},
	{"lines10", "frames/s, 10 subscribers"}:      {">=", 2e6},
	{"rest", "ndjson / grpc"}:                    {">=", 0.6},
	{"rest", "sse / grpc"}:                       {">=", 0.6},
	{"latency", "p99"}:                           {"<=", 1000},
	{"send32", "calls/s, 32 callers"}:            {">=", 20000},
	{"reqresp32", "tcpgate / A (gRPC echo)"}:     {">=", 0.6},
	{"handle", "1 stream / fixed"}:               {">=", 0.5},
	{"handle", "1 stream / 100,000 exchanges/s"}: {">=", 1},
	{"conns", "RSS per idle connection"}:         {"<=", 10},
	{"browser", "tcpgate / Node-RED, lines/s"}:   {">=", 5},
	{"browser", "tcpgate / Node-RED, p99"}:       {"<=", 1},
	{"tlsconns", "RSS per idle connection"}:      {"<=", 10},
}

// add records one run's value of a metric.
func (b *bench) add(scenario, name, unit string, v float64) {
	for _, m := range b.Metrics {
		if m.Scenario == scenario && m.Name == name {
			m.Values = append(m.Values, v)
			return
		}
	}
	b.Metrics = append(b.Metrics, &metric{Scenario: scenario, Name: name, Unit: unit, Values: []float64{v},
		Target: targets[[2]string{scenario, name}]})
}

func (b *bench) note(format string, args ...any) {
	b.Notes = append(b.Notes, fmt.Sprintf(format, args...))
}

// finish computes medians and verdicts.
func (b *bench) finish() {
	if len(b.Background) > 0 && slices.Max(b.Background) > busyCores {
		b.note("other processes used up to %.2f of %d CPUs right before a scenario (median %.2f): figures of those runs are lower bounds",
			slices.Max(b.Background), b.Machine.CPUs, median(b.Background))
	}
	for _, m := range b.Metrics {
		m.Median = median(m.Values)
		if t := m.Target; t != nil {
			pass := (t.Op == ">=" && m.Median >= t.Value) || (t.Op == "<=" && m.Median <= t.Value)
			m.Pass = &pass
		}
	}
}

// printTable writes the medians as a Markdown table.
func (b *bench) printTable(w io.Writer) {
	fmt.Fprintf(w, "\n%s, tree %s; %d CPUs (%s), %s, %s; %d run(s) in %s, medians\n\n", b.Date, b.Tree, b.Machine.CPUs,
		b.Machine.Model, b.Machine.Kernel, b.Machine.Go, b.Runs, b.Elapsed)
	fmt.Fprintln(w, "| scenario | metric | median | unit | runs | target | pass |")
	fmt.Fprintln(w, "|---|---|--:|---|---|---|---|")
	for _, m := range b.Metrics {
		var runs []string
		for _, v := range m.Values {
			runs = append(runs, format(v))
		}
		pass := ""
		if m.Pass != nil {
			pass = map[bool]string{true: "yes", false: "**no**"}[*m.Pass]
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s |\n", m.Scenario, m.Name, format(m.Median), m.Unit,
			strings.Join(runs, ", "), m.Target, pass)
	}
	if len(b.Notes) > 0 {
		fmt.Fprintln(w, "\nNotes:")
		for _, n := range b.Notes {
			fmt.Fprintln(w, "- "+n)
		}
	}
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := slices.Sorted(slices.Values(v))
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// format prints a figure with three significant digits, grouping
// thousands.
func format(v float64) string {
	switch {
	case math.IsNaN(v):
		return "n/a"
	case math.Abs(v) >= 1000:
		s := fmt.Sprintf("%.0f", v)
		// Round to three significant digits, then group.
		digits := len(strings.TrimPrefix(s, "-"))
		p := math.Pow(10, float64(digits-3))
		s = fmt.Sprintf("%.0f", math.Round(v/p)*p)
		var out []byte
		for i, c := range []byte(s) {
			if i > 0 && (len(s)-i)%3 == 0 && s[i-1] != '-' {
				out = append(out, ',')
			}
			out = append(out, c)
		}
		return string(out)
	case math.Abs(v) >= 100:
		return fmt.Sprintf("%.0f", v)
	case math.Abs(v) >= 10:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.2f", v)
}

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return runtime.GOARCH
	}
	for line := range strings.Lines(string(b)) {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return runtime.GOARCH
}

func kernel() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return runtime.GOOS
	}
	return "Linux " + strings.TrimSpace(string(b))
}

// busyCores is the CPU other processes may use for the machine to count as
// quiet: a tenth of a core is noise, a quarter starts to show in the figures.
const busyCores = 0.25

// quietMachine samples the machine's CPU use in 250 ms windows until it is
// below busyCores or bound has passed, and returns the last sample in cores.
// The orchestrator is idle meanwhile, so what it sees is other processes.
func quietMachine(bound time.Duration) float64 {
	deadline := time.Now().Add(bound)
	for {
		busy := machineBusy(250 * time.Millisecond)
		if busy < busyCores || time.Now().After(deadline) {
			return busy
		}
	}
}

// machineBusy returns how many CPUs were busy, on average, over d.
func machineBusy(d time.Duration) float64 {
	busy0, total0 := procStat()
	time.Sleep(d)
	busy1, total1 := procStat()
	if total1 <= total0 {
		return 0
	}
	return float64(busy1-busy0) / float64(total1-total0) * float64(runtime.NumCPU())
}

// procStat returns the busy and total jiffies of all CPUs from /proc/stat.
func procStat() (busy, total uint64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
	for i, v := range f[1:min(len(f), 9)] {
		n, _ := strconv.ParseUint(v, 10, 64)
		total += n
		if i != 3 && i != 4 { // idle, iowait
			busy += n
		}
	}
	return busy, total
}

func gitTree() string {
	out, err := exec.Command("git", "describe", "--always", "--dirty").Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}
