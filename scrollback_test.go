package chatkit

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	"golang.org/x/time/rate"
)

// page asks for one page of scrollback and returns the answer.
func (c *client) page(before, limit any, requestID string) event {
	c.t.Helper()
	cmd := map[string]any{"type": "history", "request_id": requestID}
	if before != nil {
		cmd["before"] = before
	}
	if limit != nil {
		cmd["limit"] = limit
	}
	c.sendJSON(cmd)
	for {
		e := c.next()
		if (e.Type == typeHistory || e.Type == typeError) && e.RequestID == requestID {
			return e
		}
	}
}

func TestScrollbackPagesDownToTheOldestKeptMessage(t *testing.T) {
	tests := []struct {
		name          string
		history, sent int
		oldest        int64
	}{
		{"everything kept", 300, 250, 1},
		{"history full: down to the oldest kept", 100, 250, 151},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			chat, base := testServer(t, WithHistorySize(tt.history), WithHistoryRateLimit(rate.Inf, 0))
			for i := 1; i <= tt.sent; i++ {
				if _, err := chat.Broadcast("r", fmt.Sprint("m", i)); err != nil {
					t.Fatal(err)
				}
			}
			c, _ := join(t, base, "a", "r")
			var got []int64
			var before any // absent: from the newest
			for n := 0; ; n++ {
				p := c.page(before, 100, fmt.Sprint("r-", n))
				if p.Type != typeHistory || p.Room != "r" || p.Epoch == "" {
					t.Fatalf("page %d: %s", n, p.raw)
				}
				for i := len(p.Messages) - 1; i >= 0; i-- { // each page is oldest first
					m := p.Messages[i]
					if m.Type != typeChat || m.Text != fmt.Sprint("m", m.ID) {
						t.Fatalf("page %d has %+v", n, m)
					}
					got = append(got, m.ID)
				}
				if !p.HasMore {
					break
				}
				before = p.Messages[0].ID
			}
			want := int64(tt.sent) - tt.oldest + 1
			if int64(len(got)) != want {
				t.Fatalf("pages held %d messages, want %d", len(got), want)
			}
			for i, id := range got {
				if id != int64(tt.sent)-int64(i) {
					t.Fatalf("message %d of the walk is id %d: something missing or repeated", i, id)
				}
			}
		})
	}
}

func TestScrollbackPageSizes(t *testing.T) {
	chat, base := testServer(t, WithHistorySize(300), WithHistoryRateLimit(rate.Inf, 0))
	for i := 1; i <= 200; i++ {
		chat.Broadcast("r", fmt.Sprint("m", i))
	}
	c, _ := join(t, base, "a", "r")
	tests := []struct {
		before, limit any
		first, last   int64
		hasMore       bool
	}{
		{nil, nil, 151, 200, true}, // limit absent: 50 from the newest
		{nil, 500, 101, 200, true}, // above 100: 100
		{120, 10, 110, 119, true},  // below before
		{11, 50, 1, 10, false},     // reaches the first message
		{9999, 1, 200, 200, true},  // a before past the newest: the newest
		{1, 10, 0, 0, false},       // nothing below 1
		{2, nil, 1, 1, false},
	}
	for i, tt := range tests {
		p := c.page(tt.before, tt.limit, fmt.Sprint("p-", i))
		var first, last, count int64
		if len(p.Messages) > 0 {
			first, last = p.Messages[0].ID, p.Messages[len(p.Messages)-1].ID
			count = last - first + 1
		}
		if p.Type != typeHistory || first != tt.first || last != tt.last || p.HasMore != tt.hasMore || int64(len(p.Messages)) != count {
			t.Errorf("before %v limit %v: ids %d..%d (%d) has_more %v; want %d..%d %v", tt.before, tt.limit, first, last, len(p.Messages), p.HasMore, tt.first, tt.last, tt.hasMore)
		}
	}
}

