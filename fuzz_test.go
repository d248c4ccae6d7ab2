package chatkit

// Fuzz targets for what a client controls: its frames, its handshake
// parameters, the batches it splits and its history requests. Each runs
// its seeds (f.Add and testdata/fuzz/<FuzzName>/) with plain go test, and
// fuzzes with, one at a time:
//
//	go test -run '^$' -fuzz '^FuzzDecodeFrame$' -fuzztime 10s .
//	go test -run '^$' -fuzz '^FuzzHandshakeParams$' -fuzztime 10s .
//	go test -run '^$' -fuzz '^FuzzBatchSplit$' -fuzztime 10s .
//	go test -run '^$' -fuzz '^FuzzHistoryRequest$' -fuzztime 10s .
//
// Whatever a fuzzer finds goes into testdata/fuzz/<FuzzName>/ as a regular
// test case.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/coder/websocket"
)

// FuzzDecodeFrame: decodeFrame on any bytes never panics; a frame that does
// not start (after JSON whitespace) with "{", or is not valid JSON, is a raw
// chat message with exactly the frame's text; a JSON object is a command, or
// errBadCommand exactly when one of the known fields holds a value of the
// wrong kind; a command's known fields, marshalled again, decode to the same
// command.
func FuzzDecodeFrame(f *testing.F) {
	for _, s := range []string{
		"",
		"hello",
		"  hi  ",
		"{oops",
		" \t\r\n{",
		"{}",
		"[1,2]",
		`"just a string"`,
		"42",
		`{"type":"chat_message","text":"hi","client_msg_id":"c-1"}`,
		`  {"type":"typing"}`,
		`{"type":"history","before":120,"limit":50,"request_id":"r-1"}`,
		`{"type":"history","before":null,"limit":null}`,
		`{"type":"history","before":1.5}`,
		`{"type":"history","limit":"10","request_id":"r-2"}`,
		`{"type":"history","limit":9223372036854775808}`,
		`{"type":5,"client_msg_id":"c-9"}`,
		`{"TYPE":"chat_message","Text":"case-insensitive keys"}`,
		`{"type":"chat_message","type":7}`,
		`{"type":"chat_message","text":"\u0000\ud83d\ude00"}`,
		`{"type":"chat_message","text":"a"} trailing`,
		`{"type":"chat_message","text":["not","a","string"]}`,
		`{"text":{"nested":{"deep":[1,{"x":null}]}}}`,
		"{\"text\":\"\xff\xfe\"}",
		"\xff\xfe",
		strings.Repeat("[", 10001),
		"{" + strings.Repeat(`"a":{`, 200) + strings.Repeat("}", 201),
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cmd, err := decodeFrame(data)
		trimmed := bytes.TrimLeft(data, " \t\r\n")
		if len(trimmed) == 0 || trimmed[0] != '{' || !json.Valid(data) {
			if err != nil || !cmd.raw || cmd.Type != typeChat || cmd.Text != string(data) {
				t.Fatalf("decodeFrame(%q) = %+v, %v; want a raw chat message with exactly the frame's text", data, cmd, err)
			}
			if cmd.ClientMsgID != "" || cmd.RequestID != "" || cmd.Before != nil || cmd.Limit != nil {
				t.Fatalf("decodeFrame(%q): raw message with command fields %+v", data, cmd)
			}
			return
		}
		// A JSON object.
		if cmd.raw {
			t.Fatalf("decodeFrame(%q): a JSON object decoded as raw text", data)
		}
		wrong := fuzzWrongKindField(t, data)
		switch {
		case errors.Is(err, errBadCommand):
			if err != errBadCommand {
				t.Fatalf("decodeFrame(%q): error %v, want errBadCommand itself", data, err)
			}
			if wrong == "" {
				t.Fatalf("decodeFrame(%q): errBadCommand, but every known field has the right kind", data)
			}
			if cmd.Text != "" || cmd.Before != nil || cmd.Limit != nil {
				t.Fatalf("decodeFrame(%q): a bad command carries fields beyond the ids to echo: %+v", data, cmd)
			}
		case err != nil:
			t.Fatalf("decodeFrame(%q): error %v, want nil or errBadCommand", data, err)
		default:
			if wrong != "" {
				t.Fatalf("decodeFrame(%q) accepted a command whose field %q has the wrong kind: %+v", data, wrong, cmd)
			}
			// Strings decoded from JSON are valid UTF-8, so the known
			// fields survive a round trip.
			for _, s := range []string{cmd.Type, cmd.Text, cmd.ClientMsgID, cmd.RequestID} {
				if !utf8.ValidString(s) {
					t.Fatalf("decodeFrame(%q): a field is not valid UTF-8: %+v", data, cmd)
				}
			}
			again, err := json.Marshal(cmd)
			if err != nil {
				t.Fatal(err)
			}
			back, err := decodeFrame(again)
			if err != nil || back.raw || back.Type != cmd.Type || back.Text != cmd.Text ||
				back.ClientMsgID != cmd.ClientMsgID || back.RequestID != cmd.RequestID ||
				!fuzzSameInt(back.Before, cmd.Before) || !fuzzSameInt(back.Limit, cmd.Limit) {
				t.Fatalf("decodeFrame(%q) = %+v; re-encoded as %s it decodes to %+v, %v", data, cmd, again, back, err)
			}
		}
	})
}

