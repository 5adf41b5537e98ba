// Package cluster makes lattice nodes one cluster: memberlist for membership
// and failure detection, a replicated op log with anti-entropy for the data
// plane (every node accepts edits; AP), and hashicorp/raft for the control
// plane (configuration, connector placement with epochs, checkpoints; CP).
// DESIGN.md beside this file states the purpose, the protocol, the failure
// modes and the non-goals.
//
// Entry points: New starts a Node from a Config (DefaultConfig + Validate);
// Node.Register adds the Peer and Cluster gRPC services; Node.WaitAcks is the
// write concern the Records API uses; Node.Close stops everything the node
// started. Package clustertest runs real node processes for tests.
package cluster
