package chatkit

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"
)

var errRoomClosed = errors.New("room closed")

// gapWait is how long a room holds a message whose predecessors have not
// arrived before it reads them from the store. On one node a gap lasts as
// long as two senders take to hand over their messages (microseconds); in
// a cluster it is a lost or delayed publication.
const gapWait = 50 * time.Millisecond

// skipWait is how long a room waits for a message that the store no
// longer keeps before it gives up on it and tells its members of the gap.
// A message is rarely lost for good: more often it is only late, behind a
// busy broker or a sender that was descheduled, so the room waits for it
// far longer than it waits before asking the store.
const skipWait = 2 * time.Second

// retryWait is how long a room waits before asking a store that failed
// again.
const retryWait = time.Second

// fillPage is how many messages a room reads from the store at a time
// when it fills a gap.
const fillPage = 1000

// maxPending bounds the messages a room holds while it waits for earlier
// ones; past it, later messages are left to the store.
const maxPending = 10000

// A room is this node's view of one chat room: its local sessions, who is
// present on any node, and the newest messages it delivered. Everything in
// it is guarded by mu, which is never held while writing to a socket or
// talking to the store or the broker: frames only go into session queues
// under it.
//
// The store is the source of truth and the broker a best-effort transport,
// so a room delivers messages strictly in id order: a message whose
// predecessors have not arrived waits in pending, and after gapWait the
// room reads the missing ones from the store. Every member therefore sees
// the room's messages in one order, with no gap and no repeat, whichever
// node they came through.
type room struct {
	name string
	srv  *Server
	cfg  *config

	// Lifetime fields, guarded by Server.mu, not by mu.
	refs       int       // sessions and broadcasts using the room
	emptySince time.Time // when refs last fell to 0
	expiry     *time.Timer

	// load serialises loading and unloading, which talk to the store and
	// the broker; deliveries never take it.
	load        sync.Mutex
	holders     int    // sessions that need the room loaded; guarded by load
	unsubscribe func() // guarded by load

	// presenceMu serialises this node's presence changes in the room
	// (Broker.Join and Leave with what follows locally), so that their
	// results are applied in the order the broker decided them. Only
	// joins and leaves of this room wait on it, never deliveries.
	presenceMu sync.Mutex

	// appending counts this node's messages between Store.Append and
	// offer: a gap may be one of them, on its way, rather than lost.
	appending atomic.Int64

	mu         sync.Mutex
	loaded     bool
	loading    bool
	generation int     // counts loads, so that a fill of an earlier one stops
	early      []Event // events received while loading
	epoch      string
	hist       *ring // the newest messages delivered; hist.last is the newest delivered id
	hasHistory bool  // a message was stored here through this node, or the store had some
	pending    map[int64]pendingMessage
	gapSince   time.Time // when the oldest held message arrived; zero with none held
	gapTimer   *time.Timer
	filling    bool
	refill     bool // a fill was asked for while one ran
	members    []*session
	presence   presence       // users present on any node
	leaving    map[string]int // sessions per user whose Broker.Leave is in progress
	left       chan struct{}  // closed and replaced when a Leave completes
	closing    bool           // Shutdown has begun: no joins, no user_left

	// Presence hooks queued under mu and run outside it, in order, by
	// runHooks.
	hooks        []func()
	hooksRunning bool
}

// pendingMessage is a message waiting for its predecessors, and the ack
// to queue for its sender once it is delivered.
type pendingMessage struct {
	msg Message
	ack ack
}

// ack is an ack frame owed to a session, if s is not nil.
type ack struct {
	s     *session
	frame []byte
}

func (a ack) send() {
	if a.s != nil {
		a.s.enqueueOrDrop(a.frame)
	}
}

func newRoom(name string, srv *Server) *room {
	return &room{
		name:     name,
		srv:      srv,
		cfg:      &srv.cfg,
		presence: newPresence(),
		hist:     newRing(srv.cfg.historySize, ""),
		pending:  make(map[int64]pendingMessage),
		leaving:  make(map[string]int),
		left:     make(chan struct{}),
	}
}

