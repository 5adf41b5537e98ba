package storage

import "github.com/cockroachdb/pebble/v2"

// QueueLen reports how many requests wait in the committer's queue. Tests
// use it to stage several requests in one batch deterministically: they
// hold the committer inside a blocking PrepareFunc, queue the requests and
// wait until QueueLen reports all of them before releasing it.
func QueueLen(s *Store) int { return len(s.reqs) }

// SourceEntries counts the source index entries of an entity (sources.go).
func SourceEntries(s *Store, entity string) int {
	prefix := appendEscaped([]byte{prefixSource}, entity)
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: prefixEnd(prefix)})
	if err != nil {
		panic(err)
	}
	defer it.Close()
	n := 0
	for it.First(); it.Valid(); it.Next() {
		n++
	}
	return n
}
