package redisadapter

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/chatkit/chatkit"
	"github.com/redis/go-redis/v9"
)

// storedMsg is a message as it is kept in the room's sorted set and sent
// in an EventMessage. The room is the key's; the epoch is the room's (a
// sorted set outlives no epoch: a new epoch starts with it emptied). The
// time is a string (RFC 3339 with nanoseconds), which Lua never has to
// turn into a number.
type storedMsg struct {
	ID          int64     `json:"id"`
	Username    string    `json:"u"`
	Text        string    `json:"t"`
	ClientMsgID string    `json:"c,omitempty"`
	Time        time.Time `json:"ts"`
}

// tail returns the JSON of m after `{"id":0,`: the Append script puts the
// id it allocates in front. Building the rest in Go spares Lua's cjson,
// which would print numbers with 14 digits.
func (m storedMsg) tail() string {
	m.ID = 0
	b, err := json.Marshal(m)
	if err != nil { // only a Time beyond year 9999
		m.Time = time.Time{}
		b, _ = json.Marshal(m)
	}
	return strings.TrimPrefix(string(b), `{"id":0,`)
}

func (m storedMsg) message(room, epoch string) chatkit.Message {
	return chatkit.Message{ID: m.ID, Room: room, Username: m.Username, Text: m.Text,
		ClientMsgID: m.ClientMsgID, Epoch: epoch, Time: m.Time}
}

func decodeMsg(s, room, epoch string) (chatkit.Message, error) {
	var m storedMsg
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		return chatkit.Message{}, fmt.Errorf("redisadapter: bad message in room %q: %w", room, err)
	}
	return m.message(room, epoch), nil
}

// asJSON returns s as a JSON round trip gives it back: the Append script
// finds the client_msg_id entry of a trimmed message from its decoded JSON,
// which has each byte of invalid UTF-8 replaced, so the entry is written
// under the same name.
func asJSON(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	b, _ := json.Marshal(s)
	var r string
	json.Unmarshal(b, &r)
	return r
}

// newEpoch returns a random epoch name: 12 characters of base32, like
// chatkit's own.
func newEpoch() string { return rand.Text()[:12] }

// luaEpoch is the start of every store script: KEYS[1..3] are the room's
// meta, msgs and cmid; ARGV[1] is an epoch candidate and ARGV[2] the
// history TTL in ms (0: none). The epoch and the id counter live in one
// hash, so the counter can never restart under an unchanged epoch; and
// messages or cmid entries left from a lost epoch (say only meta was
// evicted) are dropped, so that no old message shares an id with a new one.
const luaEpoch = `
local ttl = tonumber(ARGV[2])
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2], KEYS[3])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'last', 0)
  if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
end
`

// appendScript: ARGV[3] username, ARGV[4] the cmid field ("" for none),
// ARGV[5] the message JSON after its id, ARGV[6] history size, ARGV[7]
// the channel, ARGV[8] the event JSON up to its epoch. Returns
// {dup, epoch, id or the earlier message}.
var appendScript = redis.NewScript(luaEpoch + `
local field = ARGV[4]
if field ~= '' then
  local old = redis.call('HGET', KEYS[3], field)
  if old then
    local m = redis.call('ZRANGEBYSCORE', KEYS[2], old, old)
    if m[1] then return {1, epoch, m[1]} end
  end
end
local id = redis.call('HINCRBY', KEYS[1], 'last', 1)
local msg = '{"id":' .. id .. ',' .. ARGV[5]
local size = tonumber(ARGV[6])
if size > 0 then
  redis.call('ZADD', KEYS[2], id, msg)
  if field ~= '' then redis.call('HSET', KEYS[3], field, id) end
  local n = redis.call('ZCARD', KEYS[2])
  if n > size then
    for _, s in ipairs(redis.call('ZRANGE', KEYS[2], 0, n - size - 1)) do
      local t = cjson.decode(s)
      if t.c then redis.call('HDEL', KEYS[3], t.u .. '\0' .. t.c) end
    end
    redis.call('ZREMRANGEBYRANK', KEYS[2], 0, n - size - 1)
  end
end
if ttl > 0 then
  for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ttl) end
end
redis.call('PUBLISH', ARGV[7], ARGV[8] .. '"epoch":"' .. epoch .. '","message":' .. msg .. '}')
return {0, epoch, id}
`)

