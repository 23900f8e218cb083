package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// ConsulBinEnv is the environment variable that names the Consul binary to run.
const ConsulBinEnv = "CNM_CONSUL_BIN"

// ConsulVersion is the Consul release that scripts/services.sh builds and the tests run.
const ConsulVersion = "v1.14.11"

// consulStartTimeout bounds the wait until the agent has a leader and serves consistent reads.
// Generous: the tests run with -race on small machines, and a server elects itself only after
// its raft election timeout. The grace period of a stop and the number of start attempts are in
// process.go.
const consulStartTimeout = 30 * time.Second

// ConsulBinary returns the path of the Consul binary: $CNM_CONSUL_BIN, else the binary that
// scripts/services.sh builds, ${XDG_CACHE_HOME:-$HOME/.cache}/cnm/consul-v1.14.11, else
// "consul" on PATH. When CNM_CONSUL_BIN names a file that is not there, the test fails. When
// none is found, the test is skipped, or fails when CI=true, with a message that says how to
// build it.
func ConsulBinary(t testing.TB) string {
	t.Helper()
	how := fmt.Sprintf("consul not found: set %s, or build Consul %s into %s with "+
		"eval \"$(./scripts/services.sh)\" (a few minutes, needs the Go module proxy)",
		ConsulBinEnv, ConsulVersion, consulCachePath())
	return findBinary(t, ConsulBinEnv, consulCachePath(), "Consul", how)
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
	t    testing.TB
	bin  string
	dir  string // t.TempDir(): config, data and log of each start attempt
	http *http.Client
	tls  *testCerts // nil: plain HTTP
	addr string     // host:port of the HTTP (or HTTPS) API; fixed after StartConsul
	proc *process   // the agent of the current start attempt; fixed after StartConsul
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
	return a, ConsulTLSFiles{CA: a.tls.ca, Cert: a.tls.clientCert, Key: a.tls.clientKey}
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
		certs, err := writeTestCerts(filepath.Join(a.dir, "tls"), certNames{
			ca:         "cnm test Consul CA",
			server:     "server.dc1.consul",
			serverDNS:  []string{"localhost", "server.dc1.consul"},
			clientName: "cnm test client",
		})
		if err != nil {
			t.Fatalf("storetest: consul TLS files: %v", err)
		}
		a.tls = certs
		transport.TLSClientConfig = certs.client
	}
	a.http = &http.Client{Transport: transport, Timeout: 2 * time.Second}
	t.Cleanup(a.cleanup)

	attempt := func(try int) error {
		if err := a.layout(try); err != nil {
			t.Fatalf("storetest: consul: %v", err)
		}
		return a.startAndWait()
	}
	reset := func() bool {
		a.proc.stop(syscall.SIGKILL)
		return a.proc.portTaken()
	}
	if err := startRetrying(t, "consul", attempt, reset); err != nil {
		a.dumpLog()
		t.Fatalf("storetest: consul: %v", err)
	}
	return a
}

// Addr returns the host:port of the agent's HTTP API (HTTPS for [StartConsulTLS]), running
// or not.
func (a *ConsulAgent) Addr() string { return a.addr }

// LogPath returns the path of the file that collects the agent's output.
func (a *ConsulAgent) LogPath() string { return a.proc.logPath }

// Stop stops the agent gracefully (SIGTERM, then SIGKILL after 10s) and waits until its
// process has exited. A server does not leave the cluster on SIGTERM, so a later
// [ConsulAgent.Start] finds its data, sessions and raft indices as they were. Stopping a
// stopped agent does nothing.
func (a *ConsulAgent) Stop() {
	a.t.Helper()
	a.proc.stop(syscall.SIGTERM)
}

// Kill kills the agent with SIGKILL, as a crash would, and waits until its process has
// exited. Killing a stopped agent does nothing.
func (a *ConsulAgent) Kill() {
	a.t.Helper()
	a.proc.stop(syscall.SIGKILL)
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
func (a *ConsulAgent) Running() bool { return a.proc.running() }

// layout picks fresh ports, writes the configuration and sets up the process for start attempt
// try.
func (a *ConsulAgent) layout(try int) error {
	ports, err := freePorts(3, true)
	if err != nil {
		return err
	}
	dir := filepath.Join(a.dir, fmt.Sprintf("try%d", try))
	if err := os.MkdirAll(filepath.Join(dir, "data"), 0o700); err != nil {
		return err
	}
	a.addr = fmt.Sprintf("127.0.0.1:%d", ports[0])
	config := filepath.Join(dir, "consul.hcl")
	a.proc = &process{
		t:         a.t,
		name:      "consul agent",
		bin:       a.bin,
		args:      []string{"agent", "-config-file", config},
		envPrefix: "CONSUL_",
		logPath:   filepath.Join(dir, "consul.log"),
	}
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
`, a.tls.ca, a.tls.serverCert, a.tls.serverKey)
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
	return os.WriteFile(config, []byte(hcl), 0o600)
}

// startAndWait spawns the agent and waits until it serves.
func (a *ConsulAgent) startAndWait() error {
	if err := a.proc.start(); err != nil {
		return err
	}
	return a.waitServing(time.Now().Add(consulStartTimeout))
}

// waitServing waits until the agent reports a leader and answers a consistent read (which the
// leader serves only once it has established its leadership). It fails early when the process
// exits.
func (a *ConsulAgent) waitServing(deadline time.Time) error {
	err := a.proc.awaitReady(deadline, a.probe)
	switch {
	case errors.Is(err, errExited):
		return fmt.Errorf("agent %v (log %s)", err, a.proc.logPath)
	case err != nil:
		return fmt.Errorf("agent at %s not serving within %v: %v (log %s)", a.addr, consulStartTimeout, err, a.proc.logPath)
	}
	return nil
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

// cleanup stops the agent at the end of the test and, when the test failed, logs the tail of
// its output.
func (a *ConsulAgent) cleanup() {
	if a.proc != nil {
		a.proc.stop(syscall.SIGTERM)
	}
	a.http.CloseIdleConnections()
	if a.t.Failed() {
		a.dumpLog()
	}
}

// dumpLog writes the tail of the agent's log to the test log.
func (a *ConsulAgent) dumpLog() {
	if a.proc != nil {
		a.proc.dumpLog(fmt.Sprintf("consul (%s)", a.addr))
	}
}
