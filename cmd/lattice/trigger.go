package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/lattice-sync/lattice/connectors/postgres"
	"github.com/lattice-sync/lattice/crdt"
)

// newTriggerCmd is `lattice connectors trigger install|remove NAME`: the
// objects of a PostgreSQL connector's trigger capture (mode trigger), for a
// DBA to install with a role that owns the tables when the connector's own
// role may not.
func newTriggerCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "trigger",
		Short: "install or remove a PostgreSQL connector's capture triggers and change table (mode trigger)",
	}
	for _, verb := range []string{"install", "remove"} {
		var config string
		var dryRun bool
		c := &cobra.Command{
			Use: verb + " NAME --config FILE",
			Short: map[string]string{
				"install": "create the change table, trigger function and triggers a connector in mode trigger captures through",
				"remove":  "drop a connector's change table, trigger function and triggers",
			}[verb],
			Long: `Prints the SQL, then runs it in one transaction on the connector's database
(the connection string comes from the configuration: dsn_env, dsn_file).
Every statement is idempotent: running the command again changes nothing.
With --dry-run it only prints. A connector in mode trigger (or auto) also
installs what is missing itself at start when its role may; this command
is for a role that owns the tables when the connector's role may not.
Removing the objects of a connector that still runs in mode trigger makes
it install them again and start over from a snapshot.`,
			Args: cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				cfg, err := triggerConfig(config, args[0])
				if err != nil {
					return err
				}
				if verb == "install" && cfg.Mode != postgres.ModeTrigger && cfg.Mode != postgres.ModeAuto {
					return fmt.Errorf("connector %s is in mode %s, which does not read a change table: the triggers would fill it for nothing; set mode: trigger (or auto) first", cfg.Name, cfg.Mode)
				}
				stmts := postgres.TriggerInstallSQL(cfg)
				if verb == "remove" {
					stmts = postgres.TriggerRemoveSQL(cfg)
				}
				out := cmd.OutOrStdout()
				fmt.Fprintf(out, "-- lattice connectors trigger %s %s: %d statements, in one transaction\n", verb, cfg.Name, len(stmts))
				fmt.Fprintln(out, "BEGIN;")
				for _, q := range stmts {
					fmt.Fprintf(out, "%s;\n", q)
				}
				fmt.Fprintln(out, "COMMIT;")
				if dryRun {
					fmt.Fprintln(out, "-- dry run: nothing was run")
					return nil
				}
				if err := postgres.ExecSQL(cmd.Context(), cfg, stmts); err != nil {
					return fmt.Errorf("connector %s: trigger %s: %w", cfg.Name, verb, err)
				}
				fmt.Fprintf(out, "-- done: %s\n", map[string]string{"install": "installed", "remove": "removed"}[verb])
				return nil
			},
		}
		c.Flags().StringVar(&config, "config", "", "configuration file (entities and connectors)")
		c.Flags().BoolVar(&dryRun, "dry-run", false, "only print the SQL")
		cmd.AddCommand(c)
	}
	return cmd
}

// triggerConfig reads connector name's declaration from a configuration file.
func triggerConfig(file, name string) (*postgres.Config, error) {
	if file == "" {
		return nil, fmt.Errorf("--config FILE is required: the configuration that declares connector %s", name)
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	schema, err := crdt.ParseSchema(file, data)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, d := range schema.Connectors {
		if d.Name != name {
			names = append(names, d.Name)
			continue
		}
		if d.Kind != "postgres" {
			return nil, fmt.Errorf("connector %s is of kind %q: trigger capture is for postgres connectors", name, d.Kind)
		}
		return postgres.ParseConfig(d.Name, d.Config, schema)
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("%s declares no connectors (connector %s not found)", file, name)
	}
	return nil, fmt.Errorf("%s declares no connector %s (it declares %s)", file, name, strings.Join(names, ", "))
}
