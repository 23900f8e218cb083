package consul_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/cnmkit/cnm/internal/storetest"
	"github.com/cnmkit/cnm/kvstore"
	"github.com/cnmkit/cnm/kvstore/consul"
	"github.com/cnmkit/cnm/kvstore/kvstoretest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// prefixes numbers the prefixes of the stores of one test binary.
var prefixes atomic.Int64

// open opens a store on agent with cfg (Address filled in, and a fresh Prefix unless set) and
// closes it at the end of the test.
func open(t testing.TB, agent *storetest.ConsulAgent, cfg consul.Config) *consul.Store {
	t.Helper()
	s := openNoClose(t, agent, cfg)
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

// openNoClose is open without the cleanup.
func openNoClose(t testing.TB, agent *storetest.ConsulAgent, cfg consul.Config) *consul.Store {
	t.Helper()
	cfg.Address = agent.Addr()
	if cfg.Prefix == "" {
		cfg.Prefix = fmt.Sprintf("cnm-test/p%d", prefixes.Add(1))
	}
	s, err := consul.Open(t.Context(), cfg)
	if err != nil {
		t.Fatalf("Open(%+v): %v", cfg, err)
	}
	return s
}

func TestContract(t *testing.T) {
	agent := storetest.StartConsul(t)
	var mu sync.Mutex
	cfgs := map[kvstore.Store]consul.Config{} // the config of each store, for its second handle
	kvstoretest.RunWith(t, func(t *testing.T) kvstore.Store {
		cfg := consul.Config{Prefix: fmt.Sprintf("cnm-test/p%d", prefixes.Add(1))}
		s := openNoClose(t, agent, cfg)
		mu.Lock()
		cfgs[s] = cfg
		mu.Unlock()
		return s
	}, kvstoretest.Options{
		Second: func(t *testing.T, s kvstore.Store) kvstore.Store {
			mu.Lock()
			cfg := cfgs[s]
			mu.Unlock()
			return openNoClose(t, agent, cfg)
		},
	})
}

// TestBackend runs the backend's own tests, beyond the contract, on one agent.
func TestBackend(t *testing.T) {
	agent := storetest.StartConsul(t)
	for name, fn := range map[string]func(*testing.T, *storetest.ConsulAgent){
		"WatchReplaysPutAndDelete": testWatchReplaysPutAndDelete,
		"SameValueNewRevision":     testSameValueNewRevision,
		"BatchErrors":              testBatchErrors,
		"LeaseMinimumTTL":          testLeaseMinimumTTL,
		"ReapTombstones":           testReapTombstones,
		"OddKeys":                  testOddKeys,
	} {
		t.Run(name, func(t *testing.T) { fn(t, agent) })
	}
}

// TestTLS runs a store against an agent that serves HTTPS and requires a client certificate,
// and checks that a client without the certificate, or without TLS, is refused.
func TestTLS(t *testing.T) {
	agent, files := storetest.StartConsulTLS(t)
	ca, err := os.ReadFile(files.CA)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		t.Fatalf("no certificate in %s", files.CA)
	}
	pair, err := tls.LoadX509KeyPair(files.Cert, files.Key)
	if err != nil {
		t.Fatal(err)
	}

	s := open(t, agent, consul.Config{TLS: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}}})
	ch, err := s.Watch(t.Context(), "tls/", 0)
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	rev := mustPut(t, s, "tls/a", "1")
	if got := mustGet(t, s, "tls/a"); string(got.Value) != "1" || got.Revision != rev {
		t.Errorf("Get over TLS = %+v, want value 1 revision %d", got, rev)
	}
	expectEvent(t, ch, kvstore.EventPut, "tls/a", "1", rev)

	for name, tc := range map[string]*tls.Config{
		"no client certificate": {RootCAs: pool},
		"unknown CA":            {Certificates: []tls.Certificate{pair}},
		"plain HTTP":            nil,
	} {
		t.Run(name, func(t *testing.T) {
			s, err := consul.Open(t.Context(), consul.Config{Address: agent.Addr(), TLS: tc})
			if err == nil {
				s.Close()
				t.Fatalf("Open succeeded")
			}
			t.Logf("Open: %v", err)
			if errors.Is(err, kvstore.ErrUnavailable) {
				t.Errorf("Open error = %v, want a configuration error, not ErrUnavailable", err)
			}
			if !strings.Contains(err.Error(), agent.Addr()) {
				t.Errorf("Open error %q does not name the agent", err)
			}
		})
	}
}

