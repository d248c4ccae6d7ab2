package chatkit

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/coder/websocket"
	"go.uber.org/goleak"
	"golang.org/x/time/rate"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestHandshakeRefusals(t *testing.T) {
	authErr := func(err error) Option {
		return WithAuth(func(*http.Request) (string, error) { return "", err })
	}
	closed := New(WithLogger(nil))
	if err := closed.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	fromOther := upgradeHeader()
	fromOther.Set("Origin", "https://evil.example")
	fromAllowed := upgradeHeader()
	fromAllowed.Set("Origin", "https://app.example.com")

	tests := []struct {
		name   string
		srv    *Server
		method string
		target string
		header http.Header
		status int
		errHas string
	}{
		{"plain GET is not an upgrade", New(), "GET", "/ws?username=a", nil, http.StatusUpgradeRequired, "WebSocket"},
		{"POST", New(), "POST", "/ws?username=a", upgradeHeader(), http.StatusMethodNotAllowed, "GET"},
		{"missing username", New(), "GET", "/ws", upgradeHeader(), http.StatusBadRequest, "username"},
		{"blank username", New(), "GET", "/ws?username=%20%20", upgradeHeader(), http.StatusBadRequest, "username"},
		{"username too long", New(), "GET", "/ws?username=" + strings.Repeat("é", 33), upgradeHeader(), http.StatusBadRequest, "32"},
		{"username with control character", New(), "GET", "/ws?username=a%07b", upgradeHeader(), http.StatusBadRequest, "control"},
		{"username not UTF-8", New(), "GET", "/ws?username=a%ff", upgradeHeader(), http.StatusBadRequest, "UTF-8"},
		{"room with a slash", New(), "GET", "/ws?username=a&room=a/b", upgradeHeader(), http.StatusBadRequest, "room"},
		{"room too long", New(), "GET", "/ws?username=a&room=" + strings.Repeat("r", 65), upgradeHeader(), http.StatusBadRequest, "room"},
		{"since not an integer", New(), "GET", "/ws?username=a&since=x", upgradeHeader(), http.StatusBadRequest, "since"},
		{"since negative", New(), "GET", "/ws?username=a&since=-1", upgradeHeader(), http.StatusBadRequest, "since"},
		{"cross-origin", New(), "GET", "/ws?username=a", fromOther, http.StatusForbidden, "origin"},
		{"origin not in patterns", New(WithOriginPatterns("other.example.com")), "GET", "/ws?username=a", fromAllowed, http.StatusForbidden, "origin"},
		{"auth error", New(authErr(errors.New("bad token"))), "GET", "/ws", upgradeHeader(), http.StatusUnauthorized, "bad token"},
		{"auth HTTPError", New(authErr(fmt.Errorf("wrapped: %w", HTTPError{http.StatusForbidden, "banned"}))), "GET", "/ws", upgradeHeader(), http.StatusForbidden, "banned"},
		{"auth returns invalid name", New(WithAuth(func(*http.Request) (string, error) { return "", nil })), "GET", "/ws", upgradeHeader(), http.StatusBadRequest, "username"},
		{"room resolver error", New(WithRoomResolver(func(*http.Request) (string, error) { return "", errors.New("no room") })), "GET", "/ws?username=a", upgradeHeader(), http.StatusBadRequest, "no room"},
		{"after Shutdown", closed, "GET", "/ws?username=a", upgradeHeader(), http.StatusServiceUnavailable, "shutting down"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, msg := handshake(t, tt.srv, tt.method, tt.target, tt.header)
			if status != tt.status || !strings.Contains(msg, tt.errHas) {
				t.Errorf("got %d %q, want %d with %q", status, msg, tt.status, tt.errHas)
			}
		})
	}
}

func TestOriginAllowed(t *testing.T) {
	_, base := testServer(t, WithOriginPatterns("app.example.com", "https://*.example.org"))
	for _, origin := range []string{"https://app.example.com", "https://x.example.org"} {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		conn, _, err := websocket.Dial(ctx, base+query("username", "a", "room", "o"), &websocket.DialOptions{HTTPHeader: http.Header{"Origin": {origin}}})
		cancel()
		if err != nil {
			t.Fatalf("origin %s refused: %v", origin, err)
		}
		conn.CloseNow()
	}
}

func TestWelcome(t *testing.T) {
	_, base := testServer(t, WithRateLimit(3, 7), WithMaxMessageLength(99), WithHistorySize(12), WithPingInterval(5*time.Second), WithIdleTimeout(10*time.Second))
	join(t, base, "Bob", "general")
	alice, w := join(t, base, "  Alice ", "general", "client_id", "0.123")
	if w.Room != "general" || w.Username != "Alice" || w.SessionID == "" || w.Epoch == "" {
		t.Errorf("welcome = %s", w.raw)
	}
	if !slices.Equal(w.ActiveUsers, []string{"Alice", "Bob"}) {
		t.Errorf("active_users = %v, want [Alice Bob]", w.ActiveUsers)
	}
	if w.History == nil || len(w.History) != 0 || w.HistoryTruncated {
		t.Errorf("history = %v truncated %v, want [] false", w.History, w.HistoryTruncated)
	}
	want := map[string]any{"max_message_length": 99.0, "rate": 3.0, "burst": 7.0, "history_size": 12.0, "ping_interval_ms": 5000.0}
	for k, v := range want {
		if w.Limits[k] != v {
			t.Errorf("limits[%s] = %v, want %v", k, w.Limits[k], v)
		}
	}
	if !strings.Contains(w.raw, `"history":[]`) {
		t.Errorf("welcome must carry an empty history array: %s", w.raw)
	}
	j := alice.expect(typeUserJoined)
	if j.Username != "Alice" {
		t.Errorf("new member's own join: %s", j.raw)
	}
}

