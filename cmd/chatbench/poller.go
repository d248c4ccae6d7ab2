package main

import (
	"errors"
	"io"
	"os"
	"sync/atomic"
	"syscall"
	"time"
)

// A poller reads every connection of a bench from one goroutine through
// an epoll set (level-triggered): one read system call per readable socket
// per round, into one shared buffer, and no goroutine wakes per message.
// The epoll descriptor itself sits in Go's network poller, so the reading
// goroutine parks like any other when nothing is ready (a blocking
// epoll_wait would keep the generator's only P from its publishers).
type poller struct {
	epfd  int
	file  *os.File
	rc    syscall.RawConn
	table []atomic.Pointer[member] // by descriptor
	buf   []byte
	done  chan struct{}
}

func newPoller(maxFD int) (*poller, error) {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	if err := syscall.SetNonblock(epfd, true); err != nil {
		syscall.Close(epfd)
		return nil, err
	}
	f := os.NewFile(uintptr(epfd), "epoll")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	p := &poller{epfd: epfd, file: f, rc: rc, table: make([]atomic.Pointer[member], maxFD),
		buf: make([]byte, 256<<10), done: make(chan struct{})}
	go p.loop()
	return p, nil
}

var errTooManyFDs = errors.New("descriptor above the generator's limit")

// add hands m's connection to the poller.
func (p *poller) add(m *member) error {
	fd := m.conn.fd
	if fd >= len(p.table) {
		return errTooManyFDs
	}
	p.table[fd].Store(m)
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP, Fd: int32(fd)}
	if err := syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_ADD, fd, &ev); err != nil {
		p.table[fd].Store(nil)
		return err
	}
	return nil
}

// setReading stops or resumes reading m's socket (the slow workload).
func (p *poller) setReading(m *member, on bool) {
	m.conn.wmu.Lock()
	defer m.conn.wmu.Unlock()
	if m.conn.closed {
		return
	}
	var ev syscall.EpollEvent
	ev.Fd = int32(m.conn.fd)
	if on {
		ev.Events = syscall.EPOLLIN | syscall.EPOLLRDHUP
	}
	syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_MOD, m.conn.fd, &ev)
}

func (p *poller) loop() {
	defer close(p.done)
	events := make([]syscall.EpollEvent, 512)
	round := func(fd uintptr) bool {
		n, err := syscall.EpollWait(int(fd), events, 0)
		if n <= 0 || err != nil {
			return false // park until the epoll set has events
		}
		for i := range n {
			if m := p.table[events[i].Fd].Load(); m != nil {
				p.read(m)
			}
		}
		return true
	}
	for {
		if err := p.rc.Read(round); err != nil {
			return // closed
		}
	}
}

func (p *poller) read(m *member) {
	c := m.conn
	n, err := syscall.Read(c.fd, p.buf)
	switch {
	case n > 0:
		if ferr := c.feed(p.buf[:n], time.Now().UnixNano(), m); ferr != nil {
			p.end(m, ferr)
		}
	case n == 0 && err == nil:
		p.end(m, io.EOF)
	case err == syscall.EAGAIN || err == syscall.EINTR:
	default:
		p.end(m, err)
	}
}

// end takes m's connection out of the epoll set, closes it and reports
// the member done.
func (p *poller) end(m *member, err error) {
	fd := m.conn.fd
	syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_DEL, fd, nil)
	p.table[fd].Store(nil)
	m.conn.release()
	m.finish(err)
}

// close stops the loop; close every member first.
func (p *poller) close() {
	p.file.Close()
	<-p.done
}
