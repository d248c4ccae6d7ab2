package chatkittest

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chatkit/chatkit"
)

// RunBrokerTests proves that the brokers newNodes returns keep the contract
// of chatkit.Broker. newNodes is called once per subtest and must return two
// nodes of one fresh cluster, with nobody present in any room.
func RunBrokerTests(t *testing.T, newNodes func(t *testing.T) (a, b chatkit.Broker)) {
	tests := []struct {
		name string
		run  func(t *testing.T, a, b chatkit.Broker)
	}{
		{"subscribe delivers a reset", testSubscribeReset},
		{"publish reaches the other node intact", testPublishReaches},
		{"publish is not delivered to its own node", testNotToOwnNode},
		{"events of other rooms are not delivered", testOtherRooms},
		{"unsubscribe stops delivery", testUnsubscribe},
		{"a room can be subscribed again after unsubscribe", testResubscribe},
		{"events from one publisher keep their order", testOrder},
		{"join reports a user's first session", testJoinFirst},
		{"exclusive join of a present user is refused", testJoinExclusive},
		{"joined event reaches the other node once per user", testJoinedEvent},
		{"members lists every node's users sorted once", testMembers},
		{"presence is per room", testPresencePerRoom},
		{"leave reports the last session once", testLeaveLast},
		{"leave of an unknown session is false", testLeaveUnknown},
		{"concurrent leaves report last once", testConcurrentLeaves},
		{"left event reaches the other node once per user", testLeftEvent},
		{"members drops a user who left", testMembersAfterLeave},
		{"a lingering session lets its user come back on any node", testLinger},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, b := newNodes(t)
			tt.run(t, a, b)
		})
	}
}

// A subscription queues what a broker delivers, so that deliver returns at
// once and the test reads the events in order with a deadline.
type subscription struct {
	room        string
	unsubscribe func()

	inflight   atomic.Int32
	concurrent atomic.Bool
	signal     chan struct{} // has a value when events may be queued

	mu     sync.Mutex
	events []chatkit.Event
}

// subscribe subscribes to room and waits until the subscription is in
// place, which the broker tells with an EventReset.
func subscribe(t *testing.T, br chatkit.Broker, room string) *subscription {
	t.Helper()
	s := &subscription{room: room, signal: make(chan struct{}, 1)}
	s.unsubscribe = sync.OnceFunc(br.Subscribe(room, s.deliver))
	t.Cleanup(s.unsubscribe)
	for {
		if ev := s.take(t, "the EventReset of a new subscription"); ev.Kind == chatkit.EventReset {
			return s
		}
	}
}

func (s *subscription) deliver(ev chatkit.Event) {
	if s.inflight.Add(1) > 1 {
		s.concurrent.Store(true)
	}
	defer s.inflight.Add(-1)
	s.mu.Lock()
	s.events = append(s.events, ev)
	s.mu.Unlock()
	select {
	case s.signal <- struct{}{}:
	default:
	}
}

// take returns the next event delivered, resets included.
func (s *subscription) take(t *testing.T, waitingFor string) chatkit.Event {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		if s.concurrent.Load() {
			t.Fatalf("subscriber of %q: deliver was called concurrently", s.room)
		}
		s.mu.Lock()
		if len(s.events) > 0 {
			ev := s.events[0]
			s.events = s.events[1:]
			s.mu.Unlock()
			if ev.Room != s.room {
				t.Fatalf("subscriber of %q got an event of another room: %s", s.room, formatEvent(ev))
			}
			return ev
		}
		s.mu.Unlock()
		select {
		case <-s.signal:
		case <-deadline.C:
			t.Fatalf("subscriber of %q: no event within %v, waiting for %s", s.room, timeout, waitingFor)
		}
	}
}

// expect fails unless the next event other than a reset is want: waiting
// for an event proves that none came before it.
func (s *subscription) expect(t *testing.T, want chatkit.Event) {
	t.Helper()
	for {
		got := s.take(t, formatEvent(want))
		if got.Kind == chatkit.EventReset {
			continue
		}
		if !sameEvent(got, want) {
			t.Fatalf("subscriber of %q: got %s, want %s", s.room, formatEvent(got), formatEvent(want))
		}
		return
	}
}

// expectNothing fails if any event other than a reset has been delivered
// and not taken.
func (s *subscription) expectNothing(t *testing.T) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ev := range s.events {
		if ev.Kind != chatkit.EventReset {
			t.Errorf("subscriber of %q: got %s, want nothing", s.room, formatEvent(ev))
		}
	}
}

func typing(room, username string) chatkit.Event {
	return chatkit.Event{Kind: chatkit.EventTyping, Room: room, Username: username}
}

