package chatkit

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"path"
	"time"

	"golang.org/x/time/rate"
)

// An Option configures a Server. Options are applied in order by New; a later
// option overrides an earlier one. An option given an invalid value makes New
// panic with a message naming the option and the value, the way
// http.ServeMux panics on a bad pattern: such a value is a programming error,
// not a runtime condition.
type Option func(*config)

// config holds every setting of a Server. defaultConfig is the one place
// where defaults live; validate is the one place where they are checked.
type config struct {
	resolveRoom    func(*http.Request) (string, error)
	auth           func(*http.Request) (string, error)
	historySize    int
	rate           rate.Limit
	burst          int
	pingInterval   time.Duration
	idleTimeout    time.Duration
	writeTimeout   time.Duration
	maxMessageLen  int
	origins        []string
	sendQueue      int
	duplicates     bool
	logger         *slog.Logger
	systemName     string
	roomTTL        time.Duration
	maxRooms       int
	onMessage      func(context.Context, *Message) error
	onJoin         func(room, username string)
	onLeave        func(room, username string)
	store          Store  // nil: a MemoryStore of historySize, made by New
	broker         Broker // nil: a single-node broker, made by New
	adapter        bool   // store and broker are one Adapter whose Append publishes
	storeTimeout   time.Duration
	historyRate    rate.Limit
	historyBurst   int
	leaveGrace     time.Duration
	perUserRate    bool
	maxConns       int // 0: no cap
	maxConnsPerIP  int // 0: no cap
	trustedProxies []netip.Prefix
}

func defaultConfig() config {
	return config{
		resolveRoom:   roomFromQuery,
		auth:          usernameFromQuery,
		historySize:   100,
		rate:          5,
		burst:         10,
		pingInterval:  30 * time.Second,
		idleTimeout:   60 * time.Second,
		writeTimeout:  10 * time.Second,
		maxMessageLen: 500,
		sendQueue:     256,
		logger:        slog.Default(),
		roomTTL:       time.Hour,
		maxRooms:      10000,
		storeTimeout:  3 * time.Second,
		historyRate:   2,
		historyBurst:  5,
	}
}

// maxMessageLenLimit bounds WithMaxMessageLength so that the derived read
// limit (12 bytes per character) stays reasonable.
const maxMessageLenLimit = 1 << 20

func (c *config) validate() {
	if c.pingInterval >= c.idleTimeout {
		panic(fmt.Sprintf("chatkit: WithPingInterval(%v) must be shorter than WithIdleTimeout(%v)", c.pingInterval, c.idleTimeout))
	}
}

func badOption(name string, value any, why string) {
	panic(fmt.Sprintf("chatkit: %s(%v): %s", name, value, why))
}

// WithRoomResolver sets the function that picks the room of a connecting
// client. The default reads the query parameter "room" and uses "general"
// when it is absent. The returned name must be 1 to 64 characters of
// [A-Za-z0-9._-]; an invalid name, or an error, refuses the handshake with
// HTTP 400 (or the status of an HTTPError). A nil function panics.
func WithRoomResolver(f func(*http.Request) (string, error)) Option {
	if f == nil {
		badOption("WithRoomResolver", "nil", "the function must not be nil")
	}
	return func(c *config) { c.resolveRoom = f }
}

// WithAuth sets the function that authenticates a connecting client and
// returns its username. The default reads the query parameter "username".
// An error refuses the handshake with HTTP 401, or with the status of an
// HTTPError found in the error's chain. A returned username is trimmed and
// must be 1 to 32 characters without control characters, or the handshake
// is refused with HTTP 400. A nil function panics.
func WithAuth(f func(*http.Request) (string, error)) Option {
	if f == nil {
		badOption("WithAuth", "nil", "the function must not be nil")
	}
	return func(c *config) { c.auth = f }
}

