package redisadapter_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatkit/chatkit"
	"github.com/chatkit/chatkit/chatkittest"
	"github.com/chatkit/chatkit/redisadapter"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
)

// TestMain checks that no goroutine outlives its test but one of
// go-redis's own: after a failed dial, a client's pool probes the server
// for a while, even once the client is closed.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/redis/go-redis/v9/internal/pool.(*ConnPool).tryDial"))
}

// wait bounds every wait: a broken adapter fails a test instead of
// hanging it.
const wait = 10 * time.Second

func redisURL(t *testing.T) string {
	t.Helper()
	url := os.Getenv("CHATKIT_REDIS_URL")
	if url == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("CHATKIT_REDIS_URL is not set on CI: the Redis tests must run there")
		}
		t.Skip("set CHATKIT_REDIS_URL=redis://127.0.0.1:6379/0 to run the Redis tests (bash .ci/run starts one)")
	}
	return url
}

// newClient returns a client of the test Redis that ends each call at its
// context's deadline, as an application's client for chatkit should.
func newClient(t *testing.T) *redis.Client {
	t.Helper()
	opt, err := redis.ParseURL(redisURL(t))
	if err != nil {
		t.Fatalf("CHATKIT_REDIS_URL: %v", err)
	}
	opt.ContextTimeoutEnabled = true
	c := redis.NewClient(opt)
	t.Cleanup(func() { c.Close() })
	return c
}

// newProxiedClient returns a client that reaches the test Redis through a
// proxy of its own, with which the test makes Redis unreachable.
func newProxiedClient(t *testing.T) (*redis.Client, *proxy) {
	t.Helper()
	opt, err := redis.ParseURL(redisURL(t))
	if err != nil {
		t.Fatalf("CHATKIT_REDIS_URL: %v", err)
	}
	p := newProxy(t, opt.Addr)
	opt.Addr = p.addr()
	opt.ContextTimeoutEnabled = true
	c := redis.NewClient(opt)
	t.Cleanup(func() { c.Close() })
	return c, p
}

// newPrefix returns a prefix of the test's own, whose keys are deleted
// when the test ends: the tests share the Redis and flush nothing.
func newPrefix(t *testing.T, c redis.UniversalClient) string {
	t.Helper()
	prefix := "chatkittest-" + rand.Text()[:10]
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		clean := func(ctx context.Context, c redis.UniversalClient) error {
			iter := c.Scan(ctx, 0, prefix+":*", 1000).Iterator()
			for iter.Next(ctx) {
				c.Del(ctx, iter.Val())
			}
			return iter.Err()
		}
		if cc, ok := c.(*redis.ClusterClient); ok {
			cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error { return clean(ctx, c) })
		} else {
			clean(ctx, c)
		}
	})
	return prefix
}

// newClusterClient returns a client of the Redis Cluster whose nodes
// CHATKIT_REDIS_CLUSTER lists (comma-separated host:port), or skips.
func newClusterClient(t *testing.T) *redis.ClusterClient {
	t.Helper()
	addrs := os.Getenv("CHATKIT_REDIS_CLUSTER")
	if addrs == "" {
		t.Skip("set CHATKIT_REDIS_CLUSTER=127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003 to run the tests on a Redis Cluster")
	}
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: strings.Split(addrs, ","), ContextTimeoutEnabled: true})
	t.Cleanup(func() { c.Close() })
	return c
}

func newAdapter(t *testing.T, c redis.UniversalClient, prefix string, opts ...redisadapter.Option) *redisadapter.Adapter {
	t.Helper()
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	opts = append([]redisadapter.Option{redisadapter.WithPrefix(prefix), redisadapter.WithLogger(log)}, opts...)
	a := redisadapter.New(c, opts...)
	t.Cleanup(func() { a.Close() })
	return a
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), wait)
	t.Cleanup(cancel)
	return ctx
}

// recorder collects the events a subscriber gets.
type recorder struct {
	ch          chan chatkit.Event
	unsubscribe func()
	mu          sync.Mutex
	dropped     bool
}

func subscribe(t *testing.T, b chatkit.Broker, room string) *recorder {
	t.Helper()
	r := &recorder{ch: make(chan chatkit.Event, 4096)}
	r.unsubscribe = b.Subscribe(room, func(ev chatkit.Event) {
		select {
		case r.ch <- ev:
		default:
			r.mu.Lock()
			r.dropped = true
			r.mu.Unlock()
		}
	})
	t.Cleanup(r.unsubscribe)
	return r
}

