package main

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestOffsetClock(t *testing.T) {
	path := filepath.Join(t.TempDir(), "offset")
	base := time.UnixMilli(1_700_000_000_000)
	now := base
	c := newOffsetClock(path)
	c.now = func() time.Time { return now }
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name    string
		content string // "" removes nothing; "-" deletes the file
		advance time.Duration
		want    int64 // offset in ms
	}{
		{"missing file", "-", 0, 0},
		{"cached within the refresh interval", "5000", 50 * time.Millisecond, 0},
		{"re-read after it", "", 60 * time.Millisecond, 5000},
		{"negative", "-3000\n", 100 * time.Millisecond, -3000},
		{"garbage means no offset", "soon", 100 * time.Millisecond, 0},
		{"removed", "-", 100 * time.Millisecond, 0},
	}
	for _, tt := range tests {
		switch tt.content {
		case "":
		case "-":
			os.Remove(path)
		default:
			write(tt.content)
		}
		now = now.Add(tt.advance)
		if got := c.Physical() - now.UnixMilli(); got != tt.want {
			t.Errorf("%s: offset %d ms, want %d", tt.name, got, tt.want)
		}
	}
}
