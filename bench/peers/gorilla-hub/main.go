// Command gorilla-hub is the benchmark's baseline peer: the canonical
// gorilla/websocket chat example (hub goroutine, readPump and writePump per
// connection, 256-message send buffer, slow clients dropped, queued
// messages joined with "\n" into one frame), with one hub per ?room=.
//
//	gorilla-hub -addr 127.0.0.1:8101
//
// serves the socket at /ws and goroutine counts at /debug/stats.
package main

import (
	"flag"
	"log"
	"net/http"
	"time"

	"github.com/chatkit/chatkit/bench/peers/internal/debugstats"
)

var (
	addr    = flag.String("addr", "127.0.0.1:8101", "listen address")
	verbose = flag.Bool("v", false, "log unexpected connection errors")
)

func main() {
	flag.Parse()
	rs := &rooms{hubs: make(map[string]*Hub)}
	mux := http.NewServeMux()
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		room := r.URL.Query().Get("room")
		if room == "" {
			room = "general"
		}
		serveWs(rs.get(room), w, r)
	})
	mux.Handle("/debug/stats", debugstats.Handler())
	srv := &http.Server{Addr: *addr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	log.Fatal(srv.ListenAndServe())
}
