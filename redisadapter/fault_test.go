package redisadapter_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chatkit/chatkit"
	"github.com/chatkit/chatkit/chatkittest"
	"github.com/chatkit/chatkit/redisadapter"
	"github.com/redis/go-redis/v9"
)

// The fault tests run real Servers, each with an Adapter of its own, and
// drive them with WebSocket clients while Redis fails under them. Their
// options are short, so that each failure is noticed in about a second
// instead of the defaults' half minute.
const (
	presenceTTL  = time.Second
	storeTimeout = 500 * time.Millisecond
	faultRoom    = "lobby"
)

// A redisServer is a redis-server process of the test's own, on a free
// loopback port: the tests that stop, restart or stall Redis must not do
// it to the shared one, which other packages' tests use at the same time.
type redisServer struct {
	t    *testing.T
	bin  string
	dir  string
	port string
	args []string
	cmd  *exec.Cmd
}

// startRedis starts a private Redis, without persistence or with an AOF
// written before every reply (so that a kill loses nothing acked), and
// kills it when the test ends. It skips, as the other Redis tests do,
// unless CHATKIT_REDIS_URL asks for them, and also without redis-server
// in PATH; on CI it fails instead.
func startRedis(t *testing.T, aof bool) *redisServer {
	t.Helper()
	redisURL(t)
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("redis-server is not in PATH on CI: the fault tests must run there")
		}
		t.Skip("the fault tests start a Redis of their own: put redis-server in PATH")
	}
	r := &redisServer{t: t, bin: bin, dir: t.TempDir(), port: freePort(t)}
	r.args = []string{"--port", r.port, "--bind", "127.0.0.1", "--dir", r.dir,
		"--logfile", "redis.log", "--save", "", "--enable-debug-command", "local"}
	if aof {
		r.args = append(r.args, "--appendonly", "yes", "--appendfsync", "always")
	} else {
		r.args = append(r.args, "--appendonly", "no")
	}
	r.start()
	t.Cleanup(func() {
		r.stop()
		if t.Failed() {
			log, _ := os.ReadFile(filepath.Join(r.dir, "redis.log"))
			t.Logf("redis-server log:\n%s", log)
		}
	})
	return r
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return fmt.Sprint(ln.Addr().(*net.TCPAddr).Port)
}

func (r *redisServer) addr() string { return "127.0.0.1:" + r.port }

// start runs redis-server and waits until it answers PING (not LOADING:
// an AOF is read before the first command is served).
func (r *redisServer) start() {
	r.t.Helper()
	r.cmd = exec.Command(r.bin, r.args...)
	if err := r.cmd.Start(); err != nil {
		r.t.Fatalf("redis-server: %v", err)
	}
	// A process that starts announces nothing: poll.
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(wait)
	for ping(r.addr(), 100*time.Millisecond) != nil {
		select {
		case <-tick.C:
		case <-deadline:
			r.t.Fatalf("redis-server on port %s does not answer PING after %v", r.port, wait)
		}
	}
}

// stop kills redis-server without letting it save, as a crash would.
func (r *redisServer) stop() {
	if r.cmd == nil {
		return
	}
	r.cmd.Process.Kill()
	r.cmd.Wait()
	r.cmd = nil
}

// restart kills redis-server and starts it again on the same port and
// directory, as an operator or a supervisor would.
func (r *redisServer) restart() {
	r.t.Helper()
	r.stop()
	r.start()
}

// ping sends PING on a connection of its own, so that the test can see
// whether Redis answers without a go-redis pool in the way.
func ping(addr string, timeout time.Duration) error {
	conn, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(timeout))
	if _, err := io.WriteString(conn, "PING\r\n"); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "+PONG\r\n" {
		return fmt.Errorf("PING answered %q", line)
	}
	return nil
}

// A faultNode is one Server of the cluster, with its own Redis client and
// Adapter, behind its own httptest server.
type faultNode struct {
	name string
	rdb  *redis.Client
	a    *redisadapter.Adapter
	srv  *chatkit.Server
	ts   *httptest.Server
	url  string // ws://...
}

