package main

// A lean WebSocket client (RFC 6455) for the load generator. The generator
// must outrun the servers it measures on one core, so after the opening
// handshake (done with the net package) each socket leaves Go's network
// poller: one goroutine reads every connection through an epoll set of its
// own (see poller.go) and parses frames straight out of one shared buffer,
// allocating nothing per message and waking no goroutine per message. No
// extensions are offered, so compression is off with every server.

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"time"

	mrand "math/rand/v2"
)

const wsGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

const (
	opCont  = 0x0
	opText  = 0x1
	opBin   = 0x2
	opClose = 0x8
	opPing  = 0x9
	opPong  = 0xA
)

// maxMessage bounds one received message; larger ones end the connection.
const maxMessage = 64 << 20

// A closeError is the close frame the server sent.
type closeError struct {
	code   int
	reason string
}

func (e *closeError) Error() string {
	return fmt.Sprintf("closed by server: %d %q", e.code, e.reason)
}

var errWouldBlock = errors.New("socket buffer full")

// wsConn is one client WebSocket on a raw, non-blocking socket.
type wsConn struct {
	fd       int
	protocol string // the subprotocol the server chose, if any

	// Reader state, owned by the poller (or by the dialer before the
	// connection is handed to it).
	pend   []byte // a partial frame left over from the last read
	frag   []byte // a fragmented message being reassembled
	fragOp byte

	wmu    sync.Mutex // serializes writes, and writes with the close
	closed bool
	wbuf   []byte
}

type dialOptions struct {
	subprotocols []string
	rcvbuf       int // SO_RCVBUF before connecting, 0 to leave it to the kernel
	mss          int // TCP_MAXSEG before connecting, 0 to leave it to the kernel
}

// dialWS connects to addr (host:port) and performs the opening handshake
// for requestURI ("/ws?room=x"). ctx bounds the handshake. It returns the
// connection and any bytes that arrived after the handshake response.
func dialWS(ctx context.Context, addr, requestURI string, o dialOptions) (*wsConn, []byte, error) {
	d := net.Dialer{}
	if o.rcvbuf > 0 || o.mss > 0 {
		d.Control = func(network, address string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				if o.rcvbuf > 0 {
					serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, o.rcvbuf)
				}
				if o.mss > 0 && serr == nil {
					serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_MAXSEG, o.mss)
				}
			})
			if err != nil {
				return err
			}
			return serr
		}
	}
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	defer nc.Close() // the socket lives on in the dup'ed descriptor
	if dl, has := ctx.Deadline(); has {
		nc.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { nc.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	var keyb [16]byte
	rand.Read(keyb[:])
	key := base64.StdEncoding.EncodeToString(keyb[:])
	var req strings.Builder
	fmt.Fprintf(&req, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nUser-Agent: chatbench\r\n", requestURI, addr, key)
	if len(o.subprotocols) > 0 {
		fmt.Fprintf(&req, "Sec-WebSocket-Protocol: %s\r\n", strings.Join(o.subprotocols, ", "))
	}
	req.WriteString("\r\n")
	if _, err := io.WriteString(nc, req.String()); err != nil {
		return nil, nil, err
	}
	br := bufio.NewReaderSize(nc, 4096)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("handshake: %w", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 300))
		return nil, nil, fmt.Errorf("handshake: HTTP %d: %s", resp.StatusCode, strings.TrimSpace(string(body)))
	}
	sum := sha1.Sum([]byte(key + wsGUID))
	if resp.Header.Get("Sec-WebSocket-Accept") != base64.StdEncoding.EncodeToString(sum[:]) {
		return nil, nil, errors.New("handshake: bad Sec-WebSocket-Accept")
	}
	if ext := resp.Header.Get("Sec-WebSocket-Extensions"); ext != "" {
		return nil, nil, fmt.Errorf("handshake: server chose extensions %q that were not offered", ext)
	}
	if !stop() {
		return nil, nil, ctx.Err()
	}
	leftover, _ := br.Peek(br.Buffered())
	leftover = append([]byte(nil), leftover...)

	// Take the socket out of Go's poller: keep a duplicate of its
	// descriptor (non-blocking, like the original) and close the original.
	rc, err := nc.(*net.TCPConn).SyscallConn()
	if err != nil {
		return nil, nil, err
	}
	fd := -1
	var derr error
	if err := rc.Control(func(f uintptr) { fd, derr = syscall.Dup(int(f)) }); err != nil {
		return nil, nil, err
	}
	if derr != nil {
		return nil, nil, derr
	}
	syscall.CloseOnExec(fd)
	return &wsConn{fd: fd, protocol: resp.Header.Get("Sec-WebSocket-Protocol")}, leftover, nil
}

// frameHandler receives the connection's complete data messages.
type frameHandler interface {
	message(p []byte, now int64)
}

