package crdt

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"pgregory.net/rapid"
)

// physClock is an injectable physical clock: wall milliseconds that a test
// sets and moves at will (also backwards).
type physClock struct{ ms atomic.Int64 }

func newPhysClock(ms int64) *physClock {
	p := &physClock{}
	p.ms.Store(ms)
	return p
}

func (p *physClock) Now() int64          { return p.ms.Load() }
func (p *physClock) Set(ms int64)        { p.ms.Store(ms) }
func (p *physClock) Add(ms int64)        { p.ms.Add(ms) }
func hlcTS(ms int64, l uint16) Timestamp { return MakeTimestamp(ms, l) }

func TestTimestampParts(t *testing.T) {
	tests := []struct {
		ms      int64
		logical uint16
		str     string
	}{
		{0, 0, "1970-01-01T00:00:00.000Z+0"},
		{1_700_000_000_123, 7, "2023-11-14T22:13:20.123Z+7"},
		{1, 65535, "1970-01-01T00:00:00.001Z+65535"},
		{1<<47 - 1, 1, ""},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.ms, "/", tt.logical), func(t *testing.T) {
			x := MakeTimestamp(tt.ms, tt.logical)
			if x.Millis() != tt.ms || x.Logical() != tt.logical {
				t.Fatalf("MakeTimestamp(%d, %d) = (%d, %d)", tt.ms, tt.logical, x.Millis(), x.Logical())
			}
			if tt.str != "" && x.String() != tt.str {
				t.Errorf("String() = %q, want %q", x.String(), tt.str)
			}
			if MakeTimestamp(tt.ms, 0) > x || (tt.logical < 65535 && x >= MakeTimestamp(tt.ms, tt.logical+1)) {
				t.Errorf("integer order does not follow (physical, logical)")
			}
		})
	}
	if got := TimestampFromTime(time.UnixMilli(42)); got != hlcTS(42, 0) {
		t.Errorf("TimestampFromTime = %v", got)
	}
}

// hlcStep is one event of a replayed history over several clocks.
type hlcStep struct {
	clock string // which clock acts
	phys  int64  // when non-zero, set that clock's physical time first
	op    string // "now": Now, remembered as message msg; "recv": Update(message msg)
	msg   string
	want  Timestamp // Now result, or Last() after recv
	err   bool      // recv refused with ErrClockOffset
}