// startNode starts a Server on the Redis of opt, with the fault tests'
// short presence TTL and store timeout and a client named name, whose
// logs, and its adapter's, go to the test's output.
func startNode(t *testing.T, opt redis.Options, prefix, name string, opts ...chatkit.Option) *faultNode {
	t.Helper()
	opt.ContextTimeoutEnabled = true
	opt.ClientName = strings.ReplaceAll(name, " ", "-")
	rdb := redis.NewClient(&opt)
	t.Cleanup(func() { rdb.Close() })
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})).With("node", name)
	a := newAdapter(t, rdb, prefix, redisadapter.WithPresenceTTL(presenceTTL), redisadapter.WithLogger(log))
	srv := chatkit.New(append([]chatkit.Option{chatkit.WithAdapter(a), chatkit.WithLogger(log),
		chatkit.WithStoreTimeout(storeTimeout)}, opts...)...)
	ts := httptest.NewServer(srv)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		srv.Shutdown(ctx)
		ts.Close()
	})
	return &faultNode{name: name, rdb: rdb, a: a, srv: srv, ts: ts, url: "ws" + strings.TrimPrefix(ts.URL, "http")}
}

// kill makes the node vanish as a crashed process does: it can no longer
// heartbeat nor Leave (its Adapter and Redis client are closed), and its
// clients' connections are cut without a close frame.
func (n *faultNode) kill() {
	n.a.Close()
	n.rdb.Close()
	n.ts.CloseClientConnections()
}

// join connects a seed-style client, whose presence events list the
// room's users, and returns it with its welcome.
func (n *faultNode) join(t *testing.T, username string) (*chatkittest.Client, chatkittest.Event) {
	t.Helper()
	c := chatkittest.Dial(t, n.url, url.Values{"username": {username}, "room": {faultRoom}}, "")
	c.Name = username + "@" + n.name
	w := c.Next()
	if w.Type != "welcome" || w.Username != username {
		t.Fatalf("%s: first event %s, want its welcome", c.Name, w.Raw)
	}
	return c, w
}

func sharedOptions(t *testing.T) redis.Options {
	t.Helper()
	opt, err := redis.ParseURL(redisURL(t))
	if err != nil {
		t.Fatalf("CHATKIT_REDIS_URL: %v", err)
	}
	return *opt
}

func privateOptions(r *redisServer) redis.Options { return redis.Options{Addr: r.addr()} }

func chatCommand(text, clientMsgID string) map[string]string {
	return map[string]string{"type": "chat_message", "text": text, "client_msg_id": clientMsgID}
}

var typingCommand = map[string]string{"type": "typing"}

func isPresence(e chatkittest.Event) bool { return e.Type == "user_joined" || e.Type == "user_left" }

// nextNotPresence skips user_joined and user_left: when presence notices
// come relative to messages is not guaranteed across nodes.
func nextNotPresence(t *testing.T, c *chatkittest.Client) chatkittest.Event {
	t.Helper()
	for {
		if e := c.Next(); !isPresence(e) {
			return e
		}
	}
}

// waitUsers skips presence events until one lists exactly users, which
// proves that c's node has heard of each of them; anything else fails.
func waitUsers(t *testing.T, c *chatkittest.Client, users ...string) {
	t.Helper()
	for {
		e := c.Next()
		if !isPresence(e) {
			t.Fatalf("%s: got %s while waiting for the users %q", c.Name, e.Raw, users)
		}
		if slices.Equal(e.ActiveUsers, users) {
			return
		}
	}
}

// expectChat fails unless c's next event but presence is the message m.
func expectChat(t *testing.T, c *chatkittest.Client, m chatkittest.Event) {
	t.Helper()
	e := nextNotPresence(t, c)
	if e.Type != "chat_message" || e.ID != m.ID || e.Username != m.Username || e.Text != m.Text || e.ClientMsgID != m.ClientMsgID {
		t.Fatalf("%s: got %s, want %s", c.Name, e.Raw, m.Raw)
	}
}

