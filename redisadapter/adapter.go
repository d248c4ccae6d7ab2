package redisadapter

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/chatkit/chatkit"
	"github.com/redis/go-redis/v9"
)

// An Option configures an Adapter. Options are applied in order by New; a
// later option overrides an earlier one. An option given an invalid value
// makes New panic with a message naming the option and the value: such a
// value is a programming error, not a runtime condition.
type Option func(*config)

// config holds every setting of an Adapter. defaultConfig is the one place
// where defaults live.
type config struct {
	prefix      string
	historySize int
	historyTTL  time.Duration
	presenceTTL time.Duration
	logger      *slog.Logger
}

func defaultConfig() config {
	return config{
		prefix:      "chatkit",
		historySize: 100,
		presenceTTL: 30 * time.Second,
		logger:      slog.Default(),
	}
}

func badOption(name string, value any, why string) {
	panic(fmt.Sprintf("redisadapter: %s(%v): %s", name, value, why))
}

// WithPrefix sets the first part of every key and channel name (default
// "chatkit"), so that several chats, or a chat and other data, can share
// one Redis. Every Adapter of one chat must use the same prefix. An empty
// prefix, or one with a brace, panics: braces would change the Cluster
// hash tag that keeps each room's keys in one slot.
func WithPrefix(prefix string) Option {
	if prefix == "" || strings.ContainsAny(prefix, "{}") {
		badOption("WithPrefix", fmt.Sprintf("%q", prefix), "must be non-empty and have no brace")
	}
	return func(c *config) { c.prefix = prefix }
}

// WithHistorySize sets how many of its newest messages each room keeps in
// Redis (default 100); older ones are trimmed at each append, and so is
// the client_msg_id index entry of each, so a retry of a trimmed message
// is stored anew. Size 0 keeps no message: ids are still allocated and
// messages still published. A negative size panics.
func WithHistorySize(n int) Option {
	if n < 0 {
		badOption("WithHistorySize", n, "must not be negative")
	}
	return func(c *config) { c.historySize = n }
}

// WithHistoryTTL makes Redis forget a room d after its last message: its
// messages, id counter and epoch expire together, and the next use of the
// room starts a new epoch with id 1. The default, 0, keeps rooms until
// they are deleted by hand. A negative d, or one below a millisecond
// (Redis's resolution), panics.
func WithHistoryTTL(d time.Duration) Option {
	if d < 0 || (d > 0 && d < time.Millisecond) {
		badOption("WithHistoryTTL", d, "must be 0 or at least 1ms")
	}
	return func(c *config) { c.historyTTL = d }
}

// WithPresenceTTL sets how long a node may go without a heartbeat before
// the other nodes consider it dead and remove its sessions from presence,
// announcing each user who left (default 30s). Each node heartbeats every
// d/3. Shorter detects a crashed node sooner at the cost of more Redis
// traffic and of false deaths when a node stalls (it then joins its
// sessions again). A d below 30ms panics.
func WithPresenceTTL(d time.Duration) Option {
	if d < 30*time.Millisecond {
		badOption("WithPresenceTTL", d, "must be at least 30ms")
	}
	return func(c *config) { c.presenceTTL = d }
}

// WithLogger sets where the adapter logs what it retries in the background:
// lost pub/sub connections, failed heartbeats, sweeps of dead nodes
// (default slog.Default()). A nil logger panics.
func WithLogger(l *slog.Logger) Option {
	if l == nil {
		badOption("WithLogger", "nil", "the logger must not be nil")
	}
	return func(c *config) { c.logger = l }
}

// An Adapter keeps chatkit's rooms and presence in Redis, as a
// chatkit.Store and a chatkit.Broker in one (a chatkit.Adapter). Each
// Adapter is one node of the chat: give each Server its own, made from the
// same Redis with the same prefix. Its methods are safe for concurrent use.
type Adapter struct {
	rdb  redis.UniversalClient
	cfg  config
	node string // random id of this node, in every event it publishes
	log  *slog.Logger

	ctx    context.Context // canceled by Close: ends the background work
	cancel context.CancelFunc
	wg     sync.WaitGroup

	pubsub *redis.PubSub

	mu         sync.Mutex
	rooms      map[string]*roomSubs    // rooms this node subscribes to
	sessions   map[chatkit.Member]bool // this node's joined sessions
	retry      map[chatkit.Member]bool // sessions to remove, whose Leave or Join failed
	registered bool                    // a heartbeat has put the node in prefix:nodes
	rejoin     bool                    // a re-join of the sessions failed: try again
	ops        []subOp                 // to the subscriber goroutine, in order
	opsReady   chan struct{}           // 1-buffered: ops is not empty
	inbox      []delivery              // to the dispatcher, in order
	inboxReady chan struct{}           // 1-buffered: the inbox is not empty
	closed     bool
}

