package postgres

import (
	"context"
	"time"
)

// pipeline takes a capture mode's changes, in source order, to durable
// edits. The mode adds each change (already narrowed to what it changed)
// and advances the position after it; the pipeline gathers changes into
// groups, queues each group in the store (Enqueue keeps the order: each
// edit sees the ones before) and lets the mode go on reading while a
// completer goroutine waits for the group to be durable. Groups complete
// in order, so durable is always a position every change before which is
// durable; reap moves it and hands it to the checkpoint.
//
// Every capture mode (logical replication, a trigger's change table,
// polling) feeds one: the gathering policy, back-pressure, the context of
// each edit, the rows being captured (so projection never writes their
// older state back) and dead letters are the same for all. The pipeline is
// used by one goroutine (the mode's), besides its completer.
type pipeline struct {
	c         *Connector
	ctx       context.Context
	inflight  chan *group
	completed chan done
	n         int // groups queued and not yet reaped

	pending   []change
	oldest    time.Time // source time of the oldest pending change
	gathering time.Time // when the oldest pending change was added
	lastFlush time.Time

	pos     position // after the last change or transaction the mode saw
	queued  position // every change up to here is queued
	durable position // every change up to here is durable
}

// done is a group known durable (or failed).
type done struct {
	pos position
	err error
}

// newPipeline starts a pipeline resuming at from; close stops it.
func (c *Connector) newPipeline(ctx context.Context, from position) *pipeline {
	p := &pipeline{c: c, ctx: ctx, inflight: make(chan *group, inflightGroups),
		completed: make(chan done, inflightGroups+1),
		pos:       from, queued: from, durable: from, lastFlush: time.Now()}
	go func() {
		defer close(p.completed)
		for g := range p.inflight {
			p.completed <- done{pos: g.pos, err: c.complete(ctx, g)}
		}
	}()
	return p
}

// close waits for the groups in flight and stops the completer. The groups
// that complete meanwhile move durable on (until one fails), so the final
// checkpoint (Connector.Run) covers them: a restart would otherwise capture
// them again, as new edits.
func (p *pipeline) close() {
	close(p.inflight)
	failed := false
	for d := range p.completed {
		if failed = failed || d.err != nil; !failed {
			p.durable = d.pos
			p.c.prog.setCapture(p.durable)
		}
	}
}

// add gathers one captured change. It carries what the source showed the
// row had seen at this point (lattice's projections into it), and the row
// counts as being captured until the change is durable.
func (p *pipeline) add(ch change) {
	ch.seen = p.c.seenOf(ch.table.Entity, ch.id)
	p.c.capturing(ch.table.Entity, ch.id, 1)
	if len(p.pending) == 0 {
		p.oldest, p.gathering = ch.at, time.Now()
	}
	p.pending = append(p.pending, ch)
}

// advance records the source position after what was added so far.
func (p *pipeline) advance(pos position) { p.pos = pos }

// full reports whether a group should be queued now whatever else holds
// (a large transaction is queued in parts).
func (p *pipeline) full() bool { return len(p.pending) >= groupChanges }

// due reports whether to queue what was gathered at the end of a source
// transaction: at once while the store has little in flight (lowest
// latency); while it is busy, gather (many changes share one fsync) up to
// a size or an age. A busy source never pauses, so a position that moved
// without changes (lattice's own transactions) is queued now and then too.
func (p *pipeline) due() bool {
	n := len(p.pending)
	return (n > 0 && p.n < 2) || n >= groupChanges || (n > 0 && time.Since(p.gathering) > groupAge) ||
		time.Since(p.lastFlush) > 100*time.Millisecond
}

// busy reports whether something is gathered, queued or not yet queued:
// the mode should come back soon (flush or reap).
func (p *pipeline) busy() bool {
	return len(p.pending) > 0 || p.queued.after(p.durable) || p.pos.after(p.queued)
}

// flush queues what was gathered (and the position after it) as a group.
func (p *pipeline) flush() error {
	if len(p.pending) == 0 && !p.pos.after(p.queued) {
		return nil
	}
	g := p.c.enqueue(p.ctx, p.pending)
	g.pos, g.oldest, g.live = p.pos, p.oldest, true
	select {
	case p.inflight <- g:
		p.n++
	case <-p.ctx.Done():
		return p.ctx.Err()
	}
	p.queued, p.pending, p.lastFlush = p.pos, nil, time.Now()
	return nil
}

// reap takes the groups that completed, moving durable on and handing it
// to the next checkpoint; a failed group ends capture with its error.
func (p *pipeline) reap() error {
	for {
		select {
		case d := <-p.completed:
			if d.err != nil {
				return d.err
			}
			p.durable = d.pos
			p.n--
			p.c.prog.setCapture(p.durable)
		default:
			return nil
		}
	}
}