// nextWelcome returns c's next welcome, skipping presence events: what a
// node sends when it resyncs a session.
func nextWelcome(t *testing.T, c *chatkittest.Client) chatkittest.Event {
	t.Helper()
	e := nextNotPresence(t, c)
	if e.Type != "welcome" {
		t.Fatalf("%s: got %s, want a second welcome", c.Name, e.Raw)
	}
	return e
}

// sendUntilAcked sends a chat_message again after each "unavailable"
// error, with the same client_msg_id, as client.js does, until it is
// acked, and returns the acked id. A node that has just reconnected may
// answer the first tries with the error; within is how long it may take.
// Retries are a quarter of a second apart, under the default rate limit.
func sendUntilAcked(t *testing.T, c *chatkittest.Client, text, clientMsgID string, within time.Duration) int64 {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		c.Send(chatCommand(text, clientMsgID))
		e := nextNotPresence(t, c)
		if e.Type == "chat_message" && e.ClientMsgID == clientMsgID {
			e = nextNotPresence(t, c) // its own copy comes before the ack
		}
		switch {
		case e.Type == "ack" && e.ClientMsgID == clientMsgID:
			return e.ID
		case e.Type != "error" || e.Code != "unavailable" || e.ClientMsgID != clientMsgID:
			t.Fatalf("%s: got %s after sending %q, want its ack or an unavailable error", c.Name, e.Raw, clientMsgID)
		case time.Now().After(deadline):
			t.Fatalf("%s: %q still unavailable after %v: %s", c.Name, clientMsgID, within, e.Raw)
		}
		<-time.After(250 * time.Millisecond) // client.js's backoff between retries
	}
}

// killPubSub kills the pub/sub connection of the Redis client named name,
// and only it: other tests' clients may be connected to the same Redis.
func killPubSub(t *testing.T, c *redis.Client, name string) {
	t.Helper()
	ctx := testContext(t)
	list := c.ClientList(ctx).Val()
	killed := 0
	for line := range strings.Lines(list) {
		fields := strings.Fields(line)
		if !slices.Contains(fields, "name="+name) || !slices.Contains(fields, "flags=P") {
			continue
		}
		for _, f := range fields {
			if id, ok := strings.CutPrefix(f, "id="); ok {
				if err := c.Do(ctx, "CLIENT", "KILL", "ID", id, "TYPE", "pubsub").Err(); err != nil {
					t.Fatal(err)
				}
				killed++
			}
		}
	}
	if killed != 1 {
		t.Fatalf("killed %d pub/sub connections named %s, want 1:\n%s", killed, name, list)
	}
}

// A node that dies without leaving is swept by the others after the
// presence TTL: each of its users leaves once, and may then join again.
func TestDeadNodeUsersLeaveOnceAndMayRejoin(t *testing.T) {
	opt := sharedOptions(t)
	prefix := newPrefix(t, newClient(t))
	n1 := startNode(t, opt, prefix, "node 1")
	n2 := startNode(t, opt, prefix, "node 2")
	alice, _ := n1.join(t, "Alice")
	waitUsers(t, alice, "Alice")
	n2.join(t, "Bob")
	waitUsers(t, alice, "Alice", "Bob")

	n2.kill()
	killed := time.Now()
	e := alice.Expect("user_left")
	if e.Username != "Bob" || !slices.Equal(e.ActiveUsers, []string{"Alice"}) {
		t.Fatalf("%s: got %s, want the user_left of Bob", alice.Name, e.Raw)
	}
	// The sweep runs at a heartbeat (every TTL/3) of a survivor that finds
	// the dead node's heartbeat older than the TTL.
	if took := time.Since(killed); took > 3*presenceTTL {
		t.Errorf("Bob left %v after his node died, want within a few presence TTLs (%v)", took, presenceTTL)
	}

	bob, w := n1.join(t, "Bob")
	if !slices.Equal(w.ActiveUsers, []string{"Alice", "Bob"}) {
		t.Errorf("%s: welcome %s, want active_users [Alice Bob]", bob.Name, w.Raw)
	}
	// A second user_left of Bob would come before his join, or before his
	// message.
	if e := alice.Expect("user_joined"); e.Username != "Bob" {
		t.Fatalf("%s: got %s, want Bob's join on node 1", alice.Name, e.Raw)
	}
	m := bob.SendChat("back", "b-1")
	if e := alice.Next(); e.Type != "chat_message" || e.ID != m.ID {
		t.Errorf("%s: got %s, want Bob's message %s", alice.Name, e.Raw, m.Raw)
	}
}

