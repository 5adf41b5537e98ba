package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	pb "github.com/lattice-sync/lattice/api/lattice/v1"
)

// syncBuffer is a bytes.Buffer safe for the agent goroutine to write while
// the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// freeAddr returns a loopback address with a port that was free a moment ago.
func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

type agent struct {
	addr, haddr string
	cancel      context.CancelFunc
	done        chan error
	log         *syncBuffer
	stopped     bool
}

// startAgent runs `lattice agent` in-process and waits until it answers.
func startAgent(t testing.TB, dir string, extra ...string) *agent {
	t.Helper()
	a := &agent{addr: freeAddr(t), haddr: freeAddr(t), done: make(chan error, 1), log: &syncBuffer{}}
	ctx, cancel := context.WithCancel(context.Background())
	a.cancel = cancel
	args := append([]string{"agent", "--node-id", "n1", "--data-dir", dir, "--gossip-addr", freeAddr(t), "--raft-addr", freeAddr(t), "--grpc-addr", a.addr, "--http-addr", a.haddr,
		"--config", "quickstart.yaml"}, extra...)
	var out syncBuffer
	go func() { a.done <- run(ctx, args, &out, a.log) }()
	t.Cleanup(func() {
		if !a.stopped {
			cancel()
			select {
			case <-a.done:
			case <-time.After(15 * time.Second):
				t.Errorf("agent did not stop")
			}
		}
	})
	deadline := time.Now().Add(15 * time.Second)
	for {
		select {
		case err := <-a.done:
			a.stopped = true
			t.Fatalf("agent exited before answering: %v\nlog:\n%s", err, a.log.String())
		default:
		}
		if _, err := cli(a.addr, "--timeout", "1s", "list", "contact"); err == nil {
			return a
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent did not answer within 15s\nlog:\n%s", a.log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop cancels the agent's context and returns run's result.
func (a *agent) stop(t testing.TB) error {
	t.Helper()
	a.cancel()
	select {
	case err := <-a.done:
		a.stopped = true
		return err
	case <-time.After(15 * time.Second):
		t.Fatalf("agent did not stop within 15s\nlog:\n%s", a.log.String())
		return nil
	}
}

// cli runs a client command against addr and returns its stdout.
func cli(addr string, args ...string) (string, error) {
	var out, errOut bytes.Buffer
	err := run(context.Background(), append([]string{"--addr", addr}, args...), &out, &errOut)
	return out.String(), err
}

func mustCLI(t testing.TB, addr string, args ...string) string {
	t.Helper()
	out, err := cli(addr, args...)
	if err != nil {
		t.Fatalf("lattice %s: %v\noutput:\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func wantContains(t testing.TB, what, s string, subs ...string) {
	t.Helper()
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			t.Errorf("%s does not contain %q:\n%s", what, sub, s)
		}
	}
}

func httpGet(t testing.TB, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

func TestCLIWalkthrough(t *testing.T) {
	dir := t.TempDir()
	a := startAgent(t, dir)
	addr := a.addr

	out := mustCLI(t, addr, "put", "contact", "c1", "name=Ann", "email=ann@example.com")
	wantContains(t, "put output", out, "ok: edit n1:1", "Ann", "ann@example.com", "context: ")

	// JSON read: the context token and live versions with dots.
	out = mustCLI(t, addr, "get", "contact", "c1", "-o", "json")
	var rec pb.Record
	if err := protojson.Unmarshal([]byte(out), &rec); err != nil {
		t.Fatalf("get -o json is not a Record: %v\n%s", err, out)
	}
	token := rec.GetContext()
	if token == "" {
		t.Fatalf("get -o json has no context:\n%s", out)
	}
	var name *pb.FieldState
	for _, f := range rec.GetFields() {
		if f.GetName() == "name" {
			name = f
		}
	}
	if name == nil || len(name.GetLive()) != 1 || name.GetLive()[0].GetDot().GetNode() != "n1" || name.GetLive()[0].GetDot().GetSeq() != 1 ||
		name.GetValue().GetStringValue() != "Ann" {
		t.Fatalf("get -o json: name field %v", name)
	}
	wantContains(t, "get -o json", out, `"context"`, `"live"`, `"dot"`, `"node": "n1"`)

	// Two writers from the same read.
	wantContains(t, "put Bob", mustCLI(t, addr, "put", "--context", token, "contact", "c1", "name=Bob"), "ok: edit n1:2")
	wantContains(t, "put Cara", mustCLI(t, addr, "put", "--context", token, "contact", "c1", "name=Cara"), "ok: edit n1:3")

	out = mustCLI(t, addr, "get", "contact", "c1")
	wantContains(t, "get table", out, "yes, 2 concurrent", "Cara (api n1:3) | Bob (api n1:2)", "ann@example.com")
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "email") && strings.Contains(line, "concurrent") {
			t.Errorf("email shows a conflict: %s", line)
		}
	}

	out = mustCLI(t, addr, "history", "contact", "c1", "name")
	wantContains(t, "history table", out, "3 versions, newest first", "won (current value)", "lost to n1:3", "superseded by n1:2")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 5 || !strings.Contains(lines[2], "Cara") || !strings.Contains(lines[3], "Bob") || !strings.Contains(lines[4], "Ann") {
		t.Errorf("history not newest first:\n%s", out)
	}

	out = mustCLI(t, addr, "list", "contact")
	wantContains(t, "list", out, "c1", "Cara*", "name in conflict", "1 records")

	// A resolve with the stale token is refused.
	_, err := cli(addr, "resolve", "--context", token, "contact", "c1", "name")
	if err == nil || !strings.Contains(err.Error(), "refused") || !strings.Contains(err.Error(), "read the record again") {
		t.Errorf("resolve with a stale context: %v", err)
	}
	out = mustCLI(t, addr, "resolve", "contact", "c1", "name")
	wantContains(t, "resolve", out, "ok: edit n1:4", "Cara")
	if strings.Contains(out, "concurrent") {
		t.Errorf("conflict still shown after resolve:\n%s", out)
	}
	out = mustCLI(t, addr, "history", "contact", "c1", "name")
	wantContains(t, "history after resolve", out, "4 versions", "superseded by n1:4")
	if strings.Contains(out, "lost to") {
		t.Errorf("history after resolve still shows a loss:\n%s", out)
	}
	out = mustCLI(t, addr, "resolve", "contact", "c1", "name", "string=Dora")
	wantContains(t, "resolve with a value", out, "ok: edit n1:5", "Dora")
	// phone was never written: resolving it is refused.
	if _, err := cli(addr, "resolve", "contact", "c1", "phone"); err == nil || !strings.Contains(err.Error(), "no value to resolve") {
		t.Errorf("resolve of an unwritten field: %v", err)
	}

	// Typed values are checked against the schema.
	_, err = cli(addr, "put", "contact", "c1", "name:int=5")
	if err == nil || !strings.Contains(err.Error(), `"name" is string`) {
		t.Errorf("put name:int=5: %v, want an error saying name is string", err)
	}
	_, err = cli(addr, "put", "contact", "c1", "nmae=Ann")
	if err == nil || !strings.Contains(err.Error(), `no field "nmae"`) {
		t.Errorf("put of an unknown field: %v", err)
	}
	_, err = cli(addr, "put", "contact", "c1", "name:int=five")
	if err == nil || !strings.Contains(err.Error(), "not a valid int") {
		t.Errorf("put name:int=five: %v", err)
	}
	_, err = cli(addr, "get", "contact", "c1", "-o", "yaml")
	if err == nil || !strings.Contains(err.Error(), `--output "yaml": want table or json`) {
		t.Errorf("-o yaml: %v", err)
	}
	_, err = cli(addr, "get", "contact", "nope")
	if err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("get of a missing record: %v", err)
	}
	_, err = cli(addr, "get", "customer", "c1")
	if err == nil || !strings.Contains(err.Error(), `unknown entity "customer"`) {
		t.Errorf("get of an unknown entity: %v", err)
	}

	// Batch get reports missing ids.
	out = mustCLI(t, addr, "get", "contact", "c1", "c9")
	wantContains(t, "batch get", out, "contact c1", "not found: c9")

	out = mustCLI(t, addr, "delete", "contact", "c1")
	wantContains(t, "delete", out, "(deleted)")
	wantContains(t, "list after delete", mustCLI(t, addr, "list", "contact"), "no records")
	wantContains(t, "list --deleted", mustCLI(t, addr, "list", "--deleted", "contact"), "c1", "deleted", "1 records")

	// Metrics and probes.
	code, body := httpGet(t, "http://"+a.haddr+"/metrics")
	if code != http.StatusOK {
		t.Errorf("/metrics status %d", code)
	}
	wantContains(t, "/metrics", body, "lattice_store_edits_total", "lattice_api_requests_total", "lattice_store_size_bytes", `lattice_raft_state{state=`)
	if m := regexp.MustCompile(`(?m)^lattice_store_edits_total (\S+)$`).FindStringSubmatch(body); m == nil || m[1] == "0" {
		t.Errorf("lattice_store_edits_total not counted: %v", m)
	}
	if code, body := httpGet(t, "http://"+a.haddr+"/healthz"); code != http.StatusOK || strings.TrimSpace(body) != "ok" {
		t.Errorf("/healthz = %d %q", code, body)
	}
	if code, body := httpGet(t, "http://"+a.haddr+"/readyz"); code != http.StatusOK || strings.TrimSpace(body) != "ready" {
		t.Errorf("/readyz = %d %q", code, body)
	}

	// Watch replays the op log and returns nil when its context ends: the
	// context is cancelled once the six events are printed (or after 10 s),
	// and then half a second more shows that nothing else follows.
	wctx, wcancel := context.WithTimeout(context.Background(), 10*time.Second)
	wout := &cancelAfter{want: "contact c1", n: 6, then: func() { time.AfterFunc(500*time.Millisecond, wcancel) }}
	err = run(wctx, []string{"--addr", addr, "watch", "--from-start", "contact"}, wout, io.Discard)
	wcancel()
	if err != nil {
		t.Errorf("watch: %v", err)
	}
	if n := strings.Count(wout.String(), "contact c1"); n != 6 {
		t.Errorf("watch --from-start printed %d events, want 6 (one per edit):\n%s", n, wout.String())
	}

	// Graceful stop.
	if err := a.stop(t); err != nil {
		t.Fatalf("agent run returned %v after cancel, want nil\nlog:\n%s", err, a.log.String())
	}
	wantContains(t, "agent log", a.log.String(), "shutting down", "stopped")
	if _, err := cli(addr, "--timeout", "2s", "get", "contact", "c1"); err == nil || !strings.Contains(err.Error(), "no lattice node answers") {
		t.Errorf("client after stop: %v", err)
	}

	// Restart on the same data directory: everything is still there and
	// sequence numbers continue.
	b := startAgent(t, dir)
	out = mustCLI(t, b.addr, "get", "contact", "c1")
	wantContains(t, "get after restart", out, "(deleted)", "Dora", "ann@example.com")
	out = mustCLI(t, b.addr, "history", "contact", "c1", "name")
	wantContains(t, "history after restart", out, "5 versions")
	out = mustCLI(t, b.addr, "put", "contact", "c2", "name=Eve")
	wantContains(t, "put after restart", out, "ok: edit n1:7")
	if err := b.stop(t); err != nil {
		t.Errorf("second agent run returned %v", err)
	}
}

// cancelAfter is a writer that calls then once it has been written n
// occurrences of want.
type cancelAfter struct {
	bytes.Buffer
	want string
	n    int
	then func()
	done bool
}

func (w *cancelAfter) Write(p []byte) (int, error) {
	n, err := w.Buffer.Write(p)
	if !w.done && strings.Count(w.String(), w.want) >= w.n {
		w.done = true
		w.then()
	}
	return n, err
}

func TestAgentBadConfig(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name, yaml string
		want       *regexp.Regexp
	}{
		{"unknown type", "entities:\n  contact:\n    fields:\n      name: string\n      age: integr\n",
			regexp.MustCompile(`bad\.yaml:5: .*unknown type "integr"`)},
		{"yaml syntax", "entities:\n  contact:\n    fields:\n      name: [string\n",
			regexp.MustCompile(`bad\.yaml:\d+: invalid YAML`)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "bad.yaml")
			if err := os.WriteFile(path, []byte(tc.yaml), 0o644); err != nil {
				t.Fatal(err)
			}
			var out, errOut bytes.Buffer
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			err := run(ctx, []string{"agent", "--node-id", "n1", "--data-dir", dir, "--gossip-addr", freeAddr(t), "--raft-addr", freeAddr(t), "--grpc-addr", freeAddr(t), "--http-addr", "",
				"--config", path}, &out, &errOut)
			if err == nil || !tc.want.MatchString(err.Error()) {
				t.Errorf("agent with %s: %v, want an error matching %s", tc.name, err, tc.want)
			}
		})
	}
	// A missing config file.
	err := run(context.Background(), []string{"agent", "--data-dir", dir, "--config", filepath.Join(dir, "missing.yaml")}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Errorf("agent with a missing config: %v", err)
	}
}