func TestRoomDefaultsToGeneral(t *testing.T) {
	_, base := testServer(t)
	c := dial(t, base, query("username", "a"))
	if w := c.expect(typeWelcome); w.Room != "general" {
		t.Errorf("room = %q, want general", w.Room)
	}
}

func TestTimestampsHaveMilliseconds(t *testing.T) {
	_, base := testServer(t)
	a, _ := join(t, base, "a", "r")
	j := a.expect(typeUserJoined)
	a.send("hi")
	m := a.expect(typeChat)
	for _, ts := range []string{j.Timestamp, m.Timestamp} {
		if _, err := time.Parse(timeLayout, ts); err != nil || len(ts) != len("2026-11-28T07:30:00.120Z") {
			t.Errorf("timestamp %q is not RFC 3339 UTC with three fractional digits", ts)
		}
	}
}

func TestHistoryAndResume(t *testing.T) {
	chat, base := testServer(t, WithHistorySize(3))
	for i := 1; i <= 5; i++ {
		if _, err := chat.Broadcast("r", fmt.Sprint("m", i)); err != nil {
			t.Fatal(err)
		}
	}
	_, w := join(t, base, "first", "r")
	epoch := w.Epoch
	tests := []struct {
		name      string
		extra     []string
		ids       []int64
		truncated bool
	}{
		{"no since: last N", nil, []int64{3, 4, 5}, false},
		{"since inside history", []string{"since", "3", "epoch", epoch}, []int64{4, 5}, false},
		{"since just before history", []string{"since", "2"}, []int64{3, 4, 5}, false},
		{"since older than history", []string{"since", "1"}, []int64{3, 4, 5}, true},
		{"since 0 after evictions", []string{"since", "0"}, []int64{3, 4, 5}, true},
		{"since up to date", []string{"since", "5"}, []int64{}, false},
		{"since from the future", []string{"since", "9"}, []int64{3, 4, 5}, true},
		{"other epoch", []string{"since", "4", "epoch", "stale"}, []int64{3, 4, 5}, true},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, w := join(t, base, fmt.Sprint("u", i), "r", tt.extra...)
			ids := []int64{}
			for _, m := range w.History {
				ids = append(ids, m.ID)
				if m.Type != typeChat || m.Text != fmt.Sprint("m", m.ID) || m.Room != "r" {
					t.Errorf("history entry %+v", m)
				}
			}
			if !slices.Equal(ids, tt.ids) || w.HistoryTruncated != tt.truncated {
				t.Errorf("history ids %v truncated %v, want %v %v", ids, w.HistoryTruncated, tt.ids, tt.truncated)
			}
		})
	}
}

func TestHistoryDisabled(t *testing.T) {
	chat, base := testServer(t, WithHistorySize(0))
	a, _ := join(t, base, "a", "r")
	chat.Broadcast("r", "x")
	if m := a.nextOf(typeChat); m.ID != 1 {
		t.Errorf("id = %d, want 1", m.ID)
	}
	_, w := join(t, base, "b", "r")
	if len(w.History) != 0 {
		t.Errorf("history = %v, want none", w.History)
	}
}

func TestJoinAndLeave(t *testing.T) {
	_, base := testServer(t)
	alice, _ := join(t, base, "Alice", "r")
	alice.expect(typeUserJoined)

	bob, w := join(t, base, "Bob", "r")
	if !slices.Equal(w.ActiveUsers, []string{"Alice", "Bob"}) {
		t.Errorf("Bob's welcome lists %v", w.ActiveUsers)
	}
	for _, c := range []*client{alice, bob} {
		if e := c.expect(typeUserJoined); e.Username != "Bob" || !slices.Equal(e.ActiveUsers, []string{"Alice", "Bob"}) || e.Room != "r" {
			t.Errorf("join event %s", e.raw)
		}
	}

	carol, _ := join(t, base, "Carol", "r")
	carol.expect(typeUserJoined)
	alice.expect(typeUserJoined)
	bob.expect(typeUserJoined)

	// The first to join leaves first.
	alice.conn.Close(websocket.StatusNormalClosure, "")
	for _, c := range []*client{bob, carol} {
		if e := c.expect(typeUserLeft); e.Username != "Alice" || !slices.Equal(e.ActiveUsers, []string{"Bob", "Carol"}) {
			t.Errorf("leave event %s", e.raw)
		}
	}
	// The last to join leaves by dropping the connection without a close frame.
	carol.conn.CloseNow()
	if e := bob.expect(typeUserLeft); e.Username != "Carol" || !slices.Equal(e.ActiveUsers, []string{"Bob"}) {
		t.Errorf("leave event %s", e.raw)
	}
	// A name can come back after leaving.
	_, w = join(t, base, "Alice", "r")
	if !slices.Equal(w.ActiveUsers, []string{"Alice", "Bob"}) {
		t.Errorf("rejoin welcome lists %v", w.ActiveUsers)
	}
}

