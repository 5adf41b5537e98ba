package server

import (
	"errors"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/lattice-sync/lattice/api/lattice/v1"
	"github.com/lattice-sync/lattice/crdt"
	"github.com/lattice-sync/lattice/storage"
)

// watchBuffer is how many edits a watcher may fall behind the live feed
// before it is switched back to reading the op log.
const watchBuffer = 4096

// Watch streams records as they change. The cursor is a version vector of
// per-origin positions (not a local offset), so a client can resume on this
// or any node that still holds the op log from there. Each event carries the
// record's state when the event is sent and the cursor to resume after it.
func (r *Records) Watch(req *pb.WatchRequest, stream grpc.ServerStreamingServer[pb.WatchEvent]) error {
	var filter *crdt.Entity
	if req.GetEntity() != "" {
		ent, err := r.entity(req.GetEntity())
		if err != nil {
			return err
		}
		filter = ent
	}
	var pos crdt.VV
	switch {
	case req.GetCursor() != "":
		vv, err := DecodeContext(req.GetCursor())
		if err != nil {
			return status.Error(codes.InvalidArgument, "malformed cursor: pass the cursor of a watch event verbatim")
		}
		pos = vv
	case req.GetFromStart():
		pos = nil
	default:
		pos = r.store.Applied()
	}
	ctx := stream.Context()
	for {
		sub, err := r.store.Subscribe(watchBuffer)
		if err != nil {
			return toStatus(err)
		}
		// Catch up from the op log; edits committed meanwhile are also in sub
		// and skipped below by position.
		for _, e := range r.store.Applied() {
			var sendErr error
			err := r.store.ScanOpLog(e.Node, pos.Get(e.Node), -1, func(ed *crdt.Edit) bool {
				pos, sendErr = r.send(stream, filter, ed, pos)
				return sendErr == nil
			})
			if err == nil {
				err = sendErr
			}
			if err != nil {
				sub.Close()
				return toStatus(err)
			}
		}
		for done := false; !done; {
			select {
			case <-ctx.Done():
				sub.Close()
				return nil
			case ed, ok := <-sub.C():
				if !ok {
					if !sub.Lagged() {
						return status.Error(codes.Unavailable, "node is shutting down: resume the watch from the last cursor")
					}
					done = true // fell behind: catch up from the op log again
					break
				}
				if ed.Dot.Seq <= pos.Get(ed.Dot.Node) {
					continue
				}
				if pos, err = r.send(stream, filter, ed, pos); err != nil {
					sub.Close()
					return toStatus(err)
				}
			}
		}
	}
}

// send emits the record of ed (if it passes the filter) and returns the advanced position.
func (r *Records) send(stream grpc.ServerStreamingServer[pb.WatchEvent], filter *crdt.Entity, ed *crdt.Edit, pos crdt.VV) (crdt.VV, error) {
	pos = pos.WithDot(ed.Dot)
	if len(ed.Writes) == 0 {
		return pos, nil // a burned sequence number
	}
	ent := filter
	if ent == nil {
		e, ok := r.schema.Load().Entity(ed.Entity)
		if !ok {
			return pos, nil // entity no longer configured
		}
		ent = e
	} else if ed.Entity != ent.Name {
		return pos, nil
	}
	rec, err := r.store.Get(ent.Name, ed.ID)
	if errors.Is(err, storage.ErrNotFound) {
		return pos, nil
	}
	if err != nil {
		return pos, err
	}
	return pos, stream.Send(&pb.WatchEvent{Record: recordToProto(ent, ed.ID, rec), Cursor: EncodeContext(pos)})
}
