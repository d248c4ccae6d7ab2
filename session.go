package chatkit

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"
	"golang.org/x/time/rate"
)

// A session is one WebSocket connection of one user in one room. It owns
// the connection: exactly one reader (serve, on a goroutine of its own)
// and at most one writer goroutine, which drains the bounded queue that
// the room fills.
// The writer runs only while there is something to write, so an idle
// session costs no goroutine besides its reader, and no timer: the
// Server's sweeper pings it.
type session struct {
	id       string
	username string
	room     *room
	srv      *Server
	conn     *websocket.Conn
	tr       *transport      // under conn: gathers each batch into one write; closing tr.Conn ends every read and write at once
	batch    bool            // the client negotiated chatkit.v1: several events per frame
	ctx      context.Context // ends when the session does; given to the WithOnMessage hook
	cancel   context.CancelFunc
	index    int           // position in room.members, -1 when not a member; guarded by room.mu
	exited   chan struct{} // made when the session leaves its room, closed by room.exit; guarded by room.mu

	lastSeen atomic.Int64 // unix nanoseconds of the last frame or pong
	ended    atomic.Bool  // the reader has stopped: the session is about to leave
	pinging  atomic.Bool

	// Read-side state, owned by the reader goroutine.
	limiter        limiter
	rateLimitedRun int // rate_limited errors in a row
	badRun         int // bad_request errors in a row

	mu      sync.Mutex
	queue   [][]byte
	notices int      // presence notices in queue
	spare   [][]byte // the writer's previous batch, reused for the next queue
	writing bool     // a writer goroutine is running
	closing bool     // no more frames are queued; the writer closes the connection
	drain   bool     // write what is queued before closing
	code    websocket.StatusCode
	reason  string
	workers sync.WaitGroup // the writer and ping goroutines; started only before closing
}

func newSession(srv *Server, r *room, username string) *session {
	s := &session{
		id:       randomID(),
		username: username,
		room:     r,
		srv:      srv,
		index:    -1,
		limiter:  newLimiter(&srv.cfg),
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.touch()
	return s
}

func (s *session) touch() { s.lastSeen.Store(time.Now().UnixNano()) }

// enqueue queues one frame for writing. It never blocks: it returns false
// when the queue is full, and the caller then drops the session. Frames
// for a closing session are discarded.
//
// Presence notices (notice set) are bounded apart from the other frames,
// at noticeQueueFactor times the queue: a join storm (a class arriving at
// once, every client of a restarted node coming back) makes a notice per
// join for every member, faster than the writers of a busy server get to
// run, without any client being slow. A client that does not read is
// still dropped: by its messages filling the queue, or its notices
// filling theirs, or the write timeout.
func (s *session) enqueue(frame []byte, notice bool) bool {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return true
	}
	limit := s.srv.cfg.sendQueue
	switch {
	case notice && s.notices >= noticeQueueFactor*limit,
		!notice && len(s.queue)-s.notices >= limit:
		s.mu.Unlock()
		return false
	}
	if notice {
		s.notices++
	}
	s.queue = append(s.queue, frame)
	s.startWriterLocked()
	s.mu.Unlock()
	return true
}

// startWriterLocked starts the writer unless it runs. Workers are only
// started before closing is set, so that run's final Wait never races
// with an Add.
func (s *session) startWriterLocked() {
	if !s.writing {
		s.writing = true
		s.workers.Add(1)
		go s.writeLoop() // not workers.Go: its closure would cost an allocation per start
	}
}

// close makes the writer close the connection with code and reason, after
// writing what is queued if drain is set. Only the first call counts. A
// zero code closes without a close frame, for a connection that is gone.
func (s *session) close(code websocket.StatusCode, reason string, drain bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return
	}
	s.startWriterLocked()
	s.closing, s.code, s.reason, s.drain = true, code, reason, drain
	if !drain {
		s.queue, s.notices = nil, 0
	}
}

