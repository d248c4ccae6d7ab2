package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// maxSteps bounds the measurement steps of one run (each has its own
// counters, preallocated so receivers index them without locks).
const maxSteps = 128

// stepStats are the counters of one step: a period during which every
// published message carries the step's number.
type stepStats struct {
	hist      histogram
	published atomic.Int64
	expected  atomic.Int64 // deliveries owed to counted members
	delivered atomic.Int64 // unique deliveries to counted members
	extra     atomic.Int64 // deliveries to members that are not counted
	dups      atomic.Int64
	reorders  atomic.Int64
}

// A bench is the state shared by all members of one run.
type bench struct {
	cfg   *config
	ad    adapter
	bases []*url.URL // member i connects to bases[i % len(bases)]
	poll  *poller
	steps [maxSteps]*stepStats
	next  atomic.Int32 // steps handed out

	errors     atomic.Int64 // error events or replies from the server
	drops      atomic.Int64 // members whose connection ended unasked
	lastErrMu  sync.Mutex
	lastErr    string
	dropReason map[string]int
}

func newBench(cfg *config, ad adapter) (*bench, error) {
	b := &bench{cfg: cfg, ad: ad, dropReason: map[string]int{}}
	for _, s := range cfg.urls {
		u, err := url.Parse(s)
		if err != nil {
			return nil, err
		}
		if u.Scheme != "ws" {
			return nil, fmt.Errorf("-url %q: only ws:// URLs (loopback, no TLS)", s)
		}
		if u.Port() == "" {
			return nil, fmt.Errorf("-url %q: give a port", s)
		}
		b.bases = append(b.bases, u)
	}
	for i := range b.steps {
		b.steps[i] = new(stepStats)
	}
	var err error
	if b.poll, err = newPoller(cfg.maxFD); err != nil {
		return nil, err
	}
	return b, nil
}

// close stops the bench's poller; close every member first.
func (b *bench) close() { b.poll.close() }

// newStep hands out the next step number.
func (b *bench) newStep() (int, *stepStats) {
	n := int(b.next.Add(1)) - 1
	if n >= maxSteps {
		panic("chatbench: too many steps")
	}
	return n, b.steps[n]
}

func (b *bench) noteErr(s string) {
	b.lastErrMu.Lock()
	b.lastErr = s
	b.lastErrMu.Unlock()
}

// dropSummary describes the connections that ended without being asked
// to, by reason.
func (b *bench) dropSummary() string {
	b.lastErrMu.Lock()
	defer b.lastErrMu.Unlock()
	var parts []string
	for r, n := range b.dropReason {
		parts = append(parts, fmt.Sprintf("%d × %s", n, r))
	}
	slices.Sort(parts)
	return strings.Join(parts, ", ")
}

func (b *bench) noteDrop(reason string) {
	b.drops.Add(1)
	b.lastErrMu.Lock()
	b.dropReason[reason]++
	b.lastErrMu.Unlock()
}

// senderState tracks one sender's sequence as seen by one member.
type senderState struct {
	sender  int
	last    int64
	missing map[int64]struct{} // gaps not yet filled, bounded
}

const maxMissing = 4096

// A member is one connection of the benchmark: a user in a room.
type member struct {
	b       *bench
	id      int
	name    string
	room    string
	counted bool // its deliveries count toward loss
	sampled bool // its deliveries' latencies are recorded
	conn    *wsConn

	ready    chan struct{}
	readyBit atomic.Bool
	done     chan struct{} // closed when the connection has ended
	closing  atomic.Bool   // we are closing it: its end is no drop
	endErr   error

	// Receive-side state, owned by the poller.
	senders []senderState

	// Publisher state, owned by the publishing goroutine.
	seq   int64
	cmdID int64
	buf   []byte
	frame []byte
}

func (m *member) isReady() bool { return m.readyBit.Load() }

func (m *member) markReady() {
	if m.readyBit.CompareAndSwap(false, true) {
		close(m.ready)
	}
}

// connect dials, hands the connection to the poller and sends the
// adapter's hello frames. It does not wait for readiness: see waitReady.
func (b *bench) connect(ctx context.Context, s memberSpec) (*member, error) {
	id, name, room := s.id, s.name, s.room
	m := &member{b: b, id: id, name: name, room: room, counted: s.counted, sampled: !s.bulk,
		ready: make(chan struct{}), done: make(chan struct{})}
	base := b.serverOf(id)
	conn, leftover, err := dialWS(ctx, base.Host, b.ad.requestURI(base, name, room), dialOptions{
		subprotocols: b.cfg.subprotocols, rcvbuf: s.rcvbuf, mss: s.mss})
	if err != nil {
		return nil, err
	}
	m.conn = conn
	if b.ad.readyOnConnect() {
		m.markReady()
	}
	if len(leftover) > 0 {
		if err := conn.feed(leftover, time.Now().UnixNano(), m); err != nil {
			conn.release()
			return nil, err
		}
	}
	if err := b.poll.add(m); err != nil {
		conn.release()
		return nil, err
	}
	for _, f := range b.ad.hello(room) {
		if err := conn.writeText(f, 5*time.Second); err != nil {
			m.close()
			return nil, err
		}
	}
	return m, nil
}

