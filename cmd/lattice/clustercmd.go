package main

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	pb "github.com/lattice-sync/lattice/api/lattice/v1"
)

// withCluster dials, runs fn with a Cluster client and explains errors.
func (cf *clientFlags) withCluster(cmd *cobra.Command, fn func(ctx context.Context, c pb.ClusterClient) error) error {
	conn, err := cf.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := cf.ctx(cmd.Context())
	defer cancel()
	if err := fn(ctx, pb.NewClusterClient(conn)); err != nil {
		return cf.explain(err)
	}
	return nil
}

func vvText(v *pb.VersionVector) string {
	var parts []string
	for n, s := range v.GetEntries() {
		parts = append(parts, fmt.Sprintf("%s:%d", n, s))
	}
	sort.Strings(parts)
	return "{" + strings.Join(parts, " ") + "}"
}

func newMembersCmd(cf *clientFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "members",
		Short: "list the cluster's members as the node at --addr sees them",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return cf.withCluster(cmd, func(ctx context.Context, c pb.ClusterClient) error {
				resp, err := c.Members(ctx, &pb.MembersRequest{})
				if err != nil {
					return err
				}
				if cf.output == "json" {
					return printJSON(cmd.OutOrStdout(), resp)
				}
				tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "NODE\tSTATE\tRAFT\tGRPC\tGOSSIP\tLAG (EDITS)\tLAG (S)\tCLOCK REFUSALS\tAPPLIED")
				for _, m := range resp.GetMembers() {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%.1f\t%d\t%s\n", m.GetId(), m.GetState(), m.GetRaftRole(),
						m.GetGrpcAddr(), m.GetGossipAddr(), m.GetLagEntries(), m.GetLagSeconds(), m.GetClockRefusals(), vvText(m.GetApplied()))
				}
				return tw.Flush()
			})
		},
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "remove NODE",
		Short: "take a node out of the cluster for good (Raft voter, connector placement)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return cf.withCluster(cmd, func(ctx context.Context, c pb.ClusterClient) error {
				if _, err := c.RemoveMember(ctx, &pb.RemoveMemberRequest{Node: args[0]}); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "removed %s: it is no longer a Raft voter and runs no connector; its edits stay on the other nodes\n", args[0])
				return nil
			})
		},
	})
	return cmd
}

func newLeaveCmd(cf *clientFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "leave",
		Short: "make the node at --addr leave the cluster gracefully and stop",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return cf.withCluster(cmd, func(ctx context.Context, c pb.ClusterClient) error {
				if _, err := c.Leave(ctx, &pb.LeaveRequest{}); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "the node at %s is leaving the cluster and will stop\n", cf.addr)
				return nil
			})
		},
	}
}

func newConfigCmd(cf *clientFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "config", Short: "manage the cluster's entity configuration"}
	cmd.AddCommand(&cobra.Command{
		Use:   "apply FILE",
		Short: "validate FILE and make it the configuration of every node (through Raft)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			data, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			return cf.withCluster(cmd, func(ctx context.Context, c pb.ClusterClient) error {
				resp, err := c.ApplyConfig(ctx, &pb.ApplyConfigRequest{Yaml: string(data), Filename: args[0]})
				if err != nil {
					return err
				}
				if cf.output == "json" {
					return printJSON(cmd.OutOrStdout(), resp)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "applied %s at raft index %d: entities %s\n", args[0], resp.GetIndex(), strings.Join(resp.GetEntities(), ", "))
				return nil
			})
		},
	})
	return cmd
}

func newStatusCmd(cf *clientFlags) *cobra.Command {
	var digest bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "show the node's id, applied vector, HLC and Raft leader",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return cf.withCluster(cmd, func(ctx context.Context, c pb.ClusterClient) error {
				resp, err := c.Status(ctx, &pb.StatusRequest{Digest: digest})
				if err != nil {
					return err
				}
				if cf.output == "json" {
					return printJSON(cmd.OutOrStdout(), resp)
				}
				tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintf(tw, "node\t%s\nversion\t%s\nraft leader\t%s\napplied\t%s\ntruncated\t%s\nhlc\t%s\n", resp.GetNodeId(), resp.GetVersion(),
					resp.GetRaftLeader(), vvText(resp.GetApplied()), vvText(resp.GetTruncated()), hlcTime(resp.GetHlc()))
				if digest {
					fmt.Fprintf(tw, "records\t%d\ndigest\t%s\n", resp.GetRecords(), resp.GetDigest())
				}
				return tw.Flush()
			})
		},
	}
	cmd.Flags().BoolVar(&digest, "digest", false, "also count records and hash every record and its history (full scan)")
	return cmd
}

func newConnectorsCmd(cf *clientFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "connectors", Short: "inspect the connectors declared in the configuration"}
	cmd.AddCommand(newDLQCmd(cf), newConnectorStatusCmd(cf), newPlanCmd(cf), newTriggerCmd())
	for _, verb := range []string{"pause", "resume"} {
		cmd.AddCommand(&cobra.Command{
			Use:   verb + " CONNECTOR",
			Short: map[string]string{"pause": "stop a connector wherever it runs, until resumed", "resume": "let a paused connector run again"}[verb],
			Args:  cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				return cf.withCluster(cmd, func(ctx context.Context, c pb.ClusterClient) error {
					var p *pb.ConnectorPlacement
					var err error
					if verb == "pause" {
						p, err = c.PauseConnector(ctx, &pb.ConnectorRequest{Connector: args[0]})
					} else {
						p, err = c.ResumeConnector(ctx, &pb.ConnectorRequest{Connector: args[0]})
					}
					if err != nil {
						return err
					}
					if cf.output == "json" {
						return printJSON(cmd.OutOrStdout(), p)
					}
					fmt.Fprintf(cmd.OutOrStdout(), "connector %s %sd (on %s)\n", p.GetName(), verb, p.GetNode())
					return nil
				})
			},
		})
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "list",
		Short: "list connectors, the node each runs on and its placement epoch",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return cf.withCluster(cmd, func(ctx context.Context, c pb.ClusterClient) error {
				resp, err := c.Status(ctx, &pb.StatusRequest{})
				if err != nil {
					return err
				}
				if cf.output == "json" {
					return printJSON(cmd.OutOrStdout(), &pb.StatusResponse{Connectors: resp.GetConnectors()})
				}
				if len(resp.GetConnectors()) == 0 {
					fmt.Fprintln(cmd.OutOrStdout(), "no connectors: declare them under connectors: in the configuration (lattice config apply FILE)")
					return nil
				}
				tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "CONNECTOR\tKIND\tNODE\tEPOCH\tSTATE\tDEAD LETTERS\tCHECKPOINT")
				for _, p := range resp.GetConnectors() {
					node := p.GetNode()
					if node == "" {
						node = "(not placed: no Raft leader?)"
					}
					state := "running"
					if p.GetPaused() {
						state = "paused"
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%d\t%s\n", p.GetName(), p.GetKind(), node, p.GetEpoch(), state, p.GetDeadLetters(), p.GetCheckpoint())
				}
				if err := tw.Flush(); err != nil {
					return err
				}
				// Why a connector paused itself (a schema change), below the table.
				for _, p := range resp.GetConnectors() {
					if p.GetPaused() && p.GetPauseReason() != "" {
						fmt.Fprintf(cmd.OutOrStdout(), "\n%s paused itself: %s\n", p.GetName(), p.GetPauseReason())
					}
				}
				return nil
			})
		},
	})
	return cmd
}
