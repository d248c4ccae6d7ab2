package chatkitprom

import (
	"maps"
	"testing"

	"github.com/chatkit/chatkit"
)

func TestCumulative(t *testing.T) {
	for _, tc := range []struct {
		name    string
		h       chatkit.Histogram
		count   uint64
		buckets map[float64]uint64
	}{
		{"empty", chatkit.Histogram{}, 0, map[float64]uint64{}},
		{"zeros", chatkit.Histogram{Bounds: []float64{1, 2}, Counts: []uint64{0, 0, 0}}, 0, map[float64]uint64{1: 0, 2: 0}},
		{"per bucket", chatkit.Histogram{Bounds: []float64{1, 2, 5}, Counts: []uint64{1, 0, 2, 3}, Count: 6}, 6, map[float64]uint64{1: 1, 2: 1, 5: 3}},
		// Count read before an observation's bucket: the buckets win,
		// so that +Inf is never below the last bound.
		{"count behind", chatkit.Histogram{Bounds: []float64{1}, Counts: []uint64{2, 1}, Count: 2}, 3, map[float64]uint64{1: 2}},
	} {
		count, buckets := cumulative(tc.h)
		if count != tc.count || !maps.Equal(buckets, tc.buckets) {
			t.Errorf("%s: cumulative(%+v) = %d, %v; want %d, %v", tc.name, tc.h, count, buckets, tc.count, tc.buckets)
		}
	}
}
