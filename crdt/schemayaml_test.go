package crdt

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"pgregory.net/rapid"
)

const validSchemaYAML = `# test schema
entities:
  contact:
    retention: 720h        # optional Go duration
    deleted_policy: mvr
    fields:
      name: string
      email: {type: string, policy: lww}
      phone: {type: string, policy: {priority: ["postgres:crm", "api"]}}
      company: {type: string, policy: mvr}
      street: string
      city: string
      age: int
      score: {type: float}
      vip: bool
      seen: timestamp
      balance: decimal
      extra: json
      avatar: bytes
    groups:
      address: {fields: [street, city], policy: lww}
  order:
    fields:
      total: decimal
      status: {type: string, policy: {priority: [erp]}}
`

// schemaErrs flattens a (possibly joined) error into its *SchemaError parts,
// failing the test if any part is not a *SchemaError.
func schemaErrs(t testing.TB, err error) []*SchemaError {
	t.Helper()
	if err == nil {
		return nil
	}
	var parts []error
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		parts = j.Unwrap()
	} else {
		parts = []error{err}
	}
	var out []*SchemaError
	for _, p := range parts {
		var se *SchemaError
		if !errors.As(p, &se) {
			t.Fatalf("error %q (%T) is not a *SchemaError", p, p)
		}
		out = append(out, se)
	}
	var se *SchemaError
	if !errors.As(err, &se) {
		t.Fatalf("errors.As(%q, *SchemaError) failed", err)
	}
	return out
}

func TestParseSchemaValid(t *testing.T) {
	s, err := ParseSchema("test.yaml", []byte(validSchemaYAML))
	if err != nil {
		t.Fatalf("ParseSchema: %v", err)
	}
	want := &Schema{Entities: []Entity{
		{
			Name: "contact",
			Fields: []FieldSpec{
				{Name: "name", Type: TypeString},
				{Name: "email", Type: TypeString, Policy: Policy{Kind: PolicyLWW}},
				{Name: "phone", Type: TypeString, Policy: Policy{Kind: PolicyPriority, Priority: []string{"postgres:crm", "api"}}},
				{Name: "company", Type: TypeString, Policy: Policy{Kind: PolicyMVR}},
				{Name: "street", Type: TypeString, Group: "address"},
				{Name: "city", Type: TypeString, Group: "address"},
				{Name: "age", Type: TypeInt},
				{Name: "score", Type: TypeFloat},
				{Name: "vip", Type: TypeBool},
				{Name: "seen", Type: TypeTimestamp},
				{Name: "balance", Type: TypeDecimal},
				{Name: "extra", Type: TypeJSON},
				{Name: "avatar", Type: TypeBytes},
			},
			Groups:        []Group{{Name: "address", Fields: []string{"street", "city"}, Policy: Policy{Kind: PolicyLWW}}},
			DeletedPolicy: Policy{Kind: PolicyMVR},
			Retention:     720 * time.Hour,
		},
		{
			Name: "order",
			Fields: []FieldSpec{
				{Name: "total", Type: TypeDecimal},
				{Name: "status", Type: TypeString, Policy: Policy{Kind: PolicyPriority, Priority: []string{"erp"}}},
			},
		},
	}}
	if !reflect.DeepEqual(s, want) {
		t.Fatalf("parsed schema mismatch\n got: %+v\nwant: %+v", s, want)
	}
	if err := s.Validate(); err != nil {
		t.Fatalf("Validate of parsed schema: %v", err)
	}

	e, ok := s.Entity("contact")
	if !ok || e.Name != "contact" {
		t.Fatalf("Entity(contact) = %v, %v", e, ok)
	}
	f, ok := e.Field("phone")
	if !ok || f.Policy.Kind != PolicyPriority || f.Policy.String() != "priority[postgres:crm api]" {
		t.Fatalf("Field(phone) = %+v, %v", f, ok)
	}
	// The helpers return pointers into the schema.
	f.Type = TypeJSON
	if s.Entities[0].Fields[2].Type != TypeJSON {
		t.Fatalf("Field did not return a pointer into the entity")
	}
	if _, ok := e.Field("nope"); ok {
		t.Fatalf("Field(nope) found")
	}
	if _, ok := s.Entity("nope"); ok {
		t.Fatalf("Entity(nope) found")
	}
	var nilSchema *Schema
	if _, ok := nilSchema.Entity("contact"); ok {
		t.Fatalf("nil schema Entity found")
	}
}

