package chatkittest

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatkit/chatkit"
)

// RunStoreTests proves that the stores newStore returns keep the contract
// of chatkit.Store. newStore is called once per subtest and must return a
// fresh, empty store that keeps at least 50 messages of each room.
func RunStoreTests(t *testing.T, newStore func(t *testing.T) chatkit.Store) {
	tests := []struct {
		name string
		run  func(t *testing.T, s chatkit.Store)
	}{
		{"first append gets id 1 and an epoch", testFirstAppend},
		{"ids grow by exactly one", testIDsGrowByOne},
		{"rooms have independent sequences", testIndependentRooms},
		{"append ignores the id and epoch it is given", testAppendOverridesID},
		{"append keeps every field", testKeepsFields},
		{"epoch is set before the first append", testEpochBeforeAppend},
		{"one epoch for every message and state of a room", testOneEpoch},
		{"after returns the messages above an id", testAfter},
		{"before returns the newest messages below an id", testBefore},
		{"retry with the same client id is a dup", testDup},
		{"client id of another user or room or none is no dup", testNotDup},
		{"concurrent appends get every id once", testConcurrentAppends},
		{"canceled context does not hang", testCanceledContext},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.run(t, newStore(t)) })
	}
}

func appendNew(t *testing.T, s chatkit.Store, m chatkit.Message) chatkit.Message {
	t.Helper()
	stored, dup, err := s.Append(testContext(t), m)
	if err != nil {
		t.Fatalf("Append(%s): %v", formatMessage(m), err)
	}
	if dup {
		t.Fatalf("Append(%s): dup for a new message", formatMessage(m))
	}
	return stored
}

// appendN appends n messages to room and returns them as stored.
func appendN(t *testing.T, s chatkit.Store, room string, n int) []chatkit.Message {
	t.Helper()
	var stored []chatkit.Message
	for i := range n {
		stored = append(stored, appendNew(t, s, newMessage(room, "alice", fmt.Sprintf("message %d", i+1))))
	}
	return stored
}

func after(t *testing.T, s chatkit.Store, room string, after int64, limit int) (chatkit.RoomState, []chatkit.Message) {
	t.Helper()
	st, msgs, err := s.After(testContext(t), room, after, limit)
	if err != nil {
		t.Fatalf("After(%q, %d, %d): %v", room, after, limit, err)
	}
	return st, msgs
}

// latest is Before(0, n): the newest n messages.
func latest(t *testing.T, s chatkit.Store, room string, n int) (chatkit.RoomState, []chatkit.Message) {
	t.Helper()
	return before(t, s, room, 0, n)
}

func before(t *testing.T, s chatkit.Store, room string, id int64, limit int) (chatkit.RoomState, []chatkit.Message) {
	t.Helper()
	st, msgs, err := s.Before(testContext(t), room, id, limit)
	if err != nil {
		t.Fatalf("Before(%q, %d, %d): %v", room, id, limit, err)
	}
	return st, msgs
}

func ids(msgs []chatkit.Message) []int64 {
	ids := []int64{}
	for _, m := range msgs {
		ids = append(ids, m.ID)
	}
	return ids
}

func idRange(first, last int64) []int64 {
	ids := []int64{}
	for id := first; id <= last; id++ {
		ids = append(ids, id)
	}
	return ids
}

func testFirstAppend(t *testing.T, s chatkit.Store) {
	m := appendNew(t, s, newMessage("r1", "alice", "hello"))
	if m.ID != 1 {
		t.Errorf("first Append: ID %d, want 1", m.ID)
	}
	if m.Epoch == "" {
		t.Errorf("first Append: empty Epoch")
	}
}

func testIDsGrowByOne(t *testing.T, s chatkit.Store) {
	for i, m := range appendN(t, s, "r1", 20) {
		if want := int64(i + 1); m.ID != want {
			t.Fatalf("Append #%d: ID %d, want %d", i+1, m.ID, want)
		}
	}
}

