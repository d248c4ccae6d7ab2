package pgstore_test

import (
	"context"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chatkit/chatkit"
	"github.com/chatkit/chatkit/chatkittest"
	"github.com/chatkit/chatkit/pgstore"
	"github.com/jackc/pgx/v5/pgxpool"
)

// A node is one chatkit Server on a Store of its own, served over HTTP.
type node struct {
	ws   string // the WebSocket URL
	stop func()
}

// startNode starts a Server on a new Store on pool, stopped with the test
// or by stop, which also closes the pool.
func startNode(t *testing.T, pool *pgxpool.Pool, opts ...chatkit.Option) *node {
	t.Helper()
	store := pgstore.New(pool, pgstore.WithLogger(testLogger(t)))
	srv := chatkit.New(append([]chatkit.Option{chatkit.WithStore(store), chatkit.WithLogger(nil)}, opts...)...)
	ts := httptest.NewServer(srv)
	n := &node{ws: "ws" + strings.TrimPrefix(ts.URL, "http") + "/ws"}
	stopped := false
	n.stop = func() {
		if stopped {
			return
		}
		stopped = true
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		srv.Shutdown(ctx)
		ts.Close()
		store.Close()
		pool.Close()
	}
	t.Cleanup(n.stop)
	return n
}

func params(username string, kv ...string) url.Values {
	v := url.Values{"username": {username}, "room": {"general"}}
	for i := 0; i+1 < len(kv); i += 2 {
		v.Set(kv[i], kv[i+1])
	}
	return v
}

// nextNotPresence returns c's next event that is not a user_joined or
// user_left, such as a session's own user_joined after its welcome.
func nextNotPresence(c *chatkittest.Client) chatkittest.Event {
	for {
		if ev := c.Next(); ev.Type != "user_joined" && ev.Type != "user_left" {
			return ev
		}
	}
}

func historyIDs(w chatkittest.Event) []int64 {
	ids := []int64{}
	for _, m := range w.History {
		ids = append(ids, m.ID)
	}
	return ids
}

// A Server stopped and another started on the same database: the new one
// has the history, the epoch and the ids, recognises retries of messages
// the old one stored, and resumes a client with exactly what it missed.
func TestRestartedServerCarriesOn(t *testing.T) {
	schema := newSchema(t)
	newStore(t, newPool(t, schema, "")) // migrates
	first := startNode(t, newPool(t, schema, ""))

	alice := chatkittest.Dial(t, first.ws, params("alice"), "")
	epoch := alice.Expect("welcome").Epoch
	if got := alice.SendChat("one", "a1"); got.ID != 1 {
		t.Fatalf("first message: id %d, want 1", got.ID)
	}
	alice.Close()
	bob := chatkittest.Dial(t, first.ws, params("bob"), "")
	bob.Expect("welcome")
	bob.SendChat("two", "b1")
	bob.SendChat("three", "b2")
	bob.Close()
	first.stop()

	second := startNode(t, newPool(t, schema, ""))
	alice = chatkittest.Dial(t, second.ws, params("alice", "since", "1", "epoch", epoch), "")
	w := alice.Expect("welcome")
	if w.Epoch != epoch || !slices.Equal(historyIDs(w), []int64{2, 3}) || w.HistoryTruncated {
		t.Errorf("resume since 1 after the restart: epoch %s, history %v, truncated %v; want epoch %s, [2 3], false",
			w.Epoch, historyIDs(w), w.HistoryTruncated, epoch)
	}
	if len(w.History) == 2 && (w.History[0].Text != "two" || w.History[1].Username != "bob") {
		t.Errorf("resumed history %s, want bob's two and three", w.Raw)
	}
	// The retry of a message the first Server stored is acked, not
	// repeated: no copy of it comes before the ack.
	alice.Send(map[string]string{"type": "chat_message", "text": "one", "client_msg_id": "a1"})
	if ack := nextNotPresence(alice); ack.Type != "ack" || ack.ID != 1 || ack.ClientMsgID != "a1" {
		t.Errorf("retry of a1 after the restart: %s, want its ack with id 1", ack.Raw)
	}
	if got := alice.SendChat("four", "a2"); got.ID != 4 {
		t.Errorf("first new message after the restart: id %d, want 4", got.ID)
	}
	carol := chatkittest.Dial(t, second.ws, params("carol"), "")
	if w := carol.Expect("welcome"); w.Epoch != epoch || !slices.Equal(historyIDs(w), idRange(1, 4)) {
		t.Errorf("new client after the restart: epoch %s, history %v; want %s, 1..4", w.Epoch, historyIDs(w), epoch)
	}
}

// The database stops answering mid-chat: a message gets "unavailable"
// within the store timeout, the session stays, and once the database is
// back the resent message is acked and stored once.
func TestDatabaseOutageMidChat(t *testing.T) {
	schema := newSchema(t)
	direct := newPool(t, schema, "")
	newStore(t, direct) // migrates
	p := newProxy(t, dbAddr(t))
	n := startNode(t, newPool(t, schema, p.addr()), chatkit.WithStoreTimeout(500*time.Millisecond))

	alice := chatkittest.Dial(t, n.ws, params("alice"), "")
	alice.Expect("welcome")
	alice.SendChat("before", "c0")

	p.block()
	chat := map[string]string{"type": "chat_message", "text": "during", "client_msg_id": "c1"}
	start := time.Now()
	alice.Send(chat)
	ev := alice.Expect("error")
	if took := time.Since(start); took > 1500*time.Millisecond {
		t.Errorf("the error came after %v, want within 1.5 s", took)
	}
	if ev.Code != "unavailable" || ev.ClientMsgID != "c1" {
		t.Errorf("while the database does not answer: %s, want the error unavailable for c1", ev.Raw)
	}

	p.unblock()
	// The first tries may meet connections that the outage broke: resend,
	// as a client does, until the message is acked.
	deadline := time.Now().Add(wait)
	for {
		alice.Send(chat)
		ev := nextNotPresence(alice)
		if ev.Type == "chat_message" {
			if ack := alice.Expect("ack"); ev.ID != 2 || ack.ID != 2 || ack.ClientMsgID != "c1" {
				t.Errorf("resent c1: %s then %s, want id 2 and its ack", ev.Raw, ack.Raw)
			}
			break
		}
		if ev.Type != "error" || ev.Code != "unavailable" || time.Now().After(deadline) {
			t.Fatalf("resending c1 once the database is back: %s, want it stored", ev.Raw)
		}
		time.Sleep(100 * time.Millisecond)
	}
	var copies, lastID int64
	ctx := testContext(t)
	if err := direct.QueryRow(ctx, "SELECT count(*) FROM chatkit_messages WHERE client_msg_id = 'c1'").Scan(&copies); err != nil {
		t.Fatal(err)
	}
	direct.QueryRow(ctx, "SELECT last_id FROM chatkit_rooms WHERE room = 'general'").Scan(&lastID)
	if copies != 1 || lastID != 2 {
		t.Errorf("after the outage: %d copies of c1, last_id %d; want 1 and 2", copies, lastID)
	}
}