// next returns the next event that is not an EventReset.
func (r *recorder) next(t *testing.T, what string) chatkit.Event {
	t.Helper()
	deadline := time.After(wait)
	for {
		select {
		case ev := <-r.ch:
			if ev.Kind != chatkit.EventReset {
				return ev
			}
		case <-deadline:
			t.Fatalf("no event within %v; waiting for %s", wait, what)
		}
	}
}

// reset waits for an EventReset, skipping anything else.
func (r *recorder) reset(t *testing.T, what string) {
	t.Helper()
	deadline := time.After(wait)
	for {
		select {
		case ev := <-r.ch:
			if ev.Kind == chatkit.EventReset {
				return
			}
		case <-deadline:
			t.Fatalf("no EventReset within %v: %s", wait, what)
		}
	}
}

// until returns the events other than EventReset up to the typing event
// of marker, which it leaves out.
func (r *recorder) until(t *testing.T, marker string) []chatkit.Event {
	t.Helper()
	var evs []chatkit.Event
	for {
		ev := r.next(t, "marker "+marker)
		if ev.Kind == chatkit.EventTyping && ev.Username == marker {
			return evs
		}
		evs = append(evs, ev)
	}
}

// eventually polls cond until it holds, for state that no event announces.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(wait)
	for !cond() {
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("not within %v: %s", wait, what)
		}
	}
}

// TestCluster runs the tests that tell most on a Redis Cluster: each
// room's scripts on its slot, the nodes' keys elsewhere, one pub/sub
// connection for rooms of every shard.
func TestCluster(t *testing.T) {
	c := newClusterClient(t)
	t.Run("conformance", func(t *testing.T) {
		chatkittest.RunAdapterTests(t, func(t *testing.T) (chatkit.Adapter, chatkit.Adapter) {
			prefix := newPrefix(t, c)
			return newAdapter(t, c, prefix), newAdapter(t, c, prefix)
		})
	})
	t.Run("rooms on every shard", func(t *testing.T) {
		prefix := newPrefix(t, c)
		a, b := newAdapter(t, c, prefix), newAdapter(t, c, prefix)
		ctx := testContext(t)
		shards := make(map[string]bool)
		var recs []*recorder
		for i := range 12 {
			room := fmt.Sprint("room", i)
			shard, err := c.MasterForKey(ctx, prefix+":{"+room+"}:meta")
			if err != nil {
				t.Fatal(err)
			}
			shards[shard.Options().Addr] = true
			r := subscribe(t, b, room)
			r.reset(t, "subscription of "+room)
			recs = append(recs, r)
		}
		if len(shards) < 2 {
			t.Fatalf("the rooms are on %d shard, want several", len(shards))
		}
		for i, r := range recs {
			m, _ := appendMsg(t, a, fmt.Sprint("room", i), "alice", "hi", "")
			if ev := r.next(t, "message"); ev.Kind != chatkit.EventMessage || !same(*ev.Message, m) {
				t.Errorf("room%d: got %+v, want %+v", i, ev, m)
			}
		}
	})
	t.Run("concurrent appends", func(t *testing.T) { testConcurrentAppends(t, c) })
	t.Run("dead node", func(t *testing.T) { testDeadNodeIsSwept(t, c) })
}

// TestConformance runs chatkit's contract tests; each subtest gets a
// fresh prefix, so a fresh cluster.
func TestConformance(t *testing.T) {
	c := newClient(t)
	chatkittest.RunAdapterTests(t, func(t *testing.T) (chatkit.Adapter, chatkit.Adapter) {
		prefix := newPrefix(t, c)
		return newAdapter(t, c, prefix), newAdapter(t, c, prefix)
	})
}

// same compares messages with their times to the nanosecond.
func same(a, b chatkit.Message) bool {
	ta, tb := a.Time, b.Time
	a.Time, b.Time = time.Time{}, time.Time{}
	return a == b && ta.Equal(tb)
}

func appendMsg(t *testing.T, s chatkit.Store, room, user, text, cmid string) (chatkit.Message, bool) {
	t.Helper()
	m, dup, err := s.Append(testContext(t), chatkit.Message{Room: room, Username: user, Text: text, ClientMsgID: cmid, Time: time.Now()})
	if err != nil {
		t.Fatalf("Append(%q): %v", text, err)
	}
	return m, dup
}