func TestOpenUnreachable(t *testing.T) {
	// Nothing listens on a port just closed: connection refused.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := ln.Addr().String()
	ln.Close()

	// A listener that accepts and never answers: the request times out.
	mute, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := mute.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	})
	t.Cleanup(func() {
		mute.Close()
		wg.Wait()
		for _, c := range conns {
			c.Close()
		}
	})

	for _, tt := range []struct {
		name, addr string
	}{
		{"refused", refused},
		{"no answer", mute.Addr().String()},
	} {
		t.Run(tt.name, func(t *testing.T) {
			const timeout = 500 * time.Millisecond
			start := time.Now()
			s, err := consul.Open(t.Context(), consul.Config{Address: tt.addr, RequestTimeout: timeout})
			elapsed := time.Since(start)
			if err == nil {
				s.Close()
				t.Fatalf("Open(%s) succeeded", tt.addr)
			}
			if !errors.Is(err, kvstore.ErrUnavailable) || !errors.Is(err, errclass.ErrUnavailable) {
				t.Errorf("Open(%s) error = %v, want ErrUnavailable", tt.addr, err)
			}
			if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
				t.Errorf("Open(%s) error = %v wraps a context error, but the caller's ctx did not end", tt.addr, err)
			}
			if !strings.Contains(err.Error(), tt.addr) {
				t.Errorf("Open(%s) error %q does not name the address", tt.addr, err)
			}
			if elapsed > timeout+2*time.Second {
				t.Errorf("Open(%s) took %v with RequestTimeout %v", tt.addr, elapsed, timeout)
			}
		})
	}

	t.Run("canceled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		_, err := consul.Open(ctx, consul.Config{Address: mute.Addr().String()})
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Open(canceled ctx) error = %v, want context.Canceled", err)
		}
	})
}

func TestOpenBadConfig(t *testing.T) {
	for name, cfg := range map[string]consul.Config{
		"no address":         {},
		"no port":            {Address: "127.0.0.1"},
		"port zero":          {Address: "127.0.0.1:0"},
		"port not a number":  {Address: "127.0.0.1:http"},
		"no host":            {Address: ":8500"},
		"url":                {Address: "http://127.0.0.1:8500"},
		"prefix leading /":   {Address: "127.0.0.1:8500", Prefix: "/cnm"},
		"prefix trailing /":  {Address: "127.0.0.1:8500", Prefix: "cnm/"},
		"prefix empty seg":   {Address: "127.0.0.1:8500", Prefix: "a//b"},
		"prefix dot dot":     {Address: "127.0.0.1:8500", Prefix: "a/../b"},
		"prefix space":       {Address: "127.0.0.1:8500", Prefix: "a b"},
		"prefix query":       {Address: "127.0.0.1:8500", Prefix: "a?b"},
		"negative timeout":   {Address: "127.0.0.1:8500", RequestTimeout: -time.Second},
		"negative lock TTL":  {Address: "127.0.0.1:8500", LockTTL: -time.Second},
		"lock TTL too long":  {Address: "127.0.0.1:8500", LockTTL: 25 * time.Hour},
		"negative tombstone": {Address: "127.0.0.1:8500", TombstoneLimit: -1},
	} {
		t.Run(name, func(t *testing.T) {
			s, err := consul.Open(t.Context(), cfg)
			if err == nil {
				s.Close()
				t.Fatalf("Open(%+v) succeeded", cfg)
			}
			if !errors.Is(err, errclass.ErrInvalidParameter) {
				t.Errorf("Open(%+v) error = %v, want ErrInvalidParameter", cfg, err)
			}
		})
	}
}

