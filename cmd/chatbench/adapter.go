package main

import (
	"bytes"
	"fmt"
	"net/url"
	"strconv"
)

// The benchmark payload, the text of every published message:
//
//	<sender> <seq> <send time, unix ns> <step>[ <padding>]
//
// Digits and spaces only, so that no protocol escapes it: every adapter
// finds it verbatim in the "text" field of a JSON event or in a raw frame.
func appendPayload(b []byte, sender int, seq int64, sched int64, step int, size int) []byte {
	start := len(b)
	b = strconv.AppendInt(b, int64(sender), 10)
	b = append(b, ' ')
	b = strconv.AppendInt(b, seq, 10)
	b = append(b, ' ')
	b = strconv.AppendInt(b, sched, 10)
	b = append(b, ' ')
	b = strconv.AppendInt(b, int64(step), 10)
	if pad := size - (len(b) - start) - 1; pad > 0 {
		b = append(b, ' ')
		for range pad {
			b = append(b, '0')
		}
	}
	return b
}

type payload struct {
	sender int
	seq    int64
	sched  int64
	step   int
}

// parsePayload reads a payload; ok is false for anything else.
func parsePayload(p []byte) (pl payload, ok bool) {
	var f [4]int64
	i := 0
	for k := range f {
		start := i
		var v int64
		for i < len(p) && p[i] >= '0' && p[i] <= '9' {
			v = v*10 + int64(p[i]-'0')
			i++
		}
		if i == start || i-start > 19 {
			return pl, false
		}
		f[k] = v
		if k < 3 {
			if i >= len(p) || p[i] != ' ' {
				return pl, false
			}
			i++
		}
	}
	if i < len(p) && p[i] != ' ' {
		return pl, false
	}
	return payload{sender: int(f[0]), seq: f[1], sched: f[2], step: int(f[3])}, true
}

// What one line of a received frame is.
type lineKind uint8

const (
	lineIgnore lineKind = iota
	lineMsg             // carries a benchmark payload
	lineReady           // the member is in: welcome, own join, subscribe reply
	linePing            // an application-level ping that wants an answer
	lineError           // an error event or reply
)

// An adapter speaks one server's protocol. Received frames are split into
// lines on '\n' before classify sees them.
type adapter interface {
	name() string
	// requestURI returns the path and query that connect user to room.
	requestURI(base *url.URL, user, room string) string
	// hello returns the frames to send right after the handshake.
	hello(room string) [][]byte
	// readyOnConnect reports that a member is in once the handshake is
	// done (the server sends nothing to say so).
	readyOnConnect() bool
	// classify examines one line of a frame received by member m; for
	// lineMsg it returns the payload.
	classify(m *member, line []byte) (lineKind, []byte)
	// publish appends to dst the frame that publishes payload to room.
	publish(dst []byte, m *member, room string, payload []byte) []byte
	// pong is the answer to a linePing.
	pong() []byte
}

func newAdapter(name string) (adapter, error) {
	switch name {
	case "chatkit":
		return chatkitAdapter{}, nil
	case "seed":
		return seedAdapter{}, nil
	case "raw":
		return rawAdapter{}, nil
	case "centrifuge":
		return centrifugeAdapter{}, nil
	}
	return nil, fmt.Errorf("unknown protocol %q (chatkit, seed, raw, centrifuge)", name)
}

// textField returns the JSON string value of "text" in line, allowing a
// space after the colon (Python's json.dumps writes one). Payloads hold
// no escapes, so the value ends at the next quote.
func textField(line []byte) ([]byte, bool) {
	i := bytes.Index(line, []byte(`"text":`))
	if i < 0 {
		return nil, false
	}
	rest := line[i+len(`"text":`):]
	for len(rest) > 0 && rest[0] == ' ' {
		rest = rest[1:]
	}
	if len(rest) == 0 || rest[0] != '"' {
		return nil, false
	}
	rest = rest[1:]
	j := bytes.IndexByte(rest, '"')
	if j < 0 {
		return nil, false
	}
	return rest[:j], true
}

func withQuery(base *url.URL, q url.Values) string {
	u := *base
	u.RawQuery = q.Encode()
	return u.RequestURI()
}

// chatkitAdapter speaks chatkit's protocol (PROTOCOL.md): ?username=&room=,
// ready on the welcome event, messages published as raw text frames and
// received as chat_message events. A frame may hold several events joined
// by '\n' (batching for clients that negotiate a subprotocol).
type chatkitAdapter struct{}

func (chatkitAdapter) name() string { return "chatkit" }
func (chatkitAdapter) requestURI(base *url.URL, user, room string) string {
	return withQuery(base, url.Values{"username": {user}, "room": {room}})
}
func (chatkitAdapter) hello(string) [][]byte { return nil }
func (chatkitAdapter) readyOnConnect() bool  { return false }
func (chatkitAdapter) pong() []byte          { return nil }
func (chatkitAdapter) publish(dst []byte, _ *member, _ string, p []byte) []byte {
	return append(dst, p...)
}

var (
	ckChat    = []byte(`{"type":"chat_message"`)
	ckWelcome = []byte(`{"type":"welcome"`)
	ckError   = []byte(`{"type":"error"`)
)

