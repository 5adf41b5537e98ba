package main

import (
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// offsetClock is a physical clock for the HLC that adds an offset read from
// a file. It exists for the fault harness (jepsen/) only: the hidden agent
// flag --clock-offset-file points it at a file holding a signed number of
// milliseconds ("5000", "-3000"); a missing, empty or unreadable file means
// no offset. The file is re-read at most every refresh interval, so the
// harness can skew, jump and strobe a node's clock while it runs. Never use
// it in production: a node whose clock runs ahead issues timestamps that its
// peers refuse until real time catches up.
type offsetClock struct {
	path    string
	refresh time.Duration
	now     func() time.Time

	mu struct {
		sync.Mutex
		offset int64 // ms
		readAt time.Time
	}
}

func newOffsetClock(path string) *offsetClock {
	return &offsetClock{path: path, refresh: 100 * time.Millisecond, now: time.Now}
}

// Physical returns wall milliseconds since the Unix epoch plus the offset.
func (c *offsetClock) Physical() int64 {
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.mu.readAt.IsZero() || now.Sub(c.mu.readAt) >= c.refresh || now.Before(c.mu.readAt) {
		c.mu.offset = readOffset(c.path)
		c.mu.readAt = now
	}
	return now.UnixMilli() + c.mu.offset
}

func readOffset(path string) int64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	ms, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0
	}
	return ms
}
