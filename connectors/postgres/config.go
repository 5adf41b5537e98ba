package postgres

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/lattice-sync/lattice/crdt"
)

// Config is one PostgreSQL connector.
type Config struct {
	// Name is the connector's name; its edits carry origin "postgres:<name>".
	Name string
	// DSN is the connection string (never logged). Config files give it
	// through dsn_env (an environment variable) or dsn_file.
	DSN string
	// Publication and Slot default to lattice_<name>.
	Publication string
	Slot        string
	// Tables maps each synced table.
	Tables []Table
	// Capture and Project enable each direction (both by default).
	Capture bool
	Project bool
	// Mode is the capture mode: ModeLogical (logical replication with
	// pgoutput, the default), ModeTrigger or ModePoll (connectors part two),
	// or ModeAuto (logical when the database allows it, else trigger, else
	// poll).
	Mode string
	// FullIdentity makes the connector set REPLICA IDENTITY FULL on the
	// captured tables, so every UPDATE in the stream carries the old row
	// (replica_identity: full, the default; default leaves tables as they are).
	FullIdentity bool
	// Acks is how many nodes (this one included) must hold captured edits
	// durably before the source is told it may release them (default 2;
	// fewer when fewer nodes are alive).
	Acks int
	// MaxOffset bounds how far a commit time may be from the node's clock
	// to be used as the edit's timestamp.
	MaxOffset time.Duration
	// RateLimit bounds reads and writes in rows per second (ratelimit.go).
	RateLimit RateLimit
}

// Table maps one table to an entity.
type Table struct {
	// Name is the table, optionally schema-qualified.
	Name   string
	Entity string
	// Key lists the key columns; a record's id is their values joined by "/".
	Key []string
	// Columns maps column name to field name: the columns captured into
	// fields and written back by projection.
	Columns map[string]string
	// Filter is a CEL condition over the row's columns (row.<column>):
	// changes of rows for which it is false are not captured. Empty: all.
	Filter string
	// ProjectFilter is a CEL condition over the record's fields
	// (record.<field>): records for which it is false are not written into
	// the table. Empty: all.
	ProjectFilter string
	// Computed maps a field to a CEL expression over the row's columns that
	// gives its value on capture. Computed fields are never projected.
	Computed map[string]string
	// UpdatedAt names a timestamp column holding when each row last
	// changed (optional). A snapshot's edits are then dated by it, so when
	// two databases that already hold data are connected, the row changed
	// most recently wins a last-writer-wins conflict.
	UpdatedAt string
	// Poll is how mode poll reads the table (poll.go); nil in other modes.
	Poll *PollTable

	// tf is what ParseConfig built from the above (transform.go): column
	// conversions and compiled expressions. Nil in a Table built by hand,
	// which then has default conversions and no expressions.
	tf *transform
}

// Capture modes.
const (
	ModeLogical = "logical"
	ModeTrigger = "trigger"
	ModePoll    = "poll"
	ModeAuto    = "auto"
)

// modes are the capture modes this build implements.
var modes = []string{ModeLogical, ModeTrigger, ModePoll, ModeAuto}

func validMode(m string) bool {
	for _, x := range modes {
		if x == m {
			return true
		}
	}
	return false
}

// originName is the replication origin lattice's own writes carry.
func (c *Config) originName() string { return "lattice_" + c.Name }

type rawTable struct {
	Entity        string                     `json:"entity"`
	Key           []string                   `json:"key"`
	Columns       map[string]json.RawMessage `json:"columns"` // a field name, or a rawColumn
	Filter        string                     `json:"filter"`
	ProjectFilter string                     `json:"project_filter"`
	Computed      map[string]string          `json:"computed"`
	UpdatedAt     string                     `json:"updated_at"`
	Poll          json.RawMessage            `json:"poll"` // mode poll's settings (poll.go)
}

type rawConfig struct {
	Kind        string              `json:"kind"`
	DSN         string              `json:"dsn"`
	DSNEnv      string              `json:"dsn_env"`
	DSNFile     string              `json:"dsn_file"`
	Publication string              `json:"publication"`
	Slot        string              `json:"slot"`
	Tables      map[string]rawTable `json:"tables"`
	Capture     *bool               `json:"capture"`
	Project     *bool               `json:"project"`
	Acks        *int                `json:"acks"`
	Mode        string              `json:"mode"`
	Identity    string              `json:"replica_identity"`
	RateLimit   json.RawMessage     `json:"rate_limit"` // ratelimit.go
}