func testIndependentRooms(t *testing.T, s chatkit.Store) {
	// Interleaved, so that a store with one counter for all rooms fails.
	for i := range int64(5) {
		for _, room := range []string{"r1", "r2"} {
			if m := appendNew(t, s, newMessage(room, "alice", "hi")); m.ID != i+1 {
				t.Fatalf("Append #%d in %s: ID %d, want %d", i+1, room, m.ID, i+1)
			}
		}
	}
	if m := appendNew(t, s, newMessage("r3", "alice", "hi")); m.ID != 1 {
		t.Errorf("first Append in r3 after others: ID %d, want 1", m.ID)
	}
}

func testAppendOverridesID(t *testing.T, s chatkit.Store) {
	m := newMessage("r1", "alice", "hello")
	m.ID, m.Epoch = 42, "stale-epoch"
	got := appendNew(t, s, m)
	st, _ := latest(t, s, "r1", 10)
	if got.ID != 1 || got.Epoch != st.Epoch || st.LastID != 1 {
		t.Errorf("Append of a message with ID 42, Epoch %q: got ID %d, Epoch %q; room state %+v; want ID 1 and the room's epoch",
			m.Epoch, got.ID, got.Epoch, st)
	}
}

func testKeepsFields(t *testing.T, s chatkit.Store) {
	tests := []struct {
		name string
		msg  chatkit.Message
	}{
		{"plain", chatkit.Message{Room: "plain", Username: "alice", Text: "hello", ClientMsgID: "c1", Time: baseTime}},
		{"unicode", chatkit.Message{Room: "salle-é", Username: "zoë 😀", Text: "héllo wörld ✓ 😀 中文 ﷽", ClientMsgID: "ü-1", Time: baseTime}},
		{"newlines", chatkit.Message{Room: "newlines", Username: "bob", Text: "line 1\nline 2\r\n\ttabbed\n", Time: baseTime}},
		{"quotes and backslashes", chatkit.Message{Room: `q"r\s`, Username: `o'neil`, Text: `"quoted" 'single' \back\\slash \n \u0041 %s {}[]`, ClientMsgID: `"c\2"`, Time: baseTime}},
		{"separators", chatkit.Message{Room: "a:b|c d", Username: "x:y", Text: ":|,;=", ClientMsgID: "1:2|3", Time: baseTime}},
		{"long text", chatkit.Message{Room: "long", Username: "carol", Text: strings.Repeat("long text ✓ ", 1000), Time: baseTime}},
		{"no client id", chatkit.Message{Room: "noclient", Username: "dave", Text: "hi", Time: time.Date(2031, 12, 31, 23, 59, 59, 999_000_000, time.FixedZone("X", 5*3600))}},
		{"system message", chatkit.Message{Room: "system", Text: "server restarting", Time: baseTime}},
	}
	for _, tt := range tests {
		want := tt.msg
		got := appendNew(t, s, tt.msg)
		want.ID, want.Epoch = 1, got.Epoch
		if !sameMessage(got, want) || got.Epoch == "" {
			t.Errorf("%s: Append returned %s, want %s", tt.name, formatMessage(got), formatMessage(want))
			continue
		}
		_, afterMsgs := after(t, s, want.Room, 0, 10)
		_, latestMsgs := latest(t, s, want.Room, 10)
		for call, msgs := range map[string][]chatkit.Message{"After": afterMsgs, "Before": latestMsgs} {
			if len(msgs) != 1 || !sameMessage(msgs[0], want) {
				t.Errorf("%s: %s returned %d messages, want only %s", tt.name, call, len(msgs), formatMessage(want))
				for _, m := range msgs {
					t.Logf("got %s", formatMessage(m))
				}
			}
		}
	}
}

func testEpochBeforeAppend(t *testing.T, s chatkit.Store) {
	// A room first asked for by either method has its epoch already.
	probes := map[string]func(room string) (chatkit.RoomState, []chatkit.Message){
		"Before": func(room string) (chatkit.RoomState, []chatkit.Message) { return latest(t, s, room, 10) },
		"After":  func(room string) (chatkit.RoomState, []chatkit.Message) { return after(t, s, room, 0, 10) },
	}
	for name, probe := range probes {
		room := "unknown-" + name
		st, msgs := probe(room)
		if st.Epoch == "" || st.LastID != 0 || st.OldestID != 0 || len(msgs) != 0 {
			t.Errorf("%s of a room never appended to: state %+v, %d messages; want an epoch, LastID 0, OldestID 0, no messages",
				name, st, len(msgs))
			continue
		}
		if again, _ := probe(room); again.Epoch != st.Epoch {
			t.Errorf("%s again: epoch %q, was %q", name, again.Epoch, st.Epoch)
		}
		if m := appendNew(t, s, newMessage(room, "alice", "hi")); m.Epoch != st.Epoch {
			t.Errorf("first Append after %s: epoch %q, want the room's %q", name, m.Epoch, st.Epoch)
		}
	}
}

