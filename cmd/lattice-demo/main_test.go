package main

import (
	"bytes"
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestDemo runs the whole tour against a freshly built lattice binary. It
// needs the PostgreSQL 15 server binaries (make deps) and the ports of
// `lattice dev --nodes 3` (127.0.0.1:7101-7103, 7201-7203, 7301-7303,
// 7401-7403) free.
func TestDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two PostgreSQL instances and a three-node cluster")
	}
	start := time.Now()
	bin := filepath.Join(t.TempDir(), "lattice")
	build := exec.Command("go", "build", "-o", bin, "github.com/lattice-sync/lattice/cmd/lattice")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	t.Logf("built %s in %.1f s", bin, time.Since(start).Seconds())

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out bytes.Buffer
	start = time.Now()
	err := run(ctx, []string{"--lattice", bin}, &out, &out)
	t.Logf("demo took %.1f s", time.Since(start).Seconds())
	if err != nil {
		t.Fatalf("demo failed: %v\n--- demo output ---\n%s", err, out.String())
	}
	var missing []string
	for _, want := range []string{
		"=== 1. Initial snapshot ===",
		"=== 2. An update in crm reaches billing ===",
		"=== 3. Concurrent edits of different fields ===",
		"=== 4. Concurrent edits of the same field ===",
		"=== 5. The record in lattice ===",
		"$ lattice history contact 1 name",
		"won (current value)",
		"$ lattice get contact 1",
		"The tour is over",
	} {
		if !strings.Contains(out.String(), want) {
			missing = append(missing, want)
		}
	}
	if len(missing) > 0 {
		t.Fatalf("the output lacks %q\n--- demo output ---\n%s", missing, out.String())
	}
	if testing.Verbose() {
		t.Logf("--- demo output ---\n%s", out.String())
	}
}
