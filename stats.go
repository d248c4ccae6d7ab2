package chatkit

import (
	"context"
	"sync/atomic"
	"time"
)

// Stats is a snapshot of a Server's counters and gauges, as Server.Stats
// returns it. Counters count from New; gauges are values at the time of
// the call. The chatkitprom package exposes them to Prometheus.
type Stats struct {
	Sessions       int64  // gauge: sessions past the handshake
	PresentUsers   int64  // gauge: users present in the rooms this node has members in, on any node
	Rooms          int64  // gauge: rooms held in memory
	MessagesStored uint64 // messages stored through this node
	Deliveries     uint64 // events queued for members by the rooms' fan-out

	// SessionsDropped counts sessions the server closed, by reason:
	// "too_slow", "idle", "protocol_error", "flooding", "disconnected"
	// (Server.Disconnect). Closes by the client and by Shutdown are not
	// drops.
	SessionsDropped map[string]uint64
	// HandshakesRefused counts refused handshakes by reason: "origin",
	// "auth", "bad_request", "capacity" (WithMaxConns, WithMaxConnsPerIP,
	// WithMaxRooms), "shutting_down", "unavailable" (the store or broker
	// did not answer), "internal" (a hook panicked).
	HandshakesRefused map[string]uint64
	// Errors counts error events sent, by code (see PROTOCOL.md).
	Errors map[string]uint64

	HistoryRequests uint64 // scrollback requests answered

	Store  CallStats // calls to the Store
	Broker CallStats // calls to the Broker

	// FanoutLatency is the time from receiving a message (Message.Time)
	// to queueing it for every local member.
	FanoutLatency Histogram
}

// CallStats counts the calls to a store or broker.
type CallStats struct {
	Calls    uint64
	Failures uint64  // calls that returned an error
	Seconds  float64 // total time in calls
}

// A Histogram counts observations, in seconds, in buckets.
type Histogram struct {
	// Bounds are the buckets' inclusive upper bounds, ascending; a last
	// bucket without bound holds the rest.
	Bounds []float64
	// Counts has one count per bucket, len(Bounds)+1 of them; not
	// cumulative.
	Counts []uint64
	Count  uint64  // all observations
	Sum    float64 // their sum, in seconds
}

// Why the server closed a session, for Stats.SessionsDropped.
var dropReasons = []string{"too_slow", "idle", "protocol_error", "flooding", "disconnected"}

// Why a handshake was refused, for Stats.HandshakesRefused.
var refusalReasons = []string{"origin", "auth", "bad_request", "capacity", "shutting_down", "unavailable", "internal"}

// The error codes of PROTOCOL.md, for Stats.Errors.
var errorCodes = []string{codeTooLong, codeEmpty, codeRateLimited, codeBadRequest, codeRejected, codeUnavailable}

// fanoutBounds are the FanoutLatency buckets: 100 µs to 5 s.
var fanoutBounds = []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5}

// counters are a Server's statistics: atomics only, so that counting
// never takes a lock and Stats never walks the rooms.
type counters struct {
	sessions, presentUsers, rooms atomic.Int64
	messages, deliveries, history atomic.Uint64
	dropped                       [5]atomic.Uint64 // by dropReasons
	refused                       [7]atomic.Uint64 // by refusalReasons
	errors                        [6]atomic.Uint64 // by errorCodes
	store, broker                 callCounters
	fanout                        [16]atomic.Uint64 // by fanoutBounds, and the rest
	fanoutCount, fanoutNanos      atomic.Uint64
}

type callCounters struct{ calls, failures, nanos atomic.Uint64 }

func (c *callCounters) observe(start time.Time, err error) {
	c.calls.Add(1)
	c.nanos.Add(uint64(time.Since(start)))
	if err != nil {
		c.failures.Add(1)
	}
}

func (c *callCounters) snapshot() CallStats {
	return CallStats{Calls: c.calls.Load(), Failures: c.failures.Load(), Seconds: float64(c.nanos.Load()) / 1e9}
}

func index(names []string, name string) int {
	for i, n := range names {
		if n == name {
			return i
		}
	}
	return -1
}

func (c *counters) drop(reason string) {
	if i := index(dropReasons, reason); i >= 0 {
		c.dropped[i].Add(1)
	}
}

func (c *counters) refuse(reason string) {
	if i := index(refusalReasons, reason); i >= 0 {
		c.refused[i].Add(1)
	}
}

func (c *counters) errorSent(code string) {
	if i := index(errorCodes, code); i >= 0 {
		c.errors[i].Add(1)
	}
}

func (c *counters) observeFanout(d time.Duration) {
	s := d.Seconds()
	i := 0
	for i < len(fanoutBounds) && s > fanoutBounds[i] {
		i++
	}
	c.fanout[i].Add(1)
	c.fanoutCount.Add(1)
	c.fanoutNanos.Add(uint64(max(d, 0)))
}

