// Command example serves a complete chat: the page at /, the WebSocket
// endpoint at /ws and the client library at /chatkit.js.
//
//	go run ./example            # then open http://localhost:8000/?user=Alice and ?user=Bob
//	go run ./example -addr :9000 -history 500 -max-len 2000
//	go run ./example -addr :8001 -redis redis://127.0.0.1:6379/0   # one of several nodes
//	go run ./example -postgres postgres://chat:PASS@127.0.0.1:5432/chat   # history in PostgreSQL
//	go run ./example -postgres postgres://... -redis redis://...   # a node of several, history in PostgreSQL
//
// Besides the chat it serves /healthz, /readyz and /metrics.
//
// It uses chatkit's defaults unless a flag changes them, and on SIGINT or
// SIGTERM closes every session with 1001 before stopping the HTTP server.
package main

import (
	"context"
	_ "embed"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/chatkit/chatkit"
	"github.com/chatkit/chatkit/chatkitprom"
	"github.com/chatkit/chatkit/pgstore"
	"github.com/chatkit/chatkit/redisadapter"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"golang.org/x/time/rate"
)

//go:embed index.html
var page []byte

func main() {
	addr := flag.String("addr", ":8000", "listen address")
	history := flag.Int("history", 100, "messages kept per room; 0 disables history")
	msgRate := flag.Float64("rate", 5, "messages per second per session; 0 for no limit")
	burst := flag.Int("burst", 10, "message burst per session")
	maxLen := flag.Int("max-len", 500, "longest message, in characters")
	dups := flag.Bool("allow-duplicates", false, "let one username hold several sessions (tabs)")
	origins := flag.String("origins", "", "comma-separated extra origin host patterns allowed to connect")
	debug := flag.Bool("debug", false, "log every session")
	redisURL := flag.String("redis", "", "share rooms, history and presence with other nodes through this Redis, e.g. redis://127.0.0.1:6379/0")
	maxConns := flag.Int("max-conns", 0, "most connections this process takes; past it 503 (0: no cap)")
	maxConnsPerIP := flag.Int("max-conns-per-ip", 0, "most connections from one client address; past it 429 (0: no cap; behind a proxy, set -trusted-proxies)")
	trustedProxies := flag.String("trusted-proxies", "", "comma-separated CIDRs of reverse proxies whose X-Forwarded-For names the client")
	leaveGrace := flag.Duration("leave-grace", 0, "how long a user whose last session closed stays present, so a reload shows no leave and join (0: announce at once)")
	postgresURL := flag.String("postgres", "", "keep rooms and history in this PostgreSQL (tables made at start), e.g. postgres://USER:PASS@HOST:5432/DB; with -redis, Redis carries only events and presence")
	flag.Parse()

	level := slog.LevelInfo
	if *debug {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	limit := rate.Limit(*msgRate)
	if *msgRate == 0 {
		limit = rate.Inf
	}
	opts := []chatkit.Option{
		chatkit.WithHistorySize(*history),
		chatkit.WithRateLimit(limit, *burst),
		chatkit.WithMaxMessageLength(*maxLen),
		chatkit.WithDuplicateUsernames(*dups),
		chatkit.WithLogger(logger),
		chatkit.WithMaxConns(*maxConns),
		chatkit.WithMaxConnsPerIP(*maxConnsPerIP),
		chatkit.WithLeaveGrace(*leaveGrace),
	}
	if *trustedProxies != "" {
		opts = append(opts, chatkit.WithTrustedProxies(strings.Split(*trustedProxies, ",")...))
	}
	if *origins != "" {
		opts = append(opts, chatkit.WithOriginPatterns(strings.Split(*origins, ",")...))
	}
	var store *pgstore.Store
	if *postgresURL != "" {
		var (
			pool *pgxpool.Pool
			err  error
		)
		store, pool, err = connectPostgres(*postgresURL, logger)
		if err != nil {
			logger.Error("postgres", "err", err)
			os.Exit(1)
		}
		defer pool.Close()
		defer store.Close()
		opts = append(opts, chatkit.WithStore(store))
	}
	if *redisURL != "" {
		adapter, err := connectRedis(*redisURL, *history, logger)
		if err != nil {
			logger.Error("redis", "err", err)
			os.Exit(1)
		}
		defer adapter.Close()
		if store != nil {
			opts = append(opts, chatkit.WithBroker(adapter)) // history stays in PostgreSQL
		} else {
			opts = append(opts, chatkit.WithAdapter(adapter))
		}
	}
	chat := chatkit.New(opts...)

	srv := &http.Server{Addr: *addr, Handler: newHandler(chat), ReadHeaderTimeout: 10 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		<-ctx.Done()
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		// WebSocket connections are hijacked, so http.Server.Shutdown does
		// not wait for them: close the chat first, then the HTTP server.
		if err := chat.Shutdown(shutdownCtx); err != nil {
			logger.Warn("chat shutdown", "err", err)
		}
		srv.Shutdown(shutdownCtx)
	}()

	logger.Info("serving chat", "addr", *addr, "open", "http://localhost"+portOf(*addr)+"/?user=Alice")
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		logger.Error("listen", "err", err)
		os.Exit(1)
	}
	<-stopped
}

