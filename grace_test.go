package chatkit

import (
	"testing"
	"time"

	"github.com/coder/websocket"
)

// expectNoPresenceBefore reads up to the chat message with text, failing
// on any join or leave on the way: the leave grace must hide a return.
func expectNoPresenceBefore(t *testing.T, c *client, text string) {
	t.Helper()
	for {
		e := c.next()
		switch {
		case e.Type == typeUserLeft || e.Type == typeUserJoined:
			t.Fatalf("the room saw %s during the grace", e.raw)
		case e.Type == typeChat && e.Text == text:
			return
		}
	}
}

func TestLeaveGraceHidesAQuickReturn(t *testing.T) {
	tests := []struct {
		name       string
		sameNode   bool
		duplicates bool
	}{
		{"reload on the same node", true, false},
		{"return through another node", false, false},
		{"return with duplicates allowed", true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cluster := NewMemoryCluster(100)
			opts := []Option{WithLeaveGrace(time.Minute), WithDuplicateUsernames(tt.duplicates)}
			srv1, base1 := testServer(t, append(opts, WithAdapter(cluster.Node()))...)
			_, base2 := testServer(t, append(opts, WithAdapter(cluster.Node()))...)
			alice, _ := join(t, base1, "Alice", "r")
			bob, _ := join(t, base1, "Bob", "r")
			alice.nextOf(typeUserJoined) // Alice's own
			if e := alice.nextOf(typeUserJoined); e.Username != "Bob" {
				t.Fatalf("got %s", e.raw)
			}
			bob.conn.Close(websocket.StatusNormalClosure, "reload")
			bob.closed()
			// The client's close handshake ends before the server has
			// taken Bob's session out of the room; a return before that
			// is a second Bob, refused as taken, not a return.
			eventually(t, "Bob's first session ended", func() bool { return srv1.Stats().Sessions == 1 })
			back := base2
			if tt.sameNode {
				back = base1
			}
			bob2, w := join(t, back, "Bob", "r")
			if len(w.ActiveUsers) != 2 {
				t.Errorf("welcome after the return lists %v", w.ActiveUsers)
			}
			bob2.sendJSON(chatCmd("I'm back", "c-1"))
			expectNoPresenceBefore(t, alice, "I'm back")
		})
	}
}

func TestLeaveGraceAnnouncesOneLeaveAfterTheGrace(t *testing.T) {
	const grace = 200 * time.Millisecond
	_, base := testServer(t, WithLeaveGrace(grace))
	alice, _ := join(t, base, "Alice", "r")
	bob, _ := join(t, base, "Bob", "r")
	alice.nextOf(typeUserJoined)
	alice.nextOf(typeUserJoined)
	start := time.Now()
	bob.conn.Close(websocket.StatusNormalClosure, "gone")
	e := alice.nextOf(typeUserLeft)
	if e.Username != "Bob" || time.Since(start) < grace {
		t.Errorf("got %s after %v, want Bob's leave after at least %v", e.raw, time.Since(start), grace)
	}
	// Exactly one: the next event is the marker.
	alice.sendJSON(chatCmd("marker", "m"))
	expectNoPresenceBefore(t, alice, "marker")
	// And Bob may come back as new.
	join(t, base, "Bob", "r")
	if e := alice.nextOf(typeUserJoined); e.Username != "Bob" {
		t.Errorf("a return after the grace: %s", e.raw)
	}
}