func TestAgentPortInUse(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	for _, flag := range []string{"--grpc-addr", "--http-addr"} {
		t.Run(flag, func(t *testing.T) {
			args := []string{"agent", "--node-id", "n1", "--data-dir", t.TempDir(), "--config", "quickstart.yaml", "--gossip-addr", freeAddr(t), "--raft-addr", freeAddr(t),
				"--grpc-addr", freeAddr(t), "--http-addr", freeAddr(t), flag, busy.Addr().String()}
			done := make(chan error, 1)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go func() { done <- run(ctx, args, io.Discard, io.Discard) }()
			select {
			case err := <-done:
				if err == nil || !strings.Contains(err.Error(), "listen on "+flag+" "+busy.Addr().String()) ||
					!strings.Contains(err.Error(), "address already in use") {
					t.Errorf("agent on a busy %s: %v", flag, err)
				}
			case <-time.After(10 * time.Second):
				cancel()
				<-done
				t.Errorf("agent started on a busy %s", flag)
			}
		})
	}
}

func TestAgentOtherNodesDataDir(t *testing.T) {
	dir := t.TempDir()
	a := startAgent(t, dir)
	if err := a.stop(t); err != nil {
		t.Fatal(err)
	}
	err := run(context.Background(), []string{"agent", "--node-id", "n2", "--data-dir", dir, "--gossip-addr", freeAddr(t), "--raft-addr", freeAddr(t), "--grpc-addr", freeAddr(t),
		"--http-addr", "", "--config", "quickstart.yaml"}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "pass --node-id n1") {
		t.Errorf("agent n2 on n1's data directory: %v", err)
	}
}

