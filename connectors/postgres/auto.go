package postgres

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// Choosing a capture mode (mode: auto).
//
// Run decides the mode before anything else starts and stores it in
// Connector.mode, which every mode test (polling, triggering, modeNow)
// reads. A configured mode is taken as it is. Mode auto asks the database,
// in this order:
//
//   - logical, when wal_level is logical, the role may replicate
//     (superuser or REPLICATION), may set a replication origin on its
//     session (projection's echo marker), and the publication exists or
//     the role may create it (superuser, or owner of every mapped table);
//   - trigger, when trigger capture's objects are all installed, or the
//     role may create them (CREATE on the database or on schema lattice,
//     and TRIGGER on every mapped table);
//   - poll, when every mapped table has updated_at.
//
// A connector that already captured in one mode keeps it (its checkpoint
// names the mode) as long as the database still allows it: switching modes
// starts capture over from a snapshot, and a change table would be left
// filling up. The choice and the reasons the earlier modes were passed
// over are logged and given in the connector's report.

// modeChoice is the mode in effect and, for mode auto, why.
type modeChoice struct {
	mode string
	why  string
}

// modeNow is the capture mode in effect: mode auto's choice once Run made
// it; before that the configured mode ("" for auto).
func (c *Connector) modeNow() string {
	if m := c.mode.Load(); m != nil {
		return m.mode
	}
	switch {
	case c.cfg == nil || c.cfg.Mode == "":
		return ModeLogical // a Config built by hand
	case c.cfg.Mode == ModeAuto:
		return ""
	}
	return c.cfg.Mode
}

// triggering reports whether the connector captures through triggers.
func (c *Connector) triggering() bool { return c.modeNow() == ModeTrigger }

// modeReport is the mode as a status report gives it: the mode, and for
// mode auto what it chose and why.
func (c *Connector) modeReport() string {
	m := c.mode.Load()
	switch {
	case m == nil && c.cfg != nil && c.cfg.Mode == ModeAuto:
		return "auto (not chosen yet)"
	case m == nil:
		return c.modeNow()
	case m.why != "":
		return m.mode + " (auto: " + m.why + ")"
	}
	return m.mode
}

// chooseMode sets the mode in effect (see the top of this file).
func (c *Connector) chooseMode(ctx context.Context, conn *pgx.Conn) error {
	if c.cfg.Mode != ModeAuto {
		c.mode.Store(&modeChoice{mode: c.modeNow()})
		return nil
	}
	ok := map[string]string{} // mode -> why not ("" when allowed)
	for _, m := range []string{ModeLogical, ModeTrigger, ModePoll} {
		why, err := c.modeAllowed(ctx, conn, m)
		if err != nil {
			return fmt.Errorf("connector %s: mode auto: %w", c.cfg.Name, err)
		}
		ok[m] = why
	}
	pick := func(mode, why string) error {
		c.mode.Store(&modeChoice{mode: mode, why: why})
		c.log.Info("mode auto: capture mode chosen", "mode", mode, "why", why)
		return nil
	}
	if cp, has := c.readCheckpoint(); has && cp.Mode != "" {
		if why, known := ok[cp.Mode]; known && why == "" {
			return pick(cp.Mode, fmt.Sprintf("the connector captured in mode %s before (its checkpoint) and the database still allows it", cp.Mode))
		}
	}
	var passed []string
	for _, m := range []string{ModeLogical, ModeTrigger, ModePoll} {
		if ok[m] == "" {
			why := allowedWhy(m)
			if len(passed) > 0 {
				why += "; passed over: " + strings.Join(passed, "; ")
			}
			return pick(m, why)
		}
		passed = append(passed, m+": "+ok[m])
	}
	return fmt.Errorf("connector %s: mode auto: the database allows no capture mode: %s", c.cfg.Name, strings.Join(passed, "; "))
}

func allowedWhy(mode string) string {
	switch mode {
	case ModeLogical:
		return "wal_level is logical and the role may replicate"
	case ModeTrigger:
		return "the role may install (or has) the capture triggers"
	}
	return "every table has updated_at"
}

