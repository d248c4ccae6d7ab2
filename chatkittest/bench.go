package chatkittest

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/chatkit/chatkit"
)

// BenchmarkStore measures the write path of the stores newStore returns,
// so that every Store is measured the same way: one writer in one room;
// eight writers in one room, who wait for each other; eight writers each
// in a room of its own, who need not. Every message has a client_msg_id,
// as chatkit's client gives each, so that Append checks for a retry as it
// does in use. It reports messages per second and the 99th percentile of
// Append's latency, in milliseconds (msgs/s, p99-ms).
func BenchmarkStore(b *testing.B, newStore func(b *testing.B) chatkit.Store) {
	b.Run("one room", func(b *testing.B) {
		s := newStore(b)
		var lat []time.Duration
		start := time.Now()
		for i := 0; b.Loop(); i++ {
			lat = append(lat, timedAppend(b, s, benchMessage("r", 0, i)))
		}
		reportLatency(b, start, lat)
	})
	for _, tt := range []struct {
		name   string
		shared bool
	}{{"one room, 8 writers", true}, {"many rooms, 8 writers", false}} {
		b.Run(tt.name, func(b *testing.B) {
			s := newStore(b)
			var (
				mu     sync.Mutex
				lat    []time.Duration
				writer int
			)
			b.SetParallelism(max(1, 8/runtime.GOMAXPROCS(0))) // 8 writers on 1, 2, 4 or 8 procs
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				mu.Lock()
				writer++
				w := writer
				mu.Unlock()
				room := "r"
				if !tt.shared {
					room = fmt.Sprint("r", w)
				}
				var mine []time.Duration
				for i := 0; pb.Next(); i++ {
					mine = append(mine, timedAppend(b, s, benchMessage(room, w, i)))
				}
				mu.Lock()
				lat = append(lat, mine...)
				mu.Unlock()
			})
			reportLatency(b, start, lat)
		})
	}
}

func timedAppend(b *testing.B, s chatkit.Store, m chatkit.Message) time.Duration {
	start := time.Now()
	if _, _, err := s.Append(context.Background(), m); err != nil {
		b.Error(err)
	}
	return time.Since(start)
}

// benchMessage is the i-th message of a writer.
func benchMessage(room string, writer, i int) chatkit.Message {
	return chatkit.Message{Room: room, Username: "alice", Text: "a message of a typical length, some fifty characters",
		ClientMsgID: fmt.Sprint("w", writer, "-", i), Time: time.Now()}
}

func reportLatency(b *testing.B, start time.Time, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	elapsed := time.Since(start)
	slices.Sort(lat)
	p99 := lat[min(len(lat)-1, len(lat)*99/100)]
	b.ReportMetric(float64(len(lat))/elapsed.Seconds(), "msgs/s")
	b.ReportMetric(float64(p99.Nanoseconds())/1e6, "p99-ms")
}
