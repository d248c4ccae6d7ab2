// Package chatkittest proves that an implementation of one of chatkit's
// seams keeps its contract, in the manner of testing/fstest.TestFS: every
// Store, Broker and Adapter, the memory ones included, runs the same tests.
//
// A package with a Store of its own calls RunStoreTests from one of its
// tests, with a function that returns a fresh, empty store for each subtest:
//
//	func TestStore(t *testing.T) {
//		chatkittest.RunStoreTests(t, func(t *testing.T) chatkit.Store {
//			s := mystore.New(flushedTestDatabase(t))
//			t.Cleanup(func() { s.Close() })
//			return s
//		})
//	}
//
// A Broker is proven with two nodes of one fresh cluster by RunBrokerTests,
// and an Adapter (a Store and a Broker in one) by RunAdapterTests, which
// runs the other two as well as the checks of its own.
//
// The tests assume a healthy setup: a Broker may lose events in general,
// but here every published event is expected to arrive. Extra EventReset
// events are ignored anywhere. Every wait gives up after 10 seconds.
package chatkittest
