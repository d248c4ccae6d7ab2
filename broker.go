package chatkit

import (
	"context"
	"errors"
	"slices"
	"sync"
)

// A Broker carries room events between the nodes (Servers) of one chat and
// keeps the chat's presence: who is in which room, on any node. It is a
// best-effort transport: an event may be lost (Redis pub/sub is
// at-most-once), and the Server makes that harmless for messages by
// delivering each room in id order and fetching from the Store what does not
// arrive. The default is a broker for a single node; NewMemoryCluster joins
// several Servers of one process, and the redisadapter package several
// processes.
//
// A Broker instance is one node: it delivers to its subscribers the events
// that other nodes published, not its own. It must be safe for concurrent
// use. The Server calls it with a context bounded by WithStoreTimeout and
// never while holding a lock.
type Broker interface {
	// Publish sends ev to the other nodes that subscribe to ev.Room. An
	// error means it may not have reached them.
	Publish(ctx context.Context, ev Event) error

	// Subscribe starts calling deliver with the events of room, until
	// unsubscribe is called. A node subscribes to a room while it has
	// members there. Calls for one room are not concurrent and keep the
	// order in which the broker received the events; deliver returns
	// quickly. Once the subscription is in place, and again whenever it
	// is back after a break (such as a reconnect to Redis), the broker
	// delivers an EventReset: events published before it may have been
	// missed, and the Server reads them from the Store and the broker's
	// Members. A delivery already under way when unsubscribe is called
	// may still complete after it returns.
	Subscribe(room string, deliver func(Event)) (unsubscribe func())

	// Join records a session in the room's presence and reports whether
	// its user just became present (it had no other session, on any
	// node). If so, it sends an EventJoined to the other nodes. When
	// exclusive is true and the user is already present, Join records
	// nothing and returns ErrUsernameTaken. After any other error the
	// outcome is unknown; the Server then calls Leave for the session.
	Join(ctx context.Context, m Member, exclusive bool) (first bool, err error)

	// Leave removes a session recorded by Join and reports whether it was
	// its user's last one, in which case it sends an EventLeft to the
	// other nodes. Exactly one Leave of a user's sessions reports last.
	// If Leave fails, the broker must still remove the session later (by
	// retrying, or by a presence TTL), and then deliver the EventLeft to
	// every node, this one included: a session that ended must not stay
	// present.
	Leave(ctx context.Context, m Member) (last bool, err error)

	// Linger marks a session that ended but stays present for a leave
	// grace (WithLeaveGrace): an exclusive Join of its user does not
	// count it, so that the user may come back on any node, and then
	// reports first false. The Server calls Leave for it when the grace
	// is over. Lingering an unknown session does nothing.
	Linger(ctx context.Context, m Member) error

	// Members returns the users present in room, on any node, sorted.
	Members(ctx context.Context, room string) ([]string, error)
}

// An Adapter is a Store and a Broker in one, such as Redis for both: its
// Append publishes every message it stores to the room's other nodes, in
// the same atomic step, so that a Server given it with WithAdapter publishes
// only typing notices itself.
type Adapter interface {
	Store
	Broker
}

// ErrUsernameTaken is returned by Broker.Join when the user is already
// present in the room and the join was exclusive.
var ErrUsernameTaken = errors.New("chatkit: username taken")

// EventKind says what an Event is.
type EventKind string

// The kinds of Event.
const (
	EventMessage EventKind = "message" // Message was stored
	EventTyping  EventKind = "typing"  // Username is typing
	EventJoined  EventKind = "joined"  // Username became present
	EventLeft    EventKind = "left"    // Username is no longer present
	// EventReset is made by a Broker, not published: events of the room
	// may have been lost.
	EventReset EventKind = "reset"
)

// An Event is what one node tells the others about a room.
type Event struct {
	Kind     EventKind `json:"kind"`
	Room     string    `json:"room"`
	Username string    `json:"username,omitempty"` // EventTyping, EventJoined, EventLeft
	Message  *Message  `json:"message,omitempty"`  // EventMessage
}

