package fault

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

var topo = Topology{Nodes: []string{"n1", "n2", "n3"}, MaxOffset: 500 * time.Millisecond, Databases: []string{"crm", "billing"}}

func describe(steps []Step) string {
	var b strings.Builder
	for _, s := range steps {
		fmt.Fprintf(&b, "%s %s %s %v %s\n", s.At, s.Fault, s, s.Targets(), s.Hold())
	}
	return b.String()
}

func TestPlanIsReproducible(t *testing.T) {
	all, err := Parse("all", topo)
	if err != nil {
		t.Fatal(err)
	}
	a := describe(Plan(42, all, topo, DefaultLimits(), 2*time.Second, 55*time.Second))
	b := describe(Plan(42, all, topo, DefaultLimits(), 2*time.Second, 55*time.Second))
	c := describe(Plan(43, all, topo, DefaultLimits(), 2*time.Second, 55*time.Second))
	if a != b {
		t.Fatalf("same seed, different schedules:\n%s\n---\n%s", a, b)
	}
	if a == c {
		t.Fatalf("seeds 42 and 43 planned the same schedule:\n%s", a)
	}
	if a == "" {
		t.Fatal("empty schedule")
	}
	// Every step ends by the end of the window.
	for _, s := range Plan(42, all, topo, DefaultLimits(), 2*time.Second, 55*time.Second) {
		if s.At+s.Hold() > 55*time.Second {
			t.Errorf("step %s at %s holds %s, past the end", s, s.At, s.Hold())
		}
	}
	if got := Plan(42, nil, topo, DefaultLimits(), 0, time.Minute); len(got) != 0 {
		t.Errorf("no faults planned %d steps", len(got))
	}
}

func TestParse(t *testing.T) {
	tests := []struct {
		list string
		want string // fault names, or the error's start
	}{
		{"all", strings.Join(Names(), ",")},
		{"none", ""},
		{"partition", "partition-bridge,partition-isolate,partition-oneway,partition-split"},
		{"kill, clock-skew,kill", "clock-skew,kill"},
		{"clock,process", "clock-jump,clock-skew,clock-strobe,kill,pause"},
		{"partiton", "error: unknown fault \"partiton\""},
	}
	for _, tt := range tests {
		fs, err := Parse(tt.list, topo)
		var got []string
		for _, f := range fs {
			got = append(got, f.Name())
		}
		g := strings.Join(got, ",")
		if err != nil {
			g = "error: " + err.Error()
		}
		if !strings.HasPrefix(g, tt.want) || (err == nil && g != tt.want) {
			t.Errorf("Parse(%q) = %s, want %s", tt.list, g, tt.want)
		}
	}
	// PostgreSQL faults need databases.
	fs, _ := Parse("all", Topology{Nodes: topo.Nodes, MaxOffset: topo.MaxOffset})
	for _, f := range fs {
		if strings.HasPrefix(f.Name(), "pg-") || f.Name() == "kill-owner" {
			t.Errorf("without databases, all includes %s", f.Name())
		}
	}
	if len(fs) != len(Names())-len(Groups()["postgres"]) {
		t.Errorf("without databases, all is %d faults, want %d", len(fs), len(Names())-len(Groups()["postgres"]))
	}
	if fs, _ := Parse("postgres", topo); len(fs) != 5 {
		t.Errorf("postgres group with databases: %d faults, want 5", len(fs))
	}
	// Partitions need two nodes.
	fs, _ = Parse("partition,kill", Topology{Nodes: []string{"n1"}})
	if len(fs) != 1 || fs[0].Name() != "kill" {
		t.Errorf("one node: %v", fs)
	}
}

// fakeCluster records what injections do.
type fakeCluster struct {
	mu    sync.Mutex
	calls []string
	clock map[string]time.Duration
}

func (f *fakeCluster) log(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, fmt.Sprintf(format, args...))
}
func (f *fakeCluster) Kill(n string) error                       { f.log("kill %s", n); return nil }
func (f *fakeCluster) Restart(_ context.Context, n string) error { f.log("restart %s", n); return nil }
func (f *fakeCluster) Pause(n string) error                      { f.log("pause %s", n); return nil }
func (f *fakeCluster) Resume(n string) error                     { f.log("resume %s", n); return nil }
func (f *fakeCluster) Drop(a, b string) error                    { f.log("drop %s>%s", a, b); return nil }
func (f *fakeCluster) Heal() error                               { f.log("heal"); return nil }
func (f *fakeCluster) SetClockOffset(n string, d time.Duration) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.clock == nil {
		f.clock = map[string]time.Duration{}
	}
	f.clock[n] = d
	f.calls = append(f.calls, fmt.Sprintf("clock %s %s", n, d))
	return nil
}

