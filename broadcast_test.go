package chatkit

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/coder/websocket"
)

// serverConn connects a session of srv, as ServeHTTP would, to a fresh
// WebSocket connection and returns the client side, dialed with the given
// subprotocols.
func serverConn(t *testing.T, s *session, subprotocols ...string) (cli *websocket.Conn) {
	t.Helper()
	conns := make(chan *websocket.Conn, 1)
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hw := &hijackRecorder{ResponseWriter: w, pool: &s.srv.gatherBuffers, timeout: s.srv.cfg.writeTimeout}
		c, err := websocket.Accept(hw, r, &websocket.AcceptOptions{Subprotocols: []string{Subprotocol}})
		if err != nil {
			t.Error(err)
			return
		}
		s.tr = hw.t
		conns <- c
	}))
	t.Cleanup(ts.Close)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	cli, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(ts.URL, "http"), &websocket.DialOptions{Subprotocols: subprotocols})
	if err != nil {
		t.Fatal(err)
	}
	cli.SetReadLimit(-1)
	t.Cleanup(func() { cli.CloseNow() })
	s.conn = <-conns
	s.batch = s.conn.Subprotocol() == Subprotocol
	t.Cleanup(func() { s.conn.CloseNow() })
	return cli
}

func TestBatchingOnlyForClientsThatAskForIt(t *testing.T) {
	events := [][]byte{[]byte(`{"type":"a"}`), []byte(`{"type":"b"}`), []byte(`{"type":"c"}`)}
	tests := []struct {
		name         string
		subprotocols []string
		frames       []string
	}{
		{"seed-style client: one event per frame", nil, []string{`{"type":"a"}`, `{"type":"b"}`, `{"type":"c"}`}},
		{"chatkit.v1 client: one frame, newline-separated", []string{Subprotocol}, []string{"{\"type\":\"a\"}\n{\"type\":\"b\"}\n{\"type\":\"c\"}"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSession(New(), nil, "a")
			defer s.cancel()
			cli := serverConn(t, s, tt.subprotocols...)
			counted := &writeCounter{Conn: s.tr.Conn}
			s.tr.Conn = counted
			if err := s.write(events); err != nil {
				t.Fatal(err)
			}
			if n := counted.writes.Load(); n != 1 {
				t.Errorf("%d events took %d writes to the socket, want 1", len(events), n)
			}
			ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
			defer cancel()
			for i, want := range tt.frames {
				_, got, err := cli.Read(ctx)
				if err != nil || string(got) != want {
					t.Fatalf("frame %d = %q, %v; want %q", i, got, err, want)
				}
			}
		})
	}
}

// writeCounter counts the writes to a connection.
type writeCounter struct {
	net.Conn
	writes atomic.Int64
}

func (c *writeCounter) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

func TestBatchesAreBounded(t *testing.T) {
	s := newSession(New(), nil, "a")
	defer s.cancel()
	cli := serverConn(t, s, Subprotocol)
	big := []byte(`"` + strings.Repeat("x", 40<<10) + `"`)
	go s.write([][]byte{big, big, big})
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	for i := range 3 {
		_, got, err := cli.Read(ctx)
		if err != nil || len(got) != len(big) {
			t.Fatalf("frame %d: %d bytes, %v; want one %d-byte event per frame", i, len(got), err, len(big))
		}
	}
}

// TestSendQueueBounds fills the queue of a session whose writer never runs:
// presence notices, which a join storm makes by the thousand without any
// client being slow, are bounded apart from messages, at
// noticeQueueFactor times the queue, and neither kind takes the other's
// room.
func TestSendQueueBounds(t *testing.T) {
	const queue = 4
	tests := []struct {
		name                string
		notices, messages   int // queued first, in this order
		noticeOK, messageOK bool
	}{
		{"an empty queue takes either", 0, 0, true, true},
		{"messages fill the queue, notices still fit", 0, queue, true, false},
		{"notices fill theirs, messages still fit", noticeQueueFactor * queue, 0, false, true},
		{"both full", noticeQueueFactor * queue, queue, false, false},
		{"one short of each", noticeQueueFactor*queue - 1, queue - 1, true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSession(New(WithSendQueue(queue)), nil, "a")
			defer s.cancel()
			s.writing = true // no writer goroutine: nothing drains the queue
			frame := []byte(`{}`)
			for i := range tt.notices {
				if !s.enqueue(frame, true) {
					t.Fatalf("notice %d refused", i)
				}
			}
			for i := range tt.messages {
				if !s.enqueue(frame, false) {
					t.Fatalf("message %d refused", i)
				}
			}
			if got := s.enqueue(frame, true); got != tt.noticeOK {
				t.Errorf("one more notice: queued %v, want %v", got, tt.noticeOK)
			}
			if got := s.enqueue(frame, false); got != tt.messageOK {
				t.Errorf("one more message: queued %v, want %v", got, tt.messageOK)
			}
		})
	}
}

// BenchmarkBroadcast measures the broadcast path: storing a message,
// encoding it once and queueing it for every member. The queues are
// drained in the loop as the writers would; the writers' socket writes are
// not measured here (cmd/chatbench measures end to end).
func BenchmarkBroadcast(b *testing.B) {
	for _, members := range []int{100, 1000, 5000} {
		b.Run(fmt.Sprint(members, "members"), func(b *testing.B) {
			srv := New(WithLogger(nil), WithHistorySize(100))
			r := newRoom("bench", srv)
			if err := r.hold(context.Background()); err != nil {
				b.Fatal(err)
			}
			defer r.unhold()
			for i := range members {
				s := newSession(srv, r, fmt.Sprint("u", i))
				defer s.cancel()
				s.writing = true // no writer goroutine: the loop drains the queues
				if _, err := srv.broker.Join(context.Background(), Member{"bench", s.username, s.id}, false); err != nil {
					b.Fatal(err)
				}
				r.mu.Lock()
				s.index = len(r.members)
				r.members = append(r.members, s)
				r.presence.add(s.username)
				r.mu.Unlock()
			}
			ctx := context.Background()
			m := Message{Room: "bench", Username: "u0", Text: strings.Repeat("x", 100)}
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			b.ResetTimer()
			for b.Loop() {
				srv.publish(ctx, r, m, ack{})
				for _, s := range r.members {
					s.mu.Lock()
					s.queue = s.queue[:0]
					s.mu.Unlock()
				}
			}
			b.StopTimer()
			runtime.ReadMemStats(&after)
			deliveries := float64(b.N) * float64(members)
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/deliveries, "ns/delivery")
			b.ReportMetric(float64(after.Mallocs-before.Mallocs)/deliveries, "allocs/delivery")
		})
	}
}
