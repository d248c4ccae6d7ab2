package main

import (
	"fmt"
	"time"
)

// runIdle opens conns connections spread over rooms of roomSize members,
// waits until every one is in its room, lets the server settle, and
// reports the growth of its RSS (and goroutines, when it exposes them)
// per connection. RSS is read twice, settle and settle+1s after the last
// join; the second reading is the result.
func runIdle(cfg *config, ad adapter) *Result {
	n := cfg.conns
	res := newResult(cfg, ad, "idle", fmt.Sprintf("conns=%d", n))
	res.Params = map[string]any{"conns": n, "room_size": cfg.roomSize, "settle_s": cfg.settle.Seconds()}
	if n > cfg.maxConns {
		res.fail(fmt.Sprintf("%d connections exceed -max-conns %d", n, cfg.maxConns))
		return res
	}
	if len(cfg.pids) == 0 {
		res.fail("idle needs -pid of the server")
		return res
	}
	b, err := newBench(cfg, ad)
	if err != nil {
		res.fail(err.Error())
		return res
	}
	defer b.close()
	time.Sleep(cfg.settle / 2)
	base := readProcs(cfg.pids)
	g0, hasG := serverGoroutines(cfg.statsURL)
	if !base.ok {
		res.fail(fmt.Sprintf("cannot read /proc/%s", pidList(cfg.pids)))
		return res
	}
	specs := make([]memberSpec, n)
	for i := range specs {
		specs[i] = memberSpec{id: i, name: fmt.Sprintf("u%d", i), room: fmt.Sprintf("idle%d", i/max(cfg.roomSize, 1)), counted: true}
	}
	ms, cs := b.connectAll(specs, cfg.connectPar, cfg.setupTimeout)
	defer closeAll(ms)
	res.Metrics["connect_s"] = cs.seconds
	res.Metrics["connect_p50_ms"] = cs.hist.quantile(0.5)
	res.Metrics["connect_p99_ms"] = cs.hist.quantile(0.99)
	if cs.failed > 0 {
		res.fail(fmt.Sprintf("%d of %d connections failed: %s", cs.failed, n, cs.firstErr))
		return res
	}
	logf("idle %s: %d connections in %.1fs", res.Label, n, cs.seconds)
	time.Sleep(cfg.settle)
	first := readProcs(cfg.pids)
	time.Sleep(time.Second)
	second := readProcs(cfg.pids)
	if !first.ok || !second.ok {
		res.fail("server process gone")
		return res
	}
	alive := 0
	for _, m := range ms {
		if m.alive() {
			alive++
		}
	}
	if alive < n {
		res.fail(fmt.Sprintf("%d of %d connections closed while idle", n-alive, n))
		return res
	}
	res.Metrics["rss_base_mib"] = float64(base.rssKiB) / 1024
	res.Metrics["rss_mib"] = float64(second.rssKiB) / 1024
	res.Metrics["rss_kib_per_conn_first"] = float64(first.rssKiB-base.rssKiB) / float64(n)
	res.Metrics["rss_kib_per_conn"] = float64(second.rssKiB-base.rssKiB) / float64(n)
	res.Metrics["threads"] = float64(second.threads)
	if g1, ok := serverGoroutines(cfg.statsURL); ok && hasG {
		res.Metrics["goroutines_per_conn"] = float64(g1-g0) / float64(n)
	}
	res.Valid = true
	return res
}
