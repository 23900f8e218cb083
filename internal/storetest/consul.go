package storetest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// ConsulBinEnv is the environment variable that names the Consul binary to run.
const ConsulBinEnv = "CNM_CONSUL_BIN"

// ConsulVersion is the Consul release that scripts/services.sh builds and the tests run.
const ConsulVersion = "v1.14.11"

// Bounds on the waits of the Consul helpers. Generous: the tests run with -race on small
// machines, and a server elects itself only after its raft election timeout.
const (
	consulStartTimeout = 30 * time.Second // the agent has a leader and serves consistent reads
	consulStopTimeout  = 10 * time.Second // SIGTERM before SIGKILL
	consulStartTries   = 3                // fresh starts that lost a free port to someone else
	consulLogTailLines = 40
)

// ConsulBinary returns the path of the Consul binary: $CNM_CONSUL_BIN, else the binary that
// scripts/services.sh builds, ${XDG_CACHE_HOME:-$HOME/.cache}/cnm/consul-v1.14.11, else
// "consul" on PATH. When CNM_CONSUL_BIN names a file that is not there, the test fails. When
// none is found, the test is skipped, or fails when CI=true, with a message that says how to
// build it.
func ConsulBinary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv(ConsulBinEnv); p != "" {
		path, err := exec.LookPath(p)
		if err != nil {
			t.Fatalf("storetest: %s=%q: %v", ConsulBinEnv, p, err)
		}
		return path
	}
	if p := consulCachePath(); p != "" {
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	if path, err := exec.LookPath("consul"); err == nil {
		return path
	}
	how := fmt.Sprintf("consul not found: set %s, or build Consul %s into %s with "+
		"eval \"$(./scripts/services.sh)\" (a few minutes, needs the Go module proxy)",
		ConsulBinEnv, ConsulVersion, consulCachePath())
	if os.Getenv("CI") == "true" {
		t.Fatal("storetest: " + how + "; CI=true, so the Consul tests must run")
	}
	t.Skip("storetest: " + how)
	return ""
}

// consulCachePath is where scripts/services.sh puts the Consul binary.
func consulCachePath() string {
	cache := os.Getenv("XDG_CACHE_HOME")
	if cache == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return ""
		}
		cache = filepath.Join(home, ".cache")
	}
	return filepath.Join(cache, "cnm", "consul-"+ConsulVersion)
}

// ConsulAgent is a single Consul server started by [StartConsul] and stopped at the end of the
// test.
//
// It is a real server, not a -dev agent: "consul agent -config-file ..." with server = true and
// bootstrap_expect = 1, its raft log and snapshots in a data directory under t.TempDir(). So,
// unlike -dev, which keeps everything in memory, its data and raft indices survive [ConsulAgent.Stop]
// and [ConsulAgent.Start], which restart tests need; the price is a second or two for the server
// to elect itself at each start. It listens on 127.0.0.1 only: HTTP (HTTPS instead, from
// [StartConsulTLS]), the server RPC port and the LAN gossip port, all picked free at start and
// kept across restarts. DNS, gRPC and WAN gossip are off, and so are Connect, peering and the
// UI.
//
// Its methods call t.Fatal, so call them from the test goroutine; they are safe for
// concurrent use with each other nonetheless.
type ConsulAgent struct {
	t       testing.TB
	bin     string
	dir     string // t.TempDir(): config, data and log of each start attempt
	http    *http.Client
	tls     *consulServerTLS // nil: plain HTTP
	addr    string           // host:port of the HTTP (or HTTPS) API; fixed after StartConsul
	config  string           // path of the HCL config file
	logPath string

	mu     sync.Mutex    // guards following
	cmd    *exec.Cmd     // nil while stopped
	exited chan struct{} // closed when cmd has been waited for
}

// StartConsul starts a Consul server on 127.0.0.1 and waits, at most 30s, until it has
// elected itself leader and serves consistent reads. t.Cleanup stops it and, when the test
// failed, logs the tail of its output.
func StartConsul(t testing.TB) *ConsulAgent {
	t.Helper()
	return startConsul(t, false)
}