func latest(t *testing.T, s chatkit.Store, room string, n int) (chatkit.RoomState, []chatkit.Message) {
	t.Helper()
	st, msgs, err := s.Before(testContext(t), room, 0, n)
	if err != nil {
		t.Fatalf("Before: %v", err)
	}
	return st, msgs
}

func TestConcurrentAppendsAcrossNodesAreGapFree(t *testing.T) {
	testConcurrentAppends(t, newClient(t))
}

func testConcurrentAppends(t *testing.T, c redis.UniversalClient) {
	prefix := newPrefix(t, c)
	nodes := []*redisadapter.Adapter{newAdapter(t, c, prefix), newAdapter(t, c, prefix)}
	const writers, each = 8, 50
	var mu sync.Mutex
	seen := make(map[int64]int)
	epochs := make(map[string]bool)
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			s := nodes[w%2]
			for i := range each {
				m, _, err := s.Append(testContext(t), chatkit.Message{Room: "r", Username: fmt.Sprint("u", w), Text: fmt.Sprint(i), Time: time.Now()})
				if err != nil {
					t.Errorf("Append: %v", err)
					return
				}
				mu.Lock()
				seen[m.ID]++
				epochs[m.Epoch] = true
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	for id := int64(1); id <= writers*each; id++ {
		if seen[id] != 1 {
			t.Errorf("id %d given %d times, want once", id, seen[id])
		}
	}
	if len(seen) != writers*each || len(epochs) != 1 {
		t.Errorf("%d distinct ids in %d epochs, want %d in 1", len(seen), len(epochs), writers*each)
	}
	st, _ := latest(t, nodes[1], "r", 1)
	if st.LastID != writers*each {
		t.Errorf("LastID %d, want %d", st.LastID, writers*each)
	}
}

func TestHistoryTrimmedWithClientIDs(t *testing.T) {
	c := newClient(t)
	prefix := newPrefix(t, c)
	a := newAdapter(t, c, prefix, redisadapter.WithHistorySize(5))
	for i := 1; i <= 12; i++ {
		appendMsg(t, a, "r", "alice", fmt.Sprint("m", i), fmt.Sprint("c", i))
	}
	ctx := testContext(t)
	if n := c.ZCard(ctx, prefix+":{r}:msgs").Val(); n != 5 {
		t.Errorf("%d messages kept, want 5", n)
	}
	fields := c.HKeys(ctx, prefix+":{r}:cmid").Val()
	slices.Sort(fields)
	want := []string{"alice\x00c10", "alice\x00c11", "alice\x00c12", "alice\x00c8", "alice\x00c9"}
	if !slices.Equal(fields, want) {
		t.Errorf("cmid fields %q, want %q", fields, want)
	}
	st, msgs := latest(t, a, "r", 100)
	if st.OldestID != 8 || st.LastID != 12 || len(msgs) != 5 || msgs[0].ID != 8 {
		t.Errorf("state %+v with %d messages, want oldest 8, last 12, 5 messages", st, len(msgs))
	}
	if m, dup := appendMsg(t, a, "r", "alice", "again", "c12"); !dup || m.ID != 12 || m.Text != "m12" {
		t.Errorf("retry of a kept message: dup %v, %+v; want dup of 12", dup, m)
	}
	if m, dup := appendMsg(t, a, "r", "alice", "again", "c1"); dup || m.ID != 13 {
		t.Errorf("retry of a trimmed message: dup %v, id %d; want a new message 13", dup, m.ID)
	}
}

func TestZeroHistoryStillAllocatesAndPublishes(t *testing.T) {
	c := newClient(t)
	prefix := newPrefix(t, c)
	a := newAdapter(t, c, prefix, redisadapter.WithHistorySize(0))
	b := newAdapter(t, c, prefix)
	rec := subscribe(t, b, "r")
	rec.reset(t, "subscription in place")
	appendMsg(t, a, "r", "alice", "one", "c")
	if m, dup := appendMsg(t, a, "r", "alice", "two", "c"); dup || m.ID != 2 {
		t.Errorf("second append: dup %v, id %d; want new message 2", dup, m.ID)
	}
	for id := int64(1); id <= 2; id++ {
		if ev := rec.next(t, "message"); ev.Kind != chatkit.EventMessage || ev.Message.ID != id {
			t.Errorf("got %+v, want message %d", ev, id)
		}
	}
	if st, msgs := latest(t, a, "r", 10); st.LastID != 2 || st.OldestID != 0 || len(msgs) != 0 {
		t.Errorf("state %+v, %d messages; want last 2, none kept", st, len(msgs))
	}
}

func TestHistoryTTLSetOnRoomKeys(t *testing.T) {
	c := newClient(t)
	prefix := newPrefix(t, c)
	a := newAdapter(t, c, prefix, redisadapter.WithHistoryTTL(time.Hour))
	appendMsg(t, a, "r", "alice", "hi", "c1")
	ctx := testContext(t)
	for _, kind := range []string{"meta", "msgs", "cmid"} {
		ttl := c.PTTL(ctx, prefix+":{r}:"+kind).Val()
		if ttl <= 59*time.Minute || ttl > time.Hour {
			t.Errorf("%s expires in %v, want about an hour", kind, ttl)
		}
	}
	// A room only read expires too, so that reads of unknown rooms leave
	// nothing behind for good.
	latest(t, a, "other", 1)
	if ttl := c.PTTL(ctx, prefix+":{other}:meta").Val(); ttl <= 0 {
		t.Errorf("meta of a room only read expires in %v, want a TTL", ttl)
	}
}

func TestEpochSharedByNodesAndKeptAcrossRestart(t *testing.T) {
	c := newClient(t)
	prefix := newPrefix(t, c)
	a := newAdapter(t, c, prefix)
	first, _ := appendMsg(t, a, "r", "alice", "one", "")
	appendMsg(t, a, "r", "alice", "two", "")
	a.Close()
	b := newAdapter(t, c, prefix) // a node started later, or a's process restarted
	st, msgs := latest(t, b, "r", 10)
	if st.Epoch != first.Epoch || st.LastID != 2 || len(msgs) != 2 || msgs[0].Epoch != first.Epoch {
		t.Fatalf("new adapter sees %+v with %d messages, want epoch %s and 2 messages", st, len(msgs), first.Epoch)
	}
	if m, _ := appendMsg(t, b, "r", "bob", "three", ""); m.ID != 3 || m.Epoch != first.Epoch {
		t.Errorf("append on the new adapter: id %d epoch %s, want 3 in %s", m.ID, m.Epoch, first.Epoch)
	}
}

func TestEpochChangesWhenRoomIsLost(t *testing.T) {
	c := newClient(t)
	prefix := newPrefix(t, c)
	a := newAdapter(t, c, prefix)
	old, _ := appendMsg(t, a, "r", "alice", "one", "c1")
	appendMsg(t, a, "r", "alice", "two", "")
	ctx := testContext(t)

	// All the room's keys lost, as after a FLUSHALL or a restart without
	// persistence.
	c.Del(ctx, prefix+":{r}:meta", prefix+":{r}:msgs", prefix+":{r}:cmid")
	st, msgs := latest(t, a, "r", 10)
	if st.Epoch == old.Epoch || st.LastID != 0 || len(msgs) != 0 {
		t.Fatalf("after losing the room: %+v with %d messages, want a new epoch and nothing", st, len(msgs))
	}
	m, dup := appendMsg(t, a, "r", "alice", "one again", "c1")
	if dup || m.ID != 1 || m.Epoch != st.Epoch {
		t.Errorf("first append after the loss: dup %v id %d epoch %s, want new id 1 in %s", dup, m.ID, m.Epoch, st.Epoch)
	}

	// Only the meta hash lost (say evicted): the messages left of the old
	// sequence must not come back under the new epoch beside restarted ids.
	appendMsg(t, a, "r", "alice", "two again", "")
	c.Del(ctx, prefix+":{r}:meta")
	st2, msgs := latest(t, a, "r", 10)
	if st2.Epoch == st.Epoch || st2.LastID != 0 || st2.OldestID != 0 || len(msgs) != 0 {
		t.Errorf("after losing meta only: %+v with %d messages, want a new, empty epoch", st2, len(msgs))
	}
}

func TestTimeKeptToTheNanosecond(t *testing.T) {
	c := newClient(t)
	a := newAdapter(t, c, newPrefix(t, c))
	at := time.Date(2026, 3, 4, 5, 6, 7, 123456789, time.UTC)
	stored, _, err := a.Append(testContext(t), chatkit.Message{Room: "r", Username: "ünï\"code", Text: "<&> \u2028 \x00", Time: at})
	if err != nil {
		t.Fatal(err)
	}
	_, msgs := latest(t, a, "r", 1)
	if len(msgs) != 1 || !msgs[0].Time.Equal(at) || !same(msgs[0], stored) {
		t.Errorf("read back %+v, want %+v", msgs, stored)
	}
}

func TestOneNodeDoesNotHearItself(t *testing.T) {
	c := newClient(t)
	prefix := newPrefix(t, c)
	a, b := newAdapter(t, c, prefix), newAdapter(t, c, prefix)
	ra, rb := subscribe(t, a, "r"), subscribe(t, b, "r")
	ra.reset(t, "a's subscription")
	rb.reset(t, "b's subscription")
	ctx := testContext(t)
	if err := a.Publish(ctx, chatkit.Event{Kind: chatkit.EventTyping, Room: "r", Username: "alice"}); err != nil {
		t.Fatal(err)
	}
	m, _ := appendMsg(t, a, "r", "alice", "hi", "")
	if ev := rb.next(t, "typing"); ev.Kind != chatkit.EventTyping || ev.Username != "alice" {
		t.Errorf("b got %+v, want alice typing", ev)
	}
	if ev := rb.next(t, "message"); ev.Kind != chatkit.EventMessage || !same(*ev.Message, m) {
		t.Errorf("b got %+v, want message %+v", ev, m)
	}
	// b's marker reaches a after anything a might wrongly have got.
	b.Publish(ctx, chatkit.Event{Kind: chatkit.EventTyping, Room: "r", Username: "marker"})
	if evs := ra.until(t, "marker"); len(evs) != 0 {
		t.Errorf("a heard its own events: %+v", evs)
	}
}

func TestSubscriptionsOfARoomShareItsChannel(t *testing.T) {
	c := newClient(t)
	prefix := newPrefix(t, c)
	a, b := newAdapter(t, c, prefix), newAdapter(t, c, prefix)
	unsub1 := a.Subscribe("r", func(chatkit.Event) {})
	r2 := subscribe(t, a, "r")
	r2.reset(t, "second subscriber, the room being subscribed already")
	unsub1()
	unsub1() // twice does nothing
	ctx := testContext(t)
	b.Publish(ctx, chatkit.Event{Kind: chatkit.EventTyping, Room: "r", Username: "bob"})
	if ev := r2.next(t, "typing"); ev.Username != "bob" {
		t.Errorf("got %+v, want bob typing", ev)
	}
	numsub := func() int64 { return c.PubSubNumSub(ctx, prefix+":{r}:events").Val()[prefix+":{r}:events"] }
	if n := numsub(); n != 1 {
		t.Errorf("%d subscriptions of the channel, want 1 for the node", n)
	}
	r2.unsubscribe()
	eventually(t, "the node unsubscribes the channel of a room it no longer has", func() bool { return numsub() == 0 })
}

func join(t *testing.T, b chatkit.Broker, room, user, session string, exclusive bool) (bool, error) {
	t.Helper()
	return b.Join(testContext(t), chatkit.Member{Room: room, Username: user, Session: session}, exclusive)
}

func members(t *testing.T, b chatkit.Broker, room string) []string {
	t.Helper()
	users, err := b.Members(testContext(t), room)
	if err != nil {
		t.Fatalf("Members: %v", err)
	}
	return users
}

func TestPresenceAcrossNodes(t *testing.T) {
	c := newClient(t)
	prefix := newPrefix(t, c)
	a, b := newAdapter(t, c, prefix), newAdapter(t, c, prefix)
	ra, rb := subscribe(t, a, "r"), subscribe(t, b, "r")
	ra.reset(t, "a's subscription")
	rb.reset(t, "b's subscription")

	if first, err := join(t, a, "r", "alice", "s1", true); err != nil || !first {
		t.Fatalf("first Join: %v, %v; want first", first, err)
	}
	if _, err := join(t, b, "r", "alice", "s2", true); !errors.Is(err, chatkit.ErrUsernameTaken) {
		t.Fatalf("exclusive Join of a present user on another node: %v, want ErrUsernameTaken", err)
	}
	if first, err := join(t, b, "r", "alice", "s2", false); err != nil || first {
		t.Fatalf("second session: %v, %v; want not first", first, err)
	}
	if first, err := join(t, b, "r", "alice", "s2", false); err != nil || first {
		t.Fatalf("the same session again: %v, %v; want not first", first, err)
	}
	join(t, b, "r", "bob", "s3", false)
	if got := members(t, a, "r"); !slices.Equal(got, []string{"alice", "bob"}) {
		t.Errorf("Members %v, want [alice bob]", got)
	}
	if ev := rb.next(t, "alice joined"); ev.Kind != chatkit.EventJoined || ev.Username != "alice" {
		t.Errorf("b got %+v, want alice joined", ev)
	}
	if ev := ra.next(t, "bob joined"); ev.Kind != chatkit.EventJoined || ev.Username != "bob" {
		t.Errorf("a got %+v, want bob joined", ev)
	}
	ctx := testContext(t)
	if last, err := a.Leave(ctx, chatkit.Member{Room: "r", Username: "alice", Session: "s1"}); err != nil || last {
		t.Errorf("Leave of one of two sessions: %v, %v; want not last", last, err)
	}
	if last, err := a.Leave(ctx, chatkit.Member{Room: "r", Username: "alice", Session: "s1"}); err != nil || last {
		t.Errorf("Leave again: %v, %v; want not last", last, err)
	}
	if last, err := b.Leave(ctx, chatkit.Member{Room: "r", Username: "alice", Session: "s2"}); err != nil || !last {
		t.Errorf("Leave of the last session: %v, %v; want last", last, err)
	}
	if ev := ra.next(t, "alice left"); ev.Kind != chatkit.EventLeft || ev.Username != "alice" {
		t.Errorf("a got %+v, want alice left", ev)
	}
	if got := members(t, a, "r"); !slices.Equal(got, []string{"bob"}) {
		t.Errorf("Members %v, want [bob]", got)
	}
}

// A node that stops heartbeating (here: closed without leaving) is swept
// by the survivors, which race to do it; each of its users leaves once.
func TestDeadNodeIsSwept(t *testing.T) { testDeadNodeIsSwept(t, newClient(t)) }

func testDeadNodeIsSwept(t *testing.T, c redis.UniversalClient) {
	prefix := newPrefix(t, c)
	ctx := testContext(t)
	ttl := redisadapter.WithPresenceTTL(time.Second) // a loaded CI machine with -race misses shorter heartbeats
	dead := newAdapter(t, c, prefix, ttl)
	join(t, dead, "r", "alice", "d1", false)
	deadID := c.ZRange(ctx, prefix+":nodes", 0, -1).Val() // the only node yet

	s1, s2 := newAdapter(t, c, prefix, ttl), newAdapter(t, c, prefix, ttl)
	r1, r2 := subscribe(t, s1, "r"), subscribe(t, s2, "r")
	r1.reset(t, "s1's subscription")
	r2.reset(t, "s2's subscription")
	join(t, dead, "r", "alice", "d2", false)
	join(t, dead, "r", "bob", "d3", false)
	join(t, s1, "r", "bob", "l1", false) // bob stays: he has a session on a live node
	join(t, dead, "other", "carol", "d4", false)
	dead.Close()

	eventually(t, "the dead node's sessions are removed", func() bool {
		return c.HLen(ctx, prefix+":{r}:presence").Val() == 1 && c.Exists(ctx, prefix+":{other}:presence").Val() == 0
	})
	// Every leave was published in the script that removed its session,
	// so before this marker.
	marker := newAdapter(t, c, prefix)
	marker.Publish(ctx, chatkit.Event{Kind: chatkit.EventTyping, Room: "r", Username: "marker"})
	for i, r := range []*recorder{r1, r2} {
		var lefts []string
		for _, ev := range r.until(t, "marker") {
			if ev.Kind == chatkit.EventLeft {
				lefts = append(lefts, ev.Username)
			}
		}
		if !slices.Equal(lefts, []string{"alice"}) {
			t.Errorf("survivor %d got leaves %v, want alice's once", i+1, lefts)
		}
	}
	if got := members(t, s1, "r"); !slices.Equal(got, []string{"bob"}) {
		t.Errorf("Members %v, want [bob]", got)
	}
	if len(deadID) != 1 {
		t.Fatalf("nodes before the others started: %q, want the dead one only", deadID)
	}
	eventually(t, "the dead node is forgotten", func() bool {
		return c.ZScore(ctx, prefix+":nodes", deadID[0]).Err() == redis.Nil &&
			c.Exists(ctx, prefix+":node:"+deadID[0]+":rooms").Val() == 0
	})
}

func TestReceiverReconnectsAndResets(t *testing.T) {
	opt, err := redis.ParseURL(redisURL(t))
	if err != nil {
		t.Fatal(err)
	}
	prefix := "chatkittest-" + rand.Text()[:10]
	opt.ClientName = prefix // to find its pub/sub connection below
	opt.ContextTimeoutEnabled = true
	c := redis.NewClient(opt)
	defer c.Close()
	newPrefix(t, c) // cleans up
	a, b := newAdapter(t, c, prefix), newAdapter(t, c, prefix)
	ra := subscribe(t, a, "r")
	ra.reset(t, "the first subscription")
	ctx := testContext(t)
	// CLIENT KILL TYPE pubsub, but only of this test's connections: other
	// packages' tests may use the same Redis at the same time.
	list := c.ClientList(ctx).Val()
	killed := 0
	for line := range strings.Lines(list) {
		var id string
		for f := range strings.FieldsSeq(line) {
			if v, ok := strings.CutPrefix(f, "id="); ok {
				id = v
			}
		}
		if strings.Contains(line, " name="+prefix+" ") && strings.Contains(line, " sub=1 ") {
			if err := c.Do(ctx, "CLIENT", "KILL", "ID", id, "TYPE", "pubsub").Err(); err != nil {
				t.Fatal(err)
			}
			killed++
		}
	}
	if killed != 1 {
		t.Fatalf("killed %d pub/sub connections, want a's only:\n%s", killed, list)
	}
	ra.reset(t, "the subscription after CLIENT KILL")
	b.Publish(ctx, chatkit.Event{Kind: chatkit.EventTyping, Room: "r", Username: "bob"})
	if ev := ra.next(t, "typing after the reconnect"); ev.Username != "bob" {
		t.Errorf("got %+v, want bob typing", ev)
	}
}

// While Redis does not answer, Leave fails; the adapter retries it, and the
// leave then reaches every node, the one that failed included.
func TestFailedLeaveIsRetried(t *testing.T) {
	c := newClient(t)
	pc, p := newProxiedClient(t)
	prefix := newPrefix(t, c)
	ttl := redisadapter.WithPresenceTTL(3 * time.Second)
	a, b := newAdapter(t, pc, prefix, ttl), newAdapter(t, c, prefix, ttl)
	ra, rb := subscribe(t, a, "r"), subscribe(t, b, "r")
	ra.reset(t, "a's subscription")
	rb.reset(t, "b's subscription")
	if _, err := join(t, a, "r", "alice", "s1", false); err != nil {
		t.Fatal(err)
	}
	rb.next(t, "alice joined")
	p.block()
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	if _, err := a.Leave(ctx, chatkit.Member{Room: "r", Username: "alice", Session: "s1"}); err == nil {
		t.Fatal("Leave succeeded while Redis did not answer")
	}
	if got := members(t, b, "r"); !slices.Equal(got, []string{"alice"}) {
		t.Fatalf("Members %v after the failed Leave, want [alice] still", got)
	}
	p.unblock()
	for name, r := range map[string]*recorder{"a": ra, "b": rb} {
		if ev := r.next(t, "alice left, on "+name); ev.Kind != chatkit.EventLeft || ev.Username != "alice" {
			t.Errorf("%s got %+v, want alice left", name, ev)
		}
	}
	if got := members(t, b, "r"); len(got) != 0 {
		t.Errorf("Members %v, want none", got)
	}
}

// A node whose presence Redis lost (a restart without persistence) joins
// its sessions again.
func TestLostPresenceIsRejoined(t *testing.T) {
	c := newClient(t)
	prefix := newPrefix(t, c)
	ttl := redisadapter.WithPresenceTTL(time.Second) // a loaded CI machine with -race misses shorter heartbeats
	a, b := newAdapter(t, c, prefix, ttl), newAdapter(t, c, prefix, ttl)
	rb := subscribe(t, b, "r")
	rb.reset(t, "b's subscription")
	join(t, a, "r", "alice", "s1", false)
	rb.next(t, "alice joined")
	ctx := testContext(t)
	c.Del(ctx, prefix+":nodes", prefix+":{r}:presence", prefix+":{r}:users")
	if ev := rb.next(t, "alice joined again"); ev.Kind != chatkit.EventJoined || ev.Username != "alice" {
		t.Errorf("b got %+v, want alice joined", ev)
	}
	if got := members(t, b, "r"); !slices.Equal(got, []string{"alice"}) {
		t.Errorf("Members %v, want [alice]", got)
	}
}

func TestOptionsPanicWithTheirName(t *testing.T) {
	for name, opt := range map[string]func(){
		"WithPrefix":      func() { redisadapter.WithPrefix("a{b}") },
		"WithHistorySize": func() { redisadapter.WithHistorySize(-1) },
		"WithHistoryTTL":  func() { redisadapter.WithHistoryTTL(-time.Second) },
		"WithPresenceTTL": func() { redisadapter.WithPresenceTTL(time.Millisecond) },
		"WithLogger":      func() { redisadapter.WithLogger(nil) },
	} {
		func() {
			defer func() {
				if r := recover(); r == nil || !strings.Contains(fmt.Sprint(r), name) {
					t.Errorf("%s: panic %v, want one naming it", name, r)
				}
			}()
			opt()
		}()
	}
}

// Redis not answering: calls end at their context's deadline, with its
// error, and work again once it answers.
func TestUnresponsiveRedis(t *testing.T) {
	c, p := newProxiedClient(t)
	prefix := newPrefix(t, newClient(t))
	a := newAdapter(t, c, prefix)
	p.block()
	const d = 100 * time.Millisecond
	m := chatkit.Member{Room: "r", Username: "alice", Session: "s"}
	for name, call := range map[string]func(ctx context.Context) error{
		"Append": func(ctx context.Context) error {
			_, _, err := a.Append(ctx, chatkit.Message{Room: "r", Username: "alice", Text: "hi", Time: time.Now()})
			return err
		},
		"After":   func(ctx context.Context) error { _, _, err := a.After(ctx, "r", 0, 10); return err },
		"Before":  func(ctx context.Context) error { _, _, err := a.Before(ctx, "r", 0, 10); return err },
		"Join":    func(ctx context.Context) error { _, err := a.Join(ctx, m, false); return err },
		"Members": func(ctx context.Context) error { _, err := a.Members(ctx, "r"); return err },
		"Publish": func(ctx context.Context) error {
			return a.Publish(ctx, chatkit.Event{Kind: chatkit.EventTyping, Room: "r"})
		},
	} {
		ctx, cancel := context.WithTimeout(t.Context(), d)
		start := time.Now()
		err := call(ctx)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("%s while Redis does not answer: %v, want the context's deadline", name, err)
		}
		if took := time.Since(start); took > d+500*time.Millisecond { // not the 5 s of a dial timeout
			t.Errorf("%s took %v, want about the context's %v", name, took, d)
		}
	}
	p.unblock()
	if m, _ := appendMsg(t, a, "r", "alice", "back", ""); m.ID != 1 {
		t.Errorf("Append once Redis answers: id %d, want 1", m.ID)
	}
}