func TestPresenceEventsCarryTheListOnlyForSeedStyleClients(t *testing.T) {
	_, base := testServer(t)
	seed, _ := join(t, base, "seed", "r")
	v1 := dial(t, base, query("username", "v1", "room", "r"), Subprotocol)
	if w := v1.expect(typeWelcome); !slices.Equal(w.ActiveUsers, []string{"seed", "v1"}) {
		t.Fatalf("v1 welcome lists %v", w.ActiveUsers)
	}
	seed.expect(typeUserJoined) // seed's own
	join(t, base, "Bob", "r")
	if e := seed.nextOf(typeUserJoined); e.Username != "v1" || !slices.Equal(e.ActiveUsers, []string{"seed", "v1"}) {
		t.Errorf("seed-style join event %s", e.raw)
	}
	if e := seed.nextOf(typeUserJoined); e.Username != "Bob" || !slices.Equal(e.ActiveUsers, []string{"Bob", "seed", "v1"}) {
		t.Errorf("seed-style join event %s", e.raw)
	}
	for _, want := range []string{"v1", "Bob"} {
		if e := v1.nextOf(typeUserJoined); e.Username != want || strings.Contains(e.raw, "active_users") {
			t.Errorf("chatkit.v1 join event %s, want %s without active_users", e.raw, want)
		}
	}
}

func TestMessagesReachEveryMemberOfTheRoomOnly(t *testing.T) {
	_, base := testServer(t)
	a, _ := join(t, base, "a", "one")
	b, _ := join(t, base, "b", "one")
	other, _ := join(t, base, "c", "two")
	a.nextOf(typeUserJoined) // a's own
	a.nextOf(typeUserJoined) // b

	a.send("hello <b>world</b>")
	for _, c := range []*client{a, b} {
		m := c.nextOf(typeChat)
		if m.Text != "hello <b>world</b>" || m.Username != "a" || m.Room != "one" || m.ID != 1 || m.ClientMsgID != "" {
			t.Errorf("got %s", m.raw)
		}
	}
	other.send("in two")
	if m := other.nextOf(typeChat); m.Room != "two" || m.ID != 1 {
		t.Errorf("room two: %s", m.raw)
	}
	a.send("second")
	if m := b.nextOf(typeChat); m.Text != "second" || m.ID != 2 {
		t.Errorf("b got %s, want only room one's messages", m.raw)
	}
}

func TestIDsGrowByOneUnderConcurrentSenders(t *testing.T) {
	_, base := testServer(t, WithRateLimit(rate.Inf, 0), WithHistorySize(0), WithSendQueue(1000))
	watcher, _ := join(t, base, "watcher", "r")
	const senders, each = 5, 40
	var clients []*client
	for i := range senders {
		c, _ := join(t, base, fmt.Sprint("s", i), "r")
		clients = append(clients, c)
	}
	var wg sync.WaitGroup
	for _, c := range clients {
		wg.Go(func() {
			for j := range each {
				c.send(fmt.Sprint(j))
			}
		})
	}
	wg.Wait()
	for want := int64(1); want <= senders*each; want++ {
		if m := watcher.nextOf(typeChat); m.ID != want {
			t.Fatalf("id %d, want %d", m.ID, want)
		}
	}
}

func TestAckAndIdempotentRetry(t *testing.T) {
	_, base := testServer(t)
	a, _ := join(t, base, "a", "r")
	b, _ := join(t, base, "b", "r")
	a.nextOf(typeUserJoined)
	a.nextOf(typeUserJoined)

	a.sendJSON(chatCmd("hi", "c-1"))
	if m := a.expect(typeChat); m.ID != 1 || m.ClientMsgID != "c-1" {
		t.Errorf("echo %s", m.raw)
	}
	if ack := a.expect(typeAck); ack.ID != 1 || ack.ClientMsgID != "c-1" {
		t.Errorf("ack %s", ack.raw)
	}
	// A retry of c-1, even with other text, is acked with the original id
	// and not broadcast again.
	a.sendJSON(chatCmd("hi again", "c-1"))
	if ack := a.expect(typeAck); ack.ID != 1 || ack.ClientMsgID != "c-1" {
		t.Errorf("retry ack %s", ack.raw)
	}
	// Another user may use the same client_msg_id.
	b.sendJSON(chatCmd("hello", "c-1"))
	var got []string
	for e := b.nextOf2(typeChat, typeAck); e.Type == typeChat; e = b.nextOf2(typeChat, typeAck) {
		got = append(got, fmt.Sprintf("%d:%s:%s", e.ID, e.Username, e.Text))
	}
	a.sendJSON(chatCmd("next", "c-2"))
	m := b.nextOf(typeChat)
	got = append(got, fmt.Sprintf("%d:%s:%s", m.ID, m.Username, m.Text))
	want := []string{"1:a:hi", "2:b:hello", "3:a:next"}
	if !slices.Equal(got, want) {
		t.Errorf("b saw %v, want %v", got, want)
	}
	// A plain-text message gets no ack: seed clients know none.
	a.send("plain")
	a.sendJSON(chatCmd("json", "c-3"))
	seq := []string{}
	for len(seq) < 6 {
		e := a.next()
		seq = append(seq, e.Type+":"+e.Text+e.ClientMsgID)
	}
	wantSeq := []string{"chat_message:helloc-1", "chat_message:nextc-2", "ack:c-2", "chat_message:plain", "chat_message:jsonc-3", "ack:c-3"}
	if !slices.Equal(seq, wantSeq) {
		t.Errorf("a saw %v, want %v", seq, wantSeq)
	}
}

