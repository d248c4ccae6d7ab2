package chatkittest

import (
	"testing"

	"github.com/chatkit/chatkit"
)

// RunAdapterTests proves that the adapters newNodes returns keep the
// contracts of chatkit.Store and chatkit.Broker, and that Append publishes
// what it stores. newNodes is called once per subtest and must return two
// nodes of one fresh cluster: an empty store that keeps at least 50
// messages of each room, and nobody present.
func RunAdapterTests(t *testing.T, newNodes func(t *testing.T) (a, b chatkit.Adapter)) {
	t.Run("Store", func(t *testing.T) {
		RunStoreTests(t, func(t *testing.T) chatkit.Store {
			a, _ := newNodes(t)
			return a
		})
	})
	t.Run("Broker", func(t *testing.T) {
		RunBrokerTests(t, func(t *testing.T) (chatkit.Broker, chatkit.Broker) {
			return newNodes(t)
		})
	})
	tests := []struct {
		name string
		run  func(t *testing.T, a, b chatkit.Adapter)
	}{
		{"append publishes the stored message once", testAppendPublishes},
		{"append is not delivered to its own node", testAppendNotToOwnNode},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, b := newNodes(t)
			tt.run(t, a, b)
		})
	}
}

// expectMessage leaves the event's Username out: the contract sets it for
// the other kinds only.
func (s *subscription) expectMessage(t *testing.T, want chatkit.Message) {
	t.Helper()
	for {
		got := s.take(t, "message "+formatMessage(want))
		if got.Kind == chatkit.EventReset {
			continue
		}
		if got.Kind != chatkit.EventMessage || got.Room != want.Room || got.Message == nil || !sameMessage(*got.Message, want) {
			t.Fatalf("subscriber of %q: got %s, want a message event of %s", s.room, formatEvent(got), formatMessage(want))
		}
		return
	}
}

func testAppendPublishes(t *testing.T, a, b chatkit.Adapter) {
	sb := subscribe(t, b, "r1")
	m := newMessage("r1", "alice", "hello")
	m.ClientMsgID = "c1"
	stored := appendNew(t, a, m)
	if stored.ID == 0 || stored.Epoch == "" {
		t.Fatalf("Append returned %s, want ID and Epoch set", formatMessage(stored))
	}
	sb.expectMessage(t, stored)

	if _, dup, err := a.Append(testContext(t), m); err != nil || !dup {
		t.Fatalf("retry Append: dup %v, err %v; want a dup", dup, err)
	}
	// The next message proves that the dup was not published again.
	next := appendNew(t, a, newMessage("r1", "bob", "second"))
	sb.expectMessage(t, next)
}

func testAppendNotToOwnNode(t *testing.T, a, b chatkit.Adapter) {
	sa := subscribe(t, a, "r1")
	appendNew(t, a, newMessage("r1", "alice", "from a"))
	fromB := appendNew(t, b, newMessage("r1", "bob", "from b"))
	sa.expectMessage(t, fromB)
}
