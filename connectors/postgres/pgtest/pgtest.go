// Package pgtest starts private PostgreSQL 15 instances for tests.
//
// Each call to Start runs initdb into a fresh temporary directory and starts a
// postmaster on a free 127.0.0.1 port, configured for logical decoding
// (wal_level=logical, max_replication_slots=20, max_wal_senders=20,
// synchronous_commit=on) with trust authentication for local connections,
// TCP connections and replication connections from 127.0.0.1. The instance
// never touches a system-wide PostgreSQL (for example one on port 5432): it
// has its own data directory, port and unix socket directory.
//
// Typical use:
//
//	func TestSomething(t *testing.T) {
//		srv := pgtest.Start(t)
//		srv.CreateDB(t, "app")
//		srv.Exec(t, "app", `CREATE TABLE items (id int PRIMARY KEY, name text)`)
//		conn, err := pgx.Connect(ctx, srv.DSN("app"))
//		...
//		repl, err := pgconn.Connect(ctx, srv.ReplicationDSN("app"))
//		...
//	}
//
// Start registers a cleanup with the test that stops the server
// (pg_ctl stop -m fast) and removes the directory. Stop, Restart and Kill
// exist for restart and crash tests. Programs that are not tests (for example
// cmd/lattice-demo) use Launch, which returns errors instead, with Close and
// ExecContext. WithConf adds or overrides
// postgresql.conf settings, for example WithConf("wal_level", "replica") for
// a negative test.
//
// The binaries are looked up by Bin: /usr/lib/postgresql/15/bin, else
// `pg_config --bindir`. On Debian, install them with
// `apt-get install postgresql`. PostgreSQL refuses to run as root; when the
// test runs as root, initdb and pg_ctl are run as the `postgres` OS user
// through runuser, on a directory chowned to that user.
//
// Starting an instance costs about 1.5-2 s (initdb dominates). The helpers
// call tb.Fatal on failure, so call them from the test's own goroutine.
// pgtest works on Linux (it uses /proc for Kill) and other Unix systems.
package pgtest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Time limits for the external commands and SQL helpers.
const (
	initdbTimeout  = 2 * time.Minute
	startWait      = 30 * time.Second // pg_ctl -t
	startTimeout   = startWait + 15*time.Second
	stopWait       = 30 * time.Second // pg_ctl -t
	stopTimeout    = stopWait + 15*time.Second
	sqlTimeout     = 30 * time.Second
	killWait       = 10 * time.Second
	lookupTimeout  = 10 * time.Second
	logTailLines   = 30
	startAttempts  = 3
	defaultBinPath = "/usr/lib/postgresql/15/bin"
	osUser         = "postgres"
)

type setting struct{ key, value string }

type config struct {
	settings []setting // later entries win
}

func (c *config) set(key, value string) {
	for i := range c.settings {
		if c.settings[i].key == key {
			c.settings[i].value = value
			return
		}
	}
	c.settings = append(c.settings, setting{key, value})
}

// Option configures Start and Launch.
type Option func(*config)

// WithConf adds or overrides a postgresql.conf setting. The value is given
// unquoted (pgtest quotes it), e.g. WithConf("wal_level", "replica") or
// WithConf("shared_preload_libraries", "a,b"). Settings "port",
// "listen_addresses" and "unix_socket_directories" are managed by pgtest and
// should not be overridden.
func WithConf(key, value string) Option {
	return func(c *config) { c.set(key, value) }
}

// Server is a private PostgreSQL instance started by Start or Launch.
type Server struct {
	// Port is the TCP port on 127.0.0.1 (also the unix socket's port number).
	Port int
	// Dir is the temporary root directory: the data directory is Dir/data,
	// the server log is Dir/log and the unix socket lives in Dir.
	Dir string

	bin      string
	dataDir  string
	logFile  string
	runAs    bool // run initdb/pg_ctl as the postgres OS user via runuser
	runuser  string
	uid, gid int
	cfg      config
	baseConf []byte // postgresql.conf as written by initdb

	mu      sync.Mutex
	running bool
}

