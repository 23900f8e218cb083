package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// EtcdBinEnv is the environment variable that names the etcd binary to run.
const EtcdBinEnv = "CNM_ETCD_BIN"

// Bounds on the waits of the etcd helpers. Generous: the tests run with -race on small machines.
// The grace period of a stop and the number of start attempts are in process.go.
const etcdStartTimeout = 30 * time.Second // a member (or a whole cluster) becomes healthy

// EtcdBinary returns the path of the etcd binary: $CNM_ETCD_BIN, else "etcd" on PATH. When
// CNM_ETCD_BIN names a file that is not there, the test fails. When it is unset and etcd is not
// on PATH, the test is skipped, or fails when CI=true, with a message that says how to install it.
func EtcdBinary(t testing.TB) string {
	t.Helper()
	const how = "etcd not found: set CNM_ETCD_BIN, or install it (apt-get install etcd-server, " +
		"or eval \"$(./scripts/services.sh)\")"
	return findBinary(t, EtcdBinEnv, "", "etcd", how)
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
	tls     *testCerts // nil: plain http
	members []*etcdMember
	http    *http.Client // for health checks; no keep-alives, so no idle goroutines
}

// etcdMember is one member: its fixed identity and its process.
type etcdMember struct {
	name      string
	dataDir   string
	clientURL string
	peerURL   string
	proc      *process
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
	return c, EtcdTLSFiles{CA: c.tls.ca, Cert: c.tls.clientCert, Key: c.tls.clientKey}
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
		certs, err := writeTestCerts(filepath.Join(c.dir, "tls"), certNames{
			ca:         "cnm test CA",
			server:     "cnm test etcd",
			serverDNS:  []string{"localhost"},
			clientName: "cnm test client",
		})
		if err != nil {
			t.Fatalf("storetest: etcd TLS files: %v", err)
		}
		c.tls = certs
		transport.TLSClientConfig = certs.client
	}
	c.http = &http.Client{Transport: transport, Timeout: time.Second}
	t.Cleanup(c.cleanup)

	attempt := func(try int) error {
		if err := c.layout(n, try); err != nil {
			t.Fatalf("storetest: etcd: %v", err)
		}
		return c.startAll()
	}
	reset := func() bool {
		c.stopAll()
		return c.portTaken()
	}
	if err := startRetrying(t, "etcd", attempt, reset); err != nil {
		c.dumpLogs()
		t.Fatalf("storetest: etcd: %v", err)
	}
	return c
}

// layout gives the members fresh ports, names, directories and processes for start attempt
// try.
func (c *EtcdCluster) layout(n, try int) error {
	ports, err := freePorts(2*n, false)
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
			clientURL: fmt.Sprintf("%s://127.0.0.1:%d", scheme, ports[2*i]),
			peerURL:   fmt.Sprintf("http://127.0.0.1:%d", ports[2*i+1]),
		}
	}
	for i, m := range c.members {
		m.proc = &process{
			t:         c.t,
			name:      "etcd " + m.name,
			bin:       c.bin,
			args:      c.args(i),
			envPrefix: "ETCD_",
			logPath:   filepath.Join(filepath.Dir(m.dataDir), "etcd.log"),
		}
	}
	return nil
}

// startAll starts every member at once (an initial cluster needs a quorum to elect a leader)
// and waits until each is healthy.
func (c *EtcdCluster) startAll() error {
	for _, m := range c.members {
		if err := m.proc.start(); err != nil {
			return err
		}
	}
	deadline := time.Now().Add(etcdStartTimeout)
	for _, m := range c.members {
		if err := c.waitServing(m, deadline, true); err != nil {
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
	c.member(i).proc.stop(syscall.SIGTERM)
}

// Kill kills member i with SIGKILL, as a crash would, and waits until its process has exited.
// Killing a stopped member does nothing.
func (c *EtcdCluster) Kill(i int) {
	c.t.Helper()
	c.member(i).proc.stop(syscall.SIGKILL)
}

// Start restarts member i, stopped by Stop or Kill, with the same name, data and ports. When the
// running members, with i, make a quorum, it waits until member i serves; otherwise (the
// cluster has lost its quorum) it waits only until member i listens on its client port, since
// it cannot serve before a quorum is back. Starting a running member does nothing.
func (c *EtcdCluster) Start(i int) {
	c.t.Helper()
	m := c.member(i)
	if m.proc.running() {
		return
	}
	if err := m.proc.start(); err != nil {
		c.t.Fatalf("storetest: etcd: start %s: %v", m.name, err)
	}
	quorum := c.running() > len(c.members)/2
	if err := c.waitServing(m, time.Now().Add(etcdStartTimeout), quorum); err != nil {
		c.dumpLog(m)
		c.t.Fatalf("storetest: etcd: restart %s: %v", m.name, err)
	}
}

// Running reports whether member i's process is running.
func (c *EtcdCluster) Running(i int) bool {
	return c.member(i).proc.running()
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
	n := 0
	for _, m := range c.members {
		if m.proc.running() {
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
			"--trusted-ca-file", c.tls.ca,
			"--client-cert-auth",
		)
	}
	return args
}

// waitServing waits until member m answers on its client URL: with healthy, until /health says
// it is healthy (it has a leader and serves reads); otherwise until its port accepts a TCP
// connection. It fails early when the process exits.
func (c *EtcdCluster) waitServing(m *etcdMember, deadline time.Time, healthy bool) error {
	host := strings.TrimPrefix(strings.TrimPrefix(m.clientURL, "http://"), "https://")
	err := m.proc.awaitReady(deadline, func() error {
		if healthy {
			return c.health(m)
		}
		conn, err := net.DialTimeout("tcp", host, time.Second)
		if err == nil {
			conn.Close()
		}
		return err
	})
	switch {
	case errors.Is(err, errExited):
		return fmt.Errorf("%s %v (log %s)", m.name, err, m.proc.logPath)
	case err != nil:
		return fmt.Errorf("%s at %s not serving within %v: %v (log %s)", m.name, m.clientURL, etcdStartTimeout, err, m.proc.logPath)
	}
	return nil
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

// stopAll kills every member and waits for them.
func (c *EtcdCluster) stopAll() {
	for _, m := range c.members {
		m.proc.stop(syscall.SIGKILL)
	}
}

// cleanup stops the members at the end of the test and, when the test failed, logs the tail of
// each member's output.
func (c *EtcdCluster) cleanup() {
	for _, m := range c.members {
		m.proc.stop(syscall.SIGTERM)
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
	m.proc.dumpLog(fmt.Sprintf("etcd %s (%s)", m.name, m.clientURL))
}

// portTaken reports whether a member's log says that one of its ports was in use.
func (c *EtcdCluster) portTaken() bool {
	for _, m := range c.members {
		if m.proc.portTaken() {
			return true
		}
	}
	return false
}
