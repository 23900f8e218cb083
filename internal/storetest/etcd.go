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
	"errors"
	"fmt"
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

// EtcdBinEnv is the environment variable that names the etcd binary to run.
const EtcdBinEnv = "CNM_ETCD_BIN"

// Bounds on the waits of the etcd helpers. Generous: the tests run with -race on small machines.
const (
	etcdStartTimeout = 30 * time.Second // a member (or a whole cluster) becomes healthy
	etcdStopTimeout  = 10 * time.Second // SIGTERM before SIGKILL
	etcdStartTries   = 3                // fresh starts that lost a free port to someone else
	etcdLogTailLines = 40
)

// EtcdBinary returns the path of the etcd binary: $CNM_ETCD_BIN, else "etcd" on PATH. When
// CNM_ETCD_BIN names a file that is not there, the test fails. When it is unset and etcd is not
// on PATH, the test is skipped, or fails when CI=true, with a message that says how to install it.
func EtcdBinary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv(EtcdBinEnv); p != "" {
		path, err := exec.LookPath(p)
		if err != nil {
			t.Fatalf("storetest: %s=%q: %v", EtcdBinEnv, p, err)
		}
		return path
	}
	path, err := exec.LookPath("etcd")
	if err == nil {
		return path
	}
	const how = "etcd not found: set CNM_ETCD_BIN, or install it (apt-get install etcd-server, " +
		"or eval \"$(./scripts/services.sh)\")"
	if os.Getenv("CI") == "true" {
		t.Fatal("storetest: " + how + "; CI=true, so the etcd tests must run")
	}
	t.Skip("storetest: " + how)
	return ""
}

// EtcdTLSFiles are the PEM files of a TLS etcd member (see [StartEtcdTLS]) that a client needs:
// the CA that signed the server's certificate, and a client certificate and key signed by the
// same CA, which the member requires.
type EtcdTLSFiles struct {
	CA   string // CA certificate
	Cert string // client certificate
	Key  string // client private key (PKCS #8)
}

// EtcdCluster is a set of etcd members started by [StartEtcd], [StartEtcdCluster] or
// [StartEtcdTLS] and stopped at the end of the test. Its methods call t.Fatal, so call them from
// the test goroutine; they are safe for concurrent use with each other nonetheless.
type EtcdCluster struct {
	t       testing.TB
	bin     string
	dir     string
	token   string
	tls     *etcdServerTLS // nil: plain http
	members []*etcdMember
	http    *http.Client // for health checks; no keep-alives, so no idle goroutines

	mu sync.Mutex // guards the process fields of members
}

// etcdMember is one member: its fixed identity and, while it runs, its process.
type etcdMember struct {
	name      string
	dataDir   string
	logPath   string
	clientURL string
	peerURL   string

	// Guarded by EtcdCluster.mu.
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has been waited for
}

// etcdServerTLS is what a TLS member needs besides the client's files.
type etcdServerTLS struct {
	files      EtcdTLSFiles
	serverCert string
	serverKey  string
	client     *tls.Config // for health checks
}

// StartEtcd starts a one-member etcd cluster on 127.0.0.1 and waits until it serves.
func StartEtcd(t testing.TB) *EtcdCluster {
	t.Helper()
	return startEtcd(t, 1, false)
}

// StartEtcdCluster starts an etcd cluster of n members on 127.0.0.1 and waits until every
// member is healthy (the cluster has a leader and serves reads).
func StartEtcdCluster(t testing.TB, n int) *EtcdCluster {
	t.Helper()
	if n < 1 {
		t.Fatalf("storetest: StartEtcdCluster(%d): need at least one member", n)
	}
	return startEtcd(t, n, false)
}

// StartEtcdTLS starts a one-member etcd cluster whose client URL is https and that requires a
// client certificate signed by its CA (--client-cert-auth). It returns the files a client needs;
// the CA, the server's and the client's keys are generated for this test only.
func StartEtcdTLS(t testing.TB) (*EtcdCluster, EtcdTLSFiles) {
	t.Helper()
	c := startEtcd(t, 1, true)
	return c, c.tls.files
}

