package storage

import (
	"bytes"
	"testing"

	"github.com/lattice-sync/lattice/crdt"
)

// FuzzDecodeSourceEntry: the source index decoder never panics, and what
// it accepts re-encodes to bytes that decode to the same entry.
func FuzzDecodeSourceEntry(f *testing.F) {
	f.Add((&sourceEntry{ts: 7, dots: []crdt.Dot{{Node: "n1", Seq: 3}, {Node: "n2", Seq: 1}}}).encode())
	f.Add((&sourceEntry{}).encode())
	f.Add([]byte{0xff})
	f.Add([]byte{1, 1, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := decodeSourceEntry(b)
		if err != nil {
			return
		}
		b1 := e.encode()
		e1, err := decodeSourceEntry(b1)
		if err != nil {
			t.Fatalf("decode(%x) succeeded but its re-encoding %x fails: %v", b, b1, err)
		}
		if b2 := e1.encode(); !bytes.Equal(b1, b2) {
			t.Fatalf("encode(decode(b)) is not a fixed point: %x vs %x", b1, b2)
		}
	})
}
