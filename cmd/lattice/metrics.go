package main

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/lattice-sync/lattice/cluster"
	"github.com/lattice-sync/lattice/connectors"
	"github.com/lattice-sync/lattice/storage"
)

// metrics is the agent's Prometheus instrumentation. Names follow
// lattice_<subsystem>_<name>_<unit>.
type metrics struct {
	edits     prometheus.Counter
	conflicts prometheus.Counter
	batches   prometheus.Histogram
	batchSize prometheus.Histogram
	requests  *prometheus.CounterVec
	latency   *prometheus.HistogramVec
	refused   *prometheus.CounterVec
	snapshots prometheus.Counter
	truncated prometheus.Counter
	repaired  prometheus.Counter
	captured  *prometheus.CounterVec
	capLag    *prometheus.HistogramVec
	projLag   *prometheus.HistogramVec
	resnap    *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		edits: prometheus.NewCounter(prometheus.CounterOpts{Name: "lattice_store_edits_total",
			Help: "Edits applied to this node's store (local and replicated)."}),
		conflicts: prometheus.NewCounter(prometheus.CounterOpts{Name: "lattice_store_conflicts_total",
			Help: "Registers left with more than one live version by an applied edit."}),
		batches: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "lattice_store_apply_seconds",
			Help:    "Time to stage and durably commit one batch of edits (group commit).",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16)}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "lattice_store_batch_edits",
			Help: "Edits committed per synced batch.", Buckets: prometheus.ExponentialBuckets(1, 2, 11)}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lattice_api_requests_total",
			Help: "gRPC requests by method and status code."}, []string{"method", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "lattice_api_request_seconds",
			Help: "gRPC unary request latency by method.", Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16)}, []string{"method"}),
	}
	m.refused = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lattice_hlc_offset_refusals_total",
		Help: "Edits refused because their timestamp was beyond max-offset ahead of this node's clock, by origin."}, []string{"origin"})
	m.snapshots = prometheus.NewCounter(prometheus.CounterOpts{Name: "lattice_cluster_snapshot_records_total",
		Help: "Records merged from peers' snapshots."})
	m.truncated = prometheus.NewCounter(prometheus.CounterOpts{Name: "lattice_cluster_oplog_truncated_total",
		Help: "Op-log entries truncated because every member holds them."})
	m.repaired = prometheus.NewCounter(prometheus.CounterOpts{Name: "lattice_cluster_antientropy_repairs_total",
		Help: "Edits of another origin received from a peer: anti-entropy filling in what the origin did not deliver."})
	m.captured = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lattice_connector_captured_edits_total",
		Help: "Source changes captured as edits, by connector."}, []string{"connector"})
	m.capLag = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "lattice_connector_capture_lag_seconds",
		Help: "From a source transaction's commit to its edits being durable, by connector.", Buckets: prometheus.ExponentialBuckets(0.001, 2, 16)}, []string{"connector"})
	m.projLag = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "lattice_connector_projection_lag_seconds",
		Help: "From an edit to its record being written into the system, by connector.", Buckets: prometheus.ExponentialBuckets(0.001, 2, 16)}, []string{"connector"})
	m.resnap = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lattice_connector_resnapshots_total",
		Help: "Times capture distrusted its replication slot (missing, invalidated or recreated) and started over from a new snapshot, by connector."}, []string{"connector"})
	reg.MustRegister(m.resnap)
	reg.MustRegister(m.edits, m.conflicts, m.batches, m.batchSize, m.requests, m.latency, m.refused, m.snapshots, m.truncated, m.repaired,
		m.captured, m.capLag, m.projLag)
	return m
}

// Captured implements connectors.Observer.
func (m *metrics) Captured(connector string, edits int, lag time.Duration) {
	m.captured.WithLabelValues(connector).Add(float64(edits))
	m.capLag.WithLabelValues(connector).Observe(lag.Seconds())
}

// Projected implements connectors.Observer.
func (m *metrics) Projected(connector string, lag time.Duration) {
	m.projLag.WithLabelValues(connector).Observe(lag.Seconds())
}

// Resnapshot implements connectors.Observer.
func (m *metrics) Resnapshot(connector, _ string) { m.resnap.WithLabelValues(connector).Inc() }

// Repaired implements cluster.Observer.
func (m *metrics) Repaired(edits int) { m.repaired.Add(float64(edits)) }

// clusterCollector exports per-peer replication lag and the Raft state.
type clusterCollector struct {
	node       *cluster.Node
	lagEntries *prometheus.Desc
	lagSeconds *prometheus.Desc
	raftState  *prometheus.Desc
	dlq        *prometheus.Desc
}

func newClusterCollector(n *cluster.Node) *clusterCollector {
	return &clusterCollector{node: n,
		lagEntries: prometheus.NewDesc("lattice_cluster_replication_lag_entries",
			"Edits applied on this node that the peer has not acknowledged.", []string{"peer"}, nil),
		lagSeconds: prometheus.NewDesc("lattice_cluster_replication_lag_seconds",
			"How long the peer has been behind this node (0 when caught up).", []string{"peer"}, nil),
		raftState: prometheus.NewDesc("lattice_raft_state",
			"1 for this node's current Raft state (Leader, Follower, Candidate, Shutdown).", []string{"state"}, nil),
		dlq: prometheus.NewDesc("lattice_connector_dead_letters",
			"Entries in a connector's dead-letter queue (changes it could not apply).", []string{"connector"}, nil),
	}
}

