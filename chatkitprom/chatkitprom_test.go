package chatkitprom_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chatkit/chatkit"
	"github.com/chatkit/chatkit/chatkitprom"
	"github.com/chatkit/chatkit/chatkittest"
	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// newServer starts a Server over httptest and returns it with its
// WebSocket URL. It is shut down when the test ends, after the clients
// that the test dials later (cleanups run last first).
func newServer(t *testing.T) (*chatkit.Server, string) {
	t.Helper()
	chat := chatkit.New(chatkit.WithLogger(nil))
	ts := httptest.NewServer(chat)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := chat.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		ts.Close()
	})
	return chat, "ws" + strings.TrimPrefix(ts.URL, "http")
}

// scrape gathers c through a pedantic registry, which also checks that
// Collect sends only what Describe announced, and returns its samples in
// the text exposition format, one a line, such as
// `chatkit_errors_total{code="empty_message"} 1`.
func scrape(t *testing.T, c prometheus.Collector) []string {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(c); err != nil {
		t.Fatalf("register: %v", err)
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	var text strings.Builder
	for _, mf := range families {
		if _, err := expfmt.MetricFamilyToText(&text, mf); err != nil {
			t.Fatal(err)
		}
	}
	var samples []string
	for line := range strings.SplitSeq(text.String(), "\n") {
		if line != "" && !strings.HasPrefix(line, "#") {
			samples = append(samples, line)
		}
	}
	return samples
}

func expectSamples(t *testing.T, samples []string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !slices.Contains(samples, w) {
			t.Errorf("no sample %s in\n%s", w, strings.Join(samples, "\n"))
		}
	}
}

// refuseOrigin dials wsURL as a page of another site would, which the
// Server refuses with 403.
func refuseOrigin(t *testing.T, wsURL string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	opts := &websocket.DialOptions{HTTPHeader: http.Header{"Origin": {"https://evil.example"}}}
	conn, resp, err := websocket.Dial(ctx, wsURL+"?username=mallory", opts)
	if err == nil {
		conn.CloseNow()
		t.Fatal("cross-origin dial accepted")
	}
	if resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("cross-origin dial: %v (%v), want HTTP 403", err, resp)
	}
}

func TestCollector(t *testing.T) {
	chat, wsURL := newServer(t)
	c := chatkitprom.NewCollector(chat)

	alice := chatkittest.Dial(t, wsURL, url.Values{"username": {"alice"}}, "")
	alice.Expect("welcome")
	bob := chatkittest.Dial(t, wsURL, url.Values{"username": {"bob"}}, "")
	bob.Expect("welcome")
	alice.Expect("user_joined")

	// The ack is queued after the fan-out is timed, so once alice has it
	// the histogram holds the message.
	alice.SendChat("hello", "m1")
	if e := bob.NextOf("chat_message"); e.Text != "hello" {
		t.Fatalf("bob got %s", e.Raw)
	}
	alice.Send(map[string]string{"type": "chat_message", "text": ""})
	if e := alice.Expect("error"); e.Code != "empty_message" {
		t.Fatalf("alice got %s, want an empty_message error", e.Raw)
	}
	refuseOrigin(t, wsURL)

	samples := scrape(t, c)
	expectSamples(t, samples,
		`chatkit_sessions 2`,
		`chatkit_present_users 2`,
		`chatkit_rooms 1`,
		`chatkit_messages_total 1`,
		`chatkit_history_requests_total 0`,
		`chatkit_errors_total{code="empty_message"} 1`,
		`chatkit_errors_total{code="message_too_long"} 0`,
		`chatkit_handshakes_refused_total{reason="origin"} 1`,
		`chatkit_handshakes_refused_total{reason="auth"} 0`,
		`chatkit_sessions_dropped_total{reason="too_slow"} 0`,
		`chatkit_store_failures_total 0`,
		`chatkit_broker_failures_total 0`,
		`chatkit_fanout_seconds_count 1`,
		`chatkit_fanout_seconds_bucket{le="+Inf"} 1`,
		`chatkit_ready 1`,
	)
	st := chat.Stats()
	if st.Deliveries < 2 || st.Store.Calls < 1 || st.Broker.Calls < 2 {
		t.Errorf("Stats %+v: want at least 2 deliveries, 1 store call and 2 broker calls", st)
	}

	// Every reason and code is a series from the start, so that none
	// appears with its first event.
	want := map[string]int{
		"chatkit_sessions_dropped_total":   len(st.SessionsDropped),
		"chatkit_handshakes_refused_total": len(st.HandshakesRefused),
		"chatkit_errors_total":             len(st.Errors),
	}
	for name, n := range want {
		if got := testutil.CollectAndCount(c, name); got != n || n == 0 {
			t.Errorf("%d series of %s, want %d", got, name, n)
		}
	}

	problems, err := testutil.CollectAndLint(c)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
}

// Registering checks the names and labels: a second Collector under the
// same names, or a constant label that shadows a variable one, is refused
// then rather than failing every scrape.
func TestCollectorRegisters(t *testing.T) {
	chat, _ := newServer(t)
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(chatkitprom.NewCollector(chat))
	if err := reg.Register(chatkitprom.NewCollector(chat)); !errors.As(err, new(prometheus.AlreadyRegisteredError)) {
		t.Errorf("second Collector of the same names: %v, want AlreadyRegisteredError", err)
	}
	if err := reg.Register(chatkitprom.NewCollector(chat, chatkitprom.WithLabels(prometheus.Labels{"code": "x"}))); err == nil {
		t.Error("Collector with a const label named code registered")
	}
}

func TestOptions(t *testing.T) {
	chat, _ := newServer(t)
	c := chatkitprom.NewCollector(chat,
		chatkitprom.WithNamespace("chat"),
		chatkitprom.WithLabels(prometheus.Labels{"node": "a"}))
	expectSamples(t, scrape(t, c),
		`chat_sessions{node="a"} 0`,
		`chat_errors_total{code="empty_message",node="a"} 0`,
		`chat_ready{node="a"} 1`,
	)
}

func TestNotReadyAfterShutdown(t *testing.T) {
	chat := chatkit.New(chatkit.WithLogger(nil))
	if err := chat.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	expectSamples(t, scrape(t, chatkitprom.NewCollector(chat)), `chatkit_ready 0`)
}

func TestHandler(t *testing.T) {
	chat, _ := newServer(t)
	ts := httptest.NewServer(chatkitprom.Handler(chat))
	defer ts.Close()
	resp, err := http.Get(ts.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
		t.Fatalf("HTTP %d, Content-Type %q:\n%s", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	for _, want := range []string{"\nchatkit_sessions 0\n", "\ngo_goroutines ", "\nprocess_"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("no %q in\n%s", want, body)
		}
	}
}