// TestAgentRestart stops the agent under an open store and watch, checks that calls fail fast
// with ErrUnavailable, starts it again and checks that the watch resumes with exactly the
// changes made after the restart and that the data is intact.
func TestAgentRestart(t *testing.T) {
	agent := storetest.StartConsul(t)
	const timeout = time.Second
	logger := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))
	s := open(t, agent, consul.Config{RequestTimeout: timeout, Logger: logger})
	ctx := t.Context()

	rA := mustPut(t, s, "r/a", "1")
	mustPut(t, s, "r/b", "2")
	mustDelete(t, s, "r/b")
	lease, err := s.Grant(ctx, 10*time.Second)
	if err != nil {
		t.Fatalf("Grant: %v", err)
	}
	rLeased, err := lease.AtomicPut(ctx, "h/leased", []byte("l"), 0)
	if err != nil {
		t.Fatalf("Lease.AtomicPut: %v", err)
	}
	ch, err := s.Watch(ctx, "r/", 0)
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	rC := mustPut(t, s, "r/c", "3")
	expectEvent(t, ch, kvstore.EventPut, "r/c", "3", rC)

	agent.Stop()
	calls := map[string]func() error{
		"Put": func() error { _, err := s.Put(ctx, "r/x", []byte("x")); return err },
		"Get": func() error { _, err := s.Get(ctx, "r/a"); return err },
		"List": func() error {
			_, err := s.List(ctx, "r/")
			return err
		},
		"Watch": func() error { _, err := s.Watch(ctx, "r/", 0); return err },
	}
	for name, call := range calls {
		start := time.Now()
		err := call()
		elapsed := time.Since(start)
		if !errors.Is(err, kvstore.ErrUnavailable) {
			t.Errorf("%s with the agent stopped: error = %v, want ErrUnavailable", name, err)
		} else if !strings.Contains(err.Error(), agent.Addr()) {
			t.Errorf("%s error %q does not name the agent %s", name, err, agent.Addr())
		}
		if elapsed > 3*time.Second {
			t.Errorf("%s with the agent stopped took %v, want < 3s (RequestTimeout %v)", name, elapsed, timeout)
		}
	}

	agent.Start()
	// The data survived the restart, and so did the lease, whose renewals failed for less
	// than its TTL.
	if got := mustGet(t, s, "r/a"); string(got.Value) != "1" || got.Revision != rA {
		t.Errorf("Get(r/a) after restart = %+v, want value 1 revision %d", got, rA)
	}
	if got := mustGet(t, s, "h/leased"); got.Revision != rLeased {
		t.Errorf("Get(h/leased) after restart = %+v, want revision %d", got, rLeased)
	}
	select {
	case <-lease.Done():
		t.Errorf("lease ended across a restart shorter than its TTL")
	default:
	}
	// The watch resumes with exactly what is written after the restart.
	r1 := mustPut(t, s, "r/d", "4")
	r2 := mustPut(t, s, "r/a", "5")
	if err := s.Delete(ctx, "r/c"); err != nil {
		t.Fatalf("Delete(r/c): %v", err)
	}
	r4 := mustPut(t, s, "r/end", "6")
	const resume = 15 * time.Second // the watch's backoff reaches 5s while the agent is down
	expectEventWithin(t, ch, resume, kvstore.EventPut, "r/d", "4", r1)
	expectEventWithin(t, ch, resume, kvstore.EventPut, "r/a", "5", r2)
	del := recvWithin(t, ch, resume)
	if del.Type != kvstore.EventDelete || del.Pair.Key != "r/c" || del.Pair.Revision <= r2 || del.Pair.Revision >= r4 {
		t.Errorf("event = %v, want delete of r/c between revisions %d and %d", del, r2, r4)
	}
	expectEventWithin(t, ch, resume, kvstore.EventPut, "r/end", "6", r4)
	select {
	case ev := <-ch:
		t.Errorf("unexpected event after the last write: %v", ev)
	case <-time.After(200 * time.Millisecond):
	}

	got, err := s.List(ctx, "r/")
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	want := []kvstore.KVPair{{Key: "r/a", Value: []byte("5"), Revision: r2}, {Key: "r/d", Value: []byte("4"), Revision: r1}, {Key: "r/end", Value: []byte("6"), Revision: r4}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("List after restart = %v, want %v", got, want)
	}
	if err := lease.Revoke(ctx); err != nil {
		t.Errorf("Revoke after restart: %v", err)
	}
	if _, err := s.Get(ctx, "h/leased"); !errors.Is(err, kvstore.ErrKeyNotFound) {
		t.Errorf("Get(h/leased) after Revoke: error = %v, want ErrKeyNotFound", err)
	}
}