// TestClockHistories replays send/receive histories on two or three clocks
// with injected physical clocks and checks every timestamp exactly.
func TestClockHistories(t *testing.T) {
	const start = 1_700_000_000_000
	tests := []struct {
		name    string
		clocks  []string
		max     time.Duration
		history []hlcStep
	}{
		{
			name:   "receive from a clock ahead, then physical catches up",
			clocks: []string{"a", "b"},
			history: []hlcStep{
				{clock: "a", phys: start + 100, op: "now", msg: "m1", want: hlcTS(start+100, 0)},
				{clock: "a", op: "now", msg: "m2", want: hlcTS(start+100, 1)},
				{clock: "b", phys: start + 90, op: "now", want: hlcTS(start+90, 0)},
				{clock: "b", op: "recv", msg: "m2", want: hlcTS(start+100, 1)},
				{clock: "b", op: "now", msg: "m3", want: hlcTS(start+100, 2)},
				{clock: "b", op: "now", want: hlcTS(start+100, 3)},
				{clock: "b", phys: start + 101, op: "now", msg: "m4", want: hlcTS(start+101, 0)},
				{clock: "a", op: "recv", msg: "m4", want: hlcTS(start+101, 0)},
				{clock: "a", op: "now", want: hlcTS(start+101, 1)},
				// An old message changes nothing.
				{clock: "a", op: "recv", msg: "m1", want: hlcTS(start+101, 1)},
				{clock: "a", op: "now", want: hlcTS(start+101, 2)},
			},
		},
		{
			name:   "physical clock jumps backwards",
			clocks: []string{"a"},
			history: []hlcStep{
				{clock: "a", phys: start + 5000, op: "now", want: hlcTS(start+5000, 0)},
				{clock: "a", phys: start, op: "now", want: hlcTS(start+5000, 1)},
				{clock: "a", phys: start - 3_600_000, op: "now", want: hlcTS(start+5000, 2)},
				{clock: "a", phys: start + 4999, op: "now", want: hlcTS(start+5000, 3)},
				{clock: "a", phys: start + 5000, op: "now", want: hlcTS(start+5000, 4)},
				{clock: "a", phys: start + 5001, op: "now", want: hlcTS(start+5001, 0)},
			},
		},
		{
			name:   "offset beyond max is refused and leaves the clock unchanged",
			clocks: []string{"a", "b"},
			history: []hlcStep{
				{clock: "a", phys: start, op: "now", want: hlcTS(start, 0)},
				{clock: "b", phys: start + 1000, op: "now", msg: "fast", want: hlcTS(start+1000, 0)},
				{clock: "a", op: "recv", msg: "fast", err: true, want: hlcTS(start, 0)},
				{clock: "a", op: "now", want: hlcTS(start, 1)},
				// Exactly max-offset ahead is accepted.
				{clock: "a", phys: start + 500, op: "recv", msg: "fast", want: hlcTS(start+1000, 0)},
				{clock: "a", op: "now", want: hlcTS(start+1000, 1)},
			},
		},
		{
			name:   "custom max offset",
			clocks: []string{"a", "b"},
			max:    2 * time.Second,
			history: []hlcStep{
				{clock: "b", phys: start + 2000, op: "now", msg: "m", want: hlcTS(start+2000, 0)},
				{clock: "a", phys: start, op: "recv", msg: "m", want: hlcTS(start+2000, 0)},
				{clock: "b", phys: start + 4001, op: "now", msg: "far", want: hlcTS(start+4001, 0)},
				{clock: "a", op: "recv", msg: "far", err: true, want: hlcTS(start+2000, 0)},
			},
		},
		{
			name:   "relay through three clocks with skew",
			clocks: []string{"a", "b", "c"},
			history: []hlcStep{
				{clock: "a", phys: start + 300, op: "now", msg: "a1", want: hlcTS(start+300, 0)},
				{clock: "b", phys: start, op: "recv", msg: "a1", want: hlcTS(start+300, 0)},
				{clock: "b", op: "now", msg: "b1", want: hlcTS(start+300, 1)},
				{clock: "c", phys: start - 100, op: "recv", msg: "b1", want: hlcTS(start+300, 1)},
				{clock: "c", op: "now", msg: "c1", want: hlcTS(start+300, 2)},
				{clock: "c", phys: start - 200, op: "now", msg: "c2", want: hlcTS(start+300, 3)},
				{clock: "a", op: "recv", msg: "c2", want: hlcTS(start+300, 3)},
				{clock: "a", op: "now", want: hlcTS(start+300, 4)},
				{clock: "b", op: "recv", msg: "c1", want: hlcTS(start+300, 2)},
				{clock: "b", op: "now", want: hlcTS(start+300, 3)},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			phys := map[string]*physClock{}
			clocks := map[string]*Clock{}
			for _, name := range tt.clocks {
				phys[name] = newPhysClock(start)
				clocks[name] = NewClock(ClockConfig{Physical: phys[name].Now, MaxOffset: tt.max})
			}
			msgs := map[string]Timestamp{}
			for i, s := range tt.history {
				c := clocks[s.clock]
				if s.phys != 0 {
					phys[s.clock].Set(s.phys)
				}
				switch s.op {
				case "now":
					got := c.Now()
					if got != s.want {
						t.Fatalf("step %d: %s.Now() = %v, want %v", i, s.clock, got, s.want)
					}
					if s.msg != "" {
						msgs[s.msg] = got
					}
				case "recv":
					err := c.Update(msgs[s.msg])
					if s.err {
						checkOffsetError(t, err, msgs[s.msg], phys[s.clock].Now(), c.MaxOffset())
					} else if err != nil {
						t.Fatalf("step %d: %s.Update(%v): %v", i, s.clock, msgs[s.msg], err)
					}
					if got := c.Last(); got != s.want {
						t.Fatalf("step %d: %s.Last() after Update(%v) = %v, want %v", i, s.clock, msgs[s.msg], got, s.want)
					}
				default:
					t.Fatalf("step %d: bad op %q", i, s.op)
				}
			}
		})
	}
}

// tb is the part of testing.TB that helpers use; *rapid.T implements it
// too (it does not implement testing.TB), so helpers work in property tests.
type tb interface {
	Helper()
	Fatalf(format string, args ...any)
	Errorf(format string, args ...any)
	Logf(format string, args ...any)
}

var (
	_ tb = testing.TB(nil)
	_ tb = (*rapid.T)(nil)
)

// checkOffsetError checks that err is the refusal of remote by a clock at phys.
func checkOffsetError(tb tb, err error, remote Timestamp, phys int64, max time.Duration) {
	tb.Helper()
	if !errors.Is(err, ErrClockOffset) {
		tb.Fatalf("Update(%v) at physical %d: err = %v, want ErrClockOffset", remote, phys, err)
	}
	var oe *OffsetError
	if !errors.As(err, &oe) {
		tb.Fatalf("Update(%v): error %T is not an *OffsetError", remote, err)
	}
	if oe.Received != remote || oe.Local != phys || oe.MaxOffset != max {
		tb.Fatalf("OffsetError = %+v, want Received %v Local %d MaxOffset %v", *oe, remote, phys, max)
	}
	if oe.Error() == "" {
		tb.Fatalf("empty error text")
	}
}

