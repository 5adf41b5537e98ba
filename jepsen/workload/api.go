package workload

import (
	"context"
	"fmt"
	"math/rand/v2"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/lattice-sync/lattice/api/lattice/v1"
	"github.com/lattice-sync/lattice/api/server"
	"github.com/lattice-sync/lattice/jepsen/history"
)

// APIConfig configures the API workload.
type APIConfig struct {
	// Seed fixes every client's choices (operation, key, fields, node,
	// write concern); timing still varies from run to run.
	Seed uint64
	// Clients is the number of concurrent client processes (default 16).
	Clients int
	// Rate is the total operations per second (default 150).
	Rate float64
	// Entity is the entity written; Keys the number of record ids (k0..).
	Entity string
	Keys   int
	// Fields are the fields a put picks from.
	Fields []string
	// Origins are the origins a write picks from (default "api").
	Origins []string
	// Timeout bounds each request (default 3 s): past it, the operation is
	// unknown.
	Timeout time.Duration
	// CrossNode is the share of read-context writes sent to another node
	// than the read (default 0.2). Such a write's context is clipped to
	// what that node has applied: see crdt/doc.go, "HAZARD".
	CrossNode float64
	// MaxAcks caps the write concern (default: the number of nodes).
	MaxAcks int
}

// API is workload (a): puts and deletes of random fields of a small key
// space on random nodes, with and without read contexts, with write
// concerns 1..N, and the gets that fetch the contexts.
//
// Every value written is unique ("<op id>.<field>"), so a checker can tell
// which operation wrote any version it finds in a field's history.
type API struct {
	cfg APIConfig
	ids atomic.Int64
}

// NewAPI returns the API workload with defaults filled in.
func NewAPI(cfg APIConfig) *API {
	if cfg.Clients <= 0 {
		cfg.Clients = 16
	}
	if cfg.Rate <= 0 {
		cfg.Rate = 150
	}
	if cfg.Keys <= 0 {
		cfg.Keys = 8
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 3 * time.Second
	}
	if cfg.CrossNode < 0 {
		cfg.CrossNode = 0
	}
	if len(cfg.Origins) == 0 {
		cfg.Origins = []string{"api"}
	}
	return &API{cfg: cfg}
}

// Name implements Workload.
func (w *API) Name() string { return "api" }

// Value is the value the API workload writes into field by operation id.
func Value(id int64, field string) string { return strconv.FormatInt(id, 10) + "." + field }

// Run implements Workload.
func (w *API) Run(ctx context.Context, env Env) error {
	if len(env.Nodes) == 0 || len(w.cfg.Fields) == 0 || w.cfg.Entity == "" {
		return fmt.Errorf("api workload: needs nodes, an entity and fields")
	}
	maxAcks := w.cfg.MaxAcks
	if maxAcks <= 0 || maxAcks > len(env.Nodes) {
		maxAcks = len(env.Nodes)
	}
	pace(ctx, w.cfg.Clients, w.cfg.Rate, func(p int) (func(), func()) {
		c := &client{w: w, env: env, proc: p, maxAcks: maxAcks,
			rng: rand.New(rand.NewPCG(w.cfg.Seed, uint64(p)+1))}
		return func() { c.step(ctx) }, nil
	})
	return nil
}

type client struct {
	w       *API
	env     Env
	proc    int
	rng     *rand.Rand
	maxAcks int
}

func (c *client) node() Node { return c.env.Nodes[c.rng.IntN(len(c.env.Nodes))] }

func (c *client) other(n Node) Node {
	if len(c.env.Nodes) < 2 {
		return n
	}
	for {
		if o := c.node(); o.ID != n.ID {
			return o
		}
	}
}

func (c *client) acks() int {
	// Mostly 1: a write concern that cannot be met (a partition, a dead
	// node) holds its client until the timeout, and clients are closed
	// loops: too many of them and traffic stops during every fault.
	x := c.rng.IntN(100)
	switch {
	case x < 75 || c.maxAcks < 2:
		return 1
	case x < 92 || c.maxAcks < 3:
		return 2
	}
	return c.maxAcks
}

