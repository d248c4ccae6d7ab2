package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

var nan = math.NaN()

// memberSpec says whom to connect where.
type memberSpec struct {
	id      int
	name    string
	room    string
	counted bool
	rcvbuf  int
	mss     int
	// bulk members count deliveries but record no latency: while a step
	// publishes, their sockets get a large receive low-water mark so that
	// the generator reads them in big chunks, a few system calls for many
	// messages. A loopback generator otherwise spends as much CPU per
	// delivery as the server it measures; the latency sample comes from
	// the other members, spread evenly over the room.
	bulk bool
}

type connectStats struct {
	attempted, failed int
	seconds           float64
	hist              histogram
	firstErr          string
}

// connectAll connects every spec with at most par handshakes (and joins)
// in flight, each waiting for its member to be ready. A member that fails
// leaves a nil in the result. The whole call is bounded by budget.
func (b *bench) connectAll(specs []memberSpec, par int, budget time.Duration) ([]*member, *connectStats) {
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	defer cancel()
	if par < 1 {
		par = 1
	}
	cs := &connectStats{attempted: len(specs)}
	out := make([]*member, len(specs))
	var idx atomic.Int64
	var failed atomic.Int64
	var errOnce sync.Once
	t0 := time.Now()
	var wg sync.WaitGroup
	for range min(par, len(specs)) {
		wg.Go(func() {
			for {
				i := int(idx.Add(1)) - 1
				if i >= len(specs) {
					return
				}
				if ctx.Err() != nil {
					failed.Add(1)
					errOnce.Do(func() { cs.firstErr = "connect budget exhausted" })
					continue
				}
				s := specs[i]
				start := time.Now()
				m, err := b.connectReady(ctx, s)
				if err != nil {
					failed.Add(1)
					errOnce.Do(func() { cs.firstErr = err.Error() })
					continue
				}
				cs.hist.record(time.Since(start))
				out[i] = m
			}
		})
	}
	wg.Wait()
	cs.failed = int(failed.Load())
	cs.seconds = time.Since(t0).Seconds()
	return out, cs
}

// connectReady connects one member and waits until it is in its room.
func (b *bench) connectReady(ctx context.Context, s memberSpec) (*member, error) {
	cctx, cancel := context.WithTimeout(ctx, b.cfg.connectTimeout)
	defer cancel()
	m, err := b.connect(cctx, s)
	if err != nil {
		return nil, err
	}
	if err := m.waitReady(cctx); err != nil {
		m.close()
		return nil, err
	}
	return m, nil
}

// closeAll closes members and waits (boundedly) until the poller has
// released them.
func closeAll(ms []*member) {
	for _, m := range ms {
		if m != nil {
			m.close()
		}
	}
	deadline := time.After(10 * time.Second)
	for _, m := range ms {
		if m == nil {
			continue
		}
		select {
		case <-m.done:
		case <-deadline:
			logf("chatbench: some connections did not close within 10s")
			return
		}
	}
}

// stepResult is one measured period at one offered rate.
type stepResult struct {
	Step          int     `json:"step"`
	Kind          string  `json:"kind"` // ramp, measure, barrier, baseline, slow, mix
	OfferedRate   float64 `json:"offered_deliveries_per_s"`
	MsgRate       float64 `json:"messages_per_s"`
	Seconds       float64 `json:"seconds"`
	Published     int64   `json:"published"`
	Expected      int64   `json:"expected"`
	Delivered     int64   `json:"delivered"`
	Dups          int64   `json:"duplicates"`
	Reorders      int64   `json:"reordered"`
	DeliveryRatio float64 `json:"delivery_ratio"`
	Rate          float64 `json:"deliveries_per_s"`
	P50           float64 `json:"p50_ms"`
	P99           float64 `json:"p99_ms"`
	P999          float64 `json:"p999_ms"`
	Max           float64 `json:"max_ms"`
	ServerCPU     float64 `json:"server_cpu_s"`
	CPUPerM       float64 `json:"server_cpu_s_per_million"`
	ServerUtil    float64 `json:"server_cpu_util"`
	GenLoad       float64 `json:"generator_cpu_util"`
	Drops         int64   `json:"drops"`
	Errors        int64   `json:"errors"`
	PubErrors     int64   `json:"publish_errors"`
	DrainSeconds  float64 `json:"drain_s"`
	OK            bool    `json:"ok"`
	Invalid       bool    `json:"invalid"`
	Why           string  `json:"why,omitempty"`

	// With -redis-addr: the commands Redis executed during the step, those
	// run by scripts included, in all and by command.
	RedisCmds  int64            `json:"redis_commands,omitempty"`
	RedisByCmd map[string]int64 `json:"redis_commands_by_name,omitempty"`
}

// publishers publish for one step. Each member of pubs sends at rate/len
// messages per second on an open-loop schedule (each message carries its
// scheduled time, so a late send shows as latency) and adds expectEach(m)
// to the step's expected deliveries per message.
type pubPlan struct {
	pubs       []*member
	msgRate    float64 // messages per second, all publishers together
	expectEach func(*member) int64
	bulk       func(on bool) // switches bulk reading on for the publishing period
}