// Redis restarted without persistence has lost the room: each node starts
// the new id sequence under a new epoch and resyncs its sessions with a
// second welcome, and the chat goes on.
func TestRedisRestartWithoutPersistenceResyncsSessions(t *testing.T) {
	r := startRedis(t, false)
	n1 := startNode(t, privateOptions(r), "chatkit", "node 1")
	n2 := startNode(t, privateOptions(r), "chatkit", "node 2")
	alice, _ := n1.join(t, "Alice")
	waitUsers(t, alice, "Alice")
	bob, w := n2.join(t, "Bob")
	waitUsers(t, alice, "Alice", "Bob")
	oldEpoch := w.Epoch
	for i := 1; i <= 3; i++ {
		m := alice.SendChat(fmt.Sprint("before ", i), fmt.Sprint("a-", i))
		if m.ID != int64(i) {
			t.Fatalf("%s: message %d has id %d", alice.Name, i, m.ID)
		}
		expectChat(t, bob, m)
	}

	r.restart()
	var epochs []string
	for _, c := range []*chatkittest.Client{alice, bob} {
		w := nextWelcome(t, c)
		// Ids never restart under an unchanged epoch: the old ones must
		// not be taken for the new sequence's.
		if w.Epoch == oldEpoch || !w.HistoryTruncated || len(w.History) != 0 {
			t.Errorf("%s: second welcome %s, want a new epoch (not %s), history_truncated and no history", c.Name, w.Raw, oldEpoch)
		}
		epochs = append(epochs, w.Epoch)
	}
	if epochs[0] != epochs[1] {
		t.Errorf("new epochs %q on node 1 and %q on node 2: one store, one epoch", epochs[0], epochs[1])
	}

	m := alice.SendChat("after the restart", "a-4")
	if m.ID != 1 {
		t.Errorf("%s: first message after the restart has id %d, want 1 of the new epoch", alice.Name, m.ID)
	}
	expectChat(t, bob, m)
	// Anything received twice would come before Bob's own copy, or before
	// Alice gets it.
	m = bob.SendChat("still here", "b-1")
	expectChat(t, alice, m)

	// The nodes join their sessions again into the presence Redis lost.
	ctx := testContext(t)
	eventually(t, "both users present again, in Redis and on both nodes", func() bool {
		users, err := n1.a.Members(ctx, faultRoom)
		both := []string{"Alice", "Bob"}
		return err == nil && slices.Equal(users, both) &&
			slices.Equal(n1.srv.ActiveUsers(faultRoom), both) && slices.Equal(n2.srv.ActiveUsers(faultRoom), both)
	})
	_, w = n2.join(t, "Carol")
	if !slices.Equal(w.ActiveUsers, []string{"Alice", "Bob", "Carol"}) {
		t.Errorf("Carol's welcome on node 2: %s, want active_users [Alice Bob Carol]", w.Raw)
	}
}

