package main

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/chatkit/chatkit"
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
