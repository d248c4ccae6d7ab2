package chatkit

import (
	"errors"
	"sync"
	"time"
)

var (
	errUsernameTaken = errors.New("username taken")
	errRoomClosed    = errors.New("room closed")
)

// A room owns its sessions, its presence and its history. Everything in it
// is guarded by mu, which is never held while writing to a socket: frames
// only go into session queues under it. Taking mu for every publish gives
// each room one total order: ids are assigned and frames queued in the same
// critical section, so every member sees the room's messages in id order.
type room struct {
	name  string
	epoch string // identifies this incarnation of the room; ids restart with it
	cfg   *config

	// Lifetime fields, guarded by Server.mu, not by mu.
	refs       int       // sessions and broadcasts using the room
	emptySince time.Time // when refs last fell to 0
	expiry     *time.Timer

	mu       sync.Mutex
	members  []*session // in no particular order; session.index is the position
	presence presence
	hist     *ring
	closing  bool // Shutdown has begun: no joins, no user_left

	// Presence hooks queued under mu and run outside it, in order, by
	// runHooks.
	hooks        []func()
	hooksRunning bool
}

func newRoom(name string, cfg *config) *room {
	r := &room{
		name:     name,
		epoch:    newEpoch(),
		cfg:      cfg,
		presence: newPresence(),
	}
	r.hist = newRing(cfg.historySize, r.epoch)
	return r
}

// join adds s to the room, queues its welcome (with the history after since
// when resume is true), and announces the user if this is their first
// session. epoch is the room incarnation the client last saw, or "".
func (r *room) join(s *session, resume bool, since int64, epoch string) error {
	r.mu.Lock()
	defer r.runHooks()
	defer r.mu.Unlock()
	if r.closing {
		return errRoomClosed
	}
	if !r.cfg.duplicates && r.presence.has(s.username) {
		return errUsernameTaken
	}
	s.index = len(r.members)
	r.members = append(r.members, s)
	first := r.presence.add(s.username)

	var msgs []Message
	truncated := false
	switch {
	case !resume:
		msgs = r.hist.after(0, r.cfg.historySize)
	case (epoch != "" && epoch != r.epoch) || since > r.hist.last:
		// The client's ids come from another incarnation of the room: its
		// position means nothing here, so it gets everything kept and is
		// told it has a gap.
		msgs = r.hist.after(0, r.cfg.historySize)
		truncated = true
	default:
		msgs, truncated = r.hist.after(since, r.cfg.historySize), r.hist.truncated(since)
	}
	history := make([]chatEvent, len(msgs))
	for i, m := range msgs {
		history[i] = newChatEvent(m)
	}
	s.enqueue(encode(welcomeEvent{
		Type:             typeWelcome,
		Room:             r.name,
		Username:         s.username,
		SessionID:        s.id,
		Epoch:            r.epoch,
		ActiveUsers:      r.presence.users(),
		History:          history,
		HistoryTruncated: truncated,
		Limits:           r.cfg.limits(),
	}))
	if first {
		r.announceLocked(typeUserJoined, s.username)
		if f := r.cfg.onJoin; f != nil {
			r.hooks = append(r.hooks, func() { f(r.name, s.username) })
		}
	}
	return nil
}

// leave removes s from the room if it is still there; see removeLocked.
func (r *room) leave(s *session) {
	r.mu.Lock()
	r.removeLocked(s)
	r.mu.Unlock()
	r.runHooks()
}

// drop removes s from the room, announcing its leave to the others at once,
// and makes its connection close with the given reason after whatever it is
// writing now.
func (r *room) drop(s *session, reason string) {
	r.mu.Lock()
	r.dropLocked(s, reason)
	r.mu.Unlock()
	r.runHooks()
}

func (r *room) dropLocked(s *session, reason string) {
	code := statusGoingAway
	if reason == closeTooSlow {
		code = statusPolicy
	}
	s.close(code, reason, false)
	r.removeLocked(s)
}

