package storage

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/lattice-sync/lattice/crdt"
)

// Key prefixes, one byte each (see doc.go for the layout).
const (
	prefixMeta    byte = 0x01
	prefixApplied byte = 0x02
	prefixRecord  byte = 0x10
	prefixHistory byte = 0x11
	prefixOpLog   byte = 0x20
)

var (
	keyNodeID  = []byte{prefixMeta, 'n', 'o', 'd', 'e'}
	keyCeiling = []byte{prefixMeta, 'h', 'l', 'c'}
	keySeqCeil = []byte{prefixMeta, 's', 'e', 'q'}
)

// appendEscaped appends s in an order-preserving, self-delimiting form:
// 0x00 becomes 0x00 0xFF and the string ends with 0x00 0x01.
func appendEscaped(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if s[i] == 0 {
			b = append(b, 0, 0xFF)
		} else {
			b = append(b, s[i])
		}
	}
	return append(b, 0, 1)
}

// readEscaped decodes a string written by appendEscaped and returns the rest.
func readEscaped(b []byte) (string, []byte, error) {
	var out []byte
	for i := 0; i < len(b); i++ {
		if b[i] != 0 {
			out = append(out, b[i])
			continue
		}
		if i+1 >= len(b) {
			break
		}
		switch b[i+1] {
		case 0xFF:
			out = append(out, 0)
			i++
		case 1:
			return string(out), b[i+2:], nil
		default:
			return "", nil, errors.New("bad escape in key")
		}
	}
	return "", nil, errors.New("unterminated string in key")
}

func appliedKey(origin string) []byte {
	return appendEscaped([]byte{prefixApplied}, origin)
}

// recordPrefix is the prefix of every record key of an entity.
func recordPrefix(entity string) []byte {
	return appendEscaped([]byte{prefixRecord}, entity)
}

func recordKey(entity, id string) []byte {
	return appendEscaped(recordPrefix(entity), id)
}

func historyPrefix(entity, id, register string) []byte {
	b := appendEscaped([]byte{prefixHistory}, entity)
	b = appendEscaped(b, id)
	return appendEscaped(b, register)
}

func historyKey(entity, id, register string, d crdt.Dot) []byte {
	b := appendEscaped(historyPrefix(entity, id, register), d.Node)
	return binary.BigEndian.AppendUint64(b, d.Seq)
}

func opLogPrefix(origin string) []byte {
	return appendEscaped([]byte{prefixOpLog}, origin)
}

func opLogKey(origin string, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(opLogPrefix(origin), seq)
}

// prefixEnd returns the smallest key greater than every key with prefix p.
func prefixEnd(p []byte) []byte {
	end := append([]byte(nil), p...)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xFF {
			end[i]++
			return end[:i+1]
		}
	}
	return nil
}

func decodeUvarint(b []byte) (uint64, error) {
	x, n := binary.Uvarint(b)
	if n <= 0 || n != len(b) {
		return 0, fmt.Errorf("%w: bad counter", ErrCorrupt)
	}
	return x, nil
}
