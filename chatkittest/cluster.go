package chatkittest

import (
	"context"
	"fmt"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatkit/chatkit"
	"github.com/coder/websocket"
	"golang.org/x/time/rate"
)

// RunClusterTests proves that Servers given nodes of one cluster with
// chatkit.WithAdapter serve one chat: presence, messages, history, resume
// and retries work across nodes, and every member sees the room's messages
// in one order. It starts real Servers behind httptest servers and drives
// them with WebSocket clients, both seed-style and chatkit.v1.
//
// newCluster is called once per subtest and must return a function that
// makes nodes of one fresh cluster: an empty store that keeps at least 100
// messages of each room, and nobody present. Each call of newNode gives a
// new node, for one Server. Nothing here depends on when a broker
// delivers: every wait is for an event, and gives up after 10 seconds.
func RunClusterTests(t *testing.T, newCluster func(t *testing.T) (newNode func() chatkit.Adapter)) {
	tests := []struct {
		name string
		run  func(t *testing.T, newNode func() chatkit.Adapter)
	}{
		{"presence crosses nodes", testPresenceCrossesNodes},
		{"messages cross nodes", testMessagesCrossNodes},
		{"every member sees every message once in one order", testOneOrder},
		{"history and resume work on another node", testResumeOnAnotherNode},
		{"a duplicate username on another node is refused", testDuplicateRefused},
		{"with duplicates allowed a user is present once across nodes", testDuplicatesAllowed},
		{"a client_msg_id retry on another node is acked with the original id", testRetryOnAnotherNode},
		{"typing crosses nodes but not to the typer", testTypingCrossesNodes},
		{"broadcast reaches members on other nodes", testBroadcastCrossesNodes},
		{"a node that shuts down closes its clients and the others see them leave", testNodeShutdown},
		{"with a leave grace a user who comes back on another node is not seen leaving", testLeaveGraceAcrossNodes},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.run(t, newCluster(t)) })
	}
}

// clusterRoom is the room of every subtest: each has a fresh cluster.
const clusterRoom = "lobby"

// A node is one Server of the cluster, served over HTTP.
type node struct {
	name string
	srv  *chatkit.Server
	url  string // ws://...
}

// startNodes starts n Servers, each with its own node of the cluster and
// its own httptest server, and shuts them down when the test ends.
func startNodes(t *testing.T, newNode func() chatkit.Adapter, n int, opts ...chatkit.Option) []*node {
	t.Helper()
	nodes := make([]*node, n)
	for i := range nodes {
		srv := chatkit.New(append([]chatkit.Option{chatkit.WithAdapter(newNode()), chatkit.WithLogger(nil)}, opts...)...)
		ts := httptest.NewServer(srv)
		nd := &node{name: fmt.Sprintf("node %d", i+1), srv: srv, url: "ws" + strings.TrimPrefix(ts.URL, "http")}
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			if err := srv.Shutdown(ctx); err != nil {
				t.Errorf("%s: Shutdown: %v", nd.name, err)
			}
			ts.Close()
		})
		nodes[i] = nd
	}
	return nodes
}

// join connects username to the test room on n, as a client of the given
// style, and returns the client and its welcome. params are further query
// parameters, as name and value pairs.
func (n *node) join(t *testing.T, username, style string, params ...string) (*Client, Event) {
	t.Helper()
	c := Dial(t, n.url, n.query(username, params...), style)
	c.Name = username + "@" + n.name
	w := c.Next()
	if w.Type != evWelcome || w.Room != clusterRoom || w.Username != username {
		t.Fatalf("%s: first event %s, want the welcome of %s in %q", c.Name, w.Raw, username, clusterRoom)
	}
	return c, w
}

func (n *node) query(username string, params ...string) url.Values {
	q := url.Values{"username": {username}, "room": {clusterRoom}}
	for i := 0; i+1 < len(params); i += 2 {
		q.Set(params[i], params[i+1])
	}
	return q
}

func expectUsers(t *testing.T, what string, got []string, want ...string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Errorf("%s: active_users %q, want %q", what, got, want)
	}
}

