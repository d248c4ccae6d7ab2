package pgstore_test

import (
	"io"
	"net"
	"sync"
	"testing"
)

// A proxy stands between one test's pool and the PostgreSQL, so that the test
// can make PostgreSQL unreachable for that client alone: the other packages'
// tests share the server.
type proxy struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup

	mu      sync.Mutex
	blocked bool                  // new connections are held and never answered
	conns   map[net.Conn]net.Conn // client side -> PostgreSQL side (nil while held)
}

// newProxy returns a proxy to target (host:port), closed with the test.
func newProxy(t *testing.T, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target, conns: make(map[net.Conn]net.Conn)}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

func (p *proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.blocked {
			p.conns[c] = nil // a black hole: the client waits for an answer
			p.mu.Unlock()
			continue
		}
		p.mu.Unlock()
		r, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns[c] = r
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(c, r)
		go p.pipe(r, c)
	}
}

func (p *proxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	io.Copy(dst, src)
	dst.Close()
	src.Close()
}

// block cuts every connection and holds the new ones unanswered, as a
// PostgreSQL that stopped responding would.
func (p *proxy) block() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.blocked = true
	p.closeAllLocked()
}

// unblock lets new connections through again, and cuts the held ones, so
// that their clients dial again.
func (p *proxy) unblock() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.blocked = false
	p.closeAllLocked()
}

func (p *proxy) closeAllLocked() {
	for c, r := range p.conns {
		c.Close()
		if r != nil {
			r.Close()
		}
		delete(p.conns, c)
	}
}

func (p *proxy) close() {
	p.ln.Close()
	p.mu.Lock()
	p.closeAllLocked()
	p.mu.Unlock()
	p.wg.Wait()
}
