package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cnmkit/cnm/api/client"
	"github.com/cnmkit/cnm/internal/nstest"
)

// testCA is a certificate authority for the TLS tests.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue writes a certificate for name (a server's with IP 127.0.0.1, or a client's) and its
// key under dir, and returns their paths.
func (ca *testCA) issue(t *testing.T, dir, name string, server bool) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
	write := func(p string, b []byte) {
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	write(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}))
	return certFile, keyFile
}

// TestPrivilegedCNMDTLS: on tcp://, cnmd answers only clients whose certificate its CA
// signed: no certificate, or one of another CA, is refused at the handshake; cnmctl with
// the TLS flags works, and without them refuses to try.
func TestPrivilegedCNMDTLS(t *testing.T) {
	nstest.Privileged(t)
	cnmd, cnmctl := binaries(t)
	dir := t.TempDir()
	ca, rogue := newCA(t, "cnm test CA"), newCA(t, "rogue CA")
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, ca.pem, 0o600); err != nil {
		t.Fatal(err)
	}
	srvCert, srvKey := ca.issue(t, dir, "server", true)
	cliCert, cliKey := ca.issue(t, dir, "client", false)
	rogueCert, rogueKey := rogue.issue(t, dir, "rogue", false)

	host := nstest.NewNS(t)
	const addr = "127.0.0.1:23761"
	log := &syncBuffer{}
	cmd := exec.Command("nsenter", "--net="+host.Path(), "--", cnmd, "--host", "tcp://"+addr, "--data-dir", filepath.Join(dir, "data"),
		"--run-dir", filepath.Join(dir, "run"), "--tlscacert", caFile, "--tlscert", srvCert, "--tlskey", srvKey)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		if err := <-done; err != nil {
			t.Errorf("cnmd: %v\n%s", err, log)
		}
	}()

	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.pem)
	get := func(certs ...tls.Certificate) error {
		tr := &http.Transport{
			DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
				var c net.Conn
				err := host.Do(func() error {
					var err error
					c, err = net.DialTimeout(network, a, 2*time.Second)
					return err
				})
				return c, err
			},
			TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: certs},
		}
		defer tr.CloseIdleConnections()
		resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get("https://" + addr + "/v1/networks")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return &statusError{resp.Status}
		}
		return nil
	}
	good, err := tls.LoadX509KeyPair(cliCert, cliKey)
	if err != nil {
		t.Fatal(err)
	}
	bad, err := tls.LoadX509KeyPair(rogueCert, rogueKey)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for err := get(good); err != nil; err = get(good) {
		if time.Now().After(deadline) {
			t.Fatalf("cnmd on %s does not answer a good client: %v\n%s", addr, err, log)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := get(); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("a client without a certificate: %v, want refused at the handshake", err)
	}
	if err := get(bad); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("a client with another CA's certificate: %v, want refused", err)
	}

	run := func(args ...string) (string, error) {
		out, err := exec.Command("nsenter", append([]string{"--net=" + host.Path(), "--", cnmctl, "--host", "tcp://" + addr}, args...)...).CombinedOutput()
		return string(out), err
	}
	if out, err := run("--tlscacert", caFile, "--tlscert", cliCert, "--tlskey", cliKey, "network", "ls", "-q"); err != nil || len(strings.Fields(out)) != 3 {
		t.Errorf("cnmctl with TLS flags: %v: %s", err, out)
	}
	if out, err := run("network", "ls"); err == nil || !strings.Contains(out, "mutual TLS") {
		t.Errorf("cnmctl on tcp:// without TLS flags: %v: %s", err, out)
	}
	if out, err := run("--tlscacert", caFile, "--tlscert", rogueCert, "--tlskey", rogueKey, "network", "ls"); err == nil || !strings.Contains(out, "cannot reach cnmd") {
		t.Errorf("cnmctl with a rogue certificate: %v: %s", err, out)
	}
	// The Go client is what cnmctl uses: check it refuses tcp without TLS as well.
	if _, err := client.New(client.Config{Host: "tcp://" + addr}); err == nil {
		t.Error("client.New(tcp:// without TLS) succeeded")
	}
}

type statusError struct{ status string }

func (e *statusError) Error() string { return "status " + e.status }