func TestBadHistoryRequests(t *testing.T) {
	_, base := testServer(t)
	c, _ := join(t, base, "a", "r")
	c.expect(typeUserJoined)
	tests := []struct {
		name string
		cmd  string
	}{
		{"limit 0", `{"type":"history","limit":0,"request_id":"x"}`},
		{"negative limit", `{"type":"history","limit":-3,"request_id":"x"}`},
		{"limit a string", `{"type":"history","limit":"10","request_id":"x"}`},
		{"limit not an integer", `{"type":"history","limit":1.5,"request_id":"x"}`},
		{"before 0", `{"type":"history","before":0,"request_id":"x"}`},
		{"negative before", `{"type":"history","before":-1,"request_id":"x"}`},
		{"before a string", `{"type":"history","before":"12","request_id":"x"}`},
		{"request_id not a string", `{"type":"history","request_id":7}`},
	}
	for _, tt := range tests {
		c.send(tt.cmd)
		e := c.expect(typeError)
		wantID := "x"
		if strings.Contains(tt.cmd, `"request_id":7`) {
			wantID = ""
		}
		if e.Code != codeBadRequest || e.RequestID != wantID {
			t.Errorf("%s: got %s, want bad_request with request_id %q", tt.name, e.raw, wantID)
		}
	}
	c.sendJSON(map[string]any{"type": "history", "request_id": strings.Repeat("i", 65)})
	if e := c.expect(typeError); e.Code != codeBadRequest || !strings.Contains(e.Error, "request_id") {
		t.Errorf("long request_id: %s", e.raw)
	}
	// Ids over 64 characters are not echoed, whichever error answers them.
	c.send(`{"type":"history","before":1.5,"request_id":"` + strings.Repeat("x", 65) + `"}`)
	c.send(`{"type":"chat_message","text":5,"client_msg_id":"` + strings.Repeat("x", 65) + `"}`)
	for range 2 {
		if e := c.expect(typeError); e.Code != codeBadRequest || e.RequestID != "" || e.ClientMsgID != "" {
			t.Errorf("a long id echoed: %s", e.raw)
		}
	}
	// The connection is still usable.
	if p := c.page(nil, 5, "ok"); p.Type != typeHistory {
		t.Errorf("after bad requests: %s", p.raw)
	}
}

func TestHistoryRequestsHaveTheirOwnRateLimit(t *testing.T) {
	_, base := testServer(t, WithHistoryRateLimit(1, 2), WithRateLimit(rate.Inf, 1))
	c, _ := join(t, base, "a", "r")
	for i := range 2 {
		if p := c.page(nil, 5, fmt.Sprint("ok-", i)); p.Type != typeHistory {
			t.Fatalf("request %d within the burst: %s", i, p.raw)
		}
	}
	e := c.page(nil, 5, "over")
	if e.Type != typeError || e.Code != codeRateLimited || e.RetryAfterMS <= 0 || e.RetryAfterMS > 1000 {
		t.Errorf("over the history limit: %s, want rate_limited with retry_after_ms in (0, 1000]", e.raw)
	}
	// Chat messages are not counted against it.
	c.sendJSON(chatCmd("still here", "c-1"))
	if a := c.nextOf(typeAck); a.ClientMsgID != "c-1" {
		t.Errorf("chat after a history rate limit: %s", a.raw)
	}
}

// failingStore fails every call while down is set, as an unreachable
// database does.
type failingStore struct {
	Store
	down atomic.Bool
}

var errDown = errors.New("store down")

func (s *failingStore) Before(ctx context.Context, room string, before int64, limit int) (RoomState, []Message, error) {
	if s.down.Load() {
		return RoomState{}, nil, errDown
	}
	return s.Store.Before(ctx, room, before, limit)
}

func (s *failingStore) Append(ctx context.Context, m Message) (Message, bool, error) {
	if s.down.Load() {
		return Message{}, false, errDown
	}
	return s.Store.Append(ctx, m)
}

func TestStoreDownIsUnavailableAndTheSessionStays(t *testing.T) {
	store := &failingStore{Store: NewMemoryStore(100)}
	_, base := testServer(t, WithStore(store))
	c, _ := join(t, base, "a", "r")
	store.down.Store(true)
	if e := c.page(nil, 5, "h"); e.Code != codeUnavailable {
		t.Errorf("history with the store down: %s", e.raw)
	}
	c.sendJSON(chatCmd("hello", "c-1"))
	if e := c.nextOf(typeError); e.Code != codeUnavailable || e.ClientMsgID != "c-1" {
		t.Errorf("message with the store down: %s, want unavailable with its client_msg_id", e.raw)
	}
	status, msg := handshake(t, mustServer(t, store), "GET", "/ws?username=b&room=other", upgradeHeader())
	if status != 503 || !strings.Contains(msg, "unavailable") {
		t.Errorf("handshake with the store down: %d %q", status, msg)
	}
	store.down.Store(false)
	c.sendJSON(chatCmd("hello", "c-1"))
	if m := c.nextOf(typeChat); m.Text != "hello" || m.ID != 1 {
		t.Errorf("after recovery: %s", m.raw)
	}
	if a := c.expect(typeAck); a.ClientMsgID != "c-1" || a.ID != 1 {
		t.Errorf("after recovery: %s", a.raw)
	}
}

func mustServer(t *testing.T, st Store) *Server {
	srv := New(WithLogger(nil), WithStore(st))
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	return srv
}
