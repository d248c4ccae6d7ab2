// Command chatbench is a load generator for WebSocket chat servers on
// loopback: it drives chatkit and its peers (the seed, a gorilla/websocket
// hub, centrifuge, a raw fan-out ceiling) through the same workloads and
// reports figures that can be compared within one run.
//
//	chatbench idle   -proto chatkit -url ws://127.0.0.1:8100/ws -pid PID [-conns 2000]
//	chatbench fanout -proto chatkit -url ws://127.0.0.1:8100/ws -pid PID [-members 500,1000]
//	chatbench mix    -proto chatkit -url ws://127.0.0.1:8100/ws -pid PID [-rooms 1000 -room-members 10]
//	chatbench slow   -proto chatkit -url ws://127.0.0.1:8100/ws -pid PID [-members 500 -rate 20000]
//	chatbench report -o BENCHMARKS.md results/*.json
//
// Several servers sharing one chat (chatkit nodes on one Redis): -url takes
// their URLs comma-separated, and member i of every workload connects to
// URL i mod n, publishers included; -pid and -stats take lists too, and
// their figures are summed (give Redis's pid as well, so that server CPU
// counts it). -redis-addr HOST:PORT reads Redis's INFO commandstats before
// and after each step and reports the Redis commands per published message.
//
// Protocols (-proto): chatkit (PROTOCOL.md), seed (?username=&client_id=,
// raw text in, chat_message JSON out), raw (every text line that arrives is
// a message, as the gorilla chat example relays them) and centrifuge (its
// JSON protocol). Every published message carries its sender, a
// per-sender sequence number and its scheduled send time; receivers record
// end-to-end latency in a histogram and count loss, duplicates and
// reordering.
//
// -pid names the server process: its RSS and CPU time are read from
// /proc/PID/status and /proc/PID/stat. -stats names a URL that answers
// {"goroutines":N} (bench/chatkitserver and the Go peers serve
// /debug/stats). The generator measures its own CPU time too: a step in
// which it used more than -gen-limit of its core is invalid, not a result.
//
// A human table goes to stdout; -json FILE writes the results for
// machines (the report subcommand turns several into BENCHMARKS.md).
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"
)

type config struct {
	urls           []string
	proto          string
	label          string
	subprotocols   []string
	pids           []int  // summed: several nodes, and Redis
	statsURL       string // comma-separated, summed
	redisAddr      string
	duration       time.Duration
	maxConns       int
	jsonPath       string
	round          int
	size           int
	maxFD          int
	connectPar     int
	connectTimeout time.Duration
	setupTimeout   time.Duration
	barrierTimeout time.Duration
	drain          time.Duration
	room           string
	quiet          bool
	cpuprofile     string

	// fanout
	members     []int
	publishers  int
	startRate   float64
	maxRate     float64
	factor      float64
	refine      int
	p99Limit    float64
	minDelivery float64
	genLimit    float64
	sample      int
	lowat       int

	// idle
	conns    int
	roomSize int
	settle   time.Duration

	// mix
	rooms       int
	roomMembers int
	roomRate    float64
	churn       float64
	churnLife   time.Duration

	// slow
	slowMembers int
	rate        float64
	slowFrac    float64
	slowRcvbuf  int
}

var quiet bool

func logf(format string, args ...any) {
	if !quiet {
		fmt.Fprintf(os.Stderr, format+"\n", args...)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, `usage: chatbench idle|fanout|mix|slow [flags]
       chatbench report [-o BENCHMARKS.md] [-meta key=value ...] results.json...
Run "chatbench fanout -h" for the flags.`)
	os.Exit(2)
}

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	cmd := os.Args[1]
	if cmd == "report" {
		os.Exit(reportMain(os.Args[2:]))
	}
	if cmd != "idle" && cmd != "fanout" && cmd != "mix" && cmd != "slow" {
		usage()
	}
	cfg, err := parseFlags(cmd, os.Args[2:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "chatbench:", err)
		os.Exit(2)
	}
	quiet = cfg.quiet
	ad, err := newAdapter(cfg.proto)
	if err != nil {
		fmt.Fprintln(os.Stderr, "chatbench:", err)
		os.Exit(2)
	}
	nofile := raiseNoFile(uint64(cfg.maxConns) + 1024)
	if nofile < uint64(cfg.maxConns)+64 {
		logf("chatbench: RLIMIT_NOFILE is %d: -max-conns lowered", nofile)
		cfg.maxConns = int(nofile) - 64
	}
	cfg.maxFD = int(nofile) + 16

	if cfg.cpuprofile != "" {
		f, err := os.Create(cfg.cpuprofile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "chatbench:", err)
			os.Exit(1)
		}
		pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}

	var results []*Result
	switch cmd {
	case "idle":
		results = append(results, runIdle(cfg, ad))
	case "fanout":
		for _, n := range cfg.members {
			results = append(results, runFanout(cfg, ad, n))
		}
	case "mix":
		results = append(results, runMix(cfg, ad))
	case "slow":
		results = append(results, runSlow(cfg, ad))
	}
	printTable(os.Stdout, results)
	if cfg.jsonPath != "" {
		data, _ := json.MarshalIndent(results, "", "  ")
		data = append(data, '\n')
		if cfg.jsonPath == "-" {
			os.Stdout.Write(data)
		} else if err := os.WriteFile(cfg.jsonPath, data, 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "chatbench:", err)
			os.Exit(1)
		}
	}
	for _, r := range results {
		if !r.Valid {
			pprof.StopCPUProfile()
			os.Exit(3)
		}
	}
}

