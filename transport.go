package chatkit

import (
	"bufio"
	"encoding/binary"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// A transport is the connection under a session's websocket.Conn. The
// session's writer writes its text frames into it itself (writeText): a
// server frame is a header and the payload, unmasked and, with
// compression off, as is. It gathers the frames of one batch and sends
// them in one system call, whatever the client negotiated: a WebSocket
// frame is a unit of the protocol, not of the socket. coder/websocket,
// which writes through a frame at a time and flushes after each, then
// costs nothing per event.
//
// coder/websocket still reads, answers pings and closes, so it writes
// only control frames; outside a batch they go to the socket at once,
// during one they are gathered behind the frames before them and go out
// with the batch. With the transport's bufio.Writer larger than any
// control frame, and flushed at the end of every frame, each reaches
// Write whole, in one call: frames never interleave, and a close frame is
// known as one, after which no data frame is written.
//
// A transport is also the net.Conn that coder/websocket closes, so that
// a close frame gathered behind a batch (coder/websocket answers a
// client's close and closes at once) is sent before the socket closes.
type transport struct {
	net.Conn               // the hijacked connection; closing it ends every read and write at once
	pool     *sync.Pool    // *[]byte gather buffers, shared by the Server's sessions
	timeout  time.Duration // for a write outside a batch
	armed    atomic.Int64  // the socket's write deadline, unix nanoseconds; see arm

	mu       sync.Mutex
	batch    bool      // the session's writer is gathering a batch
	sending  bool      // the session's writer is sending what it gathered
	closing  bool      // Close was called during a batch: close once it is sent
	closed   bool      // coder/websocket has written a close frame: no data frame may follow
	deadline time.Time // of the batch being gathered or sent
	buf      *[]byte   // what was gathered, from pool; nil while there is nothing
	err      error     // the first write error; every later write fails with it
}

// Buffer sizes, which every idle connection pays for. The writer's
// bufio.Writer holds a whole control frame (its header is 2 bytes, since
// its payload is at most 125), so that a control frame reaches the
// transport in one Write. The reader's holds a frame header and a short
// command, so that one is read in one system call; the rest of a longer
// frame is read straight into its message (bufio.Reader reads past its
// buffer when it is empty). Gather buffers are the pool's, held only
// while a batch is written.
const (
	writeBufferSize = 128 // at least 2 + 125
	readBufferSize  = 64
	// gatherFlush is how much a batch gathers before it is sent, and
	// maxPooledGather the largest gather buffer kept for reuse.
	gatherFlush     = 64 << 10
	maxPooledGather = 4 * gatherFlush
)

// Write is called by coder/websocket's bufio.Writer with one whole control
// frame.
func (t *transport) Write(p []byte) (int, error) {
	t.mu.Lock()
	if err := t.err; err != nil {
		t.mu.Unlock()
		return 0, err
	}
	t.closed = t.closed || len(p) > 0 && p[0]&0x0f == opClose
	if t.batch || t.sending {
		*t.gatherLocked() = append(*t.buf, p...)
		t.mu.Unlock()
		return len(p), nil
	}
	t.mu.Unlock()
	return t.send(p, time.Now().Add(t.timeout))
}

// arm sets the socket's write deadline to deadline, unless the one it
// has is less than an eighth of the timeout earlier: setting a deadline
// updates a runtime timer, which cost 8% of the server's CPU in a fan-out
// at one event per write. A write so gets between seven eighths of the
// timeout and all of it.
func (t *transport) arm(deadline time.Time) {
	d := deadline.UnixNano()
	if t.armed.Load() >= d-int64(t.timeout/8) {
		return
	}
	t.armed.Store(d)
	t.Conn.SetWriteDeadline(deadline)
}

// opClose is the opcode of a close frame (RFC 6455, 5.2).
const opClose = 0x8

func (t *transport) gatherLocked() *[]byte {
	if t.buf == nil {
		t.buf = t.pool.Get().(*[]byte)
	}
	return t.buf
}

// writeText adds to the batch one text frame whose payload is events
// joined by newlines, and sends the batch so far once it reaches
// gatherFlush.
func (t *transport) writeText(events [][]byte) error {
	n := len(events) - 1
	for _, e := range events {
		n += len(e)
	}
	var h [10]byte
	h[0] = 0x80 | 0x1 // FIN, text
	hl := 2
	switch {
	case n <= 125:
		h[1] = byte(n)
	case n <= 0xffff:
		h[1] = 126
		binary.BigEndian.PutUint16(h[2:], uint16(n))
		hl = 4
	default:
		h[1] = 127
		binary.BigEndian.PutUint64(h[2:], uint64(n))
		hl = 10
	}
	t.mu.Lock()
	if t.err != nil || t.closed {
		err := t.err
		t.mu.Unlock()
		if err == nil {
			err = net.ErrClosed
		}
		return err
	}
	b := append(*t.gatherLocked(), h[:hl]...)
	for i, e := range events {
		if i > 0 {
			b = append(b, '\n')
		}
		b = append(b, e...)
	}
	*t.buf = b
	full := len(b) >= gatherFlush
	t.mu.Unlock()
	if full {
		return t.flush(false)
	}
	return nil
}

// begin starts gathering a batch that must be sent by deadline.
func (t *transport) begin(deadline time.Time) {
	t.mu.Lock()
	t.batch, t.deadline = true, deadline
	t.mu.Unlock()
}

// flush sends what is gathered, and what other goroutines write while it
// does, by the batch's deadline. With end it also ends the batch, so that
// later writes go to the socket at once.
func (t *transport) flush(end bool) error {
	t.mu.Lock()
	t.batch = t.batch && !end
	t.sending = true
	for t.buf != nil && t.err == nil {
		buf := t.buf
		t.buf = nil
		t.mu.Unlock()
		t.send(*buf, t.deadline)
		if cap(*buf) <= maxPooledGather {
			*buf = (*buf)[:0]
			t.pool.Put(buf)
		}
		t.mu.Lock()
	}
	t.sending = false
	err, closing := t.err, t.closing && !t.batch
	t.mu.Unlock()
	if closing {
		t.Conn.Close()
	}
	return err
}

// Close closes the connection, after the batch if one is being written.
func (t *transport) Close() error {
	t.mu.Lock()
	if t.batch || t.sending {
		t.closing = true
		t.mu.Unlock()
		return nil
	}
	t.mu.Unlock()
	return t.Conn.Close()
}

// send writes p to the socket by deadline. Only one send runs at a time:
// coder/websocket's frame lock orders those outside a batch, and none
// starts during one.
func (t *transport) send(p []byte, deadline time.Time) (int, error) {
	t.arm(deadline)
	n, err := t.Conn.Write(p)
	if err != nil {
		// A frame may be cut off: nothing may follow it.
		t.mu.Lock()
		if t.err == nil {
			t.err = err
		}
		t.mu.Unlock()
	}
	return n, err
}

// hijackRecorder hands websocket.Accept the hijacked connection as a
// transport, with buffers of the session's own: the transport to write to
// and a small reader. It keeps the transport for the session, whose
// Server can then cut the connection: websocket.Conn.CloseNow does not
// while a close handshake is in progress.
type hijackRecorder struct {
	http.ResponseWriter
	pool    *sync.Pool
	timeout time.Duration
	t       *transport
}

func (w *hijackRecorder) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *hijackRecorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return conn, brw, err
	}
	w.t = &transport{Conn: conn, pool: w.pool, timeout: w.timeout}
	r := brw.Reader
	if r.Buffered() == 0 {
		// net/http's 4 KiB reader is left behind, to be freed with the
		// rest of its connection state. One holding bytes the client sent
		// after its request is kept: it is rare, and they must be read.
		r = bufio.NewReaderSize(conn, readBufferSize)
	}
	return w.t, bufio.NewReadWriter(r, bufio.NewWriterSize(w.t, writeBufferSize)), nil
}
