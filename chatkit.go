// Package chatkit is a complete real-time chat for any Go web server, in
// one http.Handler: WebSocket connections, rooms, presence, join and leave
// notices, history with lossless resume after reconnects, per-session rate
// and size limits, idle timeouts and graceful shutdown.
//
//	chat := chatkit.New()
//	mux.Handle("/ws", chat)
//	mux.Handle("/chatkit.js", chatkit.ClientJS())
//
// Clients connect with GET /ws?username=Alice&room=general and exchange
// JSON events described in PROTOCOL.md; a plain text frame is a chat
// message, so simple clients need no JSON at all.
//
// Every Server is independent: the package has no global state.
package chatkit

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	_ "embed"
	"errors"
	"fmt"
	"net/http"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"
	"golang.org/x/time/rate"
)

// ErrServerClosed is returned by Broadcast after Shutdown has begun.
var ErrServerClosed = errors.New("chatkit: server closed")

var errTooManyRooms = errors.New("too many rooms")

// A Server is a chat: an http.Handler that upgrades requests to WebSocket
// sessions and puts each in a room. Create one with New. Its methods are
// safe for concurrent use.
type Server struct {
	cfg       config
	readLimit int64
	store     Store
	broker    Broker
	clustered bool          // the broker connects other nodes: publish to it
	typingOut chan struct{} // slots for typing notices being published
	counters  counters

	connMu    sync.Mutex
	conns     int            // admitted connections, in their handshake or past it
	connsByIP map[string]int // the same by client address, with WithMaxConnsPerIP
	refusals  refusalLog

	userLimits userLimits    // WithRateLimitPerUser's buckets
	done       chan struct{} // closed when Shutdown begins

	mu        sync.Mutex
	rooms     map[string]*room
	live      map[*session]struct{} // every session past the handshake
	sweepStop chan struct{}         // stops the sweeper; nil when it does not run
	closing   bool
	sessions  sync.WaitGroup // sessions and Broadcast calls in progress

	gatherBuffers sync.Pool // *[]byte for gathering a batch of frames into one write
}

// New returns a Server configured by opts. It panics if an option has an
// invalid value, such as a ping interval not shorter than the idle timeout.
// A Server starts no goroutine until a client connects.
func New(opts ...Option) *Server {
	cfg := defaultConfig()
	for _, o := range opts {
		o(&cfg)
	}
	cfg.validate()
	if cfg.store == nil {
		cfg.store = NewMemoryStore(cfg.historySize)
	}
	clustered := cfg.broker != nil
	if cfg.broker == nil {
		cfg.broker = newMemoryBroker()
	}
	s := &Server{
		cfg:       cfg,
		clustered: clustered,
		connsByIP: make(map[string]int),
		done:      make(chan struct{}),
		refusals:  newRefusalLog(),
		typingOut: make(chan struct{}, maxTypingOut),
		// A maximum-length message must fit however it is encoded: JSON
		// may \u-escape every character, 12 bytes for a character
		// outside the BMP, and so may the client_msg_id; 1 KiB covers
		// the rest of the command and any whitespace.
		readLimit: int64(12*cfg.maxMessageLen + 12*maxClientMsgID + 1024),
		rooms:     make(map[string]*room),
		live:      make(map[*session]struct{}),
		gatherBuffers: sync.Pool{New: func() any {
			b := make([]byte, 0, 16<<10)
			return &b
		}},
	}
	s.store = timedStore{cfg.store, &s.counters.store}
	s.broker = timedBroker{cfg.broker, &s.counters.broker}
	return s
}

// Subprotocol is the WebSocket subprotocol with which a client asks for
// batched delivery: when several events are waiting for it, the server
// sends them in one text frame, separated by newlines (JSON events never
// contain a raw newline). Clients that do not ask get one event per frame.
const Subprotocol = "chatkit.v1"

func (c *config) limits() limits {
	l := limits{
		MaxMessageLength: c.maxMessageLen,
		Burst:            c.burst,
		HistorySize:      c.historySize,
		PingIntervalMS:   c.pingInterval.Milliseconds(),
	}
	if c.rate != rate.Inf {
		l.Rate = float64(c.rate)
	} else {
		l.Burst = 0
	}
	return l
}