func TestTyping(t *testing.T) {
	_, base := testServer(t)
	a, _ := join(t, base, "a", "r")
	b, _ := join(t, base, "b", "r")
	a.nextOf(typeUserJoined)
	a.nextOf(typeUserJoined)
	b.nextOf(typeUserJoined)

	b.sendJSON(map[string]string{"type": "typing"})
	b.sendJSON(map[string]string{"type": "typing"}) // within a second: dropped
	b.send("done")
	if e := a.expect(typeTyping); e.Username != "b" || e.Room != "r" {
		t.Errorf("typing %s", e.raw)
	}
	a.expect(typeChat) // not a second typing
	b.expect(typeChat) // the typer gets no typing event of its own
}

func TestErrorEvents(t *testing.T) {
	tests := []struct {
		name   string
		opts   []Option
		frames []any // string: raw text; otherwise JSON
		code   string
		errHas string
		cmid   string
	}{
		{"too long", []Option{WithMaxMessageLength(5)}, []any{chatCmd("😀😀😀😀😀😀", "c-2")}, codeTooLong, "exceeds 5 characters", "c-2"},
		{"too long as raw text", []Option{WithMaxMessageLength(5)}, []any{"123456"}, codeTooLong, "exceeds 5", ""},
		{"empty", nil, []any{chatCmd("", "c-3")}, codeEmpty, "empty", "c-3"},
		{"whitespace only", nil, []any{" \n\t "}, codeEmpty, "empty", ""},
		{"unknown type", nil, []any{map[string]string{"type": "dance"}}, codeBadRequest, "dance", ""},
		{"missing type", nil, []any{map[string]string{"text": "x"}}, codeBadRequest, "type", ""},
		{"wrong field type", nil, []any{map[string]any{"type": "chat_message", "text": 5, "client_msg_id": "c-4"}}, codeBadRequest, "wrong type", "c-4"},
		{"client_msg_id too long", nil, []any{chatCmd("x", strings.Repeat("i", 65))}, codeBadRequest, "64", ""},
		{"rate limited", []Option{WithRateLimit(rate.Every(time.Hour), 2)}, []any{"1", "2", chatCmd("3", "c-5")}, codeRateLimited, "rate", "c-5"},
		{"rejected by hook", []Option{WithOnMessage(func(_ context.Context, m *Message) error {
			return errors.New("no shouting")
		})}, []any{chatCmd("HEY", "c-6")}, codeRejected, "no shouting", "c-6"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, base := testServer(t, tt.opts...)
			a, _ := join(t, base, "a", "r")
			watcher, _ := join(t, base, "w", "r")
			for _, f := range tt.frames {
				if s, ok := f.(string); ok {
					a.send(s)
				} else {
					a.sendJSON(f)
				}
			}
			e := a.nextOf(typeError)
			if e.Code != tt.code || !strings.Contains(e.Error, tt.errHas) || e.ClientMsgID != tt.cmid {
				t.Errorf("got %s, want code %s with %q and client_msg_id %q", e.raw, tt.code, tt.errHas, tt.cmid)
			}
			if tt.code == codeRateLimited && (e.RetryAfterMS < 1000 || e.RetryAfterMS > 3600*1000) {
				t.Errorf("retry_after_ms = %d", e.RetryAfterMS)
			}
			// The connection stays open and nothing bad was broadcast.
			a.sendJSON(map[string]string{"type": "typing"})
			if ev := watcher.nextOf(typeTyping); ev.Username != "a" {
				t.Errorf("watcher got %s", ev.raw)
			}
		})
	}
}

func TestRateLimitLetsTheBurstThrough(t *testing.T) {
	_, base := testServer(t, WithRateLimit(rate.Every(time.Hour), 3))
	a, _ := join(t, base, "a", "r")
	for i := range 5 {
		a.send(fmt.Sprint(i))
	}
	var got []string
	for range 5 {
		e := a.nextOf2(typeChat, typeError)
		got = append(got, e.Type)
	}
	want := []string{typeChat, typeChat, typeChat, typeError, typeError}
	if !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

// nextOf2 skips events until one of type t1 or t2.
func (c *client) nextOf2(t1, t2 string) event {
	c.t.Helper()
	for {
		if e := c.next(); e.Type == t1 || e.Type == t2 {
			return e
		}
	}
}

func TestOnMessageRewrites(t *testing.T) {
	_, base := testServer(t, WithOnMessage(func(_ context.Context, m *Message) error {
		if m.ID != 0 || m.Username != "a" || m.Room != "r" || m.Time.IsZero() {
			return fmt.Errorf("hook saw %+v", m)
		}
		m.Text = strings.ReplaceAll(m.Text, "darn", "****")
		return nil
	}))
	a, _ := join(t, base, "a", "r")
	b, _ := join(t, base, "b", "r")
	a.send("oh darn")
	if m := b.nextOf(typeChat); m.Text != "oh ****" {
		t.Errorf("got %s", m.raw)
	}
	_, w := join(t, base, "c", "r")
	if w.History[0].Text != "oh ****" {
		t.Errorf("history keeps %q", w.History[0].Text)
	}
}

func TestProtocolViolationsClose(t *testing.T) {
	tests := []struct {
		name   string
		typ    websocket.MessageType
		data   []byte
		code   websocket.StatusCode
		reason string
	}{
		{"binary frame", websocket.MessageBinary, []byte("hi"), websocket.StatusUnsupportedData, closeBinary},
		{"invalid UTF-8", websocket.MessageText, []byte{'h', 0xff, 'i'}, websocket.StatusInvalidFramePayloadData, closeInvalidUTF8},
		{"frame over the read limit", websocket.MessageText, []byte(strings.Repeat("x", 12*10+12*64+1025)), websocket.StatusMessageTooBig, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, base := testServer(t, WithMaxMessageLength(10))
			a, _ := join(t, base, "a", "r")
			w, _ := join(t, base, "w", "r")
			a.write(tt.typ, tt.data)
			code, reason := a.closed()
			if code != tt.code || (tt.reason != "" && reason != tt.reason) {
				t.Errorf("closed with %d %q, want %d %q", code, reason, tt.code, tt.reason)
			}
			if e := w.nextOf(typeUserLeft); e.Username != "a" {
				t.Errorf("watcher got %s", e.raw)
			}
		})
	}
}

