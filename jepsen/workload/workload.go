// Package workload drives client traffic against the cluster during a run
// and records every operation in the history (etcd's traffic/). A workload
// knows how to talk to the system and how to classify what it was told;
// checkers judge the history afterwards.
//
// Workload (a), API, is here: clients putting and deleting random fields of
// a small key space through random nodes' gRPC API. Part two adds the
// PostgreSQL workload (edits made in connected databases) behind the same
// interface.
package workload

import (
	"context"

	pb "github.com/lattice-sync/lattice/api/lattice/v1"
	"github.com/lattice-sync/lattice/jepsen/history"
)

// Node is one lattice node as clients see it.
type Node struct {
	ID      string
	Records pb.RecordsClient
}

// Env is what a workload runs against.
type Env struct {
	Nodes    []Node
	Recorder *history.Recorder
}

// Workload drives traffic.
type Workload interface {
	// Name names the workload in reports.
	Name() string
	// Run sends operations until ctx is done, recording each (invoke, then
	// its completion) in env.Recorder, and returns once every client
	// stopped. An operation cut short by ctx is recorded as unknown.
	Run(ctx context.Context, env Env) error
}
