// Package crdt holds lattice's data model and merge rules: the hybrid
// logical clock, versions with dots and causal contexts, registers (one per
// field or field group), conflict policies and history fates, and the binary
// encodings of all of them. It is pure: no I/O, no goroutines, no wall clock
// (the physical clock is injected). DESIGN.md beside this file explains the
// decisions; this comment states the properties the code guarantees.
//
// # Causality
//
// Every edit has a dot (node, seq), unique cluster-wide, and carries per
// register a context: a version vector of what its writer had seen of that
// register. A version is dominated when another version's context covers its
// dot (or the dot of a copy folded into it, below); dominated versions never
// win, whatever their timestamps. Contexts are
// closed when an edit is accepted (Register.CloseContext): a writer that saw
// w also saw everything w saw, so dominance is transitive and a dominated
// version stays dominated when its dominator is itself superseded.
//
// HAZARD: a client context is clipped to what the accepting node has
// applied. A client that reads on one node and writes through another that
// has not yet received what it read produces a conflict (visible, resolved
// by policy), not a silent overwrite.
//
// # One change, one edit
//
// Edits that capture the same source change (Edit.Source: a connector that
// changed owner captured it twice) fold into one version per register
// (Fold): the least dot, the others in Also, the join of the contexts.
// History shows the change once, and an edit that saw any copy supersedes
// it. DESIGN.md, "Copies of one captured change".
//
// # Determinism
//
// A register is a set of versions keyed by dot. Merge is set union (with
// copies of one change folded): commutative, associative and idempotent. The live set, the resolved value
// (Register.Resolve), and every version's fate (Fates) are functions of the
// set alone, so every node that holds the same versions answers the same,
// byte for byte (the encodings are deterministic).
//
// # Monotonicity (HLC)
//
// Clock.Now never returns a value at or below one it returned or accepted
// before. Across restarts this holds when the store persists the ceiling
// handed to ClockConfig.Persist and passes it back as Floor.
//
// HAZARD: if Persist fails the clock panics rather than issue a timestamp a
// restart could reissue.
//
// # Bounded skew
//
// Clock.Update refuses a timestamp more than MaxOffset ahead of the local
// physical clock (OffsetError wrapping ErrClockOffset) and leaves the clock
// unchanged, so one node's bad clock cannot drag the cluster into the future.
//
// HAZARD: after a restart the clock may run up to the ceiling window (200 ms)
// ahead of physical time; keep the window below MaxOffset.
package crdt