// hold loads the room if this is its first holder: it subscribes to the
// room's events, then reads its newest messages and its presence, so that
// nothing published after the read is missed. The matching unhold lets it
// go.
func (r *room) hold(ctx context.Context) error {
	r.load.Lock()
	defer r.load.Unlock()
	if r.holders > 0 {
		r.holders++
		return nil
	}
	r.mu.Lock()
	r.loading = true
	r.mu.Unlock()
	unsubscribe := r.srv.broker.Subscribe(r.name, r.receive)
	st, msgs, err := r.srv.store.Before(ctx, r.name, 0, r.cfg.historySize)
	var users []string
	if err == nil {
		users, err = r.srv.broker.Members(ctx, r.name)
	}
	if err != nil {
		unsubscribe()
		r.mu.Lock()
		r.loading = false
		r.early = nil
		r.mu.Unlock()
		return err
	}
	r.holders, r.unsubscribe = 1, unsubscribe

	r.mu.Lock()
	defer r.runHooks()
	defer r.mu.Unlock()
	r.loaded, r.loading = true, false
	r.generation++
	r.resetLocked(st, msgs)
	r.setPresenceLocked(users)
	early := r.early
	r.early = nil
	for _, ev := range early {
		r.receiveLocked(ev)
	}
	return nil
}

// unhold lets go of a room taken with hold; the last holder unsubscribes.
func (r *room) unhold() {
	r.load.Lock()
	defer r.load.Unlock()
	r.holders--
	if r.holders > 0 {
		return
	}
	r.unsubscribe()
	r.unsubscribe = nil
	r.mu.Lock()
	defer r.mu.Unlock()
	r.loaded = false
	r.setPresenceLocked(nil)
	clear(r.pending)
	if r.gapTimer != nil {
		r.gapTimer.Stop()
		r.gapTimer = nil
	}
}

// resetLocked makes the room's delivered history the store's: the newest
// messages msgs of state st.
func (r *room) resetLocked(st RoomState, msgs []Message) {
	r.epoch = st.Epoch
	if len(msgs) == 0 {
		r.hist.reset(st.Epoch, st.LastID)
	} else {
		r.hist.reset(st.Epoch, msgs[0].ID-1)
		for _, m := range msgs {
			r.keepLocked(m)
		}
	}
	if st.LastID > 0 && r.cfg.historySize > 0 {
		r.hasHistory = true
	}
	for id, p := range r.pending {
		if id <= r.hist.last || p.msg.Epoch != r.epoch {
			delete(r.pending, id)
			p.ack.send()
		}
	}
}

// keepLocked puts m in the delivered history, restarting it after a gap
// the store could not fill.
func (r *room) keepLocked(m Message) {
	if m.ID != r.hist.last+1 {
		r.hist.reset(r.epoch, m.ID-1)
	}
	r.hist.put(m)
}

