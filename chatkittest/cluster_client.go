package chatkittest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatkit/chatkit"
	"github.com/coder/websocket"
)

// The two kinds of client a Server serves: seed-style clients offer no
// subprotocol and get one event per frame, with active_users in every
// user_joined and user_left; chatkit.v1 clients may get several events per
// frame, separated by newlines, and presence events without the list.
const (
	seedStyle = ""
	v1Style   = chatkit.Subprotocol
)

// event is any server event of PROTOCOL.md, decoded loosely so that tests
// can assert on any field.
type event struct {
	Type             string   `json:"type"`
	Room             string   `json:"room"`
	Username         string   `json:"username"`
	SessionID        string   `json:"session_id"`
	Epoch            string   `json:"epoch"`
	ActiveUsers      []string `json:"active_users"`
	History          []event  `json:"history"`
	HistoryTruncated bool     `json:"history_truncated"`
	ID               int64    `json:"id"`
	Text             string   `json:"text"`
	Timestamp        string   `json:"timestamp"`
	ClientMsgID      string   `json:"client_msg_id"`
	Code             string   `json:"code"`
	Error            string   `json:"error"`

	raw string
}

// maxRaw bounds the text of an event that failure messages show: a welcome
// may hold a hundred messages.
const maxRaw = 400

// A client is a WebSocket client of one node. Its reader runs in the
// background and queues every event without bound, so that the client
// answers pings and never makes a Server drop it as too slow, whatever the
// test is doing.
type client struct {
	t        *testing.T
	username string
	name     string // username@node, for failure messages
	batched  bool   // chatkit.v1: presence events come without active_users
	conn     *websocket.Conn

	signal chan struct{} // has a value when events may be queued
	done   chan struct{} // closed when the reader stops
	err    error         // why the reader stopped; read after done

	mu     sync.Mutex
	events []event
}

// dial connects to a node's WebSocket URL with the given query parameters,
// offering subprotocol unless it is seedStyle, and starts the reader. It
// does not wait for the welcome.
func dial(t *testing.T, wsURL string, params url.Values, subprotocol string) *client {
	t.Helper()
	var opts websocket.DialOptions
	if subprotocol != seedStyle {
		opts.Subprotocols = []string{subprotocol}
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	conn, resp, err := websocket.Dial(ctx, wsURL+"?"+params.Encode(), &opts)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dial %s?%s: %v (HTTP %d)", wsURL, params.Encode(), err, status)
	}
	if got := conn.Subprotocol(); got != subprotocol {
		conn.CloseNow()
		t.Fatalf("dial %s?%s: subprotocol %q, want %q", wsURL, params.Encode(), got, subprotocol)
	}
	conn.SetReadLimit(-1)
	c := &client{
		t:        t,
		username: params.Get("username"),
		name:     params.Get("username"),
		batched:  subprotocol == v1Style,
		conn:     conn,
		signal:   make(chan struct{}, 1),
		done:     make(chan struct{}),
	}
	go c.readLoop()
	t.Cleanup(func() {
		c.conn.CloseNow()
		<-c.done
	})
	return c
}

// readLoop splits frames into events: a seed-style client must get exactly
// one event per frame, so a newline in its frame is a protocol error.
func (c *client) readLoop() {
	defer close(c.done)
	defer c.wake()
	for {
		_, data, err := c.conn.Read(context.Background())
		if err != nil {
			c.err = err
			return
		}
		lines := []string{string(data)}
		if c.batched {
			lines = strings.Split(string(data), "\n")
		}
		for _, line := range lines {
			var e event
			if err := json.Unmarshal([]byte(line), &e); err != nil {
				c.err = fmt.Errorf("frame %q is not one JSON event: %w", data, err)
				c.conn.CloseNow()
				return
			}
			e.raw = line
			if len(line) > maxRaw {
				e.raw = fmt.Sprintf("%s… (%d bytes)", line[:maxRaw], len(line))
			}
			c.mu.Lock()
			c.events = append(c.events, e)
			c.mu.Unlock()
			c.wake()
		}
	}
}

func (c *client) wake() {
	select {
	case c.signal <- struct{}{}:
	default:
	}
}

// take returns the oldest queued event, if any.
func (c *client) take() (event, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.events) == 0 {
		return event{}, false
	}
	e := c.events[0]
	c.events = c.events[1:]
	return e, true
}

// next returns the next event, failing the test if none comes within the
// timeout or the connection ends first.
func (c *client) next() event {
	c.t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		if e, ok := c.take(); ok {
			return e
		}
		select {
		case <-c.signal:
		case <-c.done:
			if e, ok := c.take(); ok {
				return e
			}
			c.t.Fatalf("%s: connection ended while waiting for an event: %v", c.name, c.err)
		case <-deadline.C:
			c.t.Fatalf("%s: no event within %v", c.name, timeout)
		}
	}
}

// nextOf skips events of other types until one of type typ arrives.
func (c *client) nextOf(typ string) event {
	c.t.Helper()
	for {
		if e := c.next(); e.Type == typ {
			return e
		}
	}
}

