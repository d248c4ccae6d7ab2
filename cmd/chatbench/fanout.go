package main

import (
	"fmt"
	"math"
	"time"
)

// runFanout measures one room of size members, publishers among them,
// at an open-loop rate stepped up until p99 latency passes the limit or
// delivery falls below the minimum: first short ramp steps that double
// the rate, then full-length steps that bisect (in log scale) between the
// last good and the first bad rate. The result is the highest rate that
// passed a full-length step.
func runFanout(cfg *config, ad adapter, size int) *Result {
	res := newResult(cfg, ad, "fanout", fmt.Sprintf("members=%d", size))
	res.Params = map[string]any{"members": size, "publishers": cfg.publishers, "size_bytes": cfg.size,
		"step_s": cfg.duration.Seconds(), "ramp_step_s": cfg.rampDur.Seconds(), "p99_limit_ms": cfg.p99Limit,
		"min_delivery": cfg.minDelivery, "sampled": min(size, cfg.sample), "lowat": cfg.lowat}
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
	res.Metrics["connect_s"] = cs.seconds
	if cs.failed > 0 {
		res.fail(fmt.Sprintf("%d of %d members failed to connect: %s", cs.failed, size, cs.firstErr))
		return res
	}
	if err := pool.settle(); err != nil {
		res.fail("setup: " + err.Error())
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

	// Ramp.
	rate := cfg.startRate
	good, bad := 0.0, 0.0
	genBound := false
	for range 24 {
		if rate > cfg.maxRate {
			break
		}
		r, ok := step("ramp", rate, cfg.rampDur)
		if !ok {
			break
		}
		if r.Invalid {
			genBound = true
			bad = rate
			break
		}
		if !r.OK {
			bad = rate
			break
		}
		good = rate
		rate *= cfg.factor
	}
	if good == 0 && bad == 0 {
		res.fail("no step could run")
		return res
	}
	hitMax := bad == 0
	if hitMax {
		bad = math.Min(rate, cfg.maxRate*cfg.factor)
	}

	// Refine with full-length steps.
	lo, hi := good, bad
	if lo == 0 {
		lo = bad / cfg.factor / cfg.factor
	}
	if !hitMax {
		for range cfg.refine {
			mid := math.Sqrt(lo * hi)
			r, ok := step("measure", mid, cfg.duration)
			if !ok {
				break
			}
			if r.Invalid {
				genBound = true
			}
			if r.OK {
				lo = mid
			} else {
				hi = mid
			}
		}
	}
	// Make sure the reported rate passed a full-length step: try lo, then
	// walk down.
	for try := 0; best == nil && try < 4 && lo >= cfg.startRate/8; try++ {
		r, ok := step("measure", lo, cfg.duration)
		if !ok {
			break
		}
		if r.Invalid {
			genBound = true
		}
		if !r.OK {
			lo /= math.Sqrt(cfg.factor)
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
	default:
		res.Bound = "server"
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
	res.Metrics["first_bad_per_s"] = hi
	res.Metrics["reconnects"] = float64(pool.heals)
	res.Valid = true
	return res
}