func (chatkitAdapter) classify(m *member, line []byte) (lineKind, []byte) {
	switch {
	case bytes.HasPrefix(line, ckChat):
		if t, ok := textField(line); ok {
			return lineMsg, t
		}
	case bytes.HasPrefix(line, ckWelcome):
		return lineReady, nil
	case bytes.HasPrefix(line, ckError):
		return lineError, line
	}
	return lineIgnore, nil
}

// seedAdapter speaks the seed's protocol: ?username=&client_id=&room=, raw
// text in, {"type": "chat_message", ...} JSON out (Python's spacing). The
// seed sends no welcome: a member is in when it sees its own user_joined.
type seedAdapter struct{}

func (seedAdapter) name() string { return "seed" }
func (seedAdapter) requestURI(base *url.URL, user, room string) string {
	return withQuery(base, url.Values{"username": {user}, "client_id": {user}, "room": {room}})
}
func (seedAdapter) hello(string) [][]byte { return nil }
func (seedAdapter) readyOnConnect() bool  { return false }
func (seedAdapter) pong() []byte          { return nil }
func (seedAdapter) publish(dst []byte, _ *member, _ string, p []byte) []byte {
	return append(dst, p...)
}

var (
	seedChat   = []byte(`{"type": "chat_message"`)
	seedJoined = []byte(`{"type": "user_joined", "username": "`)
)

func (seedAdapter) classify(m *member, line []byte) (lineKind, []byte) {
	switch {
	case bytes.HasPrefix(line, seedChat):
		if t, ok := textField(line); ok {
			return lineMsg, t
		}
	case !m.isReady() && bytes.HasPrefix(line, seedJoined):
		rest := line[len(seedJoined):]
		if bytes.HasPrefix(rest, []byte(m.name)) && len(rest) > len(m.name) && rest[len(m.name)] == '"' {
			return lineReady, nil
		}
	}
	return lineIgnore, nil
}

// rawAdapter is for servers that relay text as is (the gorilla chat
// example, the limit server): every line of a frame is a message.
type rawAdapter struct{}

func (rawAdapter) name() string { return "raw" }
func (rawAdapter) requestURI(base *url.URL, _, room string) string {
	return withQuery(base, url.Values{"room": {room}})
}
func (rawAdapter) hello(string) [][]byte { return nil }
func (rawAdapter) readyOnConnect() bool  { return true }
func (rawAdapter) pong() []byte          { return nil }
func (rawAdapter) publish(dst []byte, _ *member, _ string, p []byte) []byte {
	return append(dst, p...)
}
func (rawAdapter) classify(_ *member, line []byte) (lineKind, []byte) {
	if len(line) > 0 && line[0] >= '0' && line[0] <= '9' {
		return lineMsg, line
	}
	return lineIgnore, nil
}

// centrifugeAdapter speaks centrifuge's JSON protocol (v2) by hand:
// {"id":1,"connect":{}}, {"id":2,"subscribe":{"channel":room}}, publishes
// as {"id":n,"publish":{"channel":room,"data":{"text":payload}}}, and
// publications arrive as {"push":{"channel":..,"pub":{"data":{"text":..}}}}.
// Replies and pushes may be batched into one frame, one per line. The
// server's ping is an empty object {}, answered with {}.
type centrifugeAdapter struct{}

func (centrifugeAdapter) name() string { return "centrifuge" }
func (centrifugeAdapter) requestURI(base *url.URL, _, _ string) string {
	return base.RequestURI()
}
func (centrifugeAdapter) hello(room string) [][]byte {
	return [][]byte{
		[]byte(`{"id":1,"connect":{"name":"chatbench"}}`),
		fmt.Appendf(nil, `{"id":2,"subscribe":{"channel":%q}}`, room),
	}
}
func (centrifugeAdapter) readyOnConnect() bool { return false }
func (centrifugeAdapter) pong() []byte         { return []byte(`{}`) }

func (centrifugeAdapter) publish(dst []byte, m *member, room string, p []byte) []byte {
	m.cmdID++
	dst = append(dst, `{"id":`...)
	dst = strconv.AppendInt(dst, m.cmdID+2, 10)
	dst = append(dst, `,"publish":{"channel":"`...)
	dst = append(dst, room...)
	dst = append(dst, `","data":{"text":"`...)
	dst = append(dst, p...)
	return append(dst, `"}}}`...)
}

var (
	cfPush  = []byte(`{"push":`)
	cfSub   = []byte(`{"id":2,"subscribe"`)
	cfError = []byte(`"error":`)
)

func (centrifugeAdapter) classify(_ *member, line []byte) (lineKind, []byte) {
	switch {
	case bytes.HasPrefix(line, cfPush):
		if t, ok := textField(line); ok {
			return lineMsg, t
		}
	case len(line) == 2 && line[0] == '{' && line[1] == '}':
		return linePing, nil
	case bytes.HasPrefix(line, cfSub):
		return lineReady, nil
	case bytes.HasPrefix(line, []byte(`{"id":`)) && bytes.Contains(line, cfError):
		return lineError, line
	}
	return lineIgnore, nil
}
