package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/lattice-sync/lattice/api/lattice/v1"
	"github.com/lattice-sync/lattice/crdt"
	"github.com/lattice-sync/lattice/storage"
)

// snapshotChunkBytes bounds one snapshot message (and so the memory a
// snapshot in flight holds on either side).
const snapshotChunkBytes = 1 << 20

// Snapshot streams this node's records, chunk by chunk, from a consistent
// point; the last chunk carries the vector of edits it contains.
func (n *Node) Snapshot(req *pb.SnapshotRequest, s grpc.ServerStreamingServer[pb.SnapshotChunk]) error {
	snap, err := n.store.Checkpoint(s.Context())
	if err != nil {
		return status.Errorf(codes.Unavailable, "snapshot: %v", err)
	}
	defer snap.Close()
	n.log.Info("sending snapshot", "to", req.GetNode(), "applied", snap.Applied.String())
	chunk := &pb.SnapshotChunk{}
	size := 0
	err = snap.Records(func(entity, id string, state []byte, hist []storage.HistoryEntry) error {
		chunk.Records = append(chunk.Records, &pb.SnapshotRecord{Entity: entity, Id: id, State: state})
		size += len(state) + len(entity) + len(id)
		for _, h := range hist {
			chunk.History = append(chunk.History, &pb.SnapshotVersion{Entity: entity, Id: id, Register: h.Register, Version: h.Version})
			size += len(h.Version)
		}
		if size < snapshotChunkBytes {
			return nil
		}
		if err := s.Send(chunk); err != nil {
			return err
		}
		chunk, size = &pb.SnapshotChunk{}, 0
		return nil
	})
	if err != nil {
		return err
	}
	chunk.Applied = crdt.AppendVV(nil, snap.Applied)
	chunk.Done = true
	return s.Send(chunk)
}

// installSnapshot merges a peer's snapshot into the local store, record by
// record (merge is idempotent, so an interrupted install is simply redone),
// then raises the applied marks to the snapshot's vector.
func (n *Node) installSnapshot(ctx context.Context, peer, addr string) error {
	conn, err := n.conn(addr)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := pb.NewPeerClient(conn).Snapshot(ctx, &pb.SnapshotRequest{Node: n.cfg.NodeID})
	if err != nil {
		return err
	}
	start := time.Now()
	records := 0
	for {
		c, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("snapshot from %s ended without its last chunk", peer)
		}
		if err != nil {
			return err
		}
		hist := map[string][]storage.HistoryEntry{}
		for _, h := range c.GetHistory() {
			k := h.GetEntity() + "\x00" + h.GetId()
			hist[k] = append(hist[k], storage.HistoryEntry{Register: h.GetRegister(), Version: h.GetVersion()})
		}
		batch := make([]storage.MergeRecord, 0, len(c.GetRecords()))
		for _, r := range c.GetRecords() {
			rec, err := crdt.DecodeRecord(r.GetState())
			if err != nil {
				return fmt.Errorf("snapshot from %s: record %s/%s: %w", peer, r.GetEntity(), r.GetId(), err)
			}
			if err := crdt.CheckID(r.GetId()); err != nil {
				return fmt.Errorf("snapshot from %s: %w", peer, err)
			}
			batch = append(batch, storage.MergeRecord{Entity: r.GetEntity(), ID: r.GetId(), State: rec,
				History: hist[r.GetEntity()+"\x00"+r.GetId()]})
		}
		if err := n.store.MergeRecords(ctx, batch); err != nil {
			return err
		}
		records += len(batch)
		if c.GetDone() {
			vv, err := crdt.DecodeVV(c.GetApplied())
			if err != nil {
				return fmt.Errorf("snapshot from %s: applied vector: %w", peer, err)
			}
			if err := n.store.AdvanceApplied(ctx, vv); err != nil {
				return err
			}
			n.log.Info("snapshot installed", "from", peer, "records", records, "took", time.Since(start).Round(time.Millisecond), "applied", vv.String())
			if n.cfg.Metrics != nil {
				n.cfg.Metrics.SnapshotInstalled(records)
			}
			return nil
		}
	}
}

// truncateLoop removes op-log entries every member holds. A member that is
// dead longer than DeadGrace no longer holds truncation back; when it comes
// back it is behind the truncation point and installs a snapshot.
func (n *Node) truncateLoop() {
	defer n.wg.Done()
	if n.cfg.TruncateInterval <= 0 {
		return
	}
	t := time.NewTicker(n.cfg.TruncateInterval)
	defer t.Stop()
	for {
		select {
		case <-n.stop:
			return
		case <-t.C:
		}
		vv, ok := n.truncationPoint()
		if !ok {
			continue
		}
		before := n.store.Truncated()
		if err := n.store.Truncate(context.Background(), vv); err != nil {
			n.log.Warn("truncate op log", "err", err)
			continue
		}
		if n.cfg.Metrics != nil {
			var removed uint64
			for _, e := range n.store.Truncated() {
				removed += e.Seq - before.Get(e.Node)
			}
			n.cfg.Metrics.Truncated(removed)
		}
	}
}

// truncationPoint is the meet of what every member that counts has
// acknowledged, less TruncateKeep entries per origin.
func (n *Node) truncationPoint() (crdt.VV, bool) {
	members := n.members()
	point := n.store.Applied()
	n.mu.Lock()
	defer n.mu.Unlock()
	counted := 0
	for _, m := range members {
		if m.ID == n.cfg.NodeID {
			continue
		}
		if m.State == StateDead || m.State == StateLeft {
			if time.Since(m.Since) > n.cfg.DeadGrace || m.State == StateLeft {
				continue
			}
		}
		acked, ok := n.mu.acked[m.ID]
		if !ok {
			return nil, false // a member we never heard from: keep everything
		}
		point = point.Meet(acked)
		counted++
	}
	if counted == 0 {
		return nil, false
	}
	var out crdt.VV
	for _, e := range point {
		if e.Seq > n.cfg.TruncateKeep {
			out = append(out, crdt.VVEntry{Node: e.Node, Seq: e.Seq - n.cfg.TruncateKeep})
		}
	}
	return out, len(out) > 0
}