// connectRedis returns an adapter on the Redis at rawURL, once Redis has
// answered a PING; it gives up after 5 seconds. Errors never show the
// password.
func connectRedis(rawURL string, history int, logger *slog.Logger) (*redisadapter.Adapter, error) {
	ropts, err := redis.ParseURL(rawURL)
	if err != nil {
		return nil, errors.New("-redis: not a redis:// URL (redis://[:PASSWORD@]HOST:PORT/DB)")
	}
	ropts.MaxRetries = 1
	ropts.ContextTimeoutEnabled = true // calls end at chatkit's store timeout
	client := redis.NewClient(ropts)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := client.Ping(ctx).Err(); err != nil {
		client.Close()
		return nil, fmt.Errorf("cannot reach Redis at %s: %v", ropts.Addr, err)
	}
	logger.Info("sharing the chat through Redis", "addr", ropts.Addr, "db", ropts.DB)
	return redisadapter.New(client, redisadapter.WithHistorySize(history), redisadapter.WithLogger(logger)), nil
}

// connectPostgres returns a store on the PostgreSQL at rawURL, once its
// tables are made or brought up to date, and its pool, to close after it;
// it gives up after 5 seconds. The store keeps every message. Errors never
// show the password.
func connectPostgres(rawURL string, logger *slog.Logger) (*pgstore.Store, *pgxpool.Pool, error) {
	const usage = "-postgres: not a postgres:// URL (postgres://USER:PASS@HOST:PORT/DB)"
	if !strings.HasPrefix(rawURL, "postgres://") && !strings.HasPrefix(rawURL, "postgresql://") {
		return nil, nil, errors.New(usage)
	}
	cfg, err := pgxpool.ParseConfig(rawURL)
	if err != nil {
		return nil, nil, errors.New(usage)
	}
	cc := cfg.ConnConfig
	addr := fmt.Sprintf("%s:%d/%s", cc.Host, cc.Port, cc.Database)
	// pgx leaves passwords out of its errors; this makes sure of it.
	hide := func(err error) string {
		msg := err.Error()
		if cc.Password != "" {
			msg = strings.ReplaceAll(msg, cc.Password, "xxxxx")
		}
		return msg
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("PostgreSQL at %s: %s", addr, hide(err))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, nil, fmt.Errorf("cannot reach PostgreSQL at %s: %s", addr, hide(err))
	}
	store, err := pgstore.Open(ctx, pool, pgstore.WithLogger(logger))
	if err != nil {
		pool.Close()
		return nil, nil, fmt.Errorf("PostgreSQL at %s: %s", addr, hide(err))
	}
	logger.Info("keeping the chat in PostgreSQL", "addr", addr)
	return store, pool, nil
}

// newHandler serves the page at /, the chat at /ws and the client library
// at /chatkit.js.
//
// It also serves what operators need: /healthz (liveness: the process
// answers), /readyz (readiness: 503 while shutting down or while Redis or
// PostgreSQL do not answer) and /metrics (Prometheus).
func newHandler(chat *chatkit.Server) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/ws", chat)
	mux.Handle("/chatkit.js", chatkit.ClientJS())
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Write(page)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if err := chat.Ready(ctx); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "not ready: %v\n", err)
			return
		}
		w.Write([]byte("ready\n"))
	})
	mux.Handle("GET /metrics", chatkitprom.Handler(chat))
	return mux
}

func portOf(addr string) string {
	if i := strings.LastIndex(addr, ":"); i >= 0 {
		return addr[i:]
	}
	return ""
}
