package chatkit_test

import (
	"testing"

	"github.com/chatkit/chatkit"
	"github.com/chatkit/chatkit/chatkittest"
)

// TestMemoryClusterServers runs the multi-node suite on Servers joined by
// a MemoryCluster, the in-process stand-in for the redisadapter.
func TestMemoryClusterServers(t *testing.T) {
	chatkittest.RunClusterTests(t, func(t *testing.T) func() chatkit.Adapter {
		c := chatkit.NewMemoryCluster(100)
		return c.Node
	})
}
