package storage

// QueueLen reports how many requests wait in the committer's queue. Tests
// use it to stage several requests in one batch deterministically: they
// hold the committer inside a blocking PrepareFunc, queue the requests and
// wait until QueueLen reports all of them before releasing it.
func QueueLen(s *Store) int { return len(s.reqs) }