// WithHistorySize sets how many recent messages each room keeps for
// newcomers and for resuming after a reconnect (default 100). Zero disables
// history, and with it resume and idempotent retries. Negative panics.
func WithHistorySize(n int) Option {
	if n < 0 {
		badOption("WithHistorySize", n, "must not be negative")
	}
	return func(c *config) { c.historySize = n }
}

// WithRateLimit sets each session's token bucket for chat messages: r
// messages per second on average, bursts of up to burst (default 5 and 10).
// rate.Inf disables the limit. A negative r, or a finite r with burst < 1,
// panics. Typing notices are not counted; they have their own fixed limit of
// one per second.
func WithRateLimit(r rate.Limit, burst int) Option {
	if r < 0 {
		badOption("WithRateLimit", r, "rate must not be negative")
	}
	if r != rate.Inf && burst < 1 {
		badOption("WithRateLimit", burst, "burst must be at least 1")
	}
	return func(c *config) { c.rate, c.burst = r, burst }
}

// WithPingInterval sets how often the server pings each session (default
// 30s). It must be positive and shorter than the idle timeout, or New panics.
func WithPingInterval(d time.Duration) Option {
	if d <= 0 {
		badOption("WithPingInterval", d, "must be positive")
	}
	return func(c *config) { c.pingInterval = d }
}

// WithIdleTimeout sets how long a session may stay silent, answering
// neither pings nor sending frames, before it is dropped and its user_left
// sent (default 60s). The drop happens at the first ping tick after the
// timeout, so at most one ping interval late. Must be positive.
func WithIdleTimeout(d time.Duration) Option {
	if d <= 0 {
		badOption("WithIdleTimeout", d, "must be positive")
	}
	return func(c *config) { c.idleTimeout = d }
}

// WithWriteTimeout sets how long one write to a client may take before the
// client is dropped as too slow (default 10s); a write may be cut up to an
// eighth of it sooner, since the socket's deadline is not moved for every
// write. Must be positive.
func WithWriteTimeout(d time.Duration) Option {
	if d <= 0 {
		badOption("WithWriteTimeout", d, "must be positive")
	}
	return func(c *config) { c.writeTimeout = d }
}

// WithMaxMessageLength sets the longest accepted chat message, in Unicode
// code points (default 500). The WebSocket read limit is derived from it, so
// that a maximum-length message fits however a client encodes it. Must be
// between 1 and 1<<20.
func WithMaxMessageLength(n int) Option {
	if n < 1 || n > maxMessageLenLimit {
		badOption("WithMaxMessageLength", n, "must be between 1 and 1048576")
	}
	return func(c *config) { c.maxMessageLen = n }
}

// WithOriginPatterns allows cross-origin browser connections from the
// given host patterns, matched case-insensitively with path.Match against
// the Origin header's host, or against "scheme://host" when the pattern
// contains "://". Requests without an Origin header (non-browser clients)
// and same-host requests are always allowed; everything else gets HTTP 403.
// A malformed pattern panics.
func WithOriginPatterns(patterns ...string) Option {
	for _, p := range patterns {
		if _, err := path.Match(p, ""); err != nil {
			badOption("WithOriginPatterns", p, err.Error())
		}
	}
	patterns = append([]string(nil), patterns...)
	return func(c *config) { c.origins = patterns }
}

// WithSendQueue sets how many events may wait to be written to one session
// (default 256). A session whose queue is full is dropped as too slow (close
// 1008 "too slow") so that it never delays the others. Must be at least 1.
//
// Presence notices (user_joined, user_left) have a queue of their own, four
// times as long: a join storm, such as every client of a restarted node
// coming back at once, queues a notice per join for every member faster
// than a busy server's writers run, without any client being slow.
func WithSendQueue(n int) Option {
	if n < 1 {
		badOption("WithSendQueue", n, "must be at least 1")
	}
	return func(c *config) { c.sendQueue = n }
}

// WithDuplicateUsernames allows one username to hold several sessions in a
// room at once, such as several browser tabs (default false). The user is
// then listed once in presence, user_joined is sent for the first session
// and user_left after the last. When false, a second session with a name
// already present is closed with code 1008 and reason "username taken".
func WithDuplicateUsernames(allow bool) Option {
	return func(c *config) { c.duplicates = allow }
}

