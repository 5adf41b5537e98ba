package crdt

import (
	"encoding/binary"
	"runtime"
	"testing"
)

func TestZZAlloc(t *testing.T) {
	for _, k := range []Kind{KindTuple} {
		in := []byte{byte(k)}
		in = binary.AppendUvarint(in, 1<<20)
		in = append(in, make([]byte, 1<<20)...)
		in[len(in)-1] = 0xff
		var m0, m1 runtime.MemStats
		runtime.ReadMemStats(&m0)
		_, err := DecodeValue(in)
		runtime.ReadMemStats(&m1)
		t.Logf("input %d bytes, allocated %d bytes, err %v", len(in), m1.TotalAlloc-m0.TotalAlloc, err)
	}
	in := []byte{1, 0}
	in = binary.AppendUvarint(in, 1<<19)
	in = append(in, make([]byte, 1<<20)...)
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	_, err := DecodeRecord(in)
	runtime.ReadMemStats(&m1)
	t.Logf("record: input %d bytes, allocated %d bytes, err %v", len(in), m1.TotalAlloc-m0.TotalAlloc, err)
}
