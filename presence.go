package chatkit

import "slices"

// presence is the set of users present in a room on any node, as this node
// knows it. The sorted list is cached because every join and leave event
// for seed-style clients carries it.
type presence struct {
	users  map[string]struct{}
	sorted []string // nil when stale
}

func newPresence() presence { return presence{users: make(map[string]struct{})} }

// add reports whether username was not present yet.
func (p *presence) add(username string) bool {
	if _, ok := p.users[username]; ok {
		return false
	}
	p.users[username] = struct{}{}
	p.sorted = nil
	return true
}

// remove reports whether username was present.
func (p *presence) remove(username string) bool {
	if _, ok := p.users[username]; !ok {
		return false
	}
	delete(p.users, username)
	p.sorted = nil
	return true
}

// list returns the present users in sorted order. The slice is shared:
// callers must not modify it.
func (p *presence) list() []string {
	if p.sorted == nil {
		p.sorted = make([]string, 0, len(p.users))
		for name := range p.users {
			p.sorted = append(p.sorted, name)
		}
		slices.Sort(p.sorted)
	}
	return p.sorted
}