func startEtcd(t testing.TB, n int, withTLS bool) *EtcdCluster {
	t.Helper()
	c := &EtcdCluster{
		t:     t,
		bin:   EtcdBinary(t),
		dir:   t.TempDir(),
		token: fmt.Sprintf("cnm-test-%d", time.Now().UnixNano()),
	}
	transport := &http.Transport{DisableKeepAlives: true}
	if withTLS {
		stls, err := writeEtcdTLS(filepath.Join(c.dir, "tls"))
		if err != nil {
			t.Fatalf("storetest: etcd TLS files: %v", err)
		}
		c.tls = stls
		transport.TLSClientConfig = stls.client
	}
	c.http = &http.Client{Transport: transport, Timeout: time.Second}
	t.Cleanup(c.cleanup)

	var lastErr error
	for try := 0; try < etcdStartTries; try++ {
		if err := c.layout(n, try); err != nil {
			t.Fatalf("storetest: etcd: %v", err)
		}
		lastErr = c.startAll()
		if lastErr == nil {
			return c
		}
		c.stopAll()
		if !c.portTaken() {
			break
		}
		t.Logf("storetest: etcd: a port was taken meanwhile; retrying with new ports: %v", lastErr)
	}
	c.dumpLogs()
	t.Fatalf("storetest: etcd: %v", lastErr)
	return nil
}

// layout gives the members fresh ports, names and directories for start attempt try.
func (c *EtcdCluster) layout(n, try int) error {
	ports, err := freePorts(2 * n)
	if err != nil {
		return err
	}
	scheme := "http"
	if c.tls != nil {
		scheme = "https"
	}
	c.members = make([]*etcdMember, n)
	for i := range c.members {
		dir := filepath.Join(c.dir, fmt.Sprintf("member%d-try%d", i, try))
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		c.members[i] = &etcdMember{
			name:      fmt.Sprintf("m%d", i),
			dataDir:   filepath.Join(dir, "data"),
			logPath:   filepath.Join(dir, "etcd.log"),
			clientURL: fmt.Sprintf("%s://127.0.0.1:%d", scheme, ports[2*i]),
			peerURL:   fmt.Sprintf("http://127.0.0.1:%d", ports[2*i+1]),
		}
	}
	return nil
}

// startAll starts every member at once (an initial cluster needs a quorum to elect a leader)
// and waits until each is healthy.
func (c *EtcdCluster) startAll() error {
	for i := range c.members {
		if err := c.spawn(i); err != nil {
			return err
		}
	}
	deadline := time.Now().Add(etcdStartTimeout)
	for i := range c.members {
		if err := c.waitServing(i, deadline, true); err != nil {
			return err
		}
	}
	return nil
}

// Endpoints returns the client URLs of all members, running or not.
func (c *EtcdCluster) Endpoints() []string {
	eps := make([]string, len(c.members))
	for i, m := range c.members {
		eps[i] = m.clientURL
	}
	return eps
}

// Endpoint returns the client URL of member i.
func (c *EtcdCluster) Endpoint(i int) string {
	c.t.Helper()
	return c.member(i).clientURL
}

// Len returns the number of members.
func (c *EtcdCluster) Len() int { return len(c.members) }

// Stop stops member i gracefully (SIGTERM, then SIGKILL after 10s) and waits until its process
// has exited. Stopping a stopped member does nothing.
func (c *EtcdCluster) Stop(i int) {
	c.t.Helper()
	c.stop(i, syscall.SIGTERM)
}

// Kill kills member i with SIGKILL, as a crash would, and waits until its process has exited.
// Killing a stopped member does nothing.
func (c *EtcdCluster) Kill(i int) {
	c.t.Helper()
	c.stop(i, syscall.SIGKILL)
}

// Start restarts member i, stopped by Stop or Kill, with the same name, data and ports. When the
// running members, with i, make a quorum, it waits until member i serves; otherwise (the
// cluster has lost its quorum) it waits only until member i listens on its client port, since
// it cannot serve before a quorum is back. Starting a running member does nothing.
func (c *EtcdCluster) Start(i int) {
	c.t.Helper()
	m := c.member(i)
	c.mu.Lock()
	running := m.cmd != nil
	c.mu.Unlock()
	if running {
		return
	}
	if err := c.spawn(i); err != nil {
		c.t.Fatalf("storetest: etcd: start %s: %v", m.name, err)
	}
	quorum := c.running() > len(c.members)/2
	if err := c.waitServing(i, time.Now().Add(etcdStartTimeout), quorum); err != nil {
		c.dumpLog(m)
		c.t.Fatalf("storetest: etcd: restart %s: %v", m.name, err)
	}
}

// Running reports whether member i's process is running.
func (c *EtcdCluster) Running(i int) bool {
	m := c.member(i)
	c.mu.Lock()
	defer c.mu.Unlock()
	return m.cmd != nil
}

