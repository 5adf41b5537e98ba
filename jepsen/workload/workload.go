// Package workload drives client traffic against the cluster during a run
// and records every operation in the history (etcd's traffic/). A workload
// knows how to talk to the system and how to classify what it was told;
// checkers judge the history afterwards.
//
// Workload (a), API: clients putting and deleting random fields of a small
// key space through random nodes' gRPC API. Workload (b), Postgres: clients
// updating, deleting and inserting rows of two databases the cluster keeps
// in sync (postgres.go).
package workload

import (
	"context"
	"sync"
	"time"

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

// pace runs clients closed-loop clients until ctx ends: client p, made by
// newClient(p), takes a step every clients/rate seconds (starting at its
// share of the first interval), never bursting after a slow step. It
// returns once every client stopped.
func pace(ctx context.Context, clients int, rate float64, newClient func(p int) (step func(), done func())) {
	interval := time.Duration(float64(clients) / rate * float64(time.Second))
	var wg sync.WaitGroup
	for p := 0; p < clients; p++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			step, done := newClient(p)
			if done != nil {
				defer done()
			}
			next := time.Now().Add(time.Duration(p) * interval / time.Duration(clients))
			for {
				select {
				case <-ctx.Done():
					return
				case <-time.After(time.Until(next)):
				}
				next = next.Add(interval)
				if now := time.Now(); next.Before(now) {
					next = now // fell behind (a slow request): do not burst
				}
				step()
			}
		}()
	}
	wg.Wait()
}
