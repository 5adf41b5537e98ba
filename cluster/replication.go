package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/lattice-sync/lattice/api/lattice/v1"
	"github.com/lattice-sync/lattice/crdt"
	"github.com/lattice-sync/lattice/storage"
)

// Limits of the replication stream.
const (
	// maxBatchEdits caps the edits in one ReplicateDown message.
	maxBatchEdits = 512
	// subBuffer is how many edits the serving side buffers for one stream
	// before it falls back to reading its op log (memory stays bounded no
	// matter how slow the receiver is).
	subBuffer = 4096
	// heartbeat is how often an idle stream carries the applied vectors.
	heartbeat = 200 * time.Millisecond
)

// puller receives edits from one peer and acknowledges what it applied.
type puller struct {
	n      *Node
	peer   string
	addr   string
	cancel context.CancelFunc
}

func (p *puller) run(ctx context.Context) {
	defer p.n.wg.Done()
	log := p.n.log.With("peer", p.peer)
	backoff := 50 * time.Millisecond
	for ctx.Err() == nil {
		err := p.stream(ctx)
		if ctx.Err() != nil {
			return
		}
		switch {
		case status.Code(err) == codes.FailedPrecondition && errors.Is(statusErr(err), storage.ErrTruncated):
			log.Info("behind the peer's op-log truncation: installing a snapshot", "err", err)
			if err := p.n.installSnapshot(ctx, p.peer, p.addr); err != nil {
				log.Warn("snapshot install failed; will retry", "err", err)
			} else {
				backoff = 50 * time.Millisecond
				continue
			}
		case errors.Is(err, crdt.ErrClockOffset):
			// An operator must see why: the counter alone does not say.
			log.Warn("refused the peer's edits: its clock runs beyond max-offset ahead of ours (check NTP on it); retrying", "err", err)
		case err != nil:
			log.Debug("replication stream ended", "err", err)
		}
		// Capped exponential backoff with jitter.
		d := backoff/2 + time.Duration(rand.Int64N(int64(backoff)))
		select {
		case <-ctx.Done():
			return
		case <-time.After(d):
		}
		if backoff *= 2; backoff > 2*time.Second {
			backoff = 2 * time.Second
		}
	}
}

// statusErr maps a peer's status message back to storage sentinels.
func statusErr(err error) error {
	if st, ok := status.FromError(err); ok && st.Code() == codes.FailedPrecondition {
		return storage.ErrTruncated
	}
	return err
}