func TestReadLimitFitsAFullyEscapedMaximumMessage(t *testing.T) {
	const n = 50
	_, base := testServer(t, WithMaxMessageLength(n))
	a, _ := join(t, base, "a", "r")
	// What Python's json.dumps writes for n emoji: 12 bytes each.
	text := strings.Repeat(`\ud83d\ude00`, n)
	cmid := strings.Repeat(`\ud83d\ude00`, maxClientMsgID)
	a.send(`{ "type" : "chat_message" , "text" : "` + text + `" , "client_msg_id" : "` + cmid + `" }`)
	if m := a.nextOf(typeChat); m.Text != strings.Repeat("😀", n) {
		t.Errorf("got %q", m.Text)
	}
}

func TestDuplicateUsernames(t *testing.T) {
	t.Run("refused by default", func(t *testing.T) {
		_, base := testServer(t)
		a, _ := join(t, base, "Alice", "r")
		dup := dial(t, base, query("username", "Alice", "room", "r"))
		if code, reason := dup.closed(); code != websocket.StatusPolicyViolation || reason != "username taken" {
			t.Errorf("closed with %d %q, want 1008 \"username taken\"", code, reason)
		}
		// The same name in another room is fine, and Alice was not disturbed.
		join(t, base, "Alice", "other")
		a.send("still here")
		if m := a.nextOf(typeChat); m.Text != "still here" {
			t.Errorf("got %s", m.raw)
		}
	})
	t.Run("allowed", func(t *testing.T) {
		_, base := testServer(t, WithDuplicateUsernames(true))
		watcher, _ := join(t, base, "w", "r")
		watcher.expect(typeUserJoined)
		tab1, _ := join(t, base, "Alice", "r")
		if e := watcher.expect(typeUserJoined); e.Username != "Alice" {
			t.Fatalf("got %s", e.raw)
		}
		tab2, w := join(t, base, "Alice", "r")
		if !slices.Equal(w.ActiveUsers, []string{"Alice", "w"}) {
			t.Errorf("Alice listed twice? %v", w.ActiveUsers)
		}
		tab2.send("from tab 2")
		// No second user_joined reached the watcher: the next event is the message.
		if e := watcher.next(); e.Type != typeChat {
			t.Errorf("watcher got %s, want the message", e.raw)
		}
		if m := tab1.nextOf(typeChat); m.Text != "from tab 2" {
			t.Errorf("tab 1 got %s", m.raw)
		}
		tab1.conn.Close(websocket.StatusNormalClosure, "")
		tab1.closed()
		tab2.send("tab 1 closed")
		if e := watcher.next(); e.Type != typeChat {
			t.Errorf("watcher got %s after one tab closed, want no user_left yet", e.raw)
		}
		tab2.conn.Close(websocket.StatusNormalClosure, "")
		if e := watcher.expect(typeUserLeft); e.Username != "Alice" || !slices.Equal(e.ActiveUsers, []string{"w"}) {
			t.Errorf("got %s", e.raw)
		}
	})
}

func TestIdleClientIsDropped(t *testing.T) {
	_, base := testServer(t, WithPingInterval(50*time.Millisecond), WithIdleTimeout(500*time.Millisecond))
	alive, _ := join(t, base, "alive", "r")
	// A connection nobody reads never answers pings.
	silent := dialRaw(t, base, query("username", "silent", "room", "r"))
	alive.nextOf(typeUserJoined)
	if e := alive.nextOf(typeUserLeft); e.Username != "silent" {
		t.Errorf("got %s", e.raw)
	}
	// The live client answered every ping and is still connected.
	alive.send("still here")
	if m := alive.nextOf(typeChat); m.Text != "still here" {
		t.Errorf("got %s", m.raw)
	}
	// Reading at last, the silent client finds why it was closed.
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	for {
		if _, _, err := silent.Read(ctx); err != nil {
			if code, reason := websocket.CloseStatus(err), closeReason(err); code != websocket.StatusGoingAway || reason != "idle timeout" {
				t.Errorf("silent client closed with %d %q, want 1001 \"idle timeout\"", code, reason)
			}
			break
		}
	}
}