// Stats returns a snapshot of the Server's counters and gauges. It takes no
// lock over the rooms or sessions, so it may be called often (every second)
// from any goroutine.
func (s *Server) Stats() Stats {
	c := &s.counters
	st := Stats{
		Sessions:          c.sessions.Load(),
		PresentUsers:      c.presentUsers.Load(),
		Rooms:             c.rooms.Load(),
		MessagesStored:    c.messages.Load(),
		Deliveries:        c.deliveries.Load(),
		HistoryRequests:   c.history.Load(),
		SessionsDropped:   make(map[string]uint64, len(dropReasons)),
		HandshakesRefused: make(map[string]uint64, len(refusalReasons)),
		Errors:            make(map[string]uint64, len(errorCodes)),
		Store:             c.store.snapshot(),
		Broker:            c.broker.snapshot(),
		FanoutLatency: Histogram{
			Bounds: append([]float64(nil), fanoutBounds...),
			Counts: make([]uint64, len(fanoutBounds)+1),
			Count:  c.fanoutCount.Load(),
			Sum:    float64(c.fanoutNanos.Load()) / 1e9,
		},
	}
	for i, r := range dropReasons {
		st.SessionsDropped[r] = c.dropped[i].Load()
	}
	for i, r := range refusalReasons {
		st.HandshakesRefused[r] = c.refused[i].Load()
	}
	for i, code := range errorCodes {
		st.Errors[code] = c.errors[i].Load()
	}
	for i := range st.FanoutLatency.Counts {
		st.FanoutLatency.Counts[i] = c.fanout[i].Load()
	}
	return st
}

// Ready reports whether the Server accepts sessions and its store and
// broker answer within ctx: nil if so, else why not. A store or broker
// with a method Ping(context.Context) error (the Redis and PostgreSQL
// adapters have one) is pinged; others are taken to be ready. It serves a
// readiness probe, such as the example's /readyz.
func (s *Server) Ready(ctx context.Context) error {
	if s.isClosing() {
		return ErrServerClosed
	}
	for _, seam := range []any{s.cfg.store, s.cfg.broker} {
		p, ok := seam.(interface{ Ping(context.Context) error })
		if !ok {
			continue
		}
		if err := p.Ping(ctx); err != nil {
			return err
		}
	}
	return nil
}

// timedStore counts and times every call to a Store.
type timedStore struct {
	Store
	c *callCounters
}

func (t timedStore) Append(ctx context.Context, m Message) (Message, bool, error) {
	start := time.Now()
	stored, dup, err := t.Store.Append(ctx, m)
	t.c.observe(start, err)
	return stored, dup, err
}

func (t timedStore) After(ctx context.Context, room string, after int64, limit int) (RoomState, []Message, error) {
	start := time.Now()
	st, msgs, err := t.Store.After(ctx, room, after, limit)
	t.c.observe(start, err)
	return st, msgs, err
}

func (t timedStore) Before(ctx context.Context, room string, before int64, limit int) (RoomState, []Message, error) {
	start := time.Now()
	st, msgs, err := t.Store.Before(ctx, room, before, limit)
	t.c.observe(start, err)
	return st, msgs, err
}

// timedBroker counts and times every network call to a Broker.
type timedBroker struct {
	Broker
	c *callCounters
}

func (t timedBroker) Publish(ctx context.Context, ev Event) error {
	start := time.Now()
	err := t.Broker.Publish(ctx, ev)
	t.c.observe(start, err)
	return err
}

func (t timedBroker) Join(ctx context.Context, m Member, exclusive bool) (bool, error) {
	start := time.Now()
	first, err := t.Broker.Join(ctx, m, exclusive)
	if err == ErrUsernameTaken {
		t.c.observe(start, nil) // an answer, not a failure
	} else {
		t.c.observe(start, err)
	}
	return first, err
}

func (t timedBroker) Leave(ctx context.Context, m Member) (bool, error) {
	start := time.Now()
	last, err := t.Broker.Leave(ctx, m)
	t.c.observe(start, err)
	return last, err
}

func (t timedBroker) Linger(ctx context.Context, m Member) error {
	start := time.Now()
	err := t.Broker.Linger(ctx, m)
	t.c.observe(start, err)
	return err
}

func (t timedBroker) Members(ctx context.Context, room string) ([]string, error) {
	start := time.Now()
	users, err := t.Broker.Members(ctx, room)
	t.c.observe(start, err)
	return users, err
}

// dropReason names the drop of a session closed with a close reason.
func dropReason(closeReason string) string {
	switch closeReason {
	case closeTooSlow:
		return "too_slow"
	case closeIdle:
		return "idle"
	case closeDisconnected:
		return "disconnected"
	case closeFlooding, closeBadCommands:
		return "flooding"
	default:
		return "protocol_error"
	}
}
