package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/chatkit/chatkit"
	"github.com/chatkit/chatkit/redisadapter"
	"github.com/redis/go-redis/v9"
)

func init() { redisNode = newRedisNode }

// newRedisNode connects to the Redis at url and checks that it answers,
// so that a wrong address fails at start and not at the first join.
func newRedisNode(url string, history int, logger *slog.Logger) (chatkit.Option, func(), error) {
	ropts, err := redis.ParseURL(url)
	if err != nil {
		return nil, nil, err
	}
	// Calls end at their context's deadline (the Server's store timeout),
	// as redisadapter asks; this also bounds the ping below.
	ropts.ContextTimeoutEnabled = true
	client := redis.NewClient(ropts)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := client.Ping(ctx).Err(); err != nil {
		client.Close()
		return nil, nil, fmt.Errorf("ping: %w", err)
	}
	a := redisadapter.New(client, redisadapter.WithHistorySize(history), redisadapter.WithLogger(logger))
	closeFn := func() {
		a.Close() // before the client, as redisadapter asks
		client.Close()
	}
	return chatkit.WithAdapter(a), closeFn, nil
}