func parseFlags(cmd string, args []string) (*config, error) {
	c := &config{}
	fs := flag.NewFlagSet("chatbench "+cmd, flag.ContinueOnError)
	urls := fs.String("url", "ws://127.0.0.1:8100/ws", "the server's WebSocket URL (loopback); several, comma-separated, spread the members over them")
	fs.StringVar(&c.proto, "proto", "chatkit", "protocol adapter: chatkit, seed, raw or centrifuge")
	fs.StringVar(&c.label, "label", "", "name of the contender in the results (default: the protocol)")
	subprotocol := fs.String("subprotocol", "", "WebSocket subprotocols to offer, comma-separated (e.g. chatkit.v1)")
	pids := fs.String("pid", "", "server process id, for RSS and CPU from /proc; several, comma-separated, are summed")
	fs.StringVar(&c.statsURL, "stats", "", "URL answering {\"goroutines\":N} (e.g. http://127.0.0.1:8100/debug/stats); several, comma-separated, are summed")
	fs.StringVar(&c.redisAddr, "redis-addr", "", "HOST:PORT of the servers' Redis: report its commands per published message (INFO commandstats)")
	fs.DurationVar(&c.duration, "duration", 5*time.Second, "length of each measured step (fanout, slow) or of the run (mix)")
	fs.IntVar(&c.maxConns, "max-conns", 20000, "most connections the generator may open")
	fs.StringVar(&c.jsonPath, "json", "", "write the results as JSON to this file (- for stdout)")
	fs.IntVar(&c.round, "round", 0, "round number, recorded in the results")
	fs.IntVar(&c.size, "size", 64, "bytes of each message's text (at least what the header needs)")
	fs.IntVar(&c.connectPar, "connect-par", 16, "handshakes and joins in flight while connecting (1 for the seed)")
	fs.DurationVar(&c.connectTimeout, "connect-timeout", 10*time.Second, "limit for one connection to be ready")
	fs.DurationVar(&c.setupTimeout, "setup-timeout", 3*time.Minute, "limit for connecting all members")
	fs.DurationVar(&c.barrierTimeout, "barrier-timeout", 15*time.Second, "limit for a sync message to reach every member")
	fs.DurationVar(&c.drain, "drain", 2*time.Second, "how long a step waits for late deliveries after publishing")
	fs.StringVar(&c.room, "room", "bench", "room (or channel) of fanout and slow")
	fs.BoolVar(&c.quiet, "q", false, "no progress on stderr")
	fs.StringVar(&c.cpuprofile, "cpuprofile", "", "write the generator's own CPU profile to this file")

	members := fs.String("members", "", "fanout: room sizes, comma-separated (default 500,1000); slow: the room size (default 100)")
	fs.IntVar(&c.publishers, "publishers", 4, "fanout, slow: publishing members")
	fs.Float64Var(&c.startRate, "start", 20000, "fanout: first offered rate, deliveries per second")
	fs.Float64Var(&c.maxRate, "max-rate", 5e6, "fanout: highest rate tried, deliveries per second")
	fs.Float64Var(&c.factor, "factor", math.Sqrt2, "fanout: rate multiplier between steps")
	fs.IntVar(&c.refine, "refine", 1, "fanout: 1 to try the middle between the last good and a cleanly failed rate, 0 not to")
	fs.Float64Var(&c.p99Limit, "p99", 50, "fanout: a step fails when p99 latency exceeds this many ms")
	fs.Float64Var(&c.minDelivery, "min-delivery", 0.999, "fanout: a step fails when this fraction is not delivered")
	fs.Float64Var(&c.genLimit, "gen-limit", 0.9, "a step in which the generator used more of its core is invalid")
	fs.IntVar(&c.sample, "sample", 64, "fanout, slow: members whose latency is recorded, spread over the room; the others read in bulk (0: all)")
	fs.IntVar(&c.lowat, "lowat", 16384, "fanout, slow: receive low-water mark of the bulk members while a step publishes, bytes (1: off)")

	fs.IntVar(&c.conns, "conns", 2000, "idle: connections")
	fs.IntVar(&c.roomSize, "room-size", 10, "idle: members per room")
	fs.DurationVar(&c.settle, "settle", 3*time.Second, "idle: wait after the last join before reading RSS")

	fs.IntVar(&c.rooms, "rooms", 1000, "mix: rooms")
	fs.IntVar(&c.roomMembers, "room-members", 10, "mix: stable members per room")
	fs.Float64Var(&c.roomRate, "room-rate", 1, "mix: messages per second per room")
	fs.Float64Var(&c.churn, "churn", 50, "mix: connections per second that join a room, stay -churn-life and leave")
	fs.DurationVar(&c.churnLife, "churn-life", time.Second, "mix: how long a churning connection stays")

	fs.Float64Var(&c.rate, "rate", 30000, "slow: offered deliveries per second")
	fs.Float64Var(&c.slowFrac, "slow-frac", 0.01, "slow: fraction of members that stop reading")
	fs.IntVar(&c.slowRcvbuf, "slow-rcvbuf", 4096, "slow: SO_RCVBUF of the slow members' sockets")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if c.label == "" {
		c.label = c.proto
	}
	for u := range strings.SplitSeq(*urls, ",") {
		if u = strings.TrimSpace(u); u != "" {
			c.urls = append(c.urls, u)
		}
	}
	if len(c.urls) == 0 {
		return nil, fmt.Errorf("-url: give at least one URL")
	}
	if *pids != "" {
		for f := range strings.SplitSeq(*pids, ",") {
			pid, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || pid < 0 {
				return nil, fmt.Errorf("-pid: bad process id %q", f)
			}
			if pid > 0 { // 0 is "none", as it always was
				c.pids = append(c.pids, pid)
			}
		}
	}
	if *subprotocol != "" {
		for p := range strings.SplitSeq(*subprotocol, ",") {
			if p = strings.TrimSpace(p); p != "" {
				c.subprotocols = append(c.subprotocols, p)
			}
		}
	}
	switch cmd {
	case "fanout":
		if *members == "" {
			*members = "500,1000"
		}
		for f := range strings.SplitSeq(*members, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 1 {
				return nil, fmt.Errorf("-members: bad size %q", f)
			}
			c.members = append(c.members, n)
		}
	case "slow":
		c.slowMembers = 100
		if *members != "" {
			n, err := strconv.Atoi(strings.TrimSpace(strings.Split(*members, ",")[0]))
			if err != nil || n < 1 {
				return nil, fmt.Errorf("-members: bad size %q", *members)
			}
			c.slowMembers = n
		}
	}
	if c.factor <= 1 {
		return nil, fmt.Errorf("-factor must be above 1")
	}
	if c.startRate <= 0 || c.duration <= 0 || c.publishers < 1 {
		return nil, fmt.Errorf("-start, -duration and -publishers must be positive")
	}
	return c, nil
}

