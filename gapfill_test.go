package chatkit

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"golang.org/x/time/rate"
)

// lossyBroker loses the publications of the messages that lose says, as
// Redis pub/sub does while a subscription reconnects.
type lossyBroker struct {
	Broker
	lose func(Message) bool
}

func (b lossyBroker) Publish(ctx context.Context, ev Event) error {
	if ev.Kind == EventMessage && b.lose(*ev.Message) {
		return nil
	}
	return b.Broker.Publish(ctx, ev)
}

// countingStore counts the reads that fill gaps: those after a message.
type countingStore struct {
	Store
	afters atomic.Int64
}

func (s *countingStore) After(ctx context.Context, room string, after int64, limit int) (RoomState, []Message, error) {
	if after > 0 {
		s.afters.Add(1)
	}
	return s.Store.After(ctx, room, after, limit)
}

func TestLostPublicationsAreFilledFromTheStoreInOrder(t *testing.T) {
	cluster := NewMemoryCluster(100)
	store := &countingStore{Store: cluster.store}
	const total = 60
	lose := func(m Message) bool { return m.ID%3 == 2 && m.ID < total } // the last one arrives
	_, base1 := testServer(t, WithStore(store), WithBroker(lossyBroker{cluster.hub.node(), lose}), WithRateLimit(rate.Inf, 1))
	_, base2 := testServer(t, WithStore(store), WithBroker(lossyBroker{cluster.hub.node(), lose}), WithRateLimit(rate.Inf, 1))
	alice, _ := join(t, base1, "Alice", "r")
	bob, _ := join(t, base2, "Bob", "r")
	alice.nextOf(typeUserJoined) // Bob, through the broker: both nodes are subscribed

	for i := 1; i <= total; i++ {
		alice.sendJSON(chatCmd(fmt.Sprint("m", i), fmt.Sprint("c", i)))
	}
	for i := int64(1); i <= total; i++ {
		m := bob.nextOf(typeChat)
		if m.ID != i || m.Text != fmt.Sprint("m", i) {
			t.Fatalf("Bob got %s, want message %d: in order, none missing", m.raw, i)
		}
	}
	if store.afters.Load() == 0 {
		t.Errorf("no read from the store: the lost publications were not what was tested")
	}
}