// ParseConfig reads a connector declaration (the YAML mapping under
// connectors.<name>) and checks it against the schema.
func ParseConfig(name string, decl map[string]any, schema *crdt.Schema) (*Config, error) {
	b, err := json.Marshal(decl)
	if err != nil {
		return nil, fmt.Errorf("connector %q: %w", name, err)
	}
	var raw rawConfig
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&raw); err != nil {
		return nil, fmt.Errorf("connector %q: %v", name, err)
	}
	c := &Config{Name: name, Publication: raw.Publication, Slot: raw.Slot, Capture: true, Project: true,
		MaxOffset: crdt.DefaultMaxOffset}
	c.Acks = 2
	c.Mode = raw.Mode
	if c.Mode == "" {
		c.Mode = ModeLogical
	}
	c.FullIdentity = raw.Identity != "default"
	var errs []error
	if raw.Identity != "" && raw.Identity != "full" && raw.Identity != "default" {
		errs = append(errs, fmt.Errorf("connector %q: replica_identity %q: want full (the default: the stream carries the old row, so capture knows exactly which columns an UPDATE changed) or default (leave the tables as they are)", name, raw.Identity))
	}
	if raw.Acks != nil {
		c.Acks = *raw.Acks
	}
	if raw.Capture != nil {
		c.Capture = *raw.Capture
	}
	if raw.Project != nil {
		c.Project = *raw.Project
	}
	if c.Publication == "" {
		c.Publication = "lattice_" + name
	}
	if c.Slot == "" {
		c.Slot = "lattice_" + name
	}
	switch {
	case raw.DSNEnv != "":
		c.DSN = os.Getenv(raw.DSNEnv)
		if c.DSN == "" {
			errs = append(errs, fmt.Errorf("connector %q: environment variable %s (dsn_env) is empty: export it with the database's connection string", name, raw.DSNEnv))
		}
	case raw.DSNFile != "":
		data, err := os.ReadFile(raw.DSNFile)
		if err != nil {
			errs = append(errs, fmt.Errorf("connector %q: dsn_file: %v", name, err))
		}
		c.DSN = strings.TrimSpace(string(data))
	case raw.DSN != "":
		c.DSN = raw.DSN
	default:
		errs = append(errs, fmt.Errorf("connector %q: no connection string: set dsn_env (an environment variable) or dsn_file", name))
	}
	if !validMode(c.Mode) {
		errs = append(errs, fmt.Errorf("connector %q: mode %q: want %s (logical: logical replication, needs wal_level = logical and the REPLICATION attribute; trigger: a change table filled by triggers; poll: queries on each table's updated_at; auto: the first of these the database allows)", name, c.Mode, strings.Join(modes, ", ")))
	}
	if c.Mode == ModeTrigger || c.Mode == ModeAuto {
		errs = append(errs, checkTriggerName(name)...) // trigger.go
	}
	if c.Acks < 1 || c.Acks > 9 {
		errs = append(errs, fmt.Errorf("connector %q: acks %d: want 1 (this node only) to 9 nodes", name, c.Acks))
	}
	if err := c.parseRateLimit(raw.RateLimit); err != nil { // ratelimit.go
		errs = append(errs, err)
	}
	if len(raw.Tables) == 0 {
		errs = append(errs, fmt.Errorf("connector %q: no tables", name))
	}
	names := make([]string, 0, len(raw.Tables))
	for t := range raw.Tables {
		names = append(names, t)
	}
	sort.Strings(names)
	for _, t := range names {
		rt := raw.Tables[t]
		ent, ok := schema.Entity(rt.Entity)
		if !ok {
			errs = append(errs, fmt.Errorf("connector %q table %q: unknown entity %q", name, t, rt.Entity))
			continue
		}
		if len(rt.Key) == 0 {
			errs = append(errs, fmt.Errorf("connector %q table %q: key columns are required", name, t))
		}
		table, terrs := parseTable(name, t, rt, ent)
		errs = append(errs, terrs...)
		switch {
		case len(rt.Columns) == 0:
			errs = append(errs, fmt.Errorf("connector %q table %q: no columns mapped", name, t))
		case len(terrs) == 0 && len(table.Columns) == 0:
			errs = append(errs, fmt.Errorf("connector %q table %q: no column is mapped to a field: give at least one column a field", name, t))
		}
		errs = append(errs, parsePoll(name, t, c.Mode, rt.Poll, &table)...) // poll.go
		c.Tables = append(c.Tables, table)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return c, nil
}

