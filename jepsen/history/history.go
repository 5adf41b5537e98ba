// Package history records what a fault-injection run did, as JSON lines: the
// client operations (each an invoke followed by its completion: ok, fail or
// unknown), the node status samples taken during the run, and the fault
// events. Checkers read nothing else: they judge the cluster from what
// clients were told, never from lattice's internals.
//
// # Completion types
//
//   - ok: the server answered success; the operation took effect.
//   - fail: the server answered a definite refusal (InvalidArgument,
//     NotFound, FailedPrecondition, ...): the operation took no effect.
//   - unknown: a timeout, a connection error or a node stopping: the
//     operation may or may not have taken effect. A write whose write
//     concern timed out is unknown too, but the server said it is applied on
//     the node (Applied is set): it must not be lost.
//
// An operation with an invoke and no completion (the run ended first) counts
// as unknown.
package history

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"sync"
	"time"
)

// Types of history lines.
const (
	Invoke  = "invoke"
	OK      = "ok"
	Fail    = "fail"
	Unknown = "unknown"
)

// Operation kinds of the API workload. Other workloads add their own.
const (
	Put    = "put"
	Delete = "delete"
	Get    = "get"
)

// Dot is the id of an edit as the API returns it.
type Dot struct {
	Node string `json:"node"`
	Seq  uint64 `json:"seq"`
}

func (d Dot) String() string { return fmt.Sprintf("%s:%d", d.Node, d.Seq) }

// Op is one line of the operations history: an invoke or a completion.
// Completions repeat ID and carry what the server answered.
type Op struct {
	Type string `json:"type"`
	ID   int64  `json:"id"`
	// Proc is the client process that ran the operation; a process runs
	// one operation at a time.
	Proc int `json:"proc"`
	// F is the operation kind: put, delete, get.
	F string `json:"f"`
	// Time is the wall time of the line in Unix nanoseconds.
	Time int64 `json:"time"`
	// Node is the lattice node the request was sent to (API workload).
	Node   string `json:"node,omitempty"`
	Entity string `json:"entity,omitempty"`
	Key    string `json:"key,omitempty"`
	// Fields are the values a put writes (invoke) or a get read (ok); a get
	// shows a null field as "".
	Fields map[string]string `json:"fields,omitempty"`
	Origin string            `json:"origin,omitempty"`
	Acks   int               `json:"acks,omitempty"`
	// Context is the context token a write passes (invoke) or a read
	// returned (ok); ContextVV is the token decoded.
	Context   string            `json:"context,omitempty"`
	ContextVV map[string]uint64 `json:"context_vv,omitempty"`
	// ReadOp is the get whose context a write passes; ReadNode its node.
	ReadOp   int64  `json:"read_op,omitempty"`
	ReadNode string `json:"read_node,omitempty"`
	// Dot and HLC are the edit's id and timestamp (ok writes; Dot also on
	// unknown writes the server said are applied).
	Dot *Dot   `json:"dot,omitempty"`
	HLC uint64 `json:"hlc,omitempty"`
	// Deleted is what a get read.
	Deleted bool `json:"deleted,omitempty"`
	// Live are the live versions a get showed, per field: what the reader
	// saw (each with the context of what its own writer had seen).
	Live map[string][]Live `json:"live,omitempty"`
	// DB is the database a PostgreSQL workload operation ran in.
	DB string `json:"db,omitempty"`
	// Before are the values a PostgreSQL update's transaction read (SELECT
	// ... FOR UPDATE) in the fields it then wrote, before writing (ok
	// updates; a NULL column is absent): what the writer had seen.
	Before map[string]string `json:"before,omitempty"`
	// Applied marks an unknown write the server said it applied locally
	// (the write concern was not met in time).
	Applied bool   `json:"applied,omitempty"`
	Code    string `json:"code,omitempty"`
	Error   string `json:"error,omitempty"`
}

// Live is one live version a read showed.
type Live struct {
	Dot Dot               `json:"dot"`
	Ctx map[string]uint64 `json:"ctx,omitempty"`
}

// WallTime returns Time as a time.Time.
func (o *Op) WallTime() time.Time { return time.Unix(0, o.Time) }

// Sample is one status reading of a node taken during the run.
type Sample struct {
	Node string `json:"node"`
	// Invoke and Complete bracket the request (Unix ns).
	Invoke   int64 `json:"invoke"`
	Complete int64 `json:"complete"`
	// HLC is the node's clock (its greatest timestamp issued or received).
	HLC     uint64            `json:"hlc,omitempty"`
	Applied map[string]uint64 `json:"applied,omitempty"`
	Error   string            `json:"error,omitempty"`
}

