package etcd_test

import (
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
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"

	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/cnmkit/cnm/internal/storetest"
	"github.com/cnmkit/cnm/kvstore"
	"github.com/cnmkit/cnm/kvstore/etcd"
	"github.com/cnmkit/cnm/kvstore/kvstoretest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// prefixSeq makes every store's prefix unique within the test binary.
var prefixSeq atomic.Int64

// uniquePrefix returns a key prefix of its own for a store of t.
func uniquePrefix(t testing.TB) string {
	return fmt.Sprintf("cnm-test/%s/%d/", t.Name(), prefixSeq.Add(1))
}

// openStore opens a store on endpoints with cfg (Endpoints and, if empty, Prefix filled in).
// The caller closes it.
func openStore(t testing.TB, endpoints []string, cfg etcd.Config) *etcd.Store {
	t.Helper()
	cfg.Endpoints = endpoints
	if cfg.Prefix == "" {
		cfg.Prefix = uniquePrefix(t)
	}
	s, err := etcd.Open(t.Context(), cfg)
	if err != nil {
		t.Fatalf("Open(%v): %v", endpoints, err)
	}
	return s
}

// openClosed is openStore, closed when t ends.
func openClosed(t testing.TB, endpoints []string, cfg etcd.Config) *etcd.Store {
	t.Helper()
	s := openStore(t, endpoints, cfg)
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func TestContract(t *testing.T) {
	cluster := storetest.StartEtcd(t)
	prefixes := map[kvstore.Store]string{}
	kvstoretest.RunWith(t, func(t *testing.T) kvstore.Store {
		p := uniquePrefix(t)
		s := openStore(t, cluster.Endpoints(), etcd.Config{Prefix: p})
		prefixes[s] = p
		return s
	}, kvstoretest.Options{
		// Another client on the same etcd and prefix.
		Second: func(t *testing.T, s kvstore.Store) kvstore.Store {
			return openStore(t, cluster.Endpoints(), etcd.Config{Prefix: prefixes[s]})
		},
	})
}

// TestPrefixesApart checks that stores with different prefixes, one a string prefix of the
// other, see none of each other's keys or events, and that the keys in etcd are the
// prefixed ones.
func TestPrefixesApart(t *testing.T) {
	cluster := storetest.StartEtcd(t)
	ctx := t.Context()
	a := openClosed(t, cluster.Endpoints(), etcd.Config{Prefix: "tenant-a"})
	ab := openClosed(t, cluster.Endpoints(), etcd.Config{Prefix: "tenant-ab/"})
	ch, err := a.Watch(ctx, "", 0)
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	if _, err := ab.Put(ctx, "k", []byte("ab")); err != nil {
		t.Fatalf("Put: %v", err)
	}
	rev, err := a.Put(ctx, "k", []byte("a"))
	if err != nil {
		t.Fatalf("Put: %v", err)
	}
	list, err := a.List(ctx, "")
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	if len(list) != 1 || list[0].Key != "k" || string(list[0].Value) != "a" || list[0].Revision != rev {
		t.Errorf("List of tenant-a = %v, want only k=a @%d", list, rev)
	}
	select {
	case ev := <-ch:
		if ev.Type != kvstore.EventPut || ev.Pair.Key != "k" || string(ev.Pair.Value) != "a" || ev.Pair.Revision != rev {
			t.Errorf("first event of tenant-a = %v %v, want put k=a @%d", ev.Type, ev.Pair, rev)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no event within 5s")
	}

	// A store without a prefix sees the whole keyspace, prefixes included.
	whole, err := etcd.Open(ctx, etcd.Config{Endpoints: cluster.Endpoints()}) // openClosed would add a prefix
	if err != nil {
		t.Fatalf("Open(no prefix): %v", err)
	}
	defer whole.Close()
	wch, err := whole.Watch(ctx, "", 0)
	if err != nil {
		t.Fatalf("Watch(whole keyspace): %v", err)
	}
	rev2 := mustPut(t, a, "k2", "a2")
	expect(t, wch, kvstore.EventPut, "tenant-a/k2", "a2", rev2)
	all, err := whole.List(ctx, "")
	if err != nil {
		t.Fatalf("List(whole keyspace): %v", err)
	}
	var keys []string
	for _, p := range all {
		keys = append(keys, p.Key)
	}
	if want := []string{"tenant-a/k", "tenant-a/k2", "tenant-ab/k"}; !slices.Equal(keys, want) {
		t.Errorf("List of the whole keyspace = %q, want %q", keys, want)
	}

	raw := rawClient(t, cluster.Endpoints())
	resp, err := raw.Get(ctx, "tenant-a/k")
	if err != nil {
		t.Fatalf("raw Get: %v", err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "a" || uint64(resp.Kvs[0].ModRevision) != rev {
		t.Errorf("raw etcd key tenant-a/k = %v, want value a at revision %d", resp.Kvs, rev)
	}
}

// rawClient returns a plain etcd client, closed when t ends.
func rawClient(t testing.TB, endpoints []string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("clientv3.New: %v", err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// TestWatchCompacted checks that a watch from a revision etcd has compacted away sends the
// current state of the keys changed since, as puts in revision order, then live events.
func TestWatchCompacted(t *testing.T) {
	cluster := storetest.StartEtcd(t)
	ctx := t.Context()
	logs := &logRecorder{}
	s := openClosed(t, cluster.Endpoints(), etcd.Config{Logger: slog.New(logs)})
	r0 := mustPut(t, s, "c/old", "0") // before the watch's revision: not sent
	r1 := mustPut(t, s, "c/a", "1")   // overwritten below
	mustPut(t, s, "c/gone", "x")      // deleted below: the delete is lost
	r2 := mustPut(t, s, "c/a", "2")   // sent as the current state
	if err := s.Delete(ctx, "c/gone"); err != nil {
		t.Fatal(err)
	}
	r3 := mustPut(t, s, "c/b", "3")
	raw := rawClient(t, cluster.Endpoints())
	if _, err := raw.Compact(ctx, int64(r3)); err != nil {
		t.Fatalf("Compact(%d): %v", r3, err)
	}
	_ = r1

	ch, err := s.Watch(ctx, "c/", r0)
	if err != nil {
		t.Fatalf("Watch(from %d): %v", r0, err)
	}
	expect(t, ch, kvstore.EventPut, "c/a", "2", r2)
	expect(t, ch, kvstore.EventPut, "c/b", "3", r3)
	r4 := mustPut(t, s, "c/d", "4")
	expect(t, ch, kvstore.EventPut, "c/d", "4", r4)
	if logs.count("WARN etcd: watch: revisions compacted") != 1 {
		t.Errorf("no warning logged about the compacted revisions; log: %q", logs.msgs)
	}
}

func TestOpenBadConfig(t *testing.T) {
	for _, tc := range []struct {
		name  string
		cfg   etcd.Config
		field string
	}{
		{"no endpoints", etcd.Config{}, "Endpoints"},
		{"empty endpoint", etcd.Config{Endpoints: []string{"http://127.0.0.1:2379", " "}}, "Endpoints[1]"},
		{"negative dial timeout", etcd.Config{Endpoints: []string{"127.0.0.1:2379"}, DialTimeout: -time.Second}, "DialTimeout"},
		{"negative request timeout", etcd.Config{Endpoints: []string{"127.0.0.1:2379"}, RequestTimeout: -1}, "RequestTimeout"},
		{"negative lock TTL", etcd.Config{Endpoints: []string{"127.0.0.1:2379"}, LockTTL: -time.Second}, "LockTTL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := etcd.Open(t.Context(), tc.cfg)
			if !errors.Is(err, errclass.ErrInvalidParameter) {
				if s != nil {
					s.Close()
				}
				t.Fatalf("Open error = %v, want ErrInvalidParameter", err)
			}
			if !strings.Contains(err.Error(), tc.field) {
				t.Errorf("Open error %q does not name the field %s", err, tc.field)
			}
		})
	}
}

// TestOpenUnreachable opens a store on a port nobody listens on: it fails with
// ErrUnavailable, naming the endpoint, within DialTimeout and some slack.
func TestOpenUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ep := "http://" + ln.Addr().String()
	ln.Close() // now closed: connections are refused

	const dial = time.Second
	start := time.Now()
	s, err := etcd.Open(t.Context(), etcd.Config{Endpoints: []string{ep}, DialTimeout: dial})
	took := time.Since(start)
	if err == nil {
		s.Close()
		t.Fatalf("Open(%s) on a closed port succeeded", ep)
	}
	if !errors.Is(err, kvstore.ErrUnavailable) || !errors.Is(err, errclass.ErrUnavailable) {
		t.Errorf("Open error = %v, want ErrUnavailable", err)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Open error %v matches context.DeadlineExceeded, though the caller's context did not end", err)
	}
	if !strings.Contains(err.Error(), ep) {
		t.Errorf("Open error %q does not name the endpoint %s", err, ep)
	}
	if took > dial+2*time.Second {
		t.Errorf("Open took %v, want about DialTimeout (%v)", took, dial)
	}
	t.Logf("Open after %v: %v", took, err)

	// The caller's own deadline, shorter than DialTimeout, is reported as the caller's.
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	if s, err := etcd.Open(ctx, etcd.Config{Endpoints: []string{ep}, DialTimeout: 5 * time.Second}); !errors.Is(err, context.DeadlineExceeded) {
		if s != nil {
			s.Close()
		}
		t.Errorf("Open with a short ctx: error = %v, want context.DeadlineExceeded", err)
	}
}

func TestTLS(t *testing.T) {
	cluster, files := storetest.StartEtcdTLS(t)
	ctx := t.Context()

	// With the CA and a client certificate: works.
	cfg, err := etcd.LoadTLS(files.CA, files.Cert, files.Key)
	if err != nil {
		t.Fatalf("LoadTLS: %v", err)
	}
	s := openClosed(t, cluster.Endpoints(), etcd.Config{TLS: cfg})
	rev := mustPut(t, s, "tls/a", "1")
	if got := mustGet(t, s, "tls/a"); string(got.Value) != "1" || got.Revision != rev {
		t.Errorf("Get over TLS = %v, want 1 @%d", got, rev)
	}

	// Refused TLS is a configuration error that names the endpoint, not ErrUnavailable:
	// waiting does not help.
	noCert, err := etcd.LoadTLS(files.CA, "", "")
	if err != nil {
		t.Fatalf("LoadTLS(CA only): %v", err)
	}
	otherCA := writeOtherCA(t)
	wrongCA, err := etcd.LoadTLS(otherCA, files.Cert, files.Key)
	if err != nil {
		t.Fatalf("LoadTLS(other CA): %v", err)
	}
	plain := strings.Replace(cluster.Endpoint(0), "https://", "http://", 1)
	for _, tc := range []struct {
		name     string
		endpoint string
		tls      *tls.Config
	}{
		{"no client certificate", cluster.Endpoint(0), noCert},
		{"unknown CA", cluster.Endpoint(0), wrongCA},
		{"plain HTTP", plain, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			s, err := etcd.Open(t.Context(), etcd.Config{Endpoints: []string{tc.endpoint}, TLS: tc.tls, DialTimeout: 2 * time.Second})
			if err == nil {
				s.Close()
				t.Fatal("Open succeeded")
			}
			t.Logf("Open after %v: %v", time.Since(start).Round(time.Millisecond), err)
			if !errors.Is(err, errclass.ErrInvalidParameter) || errors.Is(err, kvstore.ErrUnavailable) {
				t.Errorf("Open error = %v, want ErrInvalidParameter (a TLS configuration error), not ErrUnavailable", err)
			}
			if !strings.Contains(err.Error(), tc.endpoint) {
				t.Errorf("Open error %q does not name the endpoint %s", err, tc.endpoint)
			}
		})
	}
	if _, err := etcd.Open(ctx, etcd.Config{Endpoints: []string{plain}, TLS: cfg}); !errors.Is(err, errclass.ErrInvalidParameter) {
		t.Errorf("Open(http:// with TLS) error = %v, want ErrInvalidParameter", err)
	}

	// Bad files.
	if _, err := etcd.LoadTLS(files.CA+".missing", "", ""); !errors.Is(err, errclass.ErrInvalidParameter) {
		t.Errorf("LoadTLS(missing CA) error = %v, want ErrInvalidParameter", err)
	}
	if _, err := etcd.LoadTLS(files.CA, files.Cert, ""); !errors.Is(err, errclass.ErrInvalidParameter) {
		t.Errorf("LoadTLS(cert without key) error = %v, want ErrInvalidParameter", err)
	}
	if _, err := etcd.LoadTLS(files.Key, "", ""); !errors.Is(err, errclass.ErrInvalidParameter) {
		t.Errorf("LoadTLS(a key as CA) error = %v, want ErrInvalidParameter", err)
	}
}

// mustPut writes key and returns its revision.
func mustPut(t testing.TB, s kvstore.Store, key, value string) uint64 {
	t.Helper()
	rev, err := s.Put(t.Context(), key, []byte(value))
	if err != nil {
		t.Fatalf("Put(%s): %v", key, err)
	}
	return rev
}

// mustGet reads key, which must exist.
func mustGet(t testing.TB, s kvstore.Store, key string) kvstore.KVPair {
	t.Helper()
	p, err := s.Get(t.Context(), key)
	if err != nil {
		t.Fatalf("Get(%s): %v", key, err)
	}
	return p
}

// eventTimeout bounds each wait for a watch event.
const eventTimeout = 10 * time.Second

// recv returns the next event of ch within eventTimeout.
func recv(t testing.TB, ch <-chan kvstore.Event) kvstore.Event {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatal("watch channel closed, want an event")
		}
		return ev
	case <-time.After(eventTimeout):
		t.Fatalf("no watch event within %v", eventTimeout)
	}
	panic("unreachable")
}

// expect receives the next event and checks it.
func expect(t testing.TB, ch <-chan kvstore.Event, typ kvstore.EventType, key, value string, rev uint64) {
	t.Helper()
	ev := recv(t, ch)
	if ev.Type != typ || ev.Pair.Key != key || string(ev.Pair.Value) != value || ev.Pair.Revision != rev {
		t.Fatalf("event = %v %s=%q @%d, want %v %s=%q @%d", ev.Type, ev.Pair.Key, ev.Pair.Value, ev.Pair.Revision, typ, key, value, rev)
	}
}

// expectQuiet fails if ch delivers an event within d.
func expectQuiet(t testing.TB, ch <-chan kvstore.Event, d time.Duration) {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if ok {
			t.Fatalf("unexpected event %v %s=%q @%d", ev.Type, ev.Pair.Key, ev.Pair.Value, ev.Pair.Revision)
		}
		t.Fatal("watch channel closed")
	case <-time.After(d):
	}
}

// logRecorder is a slog.Handler that keeps the messages of the records it gets.
type logRecorder struct {
	mu   sync.Mutex
	msgs []string
}

func (r *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *logRecorder) WithGroup(string) slog.Handler            { return r }
func (r *logRecorder) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs = append(r.msgs, rec.Level.String()+" "+rec.Message)
	return nil
}

// count returns how many messages contain s.
func (r *logRecorder) count(s string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, m := range r.msgs {
		if strings.Contains(m, s) {
			n++
		}
	}
	return n
}

// writeOtherCA writes the certificate of a CA that signed nothing the test uses.
func writeOtherCA(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "another CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "other-ca.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
