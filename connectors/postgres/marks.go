package postgres

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/lattice-sync/lattice/crdt"
)

// Projection marks.
//
// Every projection transaction carries one transactional logical message
// (pg_logical_emit_message(true, marksPrefix, ...)) listing, for each record
// it wrote, the record context the row now reflects. Capture reads it at its
// place in the stream (see DESIGN.md, "Causality from stream order").
//
// Encoding: a version byte (1), a uvarint count, then per record the
// entity, the id and the context token (crdt.EncodeToken), each as a
// uvarint length and its bytes. The message comes from the database, so it
// is decoded defensively: every length is checked against what is left.
const (
	marksPrefix  = "lattice.marks"
	marksVersion = 1
	// legacyPrefix marked the one-record messages of earlier versions
	// ("entity\x00id\x00base64(token)"); they are still read.
	legacyPrefix = "lattice"
)

// mark is one record's entry in a projection message.
type mark struct {
	entity, id string
	ctx        crdt.VV
}

// errMarks is returned for a projection message that does not decode.
var errMarks = errors.New("malformed projection message")

// appendMarks encodes the marks of the given projections.
func appendMarks(b []byte, ps []*projection) []byte {
	b = append(b, marksVersion)
	b = binary.AppendUvarint(b, uint64(len(ps)))
	for _, p := range ps {
		b = appendBytes(b, []byte(p.entity))
		b = appendBytes(b, []byte(p.id))
		b = appendBytes(b, p.token)
	}
	return b
}

func appendBytes(b, s []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// decodeMarks decodes a projection message. It never panics and never
// allocates more than the input's size.
func decodeMarks(b []byte) ([]mark, error) {
	if len(b) == 0 || b[0] != marksVersion {
		return nil, fmt.Errorf("%w: unknown version", errMarks)
	}
	b = b[1:]
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(len(b)) {
		return nil, fmt.Errorf("%w: bad count", errMarks)
	}
	b = b[k:]
	out := make([]mark, 0, n)
	for i := uint64(0); i < n; i++ {
		var entity, id, tok []byte
		var err error
		if entity, b, err = readBytes(b); err != nil {
			return nil, err
		}
		if id, b, err = readBytes(b); err != nil {
			return nil, err
		}
		if tok, b, err = readBytes(b); err != nil {
			return nil, err
		}
		vv, err := crdt.DecodeToken(tok)
		if err != nil {
			return nil, fmt.Errorf("%w: record %d: %v", errMarks, i, err)
		}
		out = append(out, mark{entity: string(entity), id: string(id), ctx: vv})
	}
	if len(b) != 0 {
		return nil, fmt.Errorf("%w: %d trailing bytes", errMarks, len(b))
	}
	return out, nil
}

func readBytes(b []byte) (s, rest []byte, err error) {
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(len(b)-k) {
		return nil, nil, fmt.Errorf("%w: bad length", errMarks)
	}
	return b[k : k+int(n)], b[k+int(n):], nil
}
