package main

import (
	"testing"

	"github.com/lattice-sync/lattice/cluster/clustertest"
)

// latticeBin is the lattice binary built for tests that run node processes.
var latticeBin string

func TestMain(m *testing.M) { clustertest.Main(m, &latticeBin) }