func (c *EtcdCluster) member(i int) *etcdMember {
	c.t.Helper()
	if i < 0 || i >= len(c.members) {
		c.t.Fatalf("storetest: etcd: no member %d in a cluster of %d", i, len(c.members))
	}
	return c.members[i]
}

// running counts the members whose process runs.
func (c *EtcdCluster) running() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, m := range c.members {
		if m.cmd != nil {
			n++
		}
	}
	return n
}

// args returns member i's command line. On a restart etcd ignores the --initial-* flags and
// uses what its data directory holds.
func (c *EtcdCluster) args(i int) []string {
	m := c.members[i]
	peers := make([]string, len(c.members))
	for j, p := range c.members {
		peers[j] = p.name + "=" + p.peerURL
	}
	args := []string{
		"--name", m.name,
		"--data-dir", m.dataDir,
		"--listen-client-urls", m.clientURL,
		"--advertise-client-urls", m.clientURL,
		"--listen-peer-urls", m.peerURL,
		"--initial-advertise-peer-urls", m.peerURL,
		"--initial-cluster", strings.Join(peers, ","),
		"--initial-cluster-state", "new",
		"--initial-cluster-token", c.token,
		"--logger", "zap",
		"--log-outputs", "stderr",
	}
	if c.tls != nil {
		args = append(args,
			"--cert-file", c.tls.serverCert,
			"--key-file", c.tls.serverKey,
			"--trusted-ca-file", c.tls.files.CA,
			"--client-cert-auth",
		)
	}
	return args
}

// spawn starts member i's process, its output appended to its log file.
func (c *EtcdCluster) spawn(i int) error {
	m := c.members[i]
	logf, err := os.OpenFile(m.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	fmt.Fprintf(logf, "=== storetest: starting %s at %s\n", m.name, time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(c.bin, c.args(i)...)
	cmd.Env = etcdEnv()
	cmd.Stdout = logf
	cmd.Stderr = logf
	// If the test binary dies without its cleanups, the member dies with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", c.bin, err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		logf.Close()
		close(exited)
	}()
	c.mu.Lock()
	m.cmd, m.exited = cmd, exited
	c.mu.Unlock()
	return nil
}

// etcdEnv is the test's environment without ETCD_* variables, which etcd would read as flags.
func etcdEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ETCD_") {
			env = append(env, kv)
		}
	}
	return env
}

// waitServing waits until member i answers on its client URL: with healthy, until /health says
// it is healthy (it has a leader and serves reads); otherwise until its port accepts a TCP
// connection. It fails early when the process exits.
func (c *EtcdCluster) waitServing(i int, deadline time.Time, healthy bool) error {
	m := c.members[i]
	c.mu.Lock()
	exited := m.exited
	c.mu.Unlock()
	host := strings.TrimPrefix(strings.TrimPrefix(m.clientURL, "http://"), "https://")
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		if healthy {
			last = c.health(m)
		} else {
			var conn net.Conn
			if conn, last = net.DialTimeout("tcp", host, time.Second); last == nil {
				conn.Close()
			}
		}
		if last == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s at %s not serving within %v: %v (log %s)", m.name, m.clientURL, etcdStartTimeout, last, m.logPath)
		}
		select {
		case <-exited:
			c.mu.Lock()
			if m.exited == exited {
				m.cmd = nil
			}
			c.mu.Unlock()
			return fmt.Errorf("%s exited while starting (log %s)", m.name, m.logPath)
		case <-tick.C:
		}
	}
}

// health asks member m's /health endpoint.
func (c *EtcdCluster) health(m *etcdMember) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, m.clientURL+"/health", nil)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var body bytes.Buffer
	body.ReadFrom(resp.Body)
	if resp.StatusCode != http.StatusOK || !strings.Contains(body.String(), `"health":"true"`) {
		return fmt.Errorf("/health: %s %s", resp.Status, strings.TrimSpace(body.String()))
	}
	return nil
}

// stop sends sig to member i and waits until it exits; after SIGTERM it kills it when it has
// not exited within etcdStopTimeout.
func (c *EtcdCluster) stop(i int, sig syscall.Signal) {
	m := c.member(i)
	c.mu.Lock()
	cmd, exited := m.cmd, m.exited
	m.cmd = nil
	c.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(sig)
	select {
	case <-exited:
		return
	case <-time.After(etcdStopTimeout):
	}
	c.t.Logf("storetest: etcd: %s did not exit within %v of %v; killing it", m.name, etcdStopTimeout, sig)
	cmd.Process.Kill()
	<-exited
}

