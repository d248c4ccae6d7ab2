package main

import (
	"bytes"
	"encoding/binary"
	"math"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chatkit/chatkit"
	"golang.org/x/time/rate"
)

func TestHistogramBuckets(t *testing.T) {
	prev := -1
	for v := uint64(0); v < 1<<20; v += 1 + v/50 {
		i := histIndex(v)
		if i < prev {
			t.Fatalf("index of %d is %d, below the previous %d", v, i, prev)
		}
		prev = i
		if lo, hi := histLow(i), histHigh(i); v < lo || v > hi {
			t.Fatalf("%d is in bucket %d = [%d, %d]", v, i, lo, hi)
		}
	}
	if i := histIndex(math.MaxUint64); i >= histBuckets {
		t.Fatalf("max value maps to %d of %d buckets", i, histBuckets)
	}
}

func TestHistogramQuantiles(t *testing.T) {
	var h histogram
	if !math.IsNaN(h.quantile(0.5)) {
		t.Fatal("empty histogram has a median")
	}
	for i := 1; i <= 1000; i++ {
		h.record(time.Duration(i) * time.Millisecond)
	}
	for _, c := range []struct{ q, want float64 }{{0.5, 500}, {0.99, 990}, {0.999, 999}} {
		got := h.quantile(c.q)
		if math.Abs(got-c.want)/c.want > 0.04 {
			t.Errorf("q%.3f = %.1f ms, want %.0f within 4%%", c.q, got, c.want)
		}
	}
	if h.maxMS() != 1000 {
		t.Errorf("max = %v", h.maxMS())
	}
}

func TestPayloadRoundTrip(t *testing.T) {
	for _, size := range []int{0, 20, 64, 200} {
		p := appendPayload(nil, 12, 345, 1700000000123456789, 7, size)
		if size > 40 && len(p) != size {
			t.Errorf("size %d: payload is %d bytes", size, len(p))
		}
		got, ok := parsePayload(p)
		if !ok || got != (payload{12, 345, 1700000000123456789, 7}) {
			t.Errorf("size %d: parsed %q as %+v, %v", size, p, got, ok)
		}
	}
	for _, bad := range []string{"", "1 2 3", "1 2 3 x", "a 2 3 4", "1 2 3 4x", "hello"} {
		if _, ok := parsePayload([]byte(bad)); ok {
			t.Errorf("parsed %q", bad)
		}
	}
}

func TestClassify(t *testing.T) {
	m := &member{name: "u7"}
	cases := []struct {
		ad   adapter
		line string
		kind lineKind
		pl   string
	}{
		{chatkitAdapter{}, `{"type":"chat_message","room":"bench","id":3,"username":"u1","text":"1 2 3 4","timestamp":"x"}`, lineMsg, "1 2 3 4"},
		{chatkitAdapter{}, `{"type":"welcome","room":"bench","history":[{"type":"chat_message","text":"1 2 3 4"}]}`, lineReady, ""},
		{chatkitAdapter{}, `{"type":"user_joined","room":"bench","username":"u1","active_users":["u1"]}`, lineIgnore, ""},
		{chatkitAdapter{}, `{"type":"error","code":"rate_limited"}`, lineError, ""},
		{seedAdapter{}, `{"type": "chat_message", "username": "u1", "text": "1 2 3 4", "timestamp": "x"}`, lineMsg, "1 2 3 4"},
		{seedAdapter{}, `{"type": "user_joined", "username": "u7", "active_users": ["u7"]}`, lineReady, ""},
		{seedAdapter{}, `{"type": "user_joined", "username": "u77", "active_users": ["u77"]}`, lineIgnore, ""},
		{rawAdapter{}, `1 2 3 4`, lineMsg, "1 2 3 4"},
		{rawAdapter{}, `hello`, lineIgnore, ""},
		{centrifugeAdapter{}, `{"push":{"channel":"bench","pub":{"data":{"text":"1 2 3 4"},"offset":9}}}`, lineMsg, "1 2 3 4"},
		{centrifugeAdapter{}, `{"id":2,"subscribe":{}}`, lineReady, ""},
		{centrifugeAdapter{}, `{}`, linePing, ""},
		{centrifugeAdapter{}, `{"id":5,"error":{"code":103,"message":"permission denied"}}`, lineError, ""},
	}
	for _, c := range cases {
		kind, pl := c.ad.classify(m, []byte(c.line))
		if kind != c.kind || (kind == lineMsg && string(pl) != c.pl) {
			t.Errorf("%s %s: got %d %q, want %d %q", c.ad.name(), c.line, kind, pl, c.kind, c.pl)
		}
	}
	f := centrifugeAdapter{}.publish(nil, &member{}, "bench", []byte("1 2 3 4"))
	if want := `{"id":3,"publish":{"channel":"bench","data":{"text":"1 2 3 4"}}}`; string(f) != want {
		t.Errorf("centrifuge publish = %s, want %s", f, want)
	}
}