// New returns an Adapter that uses client, the application's own client:
// a plain, Sentinel failover (both *redis.Client) or Cluster
// (*redis.ClusterClient) one; a *redis.Ring panics. Give the client
// ContextTimeoutEnabled, so that calls end at their context's deadline (New
// logs a warning if not). Close the Adapter before the client; Close leaves
// the client open. New does not talk to Redis (a heartbeat does,
// in the background), so it succeeds while Redis is down. A nil client
// panics, as does an invalid option.
func New(client redis.UniversalClient, opts ...Option) *Adapter {
	if client == nil {
		panic("redisadapter: New: nil client")
	}
	if _, ok := client.(*redis.Ring); ok {
		// A Ring's pub/sub is per shard, and its shards share no slot map.
		panic("redisadapter: New: a *redis.Ring is not supported; use a plain, failover or Cluster client")
	}
	cfg := defaultConfig()
	for _, o := range opts {
		o(&cfg)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a := &Adapter{
		rdb:        client,
		cfg:        cfg,
		node:       rand.Text()[:16],
		log:        cfg.logger.With("component", "redisadapter"),
		ctx:        ctx,
		cancel:     cancel,
		opsReady:   make(chan struct{}, 1),
		rooms:      make(map[string]*roomSubs),
		sessions:   make(map[chatkit.Member]bool),
		retry:      make(map[chatkit.Member]bool),
		inboxReady: make(chan struct{}, 1),
	}
	if !contextTimeouts(client) {
		a.log.Warn("the Redis client has ContextTimeoutEnabled false: a call to an unresponsive Redis " +
			"ends at the client's dial or read timeout, not at the context's deadline (the Server's WithStoreTimeout)")
	}
	// An empty subscription: it connects on first use, and the rooms are
	// added to it and removed from it as they come and go.
	a.pubsub = client.Subscribe(ctx)
	a.wg.Add(4)
	go a.receiveLoop()
	go a.subscribeLoop()
	go a.dispatchLoop()
	go a.heartbeatLoop()
	return a
}

// contextTimeouts reports whether client ends its calls at their
// context's deadline; only its options say so.
func contextTimeouts(client redis.UniversalClient) bool {
	switch c := client.(type) {
	case *redis.Client:
		return c.Options().ContextTimeoutEnabled
	case *redis.ClusterClient:
		return c.Options().ContextTimeoutEnabled
	}
	return true // an unknown kind: say nothing
}

// Close stops the adapter's background work (heartbeats, sweeps, retries
// of failed Leaves, the pub/sub receiver) and closes its pub/sub
// Ping reports whether Redis answers within ctx, for chatkit's
// Server.Ready (a readiness probe).
func (a *Adapter) Ping(ctx context.Context) error { return a.rdb.Ping(ctx).Err() }

// connection, then returns nil. It does not close the client given to New,
// nor Leave this node's sessions: a node that closes without leaving is
// swept by the other nodes after the presence TTL, as if it had crashed.
// Calls after Close fail or do nothing; Close may be called more than once.
func (a *Adapter) Close() error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil
	}
	a.closed = true
	a.mu.Unlock()
	a.cancel()
	a.pubsub.Close() // ends a Receive that waits on the network
	a.wg.Wait()
	return nil
}

// Keys. Every key of a room has the room's name as its hash tag, so that
// a room's script runs on one Redis Cluster slot.

func (a *Adapter) roomKey(room, kind string) string {
	return a.cfg.prefix + ":{" + room + "}:" + kind
}

func (a *Adapter) channel(room string) string { return a.roomKey(room, "events") }

// roomOfChannel is the inverse of channel.
func (a *Adapter) roomOfChannel(ch string) (string, bool) {
	rest, ok := strings.CutPrefix(ch, a.cfg.prefix+":{")
	if !ok {
		return "", false
	}
	return strings.CutSuffix(rest, "}:events")
}

func (a *Adapter) nodesKey() string { return a.cfg.prefix + ":nodes" }

func (a *Adapter) nodeRoomsKey(node string) string {
	return a.cfg.prefix + ":node:" + node + ":rooms"
}

var _ chatkit.Adapter = (*Adapter)(nil)