func TestClockDefaults(t *testing.T) {
	c := NewClock(ClockConfig{Physical: func() int64 { return 1 }})
	if c.MaxOffset() != DefaultMaxOffset {
		t.Errorf("MaxOffset() = %v, want %v", c.MaxOffset(), DefaultMaxOffset)
	}
	defer func() {
		if recover() == nil {
			t.Errorf("NewClock without Physical did not panic")
		}
	}()
	NewClock(ClockConfig{})
}

// TestClockLogicalOverflow issues more than 65535 timestamps in one
// millisecond: the logical counter carries into the physical part and the
// sequence stays strictly increasing.
func TestClockLogicalOverflow(t *testing.T) {
	const ms = 1_700_000_000_000
	p := newPhysClock(ms)
	c := NewClock(ClockConfig{Physical: p.Now})
	prev := c.Now()
	if prev != hlcTS(ms, 0) {
		t.Fatalf("first Now = %v", prev)
	}
	for i := 1; i < 70_000; i++ {
		got := c.Now()
		if got <= prev {
			t.Fatalf("Now #%d = %v, not above %v", i, got, prev)
		}
		if i == 65535 && got != hlcTS(ms, 65535) {
			t.Fatalf("Now #65535 = %v, want %v", got, hlcTS(ms, 65535))
		}
		if i == 65536 && got != hlcTS(ms+1, 0) {
			t.Fatalf("Now #65536 = %v, want %v (carry)", got, hlcTS(ms+1, 0))
		}
		prev = got
	}
	// The physical clock catching up to the carried millisecond does not repeat it.
	p.Set(ms + 1)
	if got := c.Now(); got <= prev {
		t.Fatalf("Now after physical caught up = %v, not above %v", got, prev)
	}
	// A received timestamp at the top of the logical range also carries.
	c2 := NewClock(ClockConfig{Physical: p.Now})
	if err := c2.Update(hlcTS(ms+1, 65535)); err != nil {
		t.Fatal(err)
	}
	if got := c2.Now(); got != hlcTS(ms+2, 0) {
		t.Fatalf("Now after Update(max logical) = %v, want %v", got, hlcTS(ms+2, 0))
	}
}

func TestClockConcurrentNow(t *testing.T) {
	p := newPhysClock(1_700_000_000_000)
	c := NewClock(ClockConfig{Physical: p.Now})
	const workers, per = 4, 2000
	results := make([][]Timestamp, workers)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < per; i++ {
				if i%100 == 0 {
					p.Add(int64(i%3) - 1) // wobble, sometimes backwards
				}
				results[w] = append(results[w], c.Now())
			}
		}()
	}
	wg.Wait()
	seen := map[Timestamp]bool{}
	for w := range results {
		for i, x := range results[w] {
			if seen[x] {
				t.Fatalf("timestamp %v issued twice", x)
			}
			seen[x] = true
			if i > 0 && x <= results[w][i-1] {
				t.Fatalf("worker %d: %v after %v", w, x, results[w][i-1])
			}
		}
	}
}

// clockOp is one step of a monotonicity property run.
type clockOp struct {
	kind   int   // 0: move physical clock, 1: Now, 2: Update
	delta  int64 // physical move (ms), or offset of the remote timestamp from local physical time
	remote uint16
}

func genClockOps(t *rapid.T) []clockOp {
	moves := rapid.OneOf(
		rapid.Int64Range(-5, 5),              // jitter
		rapid.Int64Range(-10_000_000, -1000), // big backward jump
		rapid.Int64Range(1000, 10_000_000),   // big forward jump
		rapid.Int64Range(-1000, 1000),        // NTP-size step
		rapid.Just(int64(-86_400_000)),       // a day back
	)
	n := rapid.IntRange(1, 200).Draw(t, "ops")
	ops := make([]clockOp, n)
	for i := range ops {
		switch k := rapid.IntRange(0, 2).Draw(t, "kind"); k {
		case 0:
			ops[i] = clockOp{kind: 0, delta: moves.Draw(t, "move")}
		case 1:
			ops[i] = clockOp{kind: 1}
		default:
			ops[i] = clockOp{kind: 2, delta: rapid.Int64Range(-5000, 1500).Draw(t, "remoteOffset"), remote: rapid.Uint16().Draw(t, "remoteLogical")}
		}
	}
	return ops
}

