// Package jepsen is lattice's fault-injection harness, in the manner of
// Jepsen and of etcd's robustness tests: each run starts real node
// processes (jepsen/nodes) inside a private network namespace, drives client
// traffic (jepsen/workload: clients of the gRPC API, and clients of two
// PostgreSQL databases, jepsen/pg, that the cluster keeps in sync) while a
// seeded schedule of faults (jepsen/fault) partitions, kills, pauses and
// skews the nodes and restarts, stops, cuts off and kills the sessions of
// the databases, records every operation (jepsen/history), heals
// everything, waits for the nodes to converge and the databases to settle,
// judges the history and the final state (jepsen/check) and writes a report
// (jepsen/report).
//
//	run cluster → traffic + faults → heal → converge → check → report
//
// The same seed replays the same fault schedule and the same client
// choices; only timing differs. Every bug the harness found has a named
// regression scenario (Scenarios) that a test replays.
//
// Entry points: Run (a suite of runs, what cmd/lattice-jepsen and
// `make jepsen` call) and RunOne. Both need root and a private network
// namespace (call clustertest.EnterNetNS first): packet drops are iptables
// rules, which must never touch the host.
package jepsen