// stream runs one Replicate call until it fails.
func (p *puller) stream(ctx context.Context) error {
	conn, err := p.n.conn(p.addr)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := pb.NewPeerClient(conn).Replicate(ctx)
	if err != nil {
		return err
	}
	store := p.n.store
	if err := s.Send(&pb.ReplicateUp{Node: p.n.cfg.NodeID, Applied: crdt.AppendVV(nil, store.Applied())}); err != nil {
		return err
	}
	// Acks flow on their own goroutine: after each applied batch and on a timer.
	ackNow := make(chan struct{}, 1)
	ackErr := make(chan error, 1)
	go func() {
		t := time.NewTicker(heartbeat)
		defer t.Stop()
		var last crdt.VV
		for {
			select {
			case <-ctx.Done():
				ackErr <- nil
				return
			case <-t.C:
			case <-ackNow:
			}
			cur := store.Applied()
			if cur.Equal(last) {
				continue
			}
			if err := s.Send(&pb.ReplicateUp{Node: p.n.cfg.NodeID, Applied: crdt.AppendVV(nil, cur)}); err != nil {
				ackErr <- err
				return
			}
			last = cur
		}
	}()
	// Messages are applied as a pipeline: this loop decodes each one and
	// queues its edits in the store in stream order, while the applier
	// goroutine waits for them to be durable, counts repairs and triggers
	// the ack. The next message is queued while the last one is syncing.
	type queued struct {
		edits   []*crdt.Edit
		pending *storage.Pending
	}
	work := make(chan queued, 16)
	applyErr := make(chan error, 1)
	applierDone := make(chan struct{})
	go func() {
		defer close(applierDone)
		for q := range work {
			res, errs := q.pending.Wait()
			repaired := 0
			for i, r := range res {
				if errs[i] == nil && r != nil && !r.Duplicate && q.edits[i].Dot.Node != p.peer {
					repaired++ // another origin's edit, filled in by this peer
				}
			}
			if repaired > 0 && p.n.cfg.Metrics != nil {
				p.n.cfg.Metrics.Repaired(repaired)
			}
			for i, err := range errs {
				if err == nil {
					continue
				}
				if errors.Is(err, crdt.ErrClockOffset) {
					p.n.countRefusal(q.edits[i].Dot.Node)
				}
				// Out of order or refused: restart from what is applied; the
				// edit stays in the peer's log and is retried after backoff.
				select {
				case applyErr <- fmt.Errorf("apply %s from %s: %w", q.edits[i].Dot, p.peer, err):
				default:
				}
				cancel()
				break
			}
			select {
			case ackNow <- struct{}{}:
			default:
			}
		}
	}()
	defer func() {
		close(work)
		<-applierDone
	}()
	for {
		msg, err := s.Recv()
		if err != nil {
			cancel()
			select {
			case aerr := <-applyErr:
				return aerr
			default:
			}
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if vv, err := crdt.DecodeVV(msg.GetApplied()); err == nil && len(msg.GetApplied()) > 0 {
			p.n.setPeerApplied(p.peer, vv)
		}
		if len(msg.GetEdits()) == 0 {
			continue
		}
		edits := make([]*crdt.Edit, 0, len(msg.GetEdits()))
		for _, b := range msg.GetEdits() {
			e, err := crdt.DecodeEdit(b)
			if err != nil {
				return fmt.Errorf("peer %s sent a corrupt edit: %w", p.peer, err)
			}
			edits = append(edits, e)
		}
		select {
		case work <- queued{edits: edits, pending: store.EnqueueRemote(ctx, edits)}:
		case aerr := <-applyErr:
			return aerr
		}
	}
}

func (n *Node) countRefusal(origin string) {
	n.mu.Lock()
	n.mu.refused[origin]++
	n.mu.Unlock()
	if n.cfg.Metrics != nil {
		n.cfg.Metrics.ClockRefused(origin)
	}
}

func (n *Node) setPeerApplied(peer string, vv crdt.VV) {
	n.mu.Lock()
	n.mu.peerApp[peer] = vv
	n.mu.Unlock()
}

// Replicate serves one peer's replication stream (see peer.proto).
func (n *Node) Replicate(s grpc.BidiStreamingServer[pb.ReplicateUp, pb.ReplicateDown]) error {
	hello, err := s.Recv()
	if err != nil {
		return err
	}
	peer := hello.GetNode()
	if peer == "" || peer == n.cfg.NodeID {
		return status.Errorf(codes.InvalidArgument, "replicate: bad node id %q", peer)
	}
	pos, err := crdt.DecodeVV(hello.GetApplied())
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "replicate: applied vector: %v", err)
	}
	n.ack(peer, pos)
	ctx := s.Context()
	// Acks arrive on their own goroutine.
	recvErr := make(chan error, 1)
	go func() {
		for {
			up, err := s.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			vv, err := crdt.DecodeVV(up.GetApplied())
			if err != nil {
				recvErr <- status.Errorf(codes.InvalidArgument, "replicate: applied vector: %v", err)
				return
			}
			n.ack(peer, vv)
		}
	}()
	for {
		sub, err := n.store.Subscribe(subBuffer)
		if err != nil {
			return status.Error(codes.Unavailable, err.Error())
		}
		pos, err = n.catchUp(s, pos)
		if err != nil {
			sub.Close()
			if errors.Is(err, storage.ErrTruncated) {
				return status.Error(codes.FailedPrecondition, err.Error())
			}
			return err
		}
		pos, err = n.tail(ctx, s, sub, pos, recvErr)
		sub.Close()
		if err != nil || ctx.Err() != nil {
			return err
		}
		// Anti-entropy round (or the subscriber fell behind): send, from the
		// op log, whatever the peer's acks say it still lacks, of any origin.
		n.mu.Lock()
		pos = pos.Join(n.mu.acked[peer])
		n.mu.Unlock()
	}
}