// start puts the session in its room after the WebSocket handshake, its
// store and broker calls bounded by reqCtx, the handshake's, and
// WithStoreTimeout. It returns false, having closed the connection, when
// the session cannot enter; else serve must follow.
func (s *session) start(reqCtx context.Context, resume bool, since int64, epoch string) bool {
	s.srv.track(s, true)
	if cfg := &s.srv.cfg; cfg.perUserRate && cfg.rate != rate.Inf {
		s.limiter.messages = s.srv.userLimits.acquire(s.username, func() *rate.Limiter { return rate.NewLimiter(cfg.rate, cfg.burst) })
	}
	r := s.room
	// Not a child of s.ctx: a context keeps the map in which it held its
	// children after they are gone, some 300 bytes for the life of every
	// session that never sends a message.
	ctx, cancel := s.srv.storeContext(reqCtx)
	err := r.enter(ctx, s, resume, since, epoch)
	cancel()
	switch {
	case err == nil:
		s.srv.cfg.logger.Debug("chatkit: session started", "room", r.name, "username", s.username, "session", s.id)
		return true
	case errors.Is(err, ErrUsernameTaken):
		s.conn.Close(statusPolicy, closeUsernameTaken)
	case errors.Is(err, errRoomClosed):
		s.conn.Close(statusGoingAway, closeShutdown)
	default:
		s.srv.cfg.logger.Warn("chatkit: broker unavailable", "room", r.name, "session", s.id, "err", err)
		s.conn.Close(statusTryAgainLater, closeUnavailable)
	}
	s.end()
	return false
}

// end lets go of what start took.
func (s *session) end() {
	if cfg := &s.srv.cfg; cfg.perUserRate && cfg.rate != rate.Inf {
		s.srv.userLimits.release(s.username)
	}
	s.srv.track(s, false)
	s.cancel()
}

// serve reads the session's frames until it ends, then takes it out of its
// room. It runs on a goroutine of its own, started after the handshake, so
// that an idle session's only stack is one that has never grown past what
// a blocked read needs.
func (s *session) serve() {
	defer s.end()
	r, logger := s.room, s.srv.cfg.logger
	var code websocket.StatusCode
	var reason string
	// Deferred so that the session leaves its room however it ends.
	defer func() {
		r.leave(s)
		// A client closed for what it sent still gets the errors that tell it why.
		s.close(code, reason, code != 0)
		s.workers.Wait()
		s.conn.CloseNow()
		r.mu.Lock()
		exited := s.exited
		r.mu.Unlock()
		if exited != nil {
			<-exited
		}
		s.mu.Lock()
		reason := s.reason
		s.mu.Unlock()
		logger.Debug("chatkit: session ended", "room", r.name, "username", s.username, "session", s.id, "reason", reason)
	}()
	code, reason = s.readLoop()
	s.ended.Store(true)
	if code != 0 {
		s.srv.counters.drop(dropReason(reason))
		logger.Info("chatkit: dropped client", "reason", reason, "room", r.name, "username", s.username, "session", s.id)
	}
}

// readLoop reads and handles frames until the connection fails or the
// client breaks the protocol; it returns the close code and reason to send
// (zero when the connection is already gone).
func (s *session) readLoop() (websocket.StatusCode, string) {
	for {
		// A context that never ends costs coder/websocket nothing per
		// read; the Server ends a read by closing tr.Conn instead.
		typ, data, err := s.conn.Read(context.Background())
		if err != nil {
			// coder/websocket has closed with 1009 itself; its error
			// has no type of its own.
			if strings.Contains(err.Error(), "read limited") {
				s.srv.counters.drop("protocol_error")
			}
			return 0, ""
		}
		s.touch()
		if typ != websocket.MessageText {
			return statusUnsupported, closeBinary
		}
		if !utf8.Valid(data) {
			return statusInvalidData, closeInvalidUTF8
		}
		s.handle(s.ctx, data)
		// A client that reads its errors but goes on regardless is
		// flooding: closed before its own errors fill its queue.
		switch {
		case s.rateLimitedRun >= maxRateLimitedRun:
			return statusPolicy, closeFlooding
		case s.badRun >= maxBadRun:
			return statusPolicy, closeBadCommands
		}
	}
}

