package pgstore

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/chatkit/chatkit"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// A Store keeps chatkit's rooms and messages in PostgreSQL; it implements
// chatkit.Store. Several Servers, in one process or many, share a chat by
// each using a Store on the same database (and search_path). Its methods
// are safe for concurrent use.
//
// A Store has no Forget method, on purpose: a Server forgets the rooms it
// frees from a store that has one, and a database is where rooms outlive
// Servers.
type Store struct {
	pool *pgxpool.Pool
	cfg  config
	log  *slog.Logger

	stop      context.CancelFunc // ends the pruning goroutine
	done      chan struct{}      // closed when it has ended
	closeOnce sync.Once
}

var _ chatkit.Store = (*Store)(nil)

// New returns a Store on pool, the application's own pool, whose
// connections must reach tables made by Migrate (Open does both). New does
// not talk to the database, so it succeeds while the database is down;
// calls then fail until it is back. With WithMaxAge or WithMaxPerRoom it
// starts a goroutine that prunes, which Close stops. A nil pool panics, as
// does an invalid option.
func New(pool *pgxpool.Pool, opts ...Option) *Store {
	if pool == nil {
		panic("pgstore: New: nil pool")
	}
	cfg := defaultConfig()
	for _, o := range opts {
		o(&cfg)
	}
	ctx, stop := context.WithCancel(context.Background())
	s := &Store{pool: pool, cfg: cfg, log: cfg.logger.With("component", "pgstore"), stop: stop, done: make(chan struct{})}
	if cfg.retains() {
		go s.pruneLoop(ctx)
	} else {
		close(s.done)
	}
	return s
}

// Open runs Migrate on pool, then returns New(pool, opts...). It is the
// usual way to start: a process that cannot reach the database, or whose
// schema cannot be brought up to date, gets the error before serving
// anyone. ctx bounds the migration only.
func Open(ctx context.Context, pool *pgxpool.Pool, opts ...Option) (*Store, error) {
	if pool == nil {
		panic("pgstore: Open: nil pool")
	}
	if err := Migrate(ctx, pool); err != nil {
		return nil, err
	}
	return New(pool, opts...), nil
}

// Close stops the store's background pruning, waiting for a prune under
// way to end, and returns nil. It does not close the pool given to New,
// which stays the application's; the store's methods keep working as long
// as the pool does. Close may be called more than once.
func (s *Store) Close() error {
	s.closeOnce.Do(s.stop)
	<-s.done
	return nil
}

// newEpoch returns a random epoch name: 12 characters of base32, like
// chatkit's own.
func newEpoch() string { return rand.Text()[:12] }

// clean makes s storable as PostgreSQL text, which holds neither U+0000
// nor invalid UTF-8: each NUL becomes U+FFFD, and so does each run of
// invalid bytes. chatkit lets a NUL through in a message's text or
// client_msg_id (JSON's \u0000); refusing it would be an Append error,
// which chatkit takes for an outage and its clients retry forever.
func clean(s string) string {
	if utf8.ValidString(s) && !strings.Contains(s, "\x00") {
		return s
	}
	return strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "\uFFFD")
}

// appendSQL is all of Append in one statement, so one round trip, and the
// room's row stays locked only while the statement runs:
//
//   - dup finds an earlier message with the same client_msg_id;
//   - when there is none, room creates the room's row with a new epoch
//     and id 1, or increments last_id: the row lock that the upsert takes
//     makes a room's writers wait for each other (other rooms do not) and
//     read the last_id that the one before them committed;
//   - msg inserts the message with that id.
//
// A statement that fails changes nothing, so a failed append burns no id.
// The dup check reads the statement's snapshot: of two concurrent retries
// of one message, the second can miss the first, and then the unique
// index on client_msg_id fails it; Append runs it again, and it finds the
// first.
const appendSQL = `
WITH dup AS (
    SELECT id, text, created_at FROM chatkit_messages
    WHERE $5::text IS NOT NULL AND room = $1 AND username = $3 AND client_msg_id = $5
), room AS (
    INSERT INTO chatkit_rooms AS r (room, epoch, last_id)
    SELECT $1, $2, 1 WHERE NOT EXISTS (SELECT FROM dup)
    ON CONFLICT (room) DO UPDATE SET last_id = r.last_id + 1
    RETURNING epoch, last_id
), msg AS (
    INSERT INTO chatkit_messages (room, id, username, text, client_msg_id, created_at)
    SELECT $1, last_id, $3, $4, $5, $6 FROM room
    RETURNING id, created_at
)
SELECT false, room.epoch, msg.id, NULL::text, msg.created_at FROM room, msg
UNION ALL
SELECT true, r.epoch, dup.id, dup.text, dup.created_at FROM dup, chatkit_rooms r WHERE r.room = $1`