// ConsulTLSFiles are the PEM files of a TLS agent (see [StartConsulTLS]) that a client needs:
// the CA that signed the agent's certificate, and a client certificate and key signed by the
// same CA, which the agent requires.
type ConsulTLSFiles struct {
	CA   string // CA certificate
	Cert string // client certificate
	Key  string // client private key (PKCS #8)
}

// StartConsulTLS is [StartConsul] with HTTPS instead of HTTP: the agent serves its API on
// Addr with a certificate for 127.0.0.1 and localhost, and requires a client certificate
// signed by its CA (tls.https.verify_incoming). It returns the files a client needs; the CA
// and the keys are generated for this test only.
func StartConsulTLS(t testing.TB) (*ConsulAgent, ConsulTLSFiles) {
	t.Helper()
	a := startConsul(t, true)
	return a, a.tls.files
}

func startConsul(t testing.TB, withTLS bool) *ConsulAgent {
	t.Helper()
	a := &ConsulAgent{
		t:   t,
		bin: ConsulBinary(t),
		dir: t.TempDir(),
	}
	transport := &http.Transport{DisableKeepAlives: true}
	if withTLS {
		stls, err := writeConsulTLS(filepath.Join(a.dir, "tls"))
		if err != nil {
			t.Fatalf("storetest: consul TLS files: %v", err)
		}
		a.tls = stls
		transport.TLSClientConfig = stls.client
	}
	a.http = &http.Client{Transport: transport, Timeout: 2 * time.Second}
	t.Cleanup(a.cleanup)

	var lastErr error
	for try := range consulStartTries {
		if err := a.layout(try); err != nil {
			t.Fatalf("storetest: consul: %v", err)
		}
		lastErr = a.startAndWait()
		if lastErr == nil {
			return a
		}
		a.stop(syscall.SIGKILL)
		if !a.portTaken() {
			break
		}
		t.Logf("storetest: consul: a port was taken meanwhile; retrying with new ports: %v", lastErr)
	}
	a.dumpLog()
	t.Fatalf("storetest: consul: %v", lastErr)
	return nil
}

// Addr returns the host:port of the agent's HTTP API (HTTPS for [StartConsulTLS]), running
// or not.
func (a *ConsulAgent) Addr() string { return a.addr }

// LogPath returns the path of the file that collects the agent's output.
func (a *ConsulAgent) LogPath() string { return a.logPath }

// Stop stops the agent gracefully (SIGTERM, then SIGKILL after 10s) and waits until its
// process has exited. A server does not leave the cluster on SIGTERM, so a later
// [ConsulAgent.Start] finds its data, sessions and raft indices as they were. Stopping a
// stopped agent does nothing.
func (a *ConsulAgent) Stop() {
	a.t.Helper()
	a.stop(syscall.SIGTERM)
}

// Kill kills the agent with SIGKILL, as a crash would, and waits until its process has
// exited. Killing a stopped agent does nothing.
func (a *ConsulAgent) Kill() {
	a.t.Helper()
	a.stop(syscall.SIGKILL)
}

// Start restarts the agent, stopped by Stop or Kill, with the same configuration, data and
// ports, and waits, at most 30s, until it has a leader and serves consistent reads. Starting a
// running agent does nothing.
func (a *ConsulAgent) Start() {
	a.t.Helper()
	if a.Running() {
		return
	}
	if err := a.startAndWait(); err != nil {
		a.dumpLog()
		a.t.Fatalf("storetest: consul: restart: %v", err)
	}
}

// Running reports whether the agent's process runs.
func (a *ConsulAgent) Running() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.cmd != nil
}

