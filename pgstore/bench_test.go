package pgstore_test

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/chatkit/chatkit"
	"github.com/chatkit/chatkit/pgstore"
	"github.com/jackc/pgx/v5/pgxpool"
)

// BenchmarkAppend measures Append on the test database: one writer in one
// room; several writers in one room, who wait for each other's row lock;
// several writers each in a room of its own, who do not. It reports
// messages per second and the 99th percentile of Append's latency.
func BenchmarkAppend(b *testing.B) {
	b.Run("one room", func(b *testing.B) {
		s := benchStore(b)
		ctx := context.Background()
		var lat []time.Duration
		start := time.Now()
		for i := 0; b.Loop(); i++ {
			t0 := time.Now()
			if _, _, err := s.Append(ctx, benchMessage("r", 0, i)); err != nil {
				b.Fatal(err)
			}
			lat = append(lat, time.Since(t0))
		}
		report(b, start, lat)
	})
	for _, tt := range []struct {
		name   string
		shared bool
	}{{"one room, 8 writers", true}, {"many rooms, 8 writers", false}} {
		b.Run(tt.name, func(b *testing.B) {
			s := benchStore(b)
			ctx := context.Background()
			var (
				mu   sync.Mutex
				lat  []time.Duration
				next int
			)
			b.SetParallelism(max(1, 8/runtime.GOMAXPROCS(0))) // 8 writers on 1, 2, 4 or 8 procs
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				mu.Lock()
				next++
				writer := next
				mu.Unlock()
				room := "r"
				if !tt.shared {
					room = fmt.Sprint("r", writer)
				}
				var mine []time.Duration
				for i := 0; pb.Next(); i++ {
					t0 := time.Now()
					if _, _, err := s.Append(ctx, benchMessage(room, writer, i)); err != nil {
						b.Error(err)
						return
					}
					mine = append(mine, time.Since(t0))
				}
				mu.Lock()
				lat = append(lat, mine...)
				mu.Unlock()
			})
			report(b, start, lat)
		})
	}
}

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

// benchMessage is the i-th message of a writer, with a client_msg_id as
// chatkit's client gives each, so that Append checks for a dup as usual.
func benchMessage(room string, writer, i int) chatkit.Message {
	return chatkit.Message{Room: room, Username: "alice", Text: "a message of a typical length, some fifty characters",
		ClientMsgID: fmt.Sprint("w", writer, "-", i), Time: time.Now()}
}

func report(b *testing.B, start time.Time, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	elapsed := time.Since(start)
	slices.Sort(lat)
	p99 := lat[min(len(lat)-1, len(lat)*99/100)]
	b.ReportMetric(float64(len(lat))/elapsed.Seconds(), "msgs/s")
	b.ReportMetric(float64(p99.Microseconds())/1000, "p99-ms")
}
