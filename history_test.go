package chatkit

import (
	"fmt"
	"slices"
	"testing"
)

func TestRingKeepsTheNewestAndIndexesClientIDs(t *testing.T) {
	h := newRing(3, "e")
	add := func(user, cmid string) (int64, bool) {
		m, dup := h.add(Message{Username: user, Text: fmt.Sprint(user, cmid), ClientMsgID: cmid})
		return m.ID, dup
	}
	steps := []struct {
		user, cmid string
		id         int64
		dup        bool
	}{
		{"a", "1", 1, false},
		{"a", "1", 1, true},  // a retry is found
		{"b", "1", 2, false}, // the same id from another user is another message
		{"a", "", 3, false},
		{"a", "", 4, false},  // evicts 1
		{"a", "1", 5, false}, // 1 is no longer kept: stored anew
	}
	for i, s := range steps {
		if id, dup := add(s.user, s.cmid); id != s.id || dup != s.dup {
			t.Fatalf("step %d: add(%s, %q) = %d, %v; want %d, %v", i, s.user, s.cmid, id, dup, s.id, s.dup)
		}
	}
	// b's message 2 was evicted by 5, so b's retry is new too.
	if id, dup := add("b", "1"); id != 6 || dup {
		t.Errorf("retry of an evicted message = %d, %v; want 6, false", id, dup)
	}
	msgs, truncated := h.after(0, 10), h.truncated(0)
	var ids []int64
	for _, m := range msgs {
		ids = append(ids, m.ID)
	}
	if !slices.Equal(ids, []int64{4, 5, 6}) || !truncated || h.count != 3 || h.last != 6 {
		t.Errorf("since(0) = %v, %v; len %d, last %d", ids, truncated, h.count, h.last)
	}
	if len(h.byClient) != 2 {
		t.Errorf("the client-id index holds %d entries for 2 kept messages with ids", len(h.byClient))
	}
}
