package chatkit

type clientKey struct{ username, clientMsgID string }

// ring keeps the newest size messages of one room, with consecutive ids.
// It is the memory store's room and each loaded room's cache of what it
// delivered. Its index of client message ids covers exactly the kept
// messages, so that retries are recognised for as long as the message is
// kept and the memory stays bounded by size. A ring has no lock: its owner
// guards it.
type ring struct {
	size     int
	epoch    string
	msgs     []Message // grows up to size, then wraps; msgs[head] is the oldest
	head     int
	count    int
	last     int64
	byClient map[clientKey]int64 // nil until a message has a client id
}

// newRing allocates nothing up front: most rooms never fill their
// history, and an idle room should cost little.
func newRing(size int, epoch string) *ring { return &ring{size: size, epoch: epoch} }

// add gives m the next id and keeps it. If the same user already stored a
// message with m's non-empty ClientMsgID that is still kept, add keeps
// nothing and returns that earlier message with dup true.
func (h *ring) add(m Message) (Message, bool) {
	if m.ClientMsgID != "" {
		if id, ok := h.byClient[clientKey{m.Username, m.ClientMsgID}]; ok {
			return h.at(id), true
		}
	}
	m.ID = h.last + 1
	m.Epoch = h.epoch
	h.put(m)
	return m, false
}

// put keeps m, whose id must be the one after the newest; a cache that
// finds a gap calls reset first.
func (h *ring) put(m Message) {
	h.last = m.ID
	switch {
	case h.size == 0:
		return
	case h.count < h.size:
		h.msgs = append(h.msgs, m) // head stays 0 until the ring is full
		h.count++
	default:
		old := h.msgs[h.head]
		if old.ClientMsgID != "" {
			delete(h.byClient, clientKey{old.Username, old.ClientMsgID})
		}
		h.msgs[h.head] = m
		h.head = (h.head + 1) % h.size
	}
	if m.ClientMsgID != "" {
		if h.byClient == nil {
			h.byClient = make(map[clientKey]int64)
		}
		h.byClient[clientKey{m.Username, m.ClientMsgID}] = m.ID
	}
}

// reset empties the ring and starts it again after id last of epoch.
func (h *ring) reset(epoch string, last int64) {
	*h = ring{size: h.size, epoch: epoch, last: last}
}

// at returns the kept message with the given id; the caller knows it is kept.
func (h *ring) at(id int64) Message {
	return h.msgs[(h.head+int(id-h.oldest()))%len(h.msgs)]
}

// oldest returns the id of the oldest kept message, or last+1 when none is.
func (h *ring) oldest() int64 { return h.last - int64(h.count) + 1 }

// after returns at most limit kept messages with an id above after, oldest
// first, and never nil.
func (h *ring) after(after int64, limit int) []Message {
	first := max(after+1, h.oldest())
	n := min(int64(limit), h.last-first+1)
	if n <= 0 {
		return []Message{}
	}
	msgs := make([]Message, 0, n)
	for id := first; id < first+n; id++ {
		msgs = append(msgs, h.at(id))
	}
	return msgs
}

// before returns the newest limit kept messages with an id below before
// (any id when before is 0), oldest first.
func (h *ring) before(before int64, limit int) []Message {
	if before <= 0 || before > h.last {
		before = h.last + 1
	}
	first := max(before-int64(limit), h.oldest())
	return h.after(first-1, int(before-first))
}

// truncated reports whether some messages with an id above after are no
// longer kept.
func (h *ring) truncated(after int64) bool {
	return after < h.last && after+1 < h.oldest()
}

func (h *ring) state() RoomState {
	st := RoomState{Epoch: h.epoch, LastID: h.last}
	if h.count > 0 {
		st.OldestID = h.oldest()
	}
	return st
}