// Event is a fault or harness event: a fault's start and stop, a clock
// offset change, the final heal.
type Event struct {
	Time int64  `json:"time"`
	Kind string `json:"kind"` // "start", "stop", "clock", "heal", "error"
	// Fault is the fault's registry name; Desc what the injection did.
	Fault   string   `json:"fault,omitempty"`
	Desc    string   `json:"desc,omitempty"`
	Step    int      `json:"step"`
	Targets []string `json:"targets,omitempty"`
	// OffsetMS is the clock offset set on Targets (kind "clock").
	OffsetMS int64  `json:"offset_ms,omitempty"`
	Error    string `json:"error,omitempty"`
}

// Recorder appends history lines to files in a directory and keeps them in
// memory for the checkers. It is safe for concurrent use.
type Recorder struct {
	mu      sync.Mutex
	files   []*os.File
	ops     *json.Encoder
	samples *json.Encoder
	events  *json.Encoder
	bufs    []*bufio.Writer
	err     error

	Ops     []Op
	Samples []Sample
	Events  []Event
}

// File names in a run directory.
const (
	OpsFile     = "history.jsonl"
	SamplesFile = "samples.jsonl"
	EventsFile  = "events.jsonl"
)

// NewRecorder creates the history files in dir.
func NewRecorder(dir string) (*Recorder, error) {
	r := &Recorder{}
	enc := func(name string) (*json.Encoder, error) {
		f, err := os.Create(dir + "/" + name)
		if err != nil {
			return nil, fmt.Errorf("create history file: %w", err)
		}
		w := bufio.NewWriterSize(f, 64<<10)
		r.files = append(r.files, f)
		r.bufs = append(r.bufs, w)
		return json.NewEncoder(w), nil
	}
	var err error
	if r.ops, err = enc(OpsFile); err != nil {
		return nil, err
	}
	if r.samples, err = enc(SamplesFile); err != nil {
		r.Close()
		return nil, err
	}
	if r.events, err = enc(EventsFile); err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

func (r *Recorder) write(e *json.Encoder, v any) {
	if e == nil || r.err != nil {
		return
	}
	r.err = e.Encode(v)
}

// Op records one line of the operations history.
func (r *Recorder) Op(o Op) {
	if o.Time == 0 {
		o.Time = time.Now().UnixNano()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Ops = append(r.Ops, o)
	r.write(r.ops, &o)
}

// Sample records a status sample.
func (r *Recorder) Sample(s Sample) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Samples = append(r.Samples, s)
	r.write(r.samples, &s)
}

// Event records a fault or harness event.
func (r *Recorder) Event(e Event) {
	if e.Time == 0 {
		e.Time = time.Now().UnixNano()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Events = append(r.Events, e)
	r.write(r.events, &e)
}

// Snapshot returns copies of what was recorded so far.
func (r *Recorder) Snapshot() (ops []Op, samples []Sample, events []Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Op(nil), r.Ops...), append([]Sample(nil), r.Samples...), append([]Event(nil), r.Events...)
}

// Close flushes and closes the files and returns the first write error.
func (r *Recorder) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, f := range r.files {
		if err := r.bufs[i].Flush(); err != nil && r.err == nil {
			r.err = err
		}
		if err := f.Close(); err != nil && r.err == nil {
			r.err = err
		}
	}
	r.files, r.bufs, r.ops, r.samples, r.events = nil, nil, nil, nil, nil
	return r.err
}

// ReadOps parses an operations history written by a Recorder.
func ReadOps(rd io.Reader) ([]Op, error) {
	var out []Op
	dec := json.NewDecoder(rd)
	for {
		var o Op
		if err := dec.Decode(&o); err == io.EOF {
			return out, nil
		} else if err != nil {
			return out, fmt.Errorf("history line %d: %w", len(out)+1, err)
		}
		out = append(out, o)
	}
}

// Pair is one operation: its invoke and its completion (nil when the run
// ended before it completed: treat it as unknown).
type Pair struct {
	Invoke   *Op
	Complete *Op
}

// Status is the completion type; an operation that never completed is Unknown.
func (p *Pair) Status() string {
	if p.Complete == nil {
		return Unknown
	}
	return p.Complete.Type
}

// End is when the operation completed, or never (math.MaxInt64) when it did not.
func (p *Pair) End() int64 {
	if p.Complete == nil {
		return 1<<63 - 1
	}
	return p.Complete.Time
}

// Pairs matches invokes with completions, in invoke order.
func Pairs(ops []Op) []Pair {
	idx := map[int64]int{}
	var out []Pair
	for i := range ops {
		o := &ops[i]
		if o.Type == Invoke {
			idx[o.ID] = len(out)
			out = append(out, Pair{Invoke: o})
			continue
		}
		if j, ok := idx[o.ID]; ok {
			out[j].Complete = o
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Invoke.Time < out[j].Invoke.Time })
	return out
}
