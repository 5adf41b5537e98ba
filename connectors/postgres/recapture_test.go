package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
)

// TestStopRecordsCapturePosition: a connector that stops (here: stopped;
// in the fault harness: its database restarted) before its periodic
// checkpoint covered what it captured records the durable position as it
// stops, so the next start does not capture those changes a second time as
// new edits (found by the fault harness: jepsen/README.md, pg-recapture).
func TestStopRecordsCapturePosition(t *testing.T) {
	e := setup(t)
	cp := &memCheckpoints{epoch: 1}
	obs := &resnapshots{}
	stop := e.runCRM(t, cp, obs)
	waitCheckpoint(t, cp, "snapshot checkpoint", func(m map[string]any) bool { return m["snapshot"] == true })
	// Stop right after a change is captured, before the periodic
	// checkpoint (once a second) covers it; try again if it did.
	id := ""
	for i := 1; id == ""; i++ {
		if i > 10 {
			t.Fatal("the periodic checkpoint covered every change before the stop: the test did not set up")
		}
		e.crm.Exec(t, "crm", `INSERT INTO customers VALUES ($1, $2, NULL, NULL)`, i, fmt.Sprint("name-", i))
		want := fmt.Sprint("name-", i)
		eventually(t, "row captured", func() (bool, string) { n := e.name(t, fmt.Sprint(i)); return n == want, n })
		if seq, _ := cp.get(t, "crm")["seq"].(float64); uint64(seq) < e.store.Applied().Get("n1") {
			id = fmt.Sprint(i)
		}
	}
	if err := stop(); err != nil && !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	stop = e.runCRM(t, cp, obs)
	defer stop()
	e.crm.Exec(t, "crm", `UPDATE customers SET full_name = 'after' WHERE customer_id = `+id)
	eventually(t, "a change after the restart captured", func() (bool, string) { n := e.name(t, id); return n == "after", n })
	vs, err := e.store.Versions("contact", id, "name")
	if err != nil {
		t.Fatal(err)
	}
	var values []string
	for _, v := range vs {
		values = append(values, v.Value.String())
	}
	if len(vs) != 2 {
		t.Errorf("record %s has %d versions of name %v, want 2 (the insert and the update): the insert was captured again after the restart", id, len(vs), values)
	}
}