func (b *bench) publishFor(step int, st *stepStats, plan pubPlan, dur time.Duration, pubErrs *atomic.Int64) {
	n := len(plan.pubs)
	if n == 0 || plan.msgRate <= 0 {
		time.Sleep(dur)
		return
	}
	interval := time.Duration(float64(time.Second) * float64(n) / plan.msgRate)
	if interval <= 0 {
		interval = 1
	}
	start := time.Now()
	end := start.Add(dur)
	var wg sync.WaitGroup
	for i, m := range plan.pubs {
		exp := plan.expectEach(m)
		wg.Go(func() {
			next := start.Add(interval * time.Duration(i) / time.Duration(n))
			for next.Before(end) {
				now := time.Now()
				if d := next.Sub(now); d > 0 {
					time.Sleep(d)
					continue
				}
				if err := m.publish(step, next.UnixNano()); err != nil {
					pubErrs.Add(1)
					b.noteErr("publish: " + err.Error())
					return
				}
				st.published.Add(1)
				st.expected.Add(exp)
				next = next.Add(interval)
			}
		})
	}
	wg.Wait()
}

// drain waits until the step's expected deliveries have arrived, at most
// max; it returns how long it waited.
func drain(st *stepStats, max time.Duration) time.Duration {
	t0 := time.Now()
	for time.Since(t0) < max {
		if st.delivered.Load() >= st.expected.Load() {
			break
		}
		time.Sleep(2 * time.Millisecond)
	}
	return time.Since(t0)
}

// measureStep publishes by plan for dur, drains, and judges the step.
func (b *bench) measureStep(kind string, plan pubPlan, members int, dur time.Duration) stepResult {
	step, st := b.newStep()
	drops0, errs0 := b.drops.Load(), b.errors.Load()
	var pubErrs atomic.Int64
	if plan.bulk != nil {
		plan.bulk(true)
	}
	redis0 := b.readRedis()
	meter := startMeter(b.cfg.pids)
	b.publishFor(step, st, plan, dur, &pubErrs)
	if plan.bulk != nil {
		plan.bulk(false)
	}
	dr := drain(st, b.cfg.drain)
	meter.stop()
	redis1 := b.readRedis()
	r := stepResult{
		Step: step, Kind: kind, MsgRate: plan.msgRate, OfferedRate: plan.msgRate * float64(members),
		Seconds: dur.Seconds(), Published: st.published.Load(), Expected: st.expected.Load(),
		Delivered: st.delivered.Load(), Dups: st.dups.Load(), Reorders: st.reorders.Load(),
		P50: st.hist.quantile(0.50), P99: st.hist.quantile(0.99), P999: st.hist.quantile(0.999),
		Max: st.hist.maxMS(), ServerCPU: meter.server, GenLoad: meter.genLoad(),
		Drops: b.drops.Load() - drops0, Errors: b.errors.Load() - errs0, PubErrors: pubErrs.Load(),
		DrainSeconds: dr.Seconds(),
	}
	r.DeliveryRatio = 1
	if r.Expected > 0 {
		r.DeliveryRatio = float64(r.Delivered) / float64(r.Expected)
	}
	r.Rate = float64(r.Delivered) / dur.Seconds()
	r.CPUPerM = nan
	if r.Delivered > 0 {
		r.CPUPerM = r.ServerCPU / float64(r.Delivered) * 1e6
	}
	r.ServerUtil = r.ServerCPU / meter.wall
	if redis0 != nil && redis1 != nil {
		r.RedisCmds, r.RedisByCmd = redisDelta(redis0, redis1)
	}
	var why []string
	if r.DeliveryRatio < b.cfg.minDelivery {
		why = append(why, fmt.Sprintf("delivery %.3f%%", 100*r.DeliveryRatio))
	}
	if !(r.P99 <= b.cfg.p99Limit) { // NaN fails too
		why = append(why, fmt.Sprintf("p99 %.1f ms", r.P99))
	}
	if r.Drops > 0 {
		why = append(why, fmt.Sprintf("%d connections lost", r.Drops))
	}
	if r.PubErrors > 0 {
		why = append(why, fmt.Sprintf("%d publishers failed", r.PubErrors))
	}
	r.OK = len(why) == 0
	if r.GenLoad > b.cfg.genLimit {
		r.Invalid = true
		r.OK = false
		why = append(why, fmt.Sprintf("generator at %.0f%% of its core", 100*r.GenLoad))
	}
	r.Why = strings.Join(why, "; ")
	return r
}

// readRedis reads Redis's command counts if -redis-addr asks for them; nil
// without, or when Redis does not answer (noted, and the step has no
// Redis figures).
func (b *bench) readRedis() map[string]int64 {
	if b.cfg.redisAddr == "" {
		return nil
	}
	calls, err := redisCalls(b.cfg.redisAddr)
	if err != nil {
		b.noteErr("redis INFO: " + err.Error())
		logf("chatbench: -redis-addr %s: %v", b.cfg.redisAddr, err)
		return nil
	}
	return calls
}