// testWatchReplaysPutAndDelete checks the tombstone's record of the put before a delete: a
// watch that resumes from before a put and its delete sees both.
func testWatchReplaysPutAndDelete(t *testing.T, agent *storetest.ConsulAgent) {
	s := open(t, agent, consul.Config{})
	ctx := t.Context()
	r0 := mustPut(t, s, "x/start", "0")
	r1 := mustPut(t, s, "x/a", "1")
	mustDelete(t, s, "x/a")
	r3 := mustPut(t, s, "x/a", "again")
	r4 := mustPut(t, s, "x/b", "2")
	mustDelete(t, s, "x/b")

	ch, err := s.Watch(ctx, "x/", r0)
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	expectEvent(t, ch, kvstore.EventPut, "x/a", "1", r1)
	if ev := recv(t, ch); ev.Type != kvstore.EventDelete || ev.Pair.Key != "x/a" || ev.Pair.Revision <= r1 || ev.Pair.Revision >= r3 {
		t.Errorf("event = %v, want delete of x/a between %d and %d", ev, r1, r3)
	}
	expectEvent(t, ch, kvstore.EventPut, "x/a", "again", r3)
	expectEvent(t, ch, kvstore.EventPut, "x/b", "2", r4)
	if ev := recv(t, ch); ev.Type != kvstore.EventDelete || ev.Pair.Key != "x/b" || ev.Pair.Revision <= r4 {
		t.Errorf("event = %v, want delete of x/b after %d", ev, r4)
	}
}

// testSameValueNewRevision: Consul skips a write that changes nothing; the store's writes
// still get a new revision each, and watchers see them.
func testSameValueNewRevision(t *testing.T, agent *storetest.ConsulAgent) {
	s := open(t, agent, consul.Config{})
	ch, err := s.Watch(t.Context(), "", 0)
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	r1 := mustPut(t, s, "k", "same")
	r2 := mustPut(t, s, "k", "same")
	if r2 <= r1 {
		t.Errorf("second Put of the same value: revision %d, want above %d", r2, r1)
	}
	expectEvent(t, ch, kvstore.EventPut, "k", "same", r1)
	expectEvent(t, ch, kvstore.EventPut, "k", "same", r2)
}