// WithLogger sets the logger for connection-level events (default
// slog.Default()). nil discards the logs.
func WithLogger(l *slog.Logger) Option {
	if l == nil {
		l = slog.New(slog.DiscardHandler)
	}
	return func(c *config) { c.logger = l }
}

// WithSystemName sets the username that messages sent with
// Server.Broadcast carry (default "", which clients show as a system
// notice).
func WithSystemName(name string) Option {
	return func(c *config) { c.systemName = name }
}

// WithRoomTTL sets how long a room without sessions keeps its history
// before it is freed (default 1h). A room without sessions and without
// history is always freed at once. Zero frees every empty room at once.
// Negative panics.
func WithRoomTTL(d time.Duration) Option {
	if d < 0 {
		badOption("WithRoomTTL", d, "must not be negative")
	}
	return func(c *config) { c.roomTTL = d }
}

// WithMaxRooms caps the number of rooms held in memory (default 10,000). At
// the cap, the empty room that has been empty longest is evicted to make
// space; only when every room has members is a new room refused, with HTTP
// 503. Must be at least 1.
func WithMaxRooms(n int) Option {
	if n < 1 {
		badOption("WithMaxRooms", n, "must be at least 1")
	}
	return func(c *config) { c.maxRooms = n }
}

// WithOnMessage sets a hook that runs for every chat message from a client
// after it passed the length and rate checks, before it is stored and
// broadcast. The hook may change m.Text (for moderation); the changed text
// is not checked again. Returning an error rejects the message: nothing is
// stored, and the sender gets an error event with code "rejected" and the
// error's text. ctx is canceled when the sender's session ends. The hook
// runs on the sender's read goroutine, so a slow hook delays only that
// sender. Messages from Server.Broadcast do not pass through it.
func WithOnMessage(f func(ctx context.Context, m *Message) error) Option {
	return func(c *config) { c.onMessage = f }
}

// WithOnJoin sets a hook called when a user becomes present in a room:
// when their first session joins. Calls for one room are made in the order
// of the user_joined and user_left events, never concurrently with each
// other, and never while the Server holds a lock, so the hook may call the
// Server's methods. It should return quickly: it delays further presence
// notices of that room.
func WithOnJoin(f func(room, username string)) Option {
	return func(c *config) { c.onJoin = f }
}

// WithOnLeave sets a hook called when a user stops being present in a
// room: when their last session there ends, for any reason, including
// Shutdown. Calls follow the same rules as WithOnJoin.
func WithOnLeave(f func(room, username string)) Option {
	return func(c *config) { c.onLeave = f }
}

// WithStore sets where rooms keep their messages and draw their ids
// (default: a MemoryStore of WithHistorySize messages per room, lost when
// the process ends). Several Servers given one shared store, and brokers
// that connect them, serve one chat. WithHistorySize still bounds what a
// welcome carries. A nil store panics.
func WithStore(st Store) Option {
	if st == nil {
		badOption("WithStore", "nil", "the store must not be nil")
	}
	return func(c *config) { c.store, c.adapter = st, false }
}

// WithBroker sets how this Server exchanges events and presence with the
// other nodes of the chat (default: none, a single node). After each
// message it stores, the Server publishes it through the broker. A nil
// broker panics.
func WithBroker(b Broker) Option {
	if b == nil {
		badOption("WithBroker", "nil", "the broker must not be nil")
	}
	return func(c *config) { c.broker, c.adapter = b, false }
}

// WithAdapter sets the store and the broker to a, whose Append publishes
// each message it stores itself (see Adapter), so that the Server does not
// publish it a second time. A nil adapter panics.
func WithAdapter(a Adapter) Option {
	if a == nil {
		badOption("WithAdapter", "nil", "the adapter must not be nil")
	}
	return func(c *config) { c.store, c.broker, c.adapter = a, a, true }
}