// Append implements chatkit.Store. It gives m the room's next id and keeps
// it, in one statement: a room's ids are 1, 2, 3, ... with no gap and no
// repeat, whichever processes append, and the room's row is created, with
// a new epoch, if the room has none. m.ID and m.Epoch are ignored; the
// returned message has the Time as stored (to the microsecond) and text
// fields that PostgreSQL could not hold replaced (see the package
// documentation).
//
// When m.ClientMsgID is not empty and m.Username has a kept message with
// that ClientMsgID in the room, Append keeps nothing, allocates no id and
// returns that message with dup true; so does the loser of two concurrent
// appends of one message. On an error the message may or may not have
// been kept (a statement whose answer was lost may have committed): retry
// with the same ClientMsgID. The error of a call that the database did not
// answer before ctx ended is ctx's.
func (s *Store) Append(ctx context.Context, m chatkit.Message) (chatkit.Message, bool, error) {
	m.Room, m.Username, m.Text, m.ClientMsgID = clean(m.Room), clean(m.Username), clean(m.Text), clean(m.ClientMsgID)
	var cmid any // NULL when empty: the unique index ignores NULLs
	if m.ClientMsgID != "" {
		cmid = m.ClientMsgID
	}
	for attempt := 1; ; attempt++ {
		var (
			dup   bool
			text  *string
			epoch string
			id    int64
			at    time.Time
		)
		err := s.pool.QueryRow(ctx, appendSQL, m.Room, newEpoch(), m.Username, m.Text, cmid, m.Time).
			Scan(&dup, &epoch, &id, &text, &at)
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "23505" && pgErr.ConstraintName == "chatkit_messages_client_msg_id" && attempt < 3 {
			continue // a concurrent retry of this message won: find it
		}
		if pgconn.SafeToRetry(err) && ctx.Err() == nil && attempt < 3 {
			continue // not sent: a pooled connection that had died, say after a database restart
		}
		if err != nil {
			return chatkit.Message{}, false, callError(ctx, "Append", err)
		}
		m.ID, m.Epoch, m.Time = id, epoch, at
		if dup {
			m.Text = *text
		}
		return m, dup, nil
	}
}

// readSQL reads a room's state and a page of its messages in one
// statement, and so in one snapshot. $2 and $3 bound the page; the
// direction is filled in by After and Before. A room without a row
// returns no row at all.
const readSQL = `
SELECT r.epoch, r.last_id,
    coalesce((SELECT min(id) FROM chatkit_messages WHERE room = $1), 0),
    m.id, m.username, m.text, m.client_msg_id, m.created_at
FROM chatkit_rooms r
LEFT JOIN LATERAL (
    SELECT id, username, text, client_msg_id, created_at FROM chatkit_messages
    WHERE room = $1 AND %s LIMIT $3
) m ON true
WHERE r.room = $1
ORDER BY m.id`

var (
	afterSQL  = fmt.Sprintf(readSQL, "id > $2 ORDER BY id")
	beforeSQL = fmt.Sprintf(readSQL, "id < $2 ORDER BY id DESC")
)

// After implements chatkit.Store: the room's state and at most limit kept
// messages with an id above after, oldest first, read in one snapshot. A
// limit of 0 or less returns no message. A room that has no row yet gets
// one now, with its epoch, so that readers and writers agree on it; reads
// of known rooms write nothing.
func (s *Store) After(ctx context.Context, room string, after int64, limit int) (chatkit.RoomState, []chatkit.Message, error) {
	return s.read(ctx, "After", afterSQL, room, after, limit)
}

