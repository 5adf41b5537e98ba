package cluster

import (
	"errors"
	"testing"
)

// TestPauseReason: a connector pausing itself records why (fenced by its
// epoch: a stale owner's pause is refused); an operator's pause of it keeps
// the reason; resume clears both.
func TestPauseReason(t *testing.T) {
	f := &fsm{state: newState()}
	steps := []struct {
		name    string
		c       command
		wantErr bool
		paused  bool
		reason  string
	}{
		{"spec", command{Op: "connector_put", Connector: &ConnectorSpec{Name: "crm", Kind: "postgres"}}, false, false, ""},
		{"place", command{Op: "place", Name: "crm", Node: "a", Epoch: 2}, false, false, ""},
		{"stale owner pauses", command{Op: "pause", Name: "crm", Epoch: 1, Error: "drift"}, true, false, ""},
		{"owner pauses with a reason", command{Op: "pause", Name: "crm", Epoch: 2, Error: "schema drift: phone"}, false, true, "schema drift: phone"},
		{"operator pauses it too", command{Op: "pause", Name: "crm"}, false, true, "schema drift: phone"},
		{"resume", command{Op: "resume", Name: "crm"}, false, false, ""},
		{"operator pause", command{Op: "pause", Name: "crm"}, false, true, ""},
		{"resume again", command{Op: "resume", Name: "crm"}, false, false, ""},
	}
	for i, s := range steps {
		err := applyCmd(t, f, uint64(i+1), s.c)
		switch {
		case s.wantErr && !errors.Is(err, ErrStaleEpoch):
			t.Errorf("%s: got %v, want ErrStaleEpoch", s.name, err)
		case !s.wantErr && err != nil:
			t.Errorf("%s: %v", s.name, err)
		}
		st := f.read()
		if st.Paused["crm"] != s.paused || st.PauseReasons["crm"] != s.reason {
			t.Errorf("%s: paused %v reason %q, want %v %q", s.name, st.Paused["crm"], st.PauseReasons["crm"], s.paused, s.reason)
		}
		if p := placementOf(&st, "crm"); p.GetPaused() != s.paused || p.GetPauseReason() != s.reason {
			t.Errorf("%s: placement %v", s.name, p)
		}
	}
}
