// Command chatkitserver is the chatkit server that the benchmarks drive:
// a chatkit.Server at /ws with the per-session rate limit off (rate.Inf),
// a small history, and the other options from flags, plus /debug/stats
// (goroutines and heap, for chatbench -stats) and /debug/pprof/.
//
//	chatkitserver -addr 127.0.0.1:8100 [-queue 256] [-history 16] [-cpuprofile cpu.out] [-redis redis://127.0.0.1:6379/0]
//
// With -redis the server is one node of a chat kept in that Redis
// (redisadapter), so that several of these processes serve one chat.
//
// It stops on SIGINT or SIGTERM, writing the CPU profile if one was asked
// for.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"log"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"runtime"
	runpprof "runtime/pprof"
	"syscall"
	"time"

	"github.com/chatkit/chatkit"
	"golang.org/x/time/rate"
)

// redisNode, set by redis.go, returns the option that makes the server a
// node of the chat kept in the Redis at url, and what closes it at exit.
// A hook rather than a direct call so that this file alone still builds
// against an older chatkit without redisadapter: bench/run's chatkit@REV
// contenders build only main.go inside the old commit's module.
var redisNode func(url string, history int, logger *slog.Logger) (chatkit.Option, func(), error)

func main() {
	addr := flag.String("addr", "127.0.0.1:8100", "listen address")
	queue := flag.Int("queue", 256, "per-session send queue, in events (WithSendQueue)")
	history := flag.Int("history", 16, "messages kept per room (WithHistorySize)")
	msgRate := flag.Float64("rate", 0, "per-session messages per second; 0 disables the rate limit (rate.Inf)")
	burst := flag.Int("burst", 10, "rate limit burst, when -rate > 0")
	maxRooms := flag.Int("max-rooms", 100000, "WithMaxRooms")
	maxLen := flag.Int("max-message-length", 500, "WithMaxMessageLength")
	dup := flag.Bool("duplicates", false, "WithDuplicateUsernames")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	logLevel := flag.String("log", "warn", "log level: debug, info, warn or error")
	redisURL := flag.String("redis", "", "keep the chat in this Redis (redisadapter), e.g. redis://127.0.0.1:6379/0")
	memRate := flag.Int("memprofilerate", runtime.MemProfileRate, "runtime.MemProfileRate, for /debug/pprof/heap (1 records every allocation)")
	flag.Parse()
	runtime.MemProfileRate = *memRate

	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		log.Fatalf("-log: %v", err)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	lim := rate.Inf
	if *msgRate > 0 {
		lim = rate.Limit(*msgRate)
	}
	opts := []chatkit.Option{
		chatkit.WithRateLimit(lim, *burst),
		chatkit.WithHistorySize(*history),
		chatkit.WithSendQueue(*queue),
		chatkit.WithMaxRooms(*maxRooms),
		chatkit.WithMaxMessageLength(*maxLen),
		chatkit.WithDuplicateUsernames(*dup),
		chatkit.WithLogger(logger),
	}
	closeRedis := func() {}
	if *redisURL != "" {
		if redisNode == nil {
			log.Fatal("-redis: this build has no Redis support (built from main.go alone)")
		}
		opt, closeFn, err := redisNode(*redisURL, *history, logger)
		if err != nil {
			log.Fatalf("-redis %s: %v", *redisURL, err)
		}
		opts = append(opts, opt)
		closeRedis = closeFn
	}
	chat := chatkit.New(opts...)

	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			log.Fatal(err)
		}
		if err := runpprof.StartCPUProfile(f); err != nil {
			log.Fatal(err)
		}
		defer func() {
			runpprof.StopCPUProfile()
			f.Close()
		}()
	}

	mux := http.NewServeMux()
	mux.Handle("/ws", chat)
	mux.HandleFunc("/debug/stats", func(w http.ResponseWriter, r *http.Request) {
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{
			"goroutines": runtime.NumGoroutine(),
			"heap_inuse": ms.HeapInuse,
			"sys":        ms.Sys,
		})
	})
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)

	srv := &http.Server{Addr: *addr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	srv.RegisterOnShutdown(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		chat.Shutdown(ctx)
	})
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	select {
	case err := <-errc:
		runpprof.StopCPUProfile()
		log.Fatal(err)
	case <-sig:
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	chat.Shutdown(ctx)
	srv.Shutdown(ctx)
	closeRedis()
}