// ServeHTTP performs the WebSocket handshake and starts the session, which
// a goroutine of its own then serves until it ends: ServeHTTP returns
// once the connection is hijacked, so that net/http's state for the
// request (its buffers, the request, the serving goroutine's grown stack)
// is freed rather than kept for the life of the session; Shutdown waits
// for the sessions. Refused handshakes are answered with a JSON body
// {"error": "..."} and these statuses: 405 for a method other than GET, 426
// for a request that is not a WebSocket upgrade, 503 after Shutdown has
// begun, at the WithMaxConns cap (with Retry-After), when every room is in
// use at the WithMaxRooms cap, or when the store or broker does not answer
// within WithStoreTimeout; 429 at the WithMaxConnsPerIP cap (with
// Retry-After); 403 for a cross-origin request that WithOriginPatterns does
// not allow; 401 when WithAuth fails (or the status of an HTTPError it
// returns); 500 when WithAuth or WithRoomResolver panics; and 400 for an
// invalid username, room or since parameter. A username already present in
// the room is accepted and then closed with code 1008 and reason "username
// taken", since a browser can read a close reason but not an HTTP status.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	deny := func(status int, reason, message string) {
		s.counters.refuse(reason)
		s.logRefusal(r, status, reason, message)
		refuse(w, status, message)
	}
	switch {
	case r.Method != http.MethodGet:
		w.Header().Set("Allow", http.MethodGet)
		deny(http.StatusMethodNotAllowed, "bad_request", "chat endpoint: use GET with a WebSocket upgrade")
		return
	case !isUpgrade(r):
		w.Header().Set("Upgrade", "websocket")
		deny(http.StatusUpgradeRequired, "bad_request", "chat endpoint: connect with a WebSocket client")
		return
	case s.isClosing():
		deny(http.StatusServiceUnavailable, "shutting_down", "server is shutting down")
		return
	case !originAllowed(r, s.cfg.origins):
		deny(http.StatusForbidden, "origin", "origin not allowed")
		return
	}
	ip := clientIP(r, s.cfg.trustedProxies)
	switch s.admit(ip) {
	case errTooManyConns:
		w.Header().Set("Retry-After", retryAfterSeconds)
		deny(http.StatusServiceUnavailable, "capacity", "the chat is full; retry later")
		return
	case errTooManyFromIP:
		w.Header().Set("Retry-After", retryAfterSeconds)
		deny(http.StatusTooManyRequests, "capacity", "too many connections from your address; retry later")
		return
	}
	// What the handshake takes is let go here if it fails, and by the
	// session's goroutine once it is started.
	started := false
	defer func() {
		if !started {
			s.dismiss(ip)
		}
	}()
	username, err := callHook(s.cfg.logger, func() (string, error) { return s.cfg.auth(r) })
	if errors.Is(err, errHookPanicked) {
		deny(http.StatusInternalServerError, "internal", "internal error")
		return
	}
	if err != nil {
		status, message := refusalOf(err, http.StatusUnauthorized)
		deny(status, "auth", message)
		return
	}
	if username, err = checkUsername(username); err != nil {
		deny(http.StatusBadRequest, "bad_request", err.Error())
		return
	}
	roomName, err := callHook(s.cfg.logger, func() (string, error) { return s.cfg.resolveRoom(r) })
	if errors.Is(err, errHookPanicked) {
		deny(http.StatusInternalServerError, "internal", "internal error")
		return
	}
	if err == nil {
		err = checkRoom(roomName)
	}
	if err != nil {
		status, message := refusalOf(err, http.StatusBadRequest)
		deny(status, "bad_request", message)
		return
	}
	resume, since, epoch, err := resumePoint(r.URL.Query())
	if err != nil {
		deny(http.StatusBadRequest, "bad_request", err.Error())
		return
	}

	rm, err := s.acquire(roomName)
	switch {
	case errors.Is(err, errTooManyRooms):
		deny(http.StatusServiceUnavailable, "capacity", err.Error())
		return
	case err != nil:
		deny(http.StatusServiceUnavailable, "shutting_down", err.Error())
		return
	}
	defer func() {
		if !started {
			s.release(rm)
		}
	}()
	ctx, cancel := s.storeContext(r.Context())
	err = rm.hold(ctx)
	cancel()
	if err != nil {
		s.cfg.logger.Warn("chatkit: store or broker unavailable", "room", roomName, "err", err)
		deny(http.StatusServiceUnavailable, "unavailable", "chat is unavailable: its store did not answer; retry later")
		return
	}
	defer func() {
		if !started {
			rm.unhold()
		}
	}()
	sess := newSession(s, rm, username)
	hw := &hijackRecorder{ResponseWriter: w, pool: &s.gatherBuffers, timeout: s.cfg.writeTimeout}
	conn, err := websocket.Accept(hw, r, &websocket.AcceptOptions{
		Subprotocols:       []string{Subprotocol},
		InsecureSkipVerify: true, // originAllowed checked it
		OnPongReceived:     func(context.Context, []byte) { sess.touch() },
	})
	if err != nil {
		return // Accept has answered the request
	}
	conn.SetReadLimit(s.readLimit)
	sess.conn, sess.tr = conn, hw.t
	sess.batch = conn.Subprotocol() == Subprotocol
	if !sess.start(r.Context(), resume, since, epoch) {
		return
	}
	started = true
	go func() {
		defer s.dismiss(ip)
		defer s.release(rm)
		defer rm.unhold()
		// net/http no longer stands behind the session to recover a
		// panic: one bug must cost one session, not the process.
		defer func() {
			if p := recover(); p != nil {
				s.cfg.logger.Error("chatkit: session panicked", "session", sess.id, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
			}
		}()
		sess.serve()
	}()
}