func fuzzSameInt(a, b *int64) bool { return (a == nil) == (b == nil) && (a == nil || *a == *b) }

// fuzzCommandFields are the keys of command and the kind of value each
// takes: a string or an int64 (either may be null).
var fuzzCommandFields = map[string]bool{ // name → is an integer
	"type": false, "text": false, "client_msg_id": false, "request_id": false,
	"before": true, "limit": true,
}

// fuzzWrongKindField walks the top-level members of a valid JSON object,
// duplicates included, and returns the first known key (matched
// case-insensitively, as encoding/json does) whose value has the wrong kind,
// or "".
func fuzzWrongKindField(t *testing.T, data []byte) string {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		t.Fatalf("%q: not an object: %v %v", data, tok, err)
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			t.Fatalf("%q: %v", data, err)
		}
		key := tok.(string)
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			t.Fatalf("%q: %v", data, err)
		}
		for name, integer := range fuzzCommandFields {
			if !strings.EqualFold(key, name) {
				continue
			}
			v := string(raw)
			switch {
			case v == "null":
			case integer:
				if _, err := strconv.ParseInt(v, 10, 64); err != nil {
					return key
				}
			default:
				if v[0] != '"' {
					return key
				}
			}
		}
	}
	return ""
}

// FuzzHandshakeParams: checkUsername, checkRoom and resumePoint never panic
// on any strings and accept exactly what PROTOCOL.md's handshake table says.
func FuzzHandshakeParams(f *testing.F) {
	f.Add("Alice", "general", "42", "LM3D5OT4R2WX", true, "since=42&epoch=k3v9q2x7m4b1")
	f.Add("  Bob  ", "a.b_c-D9", "0", "", true, "since=0")
	f.Add("", "", "", "", false, "")
	f.Add("   ", "a/b", "-1", "e", true, "since=-1&since=2")
	f.Add(strings.Repeat("é", 32), strings.Repeat("r", 64), "9223372036854775807", "x", true, "epoch=x")
	f.Add(strings.Repeat("é", 33), strings.Repeat("r", 65), "9223372036854775808", "x", true, "since=9223372036854775808")
	f.Add("a\x07b", "room with spaces", "+5", "", true, "since=%2B5")
	f.Add("a\xffb", "ünïcode", "-0", "", true, "since=-0")
	f.Add("\u00a0nbsp\u2028", "r\x00", "0x10", "", true, "since=1_000")
	f.Add("\u200b", "..", " 1", "", true, "since=&epoch=")
	f.Add("tab\tinside", "-", "1e3", "", true, "since=%zz")
	f.Fuzz(func(t *testing.T, username, room, since, epoch string, hasSince bool, rawQuery string) {
		// Username: trimmed, 1 to 32 characters, valid UTF-8, no control
		// characters.
		name, err := checkUsername(username)
		trimmed := strings.TrimSpace(username)
		n := utf8.RuneCountInString(trimmed)
		want := utf8.ValidString(trimmed) && n >= 1 && n <= maxUsernameLen && strings.IndexFunc(trimmed, unicode.IsControl) < 0
		switch {
		case want && (err != nil || name != trimmed):
			t.Fatalf("checkUsername(%q) = %q, %v; want %q accepted", username, name, err, trimmed)
		case !want && err == nil:
			t.Fatalf("checkUsername(%q) accepted %q", username, name)
		case err == nil:
			if name != strings.TrimSpace(name) || strings.ContainsFunc(name, unicode.IsControl) || !utf8.ValidString(name) {
				t.Fatalf("checkUsername(%q) accepted %q", username, name)
			}
		}

		// Room: [A-Za-z0-9._-]{1,64}.
		if err, want := checkRoom(room), fuzzRoomPattern.MatchString(room); (err == nil) != want {
			t.Fatalf("checkRoom(%q) = %v; pattern match %v", room, err, want)
		}

		// since: accepted iff absent or a non-negative int64.
		q := url.Values{}
		if hasSince {
			q.Set("since", since)
		}
		if epoch != "" {
			q.Set("epoch", epoch)
		}
		fuzzCheckResume(t, q)
		if parsed, err := url.ParseQuery(rawQuery); err == nil {
			fuzzCheckResume(t, parsed)
		}
	})
}

