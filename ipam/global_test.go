package ipam_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"pgregory.net/rapid"

	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/cnmkit/cnm/ipam"
	"github.com/cnmkit/cnm/ipam/ipamkv"
	"github.com/cnmkit/cnm/kvstore"
	"github.com/cnmkit/cnm/kvstore/boltdb"
)

func TestNewGlobalValidation(t *testing.T) {
	s := openBolt(t, true)
	for _, tc := range []struct {
		cfg   ipam.GlobalConfig
		field string
	}{
		{ipam.GlobalConfig{Prefix: "cnm/ipam/"}, "Prefix"},
		{ipam.GlobalConfig{MaxAttempts: -1}, "MaxAttempts"},
		{ipam.GlobalConfig{PoolsV4: []ipam.DefaultPool{{Base: pfx("10.0.0.0/8"), Size: 4}}}, "PoolsV4[0].Size"},
		{ipam.GlobalConfig{PoolsV6: []ipam.DefaultPool{{Base: pfx("10.0.0.0/8"), Size: 16}}}, "PoolsV6[0].Base"},
	} {
		_, err := ipamkv.NewGlobal(s, tc.cfg)
		wantInvalid(t, err, tc.field)
	}
	_, err := ipam.NewGlobal(nil, ipam.GlobalConfig{})
	wantInvalid(t, err, "store")
}

// allocated returns the addresses the store records as allocated in pool, read through a fresh
// Global: the ground truth, independent of any cache.
func allocated(t *testing.T, s *boltdb.Store, cfg ipam.GlobalConfig, id ipam.PoolID) int {
	t.Helper()
	_, n := usage(t, newGlobalOn(t, s, cfg), id)
	return n
}