// track adds a session to, or removes it from, the live set, which the
// sweeper watches and a Shutdown whose context ends cuts. The sweeper runs
// only while there are live sessions.
func (s *Server) track(sess *session, live bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if live {
		s.counters.sessions.Add(1)
		s.live[sess] = struct{}{}
		if s.sweepStop == nil {
			s.sweepStop = make(chan struct{})
			go s.sweep(s.sweepStop)
		}
		return
	}
	s.counters.sessions.Add(-1)
	delete(s.live, sess)
	if len(s.live) == 0 && s.sweepStop != nil {
		close(s.sweepStop)
		s.sweepStop = nil
	}
}

// sweep pings every live session each ping interval and drops the idle
// ones: one timer for the whole Server instead of one per session.
func (s *Server) sweep(stop <-chan struct{}) {
	ticker := time.NewTicker(s.cfg.pingInterval)
	defer ticker.Stop()
	var batch []*session
	for {
		select {
		case <-stop:
			return
		case now := <-ticker.C:
			s.mu.Lock()
			for sess := range s.live {
				batch = append(batch, sess)
			}
			s.mu.Unlock()
			for _, sess := range batch {
				sess.checkLiveness(now)
			}
			clear(batch)
			batch = batch[:0]
		}
	}
}

func (s *Server) isClosing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

// acquire returns the named room, creating it if needed, and holds it in
// memory until the matching release.
func (s *Server) acquire(name string) (*room, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return nil, errors.New("server is shutting down")
	}
	r := s.rooms[name]
	if r == nil {
		if len(s.rooms) >= s.cfg.maxRooms && !s.evictLocked() {
			return nil, errTooManyRooms
		}
		r = newRoom(name, s)
		s.rooms[name] = r
		s.counters.rooms.Add(1)
	}
	r.refs++
	if r.expiry != nil {
		r.expiry.Stop()
		r.expiry = nil
	}
	s.sessions.Add(1)
	return r, nil
}

// release lets go of a room taken with acquire. A room nobody uses is
// freed at once if it keeps no history, else after the room TTL.
func (s *Server) release(r *room) {
	s.mu.Lock()
	defer s.mu.Unlock()
	defer s.sessions.Done()
	r.refs--
	if r.refs > 0 {
		return
	}
	if s.closing || s.cfg.roomTTL == 0 || !r.keepsHistory() {
		s.freeLocked(r)
		return
	}
	r.emptySince = time.Now()
	r.expiry = time.AfterFunc(s.cfg.roomTTL, func() { s.expire(r) })
}

func (s *Server) expire(r *room) {
	s.mu.Lock()
	defer s.mu.Unlock()
	// The timer may have fired just as the room was taken again.
	if s.rooms[r.name] == r && r.refs == 0 && time.Since(r.emptySince) >= s.cfg.roomTTL {
		s.freeLocked(r)
	}
}