var fuzzRoomPattern = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

func fuzzCheckResume(t *testing.T, q url.Values) {
	t.Helper()
	resume, since, epoch, err := resumePoint(q)
	if !q.Has("since") {
		if resume || since != 0 || err != nil || epoch != q.Get("epoch") {
			t.Fatalf("resumePoint(%v) = %v, %d, %q, %v; want no resume and the epoch", q, resume, since, epoch, err)
		}
		return
	}
	n, ok := new(big.Int).SetString(q.Get("since"), 10)
	want := ok && n.Sign() >= 0 && n.IsInt64()
	switch {
	case want && (err != nil || !resume || since != n.Int64() || epoch != q.Get("epoch")):
		t.Fatalf("resumePoint(%v) = %v, %d, %q, %v; want since %v accepted", q, resume, since, epoch, err, n)
	case !want && (err == nil || resume || since != 0 || epoch != ""):
		t.Fatalf("resumePoint(%v) = %v, %d, %q, %v; want since refused", q, resume, since, epoch, err)
	}
}

// FuzzBatchSplit: for any list of real events (made with encode from
// arbitrary texts and usernames), the frames session.write sends to a
// chatkit.v1 client, split on "\n" as client.js splits them, give back
// exactly the events, in order; no frame exceeds maxBatch unless it is one
// event; and batching is greedy (the next event would not have fitted).
// A seed-style client gets one frame per event.
//
// The joining is not separable from session.write, which writes to the
// session's transport, so this drives session.write itself over one real
// connection pair per fuzzing process (as broadcast_test.go's serverConn
// does), reused across inputs; only the split side is reimplemented here,
// as client.js does it.
func FuzzBatchSplit(f *testing.F) {
	f.Add("hi\x00there\x00line\nbreak", "Alice", uint16(1), uint8(3), true)
	f.Add("", "", uint16(0), uint8(0), true)
	f.Add("x", "Bob", uint16(40<<10), uint8(3), true)  // 40 KiB events: one per frame
	f.Add("xy", "Bob", uint16(16<<10), uint8(9), true) // 32 KiB events: two per frame minus the newline
	f.Add("\u2028\u2029</script>\"\\", "é", uint16(300), uint8(200), true)
	f.Add("\xff\xfe invalid", "\x00ctl", uint16(7), uint8(5), true)
	f.Add("a\x00b\x00c", "seed", uint16(2), uint8(4), false)
	chat := New(WithLogger(nil))
	srvBatch, trBatch, cliBatch := fuzzConnPair(f, chat, Subprotocol)
	srvPlain, trPlain, cliPlain := fuzzConnPair(f, chat)
	f.Fuzz(func(t *testing.T, texts, username string, repeat uint16, count uint8, batch bool) {
		parts := strings.Split(texts, "\x00")
		n := max(len(parts), int(count))
		var events [][]byte
		total := 0
		for i := range n {
			text := strings.Repeat(parts[i%len(parts)], max(1, int(repeat)))
			if len(text) > maxBatch+1024 { // big enough for an event over maxBatch
				text = text[:maxBatch+1024]
			}
			var ev []byte
			switch i % 4 {
			case 0, 1:
				ev = encode(newChatEvent(Message{ID: int64(i + 1), Room: "r", Username: username, Text: text, ClientMsgID: fmt.Sprint("c-", i), Time: time.Unix(int64(i), 0)}))
			case 2:
				ev = encode(presenceEvent{Type: typeUserJoined, Room: "r", Username: username + text[:min(len(text), 64)], Timestamp: formatTime(time.Unix(0, 0))})
			default:
				ev = encode(errorEvent{Type: typeError, Code: codeBadRequest, Error: text, RequestID: username})
			}
			if bytes.IndexByte(ev, '\n') >= 0 {
				t.Fatalf("encoded event contains a raw newline: %q", ev)
			}
			if !json.Valid(ev) {
				t.Fatalf("encoded event is not valid JSON: %q", ev)
			}
			events = append(events, ev)
			if total += len(ev); total > 4*maxBatch {
				break
			}
		}
		srvConn, tr, cli := srvPlain, trPlain, cliPlain
		if batch {
			srvConn, tr, cli = srvBatch, trBatch, cliBatch
		}
		s := newSession(chat, nil, "fuzz")
		defer s.cancel()
		s.conn, s.tr, s.batch = srvConn, tr, batch
		written := make(chan error, 1)
		go func() { written <- s.write(events) }()

		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		var frames [][]byte
		var got [][]byte
		for len(got) < len(events) {
			_, frame, err := cli.Read(ctx)
			if err != nil {
				t.Fatalf("after %d of %d events: %v", len(got), len(events), err)
			}
			frames = append(frames, frame)
			for line := range bytes.SplitSeq(frame, []byte("\n")) {
				got = append(got, line)
			}
		}
		if err := <-written; err != nil {
			t.Fatal(err)
		}
		if len(got) != len(events) {
			t.Fatalf("split gives %d events, want %d", len(got), len(events))
		}
		for i := range events {
			if !bytes.Equal(got[i], events[i]) {
				t.Fatalf("event %d: got %.80q, want %.80q", i, got[i], events[i])
			}
		}
		next := 0 // index of the first event of each frame
		for i, frame := range frames {
			k := bytes.Count(frame, []byte("\n")) + 1
			if !batch && k != 1 {
				t.Fatalf("seed-style client: frame %d holds %d events", i, k)
			}
			if len(frame) > maxBatch && k > 1 {
				t.Fatalf("frame %d: %d bytes and %d events, over maxBatch %d", i, len(frame), k, maxBatch)
			}
			next += k
			if batch && next < len(events) && len(frame)+1+len(events[next]) <= maxBatch {
				t.Fatalf("frame %d (%d bytes) ends although event %d (%d bytes) fitted", i, len(frame), next, len(events[next]))
			}
		}
	})
}