func joined(room, username string) chatkit.Event {
	return chatkit.Event{Kind: chatkit.EventJoined, Room: room, Username: username}
}

func left(room, username string) chatkit.Event {
	return chatkit.Event{Kind: chatkit.EventLeft, Room: room, Username: username}
}

func publish(t *testing.T, br chatkit.Broker, ev chatkit.Event) {
	t.Helper()
	if err := br.Publish(testContext(t), ev); err != nil {
		t.Fatalf("Publish(%s): %v", formatEvent(ev), err)
	}
}

func join(t *testing.T, br chatkit.Broker, m chatkit.Member, exclusive bool) bool {
	t.Helper()
	first, err := br.Join(testContext(t), m, exclusive)
	if err != nil {
		t.Fatalf("Join(%+v, exclusive %v): %v", m, exclusive, err)
	}
	return first
}

func leave(t *testing.T, br chatkit.Broker, m chatkit.Member) bool {
	t.Helper()
	last, err := br.Leave(testContext(t), m)
	if err != nil {
		t.Fatalf("Leave(%+v): %v", m, err)
	}
	return last
}

func expectMembers(t *testing.T, br chatkit.Broker, node, room string, want ...string) {
	t.Helper()
	got, err := br.Members(testContext(t), room)
	if err != nil {
		t.Fatalf("%s.Members(%q): %v", node, room, err)
	}
	if !slices.Equal(got, want) {
		t.Errorf("%s.Members(%q) = %q, want %q", node, room, got, want)
	}
}

func member(room, username, session string) chatkit.Member {
	return chatkit.Member{Room: room, Username: username, Session: session}
}

func testSubscribeReset(t *testing.T, a, b chatkit.Broker) {
	// subscribe waits for each reset; a second subscription to a room its
	// node already has must get one too.
	subscribe(t, a, "r1")
	subscribe(t, a, "r1")
	subscribe(t, b, "r1")
}

func testPublishReaches(t *testing.T, a, b chatkit.Broker) {
	sb := subscribe(t, b, "r1")
	msg := chatkit.Message{ID: 7, Room: "r1", Username: "zoë", Text: "héllo \"w\"\n\\ 😀",
		ClientMsgID: "c:1", Epoch: "epoch1", Time: baseTime}
	for _, ev := range []chatkit.Event{
		typing("r1", "alice"),
		typing("r1", "zoë 😀"),
		{Kind: chatkit.EventMessage, Room: "r1", Message: &msg},
	} {
		publish(t, a, ev)
		sb.expect(t, ev)
	}
}

func testNotToOwnNode(t *testing.T, a, b chatkit.Broker) {
	sa := subscribe(t, a, "r1")
	sb := subscribe(t, b, "r1")
	publish(t, a, typing("r1", "from-a"))
	publish(t, b, typing("r1", "from-b"))
	sa.expect(t, typing("r1", "from-b"))
	sb.expect(t, typing("r1", "from-a"))
}

func testOtherRooms(t *testing.T, a, b chatkit.Broker) {
	// a subscribes to r2 as well, so that r2's events reach its node and
	// must be kept from r1's subscriber.
	sa1 := subscribe(t, a, "r1")
	sa2 := subscribe(t, a, "r2")
	publish(t, b, typing("r2", "in-r2"))
	publish(t, b, typing("r3", "in-r3"))
	publish(t, b, typing("r1", "in-r1"))
	sa1.expect(t, typing("r1", "in-r1"))
	sa2.expect(t, typing("r2", "in-r2"))
}

func testUnsubscribe(t *testing.T, a, b chatkit.Broker) {
	gone := subscribe(t, a, "r1")
	stays := subscribe(t, a, "r1")
	publish(t, b, typing("r1", "before"))
	gone.expect(t, typing("r1", "before"))
	stays.expect(t, typing("r1", "before"))

	gone.unsubscribe()
	// Deliveries of a room are in order, so once stays has the second
	// event, gone would have had the first.
	publish(t, b, typing("r1", "after-1"))
	publish(t, b, typing("r1", "after-2"))
	stays.expect(t, typing("r1", "after-1"))
	stays.expect(t, typing("r1", "after-2"))
	gone.expectNothing(t)
}

func testResubscribe(t *testing.T, a, b chatkit.Broker) {
	first := subscribe(t, a, "r1")
	first.unsubscribe()
	again := subscribe(t, a, "r1")
	publish(t, b, typing("r1", "alice"))
	again.expect(t, typing("r1", "alice"))
	first.expectNothing(t)
}