func TestParseSchemaValidVariants(t *testing.T) {
	cases := []struct {
		name, doc string
		check     func(t *testing.T, s *Schema)
	}{
		{"retention zero", "entities:\n  a:\n    retention: 0\n    fields: {x: int}\n", func(t *testing.T, s *Schema) {
			if s.Entities[0].Retention != 0 {
				t.Errorf("retention = %v", s.Entities[0].Retention)
			}
		}},
		{"retention null", "entities:\n  a:\n    retention:\n    fields: {x: int}\n", nil},
		{"entity without fields", "entities:\n  a: {}\n", nil},
		{"groups before fields", "entities:\n  a:\n    groups:\n      g: {fields: [x, y], policy: mvr}\n    fields: {x: int, y: int}\n", func(t *testing.T, s *Schema) {
			e := s.Entities[0]
			if e.Fields[0].Group != "g" || e.Fields[1].Group != "g" || e.Groups[0].Policy.Kind != PolicyMVR {
				t.Errorf("group not linked: %+v", e)
			}
		}},
		{"group default policy", "entities:\n  a:\n    fields: {x: int, y: int}\n    groups:\n      g: {fields: [x, y]}\n", func(t *testing.T, s *Schema) {
			if s.Entities[0].Groups[0].Policy.Kind != PolicyLWW {
				t.Errorf("policy = %v", s.Entities[0].Groups[0].Policy)
			}
		}},
		{"alias for shared policy", "entities:\n  a:\n    fields:\n      x: {type: string, policy: &crm {priority: [crm, api]}}\n      y: {type: string, policy: *crm}\n", func(t *testing.T, s *Schema) {
			if got := s.Entities[0].Fields[1].Policy.String(); got != "priority[crm api]" {
				t.Errorf("aliased policy = %s", got)
			}
		}},
		{"max length name", "entities:\n  a" + strings.Repeat("b", 62) + ":\n    fields: {x: int}\n", nil},
		{"explicit document markers", "---\nentities:\n  a:\n    fields: {x: int}\n...\n", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, err := ParseSchema("v.yaml", []byte(tc.doc))
			if err != nil {
				t.Fatalf("ParseSchema: %v", err)
			}
			if err := s.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
			if tc.check != nil {
				tc.check(t, s)
			}
		})
	}
}

