package crdt

import (
	"errors"
	"testing"
)

// TestSourceRegister: a system register written with an edit is kept
// sorted among its writes, supersedes the earlier value its writer saw,
// stays out of the view, and only "_"-names other than _deleted qualify.
func TestSourceRegister(t *testing.T) {
	e := contactEntity(Policy{})
	n := newStoreNode("n1")
	reg := SourceRegister("crm")
	put := func(name, src string, ts Timestamp) {
		t.Helper()
		ec := n.token(n.rec.Context)
		writes, err := e.PreparePut(n.rec, map[string]Value{"name": String(name), "street": String("Main")}, ec)
		if err != nil {
			t.Fatal(err)
		}
		writes, err = WithSystem(n.rec, writes, reg, String(src), ec)
		if err != nil {
			t.Fatal(err)
		}
		for i := 1; i < len(writes); i++ {
			if writes[i-1].Register >= writes[i].Register {
				t.Fatalf("writes not sorted by register: %q before %q", writes[i-1].Register, writes[i].Register)
			}
		}
		n.commit(writes, ts, "postgres:crm")
	}
	put("Ann", "L1", 10)
	put("Bob", "L2", 20)
	if got := SystemValues(n.rec, reg); len(got) != 1 || got[0].Str() != "L2" {
		t.Fatalf("source register live values %v, want [L2]", got)
	}
	fields, _ := e.View(n.rec)
	for _, f := range fields {
		if f.Name == reg {
			t.Fatalf("the view shows the system register %q", reg)
		}
	}
	if len(fields) != len(e.Fields) {
		t.Fatalf("view has %d fields, entity declares %d", len(fields), len(e.Fields))
	}
	for _, bad := range []string{"name", DeletedField, ""} {
		if _, err := WithSystem(n.rec, nil, bad, String("x"), n.implicit()); !errors.Is(err, ErrInvalid) {
			t.Errorf("WithSystem(%q): err %v, want ErrInvalid", bad, err)
		}
	}
	twice := []Write{{Register: reg, Value: String("L3")}}
	if _, err := WithSystem(n.rec, twice, reg, String("L3"), n.implicit()); !errors.Is(err, ErrInvalid) {
		t.Errorf("a register written twice: err %v, want ErrInvalid", err)
	}
}
