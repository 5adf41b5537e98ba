package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	pb "github.com/lattice-sync/lattice/api/lattice/v1"
	"github.com/lattice-sync/lattice/cluster"
	"github.com/lattice-sync/lattice/connectors"
)

// connectorRuntimes gives the cluster's status service what the connector
// manager knows of the connectors running on this node (cluster and
// connectors do not import each other). m is nil until the agent built it.
func connectorRuntimes(m *connectors.Manager) []cluster.ConnectorRuntime {
	if m == nil {
		return nil
	}
	var out []cluster.ConnectorRuntime
	for _, s := range m.Statuses() {
		rt := cluster.ConnectorRuntime{Name: s.Name, Kind: s.Kind, Epoch: s.Epoch, Running: s.Running, Since: s.Since,
			Attempts: s.Attempts, Restarts: s.Restarts, LastError: s.LastError, LastErrorAt: s.LastErrorAt, NextRetry: s.NextRetry}
		if r := s.Report; r != nil {
			rt.Report = &cluster.ConnectorReport{Mode: r.Mode, State: r.State, SourcePosition: r.SourcePosition,
				ReceivedPosition: r.ReceivedPosition, ProjectionCursor: r.ProjectionCursor,
				CaptureLag: r.CaptureLag, ProjectionLag: r.ProjectionLag, LastCapture: r.LastCapture, LastProjection: r.LastProjection,
				CapturedEdits: r.CapturedEdits, ProjectedRecords: r.ProjectedRecords, DeadLetters: r.DeadLetters,
				LastError: r.LastError, LastErrorAt: r.LastErrorAt, StartedAt: r.StartedAt}
			for _, l := range r.RateLimits {
				rt.Report.RateLimits = append(rt.Report.RateLimits, cluster.RateLimitReport{Pool: l.Pool, Limit: l.Limit,
					Burst: l.Burst, Tokens: l.Tokens, Rate: l.Rate, Waited: l.Waited, Rows: l.Rows})
			}
		}
		out = append(out, rt)
	}
	return out
}

func newConnectorStatusCmd(cf *clientFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "status [CONNECTOR]",
		Short: "show where each connector runs, its state, lag, source position and last error",
		Long: `Shows every connector (or one, in detail): the node that runs it and its
placement epoch, from the cluster's Raft state, and what that node knows of it:
state (starting, snapshotting, streaming, paused, failed), capture and
projection lag as last measured, the source position confirmed to the source,
counts since it started and the last error. Any node answers: it asks the
owner. If the owner cannot be reached, the placement is shown with the reason.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := &pb.ConnectorStatusRequest{}
			if len(args) == 1 {
				req.Connector = args[0]
			}
			return cf.withCluster(cmd, func(ctx context.Context, c pb.ClusterClient) error {
				resp, err := c.ConnectorStatus(ctx, req)
				if err != nil {
					return err
				}
				w := cmd.OutOrStdout()
				switch {
				case cf.output == "json":
					return printJSON(w, resp)
				case len(resp.GetConnectors()) == 0:
					_, err := fmt.Fprintln(w, "no connectors: declare them under connectors: in the configuration (lattice config apply FILE)")
					return err
				case req.Connector != "":
					return printConnectorDetail(w, resp.GetNodeId(), resp.GetConnectors()[0])
				}
				return printConnectorTable(w, resp.GetConnectors())
			})
		},
	}
}