// WithStoreTimeout bounds every call to the store and the broker (default
// 3s). A message that cannot be stored within it gets the error event
// "unavailable", and a handshake that cannot be served within it HTTP 503,
// so that nobody waits longer than this for an answer when Redis or the
// database is down. Must be positive.
func WithStoreTimeout(d time.Duration) Option {
	if d <= 0 {
		badOption("WithStoreTimeout", d, "must be positive")
	}
	return func(c *config) { c.storeTimeout = d }
}

// WithHistoryRateLimit sets each session's token bucket for history
// (scrollback) requests, each of which may be a database query: r requests
// per second on average, bursts of up to burst (default 2 and 5). Over it, a
// request gets the error event "rate_limited" with retry_after_ms.
// rate.Inf disables the limit. A negative r, or a finite r with burst < 1,
// panics.
func WithHistoryRateLimit(r rate.Limit, burst int) Option {
	if r < 0 {
		badOption("WithHistoryRateLimit", r, "rate must not be negative")
	}
	if r != rate.Inf && burst < 1 {
		badOption("WithHistoryRateLimit", burst, "burst must be at least 1")
	}
	return func(c *config) { c.historyRate, c.historyBurst = r, burst }
}

// WithMaxConns caps the connections of the Server, in their handshake or
// past it (default 0: no cap). Past the cap a handshake gets HTTP 503 with
// a JSON body and Retry-After. Negative panics.
func WithMaxConns(n int) Option {
	if n < 0 {
		badOption("WithMaxConns", n, "must not be negative")
	}
	return func(c *config) { c.maxConns = n }
}

// WithMaxConnsPerIP caps the connections from one client address (default
// 0: no cap). Past the cap a handshake gets HTTP 429 with a JSON body and
// Retry-After. Behind a reverse proxy every client has the proxy's
// address: name the proxies with WithTrustedProxies, or leave this off.
// Negative panics.
func WithMaxConnsPerIP(n int) Option {
	if n < 0 {
		badOption("WithMaxConnsPerIP", n, "must not be negative")
	}
	return func(c *config) { c.maxConnsPerIP = n }
}

// WithTrustedProxies names the reverse proxies, as CIDR prefixes such as
// "10.0.0.0/8" or single addresses, whose X-Forwarded-For or Forwarded
// header gives the client's address for WithMaxConnsPerIP (default none:
// the peer's address is the client's, and those headers are ignored,
// since any client can send them). A malformed prefix panics.
func WithTrustedProxies(cidrs ...string) Option {
	var prefixes []netip.Prefix
	for _, s := range cidrs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			addr, aerr := netip.ParseAddr(s)
			if aerr != nil {
				badOption("WithTrustedProxies", s, "not a CIDR prefix or an IP address")
			}
			p = netip.PrefixFrom(addr.Unmap(), addr.Unmap().BitLen())
		}
		prefixes = append(prefixes, p.Masked())
	}
	return func(c *config) { c.trustedProxies = prefixes }
}

// WithRateLimitPerUser keys the message rate limit of WithRateLimit by
// username instead of by session (default false): all the sessions of one
// user on this Server, in any room, such as several tabs, share one bucket.
// A bucket is dropped when its user's last session ends.
func WithRateLimitPerUser(perUser bool) Option {
	return func(c *config) { c.perUserRate = perUser }
}

// WithLeaveGrace keeps a user present for d after their last session in a
// room ends (default 0: the leave is announced at once, as the seed's
// protocol does). A user who comes back within d, on any node, as after a
// page reload or a phone switching networks, makes the room see neither a
// user_left nor a user_joined; one who does not is announced gone once,
// after d. Shutdown ends every grace at once. Negative panics.
func WithLeaveGrace(d time.Duration) Option {
	if d < 0 {
		badOption("WithLeaveGrace", d, "must not be negative")
	}
	return func(c *config) { c.leaveGrace = d }
}
