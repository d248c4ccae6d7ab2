-- The rooms and their id sequences. A room's row is never deleted by
-- pgstore; deleting it by hand deletes its messages too (ON DELETE
-- CASCADE), and the room's next use starts a new epoch with id 1.
CREATE TABLE chatkit_rooms (
    room       text        PRIMARY KEY,
    epoch      text        NOT NULL,
    last_id    bigint      NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The kept messages. created_at is the message's Time, to the microsecond.
CREATE TABLE chatkit_messages (
    room          text        NOT NULL REFERENCES chatkit_rooms (room) ON DELETE CASCADE,
    id            bigint      NOT NULL,
    username      text        NOT NULL,
    text          text        NOT NULL,
    client_msg_id text,
    created_at    timestamptz NOT NULL,
    PRIMARY KEY (room, id)
);

-- Makes one of two concurrent retries of a message a dup, never a second copy.
CREATE UNIQUE INDEX chatkit_messages_client_msg_id
    ON chatkit_messages (room, username, client_msg_id)
    WHERE client_msg_id IS NOT NULL;

-- For WithMaxAge, and for applications that look messages up by time.
CREATE INDEX chatkit_messages_created_at ON chatkit_messages (created_at);
