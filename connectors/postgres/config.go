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
	// Acks is how many nodes (this one included) must hold captured edits
	// durably before the source is told it may release them (default 2;
	// fewer when fewer nodes are alive).
	Acks int
	// MaxOffset bounds how far a commit time may be from the node's clock
	// to be used as the edit's timestamp.
	MaxOffset time.Duration
}

// Table maps one table to an entity.
type Table struct {
	// Name is the table, optionally schema-qualified.
	Name   string
	Entity string
	// Key lists the key columns; a record's id is their values joined by "/".
	Key []string
	// Columns maps column name to field name.
	Columns map[string]string
}

// originName is the replication origin lattice's own writes carry.
func (c *Config) originName() string { return "lattice_" + c.Name }

type rawTable struct {
	Entity  string            `json:"entity"`
	Key     []string          `json:"key"`
	Columns map[string]string `json:"columns"`
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
	var errs []error
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
	if c.Acks < 1 || c.Acks > 9 {
		errs = append(errs, fmt.Errorf("connector %q: acks %d: want 1 (this node only) to 9 nodes", name, c.Acks))
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
		for col, field := range rt.Columns {
			if _, ok := ent.Field(field); !ok {
				errs = append(errs, fmt.Errorf("connector %q table %q column %q: entity %q has no field %q", name, t, col, rt.Entity, field))
			}
		}
		if len(rt.Columns) == 0 {
			errs = append(errs, fmt.Errorf("connector %q table %q: no columns mapped", name, t))
		}
		c.Tables = append(c.Tables, Table{Name: t, Entity: rt.Entity, Key: rt.Key, Columns: rt.Columns})
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
