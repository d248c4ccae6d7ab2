// Command limit is the benchmark's ceiling for unbatched fan-out: it
// accepts WebSocket connections (gorilla/websocket for the handshake and
// for reading, compression off) and, for each text message a client sends,
// writes one pre-framed WebSocket frame holding that message to every
// connection of the room, one write system call per delivery, all from the
// room's single broadcast goroutine. There is no protocol, no queue per
// connection, no batching: what it sustains is the practical limit L of
// one-frame-per-delivery fan-out on this machine.
//
//	limit -addr 127.0.0.1:8103
//
// serves the socket at /ws (rooms by ?room=) and /debug/stats.
package main

import (
	"flag"
	"log"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/chatkit/chatkit/bench/peers/internal/debugstats"
	"github.com/gorilla/websocket"
)

var (
	addr         = flag.String("addr", "127.0.0.1:8103", "listen address")
	writeTimeout = flag.Duration("write-timeout", 2*time.Second, "a connection whose write takes longer is dropped")
)

var upgrader = websocket.Upgrader{
	ReadBufferSize:  1024,
	WriteBufferSize: 1024,
	CheckOrigin:     func(*http.Request) bool { return true },
}

// A room holds its connections; its broadcaster goroutine is the only
// writer of data frames to them.
type room struct {
	in    chan []byte
	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

var (
	roomsMu sync.Mutex
	rooms   = map[string]*room{}
)

func getRoom(name string) *room {
	roomsMu.Lock()
	defer roomsMu.Unlock()
	r := rooms[name]
	if r == nil {
		r = &room{in: make(chan []byte, 1024), conns: map[net.Conn]struct{}{}}
		rooms[name] = r
		go r.broadcast()
	}
	return r
}

// frame returns msg framed as one unmasked, final text frame.
func frame(msg []byte) []byte {
	n := len(msg)
	var b []byte
	switch {
	case n < 126:
		b = append(make([]byte, 0, 2+n), 0x81, byte(n))
	case n < 1<<16:
		b = append(make([]byte, 0, 4+n), 0x81, 126, byte(n>>8), byte(n))
	default:
		b = append(make([]byte, 0, 10+n), 0x81, 127)
		for i := 7; i >= 0; i-- {
			b = append(b, byte(n>>(8*i)))
		}
	}
	return append(b, msg...)
}

func (r *room) broadcast() {
	var targets []net.Conn
	for msg := range r.in {
		f := frame(msg)
		r.mu.Lock()
		targets = targets[:0]
		for c := range r.conns {
			targets = append(targets, c)
		}
		r.mu.Unlock()
		for _, c := range targets {
			c.SetWriteDeadline(time.Now().Add(*writeTimeout))
			if _, err := c.Write(f); err != nil {
				r.remove(c)
				c.Close()
			}
		}
	}
}

func (r *room) remove(c net.Conn) {
	r.mu.Lock()
	delete(r.conns, c)
	r.mu.Unlock()
}

func serveWs(w http.ResponseWriter, req *http.Request) {
	name := req.URL.Query().Get("room")
	if name == "" {
		name = "general"
	}
	conn, err := upgrader.Upgrade(w, req, nil)
	if err != nil {
		return
	}
	r := getRoom(name)
	nc := conn.UnderlyingConn()
	r.mu.Lock()
	r.conns[nc] = struct{}{}
	r.mu.Unlock()
	// This goroutine is the connection's reader; gorilla answers pings and
	// close frames with whole frames of its own, which cannot split a
	// broadcast frame since each is one Write call.
	defer func() {
		r.remove(nc)
		conn.Close()
	}()
	conn.SetReadLimit(4096)
	for {
		typ, msg, err := conn.ReadMessage()
		if err != nil {
			return
		}
		if typ == websocket.TextMessage {
			r.in <- msg
		}
	}
}

func main() {
	flag.Parse()
	mux := http.NewServeMux()
	mux.HandleFunc("/ws", serveWs)
	mux.Handle("/debug/stats", debugstats.Handler())
	srv := &http.Server{Addr: *addr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	log.Fatal(srv.ListenAndServe())
}