// expect returns the next event and fails unless it has type typ: waiting
// for an event proves that nothing came before it.
func (c *client) expect(typ string) event {
	c.t.Helper()
	e := c.next()
	if e.Type != typ {
		c.t.Fatalf("%s: got %s, want a %s event", c.name, e.raw, typ)
	}
	return e
}

// closed waits for the server to end the connection and returns the close
// code and reason (-1 and the error when it ended without a close frame).
// Events received before the close stay queued.
func (c *client) closed() (websocket.StatusCode, string) {
	c.t.Helper()
	select {
	case <-c.done:
	case <-time.After(timeout):
		c.t.Fatalf("%s: connection still open after %v", c.name, timeout)
	}
	var ce websocket.CloseError
	if errors.As(c.err, &ce) {
		return ce.Code, ce.Reason
	}
	return -1, c.err.Error()
}

// close ends the connection from the client's side, with a close
// handshake, as a browser tab that is closed does. Its error is of no
// interest: the tests assert what the other members see.
func (c *client) close() {
	c.conn.Close(websocket.StatusNormalClosure, "")
}

// send writes v as one JSON text frame.
func (c *client) send(v any) {
	c.t.Helper()
	if err := c.trySend(v); err != nil {
		c.t.Fatalf("%s: %v", c.name, err)
	}
}

// trySend is send for goroutines other than the test's, which must not
// call Fatal.
func (c *client) trySend(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := c.conn.Write(ctx, websocket.MessageText, b); err != nil {
		return fmt.Errorf("write %s: %w", b, err)
	}
	return nil
}

// chatCommand is a chat_message command of PROTOCOL.md.
func chatCommand(text, clientMsgID string) map[string]string {
	return map[string]string{"type": "chat_message", "text": text, "client_msg_id": clientMsgID}
}

var typingCommand = map[string]string{"type": "typing"}

// Event types of PROTOCOL.md.
const (
	evWelcome    = "welcome"
	evUserJoined = "user_joined"
	evUserLeft   = "user_left"
	evChat       = "chat_message"
	evAck        = "ack"
	evTyping     = "typing"
)

func isPresence(e event) bool { return e.Type == evUserJoined || e.Type == evUserLeft }

// nextNotPresence returns the next event that is not a user_joined or
// user_left: when a remote node's presence notice arrives is up to its
// broker, so tests about messages skip them.
func (c *client) nextNotPresence() event {
	c.t.Helper()
	for {
		if e := c.next(); !isPresence(e) {
			return e
		}
	}
}

// expectPresence fails unless the next event is a user_joined or user_left
// (typ) of username, listing activeUsers if the client is seed-style and
// no list if it is chatkit.v1.
func (c *client) expectPresence(typ, username string, activeUsers ...string) event {
	c.t.Helper()
	e := c.expect(typ)
	if e.Username != username || e.Room != clusterRoom {
		c.t.Fatalf("%s: got %s, want the %s of %s in %q", c.name, e.raw, typ, username, clusterRoom)
	}
	if c.batched && e.ActiveUsers != nil {
		c.t.Errorf("%s: chatkit.v1 client got %s, want no active_users", c.name, e.raw)
	}
	if !c.batched && !slices.Equal(e.ActiveUsers, activeUsers) {
		c.t.Errorf("%s: got %s, want active_users %q", c.name, e.raw, activeUsers)
	}
	return e
}

// waitJoined skips presence events until the client has seen the
// user_joined of every one of usernames, in any order. It proves that the
// client's node receives the other nodes' events: a user_joined comes
// from the broker, either as an event or from the Members it reads after
// an EventReset, which a broker delivers once a subscription is in place.
func (c *client) waitJoined(usernames ...string) {
	c.t.Helper()
	missing := make(map[string]bool)
	for _, u := range usernames {
		missing[u] = true
	}
	for len(missing) > 0 {
		e := c.next()
		switch {
		case e.Type == evUserJoined:
			delete(missing, e.Username)
		case e.Type != evUserLeft:
			c.t.Fatalf("%s: got %s while waiting for the user_joined of %q", c.name, e.raw, usernames)
		}
	}
}

// sendChat sends a chat_message command and returns the client's own copy
// of the message, failing unless the copy comes and then its ack with the
// same id, as PROTOCOL.md's ack has it. Presence events may come between.
func (c *client) sendChat(text, clientMsgID string) event {
	c.t.Helper()
	c.send(chatCommand(text, clientMsgID))
	var own *event
	for {
		e := c.nextNotPresence()
		switch {
		case e.Type == evChat && own == nil && e.Username == c.username && e.Text == text && e.ClientMsgID == clientMsgID:
			own = &e
		case e.Type == evAck && own == nil:
			c.t.Fatalf("%s: got %s before its own copy of the message %q", c.name, e.raw, clientMsgID)
		case e.Type == evAck:
			if e.ID != own.ID || e.ClientMsgID != clientMsgID {
				c.t.Fatalf("%s: got %s after its own copy %s, want an ack of id %d and client_msg_id %q",
					c.name, e.raw, own.raw, own.ID, clientMsgID)
			}
			return *own
		default:
			c.t.Fatalf("%s: got %s, want its own message %q and then its ack", c.name, e.raw, clientMsgID)
		}
	}
}