// removeLocked takes s out of the room. If s was the user's last session,
// the others get user_left (unless the server is shutting down) and the
// leave hook is queued. Removing a session that is not a member does
// nothing, so every way a session can end may call it.
func (r *room) removeLocked(s *session) {
	if s.index < 0 {
		return
	}
	last := len(r.members) - 1
	r.members[s.index] = r.members[last]
	r.members[s.index].index = s.index
	r.members[last] = nil
	r.members = r.members[:last]
	s.index = -1
	if !r.presence.remove(s.username) {
		return
	}
	if !r.closing {
		r.announceLocked(typeUserLeft, s.username)
	}
	if f := r.cfg.onLeave; f != nil {
		r.hooks = append(r.hooks, func() { f(r.name, s.username) })
	}
}

// publish stores m and delivers it to every member, the sender included.
// It returns the stored message; dup is true when m repeats a client
// message id that is still kept, in which case nothing is delivered and the
// earlier message is returned.
func (r *room) publish(m Message) (stored Message, dup bool) {
	r.mu.Lock()
	defer r.runHooks()
	defer r.mu.Unlock()
	stored, dup = r.hist.add(m)
	if !dup {
		r.deliverLocked(encode(newChatEvent(stored)), nil)
	}
	return stored, dup
}

// typing tells every member but s that s's user is typing.
func (r *room) typing(s *session) {
	frame := encode(typingEvent{Type: typeTyping, Room: r.name, Username: s.username})
	r.mu.Lock()
	defer r.runHooks()
	defer r.mu.Unlock()
	r.deliverLocked(frame, s)
}

// deliverLocked queues one encoded frame to every member except skip. It
// is the room's fan-out: the only place frames reach sessions, so that a
// multi-node fan-out can take its place without touching the protocol code.
// It never waits on a client. A member whose queue is full is dropped as too
// slow, and its leave delivered in turn.
func (r *room) deliverLocked(frame []byte, skip *session) {
	r.deliverEachLocked(frame, frame, skip)
}

// deliverEachLocked is deliverLocked with one frame for chatkit.v1 clients
// and another for the others.
func (r *room) deliverEachLocked(frame, v1Frame []byte, skip *session) {
	var slow []*session
	for _, s := range r.members {
		f := frame
		if s.batch {
			f = v1Frame
		}
		if s != skip && !s.enqueue(f) {
			slow = append(slow, s)
		}
	}
	for _, s := range slow {
		r.dropLocked(s, closeTooSlow)
	}
}

// announceLocked delivers a user_joined or user_left. Seed-style clients
// get the room's whole member list with every such event, as the seed's
// protocol has it; filling a room of n members then sends them O(n²)
// names. chatkit.v1 clients get the event without the list and apply it to
// the list of their welcome.
func (r *room) announceLocked(typ, username string) {
	ev := presenceEvent{Type: typ, Room: r.name, Username: username, Timestamp: formatTime(time.Now())}
	v1Frame := encode(ev)
	ev.ActiveUsers = r.presence.users()
	r.deliverEachLocked(encode(ev), v1Frame, nil)
}

// runHooks runs the queued presence hooks outside mu, in the order they
// were queued. One caller at a time runs them; a caller that finds them
// already running leaves its hooks to that runner, which loops until the
// queue is empty. Hooks may therefore call back into the Server.
func (r *room) runHooks() {
	r.mu.Lock()
	if r.hooksRunning {
		r.mu.Unlock()
		return
	}
	r.hooksRunning = true
	for len(r.hooks) > 0 {
		hooks := r.hooks
		r.hooks = nil
		r.mu.Unlock()
		for _, h := range hooks {
			h()
		}
		r.mu.Lock()
	}
	r.hooksRunning = false
	r.mu.Unlock()
}

func (r *room) users() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.presence.users()...)
}

// disconnect drops every session of username, announcing the leave.
func (r *room) disconnect(username string) int {
	r.mu.Lock()
	var victims []*session
	for _, s := range r.members {
		if s.username == username {
			victims = append(victims, s)
		}
	}
	for _, s := range victims {
		r.dropLocked(s, closeDisconnected)
	}
	r.mu.Unlock()
	r.runHooks()
	return len(victims)
}

// shutdown closes the room to joins and tells every session to close with
// 1001 after what is already queued for it. Leaves are not announced.
func (r *room) shutdown() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closing = true
	for _, s := range r.members {
		s.close(statusGoingAway, closeShutdown, true)
	}
}

func (r *room) historyLen() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.hist.len()
}
