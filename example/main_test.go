package main

import (
	"context"
	"crypto/rand"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/chatkit/chatkit"
	"github.com/jackc/pgx/v5"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestUnreachableRedisFailsFastWithAReadableError(t *testing.T) {
	start := time.Now()
	_, err := connectRedis("redis://:s3cret@127.0.0.1:1/0", 100, slog.New(slog.DiscardHandler))
	if err == nil {
		t.Fatal("connected to a closed port")
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("gave up after %v, want within 10 s", took)
	}
	msg := err.Error()
	if !strings.Contains(msg, "cannot reach Redis at 127.0.0.1:1") || strings.Contains(msg, "s3cret") {
		t.Errorf("error %q: want the address and never the password", msg)
	}
	if _, err := connectRedis("http://x", 100, slog.New(slog.DiscardHandler)); err == nil || !strings.Contains(err.Error(), "redis://") {
		t.Errorf("a bad URL: %v", err)
	}
}

func TestUnreachablePostgresFailsFastWithAReadableError(t *testing.T) {
	start := time.Now()
	_, _, err := connectPostgres("postgres://chat:s3cret@127.0.0.1:1/chat", slog.New(slog.DiscardHandler))
	if err == nil {
		t.Fatal("connected to a closed port")
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("gave up after %v, want within 10 s", took)
	}
	msg := err.Error()
	if !strings.Contains(msg, "cannot reach PostgreSQL at 127.0.0.1:1/chat") || strings.Contains(msg, "s3cret") {
		t.Errorf("error %q: want the address and never the password", msg)
	}
	for _, bad := range []string{"http://x", "postgres://chat:s3cret@[::1/chat"} {
		_, _, err := connectPostgres(bad, slog.New(slog.DiscardHandler))
		if err == nil || !strings.Contains(err.Error(), "postgres://") || strings.Contains(err.Error(), "s3cret") {
			t.Errorf("the bad URL %q: %v", bad, err)
		}
	}
}

func TestOperatorEndpoints(t *testing.T) {
	chat := chatkit.New(chatkit.WithLogger(nil))
	ts := httptest.NewServer(newHandler(chat))
	defer ts.Close()
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get(ts.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	tests := []struct {
		path   string
		status int
		has    string
	}{
		{"/healthz", 200, "ok"},
		{"/readyz", 200, "ready"},
		{"/metrics", 200, "chatkit_sessions 0"},
	}
	for _, tt := range tests {
		if status, body := get(tt.path); status != tt.status || !strings.Contains(body, tt.has) {
			t.Errorf("GET %s: %d %q, want %d with %q", tt.path, status, body, tt.status, tt.has)
		}
	}
	chat.Shutdown(context.Background())
	if status, body := get("/readyz"); status != http.StatusServiceUnavailable || !strings.Contains(body, "closed") {
		t.Errorf("GET /readyz while shutting down: %d %q, want 503", status, body)
	}
	if status, _ := get("/healthz"); status != 200 {
		t.Errorf("GET /healthz while shutting down: %d, want 200 (alive)", status)
	}
}

// With a database, -postgres makes the tables and the chat keeps its
// messages there. The tables go in a schema of the test's own, named by
// search_path in the URL, as an application may do.
func TestPostgresFlagMigratesAndStores(t *testing.T) {
	url := os.Getenv("CHATKIT_POSTGRES_URL")
	if url == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("CHATKIT_POSTGRES_URL is not set on CI")
		}
		t.Skip("set CHATKIT_POSTGRES_URL to run (.ci/start-postgres starts a PostgreSQL)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	admin, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	schema := "example_test_" + strings.ToLower(rand.Text()[:10])
	if _, err := admin.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		t.Fatal(err)
	}
	defer admin.Exec(context.Background(), "DROP SCHEMA "+schema+" CASCADE")

	sep := "?"
	if strings.Contains(url, "?") {
		sep = "&"
	}
	store, pool, err := connectPostgres(url+sep+"search_path="+schema, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	defer store.Close()
	if _, _, err := store.Append(ctx, chatkit.Message{Room: "general", Username: "alice", Text: "hi", Time: time.Now()}); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := admin.QueryRow(ctx, "SELECT count(*) FROM "+schema+".chatkit_messages").Scan(&n); err != nil || n != 1 {
		t.Errorf("messages in %s.chatkit_messages: %d, %v; want 1", schema, n, err)
	}
}