// layout picks fresh ports and writes the configuration for start attempt try.
func (a *ConsulAgent) layout(try int) error {
	ports, err := consulFreePorts(3)
	if err != nil {
		return err
	}
	dir := filepath.Join(a.dir, fmt.Sprintf("try%d", try))
	if err := os.MkdirAll(filepath.Join(dir, "data"), 0o700); err != nil {
		return err
	}
	a.addr = fmt.Sprintf("127.0.0.1:%d", ports[0])
	a.config = filepath.Join(dir, "consul.hcl")
	a.logPath = filepath.Join(dir, "consul.log")
	httpPort, httpsPort, tlsBlock := ports[0], -1, ""
	if a.tls != nil {
		httpPort, httpsPort = -1, ports[0]
		tlsBlock = fmt.Sprintf(`tls {
  defaults {
    ca_file = %q
    cert_file = %q
    key_file = %q
  }
  https { verify_incoming = true }
}
`, a.tls.files.CA, a.tls.serverCert, a.tls.serverKey)
	}
	hcl := fmt.Sprintf(`# Written by internal/storetest for one test.
node_name = "cnm-storetest"
datacenter = "dc1"
server = true
bootstrap_expect = 1
data_dir = %q
bind_addr = "127.0.0.1"
advertise_addr = "127.0.0.1"
client_addr = "127.0.0.1"
log_level = "INFO"
disable_update_check = true
leave_on_terminate = false
skip_leave_on_interrupt = true
ui_config { enabled = false }
connect { enabled = false }
peering { enabled = false }
performance { raft_multiplier = 1 }
ports {
  http = %d
  https = %d
  dns = -1
  grpc = -1
  grpc_tls = -1
  serf_lan = %d
  serf_wan = -1
  server = %d
}
%s`, filepath.Join(dir, "data"), httpPort, httpsPort, ports[1], ports[2], tlsBlock)
	return os.WriteFile(a.config, []byte(hcl), 0o600)
}

// startAndWait spawns the agent and waits until it serves.
func (a *ConsulAgent) startAndWait() error {
	if err := a.spawn(); err != nil {
		return err
	}
	return a.waitServing(time.Now().Add(consulStartTimeout))
}

// spawn starts the agent's process, its output appended to the log file.
func (a *ConsulAgent) spawn() error {
	logf, err := os.OpenFile(a.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	fmt.Fprintf(logf, "=== storetest: starting consul at %s\n", time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(a.bin, "agent", "-config-file", a.config)
	cmd.Env = consulEnv()
	cmd.Stdout = logf
	cmd.Stderr = logf
	// If the test binary dies without its cleanups, the agent dies with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", a.bin, err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		logf.Close()
		close(exited)
	}()
	a.mu.Lock()
	a.cmd, a.exited = cmd, exited
	a.mu.Unlock()
	return nil
}

// consulEnv is the test's environment without CONSUL_* variables, which the agent would read.
func consulEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CONSUL_") {
			env = append(env, kv)
		}
	}
	return env
}

// waitServing waits until the agent reports a leader and answers a consistent read (which the
// leader serves only once it has established its leadership). It fails early when the process
// exits.
func (a *ConsulAgent) waitServing(deadline time.Time) error {
	a.mu.Lock()
	exited := a.exited
	a.mu.Unlock()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		if last = a.probe(); last == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("agent at %s not serving within %v: %v (log %s)", a.addr, consulStartTimeout, last, a.logPath)
		}
		select {
		case <-exited:
			a.mu.Lock()
			if a.exited == exited {
				a.cmd = nil
			}
			a.mu.Unlock()
			return fmt.Errorf("agent exited while starting (log %s)", a.logPath)
		case <-tick.C:
		}
	}
}

// probe asks for the leader, then makes a consistent read of a key that does not exist.
func (a *ConsulAgent) probe() error {
	leader, code, err := a.get("/v1/status/leader")
	if err != nil {
		return err
	}
	if code != http.StatusOK || strings.Trim(strings.TrimSpace(leader), `"`) == "" {
		return fmt.Errorf("/v1/status/leader: %d %s", code, strings.TrimSpace(leader))
	}
	body, code, err := a.get("/v1/kv/cnm-storetest-probe?consistent")
	if err != nil {
		return err
	}
	if code != http.StatusOK && code != http.StatusNotFound {
		return fmt.Errorf("consistent read: %d %s", code, strings.TrimSpace(body))
	}
	return nil
}

func (a *ConsulAgent) get(path string) (string, int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	scheme := "http://"
	if a.tls != nil {
		scheme = "https://"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, scheme+a.addr+path, nil)
	if err != nil {
		return "", 0, err
	}
	resp, err := a.http.Do(req)
	if err != nil {
		return "", 0, err
	}
	defer resp.Body.Close()
	var body bytes.Buffer
	_, err = io.Copy(&body, io.LimitReader(resp.Body, 64*1024))
	return body.String(), resp.StatusCode, err
}