func TestParseSchemaErrors(t *testing.T) {
	cases := []struct {
		name string
		doc  string
		line int
		want []string // substrings of the single (first) error
	}{
		{"unknown type", `entities:
  contact:
    fields:
      name: string
      email: {type: strng}
`, 5, []string{`entity "contact" field "email": unknown type "strng" (want one of string, int, float, bool, timestamp, decimal, json, bytes)`}},
		{"unknown type short form", "entities:\n  contact:\n    fields:\n      email: strng\n", 4, []string{`field "email"`, `unknown type "strng"`}},
		{"unknown entity key", `entities:
  contact:
    retention: 1h
    feilds:
      name: string
`, 4, []string{`entity "contact": unknown key "feilds"`}},
		{"unknown top-level key", "entities:\n  a: {fields: {x: int}}\nentitis: {}\n", 3, []string{`unknown key "entitis"`}},
		{"unknown field key", "entities:\n  a:\n    fields:\n      x: {type: int, polcy: lww}\n", 4, []string{`entity "a" field "x": unknown key "polcy"`}},
		{"unknown group key", "entities:\n  a:\n    fields: {x: int, y: int}\n    groups:\n      g:\n        fields: [x, y]\n        polic: lww\n", 7, []string{`entity "a" group "g": unknown key "polic"`}},
		{"missing type", "entities:\n  a:\n    fields:\n      x: {policy: lww}\n", 4, []string{`field "x"`, "missing type"}},
		{"null type", "entities:\n  a:\n    fields:\n      x:\n", 4, []string{`field "x"`, "missing type"}},
		{"field as list", "entities:\n  a:\n    fields:\n      x: [int]\n", 4, []string{`field "x"`, "expected a type name"}},
		{"uppercase entity", "entities:\n  Contact:\n    fields: {x: int}\n", 2, []string{`entity "Contact"`, "invalid entity name"}},
		{"entity name too long", "entities:\n  a" + strings.Repeat("b", 63) + ":\n    fields: {x: int}\n", 2, []string{`invalid entity name "a` + strings.Repeat("b", 63)}},
		{"field name with dash", "entities:\n  a:\n    fields:\n      first-name: string\n", 4, []string{`field "first-name"`, "invalid field name"}},
		{"field name digit first", "entities:\n  a:\n    fields:\n      1x: string\n", 4, []string{`field "1x"`, "invalid field name"}},
		{"reserved _deleted", "entities:\n  a:\n    fields:\n      x: int\n      _deleted: bool\n", 5, []string{`field "_deleted"`, "reserved"}},
		{"reserved underscore", "entities:\n  a:\n    fields:\n      _x: bool\n", 4, []string{`field "_x"`, "reserved"}},
		{"duplicate field", "entities:\n  a:\n    fields:\n      x: int\n      x: string\n", 5, []string{`field "x"`, "duplicate field name (first defined at line 4)"}},
		{"duplicate entity", "entities:\n  a:\n    fields: {x: int}\n  a:\n    fields: {y: int}\n", 4, []string{`entity "a"`, "duplicate entity name (first defined at line 2)"}},
		{"duplicate fixed key", "entities:\n  a:\n    retention: 1h\n    retention: 2h\n    fields: {x: int}\n", 4, []string{`entity "a"`, `duplicate key "retention" (first defined at line 3)`}},
		{"empty document", "", 1, []string{"no entities"}},
		{"comment only", "# nothing\n", 1, []string{"no entities"}},
		{"null entities", "\n\nentities:\n", 3, []string{"no entities"}},
		{"empty entities", "entities: {}\n", 1, []string{"no entities"}},
		{"entities as list", "entities:\n  - contact\n", 2, []string{"entities", "expected a mapping"}},
		{"top level list", "- a\n- b\n", 1, []string{`expected a mapping with key "entities"`}},
		{"entity null", "entities:\n  a:\n", 2, []string{`entity "a"`, "expected a mapping"}},
		{"bad policy", "entities:\n  a:\n    fields:\n      x: {type: int, policy: fifo}\n", 4, []string{`field "x"`, `unknown policy "fifo"`}},
		{"priority scalar", "entities:\n  a:\n    fields:\n      x: {type: int, policy: priority}\n", 4, []string{`field "x"`, "priority policy needs a list"}},
		{"priority empty", "entities:\n  a:\n    fields:\n      x: {type: int, policy: {priority: []}}\n", 4, []string{`field "x"`, "non-empty list of origins"}},
		{"priority null", "entities:\n  a:\n    fields:\n      x:\n        type: int\n        policy: {priority: }\n", 6, []string{`field "x"`, "non-empty list of origins"}},
		{"priority duplicate", "entities:\n  a:\n    fields:\n      x:\n        type: int\n        policy: {priority: [crm, api, crm]}\n", 6, []string{`field "x"`, `origin "crm" twice`}},
		{"priority empty origin", "entities:\n  a:\n    fields:\n      x: {type: int, policy: {priority: [crm, \"\"]}}\n", 4, []string{`field "x"`, "must not be empty"}},
		{"priority not list", "entities:\n  a:\n    fields:\n      x: {type: int, policy: {priority: crm}}\n", 4, []string{`field "x"`, "expected a list of origins"}},
		{"priority nested origin", "entities:\n  a:\n    fields:\n      x: {type: int, policy: {priority: [[crm]]}}\n", 4, []string{`field "x"`, "origins must be strings"}},
		{"policy mapping wrong key", "entities:\n  a:\n    fields:\n      x: {type: int, policy: {prio: [crm]}}\n", 4, []string{`field "x"`, `single key "priority"`}},
		{"policy null", "entities:\n  a:\n    fields:\n      x: {type: int, policy: }\n", 4, []string{`field "x"`, "missing policy"}},
		{"bad deleted_policy", "entities:\n  a:\n    deleted_policy: newest\n    fields: {x: int}\n", 3, []string{`entity "a"`, `deleted_policy: unknown policy "newest"`}},
		{"negative retention", "entities:\n  a:\n    fields: {x: int}\n    retention: -1h\n", 4, []string{`entity "a"`, "retention must be >= 0"}},
		{"retention days", "entities:\n  a:\n    fields: {x: int}\n    retention: 30d\n", 4, []string{`entity "a"`, `invalid duration "30d"`}},
		{"retention list", "entities:\n  a:\n    fields: {x: int}\n    retention: [1h]\n", 4, []string{`entity "a"`, "retention"}},
		{"group clashes with field", "entities:\n  a:\n    fields: {x: int, y: int}\n    groups:\n      x: {fields: [x, y]}\n", 5, []string{`group "x"`, `clashes with field "x"`}},
		{"group one field", "entities:\n  a:\n    fields: {x: int, y: int}\n    groups:\n      g: {fields: [x]}\n", 5, []string{`group "g"`, "at least 2 fields, got 1"}},
		{"group no fields", "entities:\n  a:\n    fields: {x: int, y: int}\n    groups:\n      g: {policy: mvr}\n", 5, []string{`group "g"`, "at least 2 fields, got 0"}},
		{"group unknown field", "entities:\n  a:\n    fields: {x: int, y: int}\n    groups:\n      g:\n        fields:\n          - x\n          - z\n", 8, []string{`group "g"`, `unknown field "z"`}},
		{"group field listed twice", "entities:\n  a:\n    fields: {x: int, y: int}\n    groups:\n      g:\n        fields: [x, y, x]\n", 6, []string{`group "g"`, `field "x" is listed twice`}},
		{"field in two groups", "entities:\n  a:\n    fields: {x: int, y: int, z: int}\n    groups:\n      g: {fields: [x, y]}\n      h:\n        fields: [z, x]\n", 7, []string{`group "h"`, `field "x" is already in group "g"`}},
		{"group bad name", "entities:\n  a:\n    fields: {x: int, y: int}\n    groups:\n      Addr: {fields: [x, y]}\n", 5, []string{`group "Addr"`, "invalid group name"}},
		{"group reserved name", "entities:\n  a:\n    fields: {x: int, y: int}\n    groups:\n      _g: {fields: [x, y]}\n", 5, []string{`group "_g"`, "reserved"}},
		{"group bad policy", "entities:\n  a:\n    fields: {x: int, y: int}\n    groups:\n      g:\n        fields: [x, y]\n        policy: {priority: []}\n", 7, []string{`group "g"`, "non-empty list of origins"}},
		{"group member with own policy", "entities:\n  a:\n    fields:\n      x: {type: int, policy: mvr}\n      y: int\n    groups:\n      g: {fields: [x, y]}\n", 4, []string{`field "x"`, `in group "g"`, "set the policy on the group"}},
		{"groups as list", "entities:\n  a:\n    fields: {x: int, y: int}\n    groups: [x, y]\n", 4, []string{`entity "a"`, "groups: expected a mapping"}},
		{"yaml syntax", "entities:\n  a:\n    fields: {x: int\n  b: 3\n", 3, []string{"invalid YAML"}},
		// yaml.v3 reports parser errors at the start of the enclosing block.
		{"yaml bad indentation", "entities:\n  a:\n    fields: {x: int}\n   b: 3\n", 2, []string{"invalid YAML"}},
		{"yaml unclosed list", "entities:\n  a:\n    fields: {x: int}\n    groups: [\n", 5, []string{"invalid YAML", "did not find expected node content"}},
		{"yaml unclosed flow", "[entities\n", 2, []string{"invalid YAML"}},
		{"yaml bad utf8", "entities:\n  a:\n    fields: {x: \xff}\n", 3, []string{"invalid YAML"}},
		{"yaml control char", "entities:\n  a:\n\n    fields: {x: \x01}\n", 4, []string{"invalid YAML", "control characters"}},
		{"yaml tab", "entities:\n\ta: {}\n", 2, []string{"invalid YAML"}},
		{"multiple documents", "entities:\n  a: {fields: {x: int}}\n---\nentities: {}\n", 3, []string{"more than one YAML document"}},
		{"merge key", "base: &b {type: int}\nentities:\n  a:\n    fields:\n      x:\n        <<: *b\n", 1, []string{`unknown key "base"`}},
		{"non-scalar key", "entities:\n  ? [a]\n  : {fields: {x: int}}\n", 2, []string{"mapping keys must be plain names"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, err := ParseSchema("bad.yaml", []byte(tc.doc))
			if err == nil {
				t.Fatalf("ParseSchema accepted invalid input: %+v", s)
			}
			if s != nil {
				t.Errorf("ParseSchema returned a schema along with an error")
			}
			errs := schemaErrs(t, err)
			first := errs[0]
			if first.File != "bad.yaml" || first.Line != tc.line {
				t.Errorf("error position = %s:%d, want bad.yaml:%d (error: %v)", first.File, first.Line, tc.line, err)
			}
			msg := first.Error()
			if !strings.HasPrefix(msg, fmt.Sprintf("bad.yaml:%d: ", tc.line)) {
				t.Errorf("error %q does not start with the file and line", msg)
			}
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not contain %q", msg, w)
				}
			}
		})
	}
}