// freeLocked drops a room from memory, and from the store if the store is
// this Server's own memory store.
func (s *Server) freeLocked(r *room) {
	delete(s.rooms, r.name)
	s.counters.rooms.Add(-1)
	if st, ok := s.cfg.store.(interface{ Forget(string) }); ok {
		st.Forget(r.name)
	}
}

// maxTypingOut bounds the typing notices being published at once.
const maxTypingOut = 64

// publishTyping tells the other nodes that a user is typing, without
// making the typer's reader wait for the broker: typing notices are best
// effort, so past maxTypingOut in flight (a slow broker) they are dropped.
// Called from a session's reader, which holds the sessions group.
func (s *Server) publishTyping(room, username string) {
	if !s.clustered {
		return
	}
	select {
	case s.typingOut <- struct{}{}:
	default:
		return
	}
	s.sessions.Add(1)
	go func() {
		defer s.sessions.Done()
		ctx, cancel := s.storeContext(context.Background())
		s.broker.Publish(ctx, Event{Kind: EventTyping, Room: room, Username: username})
		cancel()
		<-s.typingOut
	}()
}

// storeContext bounds a call to the store or the broker.
func (s *Server) storeContext(parent context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(parent, s.cfg.storeTimeout)
}

// evictLocked frees the room that has been empty longest, if any room is
// empty, so that abandoned rooms never lock users out.
func (s *Server) evictLocked() bool {
	var victim *room
	for _, r := range s.rooms {
		if r.refs == 0 && (victim == nil || r.emptySince.Before(victim.emptySince)) {
			victim = r
		}
	}
	if victim == nil {
		return false
	}
	victim.expiry.Stop()
	s.freeLocked(victim)
	return true
}

func (s *Server) room(name string) *room {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rooms[name]
}

// Broadcast stores a message from the server in room and delivers it to
// every member, like a message from a client but without the rate limit
// and the WithOnMessage hook. Its username is the WithSystemName value
// (default ""). A room that does not exist yet is created, so the message
// waits in its history for the first visitors. It returns the stored
// message, or an error for an invalid room name, an empty or too long
// text, a full room cap, or ErrServerClosed after Shutdown has begun.
func (s *Server) Broadcast(room, text string) (Message, error) {
	if err := checkRoom(room); err != nil {
		return Message{}, fmt.Errorf("chatkit: %w", err)
	}
	if strings.TrimSpace(text) == "" {
		return Message{}, errors.New("chatkit: message is empty")
	}
	if !utf8.ValidString(text) || utf8.RuneCountInString(text) > s.cfg.maxMessageLen {
		return Message{}, fmt.Errorf("chatkit: message is not valid UTF-8 of at most %d characters", s.cfg.maxMessageLen)
	}
	r, err := s.acquire(room)
	if err != nil {
		if errors.Is(err, errTooManyRooms) {
			return Message{}, fmt.Errorf("chatkit: %w", err)
		}
		return Message{}, ErrServerClosed
	}
	defer s.release(r)
	ctx, cancel := s.storeContext(context.Background())
	defer cancel()
	m, _, err := s.publish(ctx, r, Message{Room: room, Username: s.cfg.systemName, Text: text, Time: time.Now()}, ack{})
	if err != nil {
		return Message{}, fmt.Errorf("chatkit: storing the message: %w", err)
	}
	return m, nil
}

// publish stores m, delivers it to the room's members on this node and
// publishes it to the other nodes. The ack is queued once the message is
// delivered here, or at once for a duplicate.
func (s *Server) publish(ctx context.Context, r *room, m Message, a ack) (Message, bool, error) {
	r.appending.Add(1)
	defer r.appending.Add(-1)
	stored, dup, err := s.store.Append(ctx, m)
	if err != nil {
		return Message{}, false, err
	}
	if dup {
		// Usually delivered long ago; but a first attempt that timed out
		// may have been stored without this node hearing of it, and then
		// this is its delivery here. offer sorts out which.
		a.frame = encode(ackEvent{Type: typeAck, ClientMsgID: stored.ClientMsgID, ID: stored.ID})
		r.offer(stored, a)
		return stored, true, nil
	}
	s.counters.messages.Add(1)
	if a.s != nil {
		a.frame = encode(ackEvent{Type: typeAck, ClientMsgID: stored.ClientMsgID, ID: stored.ID})
	}
	r.offer(stored, a)
	if s.clustered && !s.cfg.adapter {
		if err := s.broker.Publish(ctx, Event{Kind: EventMessage, Room: stored.Room, Message: &stored}); err != nil {
			// Stored, so the other nodes read it from the store when
			// they next see a message or a reset.
			s.cfg.logger.Warn("chatkit: publishing a message failed", "room", stored.Room, "err", err)
		}
	}
	return stored, false, nil
}

