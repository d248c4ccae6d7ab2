package redisadapter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/chatkit/chatkit"
	"github.com/redis/go-redis/v9"
)

// wireEvent is a chatkit.Event as published on a room's channel. Node is
// the publishing node's id, so that it can skip its own events; an empty
// Node is delivered by every node (the leaves found by a sweep).
type wireEvent struct {
	Node     string            `json:"node"`
	Kind     chatkit.EventKind `json:"kind"`
	Room     string            `json:"room"`
	Username string            `json:"username,omitempty"`
	Epoch    string            `json:"epoch,omitempty"`
	Message  *storedMsg        `json:"message,omitempty"`
}

func (a *Adapter) encodeEvent(node string, ev chatkit.Event) string {
	w := wireEvent{Node: node, Kind: ev.Kind, Room: ev.Room, Username: ev.Username}
	if m := ev.Message; m != nil {
		w.Epoch = m.Epoch
		w.Message = &storedMsg{ID: m.ID, Username: m.Username, Text: m.Text, ClientMsgID: m.ClientMsgID, Time: m.Time}
	}
	b, _ := json.Marshal(w)
	return string(b)
}

// publishScript publishes ARGV[1] on channel KEYS[1]. The channel is
// given as a key so that, on Cluster, the event leaves from the room's
// slot like the room's other events: a plain PUBLISH would go to any node,
// and two events sent through two nodes can arrive in either order.
var publishScript = redis.NewScript(`return redis.call('PUBLISH', KEYS[1], ARGV[1])`)

// Publish implements chatkit.Broker: it sends ev to the nodes that
// subscribe to ev.Room, except this one. It returns once Redis has taken
// the event; an error means it may not have reached them.
func (a *Adapter) Publish(ctx context.Context, ev chatkit.Event) error {
	return publishScript.Run(ctx, a.rdb, []string{a.channel(ev.Room)}, a.encodeEvent(a.node, ev)).Err()
}

// Delivery. One receiver goroutine reads the pub/sub connection and queues
// what it gets in the inbox; one dispatcher goroutine calls the deliver
// funcs from there, so that a room's calls are never concurrent and keep
// their order, also for the events that do not come from Redis (the
// EventReset of a new subscriber to a room already in place, the leaves
// found by a retried Leave).

type roomSubs struct {
	subs      map[*sub]bool
	confirmed bool // Redis confirmed a SUBSCRIBE while the room had subscribers
}

type sub struct{ deliver func(chatkit.Event) }

// A delivery is an event for every subscriber of its room, or only for to.
type delivery struct {
	ev chatkit.Event
	to *sub
}

// subOp is a SUBSCRIBE (on) or UNSUBSCRIBE of a room's channel.
type subOp struct {
	channel string
	on      bool
}

// postLocked queues d for the dispatcher. a.mu is held.
func (a *Adapter) postLocked(d delivery) {
	a.inbox = append(a.inbox, d)
	select {
	case a.inboxReady <- struct{}{}:
	default:
	}
}

func (a *Adapter) post(d delivery) {
	a.mu.Lock()
	a.postLocked(d)
	a.mu.Unlock()
}

func (a *Adapter) dispatchLoop() {
	defer a.wg.Done()
	for {
		select {
		case <-a.ctx.Done():
			return
		case <-a.inboxReady:
		}
		a.mu.Lock()
		batch := a.inbox
		a.inbox = nil
		a.mu.Unlock()
		for _, d := range batch {
			a.mu.Lock()
			var subs []*sub
			if rs := a.rooms[d.ev.Room]; rs != nil {
				for s := range rs.subs {
					if d.to == nil || d.to == s {
						subs = append(subs, s)
					}
				}
			}
			a.mu.Unlock()
			for _, s := range subs {
				s.deliver(d.ev)
			}
		}
	}
}

// Subscribe implements chatkit.Broker. It returns at once: the SUBSCRIBE
// is sent in the background, and deliver gets an EventReset when it is in
// place, and again each time the pub/sub connection is back after a break
// (go-redis reconnects and subscribes again by itself). All of a node's
// rooms share one pub/sub connection; a room's channel is subscribed
// while the room has at least one subscriber on the node. Calling
// unsubscribe again does nothing.
func (a *Adapter) Subscribe(room string, deliver func(chatkit.Event)) (unsubscribe func()) {
	s := &sub{deliver: deliver}
	a.mu.Lock()
	defer a.mu.Unlock()
	rs := a.rooms[room]
	if rs == nil {
		rs = &roomSubs{subs: make(map[*sub]bool)}
		a.rooms[room] = rs
		a.sendOpLocked(subOp{channel: a.channel(room), on: true})
	} else if rs.confirmed {
		a.postLocked(delivery{ev: chatkit.Event{Kind: chatkit.EventReset, Room: room}, to: s})
	}
	rs.subs[s] = true
	return func() {
		a.mu.Lock()
		defer a.mu.Unlock()
		if a.rooms[room] != rs || !rs.subs[s] {
			return
		}
		delete(rs.subs, s)
		if len(rs.subs) == 0 {
			delete(a.rooms, room)
			a.sendOpLocked(subOp{channel: a.channel(room)})
		}
	}
}

