package cluster

import (
	"errors"
	"net"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// TestRaftTransportDoesNotPipeline: the transport the nodes use refuses
// pipelined replication, so Raft replicates with synchronous AppendEntries
// (hashicorp/raft v1.8's pipeline can deadlock; raftTransportConfig says how).
func TestRaftTransportDoesNotPipeline(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	stream := &streamLayer{Listener: lis, ip: net.IPv4(127, 0, 0, 1), advertise: lis.Addr()}
	trans := raft.NewNetworkTransportWithConfig(raftTransportConfig(stream, hclog.NewNullLogger()))
	defer trans.Close()
	p, err := trans.AppendEntriesPipeline("peer", raft.ServerAddress(lis.Addr().String()))
	if p != nil {
		p.Close()
	}
	if !errors.Is(err, raft.ErrPipelineReplicationNotSupported) {
		t.Fatalf("AppendEntriesPipeline = %v, %v; want ErrPipelineReplicationNotSupported (pipelining must be off)", p, err)
	}
}
