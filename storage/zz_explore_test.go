package storage_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/lattice-sync/lattice/storage"
)

type failFS struct {
	vfs.FS
	fail atomic.Bool
}

type failFile struct {
	vfs.File
	fs *failFS
}

func (f failFile) SyncData() error {
	if f.fs.fail.Load() {
		return errors.New("injected sync failure")
	}
	return f.File.SyncData()
}
func (f failFile) Sync() error {
	if f.fs.fail.Load() {
		return errors.New("injected sync failure")
	}
	return f.File.Sync()
}
func (g *failFS) Create(name string, c vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := g.FS.Create(name, c)
	if err == nil && len(name) > 4 && name[len(name)-4:] == ".log" {
		return failFile{f, g}, nil
	}
	return f, err
}

func TestExploreSyncFailure(t *testing.T) {
	ent := testEntity()
	ffs := &failFS{FS: vfs.NewMem()}
	s := openStore(t, "db", "n1", newPhysClock(t0), func(c *storage.Config) { c.FS = ffs })
	put(t, s, ent, "r", str("ok"))
	ffs.fail.Store(true)
	for i := 0; i < 3; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		res, err := s.Write(ctx, ent.Name, "r", "api", putFn(ent, str("x")))
		cancel()
		t.Logf("write %d: %v %v", i, res, err)
		if i == 0 {
			ffs.fail.Store(false)
		}
		rec, err := s.Get(ent.Name, "r")
		t.Logf("get: %v %v applied %v", rec, err, s.Applied())
	}
}
