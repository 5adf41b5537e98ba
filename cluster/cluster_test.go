package cluster_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pb "github.com/lattice-sync/lattice/api/lattice/v1"
	"github.com/lattice-sync/lattice/cluster/clustertest"
)

var bin string

func TestMain(m *testing.M) { clustertest.Main(m, &bin) }

func str(s string) *pb.Value { return &pb.Value{Kind: &pb.Value_StringValue{StringValue: s}} }

func put(t testing.TB, nd *clustertest.Node, id string, fields map[string]string, token string) (*pb.PutResponse, error) {
	t.Helper()
	req := &pb.PutRequest{Entity: "contact", Id: id, Fields: map[string]*pb.Value{}, Context: token}
	for k, v := range fields {
		req.Fields[k] = str(v)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return nd.Records().Put(ctx, req)
}

func mustPut(t testing.TB, nd *clustertest.Node, id string, fields map[string]string, token string) *pb.PutResponse {
	t.Helper()
	r, err := put(t, nd, id, fields, token)
	if err != nil {
		t.Fatalf("put %s on %s: %v", id, nd.ID, err)
	}
	return r
}

func get(t testing.TB, nd *clustertest.Node, id string) (*pb.Record, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return nd.Records().Get(ctx, &pb.GetRequest{Entity: "contact", Id: id})
}

func fieldValue(r *pb.Record, name string) string {
	for _, f := range r.GetFields() {
		if f.GetName() == name {
			return f.GetValue().GetStringValue()
		}
	}
	return ""
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, timeout time.Duration, cond func() (bool, string)) time.Duration {
	t.Helper()
	start := time.Now()
	var why string
	for time.Since(start) < timeout {
		var ok bool
		if ok, why = cond(); ok {
			return time.Since(start)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: not within %s: %s", what, timeout, why)
	return 0
}

func TestWriteOnOneReadOnAnother(t *testing.T) {
	c := clustertest.Start(t, bin, 3, clustertest.Options{})
	n1, n3 := c.Nodes[0], c.Nodes[2]
	mustPut(t, n1, "c1", map[string]string{"name": "Ann", "email": "ann@example.com"}, "")
	waitFor(t, "n3 reads the write made on n1", 5*time.Second, func() (bool, string) {
		r, err := get(t, n3, "c1")
		if err != nil {
			return false, err.Error()
		}
		return fieldValue(r, "name") == "Ann" && fieldValue(r, "email") == "ann@example.com", fmt.Sprint(r)
	})
	// Write concern: acks=3 returns once all three hold it.
	r, err := n3.Records().Put(context.Background(), &pb.PutRequest{Entity: "contact", Id: "c2", Acks: 3,
		Fields: map[string]*pb.Value{"name": str("Bob")}})
	if err != nil {
		t.Fatalf("put with acks=3: %v", err)
	}
	for _, nd := range c.Nodes {
		st, err := nd.Digest()
		if err != nil {
			t.Fatal(err)
		}
		if st.GetApplied().GetEntries()["n3"] < r.GetDot().GetSeq() {
			t.Errorf("%s has applied %v right after an acks=3 put of %v returned", nd.ID, st.GetApplied().GetEntries(), r.GetDot())
		}
	}
	c.WaitConverged(10 * time.Second)
}

func TestKilledNodeCatchesUp(t *testing.T) {
	c := clustertest.Start(t, bin, 3, clustertest.Options{})
	n1, n2, n3 := c.Nodes[0], c.Nodes[1], c.Nodes[2]
	var stop atomic.Bool
	var acked atomic.Int64
	var wg sync.WaitGroup
	for w, nd := range []*clustertest.Node{n1, n3} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !stop.Load(); i++ {
				id := fmt.Sprintf("w%d-%d", w, i%200)
				if _, err := put(t, nd, id, map[string]string{"name": fmt.Sprint(i), "phone": nd.ID}, ""); err == nil {
					acked.Add(1)
				}
			}
		}()
	}
	waitFor(t, "writes flowing", 10*time.Second, func() (bool, string) { return acked.Load() > 300, fmt.Sprint(acked.Load()) })
	c.Kill(n2)
	before := acked.Load()
	waitFor(t, "writes continue without n2", 10*time.Second, func() (bool, string) { return acked.Load() > before+500, fmt.Sprint(acked.Load()) })
	c.Restart(n2)
	waitFor(t, "more writes after the restart", 10*time.Second, func() (bool, string) { return acked.Load() > before+1000, fmt.Sprint(acked.Load()) })
	stop.Store(true)
	wg.Wait()
	took := c.WaitConverged(30 * time.Second)
	t.Logf("%d acknowledged edits; converged %s after writes stopped", acked.Load(), took)
}

func TestPartitionConflictShowsInHistory(t *testing.T) {
	if !clustertest.InNetNS() {
		t.Skip("partitions need root, unshare and iptables (a private network namespace)")
	}
	c := clustertest.Start(t, bin, 3, clustertest.Options{})
	n1, n2, n3 := c.Nodes[0], c.Nodes[1], c.Nodes[2]
	mustPut(t, n1, "p1", map[string]string{"name": "Ann", "email": "ann@example.com"}, "")
	c.WaitConverged(10 * time.Second)

	c.Partition([]*clustertest.Node{n1}, []*clustertest.Node{n2, n3})
	// Both sides keep accepting edits of the same field and of different fields.
	mustPut(t, n1, "p1", map[string]string{"name": "Bea (n1 side)"}, "")
	mustPut(t, n2, "p1", map[string]string{"name": "Cid (n2 side)", "phone": "555"}, "")
	for i := 0; i < 50; i++ {
		mustPut(t, n1, fmt.Sprintf("a%d", i), map[string]string{"name": "left"}, "")
		mustPut(t, n3, fmt.Sprintf("b%d", i), map[string]string{"name": "right"}, "")
	}
	time.Sleep(1500 * time.Millisecond) // long enough for failure detection to declare the other side dead
	c.Heal()
	took := c.WaitConverged(20 * time.Second)
	t.Logf("converged %s after heal", took)

	r, err := get(t, n3, "p1")
	if err != nil {
		t.Fatal(err)
	}
	if fieldValue(r, "phone") != "555" || fieldValue(r, "email") != "ann@example.com" {
		t.Errorf("edits of different fields did not both survive: %v", r)
	}
	var conflicted bool
	for _, f := range r.GetFields() {
		if f.GetName() == "name" {
			conflicted = f.GetConflicted() && len(f.GetLive()) == 2
		}
	}
	if !conflicted {
		t.Errorf("concurrent edits of name are not shown as a conflict: %v", r)
	}
	h, err := n2.Records().History(context.Background(), &pb.HistoryRequest{Entity: "contact", Id: "p1", Field: "name"})
	if err != nil {
		t.Fatal(err)
	}
	var won, lost int
	for _, e := range h.GetEntries() {
		switch e.GetFate() {
		case pb.Fate_FATE_WON:
			won++
		case pb.Fate_FATE_LOST:
			lost++
		}
	}
	if won != 1 || lost != 1 {
		t.Errorf("history of name: %d won, %d lost, want 1 and 1: %v", won, lost, h)
	}
}

func TestLeaderKilledConnectorMoves(t *testing.T) {
	cfg := `entities:
  contact:
    fields:
      name: string
      email: string
      phone: string
      company: string
connectors:
  crm:
    kind: noop
`
	c := clustertest.Start(t, bin, 3, clustertest.Options{Config: cfg})
	status := func(nd *clustertest.Node) *pb.StatusResponse {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		st, err := nd.Cluster().Status(ctx, &pb.StatusRequest{})
		if err != nil {
			return nil
		}
		return st
	}
	var owner string
	var epoch uint64
	waitFor(t, "connector placed", 10*time.Second, func() (bool, string) {
		st := status(c.Nodes[0])
		if st == nil || len(st.GetConnectors()) != 1 || st.GetConnectors()[0].GetNode() == "" {
			return false, fmt.Sprint(st)
		}
		owner, epoch = st.GetConnectors()[0].GetNode(), st.GetConnectors()[0].GetEpoch()
		return st.GetRaftLeader() != "", fmt.Sprint(st)
	})
	leaderID := status(c.Nodes[0]).GetRaftLeader()
	var leader *clustertest.Node
	var others []*clustertest.Node
	for _, nd := range c.Nodes {
		if nd.ID == leaderID {
			leader = nd
		} else {
			others = append(others, nd)
		}
	}
	t.Logf("leader %s, connector on %s at epoch %d", leaderID, owner, epoch)
	c.Kill(leader)
	elected := waitFor(t, "a new leader", 3*time.Second, func() (bool, string) {
		st := status(others[0])
		return st != nil && st.GetRaftLeader() != "" && st.GetRaftLeader() != leaderID, fmt.Sprint(st)
	})
	t.Logf("new leader elected %s after the kill", elected)
	if owner == leaderID {
		waitFor(t, "connector moves off the dead node", 10*time.Second, func() (bool, string) {
			st := status(others[0])
			if st == nil || len(st.GetConnectors()) != 1 {
				return false, fmt.Sprint(st)
			}
			p := st.GetConnectors()[0]
			return p.GetNode() != leaderID && p.GetNode() != "" && p.GetEpoch() > epoch, fmt.Sprint(p)
		})
	} else {
		// Kill the owner too (it is not the leader): placement must move.
		var ownerNode *clustertest.Node
		for _, nd := range others {
			if nd.ID == owner {
				ownerNode = nd
			}
		}
		c.Restart(leader)
		c.WaitMembers(10 * time.Second)
		c.Kill(ownerNode)
		waitFor(t, "connector moves off the dead owner", 10*time.Second, func() (bool, string) {
			st := status(leader)
			if st == nil || len(st.GetConnectors()) != 1 {
				return false, fmt.Sprint(st)
			}
			p := st.GetConnectors()[0]
			return p.GetNode() != owner && p.GetNode() != "" && p.GetEpoch() > epoch, fmt.Sprint(p)
		})
	}
	// Writes keep working on the survivors.
	mustPut(t, others[0], "after", map[string]string{"name": "still writable"}, "")
}

func TestNewNodeGetsSnapshot(t *testing.T) {
	if testing.Short() {
		t.Skip("loads 100,000 records")
	}
	c := clustertest.Start(t, bin, 3, clustertest.Options{Args: []string{"--truncate-interval", "500ms", "--truncate-keep", "10"}})
	const records = 100000
	load(t, c.Nodes[0], records)
	c.WaitConverged(60 * time.Second)
	// Wait until the op log is truncated, so the new node cannot replay it.
	waitFor(t, "op log truncated", 20*time.Second, func() (bool, string) {
		st, err := c.Nodes[0].Digest()
		if err != nil {
			return false, err.Error()
		}
		return st.GetTruncated().GetEntries()["n1"] > 0, fmt.Sprint(st.GetTruncated())
	})
	n4 := c.AddNode()
	took := c.WaitConverged(120 * time.Second)
	st, err := n4.Digest()
	if err != nil {
		t.Fatal(err)
	}
	if st.GetRecords() != records {
		t.Errorf("n4 holds %d records, want %d", st.GetRecords(), records)
	}
	if st.GetTruncated().GetEntries()["n1"] == 0 {
		t.Errorf("n4's op log starts at n1:1: it replayed the log instead of installing a snapshot (truncated %v)", st.GetTruncated())
	}
	t.Logf("n4 converged %s after joining", took)
}

// load writes n records through one node with many concurrent clients.
func load(t testing.TB, nd *clustertest.Node, n int) {
	t.Helper()
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for w := 0; w < 64; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				if _, err := put(t, nd, fmt.Sprintf("r%06d", i), map[string]string{"name": fmt.Sprint(i)}, ""); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// TestCutOffOwnerStopsConnectors: a connector's owner cut off from the
// cluster stops running it within its lease (it cannot know whether the
// leader moved it; two owners capturing one source make each change twice),
// and runs connectors again once a leader reaches it.
func TestCutOffOwnerStopsConnectors(t *testing.T) {
	if !clustertest.InNetNS() {
		t.Skip("partitions need root, unshare and iptables (a private network namespace)")
	}
	cfg := `entities:
  contact:
    fields:
      name: string
connectors:
  crm:
    kind: noop
`
	c := clustertest.Start(t, bin, 3, clustertest.Options{Config: cfg})
	running := func(nd *clustertest.Node) (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		st, err := nd.Cluster().ConnectorStatus(ctx, &pb.ConnectorStatusRequest{LocalOnly: true})
		if err != nil {
			return false, err.Error()
		}
		return len(st.GetConnectors()) == 1, fmt.Sprint(st.GetConnectors())
	}
	var owner *clustertest.Node
	waitFor(t, "the connector runs on one node", 10*time.Second, func() (bool, string) {
		owner = nil
		n := 0
		for _, nd := range c.Nodes {
			if ok, _ := running(nd); ok {
				owner, n = nd, n+1
			}
		}
		return n == 1, fmt.Sprintf("%d nodes run it", n)
	})
	var others []*clustertest.Node
	for _, nd := range c.Nodes {
		if nd != owner {
			others = append(others, nd)
		}
	}
	c.Partition([]*clustertest.Node{owner}, others)
	waitFor(t, "the cut-off owner stops its connector", 10*time.Second, func() (bool, string) {
		ok, s := running(owner)
		return !ok, s
	})
	if !strings.Contains(owner.Logs(), "no contact with a raft leader") {
		t.Errorf("the cut-off owner %s did not say why it stopped its connectors", owner.ID)
	}
	waitFor(t, "the majority runs the connector", 15*time.Second, func() (bool, string) {
		a, _ := running(others[0])
		b, _ := running(others[1])
		return a != b, fmt.Sprint(a, b)
	})
	c.Heal()
	waitFor(t, "after the heal the connector runs on exactly one node", 15*time.Second, func() (bool, string) {
		n := 0
		for _, nd := range c.Nodes {
			if ok, _ := running(nd); ok {
				n++
			}
		}
		return n == 1, fmt.Sprintf("%d nodes run it", n)
	})
}
