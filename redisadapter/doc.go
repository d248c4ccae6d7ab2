// Package redisadapter keeps chatkit's rooms and presence in Redis, so that
// several chatkit Servers (nodes) in different processes serve one chat.
// New returns a chatkit.Adapter, a Store and a Broker in one:
//
//	srv := chatkit.New(chatkit.WithAdapter(redisadapter.New(client)))
//
// Give each Server its own Adapter, made with the same prefix from clients
// of the same Redis.
//
// # What is kept where
//
// With the default prefix "chatkit", room R has these keys, all with R as
// their Redis Cluster hash tag:
//
//	chatkit:{R}:meta      hash: epoch (names the id sequence), last (newest id)
//	chatkit:{R}:msgs      sorted set: the newest messages (WithHistorySize) as JSON, scored by id
//	chatkit:{R}:cmid      hash: "username\x00client_msg_id" -> id, for the kept messages only
//	chatkit:{R}:presence  hash: "username\x00session" -> "node\x00username"
//	chatkit:{R}:users     hash: username -> number of its sessions, on any node
//	chatkit:{R}:events    pub/sub channel of the room's events (JSON)
//
// and the nodes have:
//
//	chatkit:nodes             sorted set: node id -> time of its last heartbeat (ms, Redis's clock)
//	chatkit:node:<id>:rooms   set: the rooms where node <id> has had sessions
//
// WithHistoryTTL makes meta, msgs and cmid expire together, that long
// after the room's last message. Presence keys have no TTL: sessions leave
// by Leave, or by the sweep of a dead node.
//
// # What is guaranteed
//
// Each operation of the Store is one Lua script, so it is atomic in Redis:
//
//   - A room's ids are 1, 2, 3, ... with no gap and no repeat, whichever
//     nodes append, within one epoch. The epoch and the counter are fields
//     of one hash, so the counter cannot restart under an unchanged epoch:
//     if Redis loses the room (FLUSHALL, a restart without persistence, an
//     expiry) the next use makes a new epoch, and ids restart at 1 under it.
//   - Append stores the message, trims the history, and publishes the
//     message to the room's channel in the same script: a message that is
//     stored is published, and one that is not, is not.
//   - After and Before read the state and the messages in one step.
//
// Presence, also in scripts: exactly one Join of a user's sessions
// (across all nodes) reports first and publishes an EventJoined, and
// exactly one removal of them reports last and publishes an EventLeft,
// whether the removal is a Leave, the retry of a failed Leave, or a sweep.
// Each node heartbeats every WithPresenceTTL/3; a node whose heartbeat is
// older than the TTL is dead, and the first live node to notice removes
// its sessions, announcing each user who left, once, to every node. A node
// that finds it was taken for dead, or that Redis lost its presence, joins
// its sessions again.
//
// Events are at-most-once, as Redis pub/sub is: the Server fills the gaps
// from the Store, told by the EventReset that the adapter delivers when a
// room's subscription is in place and again after every reconnect.
//
// # When Redis is unreachable
//
// Calls fail with the error of their context once its deadline passes: the
// Server bounds them with WithStoreTimeout and answers "unavailable" (or
// HTTP 503 to a handshake). go-redis ends a call at its context's deadline
// only if the client has Options.ContextTimeoutEnabled; without it, at the
// client's DialTimeout or ReadTimeout (5s and 3s by default), longer than
// the Server's default 3s, so New logs a warning. An Append that fails may
// have been stored all the same; a retry with the same client_msg_id then
// returns it as a dup.
//
// Subscribe never waits for Redis: the pub/sub connection subscribes in
// the background, go-redis reconnects it and subscribes again by itself,
// and each room then gets an EventReset. A Leave that fails is retried
// with each heartbeat until it succeeds, and so is the removal of a
// session whose Join failed (it may have been recorded); a user who
// leaves that way is announced to the other nodes through Redis and to
// this node's subscribers directly.
//
// # Sentinel and Cluster
//
// Sentinel needs nothing special: pass a client from redis.NewFailoverClient.
// After a failover, a replica that had not received the newest writes may
// be missing a room's newest ids; Redis's asynchronous replication makes
// that possible, and the adapter cannot see it (the epoch survives with
// a lower counter, so ids given before the failover may be given again).
//
// On Cluster (redis.NewClusterClient), each room's keys share one slot, so
// its scripts run there; the nodes' keys may live in other slots and are
// used by separate commands. Events go through classic PUBLISH, sent from
// a script on the room's slot so that they leave one node in order, and
// Cluster forwards them to every node: one pub/sub connection per Adapter
// hears every room, at the cost of every event crossing the Cluster bus.
// Sharded pub/sub (SPUBLISH) would keep events on their shard but needs a
// connection per shard, as a go-redis PubSub is bound to one Cluster node.
package redisadapter