// expectHistory checks a welcome's history and history_truncated.
func expectHistory(t *testing.T, what string, w Event, truncated bool, want ...chatkit.Message) {
	t.Helper()
	ok := len(w.History) == len(want) && w.HistoryTruncated == truncated
	for i := 0; ok && i < len(want); i++ {
		h := w.History[i]
		ok = h.Type == evChat && h.ID == want[i].ID && h.Text == want[i].Text && h.Username == want[i].Username
	}
	if !ok {
		t.Errorf("%s: welcome %s, want history_truncated %v and the messages %v", what, w.Raw, truncated, messageIDs(want))
	}
}

func messageIDs(msgs []chatkit.Message) []int64 {
	ids := []int64{}
	for _, m := range msgs {
		ids = append(ids, m.ID)
	}
	return ids
}

// sameChat reports whether two clients got the same message.
func sameChat(a, b Event) bool {
	return a.Type == evChat && b.Type == evChat && a.Room == b.Room && a.ID == b.ID && a.Username == b.Username &&
		a.Text == b.Text && a.Timestamp == b.Timestamp && a.ClientMsgID == b.ClientMsgID
}

func expectClosed(t *testing.T, c *Client, code websocket.StatusCode, reason string) {
	t.Helper()
	if gotCode, gotReason := c.Closed(); gotCode != code || gotReason != reason {
		t.Errorf("%s: closed with %d %q, want %d %q", c.Name, gotCode, gotReason, code, reason)
	}
}

func testPresenceCrossesNodes(t *testing.T, newNode func() chatkit.Adapter) {
	nodes := startNodes(t, newNode, 2)
	alice, w := nodes[0].join(t, "Alice", seedStyle)
	expectUsers(t, "Alice's welcome", w.ActiveUsers, "Alice")
	alice.expectPresence(evUserJoined, "Alice", "Alice")

	bob, w := nodes[1].join(t, "Bob", v1Style)
	expectUsers(t, "Bob's welcome on node 2", w.ActiveUsers, "Alice", "Bob")
	bob.expectPresence(evUserJoined, "Bob", "Alice", "Bob")
	alice.expectPresence(evUserJoined, "Bob", "Alice", "Bob")

	bob.Close()
	alice.expectPresence(evUserLeft, "Bob", "Alice")
}

func testMessagesCrossNodes(t *testing.T, newNode func() chatkit.Adapter) {
	nodes := startNodes(t, newNode, 3)
	alice, _ := nodes[0].join(t, "Alice", seedStyle)
	dave, _ := nodes[0].join(t, "Dave", v1Style)
	bob, _ := nodes[1].join(t, "Bob", v1Style)
	carol, _ := nodes[2].join(t, "Carol", seedStyle)

	sent := alice.SendChat("hello, nodes", "c-1")
	if sent.ID != 1 || sent.Room != clusterRoom {
		t.Errorf("Alice's copy %s, want id 1 in %q", sent.Raw, clusterRoom)
	}
	for _, c := range []*Client{dave, bob, carol} {
		if got := c.nextNotPresence(); !sameChat(got, sent) {
			t.Errorf("%s: got %s, want the message Alice got: %s", c.Name, got.Raw, sent.Raw)
		}
	}
}

