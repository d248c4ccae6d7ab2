package pgstore_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatkit/chatkit"
	"github.com/chatkit/chatkit/chatkittest"
	"github.com/chatkit/chatkit/pgstore"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/goleak"
)

// TestMain checks that no goroutine outlives the tests: not the store's
// pruning, not a pool's.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// wait bounds every wait: a broken store fails a test instead of hanging it.
const wait = 10 * time.Second

func pgURL(t testing.TB) string {
	t.Helper()
	url := os.Getenv("CHATKIT_POSTGRES_URL")
	if url == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("CHATKIT_POSTGRES_URL is not set on CI: the PostgreSQL tests must run there")
		}
		t.Skip("set CHATKIT_POSTGRES_URL to run the PostgreSQL tests; " +
			"d=$(mktemp -d); export CHATKIT_POSTGRES_URL=$(.ci/start-postgres $d) starts one (.ci/stop-postgres $d stops it)")
	}
	return url
}

func testContext(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	t.Cleanup(cancel)
	return ctx
}

// newSchema creates a schema of the test's own, dropped when the test
// ends, so that tests and packages can share the database and run at once.
func newSchema(t testing.TB) string {
	t.Helper()
	url := pgURL(t)
	ctx := testContext(t)
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("connecting to CHATKIT_POSTGRES_URL: %v", err)
	}
	defer conn.Close(ctx)
	schema := "pgstore_test_" + strings.ToLower(rand.Text()[:12])
	if _, err := conn.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		conn, err := pgx.Connect(ctx, url)
		if err != nil {
			t.Errorf("dropping schema %s: %v", schema, err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "DROP SCHEMA "+schema+" CASCADE"); err != nil {
			t.Errorf("dropping schema %s: %v", schema, err)
		}
	})
	return schema
}

