// Package connectors links external systems to a lattice node, in both
// directions: capture turns each changed row into an edit of the record it
// maps to, and projection writes resolved record state back. One
// sub-package per system (connectors/postgres, ...). DESIGN.md beside this
// file states the delivery and causality contract every connector keeps.
package connectors

import (
	"github.com/lattice-sync/lattice/crdt"
)

// Origin returns the origin name edits captured by a connector carry, e.g.
// "postgres:crm". Conflict policies name origins this way.
func Origin(kind, name string) string { return kind + ":" + name }

// SchemaSource returns the schema in use (it changes when the cluster's
// configuration does).
type SchemaSource interface {
	Schema() *crdt.Schema
}