// testOneOrder is the cluster's central promise: whichever node a message
// is sent to, and however the nodes' publications interleave, every member
// gets every message once, in id order, with ids 1, 2, 3, ... and no gap.
func testOneOrder(t *testing.T, newNode func() chatkit.Adapter) {
	const senders, each = 20, 50
	const total = senders * each
	// No rate limit, so that the senders race each other; a send queue
	// that holds every message, so that a client the race detector slows
	// down is not dropped as too slow: this test is about order.
	nodes := startNodes(t, newNode, 3, chatkit.WithRateLimit(rate.Inf, 1), chatkit.WithSendQueue(2*total))
	clients := make([]*Client, senders)
	for i := range clients {
		style := seedStyle
		if i%2 == 1 {
			style = v1Style
		}
		clients[i], _ = nodes[i%len(nodes)].join(t, fmt.Sprintf("user%02d", i), style)
	}

	want := make(map[string]bool) // username and text of every message sent
	for _, c := range clients {
		for j := range each {
			want[c.username+": "+oneOrderText(j)] = true
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, senders)
	for _, c := range clients {
		wg.Go(func() {
			for j := range each {
				if err := c.trySend(chatCommand(oneOrderText(j), fmt.Sprint("m-", j))); err != nil {
					errs <- fmt.Errorf("%s: %w", c.Name, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	var first []Event
	for _, c := range clients {
		got := receiveAll(t, c, total, each)
		for i, e := range got {
			if e.ID != int64(i+1) {
				t.Fatalf("%s: message #%d is %s, want id %d: ids must be 1..%d in order, each once", c.Name, i+1, e.Raw, i+1, total)
			}
		}
		if first == nil {
			first = got
			for _, e := range got {
				key := e.Username + ": " + e.Text
				if !want[key] {
					t.Fatalf("%s: got %s, which was not sent or came twice", c.Name, e.Raw)
				}
				delete(want, key)
			}
			continue
		}
		for i, e := range got {
			if !sameChat(e, first[i]) {
				t.Fatalf("%s got %s as message #%d, %s got %s", c.Name, e.Raw, i+1, clients[0].Name, first[i].Raw)
			}
		}
	}
}

func oneOrderText(j int) string { return fmt.Sprint("message ", j) }

// receiveAll reads until c has total chat messages and acks acks, and
// returns the messages in the order received. Every ack must follow the
// client's own copy of its message and carry its id.
func receiveAll(t *testing.T, c *Client, total, acks int) []Event {
	t.Helper()
	var msgs []Event
	own := make(map[string]int64) // client_msg_id to id of own messages received
	acked := make(map[string]bool)
	// What a client had when it failed tells a lost message from a lost
	// ack.
	defer func() {
		if !t.Failed() {
			return
		}
		var prev int64
		var gaps []string
		for _, m := range msgs {
			if m.ID != prev+1 {
				gaps = append(gaps, fmt.Sprintf("%d after %d", m.ID, prev))
			}
			prev = m.ID
		}
		var unacked []int64
		for cmid, id := range own {
			if !acked[cmid] {
				unacked = append(unacked, id)
			}
		}
		slices.Sort(unacked)
		t.Logf("%s had received %d of %d messages, with the ids out of sequence %q, and %d of %d acks; no ack yet for its messages %v",
			c.Name, len(msgs), total, gaps, len(acked), acks, unacked)
	}()
	for len(msgs) < total || len(acked) < acks {
		e := c.nextNotPresence()
		switch e.Type {
		case evChat:
			msgs = append(msgs, e)
			if e.Username == c.username {
				own[e.ClientMsgID] = e.ID
			}
		case evAck:
			id, ok := own[e.ClientMsgID]
			if !ok || id != e.ID || acked[e.ClientMsgID] {
				t.Fatalf("%s: got %s; own copy had id %d (0: not received yet); acked before: %v",
					c.Name, e.Raw, id, acked[e.ClientMsgID])
			}
			acked[e.ClientMsgID] = true
		default:
			t.Fatalf("%s: got %s, want only messages and acks", c.Name, e.Raw)
		}
	}
	return msgs
}

func testResumeOnAnotherNode(t *testing.T, newNode func() chatkit.Adapter) {
	nodes := startNodes(t, newNode, 2)
	alice, w := nodes[0].join(t, "Alice", seedStyle)
	epoch := w.Epoch
	var sent []chatkit.Message
	for i := range 5 {
		m, err := nodes[0].srv.Broadcast(clusterRoom, fmt.Sprint("notice ", i+1))
		if err != nil {
			t.Fatalf("node 1: Broadcast: %v", err)
		}
		if m.ID != int64(i+1) {
			t.Fatalf("node 1: Broadcast #%d got id %d", i+1, m.ID)
		}
		sent = append(sent, m)
	}
	// Alice sees up to id 3 on node 1; the resumes below pretend she
	// lost the rest.
	for i := range 3 {
		if e := alice.NextOf(evChat); e.ID != int64(i+1) {
			t.Fatalf("Alice on node 1: got %s, want id %d", e.Raw, i+1)
		}
	}

	bob, w := nodes[1].join(t, "Bob", v1Style)
	expectHistory(t, "Bob's welcome on node 2", w, false, sent...)
	if w.Epoch != epoch {
		t.Errorf("Bob's welcome on node 2: epoch %q, Alice's on node 1 %q: one store, one epoch", w.Epoch, epoch)
	}

	// Before each reconnect, Bob sees Alice leave: until her node has
	// ended her session, her name is taken.
	alice.Close()
	bob.NextOf(evUserLeft)
	resumed, w := nodes[1].join(t, "Alice", seedStyle, "since", "3", "epoch", epoch)
	expectHistory(t, "welcome on node 2 with since=3 and node 1's epoch", w, false, sent[3:]...)
	if w.Epoch != epoch {
		t.Errorf("welcome on node 2 with since=3: epoch %q, want %q", w.Epoch, epoch)
	}

	resumed.Close()
	bob.NextOf(evUserLeft)
	_, w = nodes[1].join(t, "Alice", seedStyle, "since", "3", "epoch", "not-the-epoch")
	expectHistory(t, "welcome on node 2 with since=3 and a wrong epoch", w, true, sent...)
}

func testDuplicateRefused(t *testing.T, newNode func() chatkit.Adapter) {
	nodes := startNodes(t, newNode, 2)
	alice, _ := nodes[0].join(t, "Alice", seedStyle)
	alice.expectPresence(evUserJoined, "Alice", "Alice")

	dup := Dial(t, nodes[1].url, nodes[1].query("Alice"), v1Style)
	dup.Name = "second Alice@node 2"
	expectClosed(t, dup, websocket.StatusPolicyViolation, "username taken")
	if e, ok := dup.take(); ok {
		t.Errorf("%s: got %s before the close, want nothing", dup.Name, e.Raw)
	}

	// The refusal left Alice's presence alone: her next presence event is
	// Bob's join, and Bob finds her present.
	_, w := nodes[1].join(t, "Bob", seedStyle)
	expectUsers(t, "Bob's welcome on node 2", w.ActiveUsers, "Alice", "Bob")
	alice.expectPresence(evUserJoined, "Bob", "Alice", "Bob")
}

func testDuplicatesAllowed(t *testing.T, newNode func() chatkit.Adapter) {
	nodes := startNodes(t, newNode, 3, chatkit.WithDuplicateUsernames(true))
	tab1, _ := nodes[0].join(t, "Alice", seedStyle)
	tab1.expectPresence(evUserJoined, "Alice", "Alice")
	tab2, w := nodes[1].join(t, "Alice", v1Style)
	expectUsers(t, "Alice's second welcome, on node 2", w.ActiveUsers, "Alice")
	bob, w := nodes[2].join(t, "Bob", seedStyle)
	expectUsers(t, "Bob's welcome on node 3", w.ActiveUsers, "Alice", "Bob")
	bob.expectPresence(evUserJoined, "Bob", "Alice", "Bob")
	// Had Alice's second session been announced, it would come before
	// Bob's join.
	tab1.expectPresence(evUserJoined, "Bob", "Alice", "Bob")
	tab2.expectPresence(evUserJoined, "Bob")

	// Tab 1 reloads. Disconnect takes it out of the room before it
	// returns, and a new session of the same user on that node waits for
	// that leave to finish: so a wrong user_left has been sent by the time
	// tab 3 is in, and would reach Bob before tab 3's message.
	if n := nodes[0].srv.Disconnect(clusterRoom, "Alice"); n != 1 {
		t.Fatalf("node 1: Disconnect of Alice ended %d sessions, want 1", n)
	}
	expectClosed(t, tab1, websocket.StatusGoingAway, "disconnected")
	tab3, w := nodes[0].join(t, "Alice", seedStyle)
	expectUsers(t, "Alice's welcome back on node 1", w.ActiveUsers, "Alice", "Bob")
	sent := tab3.SendChat("reloaded", "r-1")
	for _, c := range []*Client{bob, tab2} {
		if e := c.Next(); !sameChat(e, sent) {
			t.Errorf("%s: got %s while Alice still had a session on node 2, want her message %s", c.Name, e.Raw, sent.Raw)
		}
	}

	tab2.Close()
	tab3.Close()
	bob.expectPresence(evUserLeft, "Alice", "Bob")
	// Bob's own message proves that no second user_left came.
	bob.SendChat("alone", "b-1")
}

func testRetryOnAnotherNode(t *testing.T, newNode func() chatkit.Adapter) {
	nodes := startNodes(t, newNode, 2)
	alice, w := nodes[0].join(t, "Alice", v1Style)
	epoch := w.Epoch
	carol, _ := nodes[0].join(t, "Carol", seedStyle)
	bob, _ := nodes[1].join(t, "Bob", seedStyle)

	first := alice.SendChat("x", "c-1")
	for _, c := range []*Client{carol, bob} {
		if e := c.nextNotPresence(); !sameChat(e, first) {
			t.Fatalf("%s: got %s, want %s", c.Name, e.Raw, first.Raw)
		}
	}

	// Alice's node must end her session before she may join elsewhere.
	alice.Close()
	if e := bob.NextOf(evUserLeft); e.Username != "Alice" {
		t.Fatalf("%s: got %s, want Alice's user_left", bob.Name, e.Raw)
	}
	// She resumes where she was, as a reconnecting client does, and
	// sends again what she is not sure was stored.
	again, w := nodes[1].join(t, "Alice", v1Style, "since", fmt.Sprint(first.ID), "epoch", epoch)
	if len(w.History) != 0 || w.HistoryTruncated {
		t.Errorf("Alice's welcome on node 2 with since=%d: history %s, want none", first.ID, w.Raw)
	}
	again.Send(chatCommand("x", "c-1"))
	if e := again.nextNotPresence(); e.Type != evAck || e.ID != first.ID || e.ClientMsgID != "c-1" {
		t.Fatalf("%s: got %s after retrying c-1, want an ack with the original id %d and nothing else", again.Name, e.Raw, first.ID)
	}

	// The retry stored nothing: the next message anyone gets is a later
	// one, with the next id.
	later := bob.SendChat("later", "b-1")
	if later.ID != first.ID+1 {
		t.Errorf("%s: message after the retry has id %d, want %d", bob.Name, later.ID, first.ID+1)
	}
	for _, c := range []*Client{again, carol} {
		if e := c.nextNotPresence(); !sameChat(e, later) {
			t.Errorf("%s: got %s, want the later message %s", c.Name, e.Raw, later.Raw)
		}
	}
}

func testTypingCrossesNodes(t *testing.T, newNode func() chatkit.Adapter) {
	nodes := startNodes(t, newNode, 2)
	// Typing is not stored: a node whose subscription is not in place
	// yet would lose it. Each client waits for a user_joined from another
	// node, which proves that its node's subscription delivers.
	alice, _ := nodes[0].join(t, "Alice", seedStyle)
	alice.expectPresence(evUserJoined, "Alice", "Alice")
	bob, _ := nodes[1].join(t, "Bob", v1Style)
	bob.expectPresence(evUserJoined, "Bob")
	alice.expectPresence(evUserJoined, "Bob", "Alice", "Bob")
	carol, _ := nodes[0].join(t, "Carol", seedStyle)
	carol.expectPresence(evUserJoined, "Carol", "Alice", "Bob", "Carol")
	alice.expectPresence(evUserJoined, "Carol", "Alice", "Bob", "Carol")
	bob.expectPresence(evUserJoined, "Carol")

	expectTyping := func(c *Client, username string) {
		t.Helper()
		if e := c.Expect(evTyping); e.Username != username || e.Room != clusterRoom {
			t.Fatalf("%s: got %s, want %s typing in %q", c.Name, e.Raw, username, clusterRoom)
		}
	}
	alice.Send(typingCommand)
	expectTyping(bob, "Alice")
	expectTyping(carol, "Alice")
	bob.Send(typingCommand)
	// Alice's own typing would have come before Bob's.
	expectTyping(alice, "Bob")
	expectTyping(carol, "Bob")

	// Bob's own typing would come before Carol's message.
	sent := carol.SendChat("after typing", "c-1")
	for _, c := range []*Client{alice, bob} {
		if e := c.Next(); !sameChat(e, sent) {
			t.Errorf("%s: got %s, want Carol's message %s", c.Name, e.Raw, sent.Raw)
		}
	}
}

func testBroadcastCrossesNodes(t *testing.T, newNode func() chatkit.Adapter) {
	nodes := startNodes(t, newNode, 3, chatkit.WithSystemName("announcer"))
	// Node 1, which broadcasts, has nobody in the room.
	bob, _ := nodes[1].join(t, "Bob", seedStyle)
	carol, _ := nodes[2].join(t, "Carol", v1Style)
	m, err := nodes[0].srv.Broadcast(clusterRoom, "maintenance at noon")
	if err != nil {
		t.Fatalf("node 1: Broadcast: %v", err)
	}
	for _, c := range []*Client{bob, carol} {
		e := c.nextNotPresence()
		if e.Type != evChat || e.ID != m.ID || e.Username != "announcer" || e.Text != m.Text || e.ClientMsgID != "" {
			t.Errorf("%s: got %s, want node 1's broadcast %+v", c.Name, e.Raw, m)
		}
	}
}

func testNodeShutdown(t *testing.T, newNode func() chatkit.Adapter) {
	nodes := startNodes(t, newNode, 2)
	alice, _ := nodes[0].join(t, "Alice", seedStyle)
	bob, _ := nodes[1].join(t, "Bob", seedStyle)
	carol, _ := nodes[1].join(t, "Carol", v1Style)
	alice.waitJoined("Alice", "Bob", "Carol")

	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := nodes[1].srv.Shutdown(ctx); err != nil {
		t.Fatalf("node 2: Shutdown: %v", err)
	}
	for _, c := range []*Client{bob, carol} {
		expectClosed(t, c, websocket.StatusGoingAway, "server shutting down")
		// "Not sent when the server shuts down": a node's own members
		// are not told of each other's leave.
		for e, ok := c.take(); ok; e, ok = c.take() {
			if e.Type == evUserLeft {
				t.Errorf("%s: got %s from the node shutting down", c.Name, e.Raw)
			}
		}
	}

	// Node 2's users leave in either order.
	e1 := alice.Expect(evUserLeft)
	e2 := alice.Expect(evUserLeft)
	if names := []string{e1.Username, e2.Username}; !slices.Contains(names, "Bob") || !slices.Contains(names, "Carol") {
		t.Errorf("Alice on node 1 got %s and %s, want the user_left of Bob and Carol", e1.Raw, e2.Raw)
	}
	expectUsers(t, "Alice's second user_left", e2.ActiveUsers, "Alice")
	// They are gone from the cluster's presence, not only from Alice's.
	_, w := nodes[0].join(t, "Dave", v1Style)
	expectUsers(t, "Dave's welcome on node 1", w.ActiveUsers, "Alice", "Dave")
}

func testLeaveGraceAcrossNodes(t *testing.T, newNode func() chatkit.Adapter) {
	nodes := startNodes(t, newNode, 2, chatkit.WithLeaveGrace(time.Minute))
	alice, _ := nodes[0].join(t, "Alice", seedStyle)
	bob, _ := nodes[0].join(t, "Bob", seedStyle)
	alice.waitJoined("Alice", "Bob")

	// A reload that the load balancer sends to the other node: the name
	// is free for Bob again at once, and nobody sees him leave and come.
	bob.Close()
	back, w := nodes[1].join(t, "Bob", v1Style)
	expectUsers(t, "Bob's welcome on node 2", w.ActiveUsers, "Alice", "Bob")
	sent := back.SendChat("I'm back", "c-1")
	if got := alice.Next(); !sameChat(got, sent) {
		t.Errorf("Alice got %s, want Bob's message and no leave or join before it", got.Raw)
	}
}