// A session is closed with 1008 after this many rate_limited errors, or
// bad_request errors, in a row: enough for any client that backs off,
// far below the send queue that a flood would otherwise fill.
const (
	maxRateLimitedRun = 50
	maxBadRun         = 20
)

func (s *session) handle(ctx context.Context, data []byte) {
	cmd, err := decodeFrame(data)
	if err != nil {
		s.sendErrorEvent(errorEvent{Code: codeBadRequest, Error: "invalid command: a field has the wrong type",
			ClientMsgID: echoable(cmd.ClientMsgID), RequestID: echoable(cmd.RequestID)})
		return
	}
	switch cmd.Type {
	case typeChat:
		s.chat(ctx, cmd)
	case typeHistory:
		s.history(ctx, cmd)
	case typeTyping:
		if s.limiter.allowTyping(time.Now()) {
			s.room.typing(s)
			s.srv.publishTyping(s.room.name, s.username)
		}
	default:
		s.sendError(codeBadRequest, fmt.Sprintf("unknown command type %q", truncate(cmd.Type, 32)), "")
	}
}

func (s *session) chat(ctx context.Context, cmd command) {
	cfg := &s.srv.cfg
	id := cmd.ClientMsgID
	if utf8.RuneCountInString(id) > maxClientMsgID {
		s.sendError(codeBadRequest, fmt.Sprintf("client_msg_id exceeds %d characters", maxClientMsgID), "")
		return
	}
	if strings.TrimSpace(cmd.Text) == "" {
		s.sendError(codeEmpty, "message is empty", id)
		return
	}
	if utf8.RuneCountInString(cmd.Text) > cfg.maxMessageLen {
		s.sendError(codeTooLong, fmt.Sprintf("message exceeds %d characters", cfg.maxMessageLen), id)
		return
	}
	now := time.Now()
	if ok, wait := s.limiter.allowMessage(now); !ok {
		ms := (wait + time.Millisecond - 1).Milliseconds()
		s.sendErrorEvent(errorEvent{Code: codeRateLimited,
			Error: fmt.Sprintf("rate limit exceeded; retry in %d ms", ms), ClientMsgID: id, RetryAfterMS: ms})
		return
	}
	m := &Message{Room: s.room.name, Username: s.username, Text: cmd.Text, ClientMsgID: id, Time: now}
	if hook := cfg.onMessage; hook != nil {
		_, err := callHook(cfg.logger, func() (struct{}, error) { return struct{}{}, hook(ctx, m) })
		if errors.Is(err, errHookPanicked) {
			s.sendError(codeRejected, "message rejected: internal error", id)
			return
		}
		if err != nil {
			s.sendError(codeRejected, truncate(err.Error(), 200), id)
			return
		}
	}
	s.rateLimitedRun, s.badRun = 0, 0
	var a ack
	if !cmd.raw {
		a.s = s
	}
	storeCtx, cancel := s.srv.storeContext(ctx)
	_, _, err := s.srv.publish(storeCtx, s.room, *m, a)
	cancel()
	if err != nil {
		s.srv.cfg.logger.Warn("chatkit: storing a message failed", "room", s.room.name, "session", s.id, "err", err)
		s.sendError(codeUnavailable, "the message could not be stored; it may have been: send it again with the same client_msg_id", id)
	}
}

// Scrollback pages: the default and the largest number of messages.
const (
	defaultPage = 50
	maxPage     = 100
)

