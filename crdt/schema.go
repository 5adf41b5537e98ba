package crdt

import (
	"fmt"
	"time"
)

// Type is the declared type of a field.
type Type uint8

// Field types. The zero value is invalid so a forgotten type is caught by Validate.
const (
	TypeInvalid Type = iota
	TypeString
	TypeInt
	TypeFloat
	TypeBool
	TypeTimestamp
	TypeDecimal
	TypeJSON
	TypeBytes
)

var typeNames = [...]string{"invalid", "string", "int", "float", "bool", "timestamp", "decimal", "json", "bytes"}

func (t Type) String() string {
	if int(t) < len(typeNames) {
		return typeNames[t]
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// ParseType maps a configuration name ("string", "int", ...) to a Type.
func ParseType(s string) (Type, bool) {
	for i, n := range typeNames {
		if i > 0 && n == s {
			return Type(i), true
		}
	}
	return TypeInvalid, false
}

// PolicyKind names a conflict policy.
type PolicyKind uint8

// Conflict policies (DESIGN.md "Merge"). LWW is the zero value and the default.
const (
	PolicyLWW PolicyKind = iota
	PolicyPriority
	PolicyMVR
)

func (k PolicyKind) String() string {
	switch k {
	case PolicyLWW:
		return "lww"
	case PolicyPriority:
		return "priority"
	case PolicyMVR:
		return "mvr"
	}
	return fmt.Sprintf("policy(%d)", uint8(k))
}

// Policy resolves the live versions of a register to one value.
// Priority lists origins from most to least trusted; it is used only by PolicyPriority.
type Policy struct {
	Kind     PolicyKind
	Priority []string
}

func (p Policy) String() string {
	if p.Kind == PolicyPriority {
		return fmt.Sprintf("priority%v", p.Priority)
	}
	return p.Kind.String()
}

// DeletedField is the reserved boolean field that marks a record deleted.
const DeletedField = "_deleted"

// FieldSpec declares one field of an entity.
type FieldSpec struct {
	Name   string
	Type   Type
	Policy Policy
	// Group is the name of the field group this field belongs to, or "".
	Group string
}

// Group declares fields that merge as one unit: a resolved record never mixes
// halves of two concurrent edits of a group. The group's policy applies to all
// its members (a member's own Policy is ignored).
type Group struct {
	Name   string
	Fields []string
	Policy Policy
}

// Entity declares a record type.
type Entity struct {
	Name   string
	Fields []FieldSpec
	Groups []Group
	// DeletedPolicy resolves concurrent delete/edit of a record (default lww).
	DeletedPolicy Policy
	// Retention bounds how long dominated (superseded) versions are kept in
	// history, by timestamp. Zero keeps them forever. Live versions are never pruned.
	Retention time.Duration
}

// Schema is the set of entities a cluster syncs, and the connectors that
// link external systems to them.
type Schema struct {
	Entities   []Entity
	Connectors []ConnectorDecl
}

// ConnectorDecl declares a connector. Its Config (the whole YAML mapping,
// kind included) is validated by the connector's own package.
type ConnectorDecl struct {
	Name   string
	Kind   string
	Line   int
	Config map[string]any
}