// feed parses the frames in data (after any partial frame kept from the
// previous call), handing data messages to h and answering pings. It
// keeps a trailing partial frame for the next call.
func (c *wsConn) feed(data []byte, now int64, h frameHandler) error {
	if len(c.pend) > 0 {
		c.pend = append(c.pend, data...)
		data = c.pend
	}
	used, err := c.parse(data, now, h)
	rest := len(data) - used
	switch {
	case len(c.pend) > 0:
		copy(c.pend, c.pend[used:])
		c.pend = c.pend[:rest]
	case rest > 0:
		c.pend = append(c.pend[:0], data[used:]...)
	}
	return err
}

func (c *wsConn) parse(data []byte, now int64, h frameHandler) (int, error) {
	off := 0
	for {
		b := data[off:]
		if len(b) < 2 {
			return off, nil
		}
		fin := b[0]&0x80 != 0
		op := b[0] & 0x0f
		masked := b[1]&0x80 != 0
		n := uint64(b[1] & 0x7f)
		hl := 2
		switch n {
		case 126:
			hl = 4
		case 127:
			hl = 10
		}
		if masked {
			hl += 4
		}
		if len(b) < hl {
			return off, nil
		}
		switch n {
		case 126:
			n = uint64(binary.BigEndian.Uint16(b[2:]))
		case 127:
			n = binary.BigEndian.Uint64(b[2:])
		}
		if n > maxMessage {
			return off, fmt.Errorf("frame of %d bytes is too large", n)
		}
		if uint64(len(b)-hl) < n {
			return off, nil
		}
		p := b[hl : hl+int(n)]
		if masked {
			mask := b[hl-4 : hl]
			for i := range p {
				p[i] ^= mask[i&3]
			}
		}
		off += hl + int(n)
		switch op {
		case opPing:
			c.write(opPong, p, 0)
		case opPong:
		case opClose:
			ce := &closeError{code: 1005}
			if len(p) >= 2 {
				ce.code = int(binary.BigEndian.Uint16(p))
				ce.reason = string(p[2:])
			}
			c.write(opClose, p[:min(len(p), 2)], 0)
			return off, ce
		case opText, opBin:
			if fin {
				h.message(p, now)
			} else {
				c.fragOp = op
				c.frag = append(c.frag[:0], p...)
			}
		case opCont:
			if len(c.frag)+len(p) > maxMessage {
				return off, errors.New("fragmented message too large")
			}
			c.frag = append(c.frag, p...)
			if fin {
				h.message(c.frag, now)
				c.frag = c.frag[:0]
			}
		default:
			return off, fmt.Errorf("unknown opcode %d", op)
		}
	}
}

// write sends one masked frame; it is safe for concurrent use. With a
// zero timeout it gives up at once (errWouldBlock) when the socket buffer
// is full before anything was written; otherwise it retries until the
// timeout. A frame is never left half-written unless the connection fails.
func (c *wsConn) write(op byte, p []byte, timeout time.Duration) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.closed {
		return net.ErrClosed
	}
	b := append(c.wbuf[:0], 0x80|op)
	n := len(p)
	switch {
	case n < 126:
		b = append(b, 0x80|byte(n))
	case n < 1<<16:
		b = append(b, 0x80|126, byte(n>>8), byte(n))
	default:
		b = append(b, 0x80|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	key := mrand.Uint32()
	b = binary.LittleEndian.AppendUint32(b, key)
	mask := b[len(b)-4:]
	off := len(b)
	b = append(b, p...)
	for i := range p {
		b[off+i] ^= mask[i&3]
	}
	c.wbuf = b
	var deadline time.Time
	written := 0
	for written < len(b) {
		k, err := syscall.Write(c.fd, b[written:])
		if k > 0 {
			written += k
		}
		switch {
		case err == nil:
		case err == syscall.EINTR:
		case err == syscall.EAGAIN:
			if timeout == 0 && written == 0 {
				return errWouldBlock
			}
			if deadline.IsZero() {
				deadline = time.Now().Add(max(timeout, time.Second))
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("write: %w", errWouldBlock)
			}
			time.Sleep(200 * time.Microsecond)
		default:
			return err
		}
	}
	return nil
}

// writeText sends a text frame, waiting at most timeout for room in the
// socket buffer.
func (c *wsConn) writeText(p []byte, timeout time.Duration) error {
	return c.write(opText, p, timeout)
}

// shutdown sends a normal close frame if the socket takes it at once and
// shuts the socket down, so that the poller sees it end and releases it.
func (c *wsConn) shutdown() {
	c.write(opClose, []byte{0x03, 0xe8}, 0)
	c.wmu.Lock()
	if !c.closed {
		syscall.Shutdown(c.fd, syscall.SHUT_RDWR)
	}
	c.wmu.Unlock()
}

// release closes the descriptor with a reset, so that no TIME_WAIT is left
// behind: the benchmark opens tens of thousands of connections to one
// port. Only the poller calls it, once the descriptor left its epoll set,
// so a descriptor number is never reused under a reader.
func (c *wsConn) release() {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.closed {
		return
	}
	c.closed = true
	syscall.SetsockoptLinger(c.fd, syscall.SOL_SOCKET, syscall.SO_LINGER, &syscall.Linger{Onoff: 1, Linger: 0})
	syscall.Close(c.fd)
}
