package redisadapter_test

import (
	"testing"

	"github.com/chatkit/chatkit"
	"github.com/chatkit/chatkit/chatkittest"
)

// TestClusterServers runs the multi-node suite on real Servers, each with
// an Adapter of its own on the test Redis: every subtest's cluster has a
// prefix of its own, so an empty store and nobody present.
func TestClusterServers(t *testing.T) {
	c := newClient(t)
	chatkittest.RunClusterTests(t, func(t *testing.T) func() chatkit.Adapter {
		prefix := newPrefix(t, c)
		return func() chatkit.Adapter { return newAdapter(t, c, prefix) }
	})
}
