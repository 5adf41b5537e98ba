package crdt

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"gopkg.in/yaml.v3"
)

// SchemaError is one problem found in a schema. Line is 1-based; 0 means the
// position is unknown (schemas built in code). Path names the offending
// entity, field or group, e.g. `entity "contact" field "email"`.
type SchemaError struct {
	File string
	Line int
	Path string
	Msg  string
}

func (e *SchemaError) Error() string {
	var b strings.Builder
	switch {
	case e.File != "" && e.Line > 0:
		fmt.Fprintf(&b, "%s:%d: ", e.File, e.Line)
	case e.File != "":
		b.WriteString(e.File + ": ")
	case e.Line > 0:
		fmt.Fprintf(&b, "line %d: ", e.Line)
	}
	if e.Path != "" {
		b.WriteString(e.Path + ": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// maxSchemaErrors bounds how many problems are reported at once.
const maxSchemaErrors = 10

// maxAliasExpansions bounds YAML alias resolution so that a small document
// cannot expand into a huge schema.
const maxAliasExpansions = 1000

var schemaNameRE = regexp.MustCompile(`^[a-z][a-z0-9_]{0,62}$`)

const nameRule = "must match ^[a-z][a-z0-9_]{0,62}$: a lowercase letter followed by at most 62 lowercase letters, digits or underscores"

func typeList() string { return strings.Join(typeNames[1:], ", ") }

func entityPath(e string) string      { return fmt.Sprintf("entity %q", e) }
func fieldPath(e, f string) string    { return fmt.Sprintf("entity %q field %q", e, f) }
func groupPath(e, g string) string    { return fmt.Sprintf("entity %q group %q", e, g) }
func policyHint() string              { return "want lww, mvr or {priority: [origin, ...]}" }
func quoteList(names []string) string { return strings.Join(names, ", ") }

// errList collects SchemaErrors for one file.
type errList struct {
	file string
	errs []*SchemaError
}

func (l *errList) add(line int, path, format string, args ...any) {
	l.errs = append(l.errs, &SchemaError{File: l.file, Line: line, Path: path, Msg: fmt.Sprintf(format, args...)})
}

// err returns the collected problems ordered by line, at most maxSchemaErrors
// of them (plus a note saying how many were left out), joined with errors.Join.
func (l *errList) err() error {
	if len(l.errs) == 0 {
		return nil
	}
	errs := slices.Clone(l.errs)
	slices.SortStableFunc(errs, func(a, b *SchemaError) int { return cmp.Compare(a.Line, b.Line) })
	if n := len(errs) - maxSchemaErrors; n > 0 {
		errs = append(errs[:maxSchemaErrors:maxSchemaErrors], &SchemaError{
			File: l.file,
			Msg:  fmt.Sprintf("too many errors: %d more not shown", n),
		})
	}
	out := make([]error, len(errs))
	for i, e := range errs {
		out[i] = e
	}
	return errors.Join(out...)
}

// Source positions of a parsed schema, parallel to the Schema slices. They let
// the shared validator attach line numbers; a nil *schemaPos means "unknown".
type schemaPos struct {
	root               int
	noEntitiesReported bool
	entities           []entityPos
}

type entityPos struct {
	key, retention, deletedPolicy int
	fields                        []fieldPos
	groups                        []groupPos
}

type fieldPos struct {
	key, typ, policy int
	// hasPolicy records an explicit policy in the file (even "lww").
	hasPolicy bool
	// typeReported suppresses the generic type check when the parser already
	// reported a more precise problem with the type.
	typeReported bool
}

type groupPos struct {
	key, policy int
	members     []int
}

func (p *schemaPos) entity(i int) *entityPos {
	if p == nil || i >= len(p.entities) {
		return &entityPos{}
	}
	return &p.entities[i]
}

func (p *entityPos) field(i int) *fieldPos {
	if i >= len(p.fields) {
		return &fieldPos{}
	}
	return &p.fields[i]
}

func (p *entityPos) group(i int) *groupPos {
	if i >= len(p.groups) {
		return &groupPos{}
	}
	return &p.groups[i]
}

func (p *groupPos) member(i int) int {
	if i >= len(p.members) {
		return p.key
	}
	return p.members[i]
}

// Entity returns the entity with the given name.
func (s *Schema) Entity(name string) (*Entity, bool) {
	if s == nil {
		return nil, false
	}
	for i := range s.Entities {
		if s.Entities[i].Name == name {
			return &s.Entities[i], true
		}
	}
	return nil, false
}

// Field returns the field with the given name.
func (e *Entity) Field(name string) (*FieldSpec, bool) {
	if e == nil {
		return nil, false
	}
	for i := range e.Fields {
		if e.Fields[i].Name == name {
			return &e.Fields[i], true
		}
	}
	return nil, false
}

// Validate checks a schema built in code with the same rules ParseSchema
// applies. Errors are *SchemaError values joined with errors.Join.
func (s *Schema) Validate() error {
	l := &errList{}
	validateSchema(s, nil, l)
	return l.err()
}

func validateSchema(s *Schema, pos *schemaPos, l *errList) {
	root := 0
	if pos != nil {
		root = pos.root
	}
	if s == nil || len(s.Entities) == 0 {
		if pos == nil || !pos.noEntitiesReported {
			l.add(root, "", "schema declares no entities (want at least one under \"entities:\")")
		}
		return
	}
	seen := map[string]int{} // entity name -> index
	for i := range s.Entities {
		e := &s.Entities[i]
		ep := pos.entity(i)
		if j, dup := seen[e.Name]; dup {
			l.add(ep.key, entityPath(e.Name), "duplicate entity name%s", firstAt(pos.entity(j).key))
		} else {
			seen[e.Name] = i
		}
		validateEntity(e, ep, l)
	}
}

func firstAt(line int) string {
	if line > 0 {
		return fmt.Sprintf(" (first defined at line %d)", line)
	}
	return ""
}

func validateName(what, name string) string {
	switch {
	case name == "":
		return fmt.Sprintf("%s name is empty", what)
	case name == DeletedField || strings.HasPrefix(name, "_"):
		return fmt.Sprintf("%s name %q is reserved: names starting with \"_\" belong to the system (e.g. %s)", what, name, DeletedField)
	case !schemaNameRE.MatchString(name):
		return fmt.Sprintf("invalid %s name %q: %s", what, name, nameRule)
	}
	return ""
}

func validateEntity(e *Entity, ep *entityPos, l *errList) {
	ePath := entityPath(e.Name)
	if msg := validateName("entity", e.Name); msg != "" {
		l.add(ep.key, ePath, "%s", msg)
	}
	if e.Retention < 0 {
		l.add(cmp.Or(ep.retention, ep.key), ePath, "retention must be >= 0 (0 keeps history forever), got %s", e.Retention)
	}
	if msg := validatePolicy(e.DeletedPolicy); msg != "" {
		l.add(cmp.Or(ep.deletedPolicy, ep.key), ePath, "deleted_policy: %s", msg)
	}

	fields := map[string]int{} // field name -> index
	for i := range e.Fields {
		f := &e.Fields[i]
		fp := ep.field(i)
		path := fieldPath(e.Name, f.Name)
		if msg := validateName("field", f.Name); msg != "" {
			l.add(fp.key, path, "%s", msg)
		}
		if j, dup := fields[f.Name]; dup {
			l.add(fp.key, path, "duplicate field name%s", firstAt(ep.field(j).key))
		} else {
			fields[f.Name] = i
		}
		if !fp.typeReported {
			switch {
			case f.Type == TypeInvalid:
				l.add(cmp.Or(fp.typ, fp.key), path, "missing type (want one of %s)", typeList())
			case int(f.Type) >= len(typeNames):
				l.add(cmp.Or(fp.typ, fp.key), path, "invalid type %s (want one of %s)", f.Type, typeList())
			}
		}
		if msg := validatePolicy(f.Policy); msg != "" {
			l.add(cmp.Or(fp.policy, fp.key), path, "%s", msg)
		}
	}

	member := map[string]string{} // field name -> first group listing it
	groups := map[string]int{}    // group name -> index
	for i := range e.Groups {
		g := &e.Groups[i]
		gp := ep.group(i)
		path := groupPath(e.Name, g.Name)
		if msg := validateName("group", g.Name); msg != "" {
			l.add(gp.key, path, "%s", msg)
		}
		if _, clash := fields[g.Name]; clash {
			l.add(gp.key, path, "group name clashes with field %q", g.Name)
		}
		if j, dup := groups[g.Name]; dup {
			l.add(gp.key, path, "duplicate group name%s", firstAt(ep.group(j).key))
		} else {
			groups[g.Name] = i
		}
		if len(g.Fields) < 2 {
			l.add(gp.key, path, "a group needs at least 2 fields, got %d", len(g.Fields))
		}
		inThis := map[string]bool{}
		for k, name := range g.Fields {
			line := gp.member(k)
			if inThis[name] {
				l.add(line, path, "field %q is listed twice", name)
				continue
			}
			if _, ok := fields[name]; !ok {
				l.add(line, path, "unknown field %q (declare it under fields first)", name)
				continue
			}
			inThis[name] = true
			if other, ok := member[name]; ok {
				l.add(line, path, "field %q is already in group %q (a field may be in at most one group)", name, other)
				continue
			}
			member[name] = g.Name
		}
		if msg := validatePolicy(g.Policy); msg != "" {
			l.add(cmp.Or(gp.policy, gp.key), path, "%s", msg)
		}
	}

	// FieldSpec.Group must agree with the groups, and a member's own policy
	// would be silently ignored, so reject it.
	for i := range e.Fields {
		f := &e.Fields[i]
		if j := fields[f.Name]; j != i {
			continue // duplicate, already reported
		}
		fp := ep.field(i)
		path := fieldPath(e.Name, f.Name)
		g, inGroup := member[f.Name]
		if f.Group != g {
			if inGroup {
				l.add(fp.key, path, "field is listed in group %q but its Group is %q", g, f.Group)
			} else {
				l.add(fp.key, path, "field's Group is %q but no group %q lists it", f.Group, f.Group)
			}
		}
		if inGroup && (fp.hasPolicy || f.Policy.Kind != PolicyLWW || len(f.Policy.Priority) > 0) {
			l.add(cmp.Or(fp.policy, fp.key), path, "field is in group %q, whose policy applies to all its members: set the policy on the group, not the field", g)
		}
	}
}

// validatePolicy returns a message describing what is wrong with p, or "".
func validatePolicy(p Policy) string {
	switch p.Kind {
	case PolicyLWW, PolicyMVR:
		if len(p.Priority) > 0 {
			return fmt.Sprintf("policy %s does not take a priority list (use {priority: [...]})", p.Kind)
		}
	case PolicyPriority:
		if len(p.Priority) == 0 {
			return "priority policy needs a non-empty list of origins, e.g. {priority: [\"postgres:crm\", \"api\"]}"
		}
		seen := map[string]bool{}
		for _, o := range p.Priority {
			if o == "" {
				return "priority policy: origin names must not be empty"
			}
			if seen[o] {
				return fmt.Sprintf("priority policy lists origin %q twice", o)
			}
			seen[o] = true
		}
	default:
		return fmt.Sprintf("unknown policy %s (%s)", p.Kind, policyHint())
	}
	return ""
}

// ParseSchema parses and validates a YAML schema. filename is used only in
// error messages. All returned errors are *SchemaError values (several may be
// joined with errors.Join) naming the file, line and offending entity/field.
//
// Format:
//
//	entities:
//	  contact:
//	    retention: 720h        # optional Go duration; 0 or absent keeps history forever
//	    deleted_policy: lww    # optional policy of the reserved _deleted field
//	    fields:
//	      name: string                                    # short form: just the type
//	      email: {type: string, policy: lww}
//	      phone: {type: string, policy: {priority: ["postgres:crm", "api"]}}
//	      street: string
//	      city: string
//	    groups:
//	      address: {fields: [street, city], policy: lww}
func ParseSchema(filename string, data []byte) (*Schema, error) {
	p := &schemaParser{errs: errList{file: filename}}
	root, ok := p.decode(data)
	if !ok {
		return nil, p.errs.err()
	}
	s := &Schema{}
	pos := &schemaPos{root: 1}
	if root != nil {
		pos.root = root.Line
		p.parseRoot(root, s, pos)
	}
	// A structural error already explains why no entities were parsed.
	pos.noEntitiesReported = len(p.errs.errs) > 0
	validateSchema(s, pos, &p.errs)
	if err := p.errs.err(); err != nil {
		return nil, err
	}
	return s, nil
}

type schemaParser struct {
	errs    errList
	aliases int
}

var yamlLineRE = regexp.MustCompile(`(?s)^yaml: line (\d+): (.*)$`)

// decode parses the YAML document. It returns the top-level node (nil for an
// empty document) and false if the bytes are not a single valid YAML document.
func (p *schemaParser) decode(data []byte) (root *yaml.Node, ok bool) {
	defer func() {
		// The YAML library is not expected to panic, but a configuration
		// loader must never crash on user input.
		if r := recover(); r != nil {
			p.errs.add(0, "", "invalid YAML: %v", r)
			root, ok = nil, false
		}
	}()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if err == io.EOF {
			return nil, true
		}
		p.yamlError(data, err)
		return nil, false
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err != io.EOF {
		if err != nil {
			p.yamlError(data, err)
		} else {
			p.errs.add(extra.Line, "", "the file holds more than one YAML document (remove the \"---\" separator)")
		}
		return nil, false
	}
	if doc.Kind == yaml.DocumentNode {
		if len(doc.Content) == 0 {
			return nil, true
		}
		return &doc, true
	}
	return &doc, true
}

// yamlParserProblems are the yaml.v3 parser (not scanner) messages. yaml.v3
// reports their line 0-based, and omits it on the first line.
var yamlParserProblems = map[string]bool{
	"did not find expected ',' or ']'":       true,
	"did not find expected ',' or '}'":       true,
	"did not find expected '-' indicator":    true,
	"did not find expected <document start>": true,
	"did not find expected <stream-start>":   true,
	"did not find expected key":              true,
	"did not find expected node content":     true,
	"found duplicate %TAG directive":         true,
	"found duplicate %YAML directive":        true,
	"found incompatible YAML document":       true,
	"found undefined tag handle":             true,
}

// yamlError converts a yaml.v3 syntax error into a SchemaError with a 1-based line.
func (p *schemaParser) yamlError(data []byte, err error) {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	line := 0
	if m := yamlLineRE.FindStringSubmatch(err.Error()); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = m[2]
	}
	switch {
	case yamlParserProblems[msg]:
		line++
	case line == 0:
		// Reader errors (bad UTF-8, control characters) carry no line;
		// other errors without one are on the first line.
		line = badCharLine(data)
	}
	p.errs.add(line, "", "invalid YAML: %s", msg)
}

// badCharLine returns the line of the first byte YAML cannot read (invalid
// UTF-8 or a control character), or 1 if there is none.
func badCharLine(data []byte) int {
	line := 1
	for i := 0; i < len(data); {
		r, size := utf8.DecodeRune(data[i:])
		switch {
		case r == utf8.RuneError && size <= 1,
			r < 0x20 && r != '\t' && r != '\n' && r != '\r',
			r == 0x7f, r >= 0x80 && r <= 0x9f && r != 0x85,
			r == 0xfffe, r == 0xffff:
			return line
		case r == '\n':
			line++
		}
		i += size
	}
	return 1
}

// resolve follows aliases and unwraps a document node.
func (p *schemaParser) resolve(n *yaml.Node) *yaml.Node {
	for n != nil && (n.Kind == yaml.AliasNode || n.Kind == yaml.DocumentNode) {
		if n.Kind == yaml.DocumentNode {
			if len(n.Content) == 0 {
				return nil
			}
			n = n.Content[0]
			continue
		}
		p.aliases++
		if p.aliases > maxAliasExpansions {
			if p.aliases == maxAliasExpansions+1 {
				p.errs.add(n.Line, "", "too many YAML alias expansions (at most %d)", maxAliasExpansions)
			}
			return nil
		}
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n == nil || (n.Kind == yaml.ScalarNode && n.Tag == "!!null")
}

func describe(n *yaml.Node) string {
	switch {
	case isNull(n):
		return "nothing"
	case n.Kind == yaml.MappingNode:
		return "a mapping"
	case n.Kind == yaml.SequenceNode:
		return "a list"
	case n.Kind == yaml.ScalarNode:
		return fmt.Sprintf("%q", n.Value)
	}
	return "an unsupported YAML node"
}

// pair is one key/value of a YAML mapping.
type pair struct {
	key   string
	line  int
	value *yaml.Node // resolved; may be nil
}

// pairs returns the entries of mapping n (already resolved) in file order.
// Non-scalar keys and merge keys are reported and skipped. When fixedKeys is
// true, duplicate keys are reported too (for mappings whose keys are names,
// duplicates are reported by validation instead).
func (p *schemaParser) pairs(n *yaml.Node, path string, fixedKeys bool) []pair {
	var out []pair
	first := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k := p.resolve(n.Content[i])
		if p.aliases > maxAliasExpansions {
			return out
		}
		if k == nil || k.Kind != yaml.ScalarNode {
			line := n.Content[i].Line
			p.errs.add(line, path, "mapping keys must be plain names, got %s", describe(k))
			continue
		}
		if k.Tag == "!!merge" {
			p.errs.add(k.Line, path, "YAML merge keys (<<) are not supported")
			continue
		}
		if fixedKeys {
			if l, dup := first[k.Value]; dup {
				p.errs.add(k.Line, path, "duplicate key %q%s", k.Value, firstAt(l))
				continue
			}
			first[k.Value] = k.Line
		}
		v := p.resolve(n.Content[i+1])
		if p.aliases > maxAliasExpansions {
			return out
		}
		out = append(out, pair{key: k.Value, line: k.Line, value: v})
	}
	return out
}

func (p *schemaParser) parseRoot(n *yaml.Node, s *Schema, pos *schemaPos) {
	n = p.resolve(n)
	if isNull(n) {
		return // reported as "no entities" by validation
	}
	if n.Kind != yaml.MappingNode {
		p.errs.add(n.Line, "", "expected a mapping with key \"entities\", got %s", describe(n))
		return
	}
	for _, kv := range p.pairs(n, "", true) {
		switch kv.key {
		case "entities":
			pos.root = kv.line
			p.parseEntities(kv.value, s, pos)
		case "connectors":
			p.parseConnectors(kv.value, s)
		default:
			p.errs.add(kv.line, "", "unknown key %q (want entities or connectors)", kv.key)
		}
	}
}

// parseConnectors reads connector declarations: a mapping of name to a
// mapping with at least "kind". The rest of each declaration belongs to the
// connector's own package, which validates it.
func (p *schemaParser) parseConnectors(n *yaml.Node, s *Schema) {
	n = p.resolve(n)
	if isNull(n) {
		return
	}
	if n.Kind != yaml.MappingNode {
		p.errs.add(n.Line, "connectors", "expected a mapping of connector name to definition, got %s", describe(n))
		return
	}
	for _, kv := range p.pairs(n, "connectors", false) {
		path := fmt.Sprintf("connector %q", kv.key)
		if !schemaNameRE.MatchString(kv.key) {
			p.errs.add(kv.line, path, "invalid name: use lowercase letters, digits and _, starting with a letter")
			continue
		}
		v := p.resolve(kv.value)
		if v.Kind != yaml.MappingNode {
			p.errs.add(kv.line, path, "expected a mapping with at least \"kind\", got %s", describe(v))
			continue
		}
		var cfg map[string]any
		if err := v.Decode(&cfg); err != nil {
			p.errs.add(kv.line, path, "%v", err)
			continue
		}
		kind, _ := cfg["kind"].(string)
		if kind == "" {
			p.errs.add(kv.line, path, "\"kind\" is required (e.g. kind: postgres)")
			continue
		}
		s.Connectors = append(s.Connectors, ConnectorDecl{Name: kv.key, Kind: kind, Line: kv.line, Config: cfg})
	}
}

func (p *schemaParser) parseEntities(n *yaml.Node, s *Schema, pos *schemaPos) {
	if isNull(n) {
		return
	}
	if n.Kind != yaml.MappingNode {
		p.errs.add(n.Line, "entities", "expected a mapping of entity name to definition, got %s", describe(n))
		return
	}
	for _, kv := range p.pairs(n, "entities", false) {
		e := Entity{Name: kv.key}
		ep := entityPos{key: kv.line}
		p.parseEntity(kv.value, &e, &ep, kv.line)
		s.Entities = append(s.Entities, e)
		pos.entities = append(pos.entities, ep)
	}
}

func (p *schemaParser) parseEntity(n *yaml.Node, e *Entity, ep *entityPos, keyLine int) {
	path := entityPath(e.Name)
	if n == nil || n.Kind != yaml.MappingNode {
		line := keyLine
		if n != nil && !isNull(n) {
			line = n.Line
		}
		p.errs.add(line, path, "expected a mapping with keys fields, groups, retention, deleted_policy; got %s", describe(n))
		return
	}
	var groupsNode *yaml.Node
	for _, kv := range p.pairs(n, path, true) {
		switch kv.key {
		case "fields":
			p.parseFields(kv.value, e, ep)
		case "groups":
			groupsNode = kv.value
			if groupsNode == nil {
				groupsNode = &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!null", Line: kv.line}
			}
		case "retention":
			ep.retention = kv.line
			if isNull(kv.value) {
				continue
			}
			if kv.value.Kind != yaml.ScalarNode {
				p.errs.add(kv.line, path, "retention: want a Go duration such as 720h, got %s", describe(kv.value))
				continue
			}
			d, err := time.ParseDuration(kv.value.Value)
			if err != nil {
				p.errs.add(kv.value.Line, path, "retention: invalid duration %q: want a Go duration such as 720h (30 days) or 0 to keep forever", kv.value.Value)
				continue
			}
			e.Retention = d
		case "deleted_policy":
			ep.deletedPolicy = kv.line
			if pol, ok := p.parsePolicy(kv.value, path, "deleted_policy: ", kv.line); ok {
				e.DeletedPolicy = pol
			}
		default:
			p.errs.add(kv.line, path, "unknown key %q", kv.key)
		}
	}
	// Groups are parsed after fields so members can be linked whatever the
	// key order in the file.
	if groupsNode != nil {
		p.parseGroups(groupsNode, e, ep)
	}
}

func (p *schemaParser) parseFields(n *yaml.Node, e *Entity, ep *entityPos) {
	path := entityPath(e.Name)
	if isNull(n) {
		return
	}
	if n.Kind != yaml.MappingNode {
		p.errs.add(n.Line, path, "fields: expected a mapping of field name to type, got %s", describe(n))
		return
	}
	for _, kv := range p.pairs(n, path, false) {
		f := FieldSpec{Name: kv.key}
		fp := fieldPos{key: kv.line}
		p.parseField(kv.value, e.Name, &f, &fp)
		e.Fields = append(e.Fields, f)
		ep.fields = append(ep.fields, fp)
	}
}

func (p *schemaParser) parseType(n *yaml.Node, path string, f *FieldSpec, fp *fieldPos) {
	fp.typ = n.Line
	if n.Kind != yaml.ScalarNode || isNull(n) {
		p.errs.add(n.Line, path, "missing type (want one of %s)", typeList())
		fp.typeReported = true
		return
	}
	t, ok := ParseType(n.Value)
	if !ok {
		p.errs.add(n.Line, path, "unknown type %q (want one of %s)", n.Value, typeList())
		fp.typeReported = true
		return
	}
	f.Type = t
}

func (p *schemaParser) parseField(n *yaml.Node, entity string, f *FieldSpec, fp *fieldPos) {
	path := fieldPath(entity, f.Name)
	if n == nil {
		fp.typ = fp.key
		p.errs.add(fp.key, path, "missing type (want one of %s)", typeList())
		fp.typeReported = true
		return
	}
	switch n.Kind {
	case yaml.ScalarNode:
		p.parseType(n, path, f, fp)
	case yaml.MappingNode:
		sawType := false
		for _, kv := range p.pairs(n, path, true) {
			switch kv.key {
			case "type":
				sawType = true
				v := kv.value
				if v == nil {
					v = &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!null", Line: kv.line}
				}
				p.parseType(v, path, f, fp)
			case "policy":
				fp.policy = kv.line
				fp.hasPolicy = true
				if pol, ok := p.parsePolicy(kv.value, path, "", kv.line); ok {
					f.Policy = pol
				}
			default:
				p.errs.add(kv.line, path, "unknown key %q", kv.key)
			}
		}
		if !sawType {
			p.errs.add(n.Line, path, "missing type (want one of %s)", typeList())
			fp.typeReported = true
		}
	default:
		p.errs.add(n.Line, path, "expected a type name or {type: ..., policy: ...}, got %s", describe(n))
		fp.typeReported = true
	}
}

// parsePolicy parses `lww`, `mvr` or `{priority: [origin, ...]}`. It reports
// syntax problems and returns ok=false for them; semantic problems (empty or
// duplicate origins) are left to validation.
func (p *schemaParser) parsePolicy(n *yaml.Node, path, prefix string, keyLine int) (Policy, bool) {
	if isNull(n) {
		line := keyLine
		if n != nil {
			line = n.Line
		}
		p.errs.add(line, path, "%smissing policy (%s)", prefix, policyHint())
		return Policy{}, false
	}
	switch n.Kind {
	case yaml.ScalarNode:
		switch n.Value {
		case "lww":
			return Policy{Kind: PolicyLWW}, true
		case "mvr":
			return Policy{Kind: PolicyMVR}, true
		case "priority":
			p.errs.add(n.Line, path, "%spriority policy needs a list of origins: write {priority: [origin, ...]}", prefix)
		default:
			p.errs.add(n.Line, path, "%sunknown policy %q (%s)", prefix, n.Value, policyHint())
		}
		return Policy{}, false
	case yaml.MappingNode:
		kvs := p.pairs(n, path, true)
		if len(kvs) != 1 || kvs[0].key != "priority" {
			keys := make([]string, len(kvs))
			for i, kv := range kvs {
				keys[i] = kv.key
			}
			p.errs.add(n.Line, path, "%sa policy mapping must have the single key \"priority\", got keys [%s] (%s)", prefix, quoteList(keys), policyHint())
			return Policy{}, false
		}
		list := kvs[0].value
		if isNull(list) {
			return Policy{Kind: PolicyPriority}, true // "empty list" reported by validation
		}
		if list.Kind != yaml.SequenceNode {
			p.errs.add(list.Line, path, "%spriority: expected a list of origins, got %s", prefix, describe(list))
			return Policy{}, false
		}
		pol := Policy{Kind: PolicyPriority, Priority: []string{}}
		for _, item := range list.Content {
			item = p.resolve(item)
			if item == nil || item.Kind != yaml.ScalarNode || isNull(item) {
				line := list.Line
				if item != nil {
					line = item.Line
				}
				p.errs.add(line, path, "%spriority: origins must be strings, got %s", prefix, describe(item))
				return Policy{}, false
			}
			pol.Priority = append(pol.Priority, item.Value)
		}
		return pol, true
	}
	p.errs.add(n.Line, path, "%sexpected a policy, got %s (%s)", prefix, describe(n), policyHint())
	return Policy{}, false
}

func (p *schemaParser) parseGroups(n *yaml.Node, e *Entity, ep *entityPos) {
	path := entityPath(e.Name)
	if isNull(n) {
		return
	}
	if n.Kind != yaml.MappingNode {
		p.errs.add(n.Line, path, "groups: expected a mapping of group name to {fields: [...], policy: ...}, got %s", describe(n))
		return
	}
	for _, kv := range p.pairs(n, path, false) {
		g := Group{Name: kv.key}
		gp := groupPos{key: kv.line}
		p.parseGroup(kv.value, e.Name, &g, &gp)
		e.Groups = append(e.Groups, g)
		ep.groups = append(ep.groups, gp)
		// Link members to their (first) group.
		for _, name := range g.Fields {
			if f, ok := e.Field(name); ok && f.Group == "" {
				f.Group = g.Name
			}
		}
	}
}

func (p *schemaParser) parseGroup(n *yaml.Node, entity string, g *Group, gp *groupPos) {
	path := groupPath(entity, g.Name)
	if n == nil || n.Kind != yaml.MappingNode {
		line := gp.key
		if n != nil && !isNull(n) {
			line = n.Line
		}
		p.errs.add(line, path, "expected {fields: [field, ...], policy: ...}, got %s", describe(n))
		return
	}
	for _, kv := range p.pairs(n, path, true) {
		switch kv.key {
		case "fields":
			list := kv.value
			if isNull(list) {
				continue // "needs at least 2 fields" reported by validation
			}
			if list.Kind != yaml.SequenceNode {
				p.errs.add(list.Line, path, "fields: expected a list of field names, got %s", describe(list))
				continue
			}
			for _, item := range list.Content {
				item = p.resolve(item)
				if item == nil || item.Kind != yaml.ScalarNode || isNull(item) {
					line := list.Line
					if item != nil {
						line = item.Line
					}
					p.errs.add(line, path, "fields: expected a field name, got %s", describe(item))
					continue
				}
				g.Fields = append(g.Fields, item.Value)
				gp.members = append(gp.members, item.Line)
			}
		case "policy":
			gp.policy = kv.line
			if pol, ok := p.parsePolicy(kv.value, path, "", kv.line); ok {
				g.Policy = pol
			}
		default:
			p.errs.add(kv.line, path, "unknown key %q", kv.key)
		}
	}
}
