package main

import (
	"bytes"
	"strings"
	"testing"

	pb "github.com/lattice-sync/lattice/api/lattice/v1"
)

// TestHistoryShowsFoldedCaptures: a change captured by two owners is one
// history line, naming both edits.
func TestHistoryShowsFoldedCaptures(t *testing.T) {
	resp := &pb.HistoryResponse{Entity: "contact", Id: "1", Field: "email", Entries: []*pb.HistoryEntry{
		{Version: &pb.Version{Value: &pb.Value{Kind: &pb.Value_StringValue{StringValue: "a@example.com"}}, Origin: "postgres:crm",
			Dot: &pb.Dot{Node: "n1", Seq: 7}, Also: []*pb.Dot{{Node: "n3", Seq: 45}}, Source: "_src:crm=L0000000001000000.00000001",
			Context: &pb.VersionVector{}}, Fate: pb.Fate_FATE_WON},
		{Version: &pb.Version{Value: &pb.Value{Kind: &pb.Value_StringValue{StringValue: "b@example.com"}}, Origin: "api",
			Dot: &pb.Dot{Node: "n2", Seq: 3}, Context: &pb.VersionVector{}}, Fate: pb.Fate_FATE_SUPERSEDED, By: &pb.Dot{Node: "n1", Seq: 7}},
	}}
	var out bytes.Buffer
	if err := printHistory(&out, "table", resp); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 4 {
		t.Fatalf("history table has %d lines, want a title, a header and 2 versions:\n%s", len(lines), out.String())
	}
	if !strings.Contains(lines[2], "n1:7 (also n3:45)") {
		t.Errorf("the folded capture's line does not name both edits: %q", lines[2])
	}
	if strings.Contains(lines[3], "also") {
		t.Errorf("an API edit's line mentions other captures: %q", lines[3])
	}
	out.Reset()
	if err := printHistory(&out, "json", resp); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), `"also"`) || !strings.Contains(out.String(), `"source"`) {
		t.Errorf("-o json omits also or source:\n%s", out.String())
	}
}
