package pgstore

import (
	"fmt"
	"log/slog"
	"time"
)

// An Option configures a Store. Options are applied in order by New and
// Open; a later option overrides an earlier one. An option given an invalid
// value panics with a message naming the option and the value: such a
// value is a programming error, not a runtime condition.
type Option func(*config)

// config holds every setting of a Store. defaultConfig is the one place
// where defaults live.
type config struct {
	maxAge        time.Duration // 0: no age limit
	maxPerRoom    int64         // 0: no count limit
	pruneInterval time.Duration
	logger        *slog.Logger
}

func defaultConfig() config {
	return config{
		pruneInterval: time.Minute,
		logger:        slog.Default(),
	}
}

func (c config) retains() bool { return c.maxAge > 0 || c.maxPerRoom > 0 }

func badOption(name string, value any, why string) {
	panic(fmt.Sprintf("pgstore: %s(%v): %s", name, value, why))
}

// WithMaxAge makes the store delete messages whose Time is more than d in
// the past, in the background (see WithPruneInterval). By default messages
// are kept forever. Rooms are never deleted, so a room whose messages have
// all expired keeps its epoch and its last id. A d that is not positive
// panics.
func WithMaxAge(d time.Duration) Option {
	if d <= 0 {
		badOption("WithMaxAge", d, "must be positive")
	}
	return func(c *config) { c.maxAge = d }
}

// WithMaxPerRoom makes the store delete, in the background (see
// WithPruneInterval), the messages of each room but its newest n: those
// with an id up to the room's last id minus n. Between two prunes a room
// may hold more. By default messages are kept forever. An n below 1 panics.
func WithMaxPerRoom(n int) Option {
	if n < 1 {
		badOption("WithMaxPerRoom", n, "must be at least 1")
	}
	return func(c *config) { c.maxPerRoom = int64(n) }
}

// WithPruneInterval sets how often the store deletes what WithMaxAge and
// WithMaxPerRoom no longer keep (default every minute; the first prune
// runs one interval after New). Without either option it has no effect. A
// d that is not positive panics.
func WithPruneInterval(d time.Duration) Option {
	if d <= 0 {
		badOption("WithPruneInterval", d, "must be positive")
	}
	return func(c *config) { c.pruneInterval = d }
}

// WithLogger sets where the store logs its background pruning: how many
// messages each prune deleted, and the prunes that failed (default
// slog.Default()). A nil logger panics.
func WithLogger(l *slog.Logger) Option {
	if l == nil {
		badOption("WithLogger", "nil", "the logger must not be nil")
	}
	return func(c *config) { c.logger = l }
}