func TestUnreachableRedis(t *testing.T) {
	redisURL(t)
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", ContextTimeoutEnabled: true}) // nothing listens
	defer c.Close()
	a := redisadapter.New(c, redisadapter.WithPresenceTTL(30*time.Millisecond))
	done := make(chan struct{})
	go func() {
		defer close(done)
		unsubscribe := a.Subscribe("r", func(chatkit.Event) {})
		unsubscribe()
		a.Subscribe("r", func(chatkit.Event) {})
	}()
	select {
	case <-done:
	case <-time.After(time.Second):
		t.Fatal("Subscribe waited for an unreachable Redis")
	}
	ctx := testContext(t)
	if _, err := a.Join(ctx, chatkit.Member{Room: "r", Username: "alice", Session: "s"}, false); err == nil {
		t.Error("Join succeeded without Redis")
	}
	if _, err := a.Members(ctx, "r"); err == nil {
		t.Error("Members succeeded without Redis")
	}
	closed := make(chan struct{})
	go func() { a.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(wait):
		t.Fatal("Close did not return")
	}
}

func TestRoomExpiresAfterHistoryTTL(t *testing.T) {
	c := newClient(t)
	prefix := newPrefix(t, c)
	a := newAdapter(t, c, prefix, redisadapter.WithHistoryTTL(100*time.Millisecond))
	old, _ := appendMsg(t, a, "r", "alice", "one", "c1")
	ctx := testContext(t)
	eventually(t, "the room's keys expire", func() bool {
		return c.Exists(ctx, prefix+":{r}:meta", prefix+":{r}:msgs", prefix+":{r}:cmid").Val() == 0
	})
	m, dup := appendMsg(t, a, "r", "alice", "one", "c1")
	if dup || m.ID != 1 || m.Epoch == old.Epoch {
		t.Errorf("append after the room expired: dup %v, id %d, epoch %s; want a new id 1 in a new epoch", dup, m.ID, m.Epoch)
	}
}