// stop sends sig to the agent and waits until it exits; after SIGTERM it kills it when it has
// not exited within consulStopTimeout.
func (a *ConsulAgent) stop(sig syscall.Signal) {
	a.mu.Lock()
	cmd, exited := a.cmd, a.exited
	a.cmd = nil
	a.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(sig)
	select {
	case <-exited:
		return
	case <-time.After(consulStopTimeout):
	}
	a.t.Logf("storetest: consul: agent did not exit within %v of %v; killing it", consulStopTimeout, sig)
	cmd.Process.Kill()
	<-exited
}

// cleanup stops the agent at the end of the test and, when the test failed, logs the tail of
// its output.
func (a *ConsulAgent) cleanup() {
	a.stop(syscall.SIGTERM)
	a.http.CloseIdleConnections()
	if a.t.Failed() {
		a.dumpLog()
	}
}

// dumpLog writes the tail of the agent's log to the test log.
func (a *ConsulAgent) dumpLog() {
	if a.logPath == "" {
		return
	}
	lines, err := consulTail(a.logPath, consulLogTailLines)
	if err != nil {
		a.t.Logf("storetest: consul: log: %v", err)
		return
	}
	a.t.Logf("storetest: consul (%s): last %d lines of %s:\n%s", a.addr, len(lines), a.logPath, strings.Join(lines, "\n"))
}

// portTaken reports whether the agent's log says that one of its ports was in use.
func (a *ConsulAgent) portTaken() bool {
	b, err := os.ReadFile(a.logPath)
	return err == nil && bytes.Contains(b, []byte("address already in use"))
}

// consulTail returns the last n lines of the file at path.
func consulTail(path string, n int) ([]string, error) {
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

// consulFreePorts returns n distinct ports on 127.0.0.1 that were free a moment ago for both
// TCP and UDP (the LAN gossip port needs both).
func consulFreePorts(n int) ([]int, error) {
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
		pc, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue // taken for UDP: try another
		}
		closers = append(closers, pc)
		ports = append(ports, port)
	}
	return ports, nil
}

// consulServerTLS is what a TLS agent needs besides the client's files.
type consulServerTLS struct {
	files      ConsulTLSFiles
	serverCert string
	serverKey  string
	client     *tls.Config // for the readiness probe
}

// writeConsulTLS generates a CA, a server certificate for 127.0.0.1 and localhost, and a client
// certificate, and writes them as PEM files under dir.
func writeConsulTLS(dir string) (*consulServerTLS, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "cnm test Consul CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	s := &consulServerTLS{
		files: ConsulTLSFiles{
			CA:   filepath.Join(dir, "ca.pem"),
			Cert: filepath.Join(dir, "client.pem"),
			Key:  filepath.Join(dir, "client-key.pem"),
		},
		serverCert: filepath.Join(dir, "server.pem"),
		serverKey:  filepath.Join(dir, "server-key.pem"),
	}
	if err := os.WriteFile(s.files.CA, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o600); err != nil {
		return nil, err
	}
	// The server certificate serves clients and, for Consul's own RPC, is a client one too.
	for _, c := range []struct {
		serial          int64
		cn              string
		usage           []x509.ExtKeyUsage
		server          bool
		certPath, kPath string
	}{
		{2, "server.dc1.consul", []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, true, s.serverCert, s.serverKey},
		{3, "cnm test client", []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, false, s.files.Cert, s.files.Key},
	} {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(c.serial),
			Subject:      pkix.Name{CommonName: c.cn},
			NotBefore:    now.Add(-time.Hour),
			NotAfter:     now.Add(24 * time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  c.usage,
		}
		if c.server {
			tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
			tmpl.DNSNames = []string{"localhost", "server.dc1.consul"}
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			return nil, err
		}
		kder, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(c.certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
			return nil, err
		}
		if err := os.WriteFile(c.kPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
			return nil, err
		}
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	pair, err := tls.LoadX509KeyPair(s.files.Cert, s.files.Key)
	if err != nil {
		return nil, fmt.Errorf("load client pair: %w", err)
	}
	s.client = &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
	return s, nil
}
