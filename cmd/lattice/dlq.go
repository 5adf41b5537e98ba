package main

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"

	"github.com/spf13/cobra"

	pb "github.com/lattice-sync/lattice/api/lattice/v1"
	"github.com/lattice-sync/lattice/cluster"
	"github.com/lattice-sync/lattice/connectors"
)

// dlqAdapter keeps connectors' dead-letter queues in the cluster's control
// plane (cluster and connectors do not import each other).
type dlqAdapter struct{ n *cluster.Node }

func (a dlqAdapter) Add(ctx context.Context, connector string, l connectors.Letter) error {
	return a.n.AddDeadLetter(ctx, connector, cluster.DeadLetter{Direction: l.Direction, Entity: l.Entity,
		RecordID: l.RecordID, Error: l.Error, At: l.At})
}

func (a dlqAdapter) List(connector string) []connectors.Letter {
	var out []connectors.Letter
	for _, l := range a.n.DeadLetters(connector) {
		out = append(out, connectors.Letter{ID: l.ID, Direction: l.Direction, Entity: l.Entity, RecordID: l.RecordID,
			Error: l.Error, At: l.At, Attempts: l.Attempts, Replay: l.Replay})
	}
	return out
}

func (a dlqAdapter) Resolve(ctx context.Context, connector string, id uint64, failure error) error {
	return a.n.ResolveDeadLetter(ctx, connector, id, failure)
}

func newDLQCmd(cf *clientFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "dlq", Short: "a connector's dead-letter queue: changes it could not apply"}
	print := func(w io.Writer, resp *pb.DeadLettersResponse) error {
		if cf.output == "json" {
			return printJSON(w, resp)
		}
		if len(resp.GetEntries()) == 0 {
			_, err := fmt.Fprintln(w, "dead-letter queue is empty")
			return err
		}
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tDIRECTION\tRECORD\tATTEMPTS\tREPLAY\tLAST REFUSED (UTC)\tERROR")
		for _, l := range resp.GetEntries() {
			replay := ""
			if l.GetReplayRequested() {
				replay = "pending"
			}
			fmt.Fprintf(tw, "%d\t%s\t%s %s\t%d\t%s\t%s\t%s\n", l.GetId(), l.GetDirection(), l.GetEntity(), l.GetRecordId(),
				l.GetAttempts(), replay, l.GetAt().AsTime().Format("2006-01-02 15:04:05"), l.GetError())
		}
		return tw.Flush()
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "list CONNECTOR",
		Short: "list the changes a connector could not apply",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return cf.withCluster(cmd, func(ctx context.Context, c pb.ClusterClient) error {
				resp, err := c.DeadLetters(ctx, &pb.DeadLettersRequest{Connector: args[0]})
				if err != nil {
					return err
				}
				return print(cmd.OutOrStdout(), resp)
			})
		},
	})
	for _, verb := range []string{"replay", "discard"} {
		var all bool
		c := &cobra.Command{
			Use:   verb + " CONNECTOR [ID...]",
			Short: map[string]string{"replay": "retry entries (after fixing the cause), by id or --all", "discard": "drop entries for good, by id or --all"}[verb],
			Args:  cobra.MinimumNArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				req := &pb.DeadLetterIDs{Connector: args[0], All: all}
				for _, a := range args[1:] {
					id, err := strconv.ParseUint(a, 10, 64)
					if err != nil {
						return fmt.Errorf("%q is not an entry id (see lattice connectors dlq list %s)", a, args[0])
					}
					req.Ids = append(req.Ids, id)
				}
				if !all && len(req.Ids) == 0 {
					return fmt.Errorf("name entry ids or pass --all")
				}
				return cf.withCluster(cmd, func(ctx context.Context, c pb.ClusterClient) error {
					var resp *pb.DeadLettersResponse
					var err error
					if verb == "replay" {
						resp, err = c.ReplayDeadLetters(ctx, req)
					} else {
						resp, err = c.DiscardDeadLetters(ctx, req)
					}
					if err != nil {
						return err
					}
					return print(cmd.OutOrStdout(), resp)
				})
			},
		}
		c.Flags().BoolVar(&all, "all", false, "every entry of the queue")
		cmd.AddCommand(c)
	}
	return cmd
}
