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

// An Event is one server event of PROTOCOL.md, decoded loosely so that
// tests can assert on any field: a field the event does not have is left
// at its zero value. History holds a welcome's messages, each an Event of
// type chat_message. Raw is the event's JSON as received, cut after 400
// bytes, for failure messages.
type Event struct {
	Type             string   `json:"type"`
	Room             string   `json:"room"`
	Username         string   `json:"username"`
	SessionID        string   `json:"session_id"`
	Epoch            string   `json:"epoch"`
	ActiveUsers      []string `json:"active_users"`
	History          []Event  `json:"history"`
	HistoryTruncated bool     `json:"history_truncated"`
	ID               int64    `json:"id"`
	Text             string   `json:"text"`
	Timestamp        string   `json:"timestamp"`
	ClientMsgID      string   `json:"client_msg_id"`
	Code             string   `json:"code"`
	Error            string   `json:"error"`

	Raw string `json:"-"`
}

// maxRaw bounds the text of an event that failure messages show: a welcome
// may hold a hundred messages.
const maxRaw = 400

// A Client is a WebSocket client of one Server, made by Dial, for tests
// that drive Servers as their users' browsers would. Its reader runs in
// the background and buffers every event without bound, so that the
// client answers pings and never makes a Server drop it as too slow,
// whatever the test is doing. Every wait of its methods gives up after 10
// seconds and fails the test with t.Fatalf: call them from the test's
// goroutine only. A Client is closed when the test ends.
type Client struct {
	// Name names the client in failure messages; Dial sets it to the
	// username parameter, and a test may set it to say more, such as
	// "Alice@node 2".
	Name string

	t        *testing.T
	username string
	batched  bool // chatkit.v1: presence events come without active_users
	conn     *websocket.Conn

	signal chan struct{} // has a value when events may be queued
	done   chan struct{} // closed when the reader stops
	err    error         // why the reader stopped; read after done

	mu     sync.Mutex
	events []Event
}

// Dial connects to the Server at wsURL (ws://host/path) with the query
// parameters params (username, room, since, epoch), offering subprotocol
// unless it is "" (a seed-style client, which gets one event per frame),
// and starts the reader. With chatkit.Subprotocol, the client splits each
// frame into its events, one per line. Dial fails the test if the
// handshake is refused (with the HTTP status in the message), takes more
// than 10 seconds, or selects another subprotocol. It does not wait for
// the welcome: a session that the Server accepts and then closes (such as
// 1008 "username taken") is a Client whose Closed returns at once.
func Dial(t *testing.T, wsURL string, params url.Values, subprotocol string) *Client {
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
	c := &Client{
		t:        t,
		username: params.Get("username"),
		Name:     params.Get("username"),
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
// one event per frame, so a newline in its frame is a protocol error, and
// ends the connection.
func (c *Client) readLoop() {
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
			var e Event
			if err := json.Unmarshal([]byte(line), &e); err != nil {
				c.err = fmt.Errorf("frame %q is not one JSON event: %w", data, err)
				c.conn.CloseNow()
				return
			}
			e.Raw = line
			if len(line) > maxRaw {
				e.Raw = fmt.Sprintf("%s… (%d bytes)", line[:maxRaw], len(line))
			}
			c.mu.Lock()
			c.events = append(c.events, e)
			c.mu.Unlock()
			c.wake()
		}
	}
}

func (c *Client) wake() {
	select {
	case c.signal <- struct{}{}:
	default:
	}
}

// take returns the oldest queued event, if any.
func (c *Client) take() (Event, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.events) == 0 {
		return Event{}, false
	}
	e := c.events[0]
	c.events = c.events[1:]
	return e, true
}

// Next returns the oldest buffered event, waiting for one if none is
// buffered. It fails the test if none comes within 10 seconds, or if the
// connection ends with nothing buffered (the events received before the
// end are returned first).
func (c *Client) Next() Event {
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
			c.t.Fatalf("%s: connection ended while waiting for an event: %v", c.Name, c.err)
		case <-deadline.C:
			c.t.Fatalf("%s: no event within %v", c.Name, timeout)
		}
	}
}

// NextOf skips events of other types until one of type typ arrives, and
// returns it; each event skipped is gone. It fails the test as Next does,
// with 10 seconds for each event.
func (c *Client) NextOf(typ string) Event {
	c.t.Helper()
	for {
		if e := c.Next(); e.Type == typ {
			return e
		}
	}
}

// Expect returns the next event and fails the test unless it has type typ
// (or as Next does): waiting for an event proves that nothing came before
// it.
func (c *Client) Expect(typ string) Event {
	c.t.Helper()
	e := c.Next()
	if e.Type != typ {
		c.t.Fatalf("%s: got %s, want a %s event", c.Name, e.Raw, typ)
	}
	return e
}