// stopAll kills every member and waits for them.
func (c *EtcdCluster) stopAll() {
	for i := range c.members {
		c.stop(i, syscall.SIGKILL)
	}
}

// cleanup stops the members at the end of the test and, when the test failed, logs the tail of
// each member's output.
func (c *EtcdCluster) cleanup() {
	for i := range c.members {
		c.stop(i, syscall.SIGTERM)
	}
	c.http.CloseIdleConnections()
	if c.t.Failed() {
		c.dumpLogs()
	}
}

// dumpLogs writes the tail of every member's log to the test log.
func (c *EtcdCluster) dumpLogs() {
	for _, m := range c.members {
		c.dumpLog(m)
	}
}

func (c *EtcdCluster) dumpLog(m *etcdMember) {
	lines, err := tailLines(m.logPath, etcdLogTailLines)
	if err != nil {
		c.t.Logf("storetest: etcd %s: log: %v", m.name, err)
		return
	}
	c.t.Logf("storetest: etcd %s (%s): last %d lines of %s:\n%s", m.name, m.clientURL, len(lines), m.logPath, strings.Join(lines, "\n"))
}

// portTaken reports whether a member's log says that one of its ports was in use.
func (c *EtcdCluster) portTaken() bool {
	for _, m := range c.members {
		if b, err := os.ReadFile(m.logPath); err == nil && bytes.Contains(b, []byte("address already in use")) {
			return true
		}
	}
	return false
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

// freePorts returns n distinct TCP ports that were free on 127.0.0.1 a moment ago.
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("free port: %w", err)
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// writeEtcdTLS generates a CA, a server certificate for 127.0.0.1 and localhost, and a client
// certificate, and writes them as PEM files under dir.
func writeEtcdTLS(dir string) (*etcdServerTLS, error) {
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
		Subject:               pkix.Name{CommonName: "cnm test CA"},
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
	issue := func(serial int64, cn string, usage []x509.ExtKeyUsage, server bool) ([]byte, *ecdsa.PrivateKey, error) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, nil, err
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial),
			Subject:      pkix.Name{CommonName: cn},
			NotBefore:    now.Add(-time.Hour),
			NotAfter:     now.Add(24 * time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  usage,
		}
		if server {
			tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
			tmpl.DNSNames = []string{"localhost"}
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		return der, key, err
	}
	// etcd's gateway dials the member itself with the server certificate, so it is a client
	// certificate too.
	srvDER, srvKey, err := issue(2, "cnm test etcd", []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, true)
	if err != nil {
		return nil, err
	}
	cliDER, cliKey, err := issue(3, "cnm test client", []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, false)
	if err != nil {
		return nil, err
	}

	s := &etcdServerTLS{
		files: EtcdTLSFiles{
			CA:   filepath.Join(dir, "ca.pem"),
			Cert: filepath.Join(dir, "client.pem"),
			Key:  filepath.Join(dir, "client-key.pem"),
		},
		serverCert: filepath.Join(dir, "server.pem"),
		serverKey:  filepath.Join(dir, "server-key.pem"),
	}
	writes := []struct {
		path, typ string
		der       []byte
	}{
		{s.files.CA, "CERTIFICATE", caDER},
		{s.serverCert, "CERTIFICATE", srvDER},
		{s.files.Cert, "CERTIFICATE", cliDER},
	}
	for _, k := range []struct {
		path string
		key  *ecdsa.PrivateKey
	}{{s.serverKey, srvKey}, {s.files.Key, cliKey}} {
		der, err := x509.MarshalPKCS8PrivateKey(k.key)
		if err != nil {
			return nil, err
		}
		writes = append(writes, struct {
			path, typ string
			der       []byte
		}{k.path, "PRIVATE KEY", der})
	}
	for _, w := range writes {
		if err := os.WriteFile(w.path, pem.EncodeToMemory(&pem.Block{Type: w.typ, Bytes: w.der}), 0o600); err != nil {
			return nil, err
		}
	}

	pool := x509.NewCertPool()
	pool.AddCert(ca)
	pair, err := tls.LoadX509KeyPair(s.files.Cert, s.files.Key)
	if err != nil {
		return nil, errors.Join(errors.New("load client pair"), err)
	}
	s.client = &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
	return s, nil
}
