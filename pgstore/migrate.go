package pgstore

import (
	"context"
	"embed"
	"fmt"
	"io/fs"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"
)

// The schema's migrations, applied in the order of their numbers: each
// file is NNNN_name.sql, and a released file is never changed, only
// followed by a new one.
//
//go:embed migrations/*.sql
var migrationFiles embed.FS

type migration struct {
	version int
	name    string
	sql     string
}

func migrations() ([]migration, error) {
	names, err := fs.Glob(migrationFiles, "migrations/*.sql")
	if err != nil {
		return nil, err
	}
	var ms []migration
	for _, name := range names {
		base := strings.TrimPrefix(name, "migrations/")
		num, _, _ := strings.Cut(base, "_")
		v, err := strconv.Atoi(num)
		if err != nil || v < 1 {
			return nil, fmt.Errorf("pgstore: migration %s: the name must start with a number from 1", base)
		}
		b, err := migrationFiles.ReadFile(name)
		if err != nil {
			return nil, err
		}
		ms = append(ms, migration{version: v, name: base, sql: string(b)})
	}
	slices.SortFunc(ms, func(a, b migration) int { return a.version - b.version })
	return ms, nil
}

// Migrate creates the store's tables (see the package documentation), or
// brings them up to date, in the first schema of the connections'
// search_path, and returns nil once they are. It is idempotent, and safe
// to call from any number of processes at once: it runs in one
// transaction that first takes a transaction-level advisory lock, so
// concurrent calls apply each migration once, one after the other, and a
// failed call leaves the schema as it found it. The applied versions are
// rows of the table chatkit_schema_version; versions newer than this
// package knows (from a newer release of it) are left alone. Migrate
// returns early, with an error, when ctx ends.
func Migrate(ctx context.Context, pool *pgxpool.Pool) error {
	ms, err := migrations()
	if err != nil {
		return err
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("pgstore: Migrate: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	// The lock is per schema, so that chats in different schemas of one
	// database migrate independently.
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtextextended('chatkit/pgstore migrations ' || coalesce(current_schema(), ''), 0))`); err != nil {
		return fmt.Errorf("pgstore: Migrate: taking the migration lock: %w", err)
	}
	if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS chatkit_schema_version (
		version    integer     PRIMARY KEY,
		name       text        NOT NULL,
		applied_at timestamptz NOT NULL DEFAULT now()
	)`); err != nil {
		return fmt.Errorf("pgstore: Migrate: %w", err)
	}
	var current int
	if err := tx.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM chatkit_schema_version`).Scan(&current); err != nil {
		return fmt.Errorf("pgstore: Migrate: reading the schema version: %w", err)
	}
	for _, m := range ms {
		if m.version <= current {
			continue
		}
		if _, err := tx.Exec(ctx, m.sql); err != nil {
			return fmt.Errorf("pgstore: Migrate: %s: %w", m.name, err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO chatkit_schema_version (version, name) VALUES ($1, $2)`, m.version, m.name); err != nil {
			return fmt.Errorf("pgstore: Migrate: %s: %w", m.name, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("pgstore: Migrate: %w", err)
	}
	return nil
}
