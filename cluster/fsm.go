package cluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// ErrStaleEpoch is returned when a connector checkpoint carries an epoch
// other than the connector's current placement epoch: a stale owner.
var ErrStaleEpoch = errors.New("stale connector epoch")

// ConnectorSpec is a connector's configuration as stored in Raft.
type ConnectorSpec struct {
	Name string `json:"name"`
	// Kind names the connector type, e.g. "postgres".
	Kind string `json:"kind"`
	// Config is the connector's own configuration (opaque here).
	Config json.RawMessage `json:"config,omitempty"`
}

// Placement says which node runs a connector, and under which epoch.
type Placement struct {
	Node  string `json:"node"`
	Epoch uint64 `json:"epoch"`
}

// Checkpoint is a connector's durable position (opaque here).
type Checkpoint struct {
	Epoch uint64 `json:"epoch"`
	Data  []byte `json:"data"`
}

// DeadLetter is a change a connector could not apply (see connectors.Letter).
type DeadLetter struct {
	ID        uint64    `json:"id"`
	Direction string    `json:"direction"`
	Entity    string    `json:"entity"`
	RecordID  string    `json:"record_id"`
	Error     string    `json:"error"`
	At        time.Time `json:"at"`
	Attempts  uint32    `json:"attempts"`
	Replay    bool      `json:"replay"`
}

// State is the control-plane state replicated by Raft.
type State struct {
	// ConfigYAML is the entity configuration; ConfigIndex the Raft index
	// that set it (0: none yet).
	ConfigYAML  string                   `json:"config_yaml"`
	ConfigName  string                   `json:"config_name"`
	ConfigIndex uint64                   `json:"config_index"`
	Connectors  map[string]ConnectorSpec `json:"connectors"`
	Placement   map[string]Placement     `json:"placement"`
	Checkpoints map[string]Checkpoint    `json:"checkpoints"`
	// Removed lists nodes taken out of the cluster for good.
	Removed map[string]bool `json:"removed"`
	// DeadLetters holds each connector's dead-letter queue.
	DeadLetters map[string][]DeadLetter `json:"dead_letters"`
	// Paused lists connectors an operator paused, or that paused themselves.
	Paused map[string]bool `json:"paused"`
	// PauseReasons says why a connector paused itself (schema drift: what
	// changed and what to do); absent for an operator's pause.
	PauseReasons map[string]string `json:"pause_reasons,omitempty"`
}

func newState() State {
	return State{Connectors: map[string]ConnectorSpec{}, Placement: map[string]Placement{},
		Checkpoints: map[string]Checkpoint{}, Removed: map[string]bool{}, DeadLetters: map[string][]DeadLetter{}, Paused: map[string]bool{},
		PauseReasons: map[string]string{}}
}

// command is one Raft log entry.
type command struct {
	Op         string         `json:"op"`
	ConfigYAML string         `json:"config_yaml,omitempty"`
	ConfigName string         `json:"config_name,omitempty"`
	Connector  *ConnectorSpec `json:"connector,omitempty"`
	Name       string         `json:"name,omitempty"`
	Node       string         `json:"node,omitempty"`
	Epoch      uint64         `json:"epoch,omitempty"`
	Data       []byte         `json:"data,omitempty"`
	Letter     *DeadLetter    `json:"letter,omitempty"`
	IDs        []uint64       `json:"ids,omitempty"`
	All        bool           `json:"all,omitempty"`
	Error      string         `json:"error,omitempty"`
}

// fsm applies commands to State.
//
// Contract (hashicorp/raft): Apply is called on one goroutine, in log order,
// on every node, and must be deterministic: it depends only on the state and
// the entry. Raft may re-apply entries after a crash (from the last
// snapshot), so every command is idempotent: setting a value to what it
// already is changes nothing, and a placement or checkpoint names its epoch.
// Reads (Snapshot of state for the API) take mu.
type fsm struct {
	mu       sync.Mutex
	state    State
	onConfig func(yaml, name string)
}

func (f *fsm) Apply(l *raft.Log) any {
	var c command
	if err := json.Unmarshal(l.Data, &c); err != nil {
		return fmt.Errorf("corrupt raft command at index %d: %w", l.Index, err)
	}
	f.mu.Lock()
	res, configChanged := f.apply(&c, l.Index)
	yaml, name := f.state.ConfigYAML, f.state.ConfigName
	f.mu.Unlock()
	if configChanged && f.onConfig != nil {
		f.onConfig(yaml, name)
	}
	return res
}

