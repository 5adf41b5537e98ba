package postgres

import (
	"testing"

	"github.com/lattice-sync/lattice/crdt"
)

func TestMarksRoundTrip(t *testing.T) {
	ctxs := []crdt.VV{nil, crdt.VV{}.WithDot(crdt.Dot{Node: "n1", Seq: 7}), crdt.MakeVV(map[string]uint64{"n1": 3, "n2": 900000})}
	var ps []*projection
	for i, vv := range ctxs {
		ps = append(ps, &projection{entity: "contact", id: string(rune('a'+i)) + "/x\x00y\n", token: crdt.EncodeToken(vv)})
	}
	marks, err := decodeMarks(appendMarks(nil, ps))
	if err != nil {
		t.Fatal(err)
	}
	if len(marks) != len(ps) {
		t.Fatalf("%d marks, want %d", len(marks), len(ps))
	}
	for i, m := range marks {
		if m.entity != ps[i].entity || m.id != ps[i].id || !m.ctx.Equal(ctxs[i]) {
			t.Errorf("mark %d = %+v, want %s %q %s", i, m, ps[i].entity, ps[i].id, ctxs[i])
		}
	}
}

func TestMarksRefuseBadInput(t *testing.T) {
	good := appendMarks(nil, []*projection{{entity: "contact", id: "1", token: crdt.EncodeToken(crdt.VV{}.WithDot(crdt.Dot{Node: "n1", Seq: 1}))}})
	for name, b := range map[string][]byte{
		"empty":       nil,
		"version":     append([]byte{9}, good[1:]...),
		"count":       {marksVersion, 0xff, 0xff, 0xff, 0xff, 0x0f},
		"truncated":   good[:len(good)-1],
		"trailing":    append(append([]byte(nil), good...), 0),
		"bad token":   appendMarks(nil, []*projection{{entity: "e", id: "i", token: []byte("nope")}}),
		"huge length": {marksVersion, 1, 0xff, 0xff, 0xff, 0xff, 0x0f},
	} {
		if _, err := decodeMarks(b); err == nil {
			t.Errorf("%s: decoded without error", name)
		}
	}
}

// FuzzDecodeMarks: no input panics, and what decodes re-encodes to the
// same bytes.
func FuzzDecodeMarks(f *testing.F) {
	f.Add(appendMarks(nil, nil))
	f.Add(appendMarks(nil, []*projection{{entity: "contact", id: "1", token: crdt.EncodeToken(crdt.MakeVV(map[string]uint64{"n1": 2}))}}))
	f.Add([]byte{marksVersion, 2, 1, 'e', 1, 'i', 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		marks, err := decodeMarks(b)
		if err != nil {
			return
		}
		var ps []*projection
		for _, m := range marks {
			ps = append(ps, &projection{entity: m.entity, id: m.id, token: crdt.EncodeToken(m.ctx)})
		}
		again, err := decodeMarks(appendMarks(nil, ps))
		if err != nil || len(again) != len(marks) {
			t.Fatalf("re-encoded marks do not decode: %v", err)
		}
		for i := range again {
			if again[i].entity != marks[i].entity || again[i].id != marks[i].id || !again[i].ctx.Equal(marks[i].ctx) {
				t.Fatalf("mark %d changed on re-encoding", i)
			}
		}
	})
}
