package chatkit

import (
	"context"
	"crypto/rand"
	"sync"
)

// A Store keeps the messages of every room and allocates their ids. It is
// the source of truth of a chat: what a Store holds is what users get in
// their welcome, on resume and when a node fills a gap in what its broker
// delivered. The default is a memory store; the redisadapter package keeps
// rooms in Redis, so that several nodes share them.
//
// A Store must be safe for concurrent use by any number of Servers. The
// Server calls it with a context bounded by WithStoreTimeout and never while
// holding a lock.
type Store interface {
	// Append gives m the next id of room m.Room and keeps it, atomically:
	// a room's ids are 1, 2, 3, ... within one epoch, with no gap and no
	// repeat, whoever appends. It returns m with ID and Epoch set.
	//
	// When m.ClientMsgID is not empty and m.Username already stored a
	// message with that ClientMsgID in the room that the store still
	// keeps, Append keeps nothing and returns that earlier message with
	// dup true.
	//
	// An error means the outcome is unknown: the message may have been
	// kept all the same (a timed-out call may still complete), so a
	// caller retries with the same ClientMsgID, which then returns dup.
	Append(ctx context.Context, m Message) (stored Message, dup bool, err error)

	// After returns the room's state and, oldest first, at most limit
	// kept messages with an id above after.
	After(ctx context.Context, room string, after int64, limit int) (RoomState, []Message, error)

	// Before returns the room's state and, oldest first, its newest kept
	// messages with an id below before, at most limit; before 0 means
	// the room's newest messages. It serves welcomes and scrollback.
	Before(ctx context.Context, room string, before int64, limit int) (RoomState, []Message, error)
}

// RoomState describes a room's id sequence in a Store.
type RoomState struct {
	// Epoch names the room's id sequence. A store creates it the first
	// time the room is asked for or appended to, keeps it beside the id
	// counter, and changes it exactly when the sequence restarts at 1
	// (the store lost the room). It is never empty.
	Epoch string
	// LastID is the id of the newest message ever appended in this
	// epoch, 0 if none.
	LastID int64
	// OldestID is the id of the oldest message still kept, 0 if none is.
	OldestID int64
}

// newEpoch returns a random epoch name: 12 characters of base32.
func newEpoch() string { return rand.Text()[:12] }

// MemoryStore is the Store of a Server that is given none: each room keeps
// its newest messages, up to the history size, in memory. It is lost when
// the process ends. Its methods are safe for concurrent use; several Servers
// in one process may share one (see NewMemoryCluster).
type MemoryStore struct {
	size  int
	mu    sync.Mutex
	rooms map[string]*ring
}

// NewMemoryStore returns a store that keeps the newest size messages of
// each room; size 0 keeps none, and then no client_msg_id retry is
// recognised. A negative size panics.
func NewMemoryStore(size int) *MemoryStore {
	if size < 0 {
		panic("chatkit: NewMemoryStore: negative size")
	}
	return &MemoryStore{size: size, rooms: make(map[string]*ring)}
}

// roomLocked returns the named room's ring, creating it with a new epoch.
func (s *MemoryStore) roomLocked(name string) *ring {
	r := s.rooms[name]
	if r == nil {
		r = newRing(s.size, newEpoch())
		s.rooms[name] = r
	}
	return r
}

// Append implements Store.
func (s *MemoryStore) Append(ctx context.Context, m Message) (Message, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	stored, dup := s.roomLocked(m.Room).add(m)
	return stored, dup, nil
}

// After implements Store.
func (s *MemoryStore) After(ctx context.Context, room string, after int64, limit int) (RoomState, []Message, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.roomLocked(room)
	return r.state(), r.after(after, limit), nil
}

// Before implements Store.
func (s *MemoryStore) Before(ctx context.Context, room string, before int64, limit int) (RoomState, []Message, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.roomLocked(room)
	return r.state(), r.before(before, limit), nil
}

// Forget drops everything the store keeps of room; the next use of the
// room starts a new epoch. A Server calls it when it frees a room after
// WithRoomTTL or evicts it at the WithMaxRooms cap, so that a memory store
// stays bounded by those options.
func (s *MemoryStore) Forget(room string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.rooms, room)
}