// Redis that writes its AOF before every reply loses nothing it acked when
// it is killed: the messages, the counter and the epoch come back.
func TestRedisRestartWithAOFKeepsEveryAckedMessage(t *testing.T) {
	r := startRedis(t, true)
	// 20 messages in a row, and more after the restart, are over the
	// default burst.
	unlimited := chatkit.WithRateLimit(1000, 1000)
	n1 := startNode(t, privateOptions(r), "chatkit", "node 1", unlimited)
	n2 := startNode(t, privateOptions(r), "chatkit", "node 2", unlimited)
	alice, w := n1.join(t, "Alice")
	waitUsers(t, alice, "Alice")
	epoch := w.Epoch
	bob, _ := n2.join(t, "Bob")
	waitUsers(t, alice, "Alice", "Bob")
	var acked []chatkittest.Event
	for i := 1; i <= 20; i++ {
		// Turn about, so that both nodes append.
		from, to := alice, bob
		if i%2 == 0 {
			from, to = bob, alice
		}
		m := from.SendChat(fmt.Sprint("message ", i), fmt.Sprint("m-", i))
		expectChat(t, to, m)
		acked = append(acked, m)
	}

	r.restart()
	// A node that starts now reads the room from Redis alone.
	n3 := startNode(t, privateOptions(r), "chatkit", "node 3")
	dave, w := n3.join(t, "Dave")
	if w.Epoch != epoch || w.HistoryTruncated || len(w.History) != len(acked) {
		t.Fatalf("%s: welcome %s, want epoch %s and the %d acked messages", dave.Name, w.Raw, epoch, len(acked))
	}
	for i, h := range w.History {
		if h.ID != acked[i].ID || h.Text != acked[i].Text || h.Username != acked[i].Username {
			t.Errorf("%s: history[%d] is %s, want %s", dave.Name, i, h.Raw, acked[i].Raw)
		}
	}

	// The nodes that lived through the restart go on with the next id,
	// without a second welcome.
	id := sendUntilAcked(t, alice, "after the restart", "a-21", 5*time.Second)
	if id != 21 {
		t.Errorf("%s: message after the restart acked with id %d, want 21", alice.Name, id)
	}
	for _, c := range []*chatkittest.Client{bob, dave} {
		if e := nextNotPresence(t, c); e.Type != "chat_message" || e.ID != 21 || e.ClientMsgID != "a-21" {
			t.Errorf("%s: got %s, want Alice's message 21", c.Name, e.Raw)
		}
	}
}

// A lost pub/sub connection loses no message: what is published while it
// reconnects is read from the store.
func TestKilledPubSubConnectionLosesNoMessage(t *testing.T) {
	opt := sharedOptions(t)
	c := newClient(t)
	prefix := newPrefix(t, c)
	n1 := startNode(t, opt, prefix, "node 1")
	n2 := startNode(t, opt, prefix, prefix+" node 2") // a client name no other test has
	bob, _ := n2.join(t, "Bob")
	alice, _ := n1.join(t, "Alice")
	waitUsers(t, bob, "Alice", "Bob") // node 2's subscription delivers

	killPubSub(t, c, n2.rdb.Options().ClientName)
	// All at once, without waiting for acks, so that they are published
	// while node 2 has no subscription (within the default burst of 10).
	const n = 8
	for i := 1; i <= n; i++ {
		alice.Send(chatCommand(fmt.Sprint("during the reconnect ", i), fmt.Sprint("c-", i)))
	}
	var sent []chatkittest.Event
	for acks := 0; acks < n; {
		switch e := nextNotPresence(t, alice); e.Type {
		case "chat_message":
			sent = append(sent, e)
		case "ack":
			acks++
		default:
			t.Fatalf("%s: got %s, want its messages and their acks", alice.Name, e.Raw)
		}
	}
	for i, m := range sent {
		if m.ID != int64(i+1) || m.ClientMsgID != fmt.Sprint("c-", i+1) {
			t.Fatalf("%s: message #%d is %s, want c-%d with id %d", alice.Name, i+1, m.Raw, i+1, i+1)
		}
		expectChat(t, bob, m)
	}
	// A message delivered twice would come before Bob's own.
	bob.SendChat("all here", "b-1")
}

