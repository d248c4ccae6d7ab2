package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// runMix runs many small rooms at a modest message rate while users come
// and go: rooms x members stable members (the first of each room
// publishes at roomRate messages per second), plus churn connections per
// second that join a random room (taking its welcome with history), stay
// churnLife and leave. It reports message latency and loss at the stable
// members, the churners' join latency, and every error seen.
func runMix(cfg *config, ad adapter) *Result {
	rooms, per := cfg.rooms, cfg.roomMembers
	total := rooms * per
	maxChurners := int(cfg.churn*cfg.churnLife.Seconds())*2 + 16
	res := newResult(cfg, ad, "mix", fmt.Sprintf("rooms=%dx%d", rooms, per))
	res.Params = map[string]any{"rooms": rooms, "members": per, "room_msgs_per_s": cfg.roomRate,
		"churn_per_s": cfg.churn, "churn_life_s": cfg.churnLife.Seconds(), "duration_s": cfg.duration.Seconds()}
	if total+maxChurners > cfg.maxConns {
		res.fail(fmt.Sprintf("%d members + %d churners exceed -max-conns %d", total, maxChurners, cfg.maxConns))
		return res
	}
	b, err := newBench(cfg, ad)
	if err != nil {
		res.fail(err.Error())
		return res
	}
	defer b.close()
	defer res.noteDrops(b)
	pool := &memberPool{b: b, perPublish: func(*member) int64 { return int64(per) }}
	for r := range rooms {
		for k := range per {
			if k == 0 {
				pool.pubIdx = append(pool.pubIdx, len(pool.specs))
			}
			pool.specs = append(pool.specs, memberSpec{id: len(pool.specs), name: fmt.Sprintf("m%d", k),
				room: fmt.Sprintf("mix%d", r), counted: true})
		}
	}
	ms, cs := b.connectAll(pool.specs, cfg.connectPar, cfg.setupTimeout)
	pool.members = ms
	defer func() { closeAll(pool.members) }()
	if !pool.ready(res, cs, total) {
		return res
	}
	logf("mix %s: %d members in %d rooms connected in %.1fs", res.Label, total, rooms, cs.seconds)

	errs0 := b.errors.Load()
	ch := &churner{b: b, rooms: rooms, life: cfg.churnLife, max: maxChurners}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { ch.run(cfg.churn, stop) })
	r := b.measureStep("mix", pool.plan(float64(rooms)*cfg.roomRate), per, cfg.duration)
	close(stop)
	wg.Wait()
	after := readProcs(cfg.pids)
	res.Steps = append(res.Steps, r)

	res.Metrics["deliveries_per_s"] = r.Rate
	res.Metrics["p50_ms"] = r.P50
	res.Metrics["p99_ms"] = r.P99
	res.Metrics["p999_ms"] = r.P999
	res.Metrics["max_ms"] = r.Max
	res.Metrics["delivery_pct"] = 100 * r.DeliveryRatio
	res.Metrics["duplicates"] = float64(r.Dups)
	res.Metrics["reordered"] = float64(r.Reorders)
	res.Metrics["lost"] = float64(r.Expected - r.Delivered)
	res.Metrics["drops"] = float64(r.Drops)
	res.Metrics["server_errors"] = float64(b.errors.Load() - errs0)
	res.Metrics["joins"] = float64(ch.ok.Load())
	res.Metrics["joins_per_s"] = float64(ch.ok.Load()) / cfg.duration.Seconds()
	res.Metrics["join_failures"] = float64(ch.failed.Load())
	res.Metrics["joins_skipped"] = float64(ch.skipped.Load())
	res.Metrics["join_p50_ms"] = ch.hist.quantile(0.5)
	res.Metrics["join_p99_ms"] = ch.hist.quantile(0.99)
	res.Metrics["server_cpu_util"] = r.ServerUtil
	res.Metrics["cpu_s_per_million"] = r.CPUPerM
	res.Metrics["generator_cpu_util"] = r.GenLoad
	if after.ok {
		res.Metrics["rss_mib"] = float64(after.rssKiB) / 1024
	}
	errors := r.Dups + r.Reorders + (r.Expected - r.Delivered) + r.Drops + int64(res.Metrics["server_errors"]) + ch.failed.Load()
	res.Metrics["errors"] = float64(errors)
	if ch.firstErr != "" {
		res.Notes = append(res.Notes, "first join failure: "+ch.firstErr)
	}
	if r.Invalid {
		res.fail(r.Why)
		return res
	}
	res.Valid = true
	return res
}

// A churner opens connections at a steady rate, each of which joins a
// random room, waits for its welcome, stays for life and leaves.
type churner struct {
	b     *bench
	rooms int
	life  time.Duration
	max   int

	inflight            atomic.Int64
	ok, failed, skipped atomic.Int64
	hist                histogram
	firstErrOnce        sync.Once
	firstErr            string
	seq                 atomic.Int64
}

func (c *churner) run(rate float64, stop <-chan struct{}) {
	if rate <= 0 {
		<-stop
		return
	}
	interval := time.Duration(float64(time.Second) / rate)
	var wg sync.WaitGroup
	defer wg.Wait()
	next := time.Now()
	for {
		select {
		case <-stop:
			return
		case <-time.After(time.Until(next)):
		}
		next = next.Add(interval)
		if c.inflight.Load() >= int64(c.max) {
			c.skipped.Add(1)
			continue
		}
		c.inflight.Add(1)
		k := c.seq.Add(1)
		wg.Go(func() {
			defer c.inflight.Add(-1)
			spec := memberSpec{id: 1_000_000 + int(k), name: fmt.Sprintf("c%d", k),
				room: fmt.Sprintf("mix%d", rand.IntN(c.rooms)), counted: false}
			t0 := time.Now()
			m, err := c.b.connectReady(context.Background(), spec)
			if err != nil {
				c.failed.Add(1)
				c.firstErrOnce.Do(func() { c.firstErr = err.Error() })
				return
			}
			c.hist.record(time.Since(t0))
			c.ok.Add(1)
			select {
			case <-time.After(c.life):
			case <-stop:
			}
			m.close()
			<-m.done
		})
	}
}
