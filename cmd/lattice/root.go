package main

import (
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"
)

// clientFlags are shared by every client subcommand.
type clientFlags struct {
	addr    string
	output  string
	timeout time.Duration
}

func defaultAddr() string {
	if a := os.Getenv("LATTICE_ADDR"); a != "" {
		return a
	}
	return "127.0.0.1:7101"
}

func newRootCmd(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:   "lattice",
		Short: "lattice keeps business systems in sync, field by field, without losing an edit",
		Long: `lattice is a CRDT-based replication service. Every record lives in a cluster of
lattice nodes as a field-level CRDT: concurrent edits of different fields both
survive, concurrent edits of one field resolve by a deterministic policy, and
every field keeps a history of who wrote what and which edit lost to which.

Start a node with "lattice agent", then use the client commands against it.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	cf := &clientFlags{}
	root.PersistentFlags().StringVar(&cf.addr, "addr", defaultAddr(), "gRPC address of a lattice node (env LATTICE_ADDR)")
	root.PersistentFlags().StringVarP(&cf.output, "output", "o", "table", "output format: table or json")
	root.PersistentFlags().DurationVar(&cf.timeout, "timeout", 10*time.Second, "timeout of each request")
	root.AddCommand(
		newAgentCmd(), newDevCmd(),
		newMembersCmd(cf), newLeaveCmd(cf), newConfigCmd(cf), newStatusCmd(cf), newConnectorsCmd(cf),
		newPutCmd(cf), newGetCmd(cf), newDeleteCmd(cf), newListCmd(cf),
		newHistoryCmd(cf), newResolveCmd(cf), newWatchCmd(cf),
	)
	return root
}
