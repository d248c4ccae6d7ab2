package chatkit

// history is where a room keeps its messages and draws their ids. It is the
// seam for a durable or shared store: the room calls it under its own lock,
// and nothing else in the package knows how messages are kept. memoryHistory
// is the single-process implementation.
type history interface {
	// add gives m the room's next id and keeps it. If the same user already
	// stored a message with m's non-empty ClientMsgID that is still kept,
	// add keeps nothing and returns that earlier message with dup true.
	add(m Message) (stored Message, dup bool)
	// since returns the kept messages with an id above after, oldest first,
	// and whether some messages above after are no longer kept (a gap).
	since(after int64) (msgs []Message, truncated bool)
	// lastID returns the id of the newest message ever added, 0 if none.
	lastID() int64
	// len returns how many messages are kept.
	len() int
}

type clientKey struct{ username, clientMsgID string }

// memoryHistory keeps the last size messages in a ring. Its index of
// client message ids covers exactly the kept messages, so retries are
// recognised for as long as the message is in history and the memory
// stays bounded by size.
type memoryHistory struct {
	size     int
	ring     []Message // grows up to size, then wraps; ring[head] is the oldest
	head     int
	count    int
	last     int64
	byClient map[clientKey]int64 // nil until a message has a client id
}

// newMemoryHistory allocates nothing up front: most rooms never fill their
// history, and an idle room should cost little.
func newMemoryHistory(size int) *memoryHistory { return &memoryHistory{size: size} }

func (h *memoryHistory) add(m Message) (Message, bool) {
	key := clientKey{m.Username, m.ClientMsgID}
	if m.ClientMsgID != "" {
		if id, ok := h.byClient[key]; ok {
			return h.at(id), true
		}
	}
	h.last++
	m.ID = h.last
	switch {
	case h.size == 0:
		return m, false
	case h.count < h.size:
		h.ring = append(h.ring, m) // head stays 0 until the ring is full
		h.count++
	default:
		old := h.ring[h.head]
		if old.ClientMsgID != "" {
			delete(h.byClient, clientKey{old.Username, old.ClientMsgID})
		}
		h.ring[h.head] = m
		h.head = (h.head + 1) % h.size
	}
	if m.ClientMsgID != "" {
		if h.byClient == nil {
			h.byClient = make(map[clientKey]int64)
		}
		h.byClient[key] = m.ID
	}
	return m, false
}

// at returns the kept message with the given id; the caller knows it is kept.
func (h *memoryHistory) at(id int64) Message {
	oldest := h.last - int64(h.count) + 1
	return h.ring[(h.head+int(id-oldest))%len(h.ring)]
}

func (h *memoryHistory) since(after int64) ([]Message, bool) {
	if after >= h.last {
		return nil, false
	}
	oldest := h.last - int64(h.count) + 1
	truncated := after+1 < oldest
	first := max(after+1, oldest)
	msgs := make([]Message, 0, h.last-first+1)
	for id := first; id <= h.last; id++ {
		msgs = append(msgs, h.at(id))
	}
	return msgs, truncated
}

func (h *memoryHistory) lastID() int64 { return h.last }
func (h *memoryHistory) len() int      { return h.count }