func TestParseSchemaMultipleErrors(t *testing.T) {
	doc := `entities:
  contact:
    feilds: {}
    fields:
      email: strng
      Phone: string
      x: {type: int, policy: {priority: []}}
    retention: soon
  Order:
    fields: {y: int}
`
	_, err := ParseSchema("multi.yaml", []byte(doc))
	errs := schemaErrs(t, err)
	want := []struct {
		line int
		sub  string
	}{
		{3, `entity "contact": unknown key "feilds"`},
		{5, `entity "contact" field "email": unknown type "strng"`},
		{6, `entity "contact" field "Phone": invalid field name`},
		{7, `entity "contact" field "x": priority policy needs a non-empty list`},
		{8, `entity "contact": retention: invalid duration "soon"`},
		{9, `entity "Order": invalid entity name`},
	}
	if len(errs) != len(want) {
		t.Fatalf("got %d errors, want %d:\n%v", len(errs), len(want), err)
	}
	for i, w := range want {
		if errs[i].Line != w.line || !strings.Contains(errs[i].Error(), w.sub) {
			t.Errorf("error %d = %q, want line %d containing %q", i, errs[i], w.line, w.sub)
		}
	}
	// The joined message lists every problem, one per line.
	if n := strings.Count(err.Error(), "\n") + 1; n != len(want) {
		t.Errorf("joined error has %d lines, want %d:\n%v", n, len(want), err)
	}
}