// tableFor returns the table mapped to entity, if any.
func (c *Config) tableFor(entity string) *Table {
	for i := range c.Tables {
		if c.Tables[i].Entity == entity {
			return &c.Tables[i]
		}
	}
	return nil
}

// relName is the table name as pgoutput reports it (namespace.relation).
func (t *Table) relName() string {
	if strings.Contains(t.Name, ".") {
		return t.Name
	}
	return "public." + t.Name
}

// rawColumn is the long form of a column entry.
type rawColumn struct {
	Field       string            `json:"field"`
	Type        string            `json:"type"`
	Format      string            `json:"format"`
	Timezone    string            `json:"timezone"`
	TrueValues  []json.RawMessage `json:"true_values"`
	FalseValues []json.RawMessage `json:"false_values"`
}

const columnKeys = "field, type, format, timezone, true_values, false_values"

// parseColumnEntry reads a column entry: a field name, or a rawColumn.
func parseColumnEntry(raw json.RawMessage) (rawColumn, error) {
	var rc rawColumn
	s := strings.TrimSpace(string(raw))
	switch {
	case s == "" || s == "null":
		return rc, fmt.Errorf("empty entry: give a field name, or a mapping {field: ..., type: ..., format: ...}")
	case s[0] == '"':
		if err := json.Unmarshal(raw, &rc.Field); err != nil {
			return rc, err
		}
		if rc.Field == "" {
			return rc, fmt.Errorf("empty field name")
		}
		return rc, nil
	case s[0] != '{':
		return rc, fmt.Errorf("got %s: give a field name, or a mapping {field: ..., type: ..., format: ...}", s)
	}
	dec := json.NewDecoder(strings.NewReader(s))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rc); err != nil {
		if k, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
			return rc, fmt.Errorf("unknown key %s (want %s)", k, columnKeys)
		}
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return rc, fmt.Errorf("%s: got a %s, want a %s", te.Field, te.Value, te.Type)
		}
		return rc, err
	}
	return rc, nil
}

// scalarTexts reads true_values or false_values: strings, numbers or booleans.
func scalarTexts(key string, raws []json.RawMessage) ([]string, error) {
	out := make([]string, 0, len(raws))
	for _, r := range raws {
		var v any
		if err := json.Unmarshal(r, &v); err != nil {
			return nil, err
		}
		switch x := v.(type) {
		case string:
			out = append(out, x)
		case float64, bool:
			out = append(out, strings.TrimSpace(string(r)))
		default:
			return nil, fmt.Errorf("%s: %s is not a text, number or boolean", key, string(r))
		}
	}
	return out, nil
}