// sendOpLocked queues op for the subscriber goroutine; a.mu is held,
// which keeps the ops in the order the rooms came and went. The queue has
// no bound, so that Subscribe never waits for Redis.
func (a *Adapter) sendOpLocked(op subOp) {
	a.ops = append(a.ops, op)
	select {
	case a.opsReady <- struct{}{}:
	default:
	}
}

// subscribeLoop sends the SUBSCRIBEs and UNSUBSCRIBEs, one command for
// each run of ops of the same kind. go-redis records a channel before it
// sends SUBSCRIBE, so a SUBSCRIBE that fails because Redis is down is sent
// again when the receiver reconnects: nothing to retry here.
func (a *Adapter) subscribeLoop() {
	defer a.wg.Done()
	for {
		select {
		case <-a.ctx.Done():
			return
		case <-a.opsReady:
		}
		a.mu.Lock()
		ops := a.ops
		a.ops = nil
		a.mu.Unlock()
		for len(ops) > 0 {
			on := ops[0].on
			var chans []string
			for len(ops) > 0 && ops[0].on == on {
				chans = append(chans, ops[0].channel)
				ops = ops[1:]
			}
			var err error
			if on {
				err = a.pubsub.Subscribe(a.ctx, chans...)
			} else {
				err = a.pubsub.Unsubscribe(a.ctx, chans...)
			}
			if err != nil && a.ctx.Err() == nil {
				a.log.Debug("pub/sub command failed; the receiver reconnects and subscribes again",
					"channels", chans, "subscribe", on, "err", err)
			}
		}
	}
}

