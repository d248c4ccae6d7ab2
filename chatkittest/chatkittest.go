package chatkittest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/chatkit/chatkit"
)

// timeout bounds every wait and every call: a broken implementation fails
// a test instead of hanging it.
const timeout = 10 * time.Second

// baseTime has a millisecond part, so that a store that drops it fails.
var baseTime = time.UnixMilli(1_700_000_000_123)

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	t.Cleanup(cancel)
	return ctx
}

func newMessage(room, username, text string) chatkit.Message {
	return chatkit.Message{Room: room, Username: username, Text: text, Time: baseTime}
}

// sameMessage compares times to the millisecond: that is what a store
// that encodes them has to keep.
func sameMessage(a, b chatkit.Message) bool {
	return a.ID == b.ID && a.Room == b.Room && a.Username == b.Username &&
		a.Text == b.Text && a.ClientMsgID == b.ClientMsgID && a.Epoch == b.Epoch &&
		a.Time.UnixMilli() == b.Time.UnixMilli()
}

func formatMessage(m chatkit.Message) string {
	return fmt.Sprintf("{ID:%d Room:%q Username:%q Text:%q ClientMsgID:%q Epoch:%q Time:%d}",
		m.ID, m.Room, m.Username, m.Text, m.ClientMsgID, m.Epoch, m.Time.UnixMilli())
}

func sameEvent(a, b chatkit.Event) bool {
	if a.Kind != b.Kind || a.Room != b.Room || a.Username != b.Username {
		return false
	}
	if a.Message == nil || b.Message == nil {
		return a.Message == nil && b.Message == nil
	}
	return sameMessage(*a.Message, *b.Message)
}

func formatEvent(ev chatkit.Event) string {
	msg := "nil"
	if ev.Message != nil {
		msg = formatMessage(*ev.Message)
	}
	return fmt.Sprintf("{Kind:%s Room:%q Username:%q Message:%s}", ev.Kind, ev.Room, ev.Username, msg)
}