// step draws one operation (all random choices first, so the stream of
// choices depends on the seed only) and runs it.
func (c *client) step(ctx context.Context) {
	cfg := &c.w.cfg
	key := "k" + strconv.Itoa(c.rng.IntN(cfg.Keys))
	nd := c.node()
	target := nd
	cross := c.rng.Float64() < cfg.CrossNode
	if cross {
		target = c.other(nd)
	}
	acks := c.acks()
	origin := cfg.Origins[c.rng.IntN(len(cfg.Origins))]
	n := 1 + c.rng.IntN(min(3, len(cfg.Fields)))
	fields := make([]string, 0, n)
	for _, i := range c.rng.Perm(len(cfg.Fields))[:n] {
		fields = append(fields, cfg.Fields[i])
	}
	sort.Strings(fields)
	switch x := c.rng.IntN(100); {
	case x < 45:
		c.put(ctx, nd, key, fields, origin, acks, nil)
	case x < 70:
		// A read that found no record has no context to pass: the put
		// then goes without one.
		if r, missing := c.get(ctx, nd, key); r != nil || missing {
			c.put(ctx, target, key, fields, origin, acks, r)
		}
	case x < 78:
		c.del(ctx, nd, key, origin, acks, nil)
	case x < 83:
		if r, _ := c.get(ctx, nd, key); r != nil {
			c.del(ctx, target, key, origin, acks, r)
		}
	default:
		c.get(ctx, nd, key)
	}
}

// read is a completed get whose context a write passes back.
type read struct {
	op   *history.Op
	node string
}

func (c *client) invoke(o history.Op) history.Op {
	o.Type, o.ID, o.Proc, o.Entity = history.Invoke, c.w.ids.Add(1), c.proc, c.w.cfg.Entity
	o.Time = 0
	c.env.Recorder.Op(o)
	return o
}

func (c *client) complete(inv history.Op, o history.Op) {
	o.ID, o.Proc, o.F, o.Node, o.Key = inv.ID, inv.Proc, inv.F, inv.Node, inv.Key
	c.env.Recorder.Op(o)
}

// rpcCtx is a request's context. Requests run on a context of their own:
// when the run's context ends, the request in flight still gets its answer
// (or its timeout), so the history says what became of it.
func (c *client) rpcCtx(context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), c.w.cfg.Timeout)
}

// get reads a record; missing says the node answered that it does not exist.
func (c *client) get(ctx context.Context, nd Node, key string) (r *read, missing bool) {
	inv := c.invoke(history.Op{F: history.Get, Node: nd.ID, Key: key})
	rctx, cancel := c.rpcCtx(ctx)
	rec, err := nd.Records.Get(rctx, &pb.GetRequest{Entity: c.w.cfg.Entity, Id: key})
	cancel()
	if err != nil {
		c.complete(inv, classify(err))
		return nil, status.Code(err) == codes.NotFound
	}
	out := history.Op{Type: history.OK, Deleted: rec.GetDeleted(), Context: rec.GetContext(), ContextVV: decode(rec.GetContext()),
		Fields: map[string]string{}, Live: map[string][]history.Live{}}
	for _, f := range rec.GetFields() {
		if len(f.GetLive()) == 0 {
			continue
		}
		out.Fields[f.GetName()] = f.GetValue().GetStringValue()
		for _, v := range f.GetLive() {
			out.Live[f.GetName()] = append(out.Live[f.GetName()], history.Live{
				Dot: history.Dot{Node: v.GetDot().GetNode(), Seq: v.GetDot().GetSeq()}, Ctx: v.GetContext().GetEntries()})
		}
	}
	c.complete(inv, out)
	out.ID = inv.ID
	return &read{op: &out, node: nd.ID}, false
}

