package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/chatkit/chatkit"
	"github.com/chatkit/chatkit/chatkittest"
	"github.com/chatkit/chatkit/pgstore"
	"github.com/chatkit/chatkit/redisadapter"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
)

// serviceURL returns the URL in the environment variable, or skips the
// test saying how to run it; on CI a missing service is a failure.
func serviceURL(t *testing.T, env string) string {
	t.Helper()
	u := os.Getenv(env)
	if u == "" {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is not set on CI", env)
		}
		t.Skipf("set %s to run this test (bash .ci/run starts Redis and PostgreSQL; README: Try it)", env)
	}
	return u
}

// newSchema makes a schema of the test's own, so that tests and packages
// share the database without seeing each other's rooms.
func newSchema(t *testing.T, dbURL string) string {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	schema := "example_test_" + strings.ToLower(rand.Text()[:12])
	if _, err := conn.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn, err := pgx.Connect(ctx, dbURL)
		if err == nil {
			conn.Exec(ctx, "DROP SCHEMA "+schema+" CASCADE")
			conn.Close(ctx)
		}
	})
	return schema
}

// deployment is the chat as an operator runs it: n processes, each with
// its own pool and Redis client, history in PostgreSQL and fan-out and
// presence in Redis.
type deployment struct {
	urls []string
	stop func()
}

func deploy(t *testing.T, n int, dbURL, schema string, ropts *redis.Options, prefix string) deployment {
	t.Helper()
	var d deployment
	var stops []func()
	for range n {
		cfg, err := pgxpool.ParseConfig(dbURL)
		if err != nil {
			t.Fatal(err)
		}
		cfg.ConnConfig.RuntimeParams["search_path"] = schema
		pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		store, err := pgstore.Open(context.Background(), pool, pgstore.WithLogger(slog.New(slog.DiscardHandler)))
		if err != nil {
			t.Fatal(err)
		}
		client := redis.NewClient(ropts)
		broker := redisadapter.New(client, redisadapter.WithPrefix(prefix), redisadapter.WithLogger(slog.New(slog.DiscardHandler)))
		chat := chatkit.New(chatkit.WithStore(store), chatkit.WithBroker(broker), chatkit.WithLogger(nil), chatkit.WithRateLimit(1000, 1000))
		ts := httptest.NewServer(chat)
		d.urls = append(d.urls, "ws"+strings.TrimPrefix(ts.URL, "http"))
		stops = append(stops, func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			chat.Shutdown(ctx)
			ts.Close()
			broker.Close()
			client.Close()
			store.Close()
			pool.Close()
		})
	}
	var stopped bool
	d.stop = func() {
		if stopped {
			return
		}
		stopped = true
		for _, stop := range stops {
			stop()
		}
	}
	t.Cleanup(d.stop)
	return d
}

func params(kv ...string) url.Values {
	q := url.Values{}
	for i := 0; i+1 < len(kv); i += 2 {
		q.Set(kv[i], kv[i+1])
	}
	return q
}

// TestEveryProcessAndRedisRestartedLoseNothingAcked runs two processes
// with PostgreSQL as the store of record and Redis for fan-out and
// presence, then restarts everything. Redis "restarts" without
// persistence: the new processes get a new key prefix, which is to them
// exactly an empty Redis, without stopping the Redis that other tests
// share.
func TestEveryProcessAndRedisRestartedLoseNothingAcked(t *testing.T) {
	dbURL := serviceURL(t, "CHATKIT_POSTGRES_URL")
	ropts, err := redis.ParseURL(serviceURL(t, "CHATKIT_REDIS_URL"))
	if err != nil {
		t.Fatal(err)
	}
	ropts.ContextTimeoutEnabled = true
	schema := newSchema(t, dbURL)

	before := deploy(t, 2, dbURL, schema, ropts, "restart-"+rand.Text()[:8])
	alice := chatkittest.Dial(t, before.urls[0], params("username", "Alice", "room", "r"), "chatkit.v1")
	w := alice.Expect("welcome")
	epoch := w.Epoch
	bob := chatkittest.Dial(t, before.urls[1], params("username", "Bob", "room", "r"), "")
	bob.Expect("welcome")
	var acked []int64
	for i := range 10 {
		for _, c := range []*chatkittest.Client{alice, bob} {
			c.Send(map[string]string{"type": "chat_message", "text": fmt.Sprint(c.Name, " ", i), "client_msg_id": fmt.Sprint("c-", i)})
			acked = append(acked, c.NextOf("ack").ID)
		}
	}
	before.stop() // every process, and with the new prefix, Redis

	after := deploy(t, 2, dbURL, schema, ropts, "restart-"+rand.Text()[:8])
	carol := chatkittest.Dial(t, after.urls[1], params("username", "Carol", "room", "r"), "")
	w = carol.Expect("welcome")
	if w.Epoch != epoch {
		t.Errorf("epoch %q after the restart, want %q: PostgreSQL keeps it", w.Epoch, epoch)
	}
	kept := map[int64]bool{}
	for _, m := range w.History {
		kept[m.ID] = true
	}
	for _, id := range acked {
		if !kept[id] {
			t.Errorf("acked message %d is not in the history after the restart (history: %d messages)", id, len(w.History))
		}
	}
	// A client that saw up to 5 resumes on the other process with exactly
	// what it missed, not truncated.
	back := chatkittest.Dial(t, after.urls[0], params("username", "Alice", "room", "r", "since", "5", "epoch", epoch), "chatkit.v1")
	w = back.Expect("welcome")
	if w.HistoryTruncated || len(w.History) != len(acked)-5 || w.History[0].ID != 6 {
		t.Errorf("resume since 5: %d messages from id %v, truncated %v; want %d from 6, not truncated", len(w.History), firstID(w.History), w.HistoryTruncated, len(acked)-5)
	}
	// And the ids go on.
	carol.Send(map[string]string{"type": "chat_message", "text": "after", "client_msg_id": "c-after"})
	if a := carol.NextOf("ack"); a.ID != int64(len(acked))+1 {
		t.Errorf("the first message after the restart got id %d, want %d", a.ID, len(acked)+1)
	}
}

func firstID(h []chatkittest.Event) any {
	if len(h) == 0 {
		return "none"
	}
	return h[0].ID
}
