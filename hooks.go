package chatkit

import (
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
)

// errHookPanicked is what callHook returns for a hook that panicked.
var errHookPanicked = errors.New("hook panicked")

// callHook calls an application hook that returns a value, turning a
// panic into errHookPanicked, so that one bad hook costs one request, not
// the process or a goroutine's invariants.
func callHook[T any](logger *slog.Logger, f func() (T, error)) (v T, err error) {
	defer func() {
		if p := recover(); p != nil {
			logger.Error("chatkit: hook panicked", "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
			err = errHookPanicked
		}
	}()
	return f()
}

// runHook runs a presence hook, logging a panic instead of letting it end
// the goroutine that runs the room's hooks.
func runHook(logger *slog.Logger, room string, h func()) {
	defer func() {
		if p := recover(); p != nil {
			logger.Error("chatkit: presence hook panicked", "room", room, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
		}
	}()
	h()
}