func testBatchErrors(t *testing.T, agent *storetest.ConsulAgent) {
	s := open(t, agent, consul.Config{})
	ctx := t.Context()
	mustPut(t, s, "taken", "1")
	_, err := s.Batch(ctx, []kvstore.Op{{Key: "free", Value: []byte("1")}, {Key: "taken", Value: []byte("2"), Check: true}})
	if !errors.Is(err, kvstore.ErrKeyExists) || !strings.Contains(err.Error(), `op 1 "taken"`) {
		t.Errorf("Batch(create-only on existing key) error = %v, want ErrKeyExists naming op 1 \"taken\"", err)
	}
	for name, ops := range map[string][]kvstore.Op{
		"duplicate": {{Key: "a", Value: []byte("1")}, {Key: "a"}},
		"empty key": {{Key: "", Value: []byte("1")}},
		"too many":  manyDeletes(70),
	} {
		if _, err := s.Batch(ctx, ops); !errors.Is(err, errclass.ErrInvalidParameter) {
			t.Errorf("Batch(%s) error = %v, want ErrInvalidParameter", name, err)
		}
	}
	// Deletes of missing keys change nothing and return the current revision.
	r := mustPut(t, s, "last", "1")
	rev, err := s.Batch(ctx, []kvstore.Op{{Key: "missing"}})
	if err != nil || rev < r {
		t.Errorf("Batch(delete missing) = %d, %v; want at least %d, nil", rev, err, r)
	}
	if _, err := s.Put(ctx, "", []byte("x")); !errors.Is(err, errclass.ErrInvalidParameter) {
		t.Errorf("Put(empty key) error = %v, want ErrInvalidParameter", err)
	}
}

func manyDeletes(n int) []kvstore.Op {
	ops := make([]kvstore.Op, n)
	for i := range ops {
		ops[i] = kvstore.Op{Key: fmt.Sprintf("del/%d", i)}
	}
	return ops
}

// testLeaseMinimumTTL: Consul's minimum session TTL is 10s; Grant rounds up and says so.
func testLeaseMinimumTTL(t *testing.T, agent *storetest.ConsulAgent) {
	s := open(t, agent, consul.Config{})
	l, err := s.Grant(t.Context(), time.Second)
	if err != nil {
		t.Fatalf("Grant: %v", err)
	}
	defer l.Revoke(context.WithoutCancel(t.Context()))
	if l.TTL() != consul.MinLeaseTTL {
		t.Errorf("Lease.TTL() = %v, want %v", l.TTL(), consul.MinLeaseTTL)
	}
	if _, err := s.Grant(t.Context(), 0); !errors.Is(err, errclass.ErrInvalidParameter) {
		t.Errorf("Grant(0) error = %v, want ErrInvalidParameter", err)
	}
}

func mustPut(t *testing.T, s kvstore.Store, key, value string) uint64 {
	t.Helper()
	rev, err := s.Put(t.Context(), key, []byte(value))
	if err != nil {
		t.Fatalf("Put(%s): %v", key, err)
	}
	return rev
}

func mustDelete(t *testing.T, s kvstore.Store, key string) {
	t.Helper()
	if err := s.Delete(t.Context(), key); err != nil {
		t.Fatalf("Delete(%s): %v", key, err)
	}
}

func mustGet(t *testing.T, s kvstore.Store, key string) kvstore.KVPair {
	t.Helper()
	p, err := s.Get(t.Context(), key)
	if err != nil {
		t.Fatalf("Get(%s): %v", key, err)
	}
	return p
}

func recv(t *testing.T, ch <-chan kvstore.Event) kvstore.Event {
	t.Helper()
	return recvWithin(t, ch, 5*time.Second)
}

func recvWithin(t *testing.T, ch <-chan kvstore.Event, d time.Duration) kvstore.Event {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatalf("watch channel closed, want an event")
		}
		return ev
	case <-time.After(d):
		t.Fatalf("no watch event within %v", d)
	}
	panic("unreachable")
}

func expectEvent(t *testing.T, ch <-chan kvstore.Event, typ kvstore.EventType, key, value string, rev uint64) {
	t.Helper()
	expectEventWithin(t, ch, 5*time.Second, typ, key, value, rev)
}