// barrier sends one message from each publisher and waits until every
// counted member has it: afterwards every member is registered with the
// server and earlier backlog has cleared.
func (b *bench) barrier(plan pubPlan, timeout time.Duration) (bool, string, error) {
	step, st := b.newStep()
	for _, m := range plan.pubs {
		if !m.alive() {
			continue
		}
		if err := m.publish(step, time.Now().UnixNano()); err != nil {
			return false, "", err
		}
		st.published.Add(1)
		st.expected.Add(plan.expectEach(m))
	}
	drain(st, timeout)
	got, want := st.delivered.Load(), st.expected.Load()
	return got >= want, fmt.Sprintf("%d of %d sync deliveries", got, want), nil
}

// memberPool is the set of long-lived members of a fanout-like run.
type memberPool struct {
	b       *bench
	specs   []memberSpec
	members []*member
	pubIdx  []int // indexes of the members that publish
	heals   int
	// perPublish is how many counted deliveries one message of m owes;
	// nil means every counted member of the pool.
	perPublish func(m *member) int64
}

func (p *memberPool) publishers() []*member {
	out := make([]*member, len(p.pubIdx))
	for i, k := range p.pubIdx {
		out[i] = p.members[k]
	}
	return out
}

func (p *memberPool) counted() int64 {
	var n int64
	for _, s := range p.specs {
		if s.counted {
			n++
		}
	}
	return n
}

func (p *memberPool) plan(msgRate float64) pubPlan {
	each := p.perPublish
	if each == nil {
		n := p.counted()
		each = func(*member) int64 { return n }
	}
	return pubPlan{pubs: p.publishers(), msgRate: msgRate, expectEach: each, bulk: p.setBulk}
}

// setBulk switches the bulk members' low-water mark on or off.
func (p *memberPool) setBulk(on bool) {
	lowat := 1
	if on {
		lowat = p.b.cfg.lowat
	}
	if p.b.cfg.lowat <= 1 {
		return
	}
	for i, m := range p.members {
		if m != nil && p.specs[i].bulk {
			m.setLowat(lowat)
		}
	}
}

// sampleSpread marks all but about n of specs as bulk, the sampled ones
// spread evenly; n <= 0 samples every member.
func sampleSpread(specs []memberSpec, n int) {
	if n <= 0 || n >= len(specs) {
		return
	}
	stride := float64(len(specs)) / float64(n)
	next := 0.0
	for i := range specs {
		if float64(i) >= next {
			next += stride
			continue
		}
		specs[i].bulk = true
	}
}

// heal reconnects members whose connections ended, under new names (the
// server may not have forgotten the old ones yet). Publishers keep their
// sequence numbers.
func (p *memberPool) heal() error {
	var specs []memberSpec
	var idx []int
	for i, m := range p.members {
		if m == nil || !m.alive() {
			s := p.specs[i]
			p.heals++
			s.name = fmt.Sprintf("%s-r%d", s.name, p.heals)
			specs = append(specs, s)
			idx = append(idx, i)
		}
	}
	if len(specs) == 0 {
		return nil
	}
	ms, cs := p.b.connectAll(specs, p.b.cfg.connectPar, p.b.cfg.setupTimeout)
	for k, m := range ms {
		old := p.members[idx[k]]
		if m != nil && old != nil {
			m.seq = old.seq
			m.cmdID = old.cmdID
		}
		p.members[idx[k]] = m
	}
	if cs.failed > 0 {
		return fmt.Errorf("reconnecting %d members: %d failed: %s", len(specs), cs.failed, cs.firstErr)
	}
	return nil
}

func (p *memberPool) allAlive() bool {
	for _, m := range p.members {
		if m == nil || !m.alive() {
			return false
		}
	}
	return true
}

// settle heals the pool if needed and runs a barrier.
// ready records how connecting the pool's members went and waits for the
// pool to settle. It returns false, with res failed, when the run cannot go
// on.
func (p *memberPool) ready(res *Result, cs *connectStats, total int) bool {
	res.Metrics["connect_s"] = cs.seconds
	if cs.failed > 0 {
		res.fail(fmt.Sprintf("%d of %d members failed to connect: %s", cs.failed, total, cs.firstErr))
		return false
	}
	if err := p.settle(); err != nil {
		res.fail("setup: " + err.Error())
		return false
	}
	return true
}

func (p *memberPool) settle() error {
	var state string
	for attempt := 0; attempt < 3; attempt++ {
		if err := p.heal(); err != nil {
			return err
		}
		ok, st, err := p.b.barrier(p.plan(1), p.b.cfg.barrierTimeout)
		if err != nil {
			return err
		}
		if ok && p.allAlive() {
			return nil
		}
		state = st
	}
	msg := "members not in sync after 3 barriers: " + state
	if d := p.b.dropSummary(); d != "" {
		msg += "; connections ended by the server: " + d
	}
	return errors.New(msg)
}

func median(xs []float64) float64 {
	var v []float64
	for _, x := range xs {
		if !math.IsNaN(x) {
			v = append(v, x)
		}
	}
	if len(v) == 0 {
		return nan
	}
	sort.Float64s(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}