func (c *clusterCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.lagEntries
	ch <- c.lagSeconds
	ch <- c.raftState
	ch <- c.dlq
}

func (c *clusterCollector) Collect(ch chan<- prometheus.Metric) {
	for _, l := range c.node.Lag() {
		ch <- prometheus.MustNewConstMetric(c.lagEntries, prometheus.GaugeValue, float64(l.Entries), l.Peer)
		ch <- prometheus.MustNewConstMetric(c.lagSeconds, prometheus.GaugeValue, l.Seconds, l.Peer)
	}
	ch <- prometheus.MustNewConstMetric(c.raftState, prometheus.GaugeValue, 1, c.node.RaftState())
	st := c.node.State()
	for name := range st.Connectors {
		ch <- prometheus.MustNewConstMetric(c.dlq, prometheus.GaugeValue, float64(len(st.DeadLetters[name])), name)
	}
}

// ClockRefused implements cluster.Observer.
func (m *metrics) ClockRefused(origin string) { m.refused.WithLabelValues(origin).Inc() }

// SnapshotInstalled implements cluster.Observer.
func (m *metrics) SnapshotInstalled(records int) { m.snapshots.Add(float64(records)) }

// Truncated implements cluster.Observer.
func (m *metrics) Truncated(entries uint64) { m.truncated.Add(float64(entries)) }

// Committed implements storage.Observer.
func (m *metrics) Committed(edits, conflicts int, took time.Duration) {
	m.edits.Add(float64(edits))
	m.conflicts.Add(float64(conflicts))
	m.batches.Observe(took.Seconds())
	m.batchSize.Observe(float64(edits))
}

func (m *metrics) watchStore(reg prometheus.Registerer, s *storage.Store) {
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "lattice_store_size_bytes",
		Help: "Disk space used by this node's Pebble store."}, func() float64 { return float64(s.DiskUsage()) }))
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "lattice_hlc_physical_offset_seconds",
		Help: "How far this node's HLC runs ahead of its physical clock."}, func() float64 {
		last := s.Clock().Last()
		return float64(last.Millis()-time.Now().UnixMilli()) / 1000
	}))
}

func (m *metrics) unaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := h(ctx, req)
	m.latency.WithLabelValues(info.FullMethod).Observe(time.Since(start).Seconds())
	m.requests.WithLabelValues(info.FullMethod, status.Code(err).String()).Inc()
	return resp, err
}

// connectorCollector exports, for every configured connector, whether it
// runs on this node, and how often its attempts here failed and were
// retried: sum(lattice_connector_running) by (connector) is 0 for a
// connector that runs nowhere.
type connectorCollector struct {
	node     *cluster.Node
	mgr      *connectors.Manager
	running  *prometheus.Desc
	restarts *prometheus.Desc
	// Rate-limit pools of the connectors running here, from their reports.
	rlWait   *prometheus.Desc
	rlTokens *prometheus.Desc
	rlLimit  *prometheus.Desc
}

func newConnectorCollector(n *cluster.Node, m *connectors.Manager) *connectorCollector {
	return &connectorCollector{node: n, mgr: m,
		running: prometheus.NewDesc("lattice_connector_running",
			"1 while the connector runs on this node (an attempt is in progress), else 0.", []string{"connector"}, nil),
		restarts: prometheus.NewDesc("lattice_connector_restarts_total",
			"Attempts of the connector on this node that ended with an error and were retried, since the node started.", []string{"connector"}, nil),
		rlWait: prometheus.NewDesc("lattice_connector_ratelimit_wait_seconds_total",
			"Time the connector waited for its rate-limit budget (pool reads: capture, writes: projection), since it started on this node (an attempt).",
			[]string{"connector", "pool"}, nil),
		rlTokens: prometheus.NewDesc("lattice_connector_ratelimit_tokens",
			"Rows the connector's rate-limit pool allows at once now (its budget, at most the burst).", []string{"connector", "pool"}, nil),
		rlLimit: prometheus.NewDesc("lattice_connector_ratelimit_limit_rows_per_second",
			"The connector's configured rate limit, by pool.", []string{"connector", "pool"}, nil),
	}
}

func (c *connectorCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.running
	ch <- c.restarts
	ch <- c.rlWait
	ch <- c.rlTokens
	ch <- c.rlLimit
}

func (c *connectorCollector) Collect(ch chan<- prometheus.Metric) {
	here := map[string]connectors.Status{}
	for _, s := range c.mgr.Statuses() {
		here[s.Name] = s
	}
	for name := range c.node.State().Connectors {
		running := 0.0
		s, ok := here[name]
		if ok && s.Running {
			running = 1
		}
		ch <- prometheus.MustNewConstMetric(c.running, prometheus.GaugeValue, running, name)
		if ok {
			ch <- prometheus.MustNewConstMetric(c.restarts, prometheus.CounterValue, float64(s.Restarts), name)
		}
		if ok && s.Running && s.Report != nil {
			for _, l := range s.Report.RateLimits {
				ch <- prometheus.MustNewConstMetric(c.rlWait, prometheus.CounterValue, l.Waited.Seconds(), name, l.Pool)
				ch <- prometheus.MustNewConstMetric(c.rlTokens, prometheus.GaugeValue, l.Tokens, name, l.Pool)
				ch <- prometheus.MustNewConstMetric(c.rlLimit, prometheus.GaugeValue, l.Limit, name, l.Pool)
			}
		}
	}
}