// receiveLoop reads the pub/sub connection until Close. When the
// connection has been idle for a presence TTL it pings, so that go-redis
// finds a dead connection and reconnects.
func (a *Adapter) receiveLoop() {
	defer a.wg.Done()
	backoff := 10 * time.Millisecond
	for a.ctx.Err() == nil {
		msg, err := a.pubsub.ReceiveTimeout(a.ctx, a.cfg.presenceTTL)
		if err != nil {
			if a.ctx.Err() != nil {
				return
			}
			var nerr interface{ Timeout() bool }
			if errors.As(err, &nerr) && nerr.Timeout() {
				if err := a.pubsub.Ping(a.ctx); err == nil {
					continue
				}
			}
			a.log.Debug("pub/sub receive failed; reconnecting", "err", err, "backoff", backoff)
			select {
			case <-a.ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 10 * time.Millisecond
		switch m := msg.(type) {
		case *redis.Message:
			a.received(m)
		case *redis.Subscription:
			if m.Kind == "subscribe" || m.Kind == "ssubscribe" {
				a.subscribed(m.Channel)
			}
		}
	}
}

func (a *Adapter) received(m *redis.Message) {
	room, ok := a.roomOfChannel(m.Channel)
	if !ok {
		return
	}
	var w wireEvent
	if err := json.Unmarshal([]byte(m.Payload), &w); err != nil {
		a.log.Warn("undecodable event", "channel", m.Channel, "err", err)
		return
	}
	if w.Node == a.node {
		return
	}
	ev := chatkit.Event{Kind: w.Kind, Room: room, Username: w.Username}
	if w.Message != nil {
		msg := w.Message.message(room, w.Epoch)
		ev.Message = &msg
	}
	a.post(delivery{ev: ev})
}

// subscribed handles Redis's confirmation of a SUBSCRIBE, the first one or
// one that go-redis sent again after reconnecting: events may have been
// missed before it, which an EventReset tells the subscribers.
func (a *Adapter) subscribed(ch string) {
	room, ok := a.roomOfChannel(ch)
	if !ok {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if rs := a.rooms[room]; rs != nil {
		rs.confirmed = true
		a.postLocked(delivery{ev: chatkit.Event{Kind: chatkit.EventReset, Room: room}})
	}
}

// Presence. A room's presence hash maps each session, named
// "username\x00session" since a session id is unique only with its user,
// to its node and user ("node\x00username"); its users hash counts each present user's
// sessions. The scripts keep the two in step, so exactly one Join of a
// user reports first and exactly one removal of its sessions reports last.

// joinScript: KEYS presence, users; ARGV user\x00session, node\x00user, user,
// exclusive, channel, joined event. Returns 1 first, 0 not, -1 taken.
// Joining a session already there changes nothing, so that a retried or
// repeated Join counts it once.
var joinScript = redis.NewScript(`
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 0 end
if ARGV[4] == '1' then
  local sessions = tonumber(redis.call('HGET', KEYS[2], ARGV[3])) or 0
  local lingering = tonumber(redis.call('HGET', KEYS[4], ARGV[3])) or 0
  if sessions > lingering then return -1 end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if redis.call('HINCRBY', KEYS[2], ARGV[3], 1) == 1 then
  redis.call('PUBLISH', ARGV[5], ARGV[6])
  return 1
end
return 0
`)

// leaveScript: KEYS presence, users, linger, lingerers; ARGV
// user\x00session, user, channel, left event. Returns 1 if the session was
// its user's last.
var leaveScript = redis.NewScript(`
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
if redis.call('HDEL', KEYS[3], ARGV[1]) == 1 and redis.call('HINCRBY', KEYS[4], ARGV[2], -1) <= 0 then
  redis.call('HDEL', KEYS[4], ARGV[2])
end
if redis.call('HINCRBY', KEYS[2], ARGV[2], -1) <= 0 then
  redis.call('HDEL', KEYS[2], ARGV[2])
  redis.call('PUBLISH', ARGV[3], ARGV[4])
  return 1
end
return 0
`)

// sweepScript removes every session of a dead node (ARGV[1]) from a room
// and publishes a leave, with no node id so that every node delivers it,
// for each user left with none. ARGV[2] room, ARGV[3] channel. Returns the
// number of sessions removed. Two nodes sweeping the same room at once
// remove each session once: the script runs atomically.
var sweepScript = redis.NewScript(`
local prefix = ARGV[1] .. '\0'
local all = redis.call('HGETALL', KEYS[1])
local n = 0
for i = 1, #all, 2 do
  local v = all[i + 1]
  if string.sub(v, 1, #prefix) == prefix then
    local user = string.sub(v, #prefix + 1)
    redis.call('HDEL', KEYS[1], all[i])
    if redis.call('HDEL', KEYS[3], all[i]) == 1 and redis.call('HINCRBY', KEYS[4], user, -1) <= 0 then
      redis.call('HDEL', KEYS[4], user)
    end
    n = n + 1
    if redis.call('HINCRBY', KEYS[2], user, -1) <= 0 then
      redis.call('HDEL', KEYS[2], user)
      redis.call('PUBLISH', ARGV[3], cjson.encode({node = '', kind = 'left', room = ARGV[2], username = user}))
    end
  end
end
return n
`)

func presenceField(m chatkit.Member) string { return m.Username + "\x00" + m.Session }

// presenceKeys are a room's presence, users (sessions per user), linger
// (the sessions in a leave grace) and lingerers (such sessions per user).
func (a *Adapter) presenceKeys(room string) []string {
	return []string{a.roomKey(room, "presence"), a.roomKey(room, "users"), a.roomKey(room, "linger"), a.roomKey(room, "lingerers")}
}

// lingerScript: KEYS as presenceKeys; ARGV user\x00session, user.
var lingerScript = redis.NewScript(`
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
if redis.call('HSETNX', KEYS[3], ARGV[1], 1) == 1 then redis.call('HINCRBY', KEYS[4], ARGV[2], 1) end
return 1
`)

// Linger implements chatkit.Broker: m's session stays present, but an
// exclusive Join of its user no longer counts it.
func (a *Adapter) Linger(ctx context.Context, m chatkit.Member) error {
	return lingerScript.Run(ctx, a.rdb, a.presenceKeys(m.Room), presenceField(m), m.Username).Err()
}

// Join implements chatkit.Broker. It records m's session in the room's
// presence and reports whether its user just became present on any node,
// in which case it publishes an EventJoined to the other nodes in the
// same script. When exclusive is true and the user is present, it records
// nothing and returns chatkit.ErrUsernameTaken. Joining a session that is
// already recorded changes nothing and returns false.
//
// The session belongs to this node until Leave: if the node stops
// heartbeating, the other nodes remove it after the presence TTL. If Join
// fails, the session may have been recorded all the same; the adapter
// then removes it in the background, announcing a leave if it did.
func (a *Adapter) Join(ctx context.Context, m chatkit.Member, exclusive bool) (bool, error) {
	a.mu.Lock()
	closed, registered := a.closed, a.registered
	delete(a.retry, m)
	a.mu.Unlock()
	if closed {
		return false, errClosed
	}
	if !registered {
		// The node must be in prefix:nodes before it has a session, or a
		// crash would leave the session where no sweep looks for it.
		if err := a.heartbeat(ctx); err != nil {
			return false, err
		}
	}
	first, err := a.join(ctx, m, exclusive)
	a.mu.Lock()
	switch {
	case err == nil:
		a.sessions[m] = true
	case !errors.Is(err, chatkit.ErrUsernameTaken):
		a.retry[m] = true
	}
	a.mu.Unlock()
	return first, err
}

// join records the room in the node's rooms set, where a sweep looks for
// the sessions of a dead node, then runs the join script.
func (a *Adapter) join(ctx context.Context, m chatkit.Member, exclusive bool) (bool, error) {
	if err := a.rdb.SAdd(ctx, a.nodeRoomsKey(a.node), m.Room).Err(); err != nil {
		return false, err
	}
	ex := "0"
	if exclusive {
		ex = "1"
	}
	joined := a.encodeEvent(a.node, chatkit.Event{Kind: chatkit.EventJoined, Room: m.Room, Username: m.Username})
	r, err := joinScript.Run(ctx, a.rdb, a.presenceKeys(m.Room),
		presenceField(m), a.node+"\x00"+m.Username, m.Username, ex, a.channel(m.Room), joined).Int()
	switch {
	case err != nil:
		return false, err
	case r < 0:
		return false, chatkit.ErrUsernameTaken
	}
	return r == 1, nil
}

// Leave implements chatkit.Broker. It removes m's session from the room's
// presence and reports whether it was its user's last, on any node, in
// which case it publishes an EventLeft to the other nodes in the same
// script. Leaving a session that is not recorded returns false.
//
// If Leave fails (Redis down, or the context ends first), the adapter
// retries it in the background with each heartbeat until it succeeds;
// the EventLeft of a retry that removes the user's last session is
// delivered to every node, this one included.
func (a *Adapter) Leave(ctx context.Context, m chatkit.Member) (bool, error) {
	a.mu.Lock()
	delete(a.sessions, m)
	a.mu.Unlock()
	last, err := a.leave(ctx, m)
	if err != nil {
		a.mu.Lock()
		if !a.closed {
			a.retry[m] = true
		}
		a.mu.Unlock()
	}
	return last, err
}

func (a *Adapter) leave(ctx context.Context, m chatkit.Member) (bool, error) {
	left := a.encodeEvent(a.node, chatkit.Event{Kind: chatkit.EventLeft, Room: m.Room, Username: m.Username})
	r, err := leaveScript.Run(ctx, a.rdb, a.presenceKeys(m.Room),
		presenceField(m), m.Username, a.channel(m.Room), left).Int()
	return r == 1, err
}

// Members implements chatkit.Broker: the users present in room on any
// node, sorted.
func (a *Adapter) Members(ctx context.Context, room string) ([]string, error) {
	users, err := a.rdb.HKeys(ctx, a.roomKey(room, "users")).Result()
	if err != nil {
		return nil, err
	}
	slices.Sort(users)
	return users, nil
}

var errClosed = errors.New("redisadapter: adapter closed")

// Heartbeats and sweeps.

// heartbeatScript: KEYS[1] prefix:nodes; ARGV node, TTL in ms. It stamps
// the node with Redis's clock (one clock for all nodes, whatever their
// own say) and returns {whether the node was there, the nodes whose
// stamp is older than the TTL}.
var heartbeatScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local had = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], now, ARGV[1])
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - tonumber(ARGV[2])))
return {had and 1 or 0, dead}
`)

func (a *Adapter) heartbeatLoop() {
	defer a.wg.Done()
	tick := time.NewTicker(a.cfg.presenceTTL / 3)
	defer tick.Stop()
	var reached time.Time // since when heartbeats succeed; zero after a failure
	a.beat(&reached)
	for {
		select {
		case <-a.ctx.Done():
			return
		case <-tick.C:
			a.beat(&reached)
		}
	}
}

// beat runs one heartbeat, sweeps the dead nodes it reports, and retries
// the failed Leaves, each step bounded by a third of the presence TTL.
//
// A node sweeps only once its own heartbeats have succeeded for a whole
// presence TTL: after an outage of Redis longer than the TTL every node's
// last heartbeat is old, and the first node back would otherwise take the
// live others for dead and announce their users gone.
func (a *Adapter) beat(reached *time.Time) {
	ctx, cancel := context.WithTimeout(a.ctx, a.cfg.presenceTTL/3)
	defer cancel()
	dead, err := a.heartbeatDead(ctx)
	if err != nil {
		if a.ctx.Err() == nil {
			a.log.Debug("heartbeat failed", "node", a.node, "err", err)
		}
		*reached = time.Time{}
		return
	}
	if reached.IsZero() {
		*reached = time.Now()
	}
	if time.Since(*reached) < a.cfg.presenceTTL {
		dead = nil
	}
	for _, node := range dead {
		if err := a.sweep(ctx, node); err != nil {
			a.log.Debug("sweep failed", "dead", node, "err", err)
		}
	}
	a.retryLeaves(ctx)
}

// heartbeat stamps the node; Join calls it before the node's first session.
func (a *Adapter) heartbeat(ctx context.Context) error {
	_, err := a.heartbeatDead(ctx)
	return err
}

func (a *Adapter) heartbeatDead(ctx context.Context) ([]string, error) {
	res, err := heartbeatScript.Run(ctx, a.rdb, []string{a.nodesKey()},
		a.node, a.cfg.presenceTTL.Milliseconds()).Slice()
	if err != nil {
		return nil, err
	}
	if len(res) != 2 {
		return nil, fmt.Errorf("redisadapter: heartbeat: unexpected reply %v", res)
	}
	a.mu.Lock()
	lost := a.registered && res[0] == int64(0) || a.rejoin
	a.registered, a.rejoin = true, false
	var rejoin []chatkit.Member
	if lost {
		for m := range a.sessions {
			rejoin = append(rejoin, m)
		}
	}
	a.mu.Unlock()
	if lost {
		// Redis lost the node's entry: it restarted empty, or the other
		// nodes took this one for dead and swept its sessions. Record them
		// again. A user who becomes present again is announced to every
		// node, this one included (directly: its pub/sub may still be
		// reconnecting), which may have delivered the sweep's leave.
		a.log.Warn("node's presence was lost; joining its sessions again", "node", a.node, "sessions", len(rejoin))
		for _, m := range rejoin {
			first, err := a.join(ctx, m, false)
			a.mu.Lock()
			if first {
				a.postLocked(delivery{ev: chatkit.Event{Kind: chatkit.EventJoined, Room: m.Room, Username: m.Username}})
			}
			if err != nil {
				a.rejoin = true // the next heartbeat tries again
			} else if !a.sessions[m] {
				a.retry[m] = true // left meanwhile: remove it again
			}
			a.mu.Unlock()
			if err != nil {
				a.log.Debug("re-join failed", "room", m.Room, "err", err)
				break
			}
		}
	}
	raw, _ := res[1].([]any)
	var dead []string
	for _, r := range raw {
		if s, _ := r.(string); s != "" && s != a.node {
			dead = append(dead, s)
		}
	}
	return dead, nil
}

// sweep removes a dead node's sessions from each room it had, then the
// node itself. Its rooms set and its entry in prefix:nodes go last, so
// that a sweep that fails half-way is done again by the next heartbeat.
func (a *Adapter) sweep(ctx context.Context, node string) error {
	rooms, err := a.rdb.SMembers(ctx, a.nodeRoomsKey(node)).Result()
	if err != nil {
		return err
	}
	for _, room := range rooms {
		n, err := sweepScript.Run(ctx, a.rdb, a.presenceKeys(room), node, room, a.channel(room)).Int()
		if err != nil {
			return err
		}
		if n > 0 {
			a.log.Info("swept a dead node's sessions", "dead", node, "room", room, "sessions", n)
		}
	}
	if err := a.rdb.Del(ctx, a.nodeRoomsKey(node)).Err(); err != nil {
		return err
	}
	return a.rdb.ZRem(ctx, a.nodesKey(), node).Err()
}

// retryLeaves removes the sessions whose Leave or Join failed. A leave it
// finds is published to the other nodes and delivered here directly, not
// through Redis, since this node's pub/sub may still be reconnecting.
func (a *Adapter) retryLeaves(ctx context.Context) {
	a.mu.Lock()
	var todo []chatkit.Member
	for m := range a.retry {
		todo = append(todo, m)
	}
	a.mu.Unlock()
	for _, m := range todo {
		last, err := a.leave(ctx, m)
		if err != nil {
			a.log.Debug("retried leave failed", "room", m.Room, "err", err)
			return
		}
		a.mu.Lock()
		delete(a.retry, m)
		if last {
			a.postLocked(delivery{ev: chatkit.Event{Kind: chatkit.EventLeft, Room: m.Room, Username: m.Username}})
		}
		a.mu.Unlock()
	}
}