// ActiveUsers returns the users present in room, sorted, or nil if the
// room has nobody in it.
func (s *Server) ActiveUsers(room string) []string {
	r := s.room(room)
	if r == nil {
		return nil
	}
	users := r.users()
	if len(users) == 0 {
		return nil
	}
	return users
}

// Rooms returns the names of the rooms held in memory, sorted: those with
// members and the empty ones still keeping their history.
func (s *Server) Rooms() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	names := make([]string, 0, len(s.rooms))
	for name := range s.rooms {
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}

// Disconnect ends every session of username in room, with close code 1001
// and reason "disconnected", and announces the user's leave. It returns how
// many sessions it ended. Clients may reconnect: to keep a user out, refuse
// them in WithAuth.
func (s *Server) Disconnect(room, username string) int {
	r := s.room(room)
	if r == nil {
		return 0
	}
	return r.disconnect(username)
}

// Shutdown stops the Server gracefully: new handshakes get HTTP 503, and
// every session is closed with code 1001 "server shutting down" after what
// is already queued for it has been written; no user_left is sent for
// these closes. Shutdown returns when every session has ended, or, when ctx
// ends first, closes the remaining connections without a close handshake
// and returns ctx.Err() at once; call Shutdown again to wait for their
// goroutines to finish. A Server cannot be restarted.
//
// http.Server.Shutdown does not wait for WebSocket connections, which are
// hijacked; call both, for example with
// httpServer.RegisterOnShutdown(func() { chat.Shutdown(ctx) }) or by
// calling chat.Shutdown before httpServer.Shutdown.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if !s.closing {
		close(s.done)
	}
	s.closing = true
	rooms := make([]*room, 0, len(s.rooms))
	for _, r := range s.rooms {
		rooms = append(rooms, r)
		if r.expiry != nil {
			r.expiry.Stop()
		}
	}
	s.mu.Unlock()
	for _, r := range rooms {
		r.shutdown()
	}
	done := make(chan struct{})
	go func() {
		s.sessions.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		s.mu.Lock()
		for sess := range s.live {
			sess.kill()
		}
		s.mu.Unlock()
		return ctx.Err()
	}
}

func randomID() string { return rand.Text()[:16] }

//go:embed client.js
var clientJS []byte

// ClientJS returns a handler that serves the browser client library,
// client.js, as JavaScript. By default it is an ES module:
//
//	<script type="module">import { connect } from "/chatkit.js"; ...</script>
//
// With the query parameter "classic" it is served without its export
// statement, as a classic script that defines window.ChatKit:
//
//	<script src="/chatkit.js?classic"></script>
//
// It answers conditional requests with 304 via an ETag, and lets browsers
// cache the file for an hour.
func ClientJS() http.Handler {
	module := clientJS
	classic := module
	if i := bytes.LastIndex(module, []byte("\nexport ")); i >= 0 {
		classic = module[:i+1]
	}
	etag := func(b []byte) string {
		sum := sha256.Sum256(b)
		return fmt.Sprintf(`"%x"`, sum[:8])
	}
	moduleTag, classicTag := etag(module), etag(classic)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		body, tag := module, moduleTag
		if r.URL.Query().Has("classic") {
			body, tag = classic, classicTag
		}
		h := w.Header()
		h.Set("Content-Type", "text/javascript; charset=utf-8")
		h.Set("Cache-Control", "public, max-age=3600")
		h.Set("ETag", tag)
		h.Set("X-Content-Type-Options", "nosniff")
		http.ServeContent(w, r, "client.js", time.Time{}, bytes.NewReader(body))
	})
}