// Bin returns the directory holding initdb and pg_ctl:
// /usr/lib/postgresql/15/bin if present, else the output of
// `pg_config --bindir`.
func Bin() (string, error) {
	if hasTools(defaultBinPath) {
		return defaultBinPath, nil
	}
	cfgPath, err := exec.LookPath("pg_config")
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), lookupTimeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, cfgPath, "--bindir")
		cmd.WaitDelay = time.Second
		out, err := cmd.Output()
		if err == nil {
			dir := strings.TrimSpace(string(out))
			if hasTools(dir) {
				return dir, nil
			}
		}
	}
	return "", fmt.Errorf("pgtest: PostgreSQL server binaries (initdb, pg_ctl) not found in %s nor via `pg_config --bindir`; install them with `apt-get install postgresql` (PostgreSQL 15)", defaultBinPath)
}

func hasTools(dir string) bool {
	if dir == "" {
		return false
	}
	for _, name := range []string{"initdb", "pg_ctl", "postgres"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			return false
		}
	}
	return true
}

// Start initdb's a fresh cluster in a temporary directory and starts it on a
// free 127.0.0.1 port with wal_level=logical, max_replication_slots=20,
// max_wal_senders=20, synchronous_commit=on and the unix socket in the
// temporary directory; other settings keep their defaults unless overridden
// with WithConf. pg_hba.conf trusts local connections and host connections
// (normal and replication) from 127.0.0.1/32. Start registers a cleanup that
// stops the server (pg_ctl stop -m fast) and removes the directory.
func Start(tb testing.TB, opts ...Option) *Server {
	tb.Helper()
	s, err := Launch(opts...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.cleanup(tb) })
	return s
}

// Launch is Start for programs that are not tests: it starts the same
// server but returns errors instead of failing a test, and registers no
// cleanup: the caller must call Close. On error nothing is left behind (no
// process, no directory).
func Launch(opts ...Option) (*Server, error) {
	bin, err := Bin()
	if err != nil {
		return nil, err
	}
	s := &Server{bin: bin}
	s.cfg.set("wal_level", "logical")
	s.cfg.set("max_replication_slots", "20")
	s.cfg.set("max_wal_senders", "20")
	s.cfg.set("synchronous_commit", "on")
	for _, o := range opts {
		o(&s.cfg)
	}

	if os.Geteuid() == 0 {
		u, err := user.Lookup(osUser)
		if err != nil {
			return nil, fmt.Errorf("pgtest: running as root, but the %q OS user needed to run PostgreSQL does not exist (%v); install PostgreSQL with `apt-get install postgresql`", osUser, err)
		}
		s.uid, _ = strconv.Atoi(u.Uid)
		s.gid, _ = strconv.Atoi(u.Gid)
		s.runuser, err = exec.LookPath("runuser")
		if err != nil {
			return nil, fmt.Errorf("pgtest: running as root, but runuser (util-linux) is not available: %v", err)
		}
		s.runAs = true
	}

	s.Dir, err = makeDir(s.runAs, s.uid, s.gid)
	if err != nil {
		return nil, err
	}
	s.dataDir = filepath.Join(s.Dir, "data")
	s.logFile = filepath.Join(s.Dir, "log")
	if err := s.launch(); err != nil {
		_ = s.Close()
		return nil, err
	}
	return s, nil
}

