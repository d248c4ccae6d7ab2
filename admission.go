package chatkit

import (
	"errors"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"golang.org/x/time/rate"
)

var (
	errTooManyConns  = errors.New("too many connections")
	errTooManyFromIP = errors.New("too many connections from one address")
)

// retryAfterSeconds is the Retry-After of a handshake refused at a cap.
const retryAfterSeconds = "5"

// admit counts one more connection from ip, in its handshake or past it,
// unless a WithMaxConns or WithMaxConnsPerIP cap is reached. Every nil
// return is matched by one dismiss.
func (s *Server) admit(ip string) error {
	s.connMu.Lock()
	defer s.connMu.Unlock()
	if s.cfg.maxConns > 0 && s.conns >= s.cfg.maxConns {
		return errTooManyConns
	}
	if s.cfg.maxConnsPerIP > 0 && s.connsByIP[ip] >= s.cfg.maxConnsPerIP {
		return errTooManyFromIP
	}
	s.conns++
	if s.cfg.maxConnsPerIP > 0 {
		s.connsByIP[ip]++
	}
	return nil
}

// dismiss ends what admit counted. The table of addresses holds only
// addresses with connections, so it never grows with the addresses ever
// seen.
func (s *Server) dismiss(ip string) {
	s.connMu.Lock()
	defer s.connMu.Unlock()
	s.conns--
	if s.cfg.maxConnsPerIP > 0 {
		if s.connsByIP[ip]--; s.connsByIP[ip] <= 0 {
			delete(s.connsByIP, ip)
		}
	}
}

// clientIP returns the address of the client of r: the peer's, or, when the
// peer is a proxy named by WithTrustedProxies, the address that proxy
// reports in X-Forwarded-For (the nearest one that is not itself a trusted
// proxy) or Forwarded. Headers from other peers are ignored: anyone can
// send them.
func clientIP(r *http.Request, trusted []netip.Prefix) string {
	peer := hostOf(r.RemoteAddr)
	if !isTrusted(peer, trusted) {
		return peer
	}
	var hops []string
	for _, v := range r.Header.Values("X-Forwarded-For") {
		for hop := range strings.SplitSeq(v, ",") {
			hops = append(hops, strings.TrimSpace(hop))
		}
	}
	if len(hops) == 0 {
		hops = forwardedFor(r.Header.Values("Forwarded"))
	}
	for i := len(hops) - 1; i >= 0; i-- {
		if !isTrusted(hops[i], trusted) {
			return hops[i]
		}
	}
	return peer
}

// forwardedFor returns the for= addresses of RFC 7239 Forwarded headers,
// in order.
func forwardedFor(values []string) []string {
	var hops []string
	for _, v := range values {
		for elem := range strings.SplitSeq(v, ",") {
			for pair := range strings.SplitSeq(elem, ";") {
				k, val, ok := strings.Cut(strings.TrimSpace(pair), "=")
				if ok && strings.EqualFold(k, "for") {
					val = strings.Trim(val, `"`)
					val = strings.TrimSuffix(strings.TrimPrefix(hostOf(val), "["), "]")
					hops = append(hops, val)
				}
			}
		}
	}
	return hops
}

// hostOf strips the port of host:port or [v6]:port.
func hostOf(addr string) string {
	if host, _, err := net.SplitHostPort(addr); err == nil {
		return host
	}
	return addr
}

func isTrusted(addr string, trusted []netip.Prefix) bool {
	ip, err := netip.ParseAddr(addr)
	if err != nil {
		return false
	}
	ip = ip.Unmap()
	for _, p := range trusted {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// refusalLog bounds the lines logged for refused handshakes, so that a
// flood of them cannot fill a disk: 10 a second, bursts of 20, then a
// count of those left out in the next line.
type refusalLog struct {
	limit   *rate.Limiter
	skipped int // guarded by Server.connMu
}

func newRefusalLog() refusalLog { return refusalLog{limit: rate.NewLimiter(10, 20)} }

// logRefusal logs one refused handshake at level Info, with the client's
// address but never the query string, which may carry tokens.
func (s *Server) logRefusal(r *http.Request, status int, reason, message string) {
	if !s.refusals.limit.AllowN(time.Now(), 1) {
		s.connMu.Lock()
		s.refusals.skipped++
		s.connMu.Unlock()
		return
	}
	s.connMu.Lock()
	skipped := s.refusals.skipped
	s.refusals.skipped = 0
	s.connMu.Unlock()
	args := []any{"status", status, "reason", reason, "error", message, "remote", r.RemoteAddr, "path", r.URL.Path}
	if skipped > 0 {
		args = append(args, "not_logged_before", skipped)
	}
	s.cfg.logger.Info("chatkit: handshake refused", args...)
}
