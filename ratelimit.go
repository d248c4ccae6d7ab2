package chatkit

import (
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
	lastTyping time.Time
}

func newLimiter(r rate.Limit, burst int) limiter {
	if r == rate.Inf {
		return limiter{}
	}
	return limiter{messages: rate.NewLimiter(r, burst)}
}

// allowMessage takes one token for a chat message. When none is available
// it takes nothing and returns how long until one will be.
func (l *limiter) allowMessage(now time.Time) (ok bool, retryAfter time.Duration) {
	if l.messages == nil {
		return true, 0
	}
	r := l.messages.ReserveN(now, 1)
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
