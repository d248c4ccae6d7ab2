package chatkit

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"golang.org/x/time/rate"
)

// dialStatus tries a handshake and returns its HTTP status (101 when it
// was upgraded) and the Retry-After header.
func dialStatus(t *testing.T, base, q string, header http.Header) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	conn, resp, err := websocket.Dial(ctx, base+q, &websocket.DialOptions{HTTPHeader: header})
	if err == nil {
		t.Cleanup(func() { conn.CloseNow() })
		return http.StatusSwitchingProtocols, ""
	}
	if resp == nil {
		t.Fatalf("dial %s: %v", q, err)
	}
	return resp.StatusCode, resp.Header.Get("Retry-After")
}

// eventually retries f until it returns true or the wait times out; each
// try is a real handshake, not a sleep.
func eventually(t *testing.T, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, waitTimeout)
		}
		runtime.Gosched()
	}
}

func TestMaxConnsRefusesWith503AndRetryAfter(t *testing.T) {
	chat, base := testServer(t, WithMaxConns(2))
	a, _ := join(t, base, "a", "r")
	join(t, base, "b", "r")
	status, retry := dialStatus(t, base, query("username", "c", "room", "r"), nil)
	if status != http.StatusServiceUnavailable || retry == "" {
		t.Fatalf("third connection: HTTP %d, Retry-After %q; want 503 with Retry-After", status, retry)
	}
	code, msg := handshake(t, chat, "GET", "/ws?username=c&room=r", upgradeHeader())
	if code != http.StatusServiceUnavailable || !strings.Contains(msg, "full") {
		t.Errorf("body: %d %q", code, msg)
	}
	a.conn.Close(websocket.StatusNormalClosure, "")
	eventually(t, "a place after a close", func() bool {
		s, _ := dialStatus(t, base, query("username", "c", "room", "r"), nil)
		return s == http.StatusSwitchingProtocols
	})
	if got := chat.Stats().HandshakesRefused["capacity"]; got < 2 {
		t.Errorf("capacity refusals counted: %d", got)
	}
}

func TestMaxConnsPerIPHonoursOnlyTrustedProxies(t *testing.T) {
	from := func(ip string) http.Header { return http.Header{"X-Forwarded-For": {ip}} }
	t.Run("behind a trusted proxy: per client address", func(t *testing.T) {
		_, base := testServer(t, WithMaxConnsPerIP(1), WithTrustedProxies("127.0.0.1"))
		if s, _ := dialStatus(t, base, query("username", "a"), from("203.0.113.1")); s != http.StatusSwitchingProtocols {
			t.Fatalf("first from 203.0.113.1: %d", s)
		}
		if s, retry := dialStatus(t, base, query("username", "b"), from("203.0.113.1")); s != http.StatusTooManyRequests || retry == "" {
			t.Errorf("second from 203.0.113.1: %d, Retry-After %q; want 429 with Retry-After", s, retry)
		}
		if s, _ := dialStatus(t, base, query("username", "c"), from("203.0.113.2")); s != http.StatusSwitchingProtocols {
			t.Errorf("first from 203.0.113.2: %d", s)
		}
	})
	t.Run("without trusted proxies the header is ignored", func(t *testing.T) {
		_, base := testServer(t, WithMaxConnsPerIP(1))
		dialStatus(t, base, query("username", "a"), from("203.0.113.1"))
		if s, _ := dialStatus(t, base, query("username", "b"), from("203.0.113.9")); s != http.StatusTooManyRequests {
			t.Errorf("a forged X-Forwarded-For got past the cap: %d", s)
		}
	})
}

func TestClientIP(t *testing.T) {
	trusted := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("127.0.0.1/32")}
	tests := []struct {
		name, remote string
		header       http.Header
		want         string
	}{
		{"direct client", "198.51.100.7:4000", nil, "198.51.100.7"},
		{"untrusted peer's header ignored", "198.51.100.7:4000", http.Header{"X-Forwarded-For": {"1.2.3.4"}}, "198.51.100.7"},
		{"trusted proxy", "10.1.2.3:4000", http.Header{"X-Forwarded-For": {"203.0.113.5"}}, "203.0.113.5"},
		{"chain of trusted proxies", "127.0.0.1:1", http.Header{"X-Forwarded-For": {"6.6.6.6, 203.0.113.5, 10.9.9.9"}}, "203.0.113.5"},
		{"Forwarded", "10.1.2.3:4000", http.Header{"Forwarded": {`for="[2001:db8::1]:443";proto=https`}}, "2001:db8::1"},
		{"trusted proxy without header", "10.1.2.3:4000", nil, "10.1.2.3"},
	}
	for _, tt := range tests {
		r, _ := http.NewRequest("GET", "/ws", nil)
		r.RemoteAddr, r.Header = tt.remote, tt.header
		if r.Header == nil {
			r.Header = http.Header{}
		}
		if got := clientIP(r, trusted); got != tt.want {
			t.Errorf("%s: %q, want %q", tt.name, got, tt.want)
		}
	}
}

