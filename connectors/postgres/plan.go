package postgres

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/lattice-sync/lattice/connectors"
)

// Fields returns, per entity, the fields this connector's tables hold (for
// connectors.Planner.Side).
func (c *Config) Fields() map[string][]string {
	out := map[string][]string{}
	for _, t := range c.Tables {
		for _, f := range t.Columns {
			out[t.Entity] = append(out[t.Entity], f)
		}
		for f := range t.Computed {
			out[t.Entity] = append(out[t.Entity], f)
		}
	}
	return out
}

// Scan reads every row of the connector's tables, as capture's initial
// snapshot would map them, without writing anything anywhere. progress,
// when set, is called now and then with the table, the rows read and the
// server's estimate of the table's size (0 when unknown).
func (c *Connector) Scan(ctx context.Context, progress func(table string, done, total int64), fn func(connectors.PlanRow)) error {
	conn, err := pgx.Connect(ctx, c.cfg.DSN)
	if err != nil {
		return fmt.Errorf("connector %s: connect: %w", c.cfg.Name, err)
	}
	defer conn.Close(context.Background())
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return err
	}
	defer tx.Rollback(context.Background())
	for i := range c.cfg.Tables {
		t := &c.cfg.Tables[i]
		var estimate float64
		_ = tx.QueryRow(ctx, "SELECT reltuples FROM pg_class WHERE oid = $1::regclass", t.Name).Scan(&estimate)
		cols := t.columns()
		rows, err := tx.Query(ctx, fmt.Sprintf("SELECT %s FROM %s", castText(cols), pgx.Identifier(strings.Split(t.Name, ".")).Sanitize()))
		if err != nil {
			return fmt.Errorf("connector %s: read %s: %w", c.cfg.Name, t.Name, err)
		}
		var n int64
		last := time.Now()
		if progress != nil {
			progress(t.Name, 0, int64(max(estimate, 0)))
		}
		for rows.Next() {
			text, err := scanText(rows, cols)
			if err != nil {
				rows.Close()
				return err
			}
			ch, err := c.toChange(t, text, false)
			if err != nil {
				rows.Close()
				return fmt.Errorf("connector %s: read %s: %w", c.cfg.Name, t.Name, err)
			}
			n++
			if ch.refused == nil && len(ch.fields) == 0 {
				continue // the table's filter leaves it out
			}
			fn(connectors.PlanRow{Entity: t.Entity, ID: ch.id, Fields: ch.fields, UpdatedAt: ch.updatedAt, Refused: ch.refused})
			if progress != nil && time.Since(last) > 200*time.Millisecond {
				progress(t.Name, n, int64(max(estimate, float64(n))))
				last = time.Now()
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("connector %s: read %s: %w", c.cfg.Name, t.Name, err)
		}
		if progress != nil {
			progress(t.Name, n, n)
		}
	}
	return nil
}
