package pgstore_test

import (
	"context"
	"log/slog"
	"testing"

	"github.com/chatkit/chatkit"
	"github.com/chatkit/chatkit/chatkittest"
	"github.com/chatkit/chatkit/pgstore"
	"github.com/jackc/pgx/v5/pgxpool"
)

// BenchmarkAppend measures Append on the test database as every Store is
// measured (chatkittest.BenchmarkStore): one writer in one room; eight in
// one room, who wait for each other's row lock; eight each in a room of
// its own, who do not. It reports messages per second and the 99th
// percentile of Append's latency.
func BenchmarkAppend(b *testing.B) {
	pgURL(b)
	chatkittest.BenchmarkStore(b, func(b *testing.B) chatkit.Store { return benchStore(b) })
}

// benchStore returns a store in a fresh schema, on a pool with a
// connection for each of the eight writers.
func benchStore(b *testing.B) *pgstore.Store {
	b.Helper()
	schema := newSchema(b)
	cfg, err := pgxpool.ParseConfig(pgURL(b))
	if err != nil {
		b.Fatal(err)
	}
	cfg.ConnConfig.RuntimeParams["search_path"] = schema
	cfg.MaxConns = 16
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(pool.Close)
	s, err := pgstore.Open(testContext(b), pool, pgstore.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s
}
