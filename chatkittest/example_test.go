package chatkittest_test

import (
	"testing"

	"github.com/chatkit/chatkit"
	"github.com/chatkit/chatkit/chatkittest"
)

// A store proves itself from a test of its own package; the memory store
// stands in for yours here. Every subtest gets a fresh store.
func ExampleRunStoreTests() {
	testStore := func(t *testing.T) {
		chatkittest.RunStoreTests(t, func(t *testing.T) chatkit.Store {
			return chatkit.NewMemoryStore(100)
		})
	}
	_ = testStore
}

// A broker is proven with two nodes of one cluster, fresh for every
// subtest: with Redis, a flushed database and two clients of it.
func ExampleRunBrokerTests() {
	testBroker := func(t *testing.T) {
		chatkittest.RunBrokerTests(t, func(t *testing.T) (a, b chatkit.Broker) {
			c := chatkit.NewMemoryCluster(100)
			return c.Node(), c.Node()
		})
	}
	_ = testBroker
}

// An adapter runs the store and broker tests, and checks that Append
// publishes what it stores.
func ExampleRunAdapterTests() {
	testAdapter := func(t *testing.T) {
		chatkittest.RunAdapterTests(t, func(t *testing.T) (a, b chatkit.Adapter) {
			c := chatkit.NewMemoryCluster(100)
			return c.Node(), c.Node()
		})
	}
	_ = testAdapter
}