func closeReason(err error) string {
	var ce websocket.CloseError
	if errors.As(err, &ce) {
		return ce.Reason
	}
	return ""
}

func TestSlowClientIsDroppedWhileOthersGetEverything(t *testing.T) {
	const n = 200
	_, base := testServer(t, WithRateLimit(rate.Inf, 0), WithSendQueue(16), WithMaxMessageLength(70000), WithHistorySize(0))
	sender, _ := join(t, base, "sender", "r")
	healthy, _ := join(t, base, "healthy", "r")
	slow := dialRaw(t, base, query("username", "slow", "room", "r"))
	healthy.nextOf(typeUserJoined) // healthy
	healthy.nextOf(typeUserJoined) // slow
	// 200 messages of 60 KB, 12 MB: more than the socket buffers (4 MB at
	// most for a peer that does not read) and the queue of a client that
	// does not read. The healthy client reads each one before
	// the next is sent, so only the slow one falls behind.
	big := strings.Repeat("x", 60000)
	left := false
	for i := range n {
		sender.send(fmt.Sprintf("%d %s", i, big))
		for {
			e := healthy.next()
			if e.Type == typeUserLeft && e.Username == "slow" {
				left = true
				continue
			}
			if e.Type != typeChat || !strings.HasPrefix(e.Text, fmt.Sprint(i, " ")) {
				t.Fatalf("message %d: got %.40q", i, e.raw)
			}
			break
		}
	}
	if !left {
		t.Fatalf("the slow client was never dropped")
	}
	// Reading at last, the slow client finds itself closed as too slow.
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	for {
		_, _, err := slow.Read(ctx)
		if err == nil {
			continue
		}
		var ce websocket.CloseError
		if errors.As(err, &ce) && (ce.Code != websocket.StatusPolicyViolation || ce.Reason != "too slow") {
			t.Errorf("closed with %v, want 1008 too slow", ce)
		}
		break
	}
}

func TestShutdown(t *testing.T) {
	chat := New(WithLogger(nil))
	srv := newHTTPTestServer(t, chat)
	base := "ws" + strings.TrimPrefix(srv.URL, "http")
	a, _ := join(t, base, "a", "r")
	b, _ := join(t, base, "b", "r")
	if _, err := chat.Broadcast("r", "last words"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := chat.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	for _, c := range []*client{a, b} {
		// What was queued arrives before the close, and no user_left does.
		var types []string
		for _, e := range c.rest() {
			types = append(types, e.Type+":"+e.Username)
		}
		if len(types) == 0 {
			t.Fatal("no events before the close")
		}
		if last := types[len(types)-1]; last != typeChat+":" || slices.Contains(types, typeUserLeft+":a") || slices.Contains(types, typeUserLeft+":b") {
			t.Errorf("events before close: %v", types)
		}
		if code, reason := c.closed(); code != websocket.StatusGoingAway || reason != "server shutting down" {
			t.Errorf("closed with %d %q", code, reason)
		}
	}
	if _, err := chat.Broadcast("r", "too late"); !errors.Is(err, ErrServerClosed) {
		t.Errorf("Broadcast after Shutdown: %v", err)
	}
	_, resp, err := websocket.Dial(ctx, base+query("username", "c"), nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("dial after Shutdown: %v %v", err, resp)
	}
	if rooms := chat.Rooms(); len(rooms) != 0 {
		t.Errorf("rooms after Shutdown: %v", rooms)
	}
}

func TestShutdownContextEnds(t *testing.T) {
	chat := New(WithLogger(nil))
	srv := newHTTPTestServer(t, chat)
	base := "ws" + strings.TrimPrefix(srv.URL, "http")
	// A client that never reads does not answer the close handshake.
	dialRaw(t, base, query("username", "a"))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := chat.Shutdown(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Shutdown = %v, want context.Canceled", err)
	}
	// The connections were cut without waiting for the client; a second
	// Shutdown waits for the session goroutines to finish.
	ctx, cancel = context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := chat.Shutdown(ctx); err != nil {
		t.Errorf("second Shutdown = %v", err)
	}
}

func TestMaxRooms(t *testing.T) {
	chat, base := testServer(t, WithMaxRooms(2))
	join(t, base, "a", "busy")
	if _, err := chat.Broadcast("abandoned", "anyone?"); err != nil {
		t.Fatal(err)
	}
	if got := chat.Rooms(); !slices.Equal(got, []string{"abandoned", "busy"}) {
		t.Fatalf("rooms %v", got)
	}
	// At the cap, the empty room is evicted to make space.
	join(t, base, "b", "new")
	if got := chat.Rooms(); !slices.Equal(got, []string{"busy", "new"}) {
		t.Errorf("rooms %v, want the abandoned one evicted", got)
	}
	// When every room has members, a new room is refused.
	status, msg := handshake(t, chat, "GET", "/ws?username=c&room=third", upgradeHeader())
	if status != http.StatusServiceUnavailable || !strings.Contains(msg, "rooms") {
		t.Errorf("got %d %q, want 503", status, msg)
	}
	if _, err := chat.Broadcast("third", "x"); err == nil {
		t.Errorf("Broadcast to a room over the cap succeeded")
	}
	// Existing rooms still take members.
	join(t, base, "d", "busy")
}

func TestRoomLifetime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		chat := New(WithLogger(nil), WithRoomTTL(time.Hour))
		noHistory := New(WithLogger(nil), WithHistorySize(0))
		for _, c := range []*Server{chat, noHistory} {
			if _, err := c.Broadcast("r", "hello"); err != nil {
				t.Fatal(err)
			}
		}
		if got := noHistory.Rooms(); len(got) != 0 {
			t.Errorf("a room without sessions or history is kept: %v", got)
		}
		time.Sleep(time.Hour - time.Second)
		synctest.Wait()
		if got := chat.Rooms(); !slices.Equal(got, []string{"r"}) {
			t.Errorf("a room with history is freed before its TTL: %v", got)
		}
		// A visit renews the TTL.
		if _, err := chat.Broadcast("r", "again"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Hour - time.Second)
		synctest.Wait()
		if got := chat.Rooms(); !slices.Equal(got, []string{"r"}) {
			t.Errorf("the TTL was not renewed: %v", got)
		}
		time.Sleep(time.Second)
		synctest.Wait()
		if got := chat.Rooms(); len(got) != 0 {
			t.Errorf("an empty room outlives its TTL: %v", got)
		}
	})
}

