package storetest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Bounds shared by the etcd and Consul helpers.
const (
	stopGrace    = 10 * time.Second // SIGTERM before SIGKILL
	startTries   = 3                // fresh starts that lost a free port to someone else
	logTailLines = 40               // lines of a server's log written to the test log
	readyPoll    = 50 * time.Millisecond
)

// findBinary returns the path of a server's binary: $envVar, else cached when it is an
// executable file ("" for none), else strings.ToLower(name) on PATH. When envVar names a file
// that is not there, the test fails. When none is found, the test is skipped with how, which
// says how to get the binary, or fails when CI=true, since CI must run every store test.
func findBinary(t testing.TB, envVar, cached, name, how string) string {
	t.Helper()
	if p := os.Getenv(envVar); p != "" {
		path, err := exec.LookPath(p)
		if err != nil {
			t.Fatalf("storetest: %s=%q: %v", envVar, p, err)
		}
		return path
	}
	if cached != "" {
		if fi, err := os.Stat(cached); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return cached
		}
	}
	if path, err := exec.LookPath(strings.ToLower(name)); err == nil {
		return path
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("storetest: " + how + "; CI=true, so the " + name + " tests must run")
	}
	t.Skip("storetest: " + how)
	return ""
}

// errExited is returned by [process.awaitReady] when the process exits before it is ready.
var errExited = errors.New("exited while starting")

// process is a server binary run as a child of the test, at most one instance at a time, its
// output appended to a log file. Its methods are safe for concurrent use.
type process struct {
	t         testing.TB
	name      string   // "etcd m0", "consul agent": for the log and messages
	bin       string   // path of the binary
	args      []string // command line, without the binary
	envPrefix string   // variables with this prefix are left out of the child's environment
	logPath   string

	mu     sync.Mutex    // guards following
	cmd    *exec.Cmd     // nil while stopped
	exited chan struct{} // closed when cmd has been waited for
}

// start starts the process, its output appended to its log file after a banner line. The
// caller makes sure it is not running.
func (p *process) start() error {
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	fmt.Fprintf(logf, "=== storetest: starting %s at %s\n", p.name, time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(p.bin, p.args...)
	cmd.Env = envWithout(p.envPrefix)
	cmd.Stdout = logf
	cmd.Stderr = logf
	// If the test binary dies without its cleanups, the server dies with it (Linux only).
	setDeathSignal(cmd)
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", p.bin, err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		logf.Close()
		close(exited)
	}()
	p.mu.Lock()
	p.cmd, p.exited = cmd, exited
	p.mu.Unlock()
	return nil
}

// running reports whether the process runs (as far as its owner knows: a process that exited
// by itself counts as running until it is stopped or [process.awaitReady] sees it exit).
func (p *process) running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd != nil
}

// awaitReady calls ready every 50ms until it returns nil, the deadline passes or the process
// exits. It returns nil, ready's last error, or [errExited], in that order of cases.
func (p *process) awaitReady(deadline time.Time, ready func() error) error {
	p.mu.Lock()
	exited := p.exited
	p.mu.Unlock()
	tick := time.NewTicker(readyPoll)
	defer tick.Stop()
	for {
		last := ready()
		if last == nil || time.Now().After(deadline) {
			return last
		}
		select {
		case <-exited:
			p.mu.Lock()
			if p.exited == exited {
				p.cmd = nil
			}
			p.mu.Unlock()
			return errExited
		case <-tick.C:
		}
	}
}

// stop sends sig to the process and waits until it exits; when it has not exited within
// stopGrace, it logs that and kills it. Stopping a stopped process does nothing.
func (p *process) stop(sig syscall.Signal) {
	p.mu.Lock()
	cmd, exited := p.cmd, p.exited
	p.cmd = nil
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(sig)
	select {
	case <-exited:
		return
	case <-time.After(stopGrace):
	}
	p.t.Logf("storetest: %s did not exit within %v of %v; killing it", p.name, stopGrace, sig)
	cmd.Process.Kill()
	<-exited
}

// dumpLog writes the tail of the process's log to the test log; what names the server there.
func (p *process) dumpLog(what string) {
	lines, err := tailLines(p.logPath, logTailLines)
	if err != nil {
		p.t.Logf("storetest: %s: log: %v", what, err)
		return
	}
	p.t.Logf("storetest: %s: last %d lines of %s:\n%s", what, len(lines), p.logPath, strings.Join(lines, "\n"))
}

// portTaken reports whether the process's log says that one of its ports was in use.
func (p *process) portTaken() bool {
	b, err := os.ReadFile(p.logPath)
	return err == nil && bytes.Contains(b, []byte("address already in use"))
}

// startRetrying calls attempt with try 0, 1, ... until it succeeds. After a failure it calls
// reset, which stops what attempt started and reports whether a port was taken meanwhile: only
// then does it try again, with fresh ports, at most startTries times in all. It returns the
// last error of attempt; what names the server in the test log.
func startRetrying(t testing.TB, what string, attempt func(try int) error, reset func() (portTaken bool)) error {
	var err error
	for try := range startTries {
		if err = attempt(try); err == nil {
			return nil
		}
		if !reset() {
			break
		}
		t.Logf("storetest: %s: a port was taken meanwhile; retrying with new ports: %v", what, err)
	}
	return err
}

// envWithout is the test's environment without the variables whose name starts with prefix
// (ETCD_, CONSUL_), which the server would read as settings.
func envWithout(prefix string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, prefix) {
			env = append(env, kv)
		}
	}
	return env
}

// tailLines returns the last n lines of the file at path.
func tailLines(path string, n int) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return lines, sc.Err()
}

// freePorts returns n distinct ports on 127.0.0.1 that were free for TCP a moment ago and,
// with udp, for UDP too (Consul's LAN gossip port needs both).
func freePorts(n int, udp bool) ([]int, error) {
	ports := make([]int, 0, n)
	var closers []io.Closer
	defer func() {
		for _, c := range closers {
			c.Close()
		}
	}()
	for try := 0; len(ports) < n; try++ {
		if try == 100 {
			return nil, fmt.Errorf("free port: no port free for both TCP and UDP in %d tries", try)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("free port: %w", err)
		}
		closers = append(closers, ln)
		port := ln.Addr().(*net.TCPAddr).Port
		if udp {
			pc, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
			if err != nil {
				continue // taken for UDP: try another
			}
			closers = append(closers, pc)
		}
		ports = append(ports, port)
	}
	return ports, nil
}