// newPool returns a pool whose tables are those of schema. With a
// non-empty addr (host:port) it connects there instead, to a proxy.
func newPool(t testing.TB, schema, addr string) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(pgURL(t))
	if err != nil {
		t.Fatalf("CHATKIT_POSTGRES_URL: %v", err)
	}
	cfg.ConnConfig.RuntimeParams["search_path"] = schema
	if addr != "" {
		host, port, _ := net.SplitHostPort(addr)
		cfg.ConnConfig.Host = host
		fmt.Sscan(port, &cfg.ConnConfig.Port)
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// dbAddr is the host:port of the test database, for a proxy.
func dbAddr(t testing.TB) string {
	t.Helper()
	cfg, err := pgx.ParseConfig(pgURL(t))
	if err != nil {
		t.Fatalf("CHATKIT_POSTGRES_URL: %v", err)
	}
	return net.JoinHostPort(cfg.Host, fmt.Sprint(cfg.Port))
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// newStore returns a migrated store on pool, closed with the test.
func newStore(t testing.TB, pool *pgxpool.Pool, opts ...pgstore.Option) *pgstore.Store {
	t.Helper()
	opts = append([]pgstore.Option{pgstore.WithLogger(testLogger(t))}, opts...)
	s, err := pgstore.Open(testContext(t), pool, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func appendMsg(t testing.TB, s chatkit.Store, room, username, text, clientMsgID string) (chatkit.Message, bool) {
	t.Helper()
	m, dup, err := s.Append(testContext(t), chatkit.Message{Room: room, Username: username, Text: text,
		ClientMsgID: clientMsgID, Time: time.Now()})
	if err != nil {
		t.Fatalf("Append(%q, %q): %v", room, text, err)
	}
	return m, dup
}

func latest(t testing.TB, s chatkit.Store, room string, n int) (chatkit.RoomState, []chatkit.Message) {
	t.Helper()
	st, msgs, err := s.Before(testContext(t), room, 0, n)
	if err != nil {
		t.Fatalf("Before(%q, 0, %d): %v", room, n, err)
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

func TestConformance(t *testing.T) {
	pgURL(t) // skip once, not in each subtest
	chatkittest.RunStoreTests(t, func(t *testing.T) chatkit.Store {
		return newStore(t, newPool(t, newSchema(t), ""))
	})
}

// Two Stores on two pools, as two processes would have: every id once.
func TestConcurrentWritersOfTwoStoresAreGapFree(t *testing.T) {
	schema := newSchema(t)
	stores := []*pgstore.Store{newStore(t, newPool(t, schema, "")), newStore(t, newPool(t, schema, ""))}
	const writers, each = 8, 40
	var (
		mu  sync.Mutex
		got []int64
		wg  sync.WaitGroup
	)
	ctx := testContext(t)
	for w := range writers {
		s := stores[w%2]
		wg.Go(func() {
			for i := range each {
				m, dup, err := s.Append(ctx, chatkit.Message{Room: "r", Username: fmt.Sprint("writer", w), Text: fmt.Sprint(i), Time: time.Now()})
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
		t.Errorf("%d appends from two stores got ids %v, want each of 1..%d once", writers*each, got, writers*each)
	}
	for i, s := range stores {
		st, msgs := latest(t, s, "r", 1000)
		if st.LastID != writers*each || !slices.Equal(ids(msgs), idRange(1, writers*each)) {
			t.Errorf("store %d reads LastID %d and ids %v, want %d and all of them", i, st.LastID, ids(msgs), writers*each)
		}
	}
}

// Many retries of one message at once, through two stores: one is kept,
// every other is its dup, none is an error.
func TestConcurrentRetriesOfOneMessageMakeOneMessage(t *testing.T) {
	schema := newSchema(t)
	stores := []*pgstore.Store{newStore(t, newPool(t, schema, "")), newStore(t, newPool(t, schema, ""))}
	appendMsg(t, stores[0], "r", "bob", "before", "") // the room exists, so retries race on last_id
	for round := range 10 {
		cmid := fmt.Sprint("c", round)
		const tries = 8
		var (
			mu     sync.Mutex
			stored []chatkit.Message
			dups   int
			wg     sync.WaitGroup
			start  = make(chan struct{})
		)
		for i := range tries {
			wg.Go(func() {
				<-start
				m, dup, err := stores[i%2].Append(testContext(t), chatkit.Message{Room: "r", Username: "alice", Text: "hi", ClientMsgID: cmid, Time: time.Now()})
				if err != nil {
					t.Errorf("retry %d of %s: %v", i, cmid, err)
					return
				}
				mu.Lock()
				defer mu.Unlock()
				stored = append(stored, m)
				if dup {
					dups++
				}
			})
		}
		close(start)
		wg.Wait()
		want := int64(round + 2)
		for _, m := range stored {
			if m.ID != want {
				t.Errorf("round %d: a retry returned id %d, want %d for all", round, m.ID, want)
			}
		}
		if dups != len(stored)-1 {
			t.Errorf("round %d: %d dups among %d appends, want all but one", round, dups, len(stored))
		}
	}
	if st, _ := latest(t, stores[0], "r", 0); st.LastID != 11 {
		t.Errorf("LastID %d after 1 message and 10 raced ones, want 11", st.LastID)
	}
}

func TestMigrateIsIdempotentAndSafeConcurrently(t *testing.T) {
	schema := newSchema(t)
	pools := []*pgxpool.Pool{newPool(t, schema, ""), newPool(t, schema, "")}
	ctx := testContext(t)
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			if err := pgstore.Migrate(ctx, pools[i%2]); err != nil {
				t.Errorf("concurrent Migrate %d: %v", i, err)
			}
		})
	}
	wg.Wait()
	if err := pgstore.Migrate(ctx, pools[0]); err != nil {
		t.Fatalf("Migrate again: %v", err)
	}
	var versions []int32
	rows, _ := pools[0].Query(ctx, "SELECT version FROM chatkit_schema_version ORDER BY version")
	versions, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(versions, []int32{1}) {
		t.Errorf("schema versions %v after five Migrates, want [1]", versions)
	}
	s := pgstore.New(pools[1])
	defer s.Close()
	if m, _ := appendMsg(t, s, "r", "alice", "hi", "c1"); m.ID != 1 {
		t.Errorf("first Append after migrating: id %d, want 1", m.ID)
	}
}

func TestOpenFailsWhenTheDatabaseIsUnreachable(t *testing.T) {
	pool := newPool(t, "public", "127.0.0.1:1") // nothing listens
	start := time.Now()
	if _, err := pgstore.Open(testContext(t), pool); err == nil {
		t.Fatal("Open succeeded without a database")
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("Open took %v to fail", took)
	}
}

func TestPruneKeepsTheNewestPerRoom(t *testing.T) {
	s := newStore(t, newPool(t, newSchema(t), ""), pgstore.WithMaxPerRoom(5))
	var first chatkit.Message
	for i := range 20 {
		m, _ := appendMsg(t, s, "r", "alice", fmt.Sprint(i+1), fmt.Sprint("c", i+1))
		if i == 0 {
			first = m
		}
	}
	appendMsg(t, s, "small", "alice", "only one", "")
	n, err := s.Prune(testContext(t))
	if err != nil || n != 15 {
		t.Fatalf("Prune: %d deleted, %v; want 15", n, err)
	}
	st, msgs := latest(t, s, "r", 100)
	want := chatkit.RoomState{Epoch: first.Epoch, LastID: 20, OldestID: 16}
	if st != want || !slices.Equal(ids(msgs), idRange(16, 20)) {
		t.Errorf("after pruning to 5: state %+v, ids %v; want %+v and 16..20", st, ids(msgs), want)
	}
	if st, _ := latest(t, s, "small", 10); st.OldestID != 1 {
		t.Errorf("a room under the limit: OldestID %d, want 1", st.OldestID)
	}
	if m, dup := appendMsg(t, s, "r", "alice", "next", ""); dup || m.ID != 21 || m.Epoch != first.Epoch {
		t.Errorf("append after pruning: id %d, epoch %s, dup %v; want 21 in epoch %s", m.ID, m.Epoch, dup, first.Epoch)
	}
	// A pruned message's retry is stored anew; a kept one's is a dup.
	if m, dup := appendMsg(t, s, "r", "alice", "1", "c1"); dup || m.ID != 22 {
		t.Errorf("retry of pruned c1: id %d, dup %v; want a new id 22", m.ID, dup)
	}
	if m, dup := appendMsg(t, s, "r", "alice", "20", "c20"); !dup || m.ID != 20 {
		t.Errorf("retry of kept c20: id %d, dup %v; want the dup 20", m.ID, dup)
	}
}

func TestPruneDeletesInBatches(t *testing.T) {
	pool := newPool(t, newSchema(t), "")
	s := newStore(t, pool, pgstore.WithMaxPerRoom(1))
	appendMsg(t, s, "r", "alice", "first", "")
	ctx := testContext(t)
	// 2500 more messages, the fast way: what Append would write.
	if _, err := pool.Exec(ctx, `
		INSERT INTO chatkit_messages (room, id, username, text, created_at)
		SELECT 'r', i, 'alice', 'm', now() FROM generate_series(2, 2501) i;
		UPDATE chatkit_rooms SET last_id = 2501 WHERE room = 'r'`); err != nil {
		t.Fatal(err)
	}
	if n, err := s.Prune(ctx); err != nil || n != 2500 {
		t.Fatalf("Prune: %d deleted, %v; want 2500", n, err)
	}
	if st, msgs := latest(t, s, "r", 10); st.OldestID != 2501 || st.LastID != 2501 || len(msgs) != 1 {
		t.Errorf("after Prune: %+v, %d messages; want only 2501", st, len(msgs))
	}
}

func TestPruneDeletesOldMessages(t *testing.T) {
	s := newStore(t, newPool(t, newSchema(t), ""), pgstore.WithMaxAge(time.Hour))
	ctx := testContext(t)
	for i, age := range []time.Duration{3 * time.Hour, 2 * time.Hour, time.Minute, 0} {
		if _, _, err := s.Append(ctx, chatkit.Message{Room: "r", Username: "alice", Text: fmt.Sprint(i), Time: time.Now().Add(-age)}); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := s.Prune(ctx); err != nil || n != 2 {
		t.Fatalf("Prune: %d deleted, %v; want the 2 older than an hour", n, err)
	}
	if st, msgs := latest(t, s, "r", 10); st.OldestID != 3 || st.LastID != 4 || !slices.Equal(ids(msgs), []int64{3, 4}) {
		t.Errorf("after Prune: %+v, ids %v; want 3 and 4 kept", st, ids(msgs))
	}
}

func TestBackgroundPruneRunsUntilClose(t *testing.T) {
	pool := newPool(t, newSchema(t), "")
	s := newStore(t, pool, pgstore.WithMaxPerRoom(2), pgstore.WithPruneInterval(20*time.Millisecond))
	for range 5 {
		appendMsg(t, s, "r", "alice", "hi", "")
	}
	deadline := time.Now().Add(wait)
	for {
		if st, _ := latest(t, s, "r", 10); st.OldestID == 4 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the background prune did not delete messages 1 to 3")
		}
		time.Sleep(10 * time.Millisecond)
	}
	s.Close()
	s.Close() // twice is fine
	// The pool is the application's: still open.
	if m, _ := appendMsg(t, s, "r", "alice", "after Close", ""); m.ID != 6 {
		t.Errorf("Append after Close: id %d, want 6", m.ID)
	}
}

func TestTimeKeptToTheMicrosecond(t *testing.T) {
	s := newStore(t, newPool(t, newSchema(t), ""))
	at := time.Date(2026, 3, 4, 5, 6, 7, 123_456_789, time.UTC)
	m, _, err := s.Append(testContext(t), chatkit.Message{Room: "r", Username: "alice", Text: "hi", Time: at})
	if err != nil {
		t.Fatal(err)
	}
	want := at.Truncate(time.Microsecond)
	_, msgs := latest(t, s, "r", 1)
	if !m.Time.Equal(want) || len(msgs) != 1 || !msgs[0].Time.Equal(want) {
		t.Errorf("Append returned %v, Before %v; want %v both", m.Time, msgs, want)
	}
}

func TestNULAndInvalidUTF8AreReplaced(t *testing.T) {
	s := newStore(t, newPool(t, newSchema(t), ""))
	ctx := testContext(t)
	in := chatkit.Message{Room: "r", Username: "al\x00ice", Text: "a\x00b\xffc", ClientMsgID: "c\x00", Time: time.Now()}
	m, dup, err := s.Append(ctx, in)
	if err != nil || dup {
		t.Fatalf("Append of NUL and invalid UTF-8: dup %v, %v", dup, err)
	}
	if m.Username != "al\uFFFDice" || m.Text != "a\uFFFDb\uFFFDc" || m.ClientMsgID != "c\uFFFD" {
		t.Errorf("Append returned %q %q %q, want each NUL and bad byte as U+FFFD", m.Username, m.Text, m.ClientMsgID)
	}
	if _, msgs := latest(t, s, "r", 10); len(msgs) != 1 || msgs[0].Text != m.Text {
		t.Errorf("Before returned %v, want what Append returned", msgs)
	}
	// The retry is cleaned the same way, so it is recognised.
	if again, dup, err := s.Append(ctx, in); err != nil || !dup || again.ID != m.ID {
		t.Errorf("retry: id %d, dup %v, %v; want the dup %d", again.ID, dup, err, m.ID)
	}
}

// Reading a room creates its row with an epoch, once, even when many
// readers race; reading again writes nothing.
func TestReadsOfANewRoomAgreeOnItsEpoch(t *testing.T) {
	schema := newSchema(t)
	pool := newPool(t, schema, "")
	stores := []*pgstore.Store{newStore(t, pool), newStore(t, newPool(t, schema, ""))}
	var (
		mu     sync.Mutex
		epochs = map[string]bool{}
		wg     sync.WaitGroup
	)
	for i := range 8 {
		wg.Go(func() {
			st, _, err := stores[i%2].After(testContext(t), "new", 0, 10)
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			epochs[st.Epoch] = true
			mu.Unlock()
		})
	}
	wg.Wait()
	if len(epochs) != 1 {
		t.Errorf("8 racing reads of a new room saw epochs %v, want one", epochs)
	}
	ctx := testContext(t)
	// xmin names the transaction that wrote the row's current version.
	var xmin1, xmin2 string
	pool.QueryRow(ctx, "SELECT xmin::text FROM chatkit_rooms WHERE room = 'new'").Scan(&xmin1)
	latest(t, stores[0], "new", 10)
	pool.QueryRow(ctx, "SELECT xmin::text FROM chatkit_rooms WHERE room = 'new'").Scan(&xmin2)
	if xmin1 != xmin2 {
		t.Errorf("reading a known room rewrote its row (xmin %s, then %s)", xmin1, xmin2)
	}
}

// Calls to a database that does not answer end at their context's
// deadline, with its error, and work again once it answers.
func TestUnresponsiveDatabase(t *testing.T) {
	schema := newSchema(t)
	newStore(t, newPool(t, schema, "")) // migrates
	p := newProxy(t, dbAddr(t))
	s := pgstore.New(newPool(t, schema, p.addr()))
	defer s.Close()
	appendMsg(t, s, "r", "alice", "before", "")
	p.block()
	const d = 200 * time.Millisecond
	for name, call := range map[string]func(ctx context.Context) error{
		"Append": func(ctx context.Context) error {
			_, _, err := s.Append(ctx, chatkit.Message{Room: "r", Username: "alice", Text: "hi", Time: time.Now()})
			return err
		},
		"After":  func(ctx context.Context) error { _, _, err := s.After(ctx, "r", 0, 10); return err },
		"Before": func(ctx context.Context) error { _, _, err := s.Before(ctx, "r", 0, 10); return err },
	} {
		ctx, cancel := context.WithTimeout(context.Background(), d)
		start := time.Now()
		err := call(ctx)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("%s while the database does not answer: %v, want the context's deadline", name, err)
		}
		if took := time.Since(start); took > 3*d {
			t.Errorf("%s took %v, want about the context's %v", name, took, d)
		}
	}
	p.unblock()
	m, _, err := s.Append(testContext(t), chatkit.Message{Room: "r", Username: "alice", Text: "back", Time: time.Now()})
	if err != nil || m.ID != 2 {
		t.Errorf("Append once the database answers: id %d, %v; want 2: the failed Append must not have kept anything", m.ID, err)
	}
}

func TestOptionsPanicWithTheirName(t *testing.T) {
	for name, opt := range map[string]func(){
		"WithMaxAge":        func() { pgstore.WithMaxAge(0) },
		"WithMaxPerRoom":    func() { pgstore.WithMaxPerRoom(0) },
		"WithPruneInterval": func() { pgstore.WithPruneInterval(-time.Second) },
		"WithLogger":        func() { pgstore.WithLogger(nil) },
		"New":               func() { pgstore.New(nil) },
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
