package chatkit

import (
	"bytes"
	"encoding/json"
	"errors"
	"time"

	"github.com/coder/websocket"
)

// A Message is one chat message of a room.
type Message struct {
	// ID is the message's number in its room: 1 for the first stored
	// message, growing by exactly 1 per stored message. It is zero while the
	// message is being checked by the WithOnMessage hook.
	ID int64
	// Room is the name of the room the message was sent to.
	Room string
	// Username is the sender's name; empty (or the WithSystemName value)
	// for Server.Broadcast.
	Username string
	// Text is the message text, as sent or as rewritten by the hook.
	Text string
	// ClientMsgID is the sender's own id for the message, if it gave one.
	ClientMsgID string
	// Epoch names the room's id sequence that ID belongs to (see
	// RoomState); set by the Store.
	Epoch string
	// Time is when the server received the message.
	Time time.Time
}

// Event types, the value of "type" in every server frame.
const (
	typeWelcome    = "welcome"
	typeUserJoined = "user_joined"
	typeUserLeft   = "user_left"
	typeChat       = "chat_message"
	typeAck        = "ack"
	typeTyping     = "typing"
	typeError      = "error"
	typeHistory    = "history"
)

// Error codes of the error event.
const (
	codeTooLong     = "message_too_long"
	codeEmpty       = "empty_message"
	codeRateLimited = "rate_limited"
	codeBadRequest  = "bad_request"
	codeRejected    = "rejected"
	codeUnavailable = "unavailable"
)

// Close codes and reasons. Reasons are constants: a close reason must stay
// under 123 bytes, so user data never goes into one.
const (
	closeUsernameTaken = "username taken"
	closeTooSlow       = "too slow"
	closeShutdown      = "server shutting down"
	closeIdle          = "idle timeout"
	closeDisconnected  = "disconnected"
	closeBinary        = "binary frames are not supported"
	closeInvalidUTF8   = "invalid UTF-8"
	closeUnavailable   = "try again later"
	closeFlooding      = "rate limit exceeded"
	closeBadCommands   = "too many bad commands"
)

const (
	statusPolicy        = websocket.StatusPolicyViolation         // 1008
	statusGoingAway     = websocket.StatusGoingAway               // 1001
	statusUnsupported   = websocket.StatusUnsupportedData         // 1003
	statusInvalidData   = websocket.StatusInvalidFramePayloadData // 1007
	statusTryAgainLater = websocket.StatusTryAgainLater           // 1013
)

// maxClientMsgID is the longest accepted client_msg_id, in characters.
const maxClientMsgID = 64

// timeLayout is RFC 3339 in UTC with exactly three fractional digits.
// time.RFC3339Nano would drop trailing zeros and vary in length.
const timeLayout = "2006-01-02T15:04:05.000Z"

func formatTime(t time.Time) string { return t.UTC().Format(timeLayout) }

type chatEvent struct {
	Type        string `json:"type"`
	Room        string `json:"room"`
	ID          int64  `json:"id"`
	Username    string `json:"username"`
	Text        string `json:"text"`
	Timestamp   string `json:"timestamp"`
	ClientMsgID string `json:"client_msg_id,omitempty"`
}

func newChatEvent(m Message) chatEvent {
	return chatEvent{
		Type:        typeChat,
		Room:        m.Room,
		ID:          m.ID,
		Username:    m.Username,
		Text:        m.Text,
		Timestamp:   formatTime(m.Time),
		ClientMsgID: m.ClientMsgID,
	}
}

type presenceEvent struct {
	Type        string   `json:"type"`
	Room        string   `json:"room"`
	Username    string   `json:"username"`
	ActiveUsers []string `json:"active_users,omitempty"` // nil for chatkit.v1 clients
	Timestamp   string   `json:"timestamp"`
}

type limits struct {
	MaxMessageLength int     `json:"max_message_length"`
	Rate             float64 `json:"rate"` // 0: unlimited
	Burst            int     `json:"burst"`
	HistorySize      int     `json:"history_size"`
	PingIntervalMS   int64   `json:"ping_interval_ms"`
}

type welcomeEvent struct {
	Type             string      `json:"type"`
	Room             string      `json:"room"`
	Username         string      `json:"username"`
	SessionID        string      `json:"session_id"`
	Epoch            string      `json:"epoch"`
	ActiveUsers      []string    `json:"active_users"`
	History          []chatEvent `json:"history"`
	HistoryTruncated bool        `json:"history_truncated"`
	Limits           limits      `json:"limits"`
}

type ackEvent struct {
	Type        string `json:"type"`
	ClientMsgID string `json:"client_msg_id,omitempty"`
	ID          int64  `json:"id"`
}

type typingEvent struct {
	Type     string `json:"type"`
	Room     string `json:"room"`
	Username string `json:"username"`
}

type errorEvent struct {
	Type         string `json:"type"`
	Code         string `json:"code"`
	Error        string `json:"error"`
	ClientMsgID  string `json:"client_msg_id,omitempty"`
	RequestID    string `json:"request_id,omitempty"`
	RetryAfterMS int64  `json:"retry_after_ms,omitempty"`
}

// historyEvent answers a history command: one page of scrollback.
type historyEvent struct {
	Type      string      `json:"type"`
	Room      string      `json:"room"`
	Epoch     string      `json:"epoch"`
	RequestID string      `json:"request_id,omitempty"`
	Messages  []chatEvent `json:"messages"`
	HasMore   bool        `json:"has_more"`
}

// encode marshals one event into a frame. Events are plain structs of
// strings and numbers, so encoding cannot fail; HTML escaping is off
// because the frames are JSON for programs, not HTML.
func encode(v any) []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		panic("chatkit: encoding event: " + err.Error())
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n"))
}

// command is a client frame that is a JSON object.
type command struct {
	Type        string `json:"type"`
	Text        string `json:"text"`
	ClientMsgID string `json:"client_msg_id"`

	// Fields of a history command; nil when absent.
	Before    *int64 `json:"before"`
	Limit     *int64 `json:"limit"`
	RequestID string `json:"request_id"`

	// raw marks a frame that was plain text, not a JSON command. Raw
	// messages get no ack: their senders (the seed's clients) know no acks.
	raw bool
}

var errBadCommand = errors.New("bad command")

// decodeFrame reads one client text frame. A frame that is a JSON object is
// a command; any other text (including text that merely starts with "{" but
// is not valid JSON) is a chat message with that text, so that the seed's
// clients and tools like websocat work unchanged. A JSON object whose fields
// have the wrong types returns errBadCommand.
func decodeFrame(data []byte) (command, error) {
	trimmed := bytes.TrimLeft(data, " \t\r\n")
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return command{Type: typeChat, Text: string(data), raw: true}, nil
	}
	var c command
	err := json.Unmarshal(data, &c)
	var syntax *json.SyntaxError
	switch {
	case err == nil:
		return c, nil
	case errors.As(err, &syntax):
		return command{Type: typeChat, Text: string(data), raw: true}, nil
	default:
		// The decoder goes on past a field of the wrong type, so the ids
		// that are there can still be echoed.
		return command{Type: c.Type, ClientMsgID: c.ClientMsgID, RequestID: c.RequestID}, errBadCommand
	}
}