func TestTwoServersAreIndependent(t *testing.T) {
	chat1, base1 := testServer(t)
	chat2, base2 := testServer(t)
	a, _ := join(t, base1, "Alice", "general")
	b, _ := join(t, base2, "Alice", "general") // the same name is free on the other server
	a.send("on one")
	b.send("on two")
	if m := a.nextOf(typeChat); m.Text != "on one" || m.ID != 1 {
		t.Errorf("server 1 got %s", m.raw)
	}
	if m := b.nextOf(typeChat); m.Text != "on two" || m.ID != 1 {
		t.Errorf("server 2 got %s", m.raw)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	chat1.Shutdown(ctx)
	a.closed()
	b.send("two still works")
	if m := b.nextOf(typeChat); m.Text != "two still works" {
		t.Errorf("got %s", m.raw)
	}
	if got := chat2.ActiveUsers("general"); !slices.Equal(got, []string{"Alice"}) {
		t.Errorf("server 2 users %v", got)
	}
}

func TestServerMethods(t *testing.T) {
	type change struct{ kind, room, user string }
	changes := make(chan change, 100)
	chat, base := testServer(t,
		WithSystemName("system"),
		WithOnJoin(func(room, user string) { changes <- change{"join", room, user} }),
		WithOnLeave(func(room, user string) { changes <- change{"leave", room, user} }),
	)
	a, _ := join(t, base, "a", "r")
	b, _ := join(t, base, "b", "r")
	join(t, base, "c", "s")
	if got := chat.ActiveUsers("r"); !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("ActiveUsers = %v", got)
	}
	if got := chat.ActiveUsers("nowhere"); got != nil {
		t.Errorf("ActiveUsers of an unknown room = %v", got)
	}
	if got := chat.Rooms(); !slices.Equal(got, []string{"r", "s"}) {
		t.Errorf("Rooms = %v", got)
	}
	m, err := chat.Broadcast("r", "maintenance at noon")
	if err != nil || m.ID != 1 || m.Username != "system" {
		t.Errorf("Broadcast = %+v, %v", m, err)
	}
	if e := a.nextOf(typeChat); e.Username != "system" || e.Text != "maintenance at noon" {
		t.Errorf("got %s", e.raw)
	}
	for _, bad := range []struct{ room, text string }{{"bad room", "x"}, {"r", "  "}, {"r", strings.Repeat("x", 501)}} {
		if _, err := chat.Broadcast(bad.room, bad.text); err == nil {
			t.Errorf("Broadcast(%q, %.10q) succeeded", bad.room, bad.text)
		}
	}
	if n := chat.Disconnect("r", "b"); n != 1 {
		t.Errorf("Disconnect = %d", n)
	}
	if code, reason := b.closed(); code != websocket.StatusGoingAway || reason != "disconnected" {
		t.Errorf("closed with %d %q", code, reason)
	}
	if e := a.nextOf(typeUserLeft); e.Username != "b" {
		t.Errorf("got %s", e.raw)
	}
	if n := chat.Disconnect("r", "nobody"); n != 0 {
		t.Errorf("Disconnect of nobody = %d", n)
	}
	want := []change{{"join", "r", "a"}, {"join", "r", "b"}, {"join", "s", "c"}, {"leave", "r", "b"}}
	for _, w := range want {
		select {
		case got := <-changes:
			if got != w {
				t.Errorf("hook %v, want %v", got, w)
			}
		case <-time.After(waitTimeout):
			t.Fatalf("hook %v not called", w)
		}
	}
}

func TestHooksMayCallTheServer(t *testing.T) {
	var chat *Server
	users := make(chan []string, 10)
	chat, base := testServer(t, WithOnJoin(func(room, _ string) {
		users <- chat.ActiveUsers(room)
		chat.Broadcast(room, "welcome aboard")
	}))
	a, _ := join(t, base, "a", "r")
	if got := <-users; !slices.Equal(got, []string{"a"}) {
		t.Errorf("ActiveUsers from the hook = %v", got)
	}
	if m := a.nextOf(typeChat); m.Text != "welcome aboard" {
		t.Errorf("got %s", m.raw)
	}
}