func testOrder(t *testing.T, a, b chatkit.Broker) {
	sa := subscribe(t, a, "r1")
	const n = 100
	for i := range n {
		publish(t, b, typing("r1", fmt.Sprintf("user%03d", i)))
	}
	for i := range n {
		sa.expect(t, typing("r1", fmt.Sprintf("user%03d", i)))
	}
}

func testJoinFirst(t *testing.T, a, b chatkit.Broker) {
	tests := []struct {
		node  string
		br    chatkit.Broker
		m     chatkit.Member
		first bool
	}{
		{"a", a, member("r1", "alice", "s1"), true},
		{"a", a, member("r1", "alice", "s2"), false},
		{"b", b, member("r1", "alice", "s3"), false},
		{"b", b, member("r1", "bob", "s4"), true},
		{"a", a, member("r1", "bob", "s5"), false},
	}
	for _, tt := range tests {
		if got := join(t, tt.br, tt.m, false); got != tt.first {
			t.Errorf("%s.Join(%+v) = %v, want %v", tt.node, tt.m, got, tt.first)
		}
	}
}

func testJoinExclusive(t *testing.T, a, b chatkit.Broker) {
	if !join(t, a, member("r1", "alice", "s1"), false) {
		t.Fatalf("first Join of alice: first false")
	}
	for node, br := range map[string]chatkit.Broker{"a": a, "b": b} {
		m := member("r1", "alice", "s-"+node)
		if _, err := br.Join(testContext(t), m, true); !errors.Is(err, chatkit.ErrUsernameTaken) {
			t.Errorf("%s.Join(%+v, exclusive) of a present user: err %v, want ErrUsernameTaken", node, m, err)
		}
	}
	// Had a refused join recorded its session, s1 would not be the last.
	if !leave(t, a, member("r1", "alice", "s1")) {
		t.Errorf("Leave of alice's only session after refused joins: last false, want true")
	}
	expectMembers(t, b, "b", "r1")
	if !join(t, b, member("r1", "bob", "s2"), true) {
		t.Errorf("exclusive Join of an absent user: first false, want true")
	}
}

func testJoinedEvent(t *testing.T, a, b chatkit.Broker) {
	sa := subscribe(t, a, "r1")
	sb := subscribe(t, b, "r1")
	join(t, b, member("r1", "alice", "s1"), false)
	sa.expect(t, joined("r1", "alice"))
	join(t, b, member("r1", "alice", "s2"), false)
	join(t, a, member("r1", "alice", "s3"), false)
	// The markers prove that no second joined came, and that b's own join
	// did not reach b.
	publish(t, b, typing("r1", "marker-b"))
	publish(t, a, typing("r1", "marker-a"))
	sa.expect(t, typing("r1", "marker-b"))
	sb.expect(t, typing("r1", "marker-a"))
}

func testMembers(t *testing.T, a, b chatkit.Broker) {
	expectMembers(t, a, "a", "r1")
	// Joined out of order, so that an unsorted list shows.
	join(t, a, member("r1", "carol", "s1"), false)
	join(t, b, member("r1", "alice", "s2"), false)
	join(t, a, member("r1", "bob", "s3"), false)
	join(t, b, member("r1", "carol", "s4"), false)
	join(t, a, member("r1", "alice", "s5"), false)
	expectMembers(t, a, "a", "r1", "alice", "bob", "carol")
	expectMembers(t, b, "b", "r1", "alice", "bob", "carol")
	expectMembers(t, b, "b", "r2")
}

func testPresencePerRoom(t *testing.T, a, b chatkit.Broker) {
	join(t, a, member("r1", "alice", "s1"), false)
	if !join(t, b, member("r2", "alice", "s2"), true) {
		t.Errorf("Join of alice in r2 while present in r1: first false, want true")
	}
	if !leave(t, a, member("r1", "alice", "s1")) {
		t.Errorf("Leave of alice's only session in r1: last false, want true")
	}
	expectMembers(t, a, "a", "r1")
	expectMembers(t, a, "a", "r2", "alice")
}

func testLeaveLast(t *testing.T, a, b chatkit.Broker) {
	s1, s2 := member("r1", "alice", "s1"), member("r1", "alice", "s2")
	join(t, a, s1, false)
	join(t, b, s2, false)
	tests := []struct {
		node string
		br   chatkit.Broker
		m    chatkit.Member
		last bool
	}{
		{"a", a, s1, false},
		{"b", b, s2, true},
		{"b", b, s2, false},
		{"a", a, s1, false},
	}
	for _, tt := range tests {
		if got := leave(t, tt.br, tt.m); got != tt.last {
			t.Errorf("%s.Leave(%+v) = %v, want %v", tt.node, tt.m, got, tt.last)
		}
	}
	if !join(t, a, s1, false) {
		t.Errorf("Join after the user left: first false, want true")
	}
}