func testOneEpoch(t *testing.T, s chatkit.Store) {
	stored := appendN(t, s, "r1", 5)
	epoch := stored[0].Epoch
	st1, afterMsgs := after(t, s, "r1", 0, 10)
	st2, latestMsgs := latest(t, s, "r1", 10)
	msgs := slices.Concat(stored, afterMsgs, latestMsgs)
	for _, st := range []chatkit.RoomState{st1, st2} {
		if st.Epoch != epoch {
			t.Errorf("room state epoch %q, want the first message's %q", st.Epoch, epoch)
		}
	}
	for _, m := range msgs {
		if m.Epoch != epoch {
			t.Errorf("message %d: epoch %q, want the first message's %q", m.ID, m.Epoch, epoch)
		}
	}
}

func testAfter(t *testing.T, s chatkit.Store) {
	stored := appendN(t, s, "r1", 10)
	wantState := chatkit.RoomState{Epoch: stored[0].Epoch, LastID: 10, OldestID: 1}
	tests := []struct {
		after int64
		limit int
		want  []int64
	}{
		{0, 100, idRange(1, 10)},
		{0, 10, idRange(1, 10)},
		{0, 3, idRange(1, 3)},
		{3, 4, idRange(4, 7)},
		{8, 5, idRange(9, 10)},
		{9, 1, idRange(10, 10)},
		{5, 0, nil},
		{10, 5, nil},
		{15, 5, nil},
	}
	for _, tt := range tests {
		st, msgs := after(t, s, "r1", tt.after, tt.limit)
		if !slices.Equal(ids(msgs), tt.want) {
			t.Errorf("After(%d, %d): ids %v, want %v", tt.after, tt.limit, ids(msgs), tt.want)
		}
		if st != wantState {
			t.Errorf("After(%d, %d): state %+v, want %+v", tt.after, tt.limit, st, wantState)
		}
		for _, m := range msgs {
			if !sameMessage(m, stored[m.ID-1]) {
				t.Errorf("After(%d, %d): got %s, stored %s", tt.after, tt.limit, formatMessage(m), formatMessage(stored[m.ID-1]))
			}
		}
	}
}

func testBefore(t *testing.T, s chatkit.Store) {
	stored := appendN(t, s, "r1", 10)
	wantState := chatkit.RoomState{Epoch: stored[0].Epoch, LastID: 10, OldestID: 1}
	tests := []struct {
		before int64
		limit  int
		want   []int64
	}{
		{0, 1, idRange(10, 10)},
		{0, 3, idRange(8, 10)},
		{0, 10, idRange(1, 10)},
		{0, 100, idRange(1, 10)},
		{0, 0, []int64{}},
		{8, 3, idRange(5, 7)},
		{4, 10, idRange(1, 3)},
		{2, 10, idRange(1, 1)},
		{1, 10, []int64{}},
		{11, 2, idRange(9, 10)},
		{99, 2, idRange(9, 10)},
	}
	for _, tt := range tests {
		st, msgs := before(t, s, "r1", tt.before, tt.limit)
		if !slices.Equal(ids(msgs), tt.want) {
			t.Errorf("Before(%d, %d): ids %v, want %v", tt.before, tt.limit, ids(msgs), tt.want)
		}
		if st != wantState {
			t.Errorf("Before(%d, %d): state %+v, want %+v", tt.before, tt.limit, st, wantState)
		}
		for _, m := range msgs {
			if m.ID >= 1 && m.ID <= 10 && !sameMessage(m, stored[m.ID-1]) {
				t.Errorf("Before(%d, %d): got %s, stored %s", tt.before, tt.limit, formatMessage(m), formatMessage(stored[m.ID-1]))
			}
		}
	}
}