func (f *fsm) apply(c *command, index uint64) (res any, configChanged bool) {
	s := &f.state
	switch c.Op {
	case "config":
		s.ConfigYAML, s.ConfigName, s.ConfigIndex = c.ConfigYAML, c.ConfigName, index
		return nil, true
	case "connector_put":
		if c.Connector == nil || c.Connector.Name == "" {
			return errors.New("connector spec without a name"), false
		}
		s.Connectors[c.Connector.Name] = *c.Connector
	case "connector_delete":
		delete(s.Connectors, c.Name)
		delete(s.Placement, c.Name)
	case "place":
		cur := s.Placement[c.Name]
		if c.Epoch <= cur.Epoch {
			return fmt.Errorf("%w: placement of %q at epoch %d, current %d", ErrStaleEpoch, c.Name, c.Epoch, cur.Epoch), false
		}
		s.Placement[c.Name] = Placement{Node: c.Node, Epoch: c.Epoch}
	case "checkpoint":
		cur, ok := s.Placement[c.Name]
		if !ok || cur.Epoch != c.Epoch || cur.Node != c.Node {
			return fmt.Errorf("%w: checkpoint of %q by %s at epoch %d, but it is placed on %s at epoch %d",
				ErrStaleEpoch, c.Name, c.Node, c.Epoch, cur.Node, cur.Epoch), false
		}
		s.Checkpoints[c.Name] = Checkpoint{Epoch: c.Epoch, Data: c.Data}
	case "dlq_add":
		if c.Letter == nil {
			return errors.New("dead letter missing"), false
		}
		q := s.DeadLetters[c.Name]
		for i := range q {
			if q[i].Direction == c.Letter.Direction && q[i].Entity == c.Letter.Entity && q[i].RecordID == c.Letter.RecordID {
				// The same record refused again: one entry, counted.
				q[i].Error, q[i].At, q[i].Attempts = c.Letter.Error, c.Letter.At, q[i].Attempts+1
				return nil, false
			}
		}
		l := *c.Letter
		l.ID, l.Attempts, l.Replay = index, 1, false
		s.DeadLetters[c.Name] = append(q, l)
	case "dlq_replay", "dlq_discard":
		q := s.DeadLetters[c.Name]
		sel := map[uint64]bool{}
		for _, id := range c.IDs {
			sel[id] = true
		}
		out := q[:0]
		for _, l := range q {
			hit := c.All || sel[l.ID]
			if c.Op == "dlq_discard" && hit {
				continue
			}
			if hit {
				l.Replay = true
			}
			out = append(out, l)
		}
		s.DeadLetters[c.Name] = out
	case "dlq_result":
		q := s.DeadLetters[c.Name]
		out := q[:0]
		for _, l := range q {
			if len(c.IDs) == 1 && l.ID == c.IDs[0] {
				if c.Error == "" {
					continue // replayed: gone from the queue
				}
				l.Error, l.Replay, l.Attempts = c.Error, false, l.Attempts+1
				if c.Letter != nil {
					l.At = c.Letter.At
				}
			}
			out = append(out, l)
		}
		s.DeadLetters[c.Name] = out
	case "pause":
		// A connector pausing itself names its epoch: a stale owner's
		// pause is refused. An operator's pause names none.
		if cur := s.Placement[c.Name]; c.Epoch != 0 && cur.Epoch != c.Epoch {
			return fmt.Errorf("%w: pause of %q at epoch %d, current %d", ErrStaleEpoch, c.Name, c.Epoch, cur.Epoch), false
		}
		if c.Error != "" {
			s.PauseReasons[c.Name] = c.Error
		} else if !s.Paused[c.Name] {
			delete(s.PauseReasons, c.Name)
		}
		s.Paused[c.Name] = true
	case "resume":
		delete(s.Paused, c.Name)
		delete(s.PauseReasons, c.Name)
	case "remove_node":
		s.Removed[c.Node] = true
	case "readmit_node":
		delete(s.Removed, c.Node)
	default:
		return fmt.Errorf("unknown raft command %q", c.Op), false
	}
	return nil, false
}

// read returns a deep copy of the state.
func (f *fsm) read() State {
	f.mu.Lock()
	defer f.mu.Unlock()
	b, _ := json.Marshal(f.state)
	out := newState()
	_ = json.Unmarshal(b, &out)
	return out
}

func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	b, err := json.Marshal(f.state)
	if err != nil {
		return nil, err
	}
	return snapshot(b), nil
}

func (f *fsm) Restore(r io.ReadCloser) error {
	defer r.Close()
	st := newState()
	if err := json.NewDecoder(r).Decode(&st); err != nil {
		return fmt.Errorf("restore raft snapshot: %w", err)
	}
	f.mu.Lock()
	f.state = st
	yaml, name := st.ConfigYAML, st.ConfigName
	f.mu.Unlock()
	if yaml != "" && f.onConfig != nil {
		f.onConfig(yaml, name)
	}
	return nil
}

type snapshot []byte

func (s snapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := sink.Write(s); err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s snapshot) Release() {}

// connectorNames returns the connector names in order.
func (s *State) connectorNames() []string {
	var out []string
	for n := range s.Connectors {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}