// history answers a history command with one page of older messages from
// the store, to this session only.
func (s *session) history(ctx context.Context, cmd command) {
	fail := func(code, text string, retryAfter time.Duration) {
		s.sendErrorEvent(errorEvent{Code: code, Error: text, RequestID: cmd.RequestID,
			RetryAfterMS: (retryAfter + time.Millisecond - 1).Milliseconds()})
	}
	if utf8.RuneCountInString(cmd.RequestID) > maxClientMsgID {
		cmd.RequestID = ""
		fail(codeBadRequest, fmt.Sprintf("request_id exceeds %d characters", maxClientMsgID), 0)
		return
	}
	limit := int64(defaultPage)
	if cmd.Limit != nil {
		if *cmd.Limit < 1 {
			fail(codeBadRequest, "limit must be a positive integer", 0)
			return
		}
		limit = min(*cmd.Limit, maxPage)
	}
	var before int64
	if cmd.Before != nil {
		if *cmd.Before < 1 {
			fail(codeBadRequest, "before must be a positive integer message id", 0)
			return
		}
		before = *cmd.Before
	}
	if ok, wait := s.limiter.allowHistory(time.Now()); !ok {
		fail(codeRateLimited, fmt.Sprintf("history rate limit exceeded; retry in %d ms", (wait+time.Millisecond-1).Milliseconds()), wait)
		return
	}
	storeCtx, cancel := s.srv.storeContext(ctx)
	st, msgs, err := s.srv.store.Before(storeCtx, s.room.name, before, int(limit))
	cancel()
	if err != nil {
		s.srv.cfg.logger.Warn("chatkit: reading history failed", "room", s.room.name, "session", s.id, "err", err)
		fail(codeUnavailable, "history could not be read; retry later", 0)
		return
	}
	s.srv.counters.history.Add(1)
	s.badRun = 0
	page := make([]chatEvent, len(msgs))
	for i, m := range msgs {
		page[i] = newChatEvent(m)
	}
	s.enqueueOrDrop(encode(historyEvent{Type: typeHistory, Room: s.room.name, Epoch: st.Epoch, RequestID: cmd.RequestID,
		Messages: page, HasMore: len(msgs) > 0 && msgs[0].ID > st.OldestID}))
}

func (s *session) sendError(code, text, clientMsgID string) {
	s.sendErrorEvent(errorEvent{Code: code, Error: text, ClientMsgID: clientMsgID})
}

// sendErrorEvent queues an error event for this session alone, counts it,
// and keeps the runs of errors that make a flood.
func (s *session) sendErrorEvent(ev errorEvent) {
	ev.Type = typeError
	s.srv.counters.errorSent(ev.Code)
	switch ev.Code {
	case codeRateLimited:
		s.rateLimitedRun++
	case codeBadRequest:
		s.badRun++
	}
	s.enqueueOrDrop(encode(ev))
}

// enqueueOrDrop queues a frame for this session alone, dropping the session
// as too slow when its queue is full.
func (s *session) enqueueOrDrop(frame []byte) {
	if !s.enqueue(frame, false) {
		s.room.drop(s, closeTooSlow)
	}
}

// writeLoop writes what is queued until the queue is empty, then exits;
// enqueue starts it again. When the session is closing it closes the
// connection instead of exiting.
func (s *session) writeLoop() {
	defer s.workers.Done()
	// Yield once before the first take. A broadcast starts the writers of
	// every member at once; letting the other runnable goroutines (readers
	// holding the next messages) go first means each writer finds several
	// events queued and sends them in one write, instead of one system
	// call per event. In bench/OPTIMISATIONS.md (fanout, 500 members,
	// chatkit.v1 clients) it took the server from 3.75 to 0.56 µs of CPU
	// per delivery.
	runtime.Gosched()
	for {
		s.mu.Lock()
		frames := s.queue
		closing := s.closing
		if len(frames) == 0 && !closing {
			// Keep a small queue for the next burst, so that starting
			// again costs no allocation; let a big one go, so that an
			// idle session stays small.
			if cap(s.queue) > idleQueueCap {
				s.queue = nil
			}
			s.spare = nil
			s.writing = false
			s.mu.Unlock()
			return
		}
		s.queue, s.notices = s.spare[:0], 0
		s.spare = nil
		s.mu.Unlock()

		if err := s.write(frames); err != nil {
			// A write that timed out has already closed the
			// connection: the client is too slow. Any other error
			// means the connection is gone, say closed by the client.
			if errors.Is(err, os.ErrDeadlineExceeded) {
				s.room.drop(s, closeTooSlow)
			} else {
				s.room.leave(s)
			}
			s.conn.CloseNow()
			return
		}
		clear(frames)
		s.mu.Lock()
		s.spare = frames[:0]
		s.mu.Unlock()

		if closing {
			s.closeConn()
			return
		}
	}
}

