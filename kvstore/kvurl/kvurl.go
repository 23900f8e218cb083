// Package kvurl opens a [kvstore.Store] from a URL, so that a program (or an operator's flag)
// chooses the backend and its address in one string:
//
//	boltdb:///var/lib/cnm/local.db        the embedded bbolt file (the directory must exist)
//	etcd://h1:2379,h2:2379/cnm            etcd members, keys under the prefix "cnm"
//	consul://h:8500/cnm                   a Consul agent's HTTP API, keys under "cnm"
//
// TLS for etcd and Consul comes from [Options] or from the URL's query: ca, cert and key name
// PEM files (the CA that signed the servers, and this client's certificate and key). Giving any
// of them turns TLS on; etcd+tls:// and consul+tls:// (or https) turn it on with the system's
// roots. For Consul, token= (or Options.Token) is the ACL token.
//
//	etcd://10.0.0.1:2379,10.0.0.2:2379/cnm?ca=/etc/cnm/ca.pem&cert=/etc/cnm/client.pem&key=/etc/cnm/client-key.pem
//
// An unknown scheme, a URL without hosts, or an unreadable certificate fails with an error
// matching cnm.ErrInvalidParameter; servers that cannot be reached within the timeout fail with
// one matching cnm.ErrUnavailable (kvstore.ErrUnavailable) that names them.
package kvurl

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/cnmkit/cnm/kvstore"
	"github.com/cnmkit/cnm/kvstore/boltdb"
	"github.com/cnmkit/cnm/kvstore/consul"
	"github.com/cnmkit/cnm/kvstore/etcd"
)

// Options are what a URL does not say. The zero value is ready to use.
type Options struct {
	// CAFile, CertFile and KeyFile are PEM files for TLS to etcd or Consul; they override the
	// URL's ca, cert and key.
	CAFile, CertFile, KeyFile string
	// Token is Consul's ACL token; it overrides the URL's token.
	Token string
	// Timeout bounds each request to etcd or Consul (and dialing); zero means the backend's
	// default (5s).
	Timeout time.Duration
	// Logger receives the backend's logs. Nil discards them.
	Logger *slog.Logger
}

// Schemes are the URL schemes Open knows.
var Schemes = []string{"boltdb", "etcd", "etcd+tls", "consul", "consul+tls"}

// Open opens the store rawURL names. The caller closes it.
func Open(ctx context.Context, rawURL string, opts Options) (kvstore.Store, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("kvurl: %w", errclass.Invalid("store url", rawURL, err.Error()))
	}
	q := u.Query()
	pick := func(opt, key string) string {
		if opt != "" {
			return opt
		}
		return q.Get(key)
	}
	ca, cert, key := pick(opts.CAFile, "ca"), pick(opts.CertFile, "cert"), pick(opts.KeyFile, "key")
	prefix := strings.Trim(u.Path, "/")
	scheme := strings.ToLower(u.Scheme)
	secure := strings.HasSuffix(scheme, "+tls") || q.Get("tls") == "1" || ca != "" || cert != ""
	switch strings.TrimSuffix(scheme, "+tls") {
	case "boltdb":
		path := u.Path
		if u.Host != "" || path == "" {
			return nil, fmt.Errorf("kvurl: %w", errclass.Invalid("store url", rawURL, "want boltdb:///absolute/path/file.db"))
		}
		return boltdb.Open(path, boltdb.Config{Bucket: q.Get("bucket"), Logger: opts.Logger})
	case "etcd":
		hosts, err := hostList(rawURL, u)
		if err != nil {
			return nil, err
		}
		var tc *tls.Config
		if secure {
			if tc, err = LoadTLS(ca, cert, key); err != nil {
				return nil, err
			}
		}
		scheme := "http://"
		if tc != nil {
			scheme = "https://"
		}
		for i, h := range hosts {
			hosts[i] = scheme + h
		}
		return etcd.Open(ctx, etcd.Config{
			Endpoints: hosts, Prefix: prefix, TLS: tc, DialTimeout: opts.Timeout,
			RequestTimeout: opts.Timeout, Logger: opts.Logger,
		})
	case "consul":
		hosts, err := hostList(rawURL, u)
		if err != nil {
			return nil, err
		}
		if len(hosts) != 1 {
			return nil, fmt.Errorf("kvurl: %w", errclass.Invalid("store url", rawURL, "Consul takes one agent address (the local agent)"))
		}
		var tc *tls.Config
		if secure {
			if tc, err = LoadTLS(ca, cert, key); err != nil {
				return nil, err
			}
		}
		return consul.Open(ctx, consul.Config{
			Address: hosts[0], Prefix: prefix, TLS: tc, Token: pick(opts.Token, "token"),
			RequestTimeout: opts.Timeout, Logger: opts.Logger,
		})
	}
	return nil, fmt.Errorf("kvurl: %w", errclass.Invalid("store url scheme", u.Scheme, "want one of "+strings.Join(Schemes, ", ")))
}

// hostList splits the URL's host part on commas: etcd://h1:2379,h2:2379/prefix.
func hostList(raw string, u *url.URL) ([]string, error) {
	var out []string
	for h := range strings.SplitSeq(u.Host, ",") {
		if h = strings.TrimSpace(h); h != "" {
			out = append(out, h)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("kvurl: %w", errclass.Invalid("store url", raw, "no host"))
	}
	return out, nil
}

// LoadTLS builds a client TLS configuration from PEM files: caFile the CA that signed the
// servers (empty: the system's roots), certFile and keyFile this client's certificate and key
// (both or neither).
func LoadTLS(caFile, certFile, keyFile string) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("kvurl: %w", errclass.Invalid("ca file", caFile, err.Error()))
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("kvurl: %w", errclass.Invalid("ca file", caFile, "no PEM certificate in it"))
		}
		tc.RootCAs = pool
	}
	if (certFile == "") != (keyFile == "") {
		return nil, fmt.Errorf("kvurl: %w", errclass.Invalid("client certificate", certFile+","+keyFile, "give both cert and key, or neither"))
	}
	if certFile != "" {
		pair, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("kvurl: %w", errclass.Invalid("client certificate", certFile, err.Error()))
		}
		tc.Certificates = []tls.Certificate{pair}
	}
	return tc, nil
}