// Result is one workload's outcome for one contender, as written by -json.
type Result struct {
	Workload string             `json:"workload"`
	Case     string             `json:"case"`
	Label    string             `json:"label"`
	Protocol string             `json:"protocol"`
	Subproto string             `json:"subprotocol,omitempty"`
	Round    int                `json:"round,omitempty"`
	Started  time.Time          `json:"started"`
	Valid    bool               `json:"valid"`
	Invalid  string             `json:"invalid,omitempty"`
	Bound    string             `json:"bound,omitempty"`
	Metrics  map[string]float64 `json:"metrics"`
	Params   map[string]any     `json:"params,omitempty"`
	Steps    []stepResult       `json:"steps,omitempty"`
	Notes    []string           `json:"notes,omitempty"`
}

func newResult(cfg *config, ad adapter, workload, cs string) *Result {
	return &Result{Workload: workload, Case: cs, Label: cfg.label, Protocol: ad.name(),
		Subproto: strings.Join(cfg.subprotocols, ","), Round: cfg.round, Started: time.Now().UTC(),
		Metrics: map[string]float64{}}
}

func (r *Result) fail(why string) {
	r.Valid = false
	r.Invalid = why
	logf("%s %s %s: invalid: %s", r.Workload, r.Case, r.Label, why)
}

// MarshalJSON writes NaN figures as null.
func (r *Result) MarshalJSON() ([]byte, error) {
	type plain Result
	p := plain(*r)
	m := make(map[string]float64, len(r.Metrics))
	for k, v := range r.Metrics {
		if v == v && v < 1e300 && v > -1e300 {
			m[k] = v
		}
	}
	p.Metrics = m
	steps := make([]stepResult, len(r.Steps))
	for i, s := range r.Steps {
		steps[i] = s.clean()
	}
	p.Steps = steps
	return json.Marshal(p)
}

// clean replaces NaN, which JSON cannot hold, by -1.
func (s stepResult) clean() stepResult {
	for _, f := range []*float64{&s.P50, &s.P99, &s.P999, &s.Max, &s.ServerCPU, &s.CPUPerM, &s.ServerUtil, &s.Rate, &s.DeliveryRatio} {
		if *f != *f {
			*f = -1
		}
	}
	return s
}

// noteDrops adds the connections the server ended, by reason, to the notes.
func (r *Result) noteDrops(b *bench) {
	if d := b.dropSummary(); d != "" {
		r.Notes = append(r.Notes, "connections ended by the server: "+d)
	}
}