// Before implements chatkit.Store: the room's state and, oldest first, its
// newest kept messages with an id below before (the newest of all when
// before is 0 or less), at most limit, read in one snapshot. A limit of 0
// or less returns no message. Like After, it gives an unknown room its
// row and epoch.
func (s *Store) Before(ctx context.Context, room string, before int64, limit int) (chatkit.RoomState, []chatkit.Message, error) {
	if before <= 0 {
		before = math.MaxInt64
	}
	return s.read(ctx, "Before", beforeSQL, room, before, limit)
}

func (s *Store) read(ctx context.Context, call, sql, room string, bound int64, limit int) (chatkit.RoomState, []chatkit.Message, error) {
	room = clean(room)
	limit = max(limit, 0)
	// Twice at most: the insert returns once the room's row, ours or a
	// concurrent reader's, is committed, so the second read finds it.
	for range 2 {
		st, msgs, found, err := s.readOnce(ctx, sql, room, bound, limit)
		if err != nil && brokenConn(ctx, err) {
			// Reading is idempotent: try another connection, as the
			// pool's idle ones all die when the database restarts.
			st, msgs, found, err = s.readOnce(ctx, sql, room, bound, limit)
		}
		if err != nil {
			return chatkit.RoomState{}, nil, callError(ctx, call, err)
		}
		if found {
			return st, msgs, nil
		}
		if _, err := s.pool.Exec(ctx, `INSERT INTO chatkit_rooms (room, epoch) VALUES ($1, $2) ON CONFLICT (room) DO NOTHING`,
			room, newEpoch()); err != nil {
			return chatkit.RoomState{}, nil, callError(ctx, call, err)
		}
	}
	return chatkit.RoomState{}, nil, fmt.Errorf("pgstore: %s: room %q has no row after it was created", call, room)
}

func (s *Store) readOnce(ctx context.Context, sql, room string, bound int64, limit int) (chatkit.RoomState, []chatkit.Message, bool, error) {
	rows, err := s.pool.Query(ctx, sql, room, bound, limit)
	if err != nil {
		return chatkit.RoomState{}, nil, false, err
	}
	defer rows.Close()
	var (
		st    chatkit.RoomState
		msgs  []chatkit.Message
		found bool
	)
	for rows.Next() {
		var (
			id                   *int64
			username, text, cmid *string
			at                   *time.Time
		)
		if err := rows.Scan(&st.Epoch, &st.LastID, &st.OldestID, &id, &username, &text, &cmid, &at); err != nil {
			return chatkit.RoomState{}, nil, false, err
		}
		found = true
		if id == nil {
			continue // the room has no message in the page
		}
		m := chatkit.Message{ID: *id, Room: room, Username: *username, Text: *text, Time: *at}
		if cmid != nil {
			m.ClientMsgID = *cmid
		}
		msgs = append(msgs, m)
	}
	if err := rows.Err(); err != nil {
		return chatkit.RoomState{}, nil, false, err
	}
	for i := range msgs {
		msgs[i].Epoch = st.Epoch
	}
	return st, msgs, found, nil
}

// brokenConn reports whether err is that of the connection rather than
// of the database: no answer from PostgreSQL, and ctx still running.
func brokenConn(ctx context.Context, err error) bool {
	var pgErr *pgconn.PgError
	return !errors.As(err, &pgErr) && ctx.Err() == nil
}

// callError names the call in err, and makes the error of a call cut
// short by ctx ctx's own, so that callers can tell a timeout with
// errors.Is(err, context.DeadlineExceeded).
func callError(ctx context.Context, call string, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil && !errors.Is(err, ctxErr) {
		return fmt.Errorf("pgstore: %s: %w (%v)", call, ctxErr, err)
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("pgstore: %s: no answer row", call)
	}
	return fmt.Errorf("pgstore: %s: %w", call, err)
}
