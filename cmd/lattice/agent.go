package main

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	"github.com/lattice-sync/lattice/api/server"
	"github.com/lattice-sync/lattice/cluster"
	"github.com/lattice-sync/lattice/connectors"
	"github.com/lattice-sync/lattice/connectors/postgres"
	"github.com/lattice-sync/lattice/crdt"
	"github.com/lattice-sync/lattice/storage"
)

//go:embed quickstart.yaml
var quickstartYAML []byte

type agentFlags struct {
	gossipAddr string
	raftAddr   string
	join       []string
	deadGrace  time.Duration
	truncEvery time.Duration
	truncKeep  uint64
	nodeID     string
	dataDir    string
	grpcAddr   string
	httpAddr   string
	config     string
	logLevel   string
	maxOffset  time.Duration
	prune      time.Duration
	// clockOffsetFile is test-only (hidden): see offsetClock.
	clockOffsetFile string
}

func newAgentCmd() *cobra.Command {
	f := &agentFlags{}
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "run a lattice node",
		Long: `Runs a lattice node: the Pebble store, the gRPC API (with reflection and the
standard health service) and an HTTP endpoint with /metrics, /healthz and /readyz.
SIGINT or SIGTERM stop it gracefully: requests in flight finish, nothing
acknowledged is lost.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runAgent(cmd.Context(), f, cmd.ErrOrStderr())
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.nodeID, "node-id", "n1", "this node's id (letters, digits, '-', '_', '.'); fixed for the life of its data directory")
	fl.StringVar(&f.dataDir, "data-dir", "", "data directory (default ./data/<node-id>)")
	fl.StringVar(&f.grpcAddr, "grpc-addr", "127.0.0.1:7101", "gRPC listen address")
	fl.StringVar(&f.httpAddr, "http-addr", "127.0.0.1:7201", "HTTP listen address for /metrics, /healthz and /readyz (empty disables)")
	fl.StringVar(&f.gossipAddr, "gossip-addr", "127.0.0.1:7301", "gossip (memberlist) listen address, UDP and TCP")
	fl.StringVar(&f.raftAddr, "raft-addr", "127.0.0.1:7401", "Raft listen address")
	fl.StringSliceVar(&f.join, "join", nil, "gossip address of a member to join (repeatable); without it the node starts a new cluster")
	fl.DurationVar(&f.deadGrace, "dead-grace", 30*time.Second, "how long a member may be dead before it is dropped from the Raft voters")
	fl.DurationVar(&f.truncEvery, "truncate-interval", 10*time.Second, "how often op-log entries every member holds are truncated (0 disables)")
	fl.Uint64Var(&f.truncKeep, "truncate-keep", 10000, "newest op-log entries kept per origin even when every member holds them")
	fl.StringVar(&f.config, "config", "", "entity configuration (YAML); default: the built-in quickstart (entity contact)")
	fl.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fl.DurationVar(&f.maxOffset, "max-offset", crdt.DefaultMaxOffset, "largest clock skew accepted from peers and sources")
	fl.DurationVar(&f.prune, "prune-interval", 10*time.Minute, "how often superseded versions past their entity's retention are pruned")
	// Test-only: the fault harness skews this node's HLC physical clock
	// through the file (a signed offset in ms, re-read every 100 ms).
	fl.StringVar(&f.clockOffsetFile, "clock-offset-file", "", "TEST ONLY: add the offset in ms held in this file to the HLC's physical clock")
	_ = fl.MarkHidden("clock-offset-file")
	return cmd
}

func loadSchema(path string) (*crdt.Schema, string, string, error) {
	if path == "" {
		s, err := crdt.ParseSchema("quickstart.yaml (built in)", quickstartYAML)
		return s, "built-in quickstart", string(quickstartYAML), err
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, "", "", fmt.Errorf("read config: %w", err)
	}
	s, err := crdt.ParseSchema(path, data)
	return s, path, string(data), err
}

func newLogger(w interface{ Write([]byte) (int, error) }, level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l})), nil
}

func runAgent(ctx context.Context, f *agentFlags, stderr interface{ Write([]byte) (int, error) }) error {
	// Logger first: every later step reports through it.
	log, err := newLogger(stderr, f.logLevel)
	if err != nil {
		return err
	}
	log = log.With("node", f.nodeID)

	// Entity configuration: refuse to start on a bad file, naming file, line and field.
	schema, source, schemaYAML, err := loadSchema(f.config)
	if err != nil {
		return err
	}
	log.Info("configuration loaded", "source", source, "entities", len(schema.Entities))

	// Listeners first, so a busy port fails before anything starts.
	lis, err := net.Listen("tcp", f.grpcAddr)
	if err != nil {
		return fmt.Errorf("listen on --grpc-addr %s: %w (is another lattice running? pick another port)", f.grpcAddr, err)
	}
	defer lis.Close()
	var hl net.Listener
	if f.httpAddr != "" {
		if hl, err = net.Listen("tcp", f.httpAddr); err != nil {
			return fmt.Errorf("listen on --http-addr %s: %w (pick another port, or pass --http-addr '' to disable)", f.httpAddr, err)
		}
		defer hl.Close()
	}

	// Metrics registry, shared by the store observer and /metrics.
	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	m := newMetrics(reg)

	// Store: Pebble, the committer, the HLC restored above its persisted ceiling.
	dir := f.dataDir
	if dir == "" {
		dir = filepath.Join("data", f.nodeID)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create data directory: %w", err)
	}
	scfg := storage.DefaultConfig(dir, f.nodeID)
	scfg.MaxOffset = f.maxOffset
	scfg.Logger = log
	scfg.Metrics = m
	if f.clockOffsetFile != "" {
		scfg.Physical = newOffsetClock(f.clockOffsetFile).Physical
		log.Warn("TEST ONLY: the HLC physical clock is skewed by the offset in --clock-offset-file", "file", f.clockOffsetFile)
	}
	store, err := storage.Open(scfg)
	if err != nil {
		return err
	}
	defer func() {
		// Last step of shutdown: the committer finishes its batch, then Pebble closes.
		if err := store.Close(); err != nil {
			log.Error("close store", "err", err)
		}
		log.Info("stopped")
	}()
	m.watchStore(reg, store)
	log.Info("store opened", "dir", dir, "applied", store.Applied().String())

	// Cluster: gossip membership, op-log replication, Raft control plane.
	// The configuration committed in Raft replaces the local file.
	ctx, leave := context.WithCancel(ctx)
	defer leave()
	var records *server.Records
	leaving := false
	ccfg := cluster.DefaultConfig()
	ccfg.NodeID, ccfg.GRPCAddr, ccfg.GossipAddr, ccfg.RaftAddr = f.nodeID, f.grpcAddr, f.gossipAddr, f.raftAddr
	ccfg.Join, ccfg.DataDir, ccfg.Store, ccfg.Logger, ccfg.Metrics = f.join, filepath.Join(dir, "raft"), store, log, m
	ccfg.Schema, ccfg.SchemaYAML, ccfg.DeadGrace = schema, schemaYAML, f.deadGrace
	ccfg.TruncateInterval, ccfg.TruncateKeep = f.truncEvery, f.truncKeep
	ccfg.OnSchema = func(s *crdt.Schema) {
		if records != nil {
			if err := records.SetSchema(s); err != nil {
				log.Error("configuration from raft refused", "err", err)
				return
			}
			log.Info("configuration updated through raft", "entities", len(s.Entities))
		} else {
			schema = s
		}
	}
	ccfg.OnLeave = func() { leaving = true; leave() }
	// The connector manager is built below, before the gRPC server serves:
	// only gRPC handlers (Cluster.ConnectorStatus) call this.
	var mgr *connectors.Manager
	ccfg.LocalConnectors = func() []cluster.ConnectorRuntime { return connectorRuntimes(mgr) }
	node, err := cluster.New(ccfg)
	if err != nil {
		return err
	}
	stopNode := func() {
		// Leave gracefully if asked, else just stop (a restart resumes).
		var err error
		if leaving {
			err = node.LeaveCluster(context.Background())
		} else {
			err = node.Close()
		}
		if err != nil {
			log.Warn("stop cluster node", "err", err)
		}
	}
	nodeStopped := false
	defer func() {
		if !nodeStopped {
			stopNode()
		}
	}()
	reg.MustRegister(newClusterCollector(node))
	log.Info("cluster node started", "gossip", f.gossipAddr, "raft", f.raftAddr, "join", f.join)

	// Records API, cluster and peer services, health and reflection on one gRPC server.
	records, err = server.New(server.Config{Store: store, Schema: schema, Logger: log, Replicator: node})
	if err != nil {
		return err
	}
	// Connector manager: built now so status requests can reach it once the
	// gRPC server serves; it starts running connectors further down.
	mgr = connectors.NewManager(node, records, func(decl crdt.ConnectorDecl, epoch uint64) (connectors.Runnable, error) {
		switch decl.Kind {
		case "postgres":
			cfg, err := postgres.ParseConfig(decl.Name, decl.Config, records.Schema())
			if err != nil {
				return nil, err
			}
			// Captured edits reach cfg.Acks nodes before the source may
			// release them (fewer when fewer are alive: a lone survivor
			// still makes progress).
			wait := func(ctx context.Context, dot crdt.Dot, k int) error {
				return node.WaitAcks(ctx, dot, min(k, 1+len(node.Peers())))
			}
			// A schema change the mapping does not fit pauses the connector
			// through Raft, under its epoch, with the reason its status shows.
			pause := func(ctx context.Context, reason string) error {
				return node.PauseConnectorFor(ctx, decl.Name, epoch, reason)
			}
			// WithReport last: it wraps the hooks given before it.
			return postgres.New(cfg, store, records, log, postgres.WithCheckpoints(node, epoch),
				postgres.WithDeadLetters(dlqAdapter{node}), postgres.WithObserver(m),
				postgres.WithWriteConcern(cfg.Acks, wait), postgres.WithPause(pause), postgres.WithReport()), nil
		}
		return nil, fmt.Errorf("connector %q: unknown kind %q (supported: postgres)", decl.Name, decl.Kind)
	}, log)
	reg.MustRegister(newConnectorCollector(node, mgr))

	gs := grpc.NewServer(server.ServerOptions(m.unaryInterceptor)...)
	records.Register(gs)
	node.Register(gs)
	hs := health.NewServer()
	healthpb.RegisterHealthServer(gs, hs)
	reflection.Register(gs)
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus("lattice.v1.Records", healthpb.HealthCheckResponse_SERVING)
	grpcDone := make(chan error, 1)
	go func() { grpcDone <- gs.Serve(lis) }()
	log.Info("gRPC API listening", "addr", lis.Addr().String())

	// HTTP: metrics and probes.
	var hsrv *http.Server
	httpDone := make(chan error, 1)
	if f.httpAddr != "" {
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
		// Go profiles, for finding where time goes under load (the HTTP
		// address is loopback by default; do not expose it publicly).
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
		mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
			if ctx.Err() != nil {
				http.Error(w, "shutting down", http.StatusServiceUnavailable)
				return
			}
			fmt.Fprintln(w, "ready")
		})
		hsrv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() { httpDone <- hsrv.Serve(hl) }()
		log.Info("HTTP listening", "addr", hl.Addr().String(), "paths", "/metrics /healthz /readyz /debug/pprof/")
	}

	// Connectors: run those the Raft leader placed on this node.
	connCtx, stopConnectors := context.WithCancel(ctx)
	connDone := make(chan struct{})
	go func() {
		defer close(connDone)
		mgr.Run(connCtx)
	}()

	// Retention: prune superseded versions past each entity's retention.
	pruneDone := make(chan struct{})
	pruneCtx, stopPrune := context.WithCancel(ctx)
	go func() {
		defer close(pruneDone)
		pruneLoop(pruneCtx, store, records, f.prune, log)
	}()

	// Run until a signal or a server failure.
	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case err := <-grpcDone:
		log.Error("gRPC server stopped", "err", err)
	case err := <-httpDone:
		log.Error("HTTP server stopped", "err", err)
	}

	// Stop in reverse order: stop advertising; stop the cluster node, which
	// ends the replication streams and write-concern waits; drain the gRPC
	// requests in flight (long-lived watch streams are cut after a short
	// grace); stop HTTP and pruning; the store closes last (deferred).
	hs.Shutdown()
	stopConnectors()
	<-connDone
	stopNode()
	nodeStopped = true
	stopped := make(chan struct{})
	go func() { gs.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(3 * time.Second):
		log.Info("closing remaining streams (watchers resume from their cursor)")
		gs.Stop()
	}
	if hsrv != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = hsrv.Shutdown(sctx)
		cancel()
	}
	stopPrune()
	<-pruneDone
	return nil
}

func pruneLoop(ctx context.Context, store *storage.Store, records *server.Records, every time.Duration, log *slog.Logger) {
	if every <= 0 {
		return
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := store.Clock().Now()
		for _, e := range records.Schema().Entities {
			if e.Retention <= 0 {
				continue
			}
			horizon := crdt.MakeTimestamp(now.Millis()-e.Retention.Milliseconds(), 0)
			n, err := store.Prune(e.Name, horizon)
			if err != nil && !errors.Is(err, storage.ErrClosed) {
				log.Error("prune history", "entity", e.Name, "err", err)
			} else if n > 0 {
				log.Info("pruned history", "entity", e.Name, "versions", n)
			}
		}
	}
}
