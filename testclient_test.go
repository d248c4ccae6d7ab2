package chatkit

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// waitTimeout bounds every wait for an event; tests never sleep.
const waitTimeout = 10 * time.Second

// event is any server event, decoded loosely so tests can assert on it.
type event struct {
	Type             string         `json:"type"`
	Room             string         `json:"room"`
	Username         string         `json:"username"`
	SessionID        string         `json:"session_id"`
	Epoch            string         `json:"epoch"`
	ActiveUsers      []string       `json:"active_users"`
	History          []event        `json:"history"`
	HistoryTruncated bool           `json:"history_truncated"`
	Limits           map[string]any `json:"limits"`
	ID               int64          `json:"id"`
	Text             string         `json:"text"`
	Timestamp        string         `json:"timestamp"`
	ClientMsgID      string         `json:"client_msg_id"`
	Code             string         `json:"code"`
	Error            string         `json:"error"`
	RetryAfterMS     int64          `json:"retry_after_ms"`
	RequestID        string         `json:"request_id"`
	Messages         []event        `json:"messages"`
	HasMore          bool           `json:"has_more"`

	raw string
}

// testServer serves a new Server over httptest and shuts both down when the
// test ends.
func testServer(t *testing.T, opts ...Option) (*Server, string) {
	t.Helper()
	chat := New(append([]Option{WithLogger(nil)}, opts...)...)
	ts := httptest.NewServer(chat)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		if err := chat.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		ts.Close()
	})
	return chat, "ws" + strings.TrimPrefix(ts.URL, "http")
}

// client is a test WebSocket client whose background reader collects every
// event, so that it answers pings like a live browser.
type client struct {
	t      *testing.T
	conn   *websocket.Conn
	events chan event
	done   chan struct{} // closed when the reader stops
	err    error         // why the reader stopped; read after done
}

func query(kv ...string) string {
	q := url.Values{}
	for i := 0; i+1 < len(kv); i += 2 {
		q.Set(kv[i], kv[i+1])
	}
	return "?" + q.Encode()
}

// dialRaw opens a connection that nobody reads from.
func dialRaw(t *testing.T, base, q string, subprotocols ...string) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	conn, resp, err := websocket.Dial(ctx, base+q, &websocket.DialOptions{Subprotocols: subprotocols})
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dial %s: %v (HTTP %d)", q, err, status)
	}
	conn.SetReadLimit(-1)
	t.Cleanup(func() { conn.CloseNow() })
	return conn
}

// dial connects and starts the background reader; it does not wait for the
// welcome.
func dial(t *testing.T, base, q string, subprotocols ...string) *client {
	t.Helper()
	c := &client{t: t, conn: dialRaw(t, base, q, subprotocols...), events: make(chan event, 100000), done: make(chan struct{})}
	go c.readLoop()
	t.Cleanup(func() {
		c.conn.CloseNow()
		<-c.done
	})
	return c
}

// join connects as username to room and returns the client and its welcome.
func join(t *testing.T, base, username, room string, extra ...string) (*client, event) {
	t.Helper()
	c := dial(t, base, query(append([]string{"username", username, "room", room}, extra...)...))
	w := c.next()
	if w.Type != typeWelcome {
		t.Fatalf("%s: first event is %s, want welcome", username, w.raw)
	}
	return c, w
}

func (c *client) readLoop() {
	defer close(c.done)
	for {
		_, data, err := c.conn.Read(context.Background())
		if err != nil {
			c.err = err
			return
		}
		for line := range strings.SplitSeq(string(data), "\n") {
			var e event
			if err := json.Unmarshal([]byte(line), &e); err != nil {
				c.err = err
				return
			}
			e.raw = line
			c.events <- e
		}
	}
}

// next returns the next event, failing the test after waitTimeout.
func (c *client) next() event {
	c.t.Helper()
	select {
	case e := <-c.events:
		return e
	case <-c.done:
		select {
		case e := <-c.events:
			return e
		default:
		}
		c.t.Fatalf("connection ended while waiting for an event: %v", c.err)
	case <-time.After(waitTimeout):
		c.t.Fatalf("no event within %v", waitTimeout)
	}
	return event{}
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

// expect returns the next event and fails unless it has type typ.
func (c *client) expect(typ string) event {
	c.t.Helper()
	e := c.next()
	if e.Type != typ {
		c.t.Fatalf("got %s, want a %s event", e.raw, typ)
	}
	return e
}

// closed waits for the connection to end and returns its close status and
// reason; events still buffered are discarded.
func (c *client) closed() (websocket.StatusCode, string) {
	c.t.Helper()
	select {
	case <-c.done:
	case <-time.After(waitTimeout):
		c.t.Fatalf("connection still open after %v", waitTimeout)
	}
	var ce websocket.CloseError
	if errors.As(c.err, &ce) {
		return ce.Code, ce.Reason
	}
	return -1, c.err.Error()
}

// rest waits for the connection to end and returns the events it had not
// yet returned.
func (c *client) rest() []event {
	c.t.Helper()
	var events []event
	for {
		select {
		case e := <-c.events:
			events = append(events, e)
			continue
		case <-c.done:
		case <-time.After(waitTimeout):
			c.t.Fatalf("connection still open after %v", waitTimeout)
		}
		for {
			select {
			case e := <-c.events:
				events = append(events, e)
			default:
				return events
			}
		}
	}
}

func (c *client) send(text string) {
	c.t.Helper()
	c.write(websocket.MessageText, []byte(text))
}

func (c *client) sendJSON(v any) {
	c.t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		c.t.Fatal(err)
	}
	c.write(websocket.MessageText, b)
}

func (c *client) write(typ websocket.MessageType, data []byte) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := c.conn.Write(ctx, typ, data); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

func chatCmd(text, clientMsgID string) map[string]string {
	return map[string]string{"type": "chat_message", "text": text, "client_msg_id": clientMsgID}
}

// handshake performs a raw HTTP request against the handler and returns
// the status and the decoded "error" field of the body.
func handshake(t *testing.T, h http.Handler, method, target string, header http.Header) (int, string) {
	t.Helper()
	req := httptest.NewRequest(method, target, nil)
	for k, v := range header {
		req.Header[k] = v
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	var body struct {
		Error string `json:"error"`
	}
	if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("%s %s: Content-Type %q, want JSON", method, target, ct)
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil || body.Error == "" {
		t.Errorf("%s %s: body %q is not {\"error\": ...}", method, target, rec.Body.String())
	}
	return rec.Code, body.Error
}

func upgradeHeader() http.Header {
	return http.Header{
		"Connection":            {"Upgrade"},
		"Upgrade":               {"websocket"},
		"Sec-Websocket-Version": {"13"},
		"Sec-Websocket-Key":     {"dGhlIHNhbXBsZSBub25jZQ=="},
	}
}

func newHTTPTestServer(t *testing.T, h http.Handler) *httptest.Server {
	ts := httptest.NewServer(h)
	t.Cleanup(ts.Close)
	return ts
}

func httptestGet(h http.Handler, header http.Header) *httptest.ResponseRecorder {
	req := httptest.NewRequest("GET", "/chatkit.js", nil)
	for k, v := range header {
		req.Header[k] = v
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}