// catchUp sends every durable op-log entry beyond pos, origin by origin.
func (n *Node) catchUp(s grpc.BidiStreamingServer[pb.ReplicateUp, pb.ReplicateDown], pos crdt.VV) (crdt.VV, error) {
	for _, e := range n.store.Applied() {
		for pos.Get(e.Node) < e.Seq {
			var batch [][]byte
			last := pos.Get(e.Node)
			err := n.store.ScanOpLog(e.Node, last, maxBatchEdits, func(ed *crdt.Edit) bool {
				batch = append(batch, crdt.AppendEdit(nil, ed))
				last = ed.Dot.Seq
				return true
			})
			if err != nil {
				return pos, err
			}
			if len(batch) == 0 {
				break
			}
			if err := s.Send(&pb.ReplicateDown{Edits: batch, Applied: crdt.AppendVV(nil, n.store.Applied())}); err != nil {
				return pos, err
			}
			pos = pos.WithDot(crdt.Dot{Node: e.Node, Seq: last})
		}
	}
	return pos, nil
}

// antiEntropy is how often a replication stream returns to its catch-up
// pass: live, a stream carries only the serving node's own edits (each
// origin reaches every peer directly); the catch-up pass fills in edits of
// other origins a peer lacks, e.g. from an origin that is down or cut off.
const antiEntropy = time.Second

// tail streams the serving node's own edits as they commit until the
// anti-entropy timer fires or the subscriber lags (nil error: the caller
// catches up from the op log) or the stream fails.
func (n *Node) tail(ctx context.Context, s grpc.BidiStreamingServer[pb.ReplicateUp, pb.ReplicateDown], sub *storage.Subscription, pos crdt.VV, recvErr chan error) (crdt.VV, error) {
	t := time.NewTicker(heartbeat)
	defer t.Stop()
	ae := time.NewTimer(antiEntropy)
	defer ae.Stop()
	for {
		var batch [][]byte
		select {
		case <-ctx.Done():
			return pos, nil
		case <-ae.C:
			return pos, nil
		case <-n.stop:
			return pos, status.Error(codes.Unavailable, "node is stopping")
		case err := <-recvErr:
			if errors.Is(err, io.EOF) {
				return pos, nil
			}
			return pos, err
		case <-t.C:
			if err := s.Send(&pb.ReplicateDown{Applied: crdt.AppendVV(nil, n.store.Applied())}); err != nil {
				return pos, err
			}
			continue
		case ed, ok := <-sub.C():
			if !ok {
				if sub.Lagged() {
					return pos, nil
				}
				return pos, status.Error(codes.Unavailable, "node is stopping")
			}
			// Drain what is ready into one message.
			for {
				if ed.Dot.Node == n.cfg.NodeID && ed.Dot.Seq > pos.Get(ed.Dot.Node) {
					if ed.Dot.Seq != pos.Get(ed.Dot.Node)+1 {
						// A gap means the subscription started after edits the
						// catch-up scan missed: read them from the log.
						return pos, nil
					}
					batch = append(batch, crdt.AppendEdit(nil, ed))
					pos = pos.WithDot(ed.Dot)
				}
				if len(batch) >= maxBatchEdits {
					break
				}
				select {
				case ed, ok = <-sub.C():
					if !ok {
						ed = nil
					}
				default:
					ed = nil
				}
				if ed == nil {
					break
				}
			}
		}
		if len(batch) > 0 {
			if err := s.Send(&pb.ReplicateDown{Edits: batch, Applied: crdt.AppendVV(nil, n.store.Applied())}); err != nil {
				return pos, err
			}
		}
	}
}

// ack records what a peer has applied and wakes write-concern waiters.
func (n *Node) ack(peer string, vv crdt.VV) {
	n.mu.Lock()
	n.mu.acked[peer] = n.mu.acked[peer].Join(vv)
	n.mu.ackAt[peer] = time.Now()
	n.mu.Unlock()
	n.ackCond.Broadcast()
}

// WaitAcks returns once k nodes, this one included, hold the edit with dot
// durably (storage.Store.Write already made it durable here). It implements
// the API's write concern.
func (n *Node) WaitAcks(ctx context.Context, dot crdt.Dot, k int) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, n.cfg.AckTimeout)
		defer cancel()
	}
	stop := context.AfterFunc(ctx, func() {
		n.mu.Lock()
		n.ackCond.Broadcast()
		n.mu.Unlock()
	})
	defer stop()
	n.mu.Lock()
	defer n.mu.Unlock()
	for {
		have := 1
		for _, vv := range n.mu.acked {
			if vv.Covers(dot) {
				have++
			}
		}
		if have >= k {
			return nil
		}
		select {
		case <-n.stop:
			return errors.New("node is stopping")
		default:
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("%d of %d nodes hold it: %w", have, k, err)
		}
		n.ackCond.Wait()
	}
}
