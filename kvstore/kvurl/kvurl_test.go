package kvurl_test

import (
	"errors"
	"net"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/cnmkit/cnm/internal/storetest"
	"github.com/cnmkit/cnm/kvstore"
	"github.com/cnmkit/cnm/kvstore/kvurl"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// roundTrip writes and reads a key through s and closes it.
func roundTrip(t *testing.T, s kvstore.Store) {
	t.Helper()
	defer s.Close()
	rev, err := s.Put(t.Context(), "kvurl/k", []byte("v"))
	if err != nil {
		t.Fatalf("Put: %v", err)
	}
	kv, err := s.Get(t.Context(), "kvurl/k")
	if err != nil || string(kv.Value) != "v" || kv.Revision != rev {
		t.Fatalf("Get = %+v, %v; want v at revision %d", kv, err, rev)
	}
}

func TestBadURLs(t *testing.T) {
	for _, u := range []string{
		"redis://h:6379/x",   // unknown scheme
		"etcd:///prefix",     // no host
		"consul://a:1,b:2/x", // Consul takes one agent
		"boltdb://host/x.db", // a host in a file URL
		"etcd://h:2379/x?ca=/nonexistent/ca.pem",
		"etcd://h:2379/x?cert=/tmp/c.pem", // cert without key
		"::not a url",
	} {
		_, err := kvurl.Open(t.Context(), u, kvurl.Options{})
		if !errors.Is(err, errclass.ErrInvalidParameter) {
			t.Errorf("Open(%q) error = %v, want ErrInvalidParameter", u, err)
		}
	}
}

func TestBoltDB(t *testing.T) {
	path := filepath.Join(t.TempDir(), "local.db")
	s, err := kvurl.Open(t.Context(), "boltdb://"+path, kvurl.Options{})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	roundTrip(t, s)
}

func TestEtcd(t *testing.T) {
	ec := storetest.StartEtcdCluster(t, 3)
	hosts := make([]string, 0, 3)
	for _, e := range ec.Endpoints() {
		u, err := url.Parse(e)
		if err != nil {
			t.Fatal(err)
		}
		hosts = append(hosts, u.Host)
	}
	s, err := kvurl.Open(t.Context(), "etcd://"+strings.Join(hosts, ",")+"/cnm", kvurl.Options{})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	roundTrip(t, s)
}

func TestEtcdTLS(t *testing.T) {
	ec, files := storetest.StartEtcdTLS(t)
	u, err := url.Parse(ec.Endpoint(0))
	if err != nil {
		t.Fatal(err)
	}
	q := url.Values{"ca": {files.CA}, "cert": {files.Cert}, "key": {files.Key}}
	s, err := kvurl.Open(t.Context(), "etcd://"+u.Host+"/cnm?"+q.Encode(), kvurl.Options{Timeout: 3 * time.Second})
	if err != nil {
		t.Fatalf("Open with client certificate: %v", err)
	}
	roundTrip(t, s)

	// The same through Options, without a client certificate: the member refuses.
	start := time.Now()
	_, err = kvurl.Open(t.Context(), "etcd://"+u.Host+"/cnm", kvurl.Options{CAFile: files.CA, Timeout: 2 * time.Second})
	if err == nil {
		t.Fatal("Open without a client certificate succeeded; the member requires one")
	}
	if d := time.Since(start); d > 6*time.Second {
		t.Errorf("refused Open took %v", d)
	}
}

func TestConsul(t *testing.T) {
	ca := storetest.StartConsul(t)
	s, err := kvurl.Open(t.Context(), "consul://"+ca.Addr()+"/cnm", kvurl.Options{})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	roundTrip(t, s)
}

func TestUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // a port nobody listens on
	for _, u := range []string{"etcd://" + addr + "/x", "consul://" + addr + "/x"} {
		start := time.Now()
		_, err := kvurl.Open(t.Context(), u, kvurl.Options{Timeout: time.Second})
		took := time.Since(start)
		if !errors.Is(err, kvstore.ErrUnavailable) || !strings.Contains(err.Error(), addr) {
			t.Errorf("Open(%s) error = %v, want ErrUnavailable naming %s", u, err, addr)
		}
		if took > 4*time.Second {
			t.Errorf("Open(%s) took %v, want about the 1s timeout", u, took)
		}
	}
}
