package pgstore_test

import (
	"net"
	"sync"
	"testing"
)

// A proxy stands between one test's pool and the PostgreSQL, so that the
// test can make the database stop answering for that pool alone: the
// other tests share the server.
type proxy struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup

	mu      sync.Mutex
	blocked bool                  // bytes are dropped, new connections held
	conns   map[net.Conn]net.Conn // client side -> PostgreSQL side (nil while held)
}

// newProxy returns a proxy to target (host:port), closed with the test.
func newProxy(t testing.TB, target string) *proxy {
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
			p.conns[c] = nil // the client waits for an answer
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

// pipe copies src to dst, dropping what comes while the proxy is blocked.
func (p *proxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if err != nil {
			return
		}
		p.mu.Lock()
		blocked := p.blocked
		p.mu.Unlock()
		if blocked {
			continue
		}
		if _, err := dst.Write(buf[:n]); err != nil {
			return
		}
	}
}

// block makes the database a black hole, as a network partition would:
// open connections stay open but carry nothing, and new ones are
// accepted and never answered.
func (p *proxy) block() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.blocked = true
}

// unblock lets new connections through again, and cuts every open one,
// whose streams have lost bytes, so that their clients dial again.
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