// idleQueueCap is the largest queue capacity a session keeps while idle.
const idleQueueCap = 16

// noticeQueueFactor bounds the presence notices queued for a session, as a
// multiple of WithSendQueue; see enqueue.
const noticeQueueFactor = 4

// maxBatch bounds the frames that batching builds, so that one frame never
// holds a whole backlog.
const maxBatch = 64 << 10

// write writes frames within one write timeout, in as few system calls as
// gatherFlush allows. A client that negotiated chatkit.v1 gets them joined
// by newlines into as few WebSocket frames as maxBatch allows; others get
// one frame per event.
func (s *session) write(frames [][]byte) error {
	if len(frames) == 0 {
		return nil
	}
	t := s.tr
	t.begin(time.Now().Add(s.srv.cfg.writeTimeout))
	var err error
	for len(frames) > 0 && err == nil {
		n := 1
		if s.batch {
			size := len(frames[0])
			for n < len(frames) && size+1+len(frames[n]) <= maxBatch {
				size += 1 + len(frames[n])
				n++
			}
		}
		err = t.writeText(frames[:n])
		frames = frames[n:]
	}
	if ferr := t.flush(true); err == nil {
		err = ferr
	}
	return err
}

func (s *session) closeConn() {
	s.mu.Lock()
	code, reason := s.code, s.reason
	s.mu.Unlock()
	if reason == closeTooSlow || reason == closeIdle {
		s.srv.cfg.logger.Info("chatkit: dropped client", "reason", reason, "room", s.room.name, "username", s.username, "session", s.id)
	}
	if code == 0 {
		s.conn.CloseNow()
	} else {
		s.conn.Close(code, reason)
	}
}

// checkLiveness is called by the Server's sweeper every ping interval. It
// drops a session silent for the idle timeout and pings the others; the
// pong, like any frame, counts as a sign of life (through
// AcceptOptions.OnPongReceived).
func (s *session) checkLiveness(now time.Time) {
	if now.Sub(time.Unix(0, s.lastSeen.Load())) >= s.srv.cfg.idleTimeout {
		s.room.drop(s, closeIdle)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closing && s.pinging.CompareAndSwap(false, true) {
		s.workers.Add(1)
		go s.ping()
	}
}

// ping sends one ping and waits for its pong at most one idle timeout, so
// that it never outlives the session by long.
func (s *session) ping() {
	defer s.workers.Done()
	defer s.pinging.Store(false)
	ctx, cancel := context.WithTimeout(context.Background(), s.srv.cfg.idleTimeout)
	defer cancel()
	s.conn.Ping(ctx)
}

// echoable returns id if it may be echoed in an error: ids longer than
// maxClientMsgID are refused, so they are not sent back either.
func echoable(id string) string {
	if utf8.RuneCountInString(id) > maxClientMsgID {
		return ""
	}
	return id
}

// truncate shortens s to at most n characters, for error texts that may
// contain client data.
func truncate(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	return string([]rune(s)[:n]) + "…"
}

// kill cuts the connection without a close handshake, ending the reader,
// the writer and any close handshake in progress.
func (s *session) kill() {
	s.cancel()
	if s.tr != nil {
		s.tr.Conn.Close()
	}
}
