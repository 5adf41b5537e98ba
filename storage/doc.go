// Package storage is a lattice node's durable state in Pebble. It is the only
// package that imports Pebble.
//
// # Write path
//
// Every accepted edit, local (Write) or from a peer (ApplyRemote), goes
// through one committer goroutine. The committer takes the first waiting
// request, gathers every other request already queued (up to
// Config.MaxBatch), stages all of them in one Pebble batch and commits it
// with a single fsync; only then does any caller get its answer (group
// commit). Within the batch, for each edit: the record state is read (or
// taken from earlier in the same batch), a local edit is prepared against it
// and gets the next dot (node, seq) and an HLC timestamp, the edit is merged,
// superseded versions move to history, and the op-log entry and the origin's
// applied mark are written. Batches are strictly serial, so seq s is durable
// only if every lower seq of the node is: the op log has no gaps, even after
// a crash.
//
// HAZARD: Pebble makes a batch visible to readers before its fsync
// completes. Get, List and Versions may therefore show an edit that is not
// yet acknowledged, and that a crash in that window takes back. Nothing
// acknowledged is ever lost, and the harm such a read could do is contained:
// ScanOpLog (what peers and watchers read) only serves durable entries, and
// on open every local sequence number a crash may have exposed is burned
// (written as an empty edit, see burnSequence), so a dot is never reissued
// for a different edit and a context token that covers a lost edit covers
// nothing else.
//
// The HLC ceiling is persisted (synced) before the clock issues a timestamp
// at or above it, and restored as the clock's floor on open, so timestamps
// never go backwards across restarts. The sequence is the node's own applied
// mark, restored on open.
//
// # Key layout
//
// Keys are order-preserving: strings are escaped (0x00 -> 0x00 0xFF) and end
// with 0x00 0x01; sequence numbers are 8-byte big-endian.
//
//	0x01 "node"                               node id (checked on open)
//	0x01 "hlc"                                HLC ceiling (uvarint)
//	0x02 origin                               applied mark of origin (uvarint): every seq <= it is applied
//	0x10 entity id                            record state: live versions of every register + context (crdt.AppendRecord)
//	0x11 entity id register dot.node dot.seq  a superseded version (crdt.AppendVersion)
//	0x11 entity id _src:c "="pos node seq     a superseded version of a source register, by position (sources.go)
//	0x20 origin seq                           op-log entry (crdt.AppendEdit)
//
// Reading a record's resolved state is one point lookup of its 0x10 key; the
// history of one field is that key plus one prefix scan of 0x11. Anti-entropy
// and watch resume read an origin's op log as one range of 0x20.
//
// # Retention
//
// Prune deletes superseded versions whose HLC timestamp is below a horizon.
// Live versions live in the record key, never in history, so they are never
// pruned. Nodes derive the horizon from their HLC and the entity's
// retention, so every node prunes the same versions, possibly at slightly
// different moments.
package storage