// TestEveryoneSeesTheSameOrder: 50 clients send 20 messages each into one
// room; every client receives all 1000, in one order, without loss or
// duplicates, and each sender's messages in the order it sent them.
func TestEveryoneSeesTheSameOrder(t *testing.T) {
	const clients, each = 50, 20
	_, base := testServer(t, WithRateLimit(rate.Inf, 0), WithSendQueue(4096), WithHistorySize(0))
	var cs []*client
	for i := range clients {
		// Half the clients take batched frames, half one event per frame.
		var sub []string
		if i%2 == 0 {
			sub = []string{Subprotocol}
		}
		c := dial(t, base, query("username", fmt.Sprint("u", i), "room", "r"), sub...)
		c.expect(typeWelcome)
		cs = append(cs, c)
	}
	var wg sync.WaitGroup
	for i, c := range cs {
		wg.Go(func() {
			for j := range each {
				c.sendJSON(chatCmd(fmt.Sprint(j), fmt.Sprintf("%d-%d", i, j)))
			}
		})
	}
	wg.Wait()
	var reference []string
	for i, c := range cs {
		var seq []string
		next := map[string]int{}
		for len(seq) < clients*each {
			m := c.nextOf(typeChat)
			if m.ID != int64(len(seq)+1) {
				t.Fatalf("client %d: id %d at position %d", i, m.ID, len(seq))
			}
			if m.Text != fmt.Sprint(next[m.Username]) {
				t.Fatalf("client %d: %s's message %q out of order, want %d", i, m.Username, m.Text, next[m.Username])
			}
			next[m.Username]++
			seq = append(seq, m.Username+":"+m.Text)
		}
		if reference == nil {
			reference = seq
		} else if !slices.Equal(seq, reference) {
			t.Fatalf("client %d saw another order", i)
		}
	}
}

func TestClientJS(t *testing.T) {
	h := ClientJS()
	rec := httptestGet(h, nil)
	if rec.Code != http.StatusOK || !strings.HasPrefix(rec.Header().Get("Content-Type"), "text/javascript") || rec.Body.Len() == 0 {
		t.Fatalf("got %d %q, %d bytes", rec.Code, rec.Header().Get("Content-Type"), rec.Body.Len())
	}
	etag := rec.Header().Get("ETag")
	if etag == "" || rec.Header().Get("Cache-Control") == "" {
		t.Errorf("no caching headers: %v", rec.Header())
	}
	if rec := httptestGet(h, http.Header{"If-None-Match": {etag}}); rec.Code != http.StatusNotModified {
		t.Errorf("conditional GET = %d, want 304", rec.Code)
	}
	if !strings.Contains(rec.Body.String(), "\nexport ") {
		t.Errorf("the module has no export statement")
	}
	req := httptest.NewRequest("GET", "/chatkit.js?classic", nil)
	classic := httptest.NewRecorder()
	h.ServeHTTP(classic, req)
	if body := classic.Body.String(); strings.Contains(body, "export ") || !strings.Contains(body, "globalThis.ChatKit") || classic.Header().Get("ETag") == etag {
		t.Errorf("classic variant: ETag %q, still exports or lacks globalThis.ChatKit", classic.Header().Get("ETag"))
	}
}

func TestNewPanicsOnInvalidOptions(t *testing.T) {
	tests := []struct {
		name string
		opt  func() Option
		want string
	}{
		{"negative history", func() Option { return WithHistorySize(-1) }, "WithHistorySize(-1)"},
		{"zero queue", func() Option { return WithSendQueue(0) }, "WithSendQueue(0)"},
		{"zero burst", func() Option { return WithRateLimit(1, 0) }, "WithRateLimit(0)"},
		{"negative rate", func() Option { return WithRateLimit(-1, 1) }, "WithRateLimit(-1)"},
		{"zero ping", func() Option { return WithPingInterval(0) }, "WithPingInterval(0s)"},
		{"ping not shorter than idle", func() Option { return WithPingInterval(time.Minute) }, "WithPingInterval(1m0s) must be shorter than WithIdleTimeout(1m0s)"},
		{"zero message length", func() Option { return WithMaxMessageLength(0) }, "WithMaxMessageLength(0)"},
		{"bad origin pattern", func() Option { return WithOriginPatterns("[") }, "WithOriginPatterns([)"},
		{"zero rooms", func() Option { return WithMaxRooms(0) }, "WithMaxRooms(0)"},
		{"nil auth", func() Option { return WithAuth(nil) }, "WithAuth(nil)"},
		{"nil store", func() Option { return WithStore(nil) }, "WithStore(nil)"},
		{"nil broker", func() Option { return WithBroker(nil) }, "WithBroker(nil)"},
		{"nil adapter", func() Option { return WithAdapter(nil) }, "WithAdapter(nil)"},
		{"zero store timeout", func() Option { return WithStoreTimeout(0) }, "WithStoreTimeout(0s)"},
		{"zero history burst", func() Option { return WithHistoryRateLimit(1, 0) }, "WithHistoryRateLimit(0)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			defer func() {
				msg := fmt.Sprint(recover())
				if !strings.Contains(msg, tt.want) {
					t.Errorf("panic %q, want it to name %q", msg, tt.want)
				}
			}()
			New(tt.opt())
		})
	}
}
