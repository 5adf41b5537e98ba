package jepsen

import (
	"time"

	"github.com/lattice-sync/lattice/jepsen/fault"
)

// Scenario is a named regression scenario: a fixed seed and fault list
// (and whatever else the run that found a bug used), replayed by
// TestScenarios. Seeds fix the schedule and the clients' choices, not the
// timing, so a scenario makes its bug likely, not certain; where a bug can
// be forced step by step, a directed test guards it too (named in Test).
type Scenario struct {
	Name string
	// Bug names the entry of check.KnownBugs while the bug is not fixed
	// (a replay that reproduces only it is skipped, not failed); empty
	// once fixed (any violation fails the replay).
	Bug string
	// Found says what the harness found and how.
	Found string
	// Test names the directed test that forces the bug, if any.
	Test string
	// Config adjusts a copy of DefaultConfig.
	Config func(*Config)
}

// Scenarios are the regression scenarios, one per bug found (README.md,
// "Bugs found").
var Scenarios = []Scenario{
	{
		Name:  "token-overclaim/bridge",
		Bug:   "",
		Found: "partition-bridge and partition-oneway: a read-context put sent to another node silently superseded an edit its read on n3 never showed",
		Test:  "TestTokenCoversOnlyWhatTheReadShowed",
		Config: func(c *Config) {
			c.Seed, c.Faults, c.Duration, c.Keys, c.CrossNode = 201, "partition-bridge,partition-oneway", 40*time.Second, 32, 0.5
			c.Workloads = "api"
		},
	},
	{
		Name:  "pg-recapture/restart",
		Bug:   "",
		Found: "PostgreSQL workload with deletes, pg-restart of crm 2 s in: the crm connector resumed from its last checkpoint (0/194C388) and captured the changes after it a second time, as new edits (values twice in history, deletions counted twice); again after pg-down. Since the final checkpoint at stop, the restarts no longer do it (33 violations became 3: the kill of billing's owner)",
		Test:  "connectors/postgres TestStopRecordsCapturePosition",
		Config: func(c *Config) {
			c.Seed, c.Faults, c.Workloads, c.Duration, c.Limits = 7, "postgres,kill", "api,postgres", 30*time.Second, fault.SmokeLimits()
		},
	},
	{
		Name:  "pg-recapture/cut-off-owner",
		Bug:   "",
		Found: "both workloads, every fault, after both fixes: billing's owner n2 cut off (one-way, 27-33 s) kept capturing; n1 took billing over and captured again what n2 had captured meanwhile (480 violations). The owner lease stops a cut-off owner; captures of one change fold into one version",
		Test:  "cluster TestCutOffOwnerStopsConnectors, crdt TestRecaptureIsOneEdit",
		Config: func(c *Config) {
			c.Seed, c.Faults, c.Workloads, c.Duration = 5000, "all", "api,postgres", 60*time.Second
		},
	},
	{
		Name:  "pg-recapture/isolated-owner",
		Bug:   "",
		Found: "both workloads, every fault, with the owner lease: crm's owner n1 isolated 2-10.5 s; n3 took crm over and captured again what n1 had captured within its lease and not yet replicated (294 violations, 282 changes twice in history). Captures of one source change now fold into one version wherever they meet (0 violations)",
		Test:  "crdt TestRecaptureIsOneEdit, storage TestRecaptureFoldsInStore",
		Config: func(c *Config) {
			c.Seed, c.Faults, c.Workloads, c.Duration = 5008, "all", "api,postgres", 60*time.Second
		},
	},
	{
		Name:  "token-underclaim/mixed",
		Bug:   "",
		Found: "both workloads, every fault (the first run with the PostgreSQL workload): a read on n2 showed a version (n2:2505) its token did not cover, so a put passing the token was concurrent with it instead of superseding it",
		Test:  "storage TestReadContextCoversWhatTheReadShows",
		Config: func(c *Config) {
			c.Seed, c.Faults, c.Workloads, c.Duration = 2000, "all", "api,postgres", 60*time.Second
		},
	},
	{
		Name:  "token-overclaim/process-clock",
		Bug:   "",
		Found: "kill, pause and clock faults: a read-context put on the read's own node silently superseded an edit the read never showed",
		Test:  "TestTokenCoversOnlyWhatTheReadShowed",
		Config: func(c *Config) {
			c.Seed, c.Faults, c.Duration = 300, "process,clock", 45*time.Second
			c.Workloads = "api"
		},
	},
}
