package main

import (
	"fmt"
	"math"
	"time"
)

// runFanout measures one room of size members, publishers among them,
// at an open-loop rate stepped up by -factor per full-length step until
// p99 latency passes the limit or delivery falls below the minimum in two
// steps in a row (a server that batches under load can fail one rate and
// pass the next), or in one step in which the server dropped clients:
// reconnecting hundreds of members, and the join storms that follow, would
// leave the server in a state no longer comparable. The result is the
// highest rate that passed; when the failure above it was clean, one more
// step tries the geometric middle.
func runFanout(cfg *config, ad adapter, size int) *Result {
	res := newResult(cfg, ad, "fanout", fmt.Sprintf("members=%d", size))
	res.Params = map[string]any{"members": size, "publishers": cfg.publishers, "size_bytes": cfg.size,
		"step_s": cfg.duration.Seconds(), "factor": cfg.factor, "p99_limit_ms": cfg.p99Limit,
		"min_delivery": cfg.minDelivery, "sampled": min(size, cfg.sample), "lowat": cfg.lowat}
	if len(cfg.urls) > 1 {
		res.Params["servers"] = len(cfg.urls)
	}
	if size > cfg.maxConns {
		res.fail(fmt.Sprintf("%d members exceed -max-conns %d", size, cfg.maxConns))
		return res
	}
	b, err := newBench(cfg, ad)
	if err != nil {
		res.fail(err.Error())
		return res
	}
	defer b.close()
	defer res.noteDrops(b)
	pubs := min(cfg.publishers, size)
	pool := &memberPool{b: b}
	for i := range pubs {
		pool.pubIdx = append(pool.pubIdx, i)
	}
	for i := range size {
		pool.specs = append(pool.specs, memberSpec{id: i, name: fmt.Sprintf("u%d", i), room: cfg.room, counted: true})
	}
	sampleSpread(pool.specs, cfg.sample)
	ms, cs := b.connectAll(pool.specs, cfg.connectPar, cfg.setupTimeout)
	pool.members = ms
	defer func() { closeAll(pool.members) }()
	if !pool.ready(res, cs, size) {
		return res
	}
	logf("fanout %s members=%d: %d connected in %.1fs", res.Label, size, size, cs.seconds)

	var best *stepResult
	step := func(kind string, rate float64, dur time.Duration) (stepResult, bool) {
		if err := pool.settle(); err != nil {
			res.Notes = append(res.Notes, "settle before step: "+err.Error())
			return stepResult{}, false
		}
		r := b.measureStep(kind, pool.plan(rate/float64(size)), size, dur)
		res.Steps = append(res.Steps, r)
		logf("  %-7s %9.0f/s offered: %9.0f/s delivered %.4f p50 %.2f p99 %.2f ms, server %.0f%% gen %.0f%% %s",
			kind, rate, r.Rate, r.DeliveryRatio, r.P50, r.P99, 100*r.ServerUtil, 100*r.GenLoad, r.Why)
		if r.OK && kind == "measure" && (best == nil || r.OfferedRate > best.OfferedRate) {
			rc := r
			best = &rc
		}
		return r, true
	}

	rate := cfg.startRate
	bad, badClean := 0.0, false
	genBound, hitMax := false, false
	fails := 0
	for range 40 {
		if rate > cfg.maxRate {
			hitMax = bad == 0
			break
		}
		r, ok := step("measure", rate, cfg.duration)
		if !ok {
			break
		}
		if r.Invalid {
			genBound = true
			break
		}
		if r.OK {
			bad, badClean, fails = 0, false, 0
		} else {
			dirty := r.Drops > 0 || r.PubErrors > 0
			if bad == 0 {
				bad, badClean = rate, !dirty
			}
			// A server that batches under load may fail a rate and pass a
			// higher one, so a clean failure gets one more step.
			if fails++; dirty || fails >= 2 {
				break
			}
		}
		rate *= cfg.factor
	}
	switch {
	case best == nil && badClean:
		// The first rate was too high: walk down.
		for lo := bad / cfg.factor / cfg.factor; best == nil && lo >= cfg.startRate/64; lo /= cfg.factor * cfg.factor {
			r, ok := step("measure", lo, cfg.duration)
			if !ok || (!r.OK && r.Drops > 0) {
				break
			}
		}
	case best != nil && badClean && cfg.refine > 0:
		mid := math.Sqrt(best.OfferedRate * bad)
		if r, ok := step("measure", mid, cfg.duration); ok && r.Invalid {
			genBound = true
		}
	}
	if best == nil {
		res.fail("no rate passed a full-length step")
		return res
	}
	switch {
	case genBound:
		res.Bound = "generator"
		res.Notes = append(res.Notes, "the generator saturated its core before the server failed: the figure is a lower bound")
	case hitMax:
		res.Bound = "max-rate"
	case bad > 0:
		res.Bound = "server"
	default:
		res.Bound = "setup"
		res.Notes = append(res.Notes, "stepping stopped early: the members could not be brought back in sync")
	}
	res.Metrics["deliveries_per_s"] = best.Rate
	res.Metrics["offered_per_s"] = best.OfferedRate
	res.Metrics["p50_ms"] = best.P50
	res.Metrics["p99_ms"] = best.P99
	res.Metrics["p999_ms"] = best.P999
	res.Metrics["max_ms"] = best.Max
	res.Metrics["cpu_s_per_million"] = best.CPUPerM
	res.Metrics["server_cpu_util"] = best.ServerUtil
	res.Metrics["generator_cpu_util"] = best.GenLoad
	res.Metrics["delivery_pct"] = 100 * best.DeliveryRatio
	if bad > 0 {
		res.Metrics["first_bad_per_s"] = bad
	}
	res.Metrics["reconnects"] = float64(pool.heals)
	if best.RedisByCmd != nil && best.Published > 0 {
		pub := float64(best.Published)
		res.Metrics["redis_cmds_per_msg"] = float64(best.RedisCmds) / pub
		for cmd, n := range best.RedisByCmd {
			res.Metrics["redis_per_msg_"+cmd] = float64(n) / pub
		}
	}
	res.Valid = true
	return res
}