// conversion builds and checks a column's conversion against the entity:
// a mapped column converts to its field's type, a column without a field
// (read only by expressions) to its declared type, text by default.
func (rc *rawColumn) conversion(ent *crdt.Entity) (*conversion, error) {
	cv := &conversion{typ: crdt.TypeString}
	var declared crdt.Type
	if rc.Type != "" {
		t, ok := crdt.ParseType(rc.Type)
		if !ok {
			return nil, fmt.Errorf("unknown type %q (want string, int, float, bool, timestamp, decimal, json or bytes)", rc.Type)
		}
		declared, cv.typ = t, t
	}
	if rc.Field != "" {
		f, ok := ent.Field(rc.Field)
		if !ok {
			return nil, fmt.Errorf("entity %q has no field %q", ent.Name, rc.Field)
		}
		if declared != crdt.TypeInvalid && declared != f.Type {
			return nil, fmt.Errorf("type %s does not match field %q of entity %q, which is %s: drop type (a mapped column converts to its field's type) or change the field's type in the entity", declared, rc.Field, ent.Name, f.Type)
		}
		cv.typ = f.Type
	}
	what := "this column's values are " + cv.typ.String()
	if rc.Field != "" {
		what = fmt.Sprintf("field %q is %s", rc.Field, cv.typ)
	}
	if rc.Format != "" {
		if cv.typ != crdt.TypeTimestamp {
			return nil, fmt.Errorf("format applies to timestamps, but %s: remove format", what)
		}
		unit, layout, err := timestampFormat(rc.Format)
		if err != nil {
			return nil, err
		}
		cv.unit, cv.layout = unit, layout
	}
	if rc.Timezone != "" {
		switch {
		case cv.typ != crdt.TypeTimestamp:
			return nil, fmt.Errorf("timezone applies to timestamps, but %s: remove timezone", what)
		case cv.unit != 0:
			return nil, fmt.Errorf("timezone has no effect on format %q (a number since the epoch is in UTC): remove timezone", rc.Format)
		}
		loc, err := time.LoadLocation(rc.Timezone)
		if err != nil {
			return nil, fmt.Errorf("timezone %q: %v (use an IANA name such as Europe/Paris, or UTC)", rc.Timezone, err)
		}
		cv.loc = loc
	}
	if len(rc.TrueValues) > 0 || len(rc.FalseValues) > 0 {
		if cv.typ != crdt.TypeBool {
			return nil, fmt.Errorf("true_values and false_values apply to booleans, but %s: remove them", what)
		}
		if len(rc.TrueValues) == 0 || len(rc.FalseValues) == 0 {
			return nil, fmt.Errorf("give both true_values and false_values (for example true_values: [Y], false_values: [N]): any other text is refused")
		}
		var err error
		if cv.trues, err = scalarTexts("true_values", rc.TrueValues); err != nil {
			return nil, err
		}
		if cv.falses, err = scalarTexts("false_values", rc.FalseValues); err != nil {
			return nil, err
		}
		seen := map[string]bool{}
		for _, v := range append(append([]string{}, cv.trues...), cv.falses...) {
			if v != strings.TrimSpace(v) {
				return nil, fmt.Errorf("value %q has surrounding spaces: values are compared after trimming spaces, so write it without them", v)
			}
			if seen[v] {
				return nil, fmt.Errorf("value %q is listed twice in true_values and false_values", v)
			}
			seen[v] = true
		}
	}
	return cv, nil
}

// parseTable reads one table's mapping: columns with their conversions,
// then the expressions (transform.go).
func parseTable(connector, name string, rt rawTable, ent *crdt.Entity) (Table, []error) {
	t := Table{Name: name, Entity: rt.Entity, Key: rt.Key, Columns: map[string]string{},
		Filter: rt.Filter, ProjectFilter: rt.ProjectFilter, Computed: rt.Computed, UpdatedAt: rt.UpdatedAt}
	tf := &transform{conv: map[string]*conversion{}}
	t.tf = tf
	var errs []error
	cols := make([]string, 0, len(rt.Columns))
	for col := range rt.Columns {
		cols = append(cols, col)
	}
	sort.Strings(cols)
	byField := map[string]string{}
	for _, col := range cols {
		at := fmt.Sprintf("connector %q table %q column %q", connector, name, col)
		rc, err := parseColumnEntry(rt.Columns[col])
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %v", at, err))
			continue
		}
		cv, err := rc.conversion(ent)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %v", at, err))
			continue
		}
		tf.conv[col] = cv
		if rc.Field == "" {
			if !contains(t.Key, col) {
				tf.reads = append(tf.reads, col)
			}
			continue
		}
		if other, dup := byField[rc.Field]; dup {
			errs = append(errs, fmt.Errorf("%s: field %q is already mapped from column %q: map each field from one column", at, rc.Field, other))
			continue
		}
		byField[rc.Field] = col
		t.Columns[col] = rc.Field
		tf.mapped = append(tf.mapped, col)
	}
	if len(errs) == 0 {
		errs = append(errs, compileTable(connector, &t, ent)...)
	}
	return t, errs
}

// columns lists every column capture reads: the key columns, then the
// mapped columns and those read only by expressions, in name order.
func (t *Table) columns() []string {
	out := append([]string{}, t.Key...)
	rest := mapKeys(t.Columns)
	if t.tf != nil {
		rest = append(rest, t.tf.reads...)
	}
	if t.UpdatedAt != "" {
		rest = append(rest, t.UpdatedAt)
	}
	sort.Strings(rest)
	for _, col := range rest {
		if !contains(out, col) {
			out = append(out, col)
		}
	}
	return out
}
