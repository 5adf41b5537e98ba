package storage

import (
	"sync"

	"github.com/lattice-sync/lattice/crdt"
)

// Subscription receives every edit this store commits after it was opened,
// in commit order. A subscriber that falls more than its buffer behind is
// ended with Lagged set, so a slow watcher can never grow the node's memory
// without bound; it resumes from its cursor through ScanOpLog.
type Subscription struct {
	store *Store
	ch    chan *crdt.Edit

	mu     sync.Mutex
	closed bool
	lagged bool
}

// Subscribe returns a subscription with room for buffer pending edits.
func (s *Store) Subscribe(buffer int) (*Subscription, error) {
	sub := &Subscription{store: s, ch: make(chan *crdt.Edit, buffer)}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.closed {
		return nil, ErrClosed
	}
	s.mu.subs[sub] = struct{}{}
	return sub, nil
}

// C delivers edits; it is closed when the subscription ends.
func (sub *Subscription) C() <-chan *crdt.Edit { return sub.ch }

// Lagged reports whether the subscription ended because it fell behind.
func (sub *Subscription) Lagged() bool {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	return sub.lagged
}

// Close ends the subscription.
func (sub *Subscription) Close() {
	sub.store.mu.Lock()
	defer sub.store.mu.Unlock()
	delete(sub.store.mu.subs, sub)
	sub.closeLocked()
}

// closeLocked closes the channel once. Called with store.mu held.
func (sub *Subscription) closeLocked() {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	if !sub.closed {
		sub.closed = true
		close(sub.ch)
	}
}

// offer hands edits to the subscriber without blocking. Called with store.mu held.
func (sub *Subscription) offer(edits []*crdt.Edit) {
	sub.mu.Lock()
	closed := sub.closed
	sub.mu.Unlock()
	if closed {
		return
	}
	for _, e := range edits {
		select {
		case sub.ch <- e:
		default:
			sub.mu.Lock()
			sub.lagged = true
			sub.mu.Unlock()
			delete(sub.store.mu.subs, sub)
			sub.closeLocked()
			return
		}
	}
}