// serverOf is the server member id connects to: round-robin over -url, so
// that each room of a workload, its publishers included, is spread evenly
// over the nodes (a reconnect keeps its id, and so its node).
func (b *bench) serverOf(id int) *url.URL { return b.bases[id%len(b.bases)] }

// waitReady waits until the member is in its room.
func (m *member) waitReady(ctx context.Context) error {
	select {
	case <-m.ready:
		return nil
	case <-m.done:
		if m.endErr != nil {
			return fmt.Errorf("closed before ready: %w", m.endErr)
		}
		return errors.New("closed before ready")
	case <-ctx.Done():
		return errors.New("not ready in time")
	}
}

// close ends the connection; done is closed once the poller has let go
// of it.
func (m *member) close() {
	m.closing.Store(true)
	m.b.poll.setReading(m, true)
	m.conn.shutdown()
}

func (m *member) alive() bool {
	select {
	case <-m.done:
		return false
	default:
		return true
	}
}

// setLowat sets the socket's receive low-water mark: with a large one the
// poller reads the member only when that many bytes are waiting (bulk
// members, see memberSpec.bulk); 1 reads every message as it arrives.
func (m *member) setLowat(n int) {
	m.conn.wmu.Lock()
	defer m.conn.wmu.Unlock()
	if !m.conn.closed {
		syscall.SetsockoptInt(m.conn.fd, syscall.SOL_SOCKET, syscall.SO_RCVLOWAT, max(n, 1))
	}
}

// setRcvbuf shrinks the socket's receive buffer (the slow workload).
func (m *member) setRcvbuf(n int) {
	m.conn.wmu.Lock()
	defer m.conn.wmu.Unlock()
	if !m.conn.closed && n > 0 {
		syscall.SetsockoptInt(m.conn.fd, syscall.SOL_SOCKET, syscall.SO_RCVBUF, n)
	}
}

// pause stops reading the member's socket; resume reads it again.
func (m *member) pause()  { m.b.poll.setReading(m, false) }
func (m *member) resume() { m.b.poll.setReading(m, true) }

// finish records the end of the connection (called by the poller).
func (m *member) finish(err error) {
	m.endErr = err
	if !m.closing.Load() {
		reason := "connection lost"
		var ce *closeError
		if errors.As(err, &ce) {
			reason = fmt.Sprintf("close %d %s", ce.code, ce.reason)
		}
		m.b.noteDrop(reason)
	}
	close(m.done)
}

// message handles one data message: its lines, one by one.
func (m *member) message(p []byte, now int64) {
	ad := m.b.ad
	for len(p) > 0 {
		line := p
		if i := bytes.IndexByte(p, '\n'); i >= 0 {
			line, p = p[:i], p[i+1:]
		} else {
			p = nil
		}
		kind, pl := ad.classify(m, line)
		switch kind {
		case lineMsg:
			m.deliver(pl, now)
		case lineReady:
			m.markReady()
		case linePing:
			m.conn.write(opText, ad.pong(), 0)
		case lineError:
			m.b.errors.Add(1)
			m.b.noteErr(string(line[:min(len(line), 200)]))
		}
	}
}

func (m *member) deliver(p []byte, now int64) {
	pl, ok := parsePayload(p)
	if !ok || pl.step < 0 || pl.step >= maxSteps {
		return
	}
	st := m.b.steps[pl.step]
	if m.sampled && m.counted {
		st.hist.record(time.Duration(now - pl.sched))
	}
	var ss *senderState
	for i := range m.senders {
		if m.senders[i].sender == pl.sender {
			ss = &m.senders[i]
			break
		}
	}
	unique := true
	switch {
	case ss == nil:
		// The first message seen from this sender sets its baseline.
		m.senders = append(m.senders, senderState{sender: pl.sender, last: pl.seq})
	case pl.seq == ss.last+1:
		ss.last = pl.seq
	case pl.seq > ss.last+1:
		if ss.missing == nil {
			ss.missing = map[int64]struct{}{}
		}
		for s := ss.last + 1; s < pl.seq && len(ss.missing) < maxMissing; s++ {
			ss.missing[s] = struct{}{}
		}
		ss.last = pl.seq
	default: // pl.seq <= ss.last
		if _, gap := ss.missing[pl.seq]; gap {
			delete(ss.missing, pl.seq)
			st.reorders.Add(1)
		} else {
			st.dups.Add(1)
			unique = false
		}
	}
	if unique {
		if m.counted {
			st.delivered.Add(1)
		} else {
			st.extra.Add(1)
		}
	}
}

// publish sends one benchmark message from m to its room for step, with
// the given scheduled send time. Only one goroutine publishes for a member.
func (m *member) publish(step int, sched int64) error {
	m.seq++
	m.buf = appendPayload(m.buf[:0], m.id, m.seq, sched, step, m.b.cfg.size)
	m.frame = m.b.ad.publish(m.frame[:0], m, m.room, m.buf)
	return m.conn.writeText(m.frame, 5*time.Second)
}
