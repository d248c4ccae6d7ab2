// Package debugstats serves /debug/stats for the benchmark peers: a JSON
// object with the process's goroutine count and Go heap figures, which
// chatbench's -stats flag reads.
package debugstats

import (
	"encoding/json"
	"net/http"
	"runtime"
)

// Handler answers with {"goroutines":N,"heap_inuse":B,"sys":B}.
func Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{
			"goroutines": runtime.NumGoroutine(),
			"heap_inuse": ms.HeapInuse,
			"sys":        ms.Sys,
		})
	})
}