// modeAllowed says why the database does not allow a capture mode for
// this connector, or "" when it does.
func (c *Connector) modeAllowed(ctx context.Context, conn *pgx.Conn, mode string) (string, error) {
	var role string
	var super, repl bool
	if err := conn.QueryRow(ctx, "SELECT current_user, rolsuper, rolreplication FROM pg_roles WHERE rolname = current_user").Scan(&role, &super, &repl); err != nil {
		return "", err
	}
	switch mode {
	case ModeLogical:
		var level string
		if err := conn.QueryRow(ctx, "SHOW wal_level").Scan(&level); err != nil {
			return "", err
		}
		if level != "logical" {
			return fmt.Sprintf("wal_level is %s, not logical", level), nil
		}
		if !super && !repl {
			return fmt.Sprintf("role %s is neither superuser nor REPLICATION", role), nil
		}
		var origin bool
		if err := conn.QueryRow(ctx, "SELECT has_function_privilege('pg_replication_origin_session_setup(text)', 'EXECUTE')").Scan(&origin); err != nil {
			return "", err
		}
		if !origin {
			return fmt.Sprintf("role %s may not set a replication origin (pg_replication_origin_session_setup)", role), nil
		}
		var pub bool
		if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)", c.cfg.Publication).Scan(&pub); err != nil {
			return "", err
		}
		if !pub && !super {
			for _, t := range c.cfg.Tables {
				var owner bool
				if err := conn.QueryRow(ctx, "SELECT COALESCE((SELECT pg_has_role(relowner, 'USAGE') FROM pg_class WHERE oid = to_regclass($1)), false)", t.Name).Scan(&owner); err != nil {
					return fmt.Sprintf("table %s: %v", t.Name, err), nil
				}
				if !owner {
					return fmt.Sprintf("publication %s does not exist and role %s does not own table %s to create it", c.cfg.Publication, role, t.Name), nil
				}
			}
		}
		return "", nil
	case ModeTrigger:
		missing, err := c.triggerMissing(ctx, conn)
		if err != nil {
			return "", err
		}
		if len(missing) == 0 {
			return "", nil
		}
		if why := c.triggerRights(ctx, conn, role); why != "" {
			return fmt.Sprintf("capture triggers not installed (%s) and %s", strings.Join(missing, ", "), why), nil
		}
		return "", nil
	default:
		var no []string
		for _, t := range c.cfg.Tables {
			if t.UpdatedAt == "" || t.Poll == nil {
				no = append(no, t.Name)
			}
		}
		if len(no) > 0 {
			return fmt.Sprintf("table %s has no updated_at", strings.Join(no, ", ")), nil
		}
		return "", nil
	}
}

// triggerRights says which right the role lacks to install trigger
// capture's objects, or "" when it has them all.
func (c *Connector) triggerRights(ctx context.Context, conn *pgx.Conn, role string) string {
	var schemaOK bool
	err := conn.QueryRow(ctx, `SELECT CASE WHEN to_regnamespace($1) IS NULL THEN has_database_privilege(current_database(), 'CREATE')
		ELSE has_schema_privilege($1, 'CREATE') END`, triggerSchema).Scan(&schemaOK)
	if err != nil {
		return err.Error()
	}
	if !schemaOK {
		return fmt.Sprintf("role %s may not create schema %s or objects in it (CREATE on the database or the schema)", role, triggerSchema)
	}
	for _, t := range c.cfg.Tables {
		var trig bool
		if err := conn.QueryRow(ctx, "SELECT COALESCE(has_table_privilege(to_regclass($1), 'TRIGGER'), false)", t.Name).Scan(&trig); err != nil {
			return fmt.Sprintf("table %s: %v", t.Name, err)
		}
		if !trig {
			return fmt.Sprintf("role %s may not create triggers on table %s (TRIGGER privilege or ownership)", role, t.Name)
		}
	}
	return ""
}