func (c *client) put(ctx context.Context, nd Node, key string, fields []string, origin string, acks int, r *read) {
	inv := history.Op{F: history.Put, Node: nd.ID, Key: key, Origin: origin, Acks: acks, Fields: map[string]string{}}
	if r != nil {
		inv.Context, inv.ContextVV, inv.ReadNode = r.op.Context, r.op.ContextVV, r.node
		inv.ReadOp = r.op.ID
	}
	// The op id is known only once invoked: values are filled in first
	// from the id the invoke will get.
	id := c.w.ids.Add(1)
	for _, f := range fields {
		inv.Fields[f] = Value(id, f)
	}
	inv.Type, inv.ID, inv.Proc, inv.Entity = history.Invoke, id, c.proc, c.w.cfg.Entity
	c.env.Recorder.Op(inv)
	req := &pb.PutRequest{Entity: c.w.cfg.Entity, Id: key, Context: inv.Context, Origin: origin, Acks: uint32(acks),
		Fields: map[string]*pb.Value{}}
	for f, v := range inv.Fields {
		req.Fields[f] = &pb.Value{Kind: &pb.Value_StringValue{StringValue: v}}
	}
	rctx, cancel := c.rpcCtx(ctx)
	resp, err := nd.Records.Put(rctx, req)
	cancel()
	c.written(inv, resp, err)
}

func (c *client) del(ctx context.Context, nd Node, key, origin string, acks int, r *read) {
	o := history.Op{F: history.Delete, Node: nd.ID, Key: key, Origin: origin, Acks: acks}
	if r != nil {
		o.Context, o.ContextVV, o.ReadNode, o.ReadOp = r.op.Context, r.op.ContextVV, r.node, r.op.ID
	}
	inv := c.invoke(o)
	rctx, cancel := c.rpcCtx(ctx)
	resp, err := nd.Records.Delete(rctx, &pb.DeleteRequest{Entity: c.w.cfg.Entity, Id: key, Context: inv.Context,
		Origin: origin, Acks: uint32(acks)})
	cancel()
	c.written(inv, resp, err)
}

func (c *client) written(inv history.Op, resp *pb.PutResponse, err error) {
	if err != nil {
		c.complete(inv, classify(err))
		return
	}
	c.complete(inv, history.Op{Type: history.OK, Dot: &history.Dot{Node: resp.GetDot().GetNode(), Seq: resp.GetDot().GetSeq()},
		HLC: resp.GetHlc()})
}

// appliedRE finds the dot in the write-concern timeout message ("edit n2:45
// is applied on this node and will still replicate").
var appliedRE = regexp.MustCompile(`edit ([A-Za-z0-9._-]+):([0-9]+) is applied on this node`)

// classify turns an error into a fail (a definite refusal: nothing
// happened) or an unknown (it may have happened).
func classify(err error) history.Op {
	st, _ := status.FromError(err)
	o := history.Op{Type: history.Unknown, Code: st.Code().String(), Error: st.Message()}
	switch st.Code() {
	case codes.InvalidArgument, codes.NotFound, codes.FailedPrecondition, codes.AlreadyExists,
		codes.PermissionDenied, codes.Unauthenticated, codes.Unimplemented, codes.OutOfRange:
		o.Type = history.Fail
	case codes.DeadlineExceeded:
		if m := appliedRE.FindStringSubmatch(st.Message()); m != nil {
			seq, _ := strconv.ParseUint(m[2], 10, 64)
			o.Applied, o.Dot = true, &history.Dot{Node: m[1], Seq: seq}
		}
	}
	if len(o.Error) > 300 {
		o.Error = o.Error[:300] + "..."
	}
	return o
}

// decode reads a context token into a version vector (nil if malformed:
// the checker then treats the read as having seen nothing).
func decode(token string) map[string]uint64 {
	if token == "" {
		return nil
	}
	vv, err := server.DecodeContext(token)
	if err != nil {
		return nil
	}
	m := vv.Map()
	if len(m) == 0 {
		return nil
	}
	return m
}

// ValueOp returns the operation id encoded in a value the workload wrote
// and the field it was written to (ok false for any other value).
func ValueOp(v string) (id int64, field string, ok bool) {
	i := strings.IndexByte(v, '.')
	if i <= 0 {
		return 0, "", false
	}
	id, err := strconv.ParseInt(v[:i], 10, 64)
	if err != nil {
		return 0, "", false
	}
	return id, v[i+1:], true
}