// readScript: ARGV[3] "after" or "before", ARGV[4] the id after or before
// which (0 with "before": the newest), ARGV[5] the limit, read in one step
// with the state they belong to. Returns
// {epoch, last, oldest, messages}.
var readScript = redis.NewScript(luaEpoch + `
local last = tonumber(redis.call('HGET', KEYS[1], 'last'))
local oldest = 0
local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if first[2] then oldest = tonumber(first[2]) end
local n = tonumber(ARGV[5])
local msgs = {}
if n > 0 then
  if ARGV[3] == 'after' then
    msgs = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[4], '+inf', 'LIMIT', 0, n)
  elseif ARGV[4] == '0' then
    msgs = redis.call('ZRANGE', KEYS[2], -n, -1)
  else
    local newest = redis.call('ZREVRANGEBYSCORE', KEYS[2], '(' .. ARGV[4], '-inf', 'LIMIT', 0, n)
    for i = #newest, 1, -1 do msgs[#msgs + 1] = newest[i] end
  end
end
return {epoch, last, oldest, msgs}
`)

func (a *Adapter) storeKeys(room string) []string {
	return []string{a.roomKey(room, "meta"), a.roomKey(room, "msgs"), a.roomKey(room, "cmid")}
}

func (a *Adapter) ttlMillis() int64 { return a.cfg.historyTTL.Milliseconds() }

// Append implements chatkit.Store. It gives m the room's next id, keeps it
// among the room's newest messages and publishes it to the room's other
// nodes, all in one script, so a stored message is always published and
// ids are gap-free across every node. m.ID and m.Epoch are ignored. On an
// error the message may or may not have been stored (see chatkit.Store);
// the error of a call that Redis did not answer in time is the context's.
func (a *Adapter) Append(ctx context.Context, m chatkit.Message) (chatkit.Message, bool, error) {
	m.Username, m.ClientMsgID = asJSON(m.Username), asJSON(m.ClientMsgID)
	field := ""
	if m.ClientMsgID != "" {
		field = m.Username + "\x00" + m.ClientMsgID
	}
	sm := storedMsg{Username: m.Username, Text: m.Text, ClientMsgID: m.ClientMsgID, Time: m.Time}
	head, _ := json.Marshal(wireEvent{Node: a.node, Kind: chatkit.EventMessage, Room: m.Room})
	// `{"node":...,"room":"..."}` becomes `{"node":...,"room":"...",` and the
	// script adds the epoch and the message.
	eventHead := string(head[:len(head)-1]) + ","
	res, err := appendScript.Run(ctx, a.rdb, a.storeKeys(m.Room),
		newEpoch(), a.ttlMillis(), m.Username, field, sm.tail(), a.cfg.historySize,
		a.channel(m.Room), eventHead).Slice()
	if err != nil {
		return chatkit.Message{}, false, err
	}
	if len(res) != 3 {
		return chatkit.Message{}, false, fmt.Errorf("redisadapter: Append: unexpected reply %v", res)
	}
	epoch, _ := res[1].(string)
	if res[0] == int64(1) {
		s, _ := res[2].(string)
		earlier, err := decodeMsg(s, m.Room, epoch)
		return earlier, true, err
	}
	m.ID, _ = res[2].(int64)
	m.Epoch = epoch
	return m, false, nil
}

// After implements chatkit.Store: the room's state and at most limit kept
// messages with an id above after, oldest first, read in one step. A limit
// of 0 or less returns no message. A room that Redis does not know gets
// its epoch now, so that readers and writers agree on it.
func (a *Adapter) After(ctx context.Context, room string, after int64, limit int) (chatkit.RoomState, []chatkit.Message, error) {
	return a.read(ctx, room, "after", after, limit)
}

// Before implements chatkit.Store: the room's state and, oldest first, its
// newest kept messages with an id below before (the newest of all when
// before is 0 or less), at most limit, read in one step. A limit of 0 or
// less returns no message. Like After, it gives an unknown room its epoch.
func (a *Adapter) Before(ctx context.Context, room string, before int64, limit int) (chatkit.RoomState, []chatkit.Message, error) {
	return a.read(ctx, room, "before", max(before, 0), limit)
}

func (a *Adapter) read(ctx context.Context, room, mode string, after int64, n int) (chatkit.RoomState, []chatkit.Message, error) {
	res, err := readScript.Run(ctx, a.rdb, a.storeKeys(room),
		newEpoch(), a.ttlMillis(), mode, strconv.FormatInt(after, 10), n).Slice()
	if err != nil {
		return chatkit.RoomState{}, nil, err
	}
	if len(res) != 4 {
		return chatkit.RoomState{}, nil, fmt.Errorf("redisadapter: unexpected reply %v", res)
	}
	var st chatkit.RoomState
	st.Epoch, _ = res[0].(string)
	st.LastID, _ = res[1].(int64)
	st.OldestID, _ = res[2].(int64)
	raw, _ := res[3].([]any)
	msgs := make([]chatkit.Message, 0, len(raw))
	for _, r := range raw {
		s, _ := r.(string)
		m, err := decodeMsg(s, room, st.Epoch)
		if err != nil {
			return chatkit.RoomState{}, nil, err
		}
		msgs = append(msgs, m)
	}
	return st, msgs, nil
}
