package fault

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"
)

// The PostgreSQL faults, group "postgres". They are available only when the
// topology has databases (Topology.Databases).
func init() {
	Register("pg-kill-conn", func() Fault { return pgFault{"pg-kill-conn"} })
	Register("pg-restart", func() Fault { return pgFault{"pg-restart"} })
	Register("pg-down", func() Fault { return pgFault{"pg-down"} })
	Register("pg-partition", func() Fault { return pgFault{"pg-partition"} })
	Register("kill-owner", func() Fault { return pgFault{"kill-owner"} })
	RegisterGroup("postgres", "pg-kill-conn", "pg-restart", "pg-down", "pg-partition", "kill-owner")
}

var errNoDatabases = errors.New("the run has no PostgreSQL databases")

// pgFault is one of:
//   - pg-kill-conn: pg_terminate_backend of lattice's sessions (replication
//     and projection) to one database, at the start and then every period
//     (0.5-2 s) for the hold;
//   - pg-restart: fast stop of one database, start again after 0.2-2 s;
//   - pg-down: one database stopped for a long period (Limits.Down);
//   - pg-partition: every packet between the cluster and one database
//     dropped for the hold (sessions stall instead of failing);
//   - kill-owner: SIGKILL of the node the cluster placed one database's
//     connector on (looked up in the connector status when the injection
//     starts), restarted after the hold.
type pgFault struct{ name string }

func (f pgFault) Name() string                 { return f.name }
func (f pgFault) Available(topo Topology) bool { return len(topo.Databases) > 0 && len(topo.Nodes) > 0 }

func (f pgFault) Plan(rng *rand.Rand, topo Topology, lim Limits) Injection {
	db := topo.Databases[rng.IntN(len(topo.Databases))]
	inj := &injection{targets: []string{db}}
	need := func(env Env) error {
		if env.Databases == nil {
			return errNoDatabases
		}
		return nil
	}
	switch f.name {
	case "pg-kill-conn":
		inj.hold = between(rng, lim.HoldMin/2, lim.HoldMax)
		period := between(rng, 500*time.Millisecond, 2*time.Second)
		inj.desc = fmt.Sprintf("terminate lattice's sessions to %s every %s", db, period)
		var rep repeater
		inj.start = func(ctx context.Context, env Env) error {
			if err := need(env); err != nil {
				return err
			}
			_, err := env.Databases.Terminate(ctx, db)
			rep.start(period, func(int) (bool, error) {
				tctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				_, e := env.Databases.Terminate(tctx, db)
				return true, e
			})
			return err
		}
		inj.stop = func(context.Context, Env) error { return rep.stop() }
	case "pg-restart", "pg-down":
		if f.name == "pg-restart" {
			inj.hold = between(rng, 200*time.Millisecond, 2*time.Second)
			inj.desc = fmt.Sprintf("restart %s (fast stop, start after %s)", db, inj.hold)
		} else {
			inj.hold = between(rng, lim.DownMin, lim.DownMax)
			inj.desc = fmt.Sprintf("%s down for %s", db, inj.hold)
		}
		inj.start = func(ctx context.Context, env Env) error {
			if err := need(env); err != nil {
				return err
			}
			return env.Databases.Stop(ctx, db)
		}
		inj.stop = func(ctx context.Context, env Env) error {
			if err := need(env); err != nil {
				return err
			}
			return env.Databases.StartDB(ctx, db)
		}
	case "pg-partition":
		inj.hold = between(rng, lim.HoldMin, lim.HoldMax)
		inj.desc = fmt.Sprintf("cut the cluster from %s", db)
		inj.start = func(_ context.Context, env Env) error {
			if err := need(env); err != nil {
				return err
			}
			return env.Databases.Cut(db)
		}
		inj.stop = func(_ context.Context, env Env) error { return env.Cluster.Heal() }
	case "kill-owner":
		inj.hold = between(rng, lim.HoldMin/2, lim.HoldMax)
		inj.desc = fmt.Sprintf("kill -9 the owner of connector %s", db)
		var victim string
		inj.start = func(ctx context.Context, env Env) error {
			if env.Owner == nil {
				return errNoDatabases
			}
			octx, cancel := context.WithTimeout(ctx, 5*time.Second)
			owner, err := env.Owner(octx, db)
			cancel()
			if err != nil {
				return fmt.Errorf("owner of %s: %w", db, err)
			}
			victim = owner
			inj.desc = fmt.Sprintf("kill -9 %s, the owner of connector %s", owner, db)
			return env.Cluster.Kill(owner)
		}
		inj.stop = func(ctx context.Context, env Env) error {
			if victim == "" {
				return nil
			}
			return env.Cluster.Restart(ctx, victim)
		}
	}
	return inj
}