// A Member is one session in a room's presence: Room, Username and
// Session together name it.
type Member struct {
	Room     string
	Username string
	Session  string // the session's id, random
}

// MemoryCluster joins several Servers of one process into one chat, with a
// shared MemoryStore and an in-memory broker: what the redisadapter package
// does across processes, for tests and for trying a multi-node setup. Give
// each Server its own Node. Its store never forgets a room (no Server may
// free what the others use), so its memory grows with the rooms ever used.
type MemoryCluster struct {
	store *MemoryStore
	hub   *memoryHub
}

// NewMemoryCluster returns a cluster whose store keeps the newest
// historySize messages of each room.
func NewMemoryCluster(historySize int) *MemoryCluster {
	return &MemoryCluster{store: NewMemoryStore(historySize), hub: newMemoryHub()}
}

// Node returns a new node of the cluster, to give to one Server with
// WithAdapter.
func (c *MemoryCluster) Node() Adapter {
	return &memoryClusterNode{store: c.store, memoryBroker: c.hub.node()}
}

// memoryClusterNode hides the store's Forget: a room freed by one Server
// is still in use by the others.
type memoryClusterNode struct {
	store *MemoryStore
	*memoryBroker
}

func (n *memoryClusterNode) Append(ctx context.Context, m Message) (Message, bool, error) {
	// Stored and published in one step, as Redis does in its script, so
	// that publications leave in id order.
	n.hub.appendMu.Lock()
	defer n.hub.appendMu.Unlock()
	stored, dup, err := n.store.Append(ctx, m)
	if err == nil && !dup {
		n.Publish(ctx, Event{Kind: EventMessage, Room: m.Room, Message: &stored})
	}
	return stored, dup, err
}

func (n *memoryClusterNode) After(ctx context.Context, room string, after int64, limit int) (RoomState, []Message, error) {
	return n.store.After(ctx, room, after, limit)
}

func (n *memoryClusterNode) Before(ctx context.Context, room string, before int64, limit int) (RoomState, []Message, error) {
	return n.store.Before(ctx, room, before, limit)
}

// memoryHub is the shared state of in-memory brokers: every node's
// subscriptions and every room's presence, under one lock.
type memoryHub struct {
	appendMu sync.Mutex // held by a cluster node's Append across store and publish
	mu       sync.Mutex
	nodes    []*memoryBroker
	sessions map[string]map[string][]hubSession // room, username: that user's sessions
}

// A hubSession is one session of a user in a room. A user has a slice of
// them, not a map: most users have one session, and a slice of one costs a
// fraction of the smallest map, for every idle connection.
type hubSession struct {
	id        string
	lingering bool
}

// find returns the index of the session with id in sessions, or -1.
func find(sessions []hubSession, id string) int {
	return slices.IndexFunc(sessions, func(s hubSession) bool { return s.id == id })
}

func newMemoryHub() *memoryHub {
	return &memoryHub{sessions: make(map[string]map[string][]hubSession)}
}

func (h *memoryHub) node() *memoryBroker {
	b := &memoryBroker{hub: h, subs: make(map[string]map[*memorySub]bool)}
	h.mu.Lock()
	h.nodes = append(h.nodes, b)
	h.mu.Unlock()
	return b
}

// memoryBroker is one node of a memoryHub. Deliveries to its subscribers
// go through its inbox, drained by one goroutine that runs only while the
// inbox is not empty, so that they keep their order and never run under
// the hub's lock.
type memoryBroker struct {
	hub  *memoryHub
	subs map[string]map[*memorySub]bool // guarded by hub.mu

	mu       sync.Mutex
	inbox    []Event
	draining bool
}

type memorySub struct{ deliver func(Event) }

// newMemoryBroker returns the broker of a Server that is given none: a
// single node, so that Publish has nobody to tell.
func newMemoryBroker() *memoryBroker { return newMemoryHub().node() }