// launch runs initdb, writes the configuration and starts the server.
func (s *Server) launch() error {
	if out, err := s.run(initdbTimeout, "initdb",
		"-D", s.dataDir, "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync", "-U", "postgres"); err != nil {
		return fmt.Errorf("pgtest: initdb: %v\n%s", err, out)
	}
	var err error
	s.baseConf, err = os.ReadFile(filepath.Join(s.dataDir, "postgresql.conf"))
	if err != nil {
		return fmt.Errorf("pgtest: %v", err)
	}
	if err := writeExisting(filepath.Join(s.dataDir, "pg_hba.conf"), []byte(hbaConf)); err != nil {
		return fmt.Errorf("pgtest: %v", err)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	var lastErr error
	for attempt := 1; attempt <= startAttempts; attempt++ {
		port, err := freePort()
		if err != nil {
			return fmt.Errorf("pgtest: picking a free port: %v", err)
		}
		s.Port = port
		if err := s.writeConf(); err != nil {
			return fmt.Errorf("pgtest: %v", err)
		}
		portTaken, err := s.startLocked()
		if err == nil {
			return nil
		}
		lastErr = err
		if !portTaken {
			break
		}
	}
	return lastErr
}

const hbaConf = `# written by pgtest
# TYPE  DATABASE     USER  ADDRESS       METHOD
local   all          all                 trust
local   replication  all                 trust
host    all          all   127.0.0.1/32  trust
host    replication  all   127.0.0.1/32  trust
`

// makeDir creates the temporary root directory. As root it is chmod 0755 and
// chowned to the postgres user, under a parent the postgres user can traverse.
func makeDir(asRoot bool, uid, gid int) (string, error) {
	base := os.TempDir()
	// The unix socket path (Dir/.s.PGSQL.NNNNN) must fit in sun_path (108 bytes).
	const maxDir = 107 - len("/.s.PGSQL.65535") - len("/lattice-pg-1234567890")
	if len(base) > maxDir || (asRoot && !traversable(base)) {
		base = "/tmp"
	}
	dir, err := os.MkdirTemp(base, "lattice-pg-")
	if err != nil {
		return "", fmt.Errorf("pgtest: creating temp dir: %w", err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("pgtest: %w", err)
	}
	if asRoot {
		if !traversable(base) {
			os.RemoveAll(dir)
			return "", fmt.Errorf("pgtest: %s (or one of its parents) cannot be traversed by the %s user", base, osUser)
		}
		if err := os.Chown(dir, uid, gid); err != nil {
			os.RemoveAll(dir)
			return "", fmt.Errorf("pgtest: %w", err)
		}
	}
	return dir, nil
}

// traversable reports whether dir and all its parents have the
// others-execute bit, so an unrelated user can reach files below dir.
func traversable(dir string) bool {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return false
	}
	for {
		fi, err := os.Stat(dir)
		if err != nil || fi.Mode().Perm()&0o001 == 0 {
			return false
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return true
		}
		dir = parent
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// writeExisting overwrites an existing file, keeping its owner and mode
// (files in the data directory belong to the postgres user when run as root).
func writeExisting(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func quoteConf(v string) string {
	return "'" + strings.ReplaceAll(v, "'", "''") + "'"
}

func (s *Server) writeConf() error {
	var b bytes.Buffer
	b.Write(s.baseConf)
	b.WriteString("\n# ---- written by pgtest (later settings win) ----\n")
	fmt.Fprintf(&b, "listen_addresses = %s\n", quoteConf("127.0.0.1"))
	fmt.Fprintf(&b, "port = %d\n", s.Port)
	fmt.Fprintf(&b, "unix_socket_directories = %s\n", quoteConf(s.Dir))
	for _, st := range s.cfg.settings {
		fmt.Fprintf(&b, "%s = %s\n", st.key, quoteConf(st.value))
	}
	return writeExisting(filepath.Join(s.dataDir, "postgresql.conf"), b.Bytes())
}

// run runs one of the PostgreSQL binaries (as the postgres user when root),
// bounded by timeout, and returns its combined output.
func (s *Server) run(timeout time.Duration, tool string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	path := filepath.Join(s.bin, tool)
	var cmd *exec.Cmd
	if s.runAs {
		cmd = exec.CommandContext(ctx, s.runuser, append([]string{"-u", osUser, "--", path}, args...)...)
	} else {
		cmd = exec.CommandContext(ctx, path, args...)
	}
	cmd.Dir = s.Dir // the test's working directory may not be readable by postgres
	cmd.Env = cleanEnv()
	cmd.Stdin = nil
	// Own process group, so a timeout kills runuser and its children too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("%s timed out after %v: %w", tool, timeout, err)
	}
	return strings.TrimSpace(string(out)), err
}

// cleanEnv drops PG* variables (PGDATA, PGPORT, PGHOST, ...) so the
// environment cannot point the tools at another server.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PG") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

func logSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// startLocked runs pg_ctl start. portTaken reports that the failure was
// because the TCP port was in use (the caller may retry with another port).
func (s *Server) startLocked() (portTaken bool, err error) {
	off := logSize(s.logFile)
	out, err := s.run(startTimeout, "pg_ctl",
		"-D", s.dataDir, "-w", "-t", strconv.Itoa(int(startWait/time.Second)), "-l", s.logFile, "start")
	if err == nil {
		s.running = true
		return false, nil
	}
	fresh := readFrom(s.logFile, off)
	portTaken = strings.Contains(fresh, "Address already in use") ||
		strings.Contains(fresh, "could not create any TCP/IP sockets")
	// A timed-out start may leave a postmaster behind; make sure it is gone.
	if _, statErr := os.Stat(filepath.Join(s.dataDir, "postmaster.pid")); statErr == nil {
		if _, stopErr := s.run(stopTimeout, "pg_ctl", "-D", s.dataDir, "-w", "-t", "10", "-m", "immediate", "stop"); stopErr != nil {
			_ = s.killLocked()
		}
	}
	return portTaken, fmt.Errorf("pgtest: pg_ctl start (port %d): %v\n%s\n--- last %d lines of %s ---\n%s",
		s.Port, err, out, logTailLines, s.logFile, s.LogTail(logTailLines))
}

func readFrom(path string, off int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		return ""
	}
	b, _ := io.ReadAll(io.LimitReader(f, 1<<20))
	return string(b)
}

// LogTail returns the last n lines of the server log (Dir/log).
func (s *Server) LogTail(n int) string {
	f, err := os.Open(s.logFile)
	if err != nil {
		return fmt.Sprintf("(no server log: %v)", err)
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > 4*n {
			lines = append(lines[:0], lines[len(lines)-n:]...)
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// DSN returns a pgx/libpq URL for database db as the postgres superuser:
// postgres://postgres@127.0.0.1:PORT/DB?sslmode=disable.
func (s *Server) DSN(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", s.Port, url.PathEscape(db))
}

// ReplicationDSN is DSN plus replication=database, for a logical
// replication connection (pgconn.Connect + pglogrepl).
func (s *Server) ReplicationDSN(db string) string {
	return s.DSN(db) + "&replication=database"
}

// CreateDB creates database name (connecting to the postgres database).
func (s *Server) CreateDB(tb testing.TB, name string) {
	tb.Helper()
	s.Exec(tb, "postgres", "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
}

// Exec runs sql with args on database db through a new pgx connection and
// calls tb.Fatal on error. Without args, sql may hold several statements.
func (s *Server) Exec(tb testing.TB, db, sql string, args ...any) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), sqlTimeout)
	defer cancel()
	if err := s.ExecContext(ctx, db, sql, args...); err != nil {
		tb.Fatal(err)
	}
}

// ExecContext runs sql with args on database db through a new pgx
// connection, for programs that are not tests. Without args, sql may hold
// several statements.
func (s *Server) ExecContext(ctx context.Context, db, sql string, args ...any) error {
	conn, err := pgx.Connect(ctx, s.DSN(db))
	if err != nil {
		return fmt.Errorf("pgtest: connect to %q: %v", db, err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		return fmt.Errorf("pgtest: exec on %q: %v\nSQL: %s", db, err, sql)
	}
	return nil
}

// Stop stops the server with pg_ctl stop -m fast. It does nothing if the
// server is not running.
func (s *Server) Stop(tb testing.TB) {
	tb.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.stopLocked(); err != nil {
		tb.Fatal(err)
	}
}

func (s *Server) stopLocked() error {
	if !s.running {
		return nil
	}
	out, err := s.run(stopTimeout, "pg_ctl", "-D", s.dataDir, "-w",
		"-t", strconv.Itoa(int(stopWait/time.Second)), "-m", "fast", "stop")
	if err != nil {
		return fmt.Errorf("pgtest: pg_ctl stop: %v\n%s\n--- last %d lines of %s ---\n%s",
			err, out, logTailLines, s.logFile, s.LogTail(logTailLines))
	}
	s.running = false
	return nil
}

// Restart stops the server (if running) and starts it again on the same
// port and data directory. After Kill it performs crash recovery.
func (s *Server) Restart(tb testing.TB) {
	tb.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.stopLocked(); err != nil {
		tb.Fatal(err)
	}
	if _, err := s.startLocked(); err != nil {
		tb.Fatal(err)
	}
}

// Kill simulates a crash: it sends SIGKILL to the postmaster and to its
// child processes (backends, walsenders, background workers) and waits until
// they are dead. The data directory is left as it is for crash recovery by
// Restart; only the stale lock files (postmaster.pid and the socket lock) are
// removed, because a killed process that nobody reaps stays a zombie and
// would make PostgreSQL believe the old postmaster is still running.
func (s *Server) Kill(tb testing.TB) {
	tb.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.killLocked(); err != nil {
		tb.Fatal(err)
	}
}

func (s *Server) killLocked() error {
	pid, err := s.postmasterPID()
	if err != nil {
		return fmt.Errorf("pgtest: kill: %w", err)
	}
	// Freeze the postmaster so it forks no new children while we list them.
	_ = syscall.Kill(pid, syscall.SIGSTOP)
	victims := append([]int{pid}, childrenOf(pid)...)
	for _, p := range victims {
		_ = syscall.Kill(p, syscall.SIGKILL)
	}
	deadline := time.Now().Add(killWait)
	for _, p := range victims {
		for alive(p) {
			if time.Now().After(deadline) {
				return fmt.Errorf("pgtest: kill: process %d still alive after %v", p, killWait)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	s.running = false
	for _, f := range []string{
		filepath.Join(s.dataDir, "postmaster.pid"),
		filepath.Join(s.Dir, fmt.Sprintf(".s.PGSQL.%d.lock", s.Port)),
		filepath.Join(s.Dir, fmt.Sprintf(".s.PGSQL.%d", s.Port)),
	} {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("pgtest: kill: %w", err)
		}
	}
	return nil
}

func (s *Server) postmasterPID() (int, error) {
	b, err := os.ReadFile(filepath.Join(s.dataDir, "postmaster.pid"))
	if err != nil {
		return 0, fmt.Errorf("server not running: %w", err)
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("bad postmaster.pid: %q", first)
	}
	return pid, nil
}

// childrenOf lists the processes whose parent is pid (Linux /proc).
func childrenOf(pid int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var kids []int
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if _, ppid, ok := procStat(p); ok && ppid == pid {
			kids = append(kids, p)
		}
	}
	return kids
}

// procStat returns the state letter and parent pid of process p from
// /proc/p/stat.
func procStat(p int) (state byte, ppid int, ok bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(p) + "/stat")
	if err != nil {
		return 0, 0, false
	}
	// pid (comm) state ppid ...; comm may contain spaces and parentheses.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, false
	}
	fields := strings.Fields(string(b[i+1:]))
	if len(fields) < 2 || len(fields[0]) == 0 {
		return 0, 0, false
	}
	ppid, err = strconv.Atoi(fields[1])
	if err != nil {
		return 0, 0, false
	}
	return fields[0][0], ppid, true
}

// alive reports whether process p exists and is not a zombie.
func alive(p int) bool {
	if state, _, ok := procStat(p); ok {
		return state != 'Z' && state != 'X'
	}
	if _, err := os.Stat("/proc/self/stat"); err == nil {
		return false // /proc works and p is gone
	}
	err := syscall.Kill(p, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// cleanup stops the server if it is running and removes the directory,
// reporting through the test (Start's cleanup).
func (s *Server) cleanup(tb testing.TB) {
	if tb.Failed() {
		tb.Logf("pgtest: last %d lines of server log %s:\n%s", logTailLines, s.logFile, s.LogTail(logTailLines))
	}
	for _, err := range s.shutdown() {
		tb.Logf("%v", err)
	}
}

// Close stops the server if it is running (pg_ctl stop -m fast, else a
// kill) and removes the directory. It is safe to call more than once. Use it
// with Launch; servers from Start are closed by the test's cleanup.
func (s *Server) Close() error {
	return errors.Join(s.shutdown()...)
}

// shutdown stops the server if a postmaster may be running (killing it if
// pg_ctl stop fails) and removes the directory. It returns what went wrong.
func (s *Server) shutdown() []error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	if _, err := os.Stat(filepath.Join(s.dataDir, "postmaster.pid")); err == nil {
		s.running = true // whatever we believed, a postmaster may be there
		if err := s.stopLocked(); err != nil {
			errs = append(errs, fmt.Errorf("%v; killing it", err))
			if err := s.killLocked(); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := os.RemoveAll(s.Dir); err != nil {
		errs = append(errs, fmt.Errorf("pgtest: removing %s: %w", s.Dir, err))
	}
	return errs
}
