// Command example serves a complete chat: the page at /, the WebSocket
// endpoint at /ws and the client library at /chatkit.js.
//
//	go run ./example            # then open http://localhost:8000/?user=Alice and ?user=Bob
//	go run ./example -addr :9000 -history 500 -max-len 2000
//	go run ./example -addr :8001 -redis redis://127.0.0.1:6379/0   # one of several nodes
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
	"github.com/chatkit/chatkit/redisadapter"
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
	}
	if *origins != "" {
		opts = append(opts, chatkit.WithOriginPatterns(strings.Split(*origins, ",")...))
	}
	if *redisURL != "" {
		adapter, err := connectRedis(*redisURL, *history, logger)
		if err != nil {
			logger.Error("redis", "err", err)
			os.Exit(1)
		}
		defer adapter.Close()
		opts = append(opts, chatkit.WithAdapter(adapter))
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

// newHandler serves the page at /, the chat at /ws and the client library
// at /chatkit.js.
func newHandler(chat *chatkit.Server) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/ws", chat)
	mux.Handle("/chatkit.js", chatkit.ClientJS())
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Write(page)
	})
	return mux
}

func portOf(addr string) string {
	if i := strings.LastIndex(addr, ":"); i >= 0 {
		return addr[i:]
	}
	return ""
}