type collect struct{ msgs []string }

func (c *collect) message(p []byte, now int64) { c.msgs = append(c.msgs, string(p)) }

func frameBytes(fin bool, op byte, p []byte) []byte {
	b0 := op
	if fin {
		b0 |= 0x80
	}
	var b []byte
	switch n := len(p); {
	case n < 126:
		b = []byte{b0, byte(n)}
	case n < 1<<16:
		b = []byte{b0, 126, byte(n >> 8), byte(n)}
	default:
		b = append([]byte{b0, 127}, binary.BigEndian.AppendUint64(nil, uint64(n))...)
	}
	return append(b, p...)
}

// TestFeed checks frame parsing across arbitrary read boundaries,
// including fragmented and long messages.
func TestFeed(t *testing.T) {
	long := bytes.Repeat([]byte("x"), 70000)
	var stream []byte
	stream = append(stream, frameBytes(true, opText, []byte("a\nb"))...)
	stream = append(stream, frameBytes(false, opText, []byte("frag"))...)
	stream = append(stream, frameBytes(false, opCont, []byte("men"))...)
	stream = append(stream, frameBytes(true, opCont, []byte("ted"))...)
	stream = append(stream, frameBytes(true, opText, long)...)
	stream = append(stream, frameBytes(true, opPong, nil)...)
	stream = append(stream, frameBytes(true, opText, []byte("end"))...)
	for _, chunk := range []int{1, 3, 7, 100, 4096, len(stream)} {
		c := &wsConn{fd: -1}
		var h collect
		for off := 0; off < len(stream); off += chunk {
			part := append([]byte(nil), stream[off:min(off+chunk, len(stream))]...)
			if err := c.feed(part, 0, &h); err != nil {
				t.Fatalf("chunk %d: %v", chunk, err)
			}
		}
		want := []string{"a\nb", "fragmented", string(long), "end"}
		if strings.Join(h.msgs, "|") != strings.Join(want, "|") {
			t.Fatalf("chunk %d: got %d messages", chunk, len(h.msgs))
		}
	}
}

// TestFanoutAgainstChatkit runs a small fanout and idle measurement
// against an in-process chatkit server, end to end.
func TestFanoutAgainstChatkit(t *testing.T) {
	chat := chatkit.New(chatkit.WithRateLimit(rate.Inf, 0), chatkit.WithHistorySize(4), chatkit.WithLogger(nil))
	srv := httptest.NewServer(chat)
	defer srv.Close()
	defer chat.Shutdown(t.Context())

	cfg, err := parseFlags("fanout", []string{"-url", "ws" + strings.TrimPrefix(srv.URL, "http") + "/ws",
		"-pid", "0", "-members", "12", "-publishers", "2", "-start", "600", "-max-rate", "1200",
		"-factor", "2", "-duration", "300ms", "-p99", "2000", "-gen-limit", "1000", "-sample", "4", "-lowat", "4096", "-q"})
	if err != nil {
		t.Fatal(err)
	}
	quiet = true
	cfg.pids = []int{os.Getpid()} // measure ourselves: the server runs in this process
	cfg.maxFD = int(raiseNoFile(4096))
	ad, _ := newAdapter("chatkit")
	res := runFanout(cfg, ad, 12)
	if !res.Valid {
		t.Fatalf("fanout invalid: %s", res.Invalid)
	}
	for _, s := range res.Steps {
		if s.Dups != 0 || s.Reorders != 0 || s.Delivered != s.Expected || s.Expected != s.Published*12 {
			t.Errorf("step %+v", s)
		}
	}
	if res.Metrics["deliveries_per_s"] <= 0 || res.Bound != "max-rate" {
		t.Errorf("result %s %+v", res.Bound, res.Metrics)
	}

	cfg.conns, cfg.roomSize, cfg.settle = 20, 5, 10*time.Millisecond
	idle := runIdle(cfg, ad)
	if !idle.Valid || idle.Metrics["rss_mib"] <= 0 {
		t.Fatalf("idle: %s %+v", idle.Invalid, idle.Metrics)
	}

	// The report renders both.
	dir := t.TempDir()
	res.Label, idle.Label = "chatkit", "chatkit"
	data, _ := res.MarshalJSON()
	data2, _ := idle.MarshalJSON()
	os.WriteFile(filepath.Join(dir, "r.json"), []byte("["+string(data)+","+string(data2)+"]"), 0o644)
	out := filepath.Join(dir, "B.md")
	if code := reportMain([]string{"-o", out, "-meta", "mode=test", dir}); code != 0 {
		t.Fatalf("report exit %d", code)
	}
	md, _ := os.ReadFile(out)
	for _, want := range []string{"### fanout members=12", "### idle conns=20", "| chatkit | 1/1 |", "mode | test"} {
		if !strings.Contains(string(md), want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
}
