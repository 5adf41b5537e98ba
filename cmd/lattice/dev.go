package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/lattice-sync/lattice/api/lattice/v1"
)

func newDevCmd() *cobra.Command {
	var nodes int
	var dataDir, config, host, logLevel string
	var fresh bool
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "run a local cluster of N agent processes (default 3) until Ctrl-C",
		Long: `Starts N lattice agents on one host, each with its own data directory and ports
(node i: gRPC 7100+i, HTTP 7200+i, gossip 7300+i, Raft 7400+i), joins them into one
cluster, prints their endpoints and stops them all on Ctrl-C. Data survives restarts
unless --fresh is given.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runDev(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), nodes, host, dataDir, config, logLevel, fresh)
		},
	}
	cmd.Flags().IntVarP(&nodes, "nodes", "n", 3, "number of nodes (1-9)")
	cmd.Flags().StringVar(&host, "host", "127.0.0.1", "address every node binds")
	cmd.Flags().StringVar(&dataDir, "data-dir", filepath.Join("data", "dev"), "parent directory of the nodes' data directories")
	cmd.Flags().StringVar(&config, "config", "", "entity configuration (YAML); default: the built-in quickstart")
	cmd.Flags().StringVar(&logLevel, "log-level", "warn", "agents' log level")
	cmd.Flags().BoolVar(&fresh, "fresh", false, "delete the data directories first")
	return cmd
}

type devNode struct {
	id                       string
	grpc, http, gossip, raft string
	cmd                      *exec.Cmd
	done                     chan error
}

func runDev(ctx context.Context, stdout, stderr io.Writer, n int, host, dataDir, config, logLevel string, fresh bool) error {
	if n < 1 || n > 9 {
		return fmt.Errorf("--nodes %d: want 1 to 9", n)
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	if fresh {
		if err := os.RemoveAll(dataDir); err != nil {
			return err
		}
	}
	var logMu sync.Mutex
	var nodes []*devNode
	stopAll := func() {
		for _, d := range nodes {
			if d.cmd.Process != nil {
				_ = d.cmd.Process.Signal(syscall.SIGTERM)
			}
		}
		for _, d := range nodes {
			select {
			case err := <-d.done:
				d.done <- err
			case <-time.After(15 * time.Second):
				fmt.Fprintf(stderr, "%s did not stop in 15 s: killing it\n", d.id)
				_ = d.cmd.Process.Kill()
				<-d.done
			}
		}
	}
	start := func(d *devNode, args []string) error {
		d.cmd = exec.Command(exe, args...)
		pipe, err := d.cmd.StderrPipe()
		if err != nil {
			return err
		}
		d.cmd.Stdout = d.cmd.Stderr
		if err := d.cmd.Start(); err != nil {
			return fmt.Errorf("start %s: %w", d.id, err)
		}
		go func(id string, r io.Reader) {
			sc := bufio.NewScanner(r)
			for sc.Scan() {
				logMu.Lock()
				fmt.Fprintf(stderr, "[%s] %s\n", id, sc.Text())
				logMu.Unlock()
			}
		}(d.id, pipe)
		d.done = make(chan error, 1)
		go func(cmd *exec.Cmd, done chan error) { done <- cmd.Wait() }(d.cmd, d.done)
		return nil
	}
	argsOf := map[*devNode][]string{}
	for i := 1; i <= n; i++ {
		d := &devNode{id: fmt.Sprintf("n%d", i),
			grpc: fmt.Sprintf("%s:%d", host, 7100+i), http: fmt.Sprintf("%s:%d", host, 7200+i),
			gossip: fmt.Sprintf("%s:%d", host, 7300+i), raft: fmt.Sprintf("%s:%d", host, 7400+i)}
		args := []string{"agent", "--node-id", d.id, "--data-dir", filepath.Join(dataDir, d.id),
			"--grpc-addr", d.grpc, "--http-addr", d.http, "--gossip-addr", d.gossip, "--raft-addr", d.raft,
			"--log-level", logLevel}
		if config != "" {
			args = append(args, "--config", config)
		}
		if i > 1 {
			args = append(args, "--join", nodes[0].gossip)
		}
		argsOf[d] = args
		if err := start(d, args); err != nil {
			stopAll()
			return err
		}
		nodes = append(nodes, d)
	}
	// Wait until every node answers and sees all the others.
	if err := waitMembers(ctx, nodes, 30*time.Second); err != nil {
		stopAll()
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "lattice dev: %d nodes running (data in %s); Ctrl-C stops them\n\n", n, dataDir)
	fmt.Fprintln(tw, "NODE\tPID\tGRPC (--addr)\tMETRICS\tGOSSIP\tRAFT")
	for _, d := range nodes {
		fmt.Fprintf(tw, "%s\t%d\t%s\thttp://%s/metrics\t%s\t%s\n", d.id, d.cmd.Process.Pid, d.grpc, d.http, d.gossip, d.raft)
	}
	fmt.Fprintf(tw, "\ntry:  bin/lattice put contact c1 name=Ann      (writes on n1)\n      bin/lattice --addr %s get contact c1   (reads on n2)\n      bin/lattice members\n", nodes[min(1, n-1)].grpc)
	fmt.Fprintln(tw, "A node that dies (try kill -9 on its PID) is restarted after 5 s and catches up.")
	tw.Flush()

	// Supervise: restart a node that dies, until Ctrl-C.
	for {
		exited := make(chan *devNode, len(nodes))
		for _, d := range nodes {
			go func(d *devNode) {
				err := <-d.done
				d.done <- err // keep it for stopAll
				exited <- d
			}(d)
		}
		select {
		case <-ctx.Done():
			fmt.Fprintln(stdout, "\nstopping the nodes...")
			stopAll()
			fmt.Fprintln(stdout, "stopped")
			return nil
		case d := <-exited:
			err := <-d.done
			fmt.Fprintf(stdout, "%s exited (%v); restarting it in 5 s\n", d.id, err)
			select {
			case <-ctx.Done():
				fmt.Fprintln(stdout, "\nstopping the nodes...")
				stopAll()
				fmt.Fprintln(stdout, "stopped")
				return nil
			case <-time.After(5 * time.Second):
			}
			if err := start(d, argsOf[d]); err != nil {
				fmt.Fprintf(stderr, "restart %s: %v\n", d.id, err)
			} else {
				fmt.Fprintf(stdout, "%s restarted (pid %d)\n", d.id, d.cmd.Process.Pid)
			}
		}
	}
}

func waitMembers(ctx context.Context, nodes []*devNode, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for _, d := range nodes {
		conn, err := grpc.NewClient(d.grpc, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return err
		}
		for {
			cctx, cancel := context.WithTimeout(ctx, time.Second)
			resp, err := pb.NewClusterClient(conn).Members(cctx, &pb.MembersRequest{})
			cancel()
			alive := 0
			if err == nil {
				for _, m := range resp.GetMembers() {
					if m.GetState() == "alive" {
						alive++
					}
				}
			}
			if alive == len(nodes) {
				break
			}
			if ctx.Err() != nil {
				conn.Close()
				return ctx.Err()
			}
			if time.Now().After(deadline) {
				conn.Close()
				return fmt.Errorf("%s did not see all %d nodes within %s (last error: %v); see the logs above", d.id, len(nodes), timeout, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
		conn.Close()
	}
	return nil
}