func (b *memoryBroker) Publish(ctx context.Context, ev Event) error {
	b.hub.mu.Lock()
	defer b.hub.mu.Unlock()
	b.hub.sendLocked(b, ev)
	return nil
}

// sendLocked queues ev for every node but from that subscribes to its room.
func (h *memoryHub) sendLocked(from *memoryBroker, ev Event) {
	for _, n := range h.nodes {
		if n != from && len(n.subs[ev.Room]) > 0 {
			n.post(ev)
		}
	}
}

func (b *memoryBroker) post(ev Event) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.inbox = append(b.inbox, ev)
	if !b.draining {
		b.draining = true
		go b.drain()
	}
}

func (b *memoryBroker) drain() {
	for {
		b.mu.Lock()
		events := b.inbox
		b.inbox = nil
		if len(events) == 0 {
			b.draining = false
			b.mu.Unlock()
			return
		}
		b.mu.Unlock()
		for _, ev := range events {
			b.hub.mu.Lock()
			subs := make([]*memorySub, 0, len(b.subs[ev.Room]))
			for s := range b.subs[ev.Room] {
				subs = append(subs, s)
			}
			b.hub.mu.Unlock()
			for _, s := range subs {
				s.deliver(ev)
			}
		}
	}
}

func (b *memoryBroker) Subscribe(room string, deliver func(Event)) func() {
	s := &memorySub{deliver: deliver}
	b.hub.mu.Lock()
	defer b.hub.mu.Unlock()
	if b.subs[room] == nil {
		b.subs[room] = make(map[*memorySub]bool)
	}
	b.subs[room][s] = true
	b.post(Event{Kind: EventReset, Room: room}) // in place at once
	return func() {
		b.hub.mu.Lock()
		defer b.hub.mu.Unlock()
		delete(b.subs[room], s)
		if len(b.subs[room]) == 0 {
			delete(b.subs, room)
		}
	}
}

func (b *memoryBroker) Join(ctx context.Context, m Member, exclusive bool) (bool, error) {
	h := b.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	users := h.sessions[m.Room]
	if users == nil {
		users = make(map[string][]hubSession)
		h.sessions[m.Room] = users
	}
	sessions := users[m.Username]
	if find(sessions, m.Session) >= 0 {
		return false, nil
	}
	if exclusive && slices.ContainsFunc(sessions, func(s hubSession) bool { return !s.lingering }) {
		return false, ErrUsernameTaken
	}
	sessions = append(sessions, hubSession{id: m.Session})
	users[m.Username] = sessions
	first := len(sessions) == 1
	if first {
		h.sendLocked(b, Event{Kind: EventJoined, Room: m.Room, Username: m.Username})
	}
	return first, nil
}

func (b *memoryBroker) Leave(ctx context.Context, m Member) (bool, error) {
	h := b.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	users := h.sessions[m.Room]
	sessions := users[m.Username]
	i := find(sessions, m.Session)
	if i < 0 {
		return false, nil
	}
	if sessions = slices.Delete(sessions, i, i+1); len(sessions) > 0 {
		users[m.Username] = sessions
		return false, nil
	}
	delete(users, m.Username)
	if len(users) == 0 {
		delete(h.sessions, m.Room)
	}
	h.sendLocked(b, Event{Kind: EventLeft, Room: m.Room, Username: m.Username})
	return true, nil
}

func (b *memoryBroker) Linger(ctx context.Context, m Member) error {
	b.hub.mu.Lock()
	defer b.hub.mu.Unlock()
	sessions := b.hub.sessions[m.Room][m.Username]
	if i := find(sessions, m.Session); i >= 0 {
		sessions[i].lingering = true
	}
	return nil
}

func (b *memoryBroker) Members(ctx context.Context, room string) ([]string, error) {
	h := b.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	users := make([]string, 0, len(h.sessions[room]))
	for u := range h.sessions[room] {
		users = append(users, u)
	}
	slices.Sort(users)
	return users, nil
}