func TestParseSchemaErrorLimit(t *testing.T) {
	var b strings.Builder
	b.WriteString("entities:\n  a:\n    fields:\n")
	for i := range 25 {
		fmt.Fprintf(&b, "      f%d: nosuchtype\n", i)
	}
	_, err := ParseSchema("many.yaml", []byte(b.String()))
	errs := schemaErrs(t, err)
	if len(errs) != maxSchemaErrors+1 {
		t.Fatalf("got %d errors, want %d (capped plus a note):\n%v", len(errs), maxSchemaErrors+1, err)
	}
	for i := range maxSchemaErrors {
		if errs[i].Line != 4+i {
			t.Errorf("error %d at line %d, want %d", i, errs[i].Line, 4+i)
		}
	}
	if last := errs[maxSchemaErrors].Error(); !strings.Contains(last, "15 more not shown") {
		t.Errorf("last error = %q", last)
	}
}

func TestSchemaErrorFormat(t *testing.T) {
	cases := []struct {
		e    SchemaError
		want string
	}{
		{SchemaError{File: "q.yaml", Line: 7, Path: `entity "c"`, Msg: "bad"}, `q.yaml:7: entity "c": bad`},
		{SchemaError{File: "q.yaml", Path: `entity "c"`, Msg: "bad"}, `q.yaml: entity "c": bad`},
		{SchemaError{Path: `entity "c"`, Msg: "bad"}, `entity "c": bad`},
		{SchemaError{File: "q.yaml", Line: 3, Msg: "bad"}, `q.yaml:3: bad`},
		{SchemaError{Msg: "bad"}, `bad`},
	}
	for _, tc := range cases {
		if got := tc.e.Error(); got != tc.want {
			t.Errorf("Error() = %q, want %q", got, tc.want)
		}
	}
}