// Closed waits for the connection to end and returns the close code and
// reason of the Server's close frame, or -1 and the error when it ended
// without one (a cut connection, or a frame that readLoop could not
// decode). It fails the test if the connection is still open after 10
// seconds. Events received before the end stay buffered for Next.
func (c *Client) Closed() (websocket.StatusCode, string) {
	c.t.Helper()
	select {
	case <-c.done:
	case <-time.After(timeout):
		c.t.Fatalf("%s: connection still open after %v", c.Name, timeout)
	}
	var ce websocket.CloseError
	if errors.As(c.err, &ce) {
		return ce.Code, ce.Reason
	}
	return -1, c.err.Error()
}

// Close ends the connection from the client's side with a close handshake
// (1000), as a browser tab that is closed does, waiting up to 5 seconds
// for the Server's answer. Its error is of no interest, nor is a second
// call: tests assert what the other members see.
func (c *Client) Close() {
	c.conn.Close(websocket.StatusNormalClosure, "")
}

// Send writes v, encoded as JSON, as one text frame, such as
// map[string]string{"type": "typing"}. It fails the test if the write
// does not complete within 10 seconds or the connection is closed.
func (c *Client) Send(v any) {
	c.t.Helper()
	if err := c.trySend(v); err != nil {
		c.t.Fatalf("%s: %v", c.Name, err)
	}
}

// trySend is send for goroutines other than the test's, which must not
// call Fatal.
func (c *Client) trySend(v any) error {
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

func isPresence(e Event) bool { return e.Type == evUserJoined || e.Type == evUserLeft }

// nextNotPresence returns the next event that is not a user_joined or
// user_left: when a remote node's presence notice arrives is up to its
// broker, so tests about messages skip them.
func (c *Client) nextNotPresence() Event {
	c.t.Helper()
	for {
		if e := c.Next(); !isPresence(e) {
			return e
		}
	}
}

// expectPresence fails unless the next event is a user_joined or user_left
// (typ) of username, listing activeUsers if the client is seed-style and
// no list if it is chatkit.v1.
func (c *Client) expectPresence(typ, username string, activeUsers ...string) Event {
	c.t.Helper()
	e := c.Expect(typ)
	if e.Username != username || e.Room != clusterRoom {
		c.t.Fatalf("%s: got %s, want the %s of %s in %q", c.Name, e.Raw, typ, username, clusterRoom)
	}
	if c.batched && e.ActiveUsers != nil {
		c.t.Errorf("%s: chatkit.v1 client got %s, want no active_users", c.Name, e.Raw)
	}
	if !c.batched && !slices.Equal(e.ActiveUsers, activeUsers) {
		c.t.Errorf("%s: got %s, want active_users %q", c.Name, e.Raw, activeUsers)
	}
	return e
}

// waitJoined skips presence events until the client has seen the
// user_joined of every one of usernames, in any order. It proves that the
// client's node receives the other nodes' events: a user_joined comes
// from the broker, either as an event or from the Members it reads after
// an EventReset, which a broker delivers once a subscription is in place.
func (c *Client) waitJoined(usernames ...string) {
	c.t.Helper()
	missing := make(map[string]bool)
	for _, u := range usernames {
		missing[u] = true
	}
	for len(missing) > 0 {
		e := c.Next()
		switch {
		case e.Type == evUserJoined:
			delete(missing, e.Username)
		case e.Type != evUserLeft:
			c.t.Fatalf("%s: got %s while waiting for the user_joined of %q", c.Name, e.Raw, usernames)
		}
	}
}

// SendChat sends a chat_message command with text and clientMsgID (none
// if "") and returns the client's own copy of the message. It fails the
// test unless that copy comes and then its ack with the same id, as
// PROTOCOL.md's ack has it, with nothing else between but user_joined and
// user_left (which it consumes): any other event first, an error event
// included, fails it.
func (c *Client) SendChat(text, clientMsgID string) Event {
	c.t.Helper()
	c.Send(chatCommand(text, clientMsgID))
	var own *Event
	for {
		e := c.nextNotPresence()
		switch {
		case e.Type == evChat && own == nil && e.Username == c.username && e.Text == text && e.ClientMsgID == clientMsgID:
			own = &e
		case e.Type == evAck && own == nil:
			c.t.Fatalf("%s: got %s before its own copy of the message %q", c.Name, e.Raw, clientMsgID)
		case e.Type == evAck:
			if e.ID != own.ID || e.ClientMsgID != clientMsgID {
				c.t.Fatalf("%s: got %s after its own copy %s, want an ack of id %d and client_msg_id %q",
					c.Name, e.Raw, own.Raw, own.ID, clientMsgID)
			}
			return *own
		default:
			c.t.Fatalf("%s: got %s, want its own message %q and then its ack", c.Name, e.Raw, clientMsgID)
		}
	}
}