// enter makes s's user present (Broker.Join) and adds s to the room with
// its welcome. A leave of the same user on this node that is in progress,
// or about to start because its session's reader has ended, is waited
// for first: a client that reconnects at once must not be refused as a
// duplicate of its own previous session.
//
// A member of the same name whose reader has not noticed its close yet
// (the client may see the close completed and dial again first) is given
// closeNoticeWait to leave before the new session is refused.
func (r *room) enter(ctx context.Context, s *session, resume bool, since int64, epoch string) error {
	patience := time.NewTimer(closeNoticeWait)
	defer patience.Stop()
	for {
		wait, err := r.tryEnter(ctx, s, resume, since, epoch)
		var again <-chan time.Time
		if wait == nil && errors.Is(err, ErrUsernameTaken) && r.cfg.leaveGrace > 0 {
			// The session in the way may be on another node, about to
			// linger (a reload through another node): nothing tells
			// this node, so ask again shortly, within the patience.
			again = time.After(closeNoticeWait / 10)
		} else if wait == nil {
			return err
		}
		select {
		case <-again:
		case <-wait:
		case <-patience.C:
			if errors.Is(err, ErrUsernameTaken) {
				return err
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// closeNoticeWait bounds how long a join waits for a session of the same
// user that may be closing (a local one; with a leave grace, one on any
// node); a true duplicate is refused after it.
const closeNoticeWait = 500 * time.Millisecond

// tryEnter is one attempt of enter; it returns a channel to wait on when a
// leave of the same user on this node stands in the way, with
// ErrUsernameTaken when that leave is not certain to come.
func (r *room) tryEnter(ctx context.Context, s *session, resume bool, since int64, epoch string) (wait <-chan struct{}, err error) {
	r.presenceMu.Lock()
	defer r.presenceMu.Unlock()
	r.mu.Lock()
	busy, left := r.leaving[s.username] > 0, r.left
	r.mu.Unlock()
	if busy {
		return left, nil
	}
	m := Member{Room: r.name, Username: s.username, Session: s.id}
	first, err := r.srv.broker.Join(ctx, m, !r.cfg.duplicates)
	if errors.Is(err, ErrUsernameTaken) {
		r.mu.Lock()
		ending, local, left := r.endingLocked(s.username)
		r.mu.Unlock()
		switch {
		case ending:
			return left, nil
		case local:
			return left, err
		}
		return nil, err
	}
	if err != nil {
		// Perhaps recorded all the same: take it back (the broker
		// retries a Leave that fails).
		leaveCtx, cancel := r.srv.storeContext(context.Background())
		r.srv.broker.Leave(leaveCtx, m)
		cancel()
		return nil, err
	}
	if err := r.join(s, first, resume, since, epoch); err != nil {
		r.srv.broker.Leave(ctx, m)
		return nil, err
	}
	return nil, nil
}

// endingLocked reports whether a member session of username has stopped
// reading, so that it is about to leave, and whether there is one at all;
// left is the channel that the next leave closes.
func (r *room) endingLocked(username string) (ending, local bool, left <-chan struct{}) {
	for _, m := range r.members {
		if m.username == username {
			local = true
			ending = ending || m.ended.Load()
		}
	}
	return ending, local, r.left
}

// join adds s to the room and queues its welcome (with the history after
// since when resume is true). first says whether its user just became
// present, which the room then announces. epoch is the room incarnation
// the client last saw, or "".
func (r *room) join(s *session, first, resume bool, since int64, epoch string) error {
	r.mu.Lock()
	defer r.runHooks()
	defer r.mu.Unlock()
	if r.closing {
		return errRoomClosed
	}
	s.index = len(r.members)
	r.members = append(r.members, s)
	r.addPresentLocked(s.username)
	s.enqueue(r.welcomeLocked(s, resume, since, epoch), false)
	if first {
		r.announceLocked(typeUserJoined, s.username)
		if f := r.cfg.onJoin; f != nil {
			r.hooks = append(r.hooks, func() { f(r.name, s.username) })
		}
	}
	return nil
}

// welcomeLocked encodes the welcome of s: the history after since when
// resume is true, else all of it.
func (r *room) welcomeLocked(s *session, resume bool, since int64, epoch string) []byte {
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
	return encode(welcomeEvent{
		Type:             typeWelcome,
		Room:             r.name,
		Username:         s.username,
		SessionID:        s.id,
		Epoch:            r.epoch,
		ActiveUsers:      r.presence.list(),
		History:          history,
		HistoryTruncated: truncated,
		Limits:           r.cfg.limits(),
	})
}

// leave removes s from the room if it is still there; see removeLocked.
func (r *room) leave(s *session) {
	r.mu.Lock()
	r.removeLocked(s)
	r.mu.Unlock()
	r.runHooks()
}

// drop removes s from the room and makes its connection close with the
// given reason after whatever it is writing now.
func (r *room) drop(s *session, reason string) {
	r.mu.Lock()
	r.dropLocked(s, reason)
	r.mu.Unlock()
	r.runHooks()
}

func (r *room) dropLocked(s *session, reason string) {
	if s.index >= 0 {
		r.srv.counters.drop(dropReason(reason))
	}
	code := statusGoingAway
	if reason == closeTooSlow {
		code = statusPolicy
	}
	s.close(code, reason, false)
	r.removeLocked(s)
}

// removeLocked takes s out of the room and starts removing it from the
// broker's presence; if it was its user's last session anywhere, the
// others then get user_left. Removing a session that is not a member does
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
	r.leaving[s.username]++
	s.exited = make(chan struct{})
	// The session holds the Server's wait group, so this Add cannot race
	// with Shutdown's Wait.
	r.srv.sessions.Add(1)
	go r.exit(s)
}

// exit removes s from the broker's presence and, if its user is no longer
// present anywhere, announces the leave. With WithLeaveGrace the session
// first lingers for the grace: its user stays present, may come back on
// any node without a user_left and user_joined pair, and is announced
// gone only if it did not.
//
// s.exited is closed once the session no longer stands in the way of a
// new one of its user: its session waits for that before it lets go of
// the room, so that the room is not freed, and made anew, under a leave in
// progress.
func (r *room) exit(s *session) {
	defer r.srv.sessions.Done()
	m := Member{Room: r.name, Username: s.username, Session: s.id}
	if grace := r.cfg.leaveGrace; grace > 0 && !r.isClosing() && r.linger(m) {
		close(s.exited)
		timer := time.NewTimer(grace)
		select {
		case <-timer.C:
		case <-r.srv.done: // Shutdown: leave at once
			timer.Stop()
		}
		r.leavePresence(m, false)
		return
	}
	r.leavePresence(m, true)
	close(s.exited)
}

// linger marks m as lingering in the broker, after which a new session of
// its user no longer waits for it to leave.
func (r *room) linger(m Member) bool {
	r.presenceMu.Lock()
	defer r.presenceMu.Unlock()
	ctx, cancel := r.srv.storeContext(context.Background())
	err := r.srv.broker.Linger(ctx, m)
	cancel()
	if err != nil {
		r.srv.cfg.logger.Warn("chatkit: presence linger failed", "room", r.name, "username", m.Username, "session", m.Session, "err", err)
		return false
	}
	r.mu.Lock()
	r.leftLocked(m.Username)
	r.mu.Unlock()
	return true
}

// leavePresence removes m from the broker's presence and announces its
// user's leave if it was the last session. counted says whether m is
// still counted in r.leaving.
func (r *room) leavePresence(m Member, counted bool) {
	r.presenceMu.Lock()
	defer r.presenceMu.Unlock()
	ctx, cancel := r.srv.storeContext(context.Background())
	last, err := r.srv.broker.Leave(ctx, m)
	cancel()
	if err != nil {
		// The broker removes it later and tells every node then.
		r.srv.cfg.logger.Warn("chatkit: presence leave failed", "room", r.name, "username", m.Username, "session", m.Session, "err", err)
	}
	r.mu.Lock()
	if counted {
		r.leftLocked(m.Username)
	}
	if last {
		r.userLeftLocked(m.Username, true)
	}
	r.mu.Unlock()
	r.runHooks()
}

// leftLocked counts one leave of username's in progress as done, waking
// the joins that wait for it.
func (r *room) leftLocked(username string) {
	if r.leaving[username]--; r.leaving[username] <= 0 {
		delete(r.leaving, username)
	}
	close(r.left)
	r.left = make(chan struct{})
}

func (r *room) isClosing() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.closing
}

// userLeftLocked removes username from presence and announces it; the
// leave hook runs for users whose session was on this node.
func (r *room) userLeftLocked(username string, local bool) {
	if !r.removePresentLocked(username) {
		return
	}
	if !r.closing {
		r.announceLocked(typeUserLeft, username)
	}
	if f := r.cfg.onLeave; f != nil && local {
		r.hooks = append(r.hooks, func() { f(r.name, username) })
	}
}

// offer delivers a stored message, from this node or another, in id order.
// The ack, if any, is queued for its sender right after the message has
// been queued for every member.
func (r *room) offer(m Message, a ack) {
	r.mu.Lock()
	defer r.runHooks()
	defer r.mu.Unlock()
	r.offerLocked(m, a)
}

func (r *room) offerLocked(m Message, a ack) {
	if r.cfg.historySize > 0 {
		r.hasHistory = true
	}
	if !r.loaded {
		a.send()
		return
	}
	switch {
	case m.Epoch != r.epoch:
		// Another id sequence: the store restarted the room, or this is
		// a late message of the sequence before. The store says which.
		a.send()
		r.fillLocked()
	case m.ID <= r.hist.last:
		a.send() // delivered already, from the store or another node
	case m.ID == r.hist.last+1:
		r.deliverMessageLocked(m)
		a.send()
		r.drainPendingLocked()
	case len(r.pending) < maxPending:
		if len(r.pending) == 0 {
			r.gapSince = time.Now()
		}
		r.pending[m.ID] = pendingMessage{m, a}
		if r.gapTimer == nil && !r.filling {
			r.gapTimer = r.fillAfterLocked(gapWait)
		}
	default:
		a.send() // the store has it; the fill brings it
	}
}

func (r *room) deliverMessageLocked(m Message) {
	r.keepLocked(m)
	r.deliverLocked(encode(newChatEvent(m)), nil)
	r.srv.counters.observeFanout(time.Since(m.Time))
}

// drainPendingLocked delivers the held messages that are next in order.
func (r *room) drainPendingLocked() {
	for {
		p, ok := r.pending[r.hist.last+1]
		if !ok {
			break
		}
		delete(r.pending, p.msg.ID)
		r.deliverMessageLocked(p.msg)
		p.ack.send()
	}
	if len(r.pending) == 0 && r.gapTimer != nil {
		r.gapTimer.Stop()
		r.gapTimer = nil
	}
}

// fillLocked starts reading the store for what this node has not
// delivered, unless a fill runs, which then goes round once more.
func (r *room) fillLocked() {
	if r.filling {
		r.refill = true
		return
	}
	if r.gapTimer != nil {
		r.gapTimer.Stop()
		r.gapTimer = nil
	}
	r.filling = true
	gen := r.generation
	r.srv.sessions.Add(1) // a loaded room has a member holding the group
	go func() {
		defer r.srv.sessions.Done()
		r.fill(gen)
	}()
}

// fillAfterLocked starts a fill after d, if the room is still loaded as
// it is now.
func (r *room) fillAfterLocked(d time.Duration) *time.Timer {
	gen := r.generation
	return time.AfterFunc(d, func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.gapTimer = nil
		if r.loaded && r.generation == gen {
			r.fillLocked()
		}
	})
}

// fill reads from the store the messages after the newest delivered one
// and delivers them, until it has caught up. If the store has another
// epoch, the room's sequence restarted: the room takes the store's newest
// messages and sends each member a new welcome. A store that fails is
// asked again after retryWait.
func (r *room) fill(gen int) {
	r.mu.Lock()
	for {
		if !r.loaded || r.generation != gen {
			r.filling = false
			r.mu.Unlock()
			return
		}
		r.refill = false
		after, epoch := r.hist.last, r.epoch
		r.mu.Unlock()

		ctx, cancel := r.srv.storeContext(context.Background())
		st, msgs, err := r.srv.store.After(ctx, r.name, after, fillPage)
		if err == nil && st.Epoch != epoch {
			st, msgs, err = r.srv.store.Before(ctx, r.name, 0, r.cfg.historySize)
		}
		cancel()

		r.mu.Lock()
		if !r.loaded || r.generation != gen {
			continue
		}
		if err != nil {
			r.srv.cfg.logger.Warn("chatkit: reading missed messages failed", "room", r.name, "err", err)
			r.filling = false
			r.gapTimer = r.fillAfterLocked(retryWait)
			r.mu.Unlock()
			return
		}
		switch {
		case st.Epoch != r.epoch:
			r.resyncLocked(st, msgs)
		case len(msgs) > 0 && msgs[0].ID > r.hist.last+1 && (r.appending.Load() > 0 || time.Since(r.gapSince) < skipWait):
			// The store no longer has the next message, but it may only
			// be late: this node's own, still on its way from Append to
			// offer, or another node's behind a busy broker.
			r.filling = false
			r.gapTimer = r.fillAfterLocked(gapWait)
			r.mu.Unlock()
			return
		case len(msgs) > 0 && msgs[0].ID > r.hist.last+1:
			r.skipLocked(msgs)
		default:
			for _, m := range msgs {
				if m.ID <= r.hist.last {
					continue
				}
				r.deliverMessageLocked(m)
				// The store was first: the copy that arrived, or this
				// node's own message, still owes its sender an ack.
				if p, ok := r.pending[m.ID]; ok {
					delete(r.pending, m.ID)
					p.ack.send()
				}
			}
			r.drainPendingLocked()
		}
		if len(msgs) < fillPage && !r.refill {
			r.filling = false
			if len(r.pending) > 0 && r.gapTimer == nil {
				r.gapTimer = r.fillAfterLocked(gapWait)
			}
			r.mu.Unlock()
			r.runHooks()
			return
		}
	}
}

// skipLocked moves the room past messages the store no longer keeps (it
// fell behind by more than the store's history while waiting for them):
// msgs are the oldest the store still has. Each member gets a new welcome,
// as if it had reconnected with since set to what it was given, so that it
// is told of its gap instead of seeing ids jump.
func (r *room) skipLocked(msgs []Message) {
	since := r.hist.last
	for _, m := range msgs {
		r.keepLocked(m)
	}
	r.srv.cfg.logger.Warn("chatkit: messages lost to this node: the store no longer keeps them", "room", r.name, "after", since, "next", msgs[0].ID)
	for id, p := range r.pending {
		if id <= r.hist.last {
			delete(r.pending, id)
			p.ack.send()
		}
	}
	r.rewelcomeLocked(since, r.epoch)
	r.drainPendingLocked()
}

// resyncLocked restarts the room on the store's new id sequence and sends
// every member a new welcome, as if it had reconnected: its ids are from
// the old sequence, so it gets the whole kept history and is told so.
func (r *room) resyncLocked(st RoomState, msgs []Message) {
	old := r.epoch
	r.resetLocked(st, msgs)
	r.srv.cfg.logger.Info("chatkit: room restarted by the store", "room", r.name, "epoch", r.epoch)
	r.rewelcomeLocked(0, old)
}

// rewelcomeLocked sends every member the welcome of a reconnect with since
// and epoch, dropping as too slow those whose queue is full.
func (r *room) rewelcomeLocked(since int64, epoch string) {
	var slow []*session
	for _, s := range r.members {
		if !s.enqueue(r.welcomeLocked(s, true, since, epoch), false) {
			slow = append(slow, s)
		}
	}
	for _, s := range slow {
		r.dropLocked(s, closeTooSlow)
	}
}

// receive takes an event of the room from the broker.
func (r *room) receive(ev Event) {
	r.mu.Lock()
	defer r.runHooks()
	defer r.mu.Unlock()
	switch {
	case r.loading:
		if len(r.early) < maxPending {
			r.early = append(r.early, ev)
		}
	case r.loaded:
		r.receiveLocked(ev)
	}
}

func (r *room) receiveLocked(ev Event) {
	switch ev.Kind {
	case EventMessage:
		if ev.Message != nil {
			r.offerLocked(*ev.Message, ack{})
		}
	case EventTyping:
		r.deliverLocked(encode(typingEvent{Type: typeTyping, Room: r.name, Username: ev.Username}), nil)
	case EventJoined:
		if r.addPresentLocked(ev.Username) {
			r.announceLocked(typeUserJoined, ev.Username)
		}
	case EventLeft:
		r.userLeftLocked(ev.Username, false)
	case EventReset:
		r.fillLocked()
		r.srv.sessions.Add(1) // a loaded room has a member holding the group
		go r.refreshPresence(r.generation)
	}
}

// refreshPresence reads the room's presence from the broker after events
// may have been lost, and announces what changed.
func (r *room) refreshPresence(gen int) {
	defer r.srv.sessions.Done()
	// No join or leave of this node may land between the read and its
	// use, or it would be undone.
	r.presenceMu.Lock()
	defer r.presenceMu.Unlock()
	ctx, cancel := r.srv.storeContext(context.Background())
	users, err := r.srv.broker.Members(ctx, r.name)
	cancel()
	if err != nil {
		return // the next EventReset tries again
	}
	r.mu.Lock()
	defer r.runHooks()
	defer r.mu.Unlock()
	if !r.loaded || r.generation != gen {
		return
	}
	now := make(map[string]bool, len(users))
	for _, u := range users {
		now[u] = true
		if r.addPresentLocked(u) {
			r.announceLocked(typeUserJoined, u)
		}
	}
	for _, u := range append([]string(nil), r.presence.list()...) {
		if !now[u] && r.leaving[u] == 0 {
			r.userLeftLocked(u, false)
		}
	}
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
// never waits on a client. A member whose queue is full is dropped as too
// slow, and its leave delivered in turn.
func (r *room) deliverLocked(frame []byte, skip *session) {
	r.deliverEachLocked(frame, frame, skip, false)
}

// deliverEachLocked is deliverLocked with one frame for chatkit.v1 clients
// and another for the others; notice says the frames are presence notices
// (see session.enqueue).
func (r *room) deliverEachLocked(frame, v1Frame []byte, skip *session, notice bool) {
	var slow []*session
	for _, s := range r.members {
		f := frame
		if s.batch {
			f = v1Frame
		}
		if s != skip && !s.enqueue(f, notice) {
			slow = append(slow, s)
		}
	}
	r.srv.counters.deliveries.Add(uint64(len(r.members) - len(slow)))
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
	ev.ActiveUsers = r.presence.list()
	r.deliverEachLocked(encode(ev), v1Frame, nil, true)
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
			runHook(r.cfg.logger, r.name, h)
		}
		r.mu.Lock()
	}
	r.hooksRunning = false
	r.mu.Unlock()
}

