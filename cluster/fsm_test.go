package cluster

import (
	"encoding/json"
	"errors"
	"io"
	"testing"

	"github.com/hashicorp/raft"
)

func applyCmd(t *testing.T, f *fsm, idx uint64, c command) error {
	t.Helper()
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	res := f.Apply(&raft.Log{Index: idx, Data: b})
	if err, ok := res.(error); ok {
		return err
	}
	return nil
}

func TestCheckpointFencedByEpoch(t *testing.T) {
	f := &fsm{state: newState()}
	steps := []struct {
		name    string
		c       command
		wantErr bool
	}{
		{"spec", command{Op: "connector_put", Connector: &ConnectorSpec{Name: "crm", Kind: "postgres"}}, false},
		{"place on a", command{Op: "place", Name: "crm", Node: "a", Epoch: 1}, false},
		{"a checkpoints at epoch 1", command{Op: "checkpoint", Name: "crm", Node: "a", Epoch: 1, Data: []byte("lsn 10")}, false},
		{"b checkpoints without owning it", command{Op: "checkpoint", Name: "crm", Node: "b", Epoch: 1, Data: []byte("lsn 99")}, true},
		{"move to b", command{Op: "place", Name: "crm", Node: "b", Epoch: 2}, false},
		{"stale owner a checkpoints at epoch 1", command{Op: "checkpoint", Name: "crm", Node: "a", Epoch: 1, Data: []byte("lsn 20")}, true},
		{"a claims the new epoch", command{Op: "checkpoint", Name: "crm", Node: "a", Epoch: 2, Data: []byte("lsn 21")}, true},
		{"b checkpoints at epoch 2", command{Op: "checkpoint", Name: "crm", Node: "b", Epoch: 2, Data: []byte("lsn 30")}, false},
		{"replayed old placement", command{Op: "place", Name: "crm", Node: "a", Epoch: 2}, true},
	}
	for i, s := range steps {
		err := applyCmd(t, f, uint64(i+1), s.c)
		if s.wantErr {
			if !errors.Is(err, ErrStaleEpoch) {
				t.Errorf("%s: got %v, want ErrStaleEpoch", s.name, err)
			}
		} else if err != nil {
			t.Errorf("%s: %v", s.name, err)
		}
	}
	st := f.read()
	if cp := st.Checkpoints["crm"]; string(cp.Data) != "lsn 30" || cp.Epoch != 2 {
		t.Errorf("checkpoint = %+v, want lsn 30 at epoch 2 (stale writes must change nothing)", cp)
	}
	if p := st.Placement["crm"]; p.Node != "b" || p.Epoch != 2 {
		t.Errorf("placement = %+v, want b at epoch 2", p)
	}
}

func TestFSMSnapshotRestoreAndReplay(t *testing.T) {
	var configs []string
	f := &fsm{state: newState(), onConfig: func(y, _ string) { configs = append(configs, y) }}
	cmds := []command{
		{Op: "config", ConfigYAML: "entities: {a: {fields: {x: string}}}", ConfigName: "c.yaml"},
		{Op: "connector_put", Connector: &ConnectorSpec{Name: "crm", Kind: "postgres"}},
		{Op: "place", Name: "crm", Node: "a", Epoch: 1},
		{Op: "checkpoint", Name: "crm", Node: "a", Epoch: 1, Data: []byte("x")},
	}
	for i, c := range cmds {
		if err := applyCmd(t, f, uint64(i+1), c); err != nil {
			t.Fatal(err)
		}
	}
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	g := &fsm{state: newState(), onConfig: func(y, _ string) { configs = append(configs, y) }}
	if err := g.Restore(sink); err != nil {
		t.Fatal(err)
	}
	a, _ := json.Marshal(f.read())
	b, _ := json.Marshal(g.read())
	if string(a) != string(b) {
		t.Errorf("restored state differs:\n%s\n%s", a, b)
	}
	if len(configs) != 2 {
		t.Errorf("config callback ran %d times, want 2 (apply and restore)", len(configs))
	}
	// Raft may re-apply entries after a crash: idempotent commands change nothing.
	for i, c := range cmds[:2] {
		_ = applyCmd(t, g, uint64(i+1), c)
	}
	c, _ := json.Marshal(g.read())
	var want, got State
	_ = json.Unmarshal(a, &want)
	_ = json.Unmarshal(c, &got)
	want.ConfigIndex, got.ConfigIndex = 0, 0
	wa, _ := json.Marshal(want)
	ga, _ := json.Marshal(got)
	if string(wa) != string(ga) {
		t.Errorf("re-applying entries changed the state:\n%s\n%s", wa, ga)
	}
	if err := applyCmd(t, g, 99, command{Op: "bogus"}); err == nil {
		t.Error("an unknown command was accepted")
	}
	if res := g.Apply(&raft.Log{Index: 100, Data: []byte("{not json")}); res == nil {
		t.Error("a corrupt command was accepted")
	}
}

type memSink struct {
	data []byte
	off  int
}

func (m *memSink) Write(p []byte) (int, error) { m.data = append(m.data, p...); return len(p), nil }
func (m *memSink) Close() error                { return nil }
func (m *memSink) ID() string                  { return "mem" }
func (m *memSink) Cancel() error               { return nil }
func (m *memSink) Read(p []byte) (int, error) {
	if m.off >= len(m.data) {
		return 0, io.EOF
	}
	n := copy(p, m.data[m.off:])
	m.off += n
	return n, nil
}