// fuzzConnPair returns the server and client sides of one WebSocket
// connection, closed when f's fuzzing ends.
func fuzzConnPair(tb testing.TB, chat *Server, subprotocols ...string) (srv *websocket.Conn, tr *transport, cli *websocket.Conn) {
	tb.Helper()
	type accepted struct {
		conn *websocket.Conn
		tr   *transport
	}
	conns := make(chan accepted, 1)
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hw := &hijackRecorder{ResponseWriter: w, pool: &chat.gatherBuffers, timeout: chat.cfg.writeTimeout}
		c, err := websocket.Accept(hw, r, &websocket.AcceptOptions{Subprotocols: []string{Subprotocol}})
		if err != nil {
			return
		}
		conns <- accepted{c, hw.t}
	}))
	tb.Cleanup(ts.Close)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	cli, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(ts.URL, "http"), &websocket.DialOptions{Subprotocols: subprotocols})
	if err != nil {
		tb.Fatal(err)
	}
	cli.SetReadLimit(-1)
	tb.Cleanup(func() { cli.CloseNow() })
	a := <-conns
	tb.Cleanup(func() { a.conn.CloseNow() })
	return a.conn, a.tr, cli
}

// FuzzHistoryRequest: a history command with arbitrary before, limit and
// request_id values (any JSON values, or request_id as any string) goes
// through decodeFrame and session.handle, as the reader hands it over, on a
// session without a connection: its writer is marked running, so answers
// stay in its queue to be read here. The answer is a history page, or
// bad_request, and a second identical request on the same session (whose
// history bucket holds one token) is rate_limited unless the first was
// refused; every answer echoes request_id when it was a string of at most
// 64 characters, and no other.
func FuzzHistoryRequest(f *testing.F) {
	f.Add("120", "50", "r-1", false)
	f.Add("", "", "", false)
	f.Add("", "", `"r-raw"`, true)
	f.Add("null", "null", "null", true)
	f.Add("0", "0", "r", false)
	f.Add("-5", "1", "r", false)
	f.Add("1", "-1", "r", false)
	f.Add("1.5", "1e2", "r", false)
	f.Add(`"120"`, "50", "r", false)
	f.Add("9223372036854775807", "9223372036854775807", strings.Repeat("x", 64), false)
	f.Add("9223372036854775808", "101", strings.Repeat("x", 65), false)
	f.Add("3", "2", strings.Repeat("é", 64), false)
	f.Add("{}", "[]", "42", true)
	f.Add("true", `"x"`, `{"a":1}`, true)
	f.Add("", "1", "\xff", false)
	// A field of the wrong type beside a request_id over 64 characters: the
	// decode-error path once echoed request_id whatever its length.
	f.Add("1.5", "", strings.Repeat("x", 65), false)

	const kept = 120 // messages in the room: more than one page
	chat := New(WithLogger(nil), WithHistorySize(kept), WithHistoryRateLimit(0.001, 1))
	rm := newRoom("fuzz", chat)
	ctx := context.Background()
	for i := range kept + 30 { // the oldest 30 are no longer kept
		if _, _, err := chat.store.Append(ctx, Message{Room: "fuzz", Username: "u", Text: fmt.Sprint("m", i), Time: time.Unix(int64(i), 0)}); err != nil {
			f.Fatal(err)
		}
	}
	st, _, err := chat.store.Before(ctx, "fuzz", 0, 1)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, before, limit, requestID string, rawRequestID bool) {
		// JSON whitespace around a value is no part of it.
		before, limit = strings.Trim(before, " \t\r\n"), strings.Trim(limit, " \t\r\n")
		if rawRequestID {
			requestID = strings.Trim(requestID, " \t\r\n")
		}
		var b strings.Builder
		b.WriteString(`{"type":"history"`)
		member := func(key, raw string) bool {
			if raw == "" {
				return true
			}
			if !json.Valid([]byte(raw)) { // one JSON value: no member can be injected
				return false
			}
			fmt.Fprintf(&b, `,%q:%s`, key, raw)
			return true
		}
		rid := requestID
		if !rawRequestID {
			j, _ := json.Marshal(requestID)
			rid = string(j)
		}
		if !member("before", before) || !member("limit", limit) || !member("request_id", rid) {
			return
		}
		b.WriteString("}")
		frame := []byte(b.String())
		if !utf8.Valid(frame) {
			return // the reader closes with 1007 before decoding
		}

		// What the answer must be, worked out from the values.
		var echo string
		if s, isString := fuzzJSONString(rid); isString && utf8.RuneCountInString(s) <= maxClientMsgID {
			echo = s
		}
		wantBad := false
		var wantBefore, wantLimit int64 = 0, defaultPage
		for _, p := range []struct {
			raw string
			dst *int64
		}{{before, &wantBefore}, {limit, &wantLimit}} {
			if p.raw == "" || p.raw == "null" {
				continue
			}
			v, err := strconv.ParseInt(p.raw, 10, 64)
			if err != nil || v < 1 {
				wantBad = true
			}
			*p.dst = v
		}
		if s, isString := fuzzJSONString(rid); !isString && rid != "null" && rid != "" || isString && utf8.RuneCountInString(s) > maxClientMsgID {
			wantBad = true
		}
		wantLimit = min(wantLimit, maxPage)

		s := newSession(chat, rm, "fuzz")
		defer s.cancel()
		s.writing = true // no writer goroutine: the answers stay queued
		for attempt := range 2 {
			s.handle(s.ctx, frame)
			s.mu.Lock()
			queue := s.queue
			s.queue = nil
			s.mu.Unlock()
			if len(queue) != 1 {
				t.Fatalf("%s: %d answers, want 1", frame, len(queue))
			}
			var ev event
			if err := json.Unmarshal(queue[0], &ev); err != nil {
				t.Fatalf("%s: answer %s: %v", frame, queue[0], err)
			}
			if ev.RequestID != echo {
				t.Fatalf("%s: answer %s echoes request_id %q, want %q", frame, queue[0], ev.RequestID, echo)
			}
			switch {
			case wantBad:
				if ev.Type != typeError || ev.Code != codeBadRequest {
					t.Fatalf("%s (attempt %d): answer %s, want bad_request", frame, attempt+1, queue[0])
				}
			case attempt == 1:
				if ev.Type != typeError || ev.Code != codeRateLimited || ev.RetryAfterMS <= 0 {
					t.Fatalf("%s: second answer %s, want rate_limited with retry_after_ms", frame, queue[0])
				}
			default:
				fuzzCheckPage(t, frame, queue[0], ev, st, wantBefore, wantLimit)
			}
		}
	})
}

