package pgstore

import (
	"context"
	"fmt"
	"time"
)

// pruneBatch bounds the rows one DELETE removes, so that a prune never
// holds many row locks, nor writes much WAL, in one transaction.
const pruneBatch = 1000

// The messages past a room's count limit ($1), or past the age limit
// ($1), pruneBatch at a time. A room's ids are gap-free, so its newest n
// are those above last_id - n; the lateral join finds the others room by
// room on the primary key, rather than by scanning every message.
var (
	pruneCountSQL = fmt.Sprintf(`
DELETE FROM chatkit_messages WHERE (room, id) IN (
    SELECT m.room, m.id FROM chatkit_rooms r, LATERAL (
        SELECT room, id FROM chatkit_messages WHERE room = r.room AND id <= r.last_id - $1 LIMIT %[1]d
    ) m LIMIT %[1]d)`, pruneBatch)
	pruneAgeSQL = fmt.Sprintf(`
DELETE FROM chatkit_messages WHERE (room, id) IN (
    SELECT room, id FROM chatkit_messages WHERE created_at < $1 LIMIT %d)`, pruneBatch)
)

// Prune deletes now what WithMaxAge and WithMaxPerRoom no longer keep, as
// the background pruning does every WithPruneInterval, and returns how
// many messages it deleted. It deletes at most 1000 messages per
// statement, each statement its own transaction, until none is left or
// ctx ends; on an error, what it deleted before stays deleted. Rooms'
// rows, epochs and last ids are never deleted. Without either option it
// deletes nothing. It is safe to call concurrently with anything,
// another Prune included.
func (s *Store) Prune(ctx context.Context) (int64, error) {
	var total int64
	prune := func(sql string, arg any) error {
		for {
			tag, err := s.pool.Exec(ctx, sql, arg)
			if err != nil {
				return callError(ctx, "Prune", err)
			}
			total += tag.RowsAffected()
			if tag.RowsAffected() < pruneBatch {
				return nil
			}
		}
	}
	if s.cfg.maxPerRoom > 0 {
		if err := prune(pruneCountSQL, s.cfg.maxPerRoom); err != nil {
			return total, err
		}
	}
	if s.cfg.maxAge > 0 {
		if err := prune(pruneAgeSQL, time.Now().Add(-s.cfg.maxAge)); err != nil {
			return total, err
		}
	}
	return total, nil
}

// pruneLoop prunes every interval until ctx ends. A prune that fails is
// logged and tried again at the next tick.
func (s *Store) pruneLoop(ctx context.Context) {
	defer close(s.done)
	tick := time.NewTicker(s.cfg.pruneInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		// A database that stops answering must not hold the loop: the
		// prune is cut, and resumed at a later tick.
		pctx, cancel := context.WithTimeout(ctx, max(s.cfg.pruneInterval, time.Minute))
		start := time.Now()
		n, err := s.Prune(pctx)
		cancel()
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			s.log.Warn("pruning old messages failed", "deleted", n, "err", err)
		case n > 0:
			s.log.Info("pruned old messages", "deleted", n, "took", time.Since(start).Round(time.Millisecond))
		}
	}
}