func (r *room) users() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.loaded {
		return nil
	}
	return append([]string(nil), r.presence.list()...)
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
// 1001 after what is already queued for it. Leaves are not announced here;
// the broker tells the other nodes.
func (r *room) shutdown() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closing = true
	for _, s := range r.members {
		s.close(statusGoingAway, closeShutdown, true)
	}
}

// keepsHistory reports whether freeing the room would lose messages.
func (r *room) keepsHistory() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.hasHistory
}

// setPresenceLocked makes users the room's presence, keeping the Server's
// count of present users.
func (r *room) setPresenceLocked(users []string) {
	r.srv.counters.presentUsers.Add(-int64(len(r.presence.users)))
	r.presence = newPresence()
	for _, u := range users {
		r.presence.add(u)
	}
	r.srv.counters.presentUsers.Add(int64(len(r.presence.users)))
}

// addPresentLocked and removePresentLocked change the presence and the
// Server's count; they report whether anything changed.
func (r *room) addPresentLocked(username string) bool {
	if !r.presence.add(username) {
		return false
	}
	r.srv.counters.presentUsers.Add(1)
	return true
}

func (r *room) removePresentLocked(username string) bool {
	if !r.presence.remove(username) {
		return false
	}
	r.srv.counters.presentUsers.Add(-1)
	return true
}