// While Redis stalls, typing still reaches the members on the same node,
// a message gets "unavailable" within the store timeout, and its retry
// after Redis wakes is stored once.
func TestSlowRedisKeepsLocalTypingAndStoresARetryOnce(t *testing.T) {
	r := startRedis(t, false)
	n1 := startNode(t, privateOptions(r), "chatkit", "node 1")
	n2 := startNode(t, privateOptions(r), "chatkit", "node 2")
	alice, _ := n1.join(t, "Alice")
	carol, _ := n1.join(t, "Carol")
	waitUsers(t, alice, "Alice", "Carol")
	bob, _ := n2.join(t, "Bob")
	waitUsers(t, alice, "Alice", "Bob", "Carol")
	waitUsers(t, carol, "Alice", "Bob", "Carol")

	sleeper := redis.NewClient(&redis.Options{Addr: r.addr(), ContextTimeoutEnabled: true})
	defer sleeper.Close()
	woke := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		woke <- sleeper.Do(ctx, "DEBUG", "SLEEP", "2").Err()
	}()
	// DEBUG SLEEP blocks Redis once it is read: wait until a PING goes
	// unanswered.
	deadline := time.Now().Add(wait)
	for ping(r.addr(), 100*time.Millisecond) == nil {
		if time.Now().After(deadline) {
			t.Fatal("Redis still answers PING after DEBUG SLEEP")
		}
	}

	start := time.Now()
	alice.Send(typingCommand)
	if e := carol.Expect("typing"); e.Username != "Alice" {
		t.Fatalf("%s: got %s, want Alice typing", carol.Name, e.Raw)
	}
	if took := time.Since(start); took > 500*time.Millisecond {
		t.Errorf("%s: Alice's typing took %v while Redis slept, want it within 500ms: it does not need Redis", carol.Name, took)
	}

	start = time.Now()
	alice.Send(chatCommand("while Redis sleeps", "c-1"))
	e := nextNotPresence(t, alice)
	if e.Type != "error" || e.Code != "unavailable" || e.ClientMsgID != "c-1" {
		t.Fatalf("%s: got %s, want an unavailable error for c-1", alice.Name, e.Raw)
	}
	if took := time.Since(start); took > storeTimeout+time.Second {
		t.Errorf("%s: the unavailable error took %v, want it within the store timeout %v", alice.Name, took, storeTimeout)
	}
	select {
	case err := <-woke:
		if err != nil {
			t.Fatalf("DEBUG SLEEP: %v", err)
		}
	case <-time.After(wait):
		t.Fatal("DEBUG SLEEP did not return")
	}

	// The first try may have been stored after all (Redis ran the queued
	// script when it woke): then the retry is acked with its id.
	alice.Send(chatCommand("while Redis sleeps", "c-1"))
	var own *chatkittest.Event
	var id int64
	for id == 0 {
		e := nextNotPresence(t, alice)
		switch {
		case e.Type == "chat_message" && e.ClientMsgID == "c-1" && own == nil:
			own = &e
		case e.Type == "ack" && e.ClientMsgID == "c-1":
			id = e.ID
		default:
			t.Fatalf("%s: got %s after retrying c-1, want its ack", alice.Name, e.Raw)
		}
	}
	if own == nil {
		t.Logf("%s: the retry of c-1 was acked (id %d) before any copy: the first try was stored when Redis woke", alice.Name, id)
		// PROTOCOL.md: every member, the sender included, gets every
		// message once.
		if e := nextNotPresence(t, alice); e.Type != "chat_message" || e.ID != id || e.ClientMsgID != "c-1" {
			t.Fatalf("%s: got %s after the ack of c-1 (id %d) without its copy, want the copy", alice.Name, e.Raw, id)
		}
	}
	for _, c := range []*chatkittest.Client{carol, bob} {
		if e := nextNotPresence(t, c); e.Type != "chat_message" || e.ID != id || e.ClientMsgID != "c-1" {
			t.Fatalf("%s: got %s, want c-1 with id %d", c.Name, e.Raw, id)
		}
	}
	// A second copy of c-1 would come before the marker.
	marker := bob.SendChat("marker", "b-1")
	for _, c := range []*chatkittest.Client{alice, carol} {
		expectChat(t, c, marker)
	}
	for _, n := range []*faultNode{n1, n2, startNode(t, privateOptions(r), "chatkit", "node 3")} {
		_, w := n.join(t, "Dave "+n.name)
		var c1 []int64
		for _, h := range w.History {
			if h.ClientMsgID == "c-1" {
				c1 = append(c1, h.ID)
			}
		}
		if !slices.Equal(c1, []int64{id}) {
			t.Errorf("welcome on %s: %s, want c-1 once, with id %d", n.name, w.Raw, id)
		}
	}
}

