package chatkit

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// typingInterval is the least time between two typing notices that one
// session forwards; extra notices are dropped silently.
const typingInterval = time.Second

// limiter throttles one session. It is used only by the session's reader
// goroutine, so it needs no lock of its own.
type limiter struct {
	messages   *rate.Limiter // nil: unlimited
	history    *rate.Limiter // nil: unlimited
	lastTyping time.Time
}

func newLimiter(cfg *config) limiter {
	var l limiter
	if cfg.rate != rate.Inf {
		l.messages = rate.NewLimiter(cfg.rate, cfg.burst)
	}
	if cfg.historyRate != rate.Inf {
		l.history = rate.NewLimiter(cfg.historyRate, cfg.historyBurst)
	}
	return l
}

// allowMessage takes one token for a chat message. When none is available
// it takes nothing and returns how long until one will be.
func (l *limiter) allowMessage(now time.Time) (ok bool, retryAfter time.Duration) {
	return take(l.messages, now)
}

// allowHistory takes one token for a history request, each of which may
// be a database query.
func (l *limiter) allowHistory(now time.Time) (ok bool, retryAfter time.Duration) {
	return take(l.history, now)
}

func take(lim *rate.Limiter, now time.Time) (bool, time.Duration) {
	if lim == nil {
		return true, 0
	}
	r := lim.ReserveN(now, 1)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return false, d
	}
	return true, 0
}

// allowTyping reports whether a typing notice at now may be forwarded.
func (l *limiter) allowTyping(now time.Time) bool {
	if now.Sub(l.lastTyping) < typingInterval {
		return false
	}
	l.lastTyping = now
	return true
}

// userLimits holds the message buckets shared by each user's sessions
// with WithRateLimitPerUser. An entry lives while its user has a session
// on this Server, so the table never grows with the users ever seen.
type userLimits struct {
	mu    sync.Mutex
	users map[string]*userLimit
}

type userLimit struct {
	lim      *rate.Limiter
	sessions int
}

// acquire returns username's bucket, making it with newLimiter for the
// user's first session.
func (u *userLimits) acquire(username string, newLimiter func() *rate.Limiter) *rate.Limiter {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.users == nil {
		u.users = make(map[string]*userLimit)
	}
	e := u.users[username]
	if e == nil {
		e = &userLimit{lim: newLimiter()}
		u.users[username] = e
	}
	e.sessions++
	return e.lim
}

// release lets go of a bucket taken with acquire.
func (u *userLimits) release(username string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if e := u.users[username]; e != nil {
		if e.sessions--; e.sessions == 0 {
			delete(u.users, username)
		}
	}
}

func (u *userLimits) len() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.users)
}