// TestGlobalTwoHosts10k is the global-space test: two Globals on one shared bbolt store
// (fsync on), eight goroutines each, allocate 10,000 addresses of one pool concurrently. No
// address is handed out twice, and every count agrees.
func TestGlobalTwoHosts10k(t *testing.T) {
	ctx := t.Context()
	s := openBolt(t, false)
	counters := []*countingStore{{GlobalStore: ipamkv.Adapt(s)}, {GlobalStore: ipamkv.Adapt(s)}}
	var hosts []*ipam.Global
	for _, c := range counters {
		g, err := ipam.NewGlobal(c, ipam.GlobalConfig{})
		if err != nil {
			t.Fatal(err)
		}
		hosts = append(hosts, g)
	}
	p := reqPool(t, hosts[0], ipam.PoolRequest{Subnet: pfx("10.50.0.0/16")})
	const workers, total = 8, 10000
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		owner   = make(map[netip.Addr]int, total)
		perHost [2]int
		errs    []error
		left    atomic.Int64
	)
	left.Store(total)
	start := time.Now()
	for h, g := range hosts {
		for range workers {
			wg.Go(func() {
				for left.Add(-1) >= 0 {
					a, err := g.RequestAddress(ctx, p.ID, netip.Addr{})
					mu.Lock()
					if err == nil && !p.Subnet.Contains(a) {
						err = fmt.Errorf("%s is not in %s", a, p.Subnet)
					}
					if o, dup := owner[a]; err == nil && dup {
						err = fmt.Errorf("%s handed out twice: by host %d and host %d", a, o, h)
					}
					if err != nil {
						errs = append(errs, err)
						mu.Unlock()
						return
					}
					owner[a] = h
					perHost[h]++
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	if len(owner) != total {
		t.Fatalf("%d distinct addresses, want %d", len(owner), total)
	}
	for h, g := range hosts {
		if _, n := usage(t, g, p.ID); n != total {
			t.Errorf("host %d: Usage in use = %d, want %d", h, n, total)
		}
	}
	if n := allocated(t, s, ipam.GlobalConfig{}, p.ID); n != total {
		t.Errorf("store: %d allocated, want %d", n, total)
	}
	if perHost[0] == 0 || perHost[1] == 0 {
		t.Errorf("one host did all the work: %v", perHost)
	}
	t.Logf("allocate: %d addresses in %v (%.0f/s); host 0: %d, host 1: %d; %s",
		total, elapsed.Round(time.Millisecond), total/elapsed.Seconds(), perHost[0], perHost[1], countersString(counters))
	for _, c := range counters {
		c.reset()
	}
	start = time.Now()

	// Releasing them all, concurrently from both hosts and crosswise, leaves nothing.
	addrs := slices.Collect(func(yield func(netip.Addr) bool) {
		for a := range owner {
			if !yield(a) {
				return
			}
		}
	})
	var next atomic.Int64
	for h, g := range hosts {
		for range workers {
			wg.Go(func() {
				for {
					i := next.Add(1) - 1
					if i >= int64(len(addrs)) {
						return
					}
					if err := g.ReleaseAddress(ctx, p.ID, addrs[i]); err != nil {
						mu.Lock()
						errs = append(errs, fmt.Errorf("host %d: %w", h, err))
						mu.Unlock()
						return
					}
				}
			})
		}
	}
	wg.Wait()
	elapsed = time.Since(start)
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	t.Logf("release, crosswise: %d addresses in %v (%.0f/s); %s",
		total, elapsed.Round(time.Millisecond), total/elapsed.Seconds(), countersString(counters))
	if n := allocated(t, s, ipam.GlobalConfig{}, p.ID); n != 0 {
		t.Errorf("store: %d allocated after releasing all, want 0", n)
	}
	if keys := storeKeys(t, s, ipam.DefaultGlobalPrefix+"/chunks/"); len(keys) != 0 {
		t.Errorf("bitmap chunks left: %v", keys)
	}
}

// countingStore counts the writes to a GlobalStore and how many lost a compare-and-swap.
type countingStore struct {
	ipam.GlobalStore
	writes, lost atomic.Int64
}

func (c *countingStore) AtomicPut(ctx context.Context, key string, value []byte, prev uint64) (uint64, error) {
	rev, err := c.GlobalStore.AtomicPut(ctx, key, value, prev)
	c.count(err)
	return rev, err
}

func (c *countingStore) AtomicDelete(ctx context.Context, key string, prev uint64) error {
	err := c.GlobalStore.AtomicDelete(ctx, key, prev)
	c.count(err)
	return err
}

func (c *countingStore) count(err error) {
	c.writes.Add(1)
	if err != nil {
		c.lost.Add(1)
	}
}

func (c *countingStore) reset() { c.writes.Store(0); c.lost.Store(0) }

func countersString(cs []*countingStore) string {
	var b strings.Builder
	for i, c := range cs {
		fmt.Fprintf(&b, "host %d: %d writes, %d lost races; ", i, c.writes.Load(), c.lost.Load())
	}
	return strings.TrimSuffix(b.String(), "; ")
}

func storeKeys(t *testing.T, s kvstore.Store, prefix string) []string {
	t.Helper()
	pairs, err := s.List(t.Context(), prefix)
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, p := range pairs {
		keys = append(keys, p.Key)
	}
	return keys
}

// TestGlobalConcurrentPools has two Globals auto-pick and create explicit pools concurrently:
// no two pools overlap, and every one is in the index.
func TestGlobalConcurrentPools(t *testing.T) {
	ctx := t.Context()
	s := openBolt(t, false)
	cfg := ipam.GlobalConfig{PoolsV4: []ipam.DefaultPool{{Base: pfx("10.0.0.0/16"), Size: 24}}}
	hosts := []*ipam.Global{newGlobalOn(t, s, cfg), newGlobalOn(t, s, cfg)}
	const workers, each = 4, 10
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		pools []ipam.Pool
		errs  []error
	)
	for h, g := range hosts {
		for w := range workers {
			wg.Go(func() {
				for i := range each {
					req := ipam.PoolRequest{}
					if i%5 == 4 {
						// Explicit subnets that both hosts race for: one wins, one overlaps.
						req.Subnet = pfx(fmt.Sprintf("10.0.%d.0/24", 200+w*each+i))
					}
					p, err := g.RequestPool(ctx, req)
					mu.Lock()
					switch {
					case err == nil:
						pools = append(pools, p)
					case req.Subnet.IsValid() && errors.Is(err, ipam.ErrPoolOverlap):
						if oe, ok := errors.AsType[*ipam.OverlapError](err); !ok || oe.With != req.Subnet {
							errs = append(errs, fmt.Errorf("host %d: overlap error %v does not name %s", h, err, req.Subnet))
						}
					default:
						errs = append(errs, fmt.Errorf("host %d: %w", h, err))
					}
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	for i, p := range pools {
		for _, q := range pools[i+1:] {
			if p.Subnet.Overlaps(q.Subnet) {
				t.Errorf("pools %s and %s overlap", p.ID, q.ID)
			}
		}
	}
	if want := len(hosts) * workers * (each - each/5); len(pools) != want+workers*each/5 {
		t.Errorf("%d pools created, want %d auto-picked and %d explicit", len(pools), want, workers*each/5)
	}
	// A third Global sees them all: every one is in use.
	third := newGlobalOn(t, s, cfg)
	for _, p := range pools {
		if _, _, err := third.Usage(ctx, p.ID); err != nil {
			t.Errorf("Usage(%s) on a fresh Global: %v", p.ID, err)
		}
		if _, err := third.RequestPool(ctx, ipam.PoolRequest{Subnet: p.Subnet}); !errors.Is(err, ipam.ErrPoolOverlap) {
			t.Errorf("RequestPool(%s) again: %v, want overlap", p.Subnet, err)
		}
	}
}

// TestGlobalStaleCache checks that a Global whose cache is behind the store still answers
// right: it re-reads before it reports an address in use, a pool exhausted or an address free.
func TestGlobalStaleCache(t *testing.T) {
	ctx := t.Context()
	s := openBolt(t, false)
	a, b := newGlobalOn(t, s, ipam.GlobalConfig{}), newGlobalOn(t, s, ipam.GlobalConfig{})
	p := reqPool(t, a, ipam.PoolRequest{Subnet: pfx("10.0.0.0/29")}) // .1 to .6
	if got := drain(t, a, p.ID); len(got) != 6 {
		t.Fatalf("drained %v", got)
	}
	// b sees a's pool and addresses.
	if _, err := b.RequestAddress(ctx, p.ID, addr("10.0.0.3")); !errors.Is(err, ipam.ErrAddressInUse) {
		t.Errorf("b: static .3: %v, want in use", err)
	}
	// b frees two; a, whose cache says full, finds them.
	for _, x := range []string{"10.0.0.3", "10.0.0.5"} {
		if err := b.ReleaseAddress(ctx, p.ID, addr(x)); err != nil {
			t.Fatal(err)
		}
	}
	if x := reqAddr(t, a, p.ID, addr("10.0.0.3")); x != addr("10.0.0.3") {
		t.Errorf("a: static .3 = %s", x)
	}
	if x := reqAddr(t, a, p.ID, netip.Addr{}); x != addr("10.0.0.5") {
		t.Errorf("a: dynamic = %s, want .5", x)
	}
	// a releases what b thinks free (b's cache has .5 free): b releases it for real.
	if err := a.ReleaseAddress(ctx, p.ID, addr("10.0.0.6")); err != nil {
		t.Fatal(err)
	}
	reqAddr(t, b, p.ID, addr("10.0.0.6"))
	if err := b.ReleaseAddress(ctx, p.ID, addr("10.0.0.5")); err != nil {
		t.Fatal(err)
	}
	if _, n := usage(t, a, p.ID); n != 5 {
		t.Errorf("in use = %d, want 5", n)
	}
	// b's dynamic request finds the only free address, though its cache knows only .3 and .5.
	if x := reqAddr(t, b, p.ID, netip.Addr{}); x != addr("10.0.0.5") {
		t.Errorf("b: dynamic = %s, want .5", x)
	}
	_, err := b.RequestAddress(ctx, p.ID, netip.Addr{})
	if ee, ok := errors.AsType[*ipam.ExhaustedError](err); !ok || ee.InUse != 6 || ee.Size != 6 {
		t.Errorf("b: err = %v, want exhausted with 6 of 6 in use", err)
	}
}

// TestGlobalPoolReleasedElsewhere checks a Global that cached a pool another Global released,
// and one that another Global released and created again.
func TestGlobalPoolReleasedElsewhere(t *testing.T) {
	ctx := t.Context()
	s := openBolt(t, false)
	a, b := newGlobalOn(t, s, ipam.GlobalConfig{}), newGlobalOn(t, s, ipam.GlobalConfig{})
	p := reqPool(t, a, ipam.PoolRequest{Subnet: pfx("10.0.0.0/24")})
	reqAddr(t, a, p.ID, addr("10.0.0.9"))
	reqAddr(t, b, p.ID, addr("10.0.0.10"))
	if err := b.ReleasePool(ctx, p.ID); err != nil {
		t.Fatal(err)
	}
	if keys := storeKeys(t, s, ipam.DefaultGlobalPrefix+"/chunks/"); len(keys) != 0 {
		t.Errorf("chunks left after ReleasePool: %v", keys)
	}
	for _, x := range []netip.Addr{{}, addr("10.0.0.9"), addr("10.0.0.11")} {
		if _, err := a.RequestAddress(ctx, p.ID, x); !errors.Is(err, ipam.ErrUnknownPool) {
			t.Errorf("a: RequestAddress(%v) in a released pool: %v, want unknown pool", x, err)
		}
	}
	if keys := storeKeys(t, s, ipam.DefaultGlobalPrefix+"/chunks/"); len(keys) != 0 {
		t.Errorf("a wrote into the released pool: %v", keys)
	}
	if err := a.ReleaseAddress(ctx, p.ID, addr("10.0.0.9")); !errors.Is(err, ipam.ErrUnknownPool) {
		t.Errorf("a: release in a released pool: %v", err)
	}

	// Created again by b: a's old view of the pool must not leak into the new one.
	p = reqPool(t, a, ipam.PoolRequest{Subnet: pfx("10.0.0.0/24")})
	reqAddr(t, a, p.ID, addr("10.0.0.9"))
	if err := b.ReleasePool(ctx, p.ID); err != nil {
		t.Fatal(err)
	}
	reqPool(t, b, ipam.PoolRequest{Subnet: pfx("10.0.0.0/24")})
	if x := reqAddr(t, a, p.ID, addr("10.0.0.9")); x != addr("10.0.0.9") {
		t.Errorf("a: .9 in the new pool = %s", x)
	}
	if x := reqAddr(t, a, p.ID, netip.Addr{}); !p.Subnet.Contains(x) {
		t.Errorf("a: dynamic = %s", x)
	}
	if _, n := usage(t, b, p.ID); n != 2 {
		t.Errorf("b: in use = %d, want 2", n)
	}
	// The address a held in the old pool is not released from the new one by a stale release.
	if n := allocated(t, s, ipam.GlobalConfig{}, p.ID); n != 2 {
		t.Errorf("store: %d allocated, want 2", n)
	}
}

// TestGlobalRestart checks that the state survives closing and reopening the bbolt file.
func TestGlobalRestart(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "global.db")
	s, err := boltdb.Open(path, boltdb.Config{})
	if err != nil {
		t.Fatal(err)
	}
	g := newGlobalOn(t, s, ipam.GlobalConfig{})
	p := reqPool(t, g, ipam.PoolRequest{})
	q := reqPool(t, g, ipam.PoolRequest{V6: true})
	for range 5 {
		reqAddr(t, g, p.ID, netip.Addr{})
	}
	reqAddr(t, g, q.ID, addr("fd00::42"))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = boltdb.Open(path, boltdb.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	g = newGlobalOn(t, s, ipam.GlobalConfig{})
	if _, n := usage(t, g, p.ID); n != 5 {
		t.Errorf("in use after restart = %d, want 5", n)
	}
	if _, err := g.RequestAddress(ctx, q.ID, addr("fd00::42")); !errors.Is(err, ipam.ErrAddressInUse) {
		t.Errorf("fd00::42 after restart: %v, want in use", err)
	}
	if next := reqPool(t, g, ipam.PoolRequest{}); next.Subnet == p.Subnet {
		t.Errorf("auto-picked %s again", next.Subnet)
	}
	// A new Global starts its dynamic search at the start of the range: .6 is the first free.
	if x := reqAddr(t, g, p.ID, netip.Addr{}); x != p.Subnet.Addr().Next().Next().Next().Next().Next().Next() {
		t.Errorf("dynamic after restart = %s", x)
	}
	freed, err := g.Reconcile(ctx, p.ID, []netip.Addr{p.Subnet.Addr().Next()})
	if err != nil || len(freed) != 5 {
		t.Errorf("Reconcile = %v, %v; want 5 freed", freed, err)
	}
}

// faultStore wraps a GlobalStore and fails writes on demand.
type faultStore struct {
	ipam.GlobalStore
	mu       sync.Mutex
	failPuts int   // the next failPuts AtomicPuts fail with err
	err      error // the error they fail with
	applied  bool  // the failing puts are applied first: the answer is lost, not the write
	puts     int
}

func (f *faultStore) AtomicPut(ctx context.Context, key string, value []byte, prev uint64) (uint64, error) {
	f.mu.Lock()
	f.puts++
	if f.failPuts > 0 {
		f.failPuts--
		err, applied := f.err, f.applied
		f.mu.Unlock()
		if applied {
			if _, perr := f.GlobalStore.AtomicPut(ctx, key, value, prev); perr != nil {
				return 0, perr
			}
		}
		return 0, err
	}
	f.mu.Unlock()
	return f.GlobalStore.AtomicPut(ctx, key, value, prev)
}

func (f *faultStore) fail(n int, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failPuts, f.err, f.applied, f.puts = n, err, false, 0
}

// lose makes the next n AtomicPuts apply, then fail with err, as a write whose answer a
// restarting store lost.
func (f *faultStore) lose(n int, err error) {
	f.fail(n, err)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.applied = true
}

// TestGlobalStoreFaults checks the error paths: a store error is returned and drops the cache,
// and a compare-and-swap lost again and again gives up after MaxAttempts.
func TestGlobalStoreFaults(t *testing.T) {
	ctx := t.Context()
	s := openBolt(t, true)
	f := &faultStore{GlobalStore: ipamkv.Adapt(s)}
	g, err := ipam.NewGlobal(f, ipam.GlobalConfig{MaxAttempts: 5})
	if err != nil {
		t.Fatal(err)
	}
	p := reqPool(t, g, ipam.PoolRequest{Subnet: pfx("10.0.0.0/24")})
	reqAddr(t, g, p.ID, netip.Addr{})

	ioErr := errors.New("disk on fire")
	f.fail(1, ioErr)
	if _, err := g.RequestAddress(ctx, p.ID, netip.Addr{}); !errors.Is(err, ioErr) || !strings.Contains(err.Error(), string(p.ID)) {
		t.Errorf("RequestAddress with a failing store: %v", err)
	}
	f.fail(1, ioErr)
	if _, err := g.RequestPool(ctx, ipam.PoolRequest{}); !errors.Is(err, ioErr) {
		t.Errorf("RequestPool with a failing store: %v", err)
	}
	// Nothing was written, and the next call works from a fresh read.
	if x := reqAddr(t, g, p.ID, netip.Addr{}); x != addr("10.0.0.2") {
		t.Errorf("after the fault: %s, want 10.0.0.2", x)
	}

	conflict := fmt.Errorf("injected: %w", kvstore.ErrKeyModified)
	f.fail(100, conflict)
	_, err = g.RequestAddress(ctx, p.ID, netip.Addr{})
	if !errors.Is(err, errclass.ErrConflict) || !strings.Contains(err.Error(), "gave up after 5 attempts") {
		t.Errorf("RequestAddress losing every race: %v", err)
	}
	f.mu.Lock()
	if f.puts != 5 {
		t.Errorf("%d attempts, want 5", f.puts)
	}
	f.mu.Unlock()
	f.fail(100, conflict)
	if _, err := g.RequestPool(ctx, ipam.PoolRequest{}); !errors.Is(err, errclass.ErrConflict) {
		t.Errorf("RequestPool losing every race: %v", err)
	}
	f.fail(0, nil)
	if _, n := usage(t, g, p.ID); n != 2 {
		t.Errorf("in use = %d, want 2", n)
	}

	// ctx ending during the backoff stops the retries.
	f.fail(1000, conflict)
	cctx, cancel := context.WithTimeout(ctx, 5*time.Millisecond)
	defer cancel()
	g2, _ := ipam.NewGlobal(f, ipam.GlobalConfig{MaxAttempts: 1000})
	if _, err := g2.RequestAddress(cctx, p.ID, netip.Addr{}); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("RequestAddress with a deadline: %v", err)
	}
}

// TestPropertyGlobal runs random sequences on two Globals sharing one store against a model:
// no address is handed out twice, static requests, releases, Reconcile and Usage match the
// model exactly, whichever Global serves the call, also when one Global releases the pool
// and creates it again behind the other's back. The store runs without fsync: the subject is
// the logic, and each case uses a fresh key prefix.
func TestPropertyGlobal(t *testing.T) {
	s := openBolt(t, true)
	var run atomic.Int64
	rapid.Check(t, func(t *rapid.T) {
		cfg := ipam.GlobalConfig{Prefix: fmt.Sprintf("t/%d", run.Add(1))}
		hosts := [2]*ipam.Global{}
		for i := range hosts {
			g, err := ipamkv.NewGlobal(s, cfg)
			if err != nil {
				t.Fatal(err)
			}
			hosts[i] = g
		}
		ctx := context.Background()
		var subnet netip.Prefix
		if rapid.Bool().Draw(t, "v6") {
			subnet = drawSubPrefix(t, "subnet", pfx("fd00::/112"), 122, 128)
		} else {
			subnet = drawSubPrefix(t, "subnet", pfx("10.0.0.0/16"), 26, 32)
		}
		var rng netip.Prefix
		if rapid.Bool().Draw(t, "withRange") {
			rng = drawSubPrefix(t, "range", subnet, subnet.Bits(), subnet.Addr().BitLen())
		}
		pool, err := hosts[0].RequestPool(ctx, ipam.PoolRequest{Subnet: subnet, Range: rng})
		if err != nil {
			t.Fatal(err)
		}
		network, last := subnet.Addr(), lastAddr(subnet)
		reserved := func(a netip.Addr) bool { return a == network || (a.Is4() && a == last) }
		dynPrefix := subnet
		if pool.Range.IsValid() {
			dynPrefix = pool.Range
		}
		inDyn := map[netip.Addr]bool{}
		for _, a := range addrsOf(dynPrefix) {
			if !reserved(a) {
				inDyn[a] = true
			}
		}
		all := addrsOf(subnet)
		used := map[netip.Addr]bool{}
		host := func(t *rapid.T) *ipam.Global { return hosts[rapid.IntRange(0, 1).Draw(t, "host")] }
		dynUsed := func() int {
			n := 0
			for a := range used {
				if inDyn[a] {
					n++
				}
			}
			return n
		}

		t.Repeat(map[string]func(*rapid.T){
			"dynamic": func(t *rapid.T) {
				got, err := host(t).RequestAddress(ctx, pool.ID, netip.Addr{})
				if dynUsed() == len(inDyn) {
					ee, ok := errors.AsType[*ipam.ExhaustedError](err)
					if !ok || ee.Size != uint64(len(inDyn)) || ee.InUse != len(inDyn) || ee.Pool != pool.ID {
						t.Fatalf("RequestAddress = %v, %v; want exhausted, %d of %d", got, err, len(inDyn), len(inDyn))
					}
					return
				}
				if err != nil || !inDyn[got] || used[got] {
					t.Fatalf("RequestAddress = %v, %v; want a free dynamic address", got, err)
				}
				used[got] = true
			},
			"static": func(t *rapid.T) {
				a := rapid.SampledFrom(all).Draw(t, "addr")
				var want error
				switch {
				case reserved(a):
					want = ipam.ErrOutOfRange
				case used[a]:
					want = ipam.ErrAddressInUse
				}
				got, err := host(t).RequestAddress(ctx, pool.ID, a)
				if want != nil {
					if !errors.Is(err, want) {
						t.Fatalf("RequestAddress(%v) = %v, %v; want %v", a, got, err, want)
					}
					return
				}
				if err != nil || got != a {
					t.Fatalf("RequestAddress(%v) = %v, %v", a, got, err)
				}
				used[a] = true
			},
			"release": func(t *rapid.T) {
				a := rapid.SampledFrom(all).Draw(t, "addr")
				if err := host(t).ReleaseAddress(ctx, pool.ID, a); err != nil {
					t.Fatalf("ReleaseAddress(%v): %v", a, err)
				}
				delete(used, a)
			},
			"reconcile": func(t *rapid.T) {
				var live []netip.Addr
				for _, a := range all {
					if rapid.IntRange(0, 3).Draw(t, "live") > 0 {
						live = append(live, a)
					}
				}
				var want []netip.Addr
				for _, a := range all {
					if used[a] && !slices.Contains(live, a) {
						want = append(want, a)
						delete(used, a)
					}
				}
				freed, err := host(t).Reconcile(ctx, pool.ID, live)
				if err != nil || !slices.Equal(freed, want) {
					t.Fatalf("Reconcile = %v, %v; want %v", freed, err, want)
				}
			},
			"recreate": func(t *rapid.T) {
				if rapid.IntRange(0, 4).Draw(t, "rarely") > 0 {
					return
				}
				g := host(t)
				if err := g.ReleasePool(ctx, pool.ID); err != nil {
					t.Fatal(err)
				}
				if _, err := g.RequestPool(ctx, ipam.PoolRequest{Subnet: subnet, Range: rng}); err != nil {
					t.Fatal(err)
				}
				clear(used)
			},
			"": func(t *rapid.T) {
				for i, g := range hosts {
					if _, n, err := g.Usage(ctx, pool.ID); err != nil || n != len(used) {
						t.Fatalf("host %d: Usage = %d, %v; want %d", i, n, err, len(used))
					}
				}
			},
		})
	})
}

// TestGlobalAddresses checks that Addresses lists what every Global allocated, in order, read
// from the store.
func TestGlobalAddresses(t *testing.T) {
	ctx := t.Context()
	s := openBolt(t, false)
	a, b := newGlobalOn(t, s, ipam.GlobalConfig{}), newGlobalOn(t, s, ipam.GlobalConfig{})
	p := reqPool(t, a, ipam.PoolRequest{Subnet: pfx("10.1.0.0/16")})
	want := []netip.Addr{addr("10.1.0.9"), addr("10.1.16.2"), addr("10.1.200.7")} // three chunks
	reqAddr(t, b, p.ID, want[2])
	reqAddr(t, a, p.ID, want[0])
	reqAddr(t, b, p.ID, want[1])
	got, err := a.Addresses(ctx, p.ID)
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("Addresses = %v, %v; want %v", got, err, want)
	}
	if err := a.ReleaseAddress(ctx, p.ID, want[1]); err != nil {
		t.Fatal(err)
	}
	if got, err := b.Addresses(ctx, p.ID); err != nil || !slices.Equal(got, []netip.Addr{want[0], want[2]}) {
		t.Errorf("after a release: Addresses = %v, %v", got, err)
	}
	pools, err := b.Pools(ctx)
	if err != nil || len(pools) != 1 || pools[0].ID != p.ID || pools[0].Subnet != p.Subnet {
		t.Errorf("Pools = %v, %v; want [%v]", pools, err, p)
	}
	if _, err := a.Addresses(ctx, "global/10.9.0.0/16"); !errors.Is(err, ipam.ErrUnknownPool) {
		t.Errorf("Addresses(unknown pool) error = %v, want ErrUnknownPool", err)
	}
}
