package chatkittest_test

import (
	"testing"

	"github.com/chatkit/chatkit"
	"github.com/chatkit/chatkit/chatkittest"
)

func TestMemoryStore(t *testing.T) {
	chatkittest.RunStoreTests(t, func(t *testing.T) chatkit.Store {
		return chatkit.NewMemoryStore(100)
	})
}

func memoryNodes(t *testing.T) (a, b chatkit.Adapter) {
	c := chatkit.NewMemoryCluster(100)
	return c.Node(), c.Node()
}

func TestMemoryCluster(t *testing.T) {
	chatkittest.RunAdapterTests(t, memoryNodes)
}

func TestMemoryBroker(t *testing.T) {
	chatkittest.RunBrokerTests(t, func(t *testing.T) (a, b chatkit.Broker) {
		return memoryNodes(t)
	})
}

func BenchmarkMemoryStore(b *testing.B) {
	chatkittest.BenchmarkStore(b, func(*testing.B) chatkit.Store { return chatkit.NewMemoryStore(100) })
}