func TestUnknownSubcommand(t *testing.T) {
	err := run(context.Background(), []string{"frobnicate"}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), `unknown command "frobnicate"`) {
		t.Errorf("unknown subcommand: %v", err)
	}
	err = run(context.Background(), []string{"put", "contact"}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "requires at least 3 arg(s)") {
		t.Errorf("put with too few args: %v", err)
	}
	err = run(context.Background(), []string{"put", "contact", "c1", "novalue"}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "want field=value") {
		t.Errorf("put with a bad assignment: %v", err)
	}
}

func TestClientWithoutServer(t *testing.T) {
	addr := freeAddr(t)
	for _, args := range [][]string{
		{"get", "contact", "c1"},
		{"put", "contact", "c1", "name=Ann"},
		{"list", "contact"},
		{"history", "contact", "c1", "name"},
		{"delete", "contact", "c1"},
		{"resolve", "contact", "c1", "name"},
		{"watch", "contact"},
		{"connectors", "status"},
	} {
		start := time.Now()
		_, err := cli(addr, append([]string{"--timeout", "2s"}, args...)...)
		if err == nil || !strings.Contains(err.Error(), "no lattice node answers at "+addr) {
			t.Errorf("lattice %s with no server: %v", strings.Join(args, " "), err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("lattice %s took %s", args[0], d)
		}
	}
}
