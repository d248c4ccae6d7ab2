// Package pgstore keeps chatkit's rooms and messages in PostgreSQL: a
// chatkit.Store that several Servers, in one process or many, share. It
// uses the application's own pgx pool:
//
//	pool, err := pgxpool.New(ctx, "postgres://chat@db.internal/chat")
//	...
//	store, err := pgstore.Open(ctx, pool, pgstore.WithMaxAge(30*24*time.Hour))
//	...
//	defer store.Close()
//	srv := chatkit.New(chatkit.WithStore(store))
//
// Open creates or upgrades the tables (Migrate) and returns the Store
// (New). A Store is only a Store: nodes of one chat also need a
// chatkit.Broker between them, such as redisadapter's, given with
// chatkit.WithBroker.
//
// # Schema
//
// The tables live in the first schema of the pool's search_path (public,
// unless the application sets search_path in the pool's ConnConfig
// RuntimeParams to give the chat a schema of its own). Applications may
// read them, to search, moderate or export:
//
//	chatkit_rooms           room text PRIMARY KEY, epoch text NOT NULL,
//	                        last_id bigint NOT NULL, created_at timestamptz NOT NULL
//	chatkit_messages        room text REFERENCES chatkit_rooms ON DELETE CASCADE,
//	                        id bigint, username text, text text,
//	                        client_msg_id text (NULL when none),
//	                        created_at timestamptz (the message's Time),
//	                        PRIMARY KEY (room, id)
//	chatkit_schema_version  version integer PRIMARY KEY, name text, applied_at timestamptz
//
// with a unique index on chatkit_messages (room, username, client_msg_id)
// where client_msg_id is not null, and an index on created_at. The epoch
// names the room's id sequence (see chatkit.RoomState) and last_id is the
// newest id it gave. A message's epoch is its room's.
//
// Deleting messages by hand, say for moderation, is safe: ids are never
// given again, and a client simply does not get the deleted ones. Deleting
// a room's row deletes its messages, and the room's next use starts a new
// epoch at id 1, which tells clients to drop what they had. Never lower
// last_id nor change epoch: chatkit would give ids again under an
// unchanged epoch, or ids above 1 under a new one. Restoring a backup
// older than the newest messages lowers last_id too: after such a
// restore, delete the rooms' rows (and with them their messages) before
// any Server runs, so that each room starts a new epoch.
//
// # What is guaranteed
//
//   - A room's ids are 1, 2, 3, ... with no gap and no repeat, however
//     many Stores append: Append takes the id from last_id and stores
//     the message in one statement, under the room's row lock. Writers
//     of one room wait for each other; rooms never wait for each other.
//     A statement that fails changes nothing, so no id is lost.
//   - A retry with the same client_msg_id, while its message is kept,
//     returns the kept message as a dup, even when it races the first
//     attempt.
//   - After and Before read the room's state and messages in one
//     statement, one snapshot. Reading a room that has no row creates
//     it, with its epoch, as chatkit.Store requires; reading one that
//     has, writes nothing.
//   - Times keep the microsecond (timestamptz); chatkit shows
//     milliseconds.
//
// PostgreSQL text holds neither U+0000 nor invalid UTF-8, which a
// message's text and client_msg_id may bring (chatkit passes JSON's
// \u0000 through): the store replaces each NUL, and each run of invalid
// bytes, with U+FFFD, in every text field, before storing and before
// looking up. What Append returns is what was stored.
//
// # Retention
//
// By default everything is kept. WithMaxAge and WithMaxPerRoom make a
// goroutine delete older messages every minute (WithPruneInterval), at
// most 1000 rows per statement, logging what it deleted; Prune runs the
// same at once. Rooms' rows are never deleted, so a room keeps its epoch
// and the next message its next id. A pruned message's client_msg_id is
// forgotten with it.
//
// # When the database is unreachable
//
// Every call ends when its context does, with an error that wraps the
// context's (chatkit bounds calls with WithStoreTimeout and answers
// "unavailable"); pgx then closes the connection the call was using. An
// Append that fails may have been stored all the same; a retry with the
// same client_msg_id returns it as a dup.
package pgstore