func TestRateLimitPerUserIsSharedByTabsAndForgotten(t *testing.T) {
	chat, base := testServer(t, WithDuplicateUsernames(true), WithRateLimit(0.001, 2), WithRateLimitPerUser(true))
	tab1, _ := join(t, base, "Alice", "r")
	tab2, _ := join(t, base, "Alice", "r")
	tab1.sendJSON(chatCmd("one", "c-1"))
	tab1.nextOf(typeAck)
	tab2.sendJSON(chatCmd("two", "c-2"))
	tab2.nextOf(typeAck)
	tab2.sendJSON(chatCmd("three", "c-3"))
	if e := tab2.nextOf(typeError); e.Code != codeRateLimited || e.ClientMsgID != "c-3" {
		t.Errorf("the third message of the user, from another tab: %s; want rate_limited", e.raw)
	}
	tab1.conn.Close(websocket.StatusNormalClosure, "")
	tab2.conn.Close(websocket.StatusNormalClosure, "")
	tab1.closed()
	tab2.closed()
	eventually(t, "the user's bucket dropped", func() bool { return chat.Stats().Sessions == 0 })
	if n := chat.userLimits.len(); n != 0 {
		t.Errorf("%d buckets kept after the user's last session", n)
	}
}

func TestFloodingIsClosedWith1008(t *testing.T) {
	tests := []struct {
		name, frame, reason, code string
	}{
		{"over the rate limit", `{"type":"chat_message","text":"spam"}`, closeFlooding, codeRateLimited},
		{"malformed commands", `{"type":"nonsense"}`, closeBadCommands, codeBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			chat, base := testServer(t, WithRateLimit(0.001, 1))
			other, _ := join(t, base, "other", "r")
			flooder, _ := join(t, base, "flooder", "r")
			other.nextOf(typeUserJoined)
			for range 100 {
				if err := flooder.conn.Write(context.Background(), websocket.MessageText, []byte(tt.frame)); err != nil {
					break // closed
				}
			}
			var errs int
			for _, e := range flooder.rest() {
				if e.Type == typeError && e.Code == tt.code {
					errs++
				}
			}
			if code, reason := flooder.closed(); code != statusPolicy || reason != tt.reason {
				t.Fatalf("closed with %d %q, want 1008 %q", code, reason, tt.reason)
			}
			if errs == 0 || errs > maxRateLimitedRun {
				t.Errorf("%d %s errors before the close", errs, tt.code)
			}
			if e := other.nextOf(typeUserLeft); e.Username != "flooder" {
				t.Errorf("the room saw %s", e.raw)
			}
			if got := chat.Stats().SessionsDropped["flooding"]; got != 1 {
				t.Errorf("flooding drops counted: %d", got)
			}
		})
	}
}

func TestPanickingHooksAreContained(t *testing.T) {
	var joins atomic.Int32
	chat, base := testServer(t,
		WithAuth(func(r *http.Request) (string, error) {
			if r.URL.Query().Get("username") == "crash" {
				panic("auth bug")
			}
			return usernameFromQuery(r)
		}),
		WithRoomResolver(func(r *http.Request) (string, error) {
			if r.URL.Query().Get("room") == "crash" {
				panic("resolver bug")
			}
			return roomFromQuery(r)
		}),
		WithOnMessage(func(_ context.Context, m *Message) error {
			if m.Text == "boom" {
				panic("moderation bug")
			}
			return nil
		}),
		WithOnJoin(func(room, username string) {
			joins.Add(1)
			if username == "joinbomb" {
				panic("presence bug")
			}
		}),
	)
	for _, q := range []string{"/ws?username=crash&room=r", "/ws?username=a&room=crash"} {
		if status, msg := handshake(t, chat, "GET", q, upgradeHeader()); status != http.StatusInternalServerError || msg != "internal error" {
			t.Errorf("%s: %d %q, want 500 internal error", q, status, msg)
		}
	}
	alice, _ := join(t, base, "alice", "r")
	alice.sendJSON(chatCmd("boom", "c-1"))
	if e := alice.nextOf(typeError); e.Code != codeRejected || e.ClientMsgID != "c-1" {
		t.Errorf("a panicking OnMessage: %s, want rejected", e.raw)
	}
	alice.sendJSON(chatCmd("fine", "c-2"))
	if m := alice.nextOf(typeChat); m.Text != "fine" {
		t.Errorf("after the panic: %s", m.raw)
	}
	join(t, base, "joinbomb", "r")
	join(t, base, "carol", "r")
	eventually(t, "the room's later hooks run", func() bool { return joins.Load() == 3 })
	if got := chat.Stats().HandshakesRefused["internal"]; got != 2 {
		t.Errorf("internal refusals counted: %d", got)
	}
}