// fakeDBs records what PostgreSQL faults do, in the fake cluster's log.
type fakeDBs struct{ c *fakeCluster }

func (f fakeDBs) Terminate(_ context.Context, db string) (int, error) {
	f.c.log("terminate %s", db)
	return 2, nil
}
func (f fakeDBs) Stop(_ context.Context, db string) error    { f.c.log("stop %s", db); return nil }
func (f fakeDBs) StartDB(_ context.Context, db string) error { f.c.log("start %s", db); return nil }
func (f fakeDBs) Cut(db string) error                        { f.c.log("cut %s", db); return nil }

// Every fault leaves the cluster healthy after Stop.
func TestInjectionsUndo(t *testing.T) {
	for _, name := range Names() {
		t.Run(name, func(t *testing.T) {
			fs, err := Parse(name, topo)
			if err != nil || len(fs) != 1 {
				t.Fatal(err)
			}
			lim := SmokeLimits()
			lim.HoldMin, lim.HoldMax = 300*time.Millisecond, 300*time.Millisecond
			steps := Plan(7, fs, topo, lim, 0, 300*time.Millisecond)
			fc := &fakeCluster{}
			env := Env{Cluster: fc, Databases: fakeDBs{fc},
				Owner: func(_ context.Context, c string) (string, error) {
					return map[string]string{"crm": "n2", "billing": "n3"}[c], nil
				}}
			for _, s := range steps {
				if err := s.Start(context.Background(), env); err != nil {
					t.Fatal(err)
				}
				time.Sleep(s.Hold())
				if err := s.Stop(context.Background(), env); err != nil {
					t.Fatal(err)
				}
			}
			fc.mu.Lock()
			defer fc.mu.Unlock()
			calls := strings.Join(fc.calls, "; ")
			switch {
			case strings.HasPrefix(name, "partition"):
				if !strings.HasSuffix(calls, "heal") {
					t.Errorf("%s does not end with heal: %s", name, calls)
				}
			case name == "pg-partition":
				if !strings.HasPrefix(calls, "cut ") || !strings.HasSuffix(calls, "heal") {
					t.Errorf("%s does not cut then heal: %s", name, calls)
				}
			case name == "pg-restart" || name == "pg-down":
				if !strings.HasPrefix(calls, "stop ") || strings.Count(calls, "stop") != strings.Count(calls, "start") {
					t.Errorf("%s does not stop then start: %s", name, calls)
				}
			case name == "pg-kill-conn":
				if !strings.HasPrefix(calls, "terminate ") {
					t.Errorf("%s terminated nothing: %s", name, calls)
				}
			case name == "kill-owner":
				// The owner of the connector, looked up when it starts.
				if calls != "kill n2; restart n2" && calls != "kill n3; restart n3" {
					t.Errorf("%s: %s, want the owner killed and restarted", name, calls)
				}
			case name == "kill":
				if strings.Count(calls, "kill") != strings.Count(calls, "restart") {
					t.Errorf("kills without restarts: %s", calls)
				}
			case name == "pause":
				if strings.Count(calls, "pause") != strings.Count(calls, "resume") {
					t.Errorf("pauses without resumes: %s", calls)
				}
			default:
				for n, d := range fc.clock {
					if d != 0 {
						t.Errorf("%s: clock of %s left at %s: %s", name, n, d, calls)
					}
				}
				if name == "clock-strobe" && strings.Count(calls, "clock") < 3 {
					t.Errorf("strobe did not strobe: %s", calls)
				}
			}
			// Nothing happens after Stop (the strobe goroutine is gone).
			n := len(fc.calls)
			fc.mu.Unlock()
			time.Sleep(400 * time.Millisecond)
			fc.mu.Lock()
			if len(fc.calls) != n {
				t.Errorf("%s kept acting after Stop: %v", name, fc.calls[n:])
			}
		})
	}
}
