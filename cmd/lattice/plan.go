package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/lattice-sync/lattice/connectors"
	"github.com/lattice-sync/lattice/connectors/postgres"
	"github.com/lattice-sync/lattice/crdt"
)

// newPlanCmd is `lattice connectors plan`: a dry run of connecting systems
// that already hold data.
func newPlanCmd(cf *clientFlags) *cobra.Command {
	var config string
	cmd := &cobra.Command{
		Use:   "plan --config FILE",
		Short: "dry run: what connecting databases that already hold data would create, update and resolve as conflicts",
		Long: `Reads every row of every table the configuration's connectors map, as their
initial snapshots would, and computes with the entities' policies what
connecting them does: per connector, how many records it lacks and will
receive (CREATE), how many of its rows will change (UPDATE) or already hold
the outcome (UNCHANGED), how many disagree with another database on some
field (CONFLICTS: resolved by policy and kept in history), how many of those
have a winner no one can predict because the tables have no updated_at
column to date their rows (UNDETERMINED), and how many rows would go to the
dead-letter queue (REFUSED). Nothing is written. The connection strings come
from the configuration (dsn_env, dsn_file) in this command's environment.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if config == "" {
				return fmt.Errorf("--config FILE is required: the configuration with the connectors to plan")
			}
			data, err := os.ReadFile(config)
			if err != nil {
				return err
			}
			schema, err := crdt.ParseSchema(config, data)
			if err != nil {
				return err
			}
			plans, err := plan(cmd.Context(), schema, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			return printPlan(cmd.OutOrStdout(), plans, cf.output == "json")
		},
	}
	cmd.Flags().StringVar(&config, "config", "", "configuration file (entities and connectors)")
	return cmd
}

// planSide is one connector's part of the plan, as printed.
type planSide struct {
	Connector    string   `json:"connector"`
	Tables       []string `json:"tables"`
	Rows         int      `json:"rows"`
	Create       int      `json:"create"`
	Update       int      `json:"update"`
	Unchanged    int      `json:"unchanged"`
	Conflicts    int      `json:"conflicts"`
	Undetermined int      `json:"undetermined"`
	Refused      int      `json:"refused"`
}

func plan(ctx context.Context, schema *crdt.Schema, progress io.Writer) ([]planSide, error) {
	p := connectors.NewPlanner(schema)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	tables := map[string][]string{}
	var conns []*postgres.Connector
	var names []string
	for _, d := range schema.Connectors {
		if d.Kind != "postgres" {
			fmt.Fprintf(progress, "connector %s: kind %q cannot be planned; skipped\n", d.Name, d.Kind)
			continue
		}
		cfg, err := postgres.ParseConfig(d.Name, d.Config, schema)
		if err != nil {
			return nil, err
		}
		for _, t := range cfg.Tables {
			tables[d.Name] = append(tables[d.Name], t.Name)
		}
		p.Side(d.Name, connectors.Origin("postgres", d.Name), cfg.Fields())
		conns = append(conns, postgres.New(cfg, nil, staticSchema{schema}, quiet))
		names = append(names, d.Name)
	}
	if len(conns) == 0 {
		return nil, fmt.Errorf("no postgres connectors in the configuration: declare them under connectors:")
	}
	for i, c := range conns {
		bar := &progressBar{w: progress, what: names[i]}
		err := c.Scan(ctx, bar.update, func(r connectors.PlanRow) { p.Add(names[i], r) })
		bar.done()
		if err != nil {
			return nil, err
		}
	}
	var out []planSide
	for _, s := range p.Plan() {
		out = append(out, planSide{Connector: s.Name, Tables: tables[s.Name], Rows: s.Rows, Create: s.Create, Update: s.Update,
			Unchanged: s.Unchanged, Conflicts: s.Conflicts, Undetermined: s.Undetermined, Refused: s.Refused})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Connector < out[j].Connector })
	return out, nil
}

type staticSchema struct{ s *crdt.Schema }

func (s staticSchema) Schema() *crdt.Schema { return s.s }

func printPlan(w io.Writer, plans []planSide, asJSON bool) error {
	if asJSON {
		b, err := json.MarshalIndent(plans, "", "  ")
		if err != nil {
			return err
		}
		_, err = fmt.Fprintln(w, string(b))
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CONNECTOR\tTABLES\tROWS\tCREATE\tUPDATE\tUNCHANGED\tCONFLICTS\tUNDETERMINED\tREFUSED")
	for _, p := range plans {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\n", p.Connector, strings.Join(p.Tables, ","), p.Rows, p.Create, p.Update,
			p.Unchanged, p.Conflicts, p.Undetermined, p.Refused)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w, "Nothing was written. CREATE: records the database lacks and will receive; UPDATE: its rows that will change;")
	fmt.Fprintln(w, "CONFLICTS: rows that disagree with another database, resolved by each field's policy (see lattice history);")
	fmt.Fprintln(w, "UNDETERMINED: conflicts whose winner depends on snapshot order (map an updated_at column to date rows).")
	return nil
}

// progressBar reports reading a large table on stderr.
type progressBar struct {
	w     io.Writer
	what  string
	shown bool
	last  time.Time
}

func (b *progressBar) update(table string, done, total int64) {
	if total < 10000 && !b.shown {
		return // small tables need no bar
	}
	if time.Since(b.last) < 200*time.Millisecond && done < total {
		return
	}
	b.last, b.shown = time.Now(), true
	pct := 0
	if total > 0 {
		pct = int(done * 100 / total)
	}
	const width = 30
	fill := min(width, pct*width/100)
	fmt.Fprintf(b.w, "\rreading %s %s [%s%s] %3d%% %d of ~%d rows", b.what, table,
		strings.Repeat("#", fill), strings.Repeat(".", width-fill), pct, done, total)
}

func (b *progressBar) done() {
	if b.shown {
		fmt.Fprintln(b.w)
	}
}