// TestClockMonotonicProperty: under arbitrary physical clock moves
// (including big backward jumps) interleaved with Now and Update, every Now
// is above every earlier Now and every accepted Update; refused updates
// change nothing.
func TestClockMonotonicProperty(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		const base = 1_700_000_000_000
		p := newPhysClock(base)
		max := rapid.SampledFrom([]time.Duration{0, 100 * time.Millisecond, time.Second}).Draw(t, "maxOffset")
		c := NewClock(ClockConfig{Physical: p.Now, MaxOffset: max})
		var high Timestamp // greatest Now result or accepted remote
		for i, op := range genClockOps(t) {
			switch op.kind {
			case 0:
				p.Add(op.delta)
			case 1:
				got := c.Now()
				if got <= high {
					t.Fatalf("op %d: Now() = %v, not above %v", i, got, high)
				}
				if got < hlcTS(p.Now(), 0) {
					t.Fatalf("op %d: Now() = %v behind physical %d", i, got, p.Now())
				}
				if c.Last() != got {
					t.Fatalf("op %d: Last() = %v after Now() = %v", i, c.Last(), got)
				}
				high = got
			case 2:
				remote := hlcTS(p.Now()+op.delta, op.remote)
				before := c.Last()
				err := c.Update(remote)
				if op.delta > c.MaxOffset().Milliseconds() {
					checkOffsetError(t, err, remote, p.Now(), c.MaxOffset())
					if c.Last() != before {
						t.Fatalf("op %d: refused Update moved Last from %v to %v", i, before, c.Last())
					}
					continue
				}
				if err != nil {
					t.Fatalf("op %d: Update(%v) within max offset: %v", i, remote, err)
				}
				want := before
				if remote > want {
					want = remote
				}
				if c.Last() != want {
					t.Fatalf("op %d: Last() = %v after Update(%v), want %v", i, c.Last(), remote, want)
				}
				if remote > high {
					high = remote
				}
			}
		}
	})
}

// TestClockPersistRestart: with Persist wired, every issued timestamp is
// below the ceiling persisted when it was returned; a clock restarted with
// Floor = the last ceiling and a physical clock moved backwards issues
// timestamps above everything the first clock issued or accepted.
func TestClockPersistRestart(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		const base = 1_700_000_000_000
		p := newPhysClock(base)
		window := rapid.SampledFrom([]time.Duration{0, time.Millisecond, 50 * time.Millisecond, 200 * time.Millisecond}).Draw(t, "window")
		var floor Timestamp
		var high Timestamp
		for life := 0; life < 3; life++ {
			var ceiling Timestamp
			persists := 0
			c := NewClock(ClockConfig{
				Physical: p.Now,
				Floor:    floor,
				Window:   window,
				Persist: func(x Timestamp) error {
					if x <= ceiling && persists > 0 {
						t.Fatalf("life %d: persisted ceiling %v not above previous %v", life, x, ceiling)
					}
					ceiling = x
					persists++
					return nil
				},
			})
			for i, op := range genClockOps(t) {
				switch op.kind {
				case 0:
					p.Add(op.delta)
				case 1:
					got := c.Now()
					if got <= high {
						t.Fatalf("life %d op %d: Now() = %v, not above %v (floor %v)", life, i, got, high, floor)
					}
					if persists == 0 || got >= ceiling {
						t.Fatalf("life %d op %d: Now() = %v not below persisted ceiling %v (%d persists)", life, i, got, ceiling, persists)
					}
					high = got
				case 2:
					remote := hlcTS(p.Now()+op.delta, op.remote)
					if err := c.Update(remote); err != nil {
						continue
					}
					if remote > high {
						high = remote
					}
					if persists == 0 && c.Last() != floor {
						t.Fatalf("life %d op %d: Last() = %v moved without persisting a ceiling", life, i, c.Last())
					}
					if persists > 0 && c.Last() >= ceiling {
						t.Fatalf("life %d op %d: Last() = %v not below persisted ceiling %v", life, i, c.Last(), ceiling)
					}
				}
			}
			if persists > 0 {
				floor = ceiling
			}
			// Restart: the physical clock may come back anywhere, also far behind.
			p.Add(-rapid.Int64Range(0, 3_600_000).Draw(t, "restartBack"))
		}
	})
}

func TestClockPersistFailurePanics(t *testing.T) {
	p := newPhysClock(1_000_000)
	c := NewClock(ClockConfig{Physical: p.Now, Persist: func(Timestamp) error { return errors.New("disk full") }})
	defer func() {
		if recover() == nil {
			t.Fatalf("Now with a failing Persist did not panic")
		}
	}()
	c.Now()
}
