package storetest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// testCerts names the PEM files that [writeTestCerts] writes, and holds a client TLS
// configuration built from them.
type testCerts struct {
	ca         string // CA certificate: ca.pem
	clientCert string // client.pem
	clientKey  string // client-key.pem (PKCS #8)
	serverCert string // server.pem
	serverKey  string // server-key.pem (PKCS #8)

	client *tls.Config // trusts the CA and presents the client certificate
}

// certNames are the names in the certificates of one server's test PKI.
type certNames struct {
	ca         string   // common name of the CA
	server     string   // common name of the server certificate
	serverDNS  []string // DNS names of the server certificate, besides its 127.0.0.1 address
	clientName string   // common name of the client certificate
}

// writeTestCerts generates a CA, a server certificate for 127.0.0.1 and names.serverDNS, and a
// client certificate, all valid from an hour ago for a day, and writes them as PEM files under
// dir. The server certificate is good for client authentication too: etcd's gateway and
// Consul's RPC dial the server with it.
func writeTestCerts(dir string, names certNames) (*testCerts, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	c := &testCerts{
		ca:         filepath.Join(dir, "ca.pem"),
		clientCert: filepath.Join(dir, "client.pem"),
		clientKey:  filepath.Join(dir, "client-key.pem"),
		serverCert: filepath.Join(dir, "server.pem"),
		serverKey:  filepath.Join(dir, "server-key.pem"),
	}
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: names.ca},
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
	if err := writePEM(c.ca, "CERTIFICATE", caDER); err != nil {
		return nil, err
	}
	for _, leaf := range []struct {
		serial          int64
		cn              string
		usage           []x509.ExtKeyUsage
		server          bool
		certPath, kPath string
	}{
		{2, names.server, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, true, c.serverCert, c.serverKey},
		{3, names.clientName, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, false, c.clientCert, c.clientKey},
	} {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(leaf.serial),
			Subject:      pkix.Name{CommonName: leaf.cn},
			NotBefore:    now.Add(-time.Hour),
			NotAfter:     now.Add(24 * time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  leaf.usage,
		}
		if leaf.server {
			tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
			tmpl.DNSNames = names.serverDNS
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			return nil, err
		}
		kder, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return nil, err
		}
		if err := writePEM(leaf.certPath, "CERTIFICATE", der); err != nil {
			return nil, err
		}
		if err := writePEM(leaf.kPath, "PRIVATE KEY", kder); err != nil {
			return nil, err
		}
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	pair, err := tls.LoadX509KeyPair(c.clientCert, c.clientKey)
	if err != nil {
		return nil, fmt.Errorf("load client pair: %w", err)
	}
	c.client = &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
	return c, nil
}

// writePEM writes der as one PEM block of type typ to the file at path, readable by its owner
// only.
func writePEM(path, typ string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600)
}
