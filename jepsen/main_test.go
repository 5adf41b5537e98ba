package jepsen

import (
	"testing"

	"github.com/lattice-sync/lattice/cluster/clustertest"
)

var bin string

func TestMain(m *testing.M) { clustertest.Main(m, &bin) }
