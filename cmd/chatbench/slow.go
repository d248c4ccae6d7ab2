package main

import (
	"fmt"
	"math"
	"sync"
	"time"
)

// runSlow is fanout at one fixed rate, twice: a baseline step with every
// member reading, then a step during which slowFrac of the members (never
// publishers) stop reading, their sockets' receive buffers made small so
// that the server feels it soon. It reports the healthy members' p99 and
// delivery in both steps, the server's RSS growth during the slow step,
// and how many slow members the server dropped.
func runSlow(cfg *config, ad adapter) *Result {
	size := cfg.slowMembers
	nSlow := max(1, int(math.Round(float64(size)*cfg.slowFrac)))
	res := newResult(cfg, ad, "slow", fmt.Sprintf("members=%d rate=%.0f", size, cfg.rate))
	res.Params = map[string]any{"members": size, "slow": nSlow, "rate_per_s": cfg.rate, "publishers": cfg.publishers,
		"step_s": cfg.duration.Seconds(), "slow_rcvbuf": cfg.slowRcvbuf, "size_bytes": cfg.size,
		// What each stalled member is sent during the stalled step, text
		// alone: servers first park this in kernel socket buffers (up to a
		// few MiB each on loopback) before their own queues fill.
		"stalled_backlog_kib": math.Round(cfg.rate / float64(size) * cfg.duration.Seconds() * float64(cfg.size) / 1024)}
	if size > cfg.maxConns {
		res.fail(fmt.Sprintf("%d members exceed -max-conns %d", size, cfg.maxConns))
		return res
	}
	if nSlow+cfg.publishers > size {
		res.fail("too few members for the slow ones and the publishers")
		return res
	}
	b, err := newBench(cfg, ad)
	if err != nil {
		res.fail(err.Error())
		return res
	}
	defer b.close()
	defer res.noteDrops(b)
	pool := &memberPool{b: b}
	for i := range cfg.publishers {
		pool.pubIdx = append(pool.pubIdx, i)
	}
	healthy := size - nSlow
	for i := range size {
		s := memberSpec{id: i, name: fmt.Sprintf("u%d", i), room: cfg.room, counted: i < healthy}
		if !s.counted {
			// A small window, and an Internet-sized MSS: loopback's 64 KiB
			// segments make the server's socket send buffer autotune to
			// several MiB, which would hide the server's own queue.
			s.rcvbuf, s.mss = cfg.slowRcvbuf, 1400
		}
		pool.specs = append(pool.specs, s)
	}
	sampleSpread(pool.specs[:healthy], cfg.sample)
	// The slow members, whose small receive buffers are set before they
	// connect (so that the server's side of their connections stays small
	// too), join last: they then see no join storm.
	ms, cs := b.connectAll(pool.specs[:healthy], cfg.connectPar, cfg.setupTimeout)
	if cs.failed == 0 {
		ms2, cs2 := b.connectAll(pool.specs[healthy:], cfg.connectPar, cfg.setupTimeout)
		ms = append(ms, ms2...)
		cs.failed, cs.seconds, cs.firstErr = cs2.failed, cs.seconds+cs2.seconds, cs2.firstErr
	}
	pool.members = ms
	defer func() { closeAll(pool.members) }()
	if !pool.ready(res, cs, size) {
		return res
	}
	logf("slow %s: %d members (%d slow) connected in %.1fs", res.Label, size, nSlow, cs.seconds)
	msgRate := cfg.rate / float64(size)

	base := b.measureStep("baseline", pool.plan(msgRate), size, cfg.duration)
	res.Steps = append(res.Steps, base)
	logf("  baseline: p99 %.2f ms delivery %.4f %s", base.P99, base.DeliveryRatio, base.Why)
	if err := pool.settle(); err != nil {
		res.fail("after baseline: " + err.Error())
		return res
	}

	slow := pool.members[healthy:]
	for _, m := range slow {
		m.pause()
	}
	before := readProcs(cfg.pids)
	var peak int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			if s := readProcs(cfg.pids); s.ok && s.rssKiB > peak {
				peak = s.rssKiB
			}
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	})
	withSlow := b.measureStep("slow", pool.plan(msgRate), size, cfg.duration)
	close(stop)
	wg.Wait()
	after := readProcs(cfg.pids)
	res.Steps = append(res.Steps, withSlow)
	logf("  slow:     p99 %.2f ms delivery %.4f %s", withSlow.P99, withSlow.DeliveryRatio, withSlow.Why)

	// Let the slow members read again: those the server dropped see their
	// close once they reach it.
	for _, m := range slow {
		m.resume()
	}
	deadline := time.Now().Add(cfg.drain)
	dropped := 0
	for time.Now().Before(deadline) {
		dropped = 0
		for _, m := range slow {
			if !m.alive() {
				dropped++
			}
		}
		if dropped == len(slow) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}

	res.Metrics["base_p99_ms"] = base.P99
	res.Metrics["base_p50_ms"] = base.P50
	res.Metrics["slow_p99_ms"] = withSlow.P99
	res.Metrics["slow_p50_ms"] = withSlow.P50
	res.Metrics["p99_ratio"] = withSlow.P99 / base.P99
	res.Metrics["base_delivery_pct"] = 100 * base.DeliveryRatio
	res.Metrics["slow_delivery_pct"] = 100 * withSlow.DeliveryRatio
	res.Metrics["healthy_lost"] = float64(withSlow.Expected - withSlow.Delivered)
	res.Metrics["slow_dropped"] = float64(dropped)
	res.Metrics["slow_members"] = float64(nSlow)
	res.Metrics["cpu_s_per_million"] = withSlow.CPUPerM
	if before.ok && after.ok {
		res.Metrics["rss_before_mib"] = float64(before.rssKiB) / 1024
		res.Metrics["rss_growth_mib"] = float64(max(peak, after.rssKiB)-before.rssKiB) / 1024
	}
	if base.Invalid || withSlow.Invalid {
		res.fail("generator saturated: " + base.Why + " " + withSlow.Why)
		return res
	}
	res.Valid = true
	return res
}