func validCodeSchema() *Schema {
	return &Schema{Entities: []Entity{{
		Name: "contact",
		Fields: []FieldSpec{
			{Name: "name", Type: TypeString},
			{Name: "phone", Type: TypeString, Policy: Policy{Kind: PolicyPriority, Priority: []string{"crm", "api"}}},
			{Name: "street", Type: TypeString, Group: "address"},
			{Name: "city", Type: TypeString, Group: "address"},
		},
		Groups:    []Group{{Name: "address", Fields: []string{"street", "city"}, Policy: Policy{Kind: PolicyMVR}}},
		Retention: time.Hour,
	}}}
}

func TestSchemaValidate(t *testing.T) {
	if err := validCodeSchema().Validate(); err != nil {
		t.Fatalf("valid schema: %v", err)
	}
	cases := []struct {
		name   string
		mutate func(s *Schema)
		want   string // full text of the first error
	}{
		{"nil entities", func(s *Schema) { s.Entities = nil }, `schema declares no entities (want at least one under "entities:")`},
		{"zero type", func(s *Schema) { s.Entities[0].Fields[0].Type = TypeInvalid }, `entity "contact" field "name": missing type (want one of string, int, float, bool, timestamp, decimal, json, bytes)`},
		{"out of range type", func(s *Schema) { s.Entities[0].Fields[0].Type = 42 }, `entity "contact" field "name": invalid type type(42)`},
		{"bad policy kind", func(s *Schema) { s.Entities[0].Fields[0].Policy.Kind = 9 }, `entity "contact" field "name": unknown policy policy(9)`},
		{"priority list on lww", func(s *Schema) { s.Entities[0].Fields[0].Policy.Priority = []string{"crm"} }, `entity "contact" field "name": policy lww does not take a priority list`},
		{"negative retention", func(s *Schema) { s.Entities[0].Retention = -time.Second }, `entity "contact": retention must be >= 0`},
		{"bad deleted policy", func(s *Schema) { s.Entities[0].DeletedPolicy = Policy{Kind: PolicyPriority} }, `entity "contact": deleted_policy: priority policy needs a non-empty list`},
		{"reserved field", func(s *Schema) { s.Entities[0].Fields[0].Name = DeletedField }, `entity "contact" field "_deleted": field name "_deleted" is reserved`},
		{"empty entity name", func(s *Schema) { s.Entities[0].Name = "" }, `entity "": entity name is empty`},
		{"duplicate entity", func(s *Schema) { s.Entities = append(s.Entities, s.Entities[0]) }, `entity "contact": duplicate entity name`},
		{"Group not set", func(s *Schema) { s.Entities[0].Fields[2].Group = "" }, `entity "contact" field "street": field is listed in group "address" but its Group is ""`},
		{"Group without group", func(s *Schema) { s.Entities[0].Fields[0].Group = "address" }, `entity "contact" field "name": field's Group is "address" but no group "address" lists it`},
		{"member with policy", func(s *Schema) { s.Entities[0].Fields[2].Policy = Policy{Kind: PolicyMVR} }, `entity "contact" field "street": field is in group "address"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := validCodeSchema()
			tc.mutate(s)
			errs := schemaErrs(t, s.Validate())
			if len(errs) == 0 {
				t.Fatalf("Validate accepted invalid schema")
			}
			if errs[0].Line != 0 || errs[0].File != "" {
				t.Errorf("code-built schema error has a position: %+v", errs[0])
			}
			if got := errs[0].Error(); !strings.HasPrefix(got, tc.want) {
				t.Errorf("error = %q, want prefix %q", got, tc.want)
			}
		})
	}
	var nilSchema *Schema
	if err := nilSchema.Validate(); err == nil {
		t.Errorf("nil schema validated")
	}
}

func TestQuickstartSchema(t *testing.T) {
	data, err := os.ReadFile("../cmd/lattice/quickstart.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s, err := ParseSchema("quickstart.yaml", data)
	if err != nil {
		t.Fatalf("quickstart.yaml is invalid:\n%v", err)
	}
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	e, ok := s.Entity("contact")
	if !ok {
		t.Fatalf("quickstart has no contact entity")
	}
	if e.Retention != 720*time.Hour {
		t.Errorf("retention = %v, want 720h", e.Retention)
	}
	wantPolicy := map[string]PolicyKind{"name": PolicyLWW, "email": PolicyLWW, "phone": PolicyLWW, "company": PolicyMVR}
	if len(e.Fields) != len(wantPolicy) {
		t.Errorf("got %d fields, want %d", len(e.Fields), len(wantPolicy))
	}
	for name, kind := range wantPolicy {
		f, ok := e.Field(name)
		if !ok {
			t.Errorf("field %q missing", name)
			continue
		}
		if f.Type != TypeString || f.Policy.Kind != kind {
			t.Errorf("field %q = %s/%s, want string/%s", name, f.Type, f.Policy, kind)
		}
	}
}

// renderSchemaYAML writes s in the documented format, choosing between the
// short and long field forms with the given generator.
func renderSchemaYAML(t *rapid.T, s *Schema) string {
	pol := func(p Policy) string {
		if p.Kind != PolicyPriority {
			return p.Kind.String()
		}
		q := make([]string, len(p.Priority))
		for i, o := range p.Priority {
			q[i] = fmt.Sprintf("%q", o)
		}
		return "{priority: [" + strings.Join(q, ", ") + "]}"
	}
	var b strings.Builder
	b.WriteString("entities:\n")
	for _, e := range s.Entities {
		fmt.Fprintf(&b, "  %s:\n", e.Name)
		if e.Retention != 0 || rapid.Bool().Draw(t, "retention") {
			fmt.Fprintf(&b, "    retention: %s\n", e.Retention)
		}
		if e.DeletedPolicy.Kind != PolicyLWW || rapid.Bool().Draw(t, "deleted") {
			fmt.Fprintf(&b, "    deleted_policy: %s\n", pol(e.DeletedPolicy))
		}
		b.WriteString("    fields:\n")
		for _, f := range e.Fields {
			if f.Group == "" && (f.Policy.Kind != PolicyLWW || rapid.Bool().Draw(t, "long")) {
				fmt.Fprintf(&b, "      %s: {type: %s, policy: %s}\n", f.Name, f.Type, pol(f.Policy))
			} else {
				fmt.Fprintf(&b, "      %s: %s\n", f.Name, f.Type)
			}
		}
		if len(e.Groups) > 0 {
			b.WriteString("    groups:\n")
			for _, g := range e.Groups {
				fmt.Fprintf(&b, "      %s: {fields: [%s], policy: %s}\n", g.Name, strings.Join(g.Fields, ", "), pol(g.Policy))
			}
		}
	}
	return b.String()
}

// TestParseSchemaRoundTripProperty generates valid schemas, renders them as
// YAML and checks that parsing gives back the same schema.
func TestParseSchemaRoundTripProperty(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		name := rapid.StringMatching(`[a-z][a-z0-9_]{0,10}`)
		policy := func(label string) Policy {
			switch rapid.IntRange(0, 2).Draw(t, label) {
			case 1:
				return Policy{Kind: PolicyMVR}
			case 2:
				origins := rapid.SliceOfNDistinct(rapid.StringMatching(`[a-z]+(:[a-z]+)?`), 1, 4, rapid.ID[string]).Draw(t, label+"_origins")
				return Policy{Kind: PolicyPriority, Priority: origins}
			}
			return Policy{Kind: PolicyLWW}
		}
		s := &Schema{}
		entityNames := rapid.SliceOfNDistinct(name, 1, 3, rapid.ID[string]).Draw(t, "entities")
		for _, en := range entityNames {
			e := Entity{
				Name:          en,
				DeletedPolicy: policy("deleted_policy"),
				Retention:     time.Duration(rapid.IntRange(0, 10000).Draw(t, "retention")) * time.Minute,
			}
			names := rapid.SliceOfNDistinct(name, 1, 8, rapid.ID[string]).Draw(t, "names")
			nFields := rapid.IntRange(1, len(names)).Draw(t, "nfields")
			for _, fn := range names[:nFields] {
				e.Fields = append(e.Fields, FieldSpec{
					Name:   fn,
					Type:   Type(rapid.IntRange(int(TypeString), int(TypeBytes)).Draw(t, "type")),
					Policy: policy("policy"),
				})
			}
			// Unused names become groups over consecutive runs of fields.
			next := 0
			for _, gn := range names[nFields:] {
				size := rapid.IntRange(2, 3).Draw(t, "group_size")
				if next+size > len(e.Fields) {
					break
				}
				g := Group{Name: gn, Policy: policy("group_policy")}
				for i := next; i < next+size; i++ {
					e.Fields[i].Group = gn
					e.Fields[i].Policy = Policy{}
					g.Fields = append(g.Fields, e.Fields[i].Name)
				}
				next += size
				e.Groups = append(e.Groups, g)
			}
			s.Entities = append(s.Entities, e)
		}
		if err := s.Validate(); err != nil {
			t.Fatalf("generated schema invalid: %v", err)
		}
		doc := renderSchemaYAML(t, s)
		got, err := ParseSchema("gen.yaml", []byte(doc))
		if err != nil {
			t.Fatalf("ParseSchema(%q): %v", doc, err)
		}
		if !reflect.DeepEqual(got, s) {
			t.Fatalf("round trip mismatch for\n%s\n got: %+v\nwant: %+v", doc, got, s)
		}
	})
}

func FuzzParseSchema(f *testing.F) {
	f.Add([]byte(validSchemaYAML))
	f.Add([]byte("entities:\n  contact:\n    retention: 720h\n    fields:\n      name: string\n      company: {type: string, policy: mvr}\n"))
	f.Add([]byte("entities:\n  a:\n    fields: {x: int, y: int}\n    groups:\n      g: {fields: [x, y], policy: {priority: [crm, api]}}\n"))
	f.Add([]byte("entities:\n  a:\n    fields:\n      x: {type: string, policy: &p {priority: [crm]}}\n      y: {type: string, policy: *p}\n"))
	f.Add([]byte("entities:\n  contact:\n    feilds:\n      email: strng\n"))
	f.Add([]byte("entities:\n  a:\n    fields:\n      x: int\n      x: int\n      _deleted: bool\n"))
	f.Add([]byte("entities:\n  a:\n    fields: {x: int}\n    groups:\n      x: {fields: [x]}\n      g: {fields: [x, z, x]}\n"))
	f.Add([]byte("entities:\n  a:\n    retention: -5h\n    deleted_policy: {priority: []}\n    fields: {x: {type: int, policy: priority}}\n"))
	f.Add([]byte("a: &a [*a, *a]\nentities: *a\n"))
	f.Add([]byte("entities:\n  ? [a]\n  : {fields: {x: int}}\n---\nentities: {}\n"))
	f.Add([]byte("entities: {a: {fields: {x: int\n"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := ParseSchema("fuzz.yaml", data)
		if err != nil {
			if s != nil {
				t.Fatalf("schema returned with error")
			}
			for _, se := range schemaErrs(t, err) {
				if se.File != "fuzz.yaml" {
					t.Fatalf("error without file name: %v", se)
				}
			}
			return
		}
		if s == nil {
			t.Fatalf("nil schema without error")
		}
		if err := s.Validate(); err != nil {
			t.Fatalf("accepted schema fails Validate: %v\ninput: %q", err, data)
		}
	})
}