func TestStatsCountWhatHappened(t *testing.T) {
	chat, base := testServer(t, WithRateLimit(rate.Inf, 1))
	a, _ := join(t, base, "a", "r")
	b, _ := join(t, base, "b", "r")
	for i := range 3 {
		a.sendJSON(chatCmd(fmt.Sprint("m", i), fmt.Sprint("c", i)))
	}
	for range 3 {
		b.nextOf(typeChat)
	}
	a.sendJSON(map[string]string{"type": "chat_message", "text": " "})
	a.nextOf(typeError)
	header := upgradeHeader()
	header.Set("Origin", "https://evil.example")
	handshake(t, chat, "GET", "/ws?username=x", header)
	st := chat.Stats()
	checks := []struct {
		name      string
		got, want uint64
	}{
		{"sessions", uint64(st.Sessions), 2},
		{"present users", uint64(st.PresentUsers), 2},
		{"rooms", uint64(st.Rooms), 1},
		{"messages stored", st.MessagesStored, 3},
		{"empty_message errors", st.Errors[codeEmpty], 1},
		{"origin refusals", st.HandshakesRefused["origin"], 1},
		{"fan-out observations", st.FanoutLatency.Count, 3},
		{"store calls at least the appends", min(st.Store.Calls, 3), 3},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s: %d, want %d", c.name, c.got, c.want)
		}
	}
	// 3 messages to 2 members, plus the joins: b's to a and b.
	if st.Deliveries < 6 {
		t.Errorf("deliveries %d, want at least 6", st.Deliveries)
	}
	var inBuckets uint64
	for _, n := range st.FanoutLatency.Counts {
		inBuckets += n
	}
	if inBuckets != st.FanoutLatency.Count || len(st.FanoutLatency.Counts) != len(st.FanoutLatency.Bounds)+1 {
		t.Errorf("histogram %+v", st.FanoutLatency)
	}
}

// pingStore is a store whose Ping fails while down is set.
type pingStore struct {
	Store
	down atomic.Bool
}

func (p *pingStore) Ping(context.Context) error {
	if p.down.Load() {
		return errors.New("database unreachable")
	}
	return nil
}

func TestReady(t *testing.T) {
	store := &pingStore{Store: NewMemoryStore(10)}
	chat := New(WithLogger(nil), WithStore(store))
	ctx := context.Background()
	if err := chat.Ready(ctx); err != nil {
		t.Errorf("Ready: %v", err)
	}
	store.down.Store(true)
	if err := chat.Ready(ctx); err == nil || !strings.Contains(err.Error(), "unreachable") {
		t.Errorf("Ready with the store down: %v", err)
	}
	store.down.Store(false)
	chat.Shutdown(ctx)
	if err := chat.Ready(ctx); !errors.Is(err, ErrServerClosed) {
		t.Errorf("Ready after Shutdown: %v", err)
	}
}

func TestConnectDisconnectCyclesLeaveNothingBehind(t *testing.T) {
	cycles := 10000
	if testing.Short() {
		cycles = 1000
	}
	chat, base := testServer(t)
	baseline := func() (int, uint64) {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return runtime.NumGoroutine(), m.HeapAlloc
	}
	goroutines, heap := baseline()
	var wg sync.WaitGroup
	const workers = 8
	for w := range workers {
		wg.Go(func() {
			for i := w; i < cycles; i += workers {
				ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
				conn, _, err := websocket.Dial(ctx, base+query("username", fmt.Sprint("u", i), "room", fmt.Sprint("r", i%50)), nil)
				if err != nil {
					cancel()
					t.Errorf("cycle %d: %v", i, err)
					return
				}
				conn.Read(ctx) // the welcome
				conn.Close(websocket.StatusNormalClosure, "")
				cancel()
			}
		})
	}
	wg.Wait()
	eventually(t, "every session ended", func() bool { return chat.Stats().Sessions == 0 && chat.Stats().Rooms == 0 })
	var g int
	var h uint64
	eventually(t, "goroutines and heap back at baseline", func() bool {
		g, h = baseline()
		return g <= goroutines+2 && h < heap+4<<20
	})
	t.Logf("%d cycles: goroutines %d → %d, heap %d → %d KiB", cycles, goroutines, g, heap>>10, h>>10)
}

func TestAWriteThatTimesOutDropsTheClientAsTooSlow(t *testing.T) {
	// A queue that never fills, so that only the write timeout can find
	// the stalled client out: 200 messages of 50 KB are more than the
	// socket buffers of a peer that does not read.
	chat, base := testServer(t, WithRateLimit(rate.Inf, 0), WithSendQueue(100000), WithWriteTimeout(300*time.Millisecond),
		WithMaxMessageLength(60000), WithHistorySize(0))
	stalled := dialRaw(t, base, query("username", "stalled", "room", "r"))
	eventually(t, "the stalled client in its room", func() bool { return chat.Stats().Sessions == 1 })
	big := strings.Repeat("x", 50000)
	for i := range 200 {
		if _, err := chat.Broadcast("r", fmt.Sprint(i, big)); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "the stalled client dropped", func() bool { return chat.Stats().Sessions == 0 })
	if got := chat.Stats().SessionsDropped["too_slow"]; got != 1 {
		t.Errorf("too_slow drops %d, want 1: a timed-out write is a slow client, not a closed one", got)
	}
	stalled.CloseNow()
}