func testDup(t *testing.T, s chatkit.Store) {
	first := newMessage("r1", "alice", "hello")
	first.ClientMsgID = "c1"
	original := appendNew(t, s, first)
	appendNew(t, s, newMessage("r1", "bob", "in between"))

	// The retry's text differs so that returning the retry instead of the
	// kept message shows.
	retry := first
	retry.Text, retry.Time = "hello again", baseTime.Add(time.Minute)
	got, dup, err := s.Append(testContext(t), retry)
	if err != nil {
		t.Fatalf("retry Append: %v", err)
	}
	if !dup || !sameMessage(got, original) {
		t.Errorf("retry Append: dup %v, %s; want dup true, the original %s", dup, formatMessage(got), formatMessage(original))
	}
	st, msgs := latest(t, s, "r1", 10)
	if st.LastID != 2 || !slices.Equal(ids(msgs), []int64{1, 2}) {
		t.Errorf("after a dup: LastID %d, ids %v; want 2 and [1 2]: the dup must not be kept", st.LastID, ids(msgs))
	}
}

func testNotDup(t *testing.T, s chatkit.Store) {
	msg := func(room, username, clientMsgID string) chatkit.Message {
		m := newMessage(room, username, "hi")
		m.ClientMsgID = clientMsgID
		return m
	}
	tests := []struct {
		name          string
		first, second chatkit.Message
		wantID        int64
	}{
		{"other user", msg("user", "alice", "c1"), msg("user", "bob", "c1"), 2},
		{"other room", msg("room-a", "alice", "c1"), msg("room-b", "alice", "c1"), 1},
		{"empty client id", msg("empty", "alice", ""), msg("empty", "alice", ""), 2},
		// A store that keys retries by username and client id joined with
		// a separator must not mistake these for one another.
		{"same joined key", msg("joined", "a:b", "c"), msg("joined", "a", "b:c"), 2},
	}
	for _, tt := range tests {
		appendNew(t, s, tt.first)
		got, dup, err := s.Append(testContext(t), tt.second)
		if err != nil {
			t.Fatalf("%s: second Append: %v", tt.name, err)
		}
		if dup || got.ID != tt.wantID || got.Text != tt.second.Text {
			t.Errorf("%s: second Append: dup %v, %s; want a new message with ID %d",
				tt.name, dup, formatMessage(got), tt.wantID)
		}
	}
}

func testConcurrentAppends(t *testing.T, s chatkit.Store) {
	const writers, each = 8, 50
	var (
		mu  sync.Mutex
		got []int64
		wg  sync.WaitGroup
	)
	ctx := testContext(t)
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				m, dup, err := s.Append(ctx, newMessage("r1", fmt.Sprintf("writer%d", w), fmt.Sprint(i)))
				if err != nil || dup {
					t.Errorf("Append: dup %v, err %v", dup, err)
					return
				}
				mu.Lock()
				got = append(got, m.ID)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	slices.Sort(got)
	if want := idRange(1, writers*each); !slices.Equal(got, want) {
		t.Errorf("%d concurrent appends got ids %v, want each of 1..%d once", writers*each, got, writers*each)
	}
	st, msgs := latest(t, s, "r1", 50)
	if st.LastID != writers*each || !slices.Equal(ids(msgs), idRange(writers*each-49, writers*each)) {
		t.Errorf("after concurrent appends: LastID %d, Before(0, 50) ids %v; want %d and the last 50",
			st.LastID, ids(msgs), writers*each)
	}
}

func testCanceledContext(t *testing.T, s chatkit.Store) {
	calls := []struct {
		name string
		call func(ctx context.Context) error
	}{
		{"Append", func(ctx context.Context) error {
			_, _, err := s.Append(ctx, newMessage("r1", "alice", "hi"))
			return err
		}},
		{"After", func(ctx context.Context) error {
			_, _, err := s.After(ctx, "r1", 0, 10)
			return err
		}},
		{"Before", func(ctx context.Context) error {
			_, _, err := s.Before(ctx, "r1", 0, 10)
			return err
		}},
	}
	for _, c := range calls {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		done := make(chan error, 1)
		go func() { done <- c.call(ctx) }()
		// Success and an error are both right; only hanging is wrong.
		select {
		case <-done:
		case <-time.After(timeout):
			t.Errorf("%s with a canceled context did not return within %v", c.name, timeout)
		}
	}
}
