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
	template := func(serial int64, cn string) *x509.Certificate {
		return &x509.Certificate{
			SerialNumber: big.NewInt(serial),
			Subject:      pkix.Name{CommonName: cn},
			NotBefore:    now.Add(-time.Hour),
			NotAfter:     now.Add(24 * time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
		}
	}
	caTmpl := template(1, names.ca)
	caTmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign
	caTmpl.BasicConstraintsValid = true
	caTmpl.IsCA = true
	caDER, caKey, err := signCert(caTmpl, nil, nil, c.ca, "")
	if err != nil {
		return nil, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	srvTmpl := template(2, names.server)
	srvTmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	srvTmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	srvTmpl.DNSNames = names.serverDNS
	if _, _, err := signCert(srvTmpl, ca, caKey, c.serverCert, c.serverKey); err != nil {
		return nil, err
	}
	cliTmpl := template(3, names.clientName)
	cliTmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	if _, _, err := signCert(cliTmpl, ca, caKey, c.clientCert, c.clientKey); err != nil {
		return nil, err
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

// signCert generates a P-256 key, signs tmpl with parentKey as parent (self-signed when parent
// is nil), and writes the certificate to certPath and, unless keyPath is "", the key (PKCS #8)
// to keyPath. It returns the certificate's DER and the key.
func signCert(tmpl, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, certPath, keyPath string) ([]byte, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		return nil, nil, err
	}
	if err := writePEM(certPath, "CERTIFICATE", der); err != nil {
		return nil, nil, err
	}
	if keyPath != "" {
		kder, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return nil, nil, err
		}
		if err := writePEM(keyPath, "PRIVATE KEY", kder); err != nil {
			return nil, nil, err
		}
	}
	return der, key, nil
}

// writePEM writes der as one PEM block of type typ to the file at path, readable by its owner
// only.
func writePEM(path, typ string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600)
}