func testLeaveUnknown(t *testing.T, a, b chatkit.Broker) {
	join(t, a, member("r1", "alice", "s1"), false)
	for _, m := range []chatkit.Member{
		member("unknown", "alice", "s1"),
		member("r1", "bob", "s1"),
		member("r1", "alice", "unknown"),
	} {
		for node, br := range map[string]chatkit.Broker{"a": a, "b": b} {
			if leave(t, br, m) {
				t.Errorf("%s.Leave(%+v) of an unknown session: last true, want false", node, m)
			}
		}
	}
	expectMembers(t, b, "b", "r1", "alice")
}

func testConcurrentLeaves(t *testing.T, a, b chatkit.Broker) {
	const users = 20
	for i := range users {
		join(t, a, member("r1", fmt.Sprint("user", i), "on-a"), false)
		join(t, b, member("r1", fmt.Sprint("user", i), "on-b"), false)
	}
	var lasts [users]atomic.Int32
	var wg sync.WaitGroup
	ctx := testContext(t)
	for i := range users {
		for _, node := range []struct {
			br      chatkit.Broker
			session string
		}{{a, "on-a"}, {b, "on-b"}} {
			wg.Go(func() {
				last, err := node.br.Leave(ctx, member("r1", fmt.Sprint("user", i), node.session))
				if err != nil {
					t.Errorf("Leave: %v", err)
				}
				if last {
					lasts[i].Add(1)
				}
			})
		}
	}
	wg.Wait()
	for i := range users {
		if n := lasts[i].Load(); n != 1 {
			t.Errorf("user%d's two sessions left concurrently: %d reported last, want 1", i, n)
		}
	}
	expectMembers(t, a, "a", "r1")
}

func testLeftEvent(t *testing.T, a, b chatkit.Broker) {
	sa := subscribe(t, a, "r1")
	sb := subscribe(t, b, "r1")
	join(t, b, member("r1", "alice", "s1"), false)
	sa.expect(t, joined("r1", "alice"))
	join(t, b, member("r1", "alice", "s2"), false)
	if leave(t, b, member("r1", "alice", "s1")) {
		t.Fatalf("Leave of one of two sessions: last true")
	}
	publish(t, b, typing("r1", "marker"))
	sa.expect(t, typing("r1", "marker"))
	leave(t, b, member("r1", "alice", "s2"))
	sa.expect(t, left("r1", "alice"))
	// b's own joined and left must not have reached b.
	publish(t, a, typing("r1", "marker"))
	sb.expect(t, typing("r1", "marker"))
}

func testMembersAfterLeave(t *testing.T, a, b chatkit.Broker) {
	join(t, a, member("r1", "alice", "s1"), false)
	join(t, b, member("r1", "bob", "s2"), false)
	join(t, a, member("r1", "bob", "s3"), false)
	leave(t, a, member("r1", "alice", "s1"))
	expectMembers(t, b, "b", "r1", "bob")
	leave(t, b, member("r1", "bob", "s2"))
	expectMembers(t, b, "b", "r1", "bob")
	leave(t, a, member("r1", "bob", "s3"))
	expectMembers(t, a, "a", "r1")
	expectMembers(t, b, "b", "r1")
}

func testLinger(t *testing.T, a, b chatkit.Broker) {
	old := member("r1", "alice", "s1")
	join(t, a, old, false)
	sa := subscribe(t, a, "r1")
	if err := a.Linger(testContext(t), old); err != nil {
		t.Fatalf("Linger: %v", err)
	}
	if err := a.Linger(testContext(t), member("r1", "nobody", "s0")); err != nil {
		t.Errorf("Linger of an unknown session: %v, want nil", err)
	}
	expectMembers(t, b, "b", "r1", "alice")
	back := member("r1", "alice", "s2")
	first, err := b.Join(testContext(t), back, true)
	if err != nil || first {
		t.Fatalf("exclusive Join of a user whose only session lingers: %v, %v; want false, nil (still present)", first, err)
	}
	if _, err := a.Join(testContext(t), member("r1", "alice", "s3"), true); !errors.Is(err, chatkit.ErrUsernameTaken) {
		t.Errorf("exclusive Join beside a live session: %v, want ErrUsernameTaken", err)
	}
	if leave(t, a, old) {
		t.Errorf("Leave of the lingering session after the return: last true, want false")
	}
	if !leave(t, b, back) {
		t.Errorf("Leave of the session that came back: last false, want true")
	}
	// One left for the whole story, from b, and no joined: the marker
	// comes next.
	sa.expect(t, left("r1", "alice"))
	publish(t, b, typing("r1", "marker"))
	sa.expect(t, typing("r1", "marker"))
}
