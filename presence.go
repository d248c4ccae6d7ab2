package chatkit

import "slices"

// presence counts the sessions of each user in a room. A user is present
// while they have at least one session; the sorted list of present users is
// cached because every join and leave event carries it.
type presence struct {
	sessions map[string]int
	sorted   []string // nil when stale
}

func newPresence() presence { return presence{sessions: make(map[string]int)} }

func (p *presence) has(username string) bool { return p.sessions[username] > 0 }

// add counts one more session of username and reports whether it is the
// user's first, that is, whether the user just became present.
func (p *presence) add(username string) bool {
	p.sessions[username]++
	if p.sessions[username] > 1 {
		return false
	}
	p.sorted = nil
	return true
}

// remove counts one session of username less and reports whether it was
// the user's last.
func (p *presence) remove(username string) bool {
	p.sessions[username]--
	if p.sessions[username] > 0 {
		return false
	}
	delete(p.sessions, username)
	p.sorted = nil
	return true
}

// users returns the present users in sorted order. The slice is shared:
// callers must not modify it.
func (p *presence) users() []string {
	if p.sorted == nil {
		p.sorted = make([]string, 0, len(p.sessions))
		for name := range p.sessions {
			p.sorted = append(p.sorted, name)
		}
		slices.Sort(p.sorted)
	}
	return p.sorted
}