// While Redis is down, a handshake that needs it is refused at once and
// connected sessions stay; when Redis is back, the nodes recover by
// themselves.
func TestUnreachableRedisRefusesHandshakesAndRecovers(t *testing.T) {
	r := startRedis(t, true)
	n1 := startNode(t, privateOptions(r), "chatkit", "node 1")
	n2 := startNode(t, privateOptions(r), "chatkit", "node 2")
	alice, _ := n1.join(t, "Alice")
	carol, _ := n1.join(t, "Carol")
	waitUsers(t, alice, "Alice", "Carol")
	bob, _ := n2.join(t, "Bob")
	waitUsers(t, alice, "Alice", "Bob", "Carol")
	waitUsers(t, carol, "Alice", "Bob", "Carol")

	r.stop()
	// A room not loaded on the node must be read from Redis.
	start := time.Now()
	status, body := handshake(t, n1.ts.URL+"/?username=Dave&room=elsewhere")
	var refusal struct{ Error string }
	if status != http.StatusServiceUnavailable || json.Unmarshal(body, &refusal) != nil || refusal.Error == "" {
		t.Errorf("handshake while Redis is down: HTTP %d %s, want 503 with a JSON error", status, body)
	}
	if took := time.Since(start); took > storeTimeout+time.Second {
		t.Errorf("handshake refused after %v, want within the store timeout %v", took, storeTimeout)
	}
	// The room is loaded, but joining its presence needs Redis too.
	dave := chatkittest.Dial(t, n1.url, url.Values{"username": {"Dave"}, "room": {faultRoom}}, "")
	if code, reason := dave.Closed(); code != 1013 || reason != "try again later" {
		t.Errorf("handshake into the loaded room while Redis is down: closed with %d %q, want 1013 \"try again later\"", code, reason)
	}

	alice.Send(typingCommand)
	if e := nextNotPresence(t, carol); e.Type != "typing" || e.Username != "Alice" {
		t.Fatalf("%s: got %s, want Alice typing while Redis is down", carol.Name, e.Raw)
	}
	carol.Send(typingCommand)
	if e := nextNotPresence(t, alice); e.Type != "typing" || e.Username != "Carol" {
		t.Fatalf("%s: got %s, want Carol typing while Redis is down", alice.Name, e.Raw)
	}

	r.start()
	id := sendUntilAcked(t, alice, "Redis is back", "a-1", 5*time.Second)
	for _, c := range []*chatkittest.Client{carol, bob} {
		if e := nextNotPresence(t, c); e.Type != "chat_message" || e.ID != id || e.ClientMsgID != "a-1" {
			t.Errorf("%s: got %s, want Alice's message %d", c.Name, e.Raw, id)
		}
	}
}

// handshake sends a WebSocket upgrade request and returns the status and
// body of the answer, which a refusal has instead of an upgrade.
func handshake(t *testing.T, rawURL string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, rawURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	key := make([]byte, 16)
	rand.Read(key)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "websocket")
	req.Header.Set("Sec-WebSocket-Version", "13")
	req.Header.Set("Sec-WebSocket-Key", base64.StdEncoding.EncodeToString(key))
	req.Close = true
	client := &http.Client{Timeout: wait, Transport: &http.Transport{}}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	return resp.StatusCode, body
}