func expectEventWithin(t *testing.T, ch <-chan kvstore.Event, d time.Duration, typ kvstore.EventType, key, value string, rev uint64) {
	t.Helper()
	got := recvWithin(t, ch, d)
	if got.Type != typ || got.Pair.Key != key || string(got.Pair.Value) != value || got.Pair.Revision != rev {
		t.Fatalf("event = %s %s=%q @%d, want %s %s=%q @%d", got.Type, got.Pair.Key, got.Pair.Value, got.Pair.Revision, typ, key, value, rev)
	}
}

// testReapTombstones: the oldest tombstones beyond the limit go; a replay from before them
// misses those deletes only.
func testReapTombstones(t *testing.T, agent *storetest.ConsulAgent) {
	s := open(t, agent, consul.Config{TombstoneLimit: 2})
	ctx := t.Context()
	r0 := mustPut(t, s, "keep", "1")
	for i := range 5 {
		k := fmt.Sprintf("t/%d", i)
		mustPut(t, s, k, "v")
		mustDelete(t, s, k)
	}
	n, err := consul.Reap(ctx, s)
	if err != nil || n != 3 {
		t.Fatalf("reap = %d, %v; want 3, nil", n, err)
	}
	ch, err := s.Watch(ctx, "t/", r0)
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	// The put before each kept tombstone is replayed from it, then the delete.
	for _, k := range []string{"t/3", "t/4"} {
		if ev := recv(t, ch); ev.Type != kvstore.EventPut || ev.Pair.Key != k || string(ev.Pair.Value) != "v" {
			t.Errorf("event = %v, want put of %s", ev, k)
		}
		if ev := recv(t, ch); ev.Type != kvstore.EventDelete || ev.Pair.Key != k {
			t.Errorf("event = %v, want delete of %s", ev, k)
		}
	}
	end := mustPut(t, s, "t/end", "1")
	expectEvent(t, ch, kvstore.EventPut, "t/end", "1", end)
	if n, err := consul.Reap(ctx, s); err != nil || n != 0 {
		t.Errorf("second reap = %d, %v; want 0, nil", n, err)
	}
}

// testOddKeys: keys are carried in transaction bodies, never in URL paths, so any non-empty
// key works, including ones an HTTP path would clean up or escape, and ones that look like the
// store's own subtrees.
func testOddKeys(t *testing.T, agent *storetest.ConsulAgent) {
	s := open(t, agent, consul.Config{})
	ctx := t.Context()
	keys := []string{"/lead", "a//b", "a/./b", "a/../b", "q?x=1#f", "pct%2F", "sp ace", "ünï", "trail/", "_kv/x", "_tomb/y", "_lock/z"}
	ch, err := s.Watch(ctx, "", 0)
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	var want []kvstore.KVPair
	for _, k := range keys {
		rev := mustPut(t, s, k, "v-"+k)
		want = append(want, kvstore.KVPair{Key: k, Value: []byte("v-" + k), Revision: rev})
		if got := mustGet(t, s, k); string(got.Value) != "v-"+k || got.Revision != rev {
			t.Errorf("Get(%q) = %+v, want value v-%s revision %d", k, got, k, rev)
		}
	}
	for _, p := range want {
		expectEvent(t, ch, kvstore.EventPut, p.Key, string(p.Value), p.Revision)
	}
	got, err := s.List(ctx, "")
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	slices.SortFunc(want, func(a, b kvstore.KVPair) int { return strings.Compare(a.Key, b.Key) })
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("List = %v\nwant %v", got, want)
	}
	for _, k := range keys {
		mustDelete(t, s, k)
		if ev := recv(t, ch); ev.Type != kvstore.EventDelete || ev.Pair.Key != k {
			t.Errorf("event = %v, want delete of %q", ev, k)
		}
		if _, err := s.Get(ctx, k); !errors.Is(err, kvstore.ErrKeyNotFound) {
			t.Errorf("Get(%q) after Delete: error = %v, want ErrKeyNotFound", k, err)
		}
	}
}
