package cluster

import (
	"encoding/json"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/memberlist"
)

// meta is what a node gossips about itself (memberlist limits it to 512 bytes).
type meta struct {
	GRPC string `json:"g"`
	Raft string `json:"r"`
}

// MemberState is a member's membership state.
type MemberState string

// Member states.
const (
	StateAlive   MemberState = "alive"
	StateSuspect MemberState = "suspect"
	StateDead    MemberState = "dead"
	StateLeft    MemberState = "left"
)

// delegate supplies node metadata to memberlist; the rest is unused.
type delegate struct{ meta []byte }

func (d *delegate) NodeMeta(limit int) []byte {
	if len(d.meta) > limit {
		panic(fmt.Sprintf("cluster: node metadata is %d bytes, over memberlist's %d", len(d.meta), limit))
	}
	return d.meta
}
func (d *delegate) NotifyMsg([]byte)                {}
func (d *delegate) GetBroadcasts(int, int) [][]byte { return nil }
func (d *delegate) LocalState(bool) []byte          { return nil }
func (d *delegate) MergeRemoteState([]byte, bool)   {}

// events forwards membership changes to the node's reconcile loop.
type events struct{ ch chan struct{} }

func (e *events) poke() {
	select {
	case e.ch <- struct{}{}:
	default:
	}
}
func (e *events) NotifyJoin(*memberlist.Node)   { e.poke() }
func (e *events) NotifyLeave(*memberlist.Node)  { e.poke() }
func (e *events) NotifyUpdate(*memberlist.Node) { e.poke() }

// boundTransport is memberlist's NetTransport with outgoing TCP connections
// bound to the node's own IP, so peers (and fault-injection firewall rules)
// see every connection coming from the node's address.
type boundTransport struct {
	*memberlist.NetTransport
	ip net.IP
}

func (t *boundTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	return t.DialAddressTimeout(memberlist.Address{Addr: addr}, timeout)
}

func (t *boundTransport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout, LocalAddr: &net.TCPAddr{IP: t.ip}}
	return d.Dial("tcp", a.Addr)
}

// slogWriter bridges a *log.Logger (memberlist, raft's transport) into slog.
type slogWriter struct{ l *slog.Logger }

func (w slogWriter) Write(p []byte) (int, error) {
	msg := strings.TrimSpace(string(p))
	level := slog.LevelDebug
	switch {
	case strings.Contains(msg, "[ERR]"):
		level = slog.LevelError
	case strings.Contains(msg, "[WARN]"):
		level = slog.LevelWarn
	case strings.Contains(msg, "[INFO]"):
		level = slog.LevelInfo
	}
	w.l.Log(nil, level, msg)
	return len(p), nil
}

func newStdLogger(l *slog.Logger) *log.Logger { return log.New(slogWriter{l}, "", 0) }

// startMembership creates the memberlist.
func (n *Node) startMembership() error {
	host, portStr, err := net.SplitHostPort(n.cfg.GossipAddr)
	if err != nil {
		return fmt.Errorf("gossip address %q: %w", n.cfg.GossipAddr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return fmt.Errorf("gossip address %q: bad port", n.cfg.GossipAddr)
	}
	m, err := json.Marshal(meta{GRPC: n.cfg.GRPCAddr, Raft: n.cfg.RaftAddr})
	if err != nil {
		return err
	}
	mc := memberlist.DefaultLANConfig()
	mc.Name = n.cfg.NodeID
	mc.BindAddr, mc.BindPort = host, port
	mc.AdvertiseAddr, mc.AdvertisePort = host, port
	mc.ProbeInterval = n.cfg.ProbeInterval
	mc.ProbeTimeout = n.cfg.ProbeTimeout
	mc.SuspicionMult = n.cfg.SuspicionMult
	mc.GossipInterval = n.cfg.GossipInterval
	mc.Delegate = &delegate{meta: m}
	mc.Events = n.events
	mc.Logger = newStdLogger(n.log.With("component", "memberlist"))
	nt, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{
		BindAddrs: []string{host}, BindPort: port, Logger: mc.Logger,
	})
	if err != nil {
		return fmt.Errorf("gossip on %s: %w (is the port in use? pick another --gossip-addr)", n.cfg.GossipAddr, err)
	}
	mc.Transport = &boundTransport{NetTransport: nt, ip: net.ParseIP(host)}
	ml, err := memberlist.Create(mc)
	if err != nil {
		nt.Shutdown()
		return fmt.Errorf("start gossip: %w", err)
	}
	n.ml = ml
	for _, a := range n.cfg.Join {
		n.known[a] = true
	}
	if len(n.cfg.Join) > 0 {
		if _, err := ml.Join(n.cfg.Join); err != nil {
			n.log.Warn("join failed; will retry", "join", n.cfg.Join, "err", err)
		}
	}
	return nil
}

// memberInfo is what the node knows of one member.
type memberInfo struct {
	ID         string
	GossipAddr string
	GRPCAddr   string
	RaftAddr   string
	State      MemberState
	Since      time.Time
}

// members returns memberlist's view, including dead and left members.
func (n *Node) members() []memberInfo {
	var out []memberInfo
	now := time.Now()
	for _, m := range n.ml.Members() {
		out = append(out, n.infoOf(m, StateAlive, now))
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	alive := map[string]bool{}
	for _, m := range out {
		alive[m.ID] = true
		n.mu.seen[m.ID] = m
	}
	for id, m := range n.mu.seen {
		if alive[id] {
			continue
		}
		if m.State == StateAlive || m.State == StateSuspect {
			m.State, m.Since = StateDead, now
			if n.mu.left[id] {
				m.State = StateLeft
			}
			n.mu.seen[id] = m
		}
		out = append(out, m)
	}
	return out
}

func (n *Node) infoOf(m *memberlist.Node, st MemberState, now time.Time) memberInfo {
	var md meta
	_ = json.Unmarshal(m.Meta, &md)
	if m.State == memberlist.StateSuspect {
		st = StateSuspect
	}
	return memberInfo{ID: m.Name, GossipAddr: m.Address(), GRPCAddr: md.GRPC, RaftAddr: md.Raft, State: st, Since: now}
}

// rejoinLoop joins known peers that are not alive, so a node cut off longer
// than memberlist's gossip-to-the-dead window finds its way back.
func (n *Node) rejoinLoop() {
	defer n.wg.Done()
	t := time.NewTicker(n.cfg.RejoinInterval)
	defer t.Stop()
	for {
		select {
		case <-n.stop:
			return
		case <-t.C:
		}
		alive := map[string]bool{}
		for _, m := range n.ml.Members() {
			alive[m.Address()] = true
			if m.Name != n.cfg.NodeID {
				n.mu.Lock()
				n.known[m.Address()] = true
				n.mu.Unlock()
			}
		}
		var targets []string
		n.mu.Lock()
		for a := range n.known {
			if !alive[a] && a != n.cfg.GossipAddr {
				targets = append(targets, a)
			}
		}
		n.mu.Unlock()
		if len(targets) > 0 {
			if k, err := n.ml.Join(targets); err == nil && k > 0 {
				n.log.Info("rejoined peers", "reached", k)
			}
		}
	}
}

var _ io.Writer = slogWriter{}