// fuzzJSONString decodes raw as a JSON string.
func fuzzJSONString(raw string) (string, bool) {
	if raw == "" || raw[0] != '"' {
		return "", false
	}
	var s string
	if err := json.Unmarshal([]byte(raw), &s); err != nil {
		return "", false
	}
	return s, true
}

// fuzzCheckPage checks a history page against the fuzz room: ids
// st.OldestID to st.LastID are kept.
func fuzzCheckPage(t *testing.T, frame, answer []byte, ev event, st RoomState, before, limit int64) {
	t.Helper()
	if ev.Type != typeHistory || ev.Room != "fuzz" || ev.Epoch != st.Epoch {
		t.Fatalf("%s: answer %s, want a history page of room fuzz, epoch %s", frame, answer, st.Epoch)
	}
	top := st.LastID // the newest id the page may hold
	if before > 0 {
		top = min(top, before-1)
	}
	var want []int64
	for id := max(st.OldestID, top-limit+1); id <= top; id++ {
		want = append(want, id)
	}
	if len(ev.Messages) != len(want) {
		t.Fatalf("%s: %d messages, want %d (ids %v)", frame, len(ev.Messages), len(want), want)
	}
	for i, m := range ev.Messages {
		if m.Type != typeChat || m.ID != want[i] || m.Room != "fuzz" || m.Text != fmt.Sprint("m", m.ID-1) {
			t.Fatalf("%s: message %d is %+v, want id %d", frame, i, m, want[i])
		}
	}
	if hasMore := len(want) > 0 && want[0] > st.OldestID; ev.HasMore != hasMore {
		t.Fatalf("%s: has_more %v, want %v", frame, ev.HasMore, hasMore)
	}
}
