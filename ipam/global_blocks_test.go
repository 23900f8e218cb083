package ipam_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"pgregory.net/rapid"

	"github.com/cnmkit/cnm/ipam"
	"github.com/cnmkit/cnm/ipam/ipamkv"
	"github.com/cnmkit/cnm/kvstore"
)

// TestGlobalBlocksSuite runs the allocator suite on a Global with per-host blocks.
func TestGlobalBlocksSuite(t *testing.T) {
	runAllocatorSuite(t, ipam.GlobalSpace, func(t *testing.T, cfg ipam.DefaultConfig) fullAllocator {
		return newGlobalOn(t, openBolt(t, true), ipam.GlobalConfig{PoolsV4: cfg.PoolsV4, PoolsV6: cfg.PoolsV6, Host: "host-a"})
	})
}

// TestGlobalBlocksTwoHosts: two hosts with blocks allocate from one /16 at once, eight
// goroutines each: no address twice, every address inside a block of its own host, and far
// fewer store writes than addresses (one per block, and the races lost). After every address
// is released, no block and no bitmap chunk is left.
func TestGlobalBlocksTwoHosts(t *testing.T) {
	ctx := t.Context()
	s := openBolt(t, true)
	counters := []*countingStore{{GlobalStore: ipamkv.Adapt(s)}, {GlobalStore: ipamkv.Adapt(s)}}
	names := []string{"host-a", "host-b"}
	var hosts []*ipam.Global
	for i, c := range counters {
		g, err := ipam.NewGlobal(c, ipam.GlobalConfig{Host: names[i]})
		if err != nil {
			t.Fatal(err)
		}
		hosts = append(hosts, g)
	}
	p := reqPool(t, hosts[0], ipam.PoolRequest{Subnet: pfx("10.51.0.0/16")})
	reqAddr(t, hosts[0], p.ID, netip.MustParseAddr("10.51.0.1")) // a gateway, outside any block
	counters[0].reset()
	const workers, each = 8, 250
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		owner = map[netip.Addr]int{}
		errs  []error
	)
	for h, g := range hosts {
		for range workers {
			wg.Go(func() {
				for range each {
					a, err := g.RequestAddress(ctx, p.ID, netip.Addr{})
					mu.Lock()
					if err != nil {
						errs = append(errs, err)
					} else if o, dup := owner[a]; dup {
						errs = append(errs, errors.New(a.String()+" given to both hosts "+names[o]+" and "+names[h]))
					} else {
						owner[a] = h
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
	if len(owner) != 2*workers*each {
		t.Fatalf("%d addresses, want %d", len(owner), 2*workers*each)
	}
	blocks, err := newGlobalOn(t, s, ipam.GlobalConfig{}).Blocks(ctx, p.ID)
	if err != nil {
		t.Fatal(err)
	}
	for a, h := range owner {
		in := ""
		for _, b := range blocks {
			if b.Prefix.Contains(a) {
				in = b.Host
			}
		}
		if in != names[h] {
			t.Fatalf("%s of %s is in a block of %q", a, names[h], in)
		}
	}
	for i, c := range counters {
		if w := c.writes.Load(); w > int64(workers*each/64+c.lost.Load()+2) {
			t.Errorf("%s: %d store writes (%d lost races) for %d addresses, want about one per block of 64", names[i], w, c.lost.Load(), workers*each)
		}
	}
	t.Logf("%d blocks; %s", len(blocks), countersString(counters))
	// The gateway stays outside the blocks; Addresses of each host lists its own.
	for h, g := range hosts {
		got, err := g.Addresses(ctx, p.ID)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, a := range got {
			if a == netip.MustParseAddr("10.51.0.1") {
				continue
			}
			if owner[a] != h {
				t.Fatalf("%s lists %s, which is %s's", names[h], a, names[owner[a]])
			}
			n++
		}
		if n != workers*each {
			t.Errorf("%s lists %d addresses, want %d", names[h], n, workers*each)
		}
	}
	// Crosswise releases are no-ops: a block's addresses are its host's to release.
	for a, h := range owner {
		if err := hosts[1-h].ReleaseAddress(ctx, p.ID, a); err != nil {
			t.Fatal(err)
		}
		break
	}
	for a, h := range owner {
		if err := hosts[h].ReleaseAddress(ctx, p.ID, a); err != nil {
			t.Fatal(err)
		}
	}
	if blocks, err := newGlobalOn(t, s, ipam.GlobalConfig{}).Blocks(ctx, p.ID); err != nil || len(blocks) != 0 {
		t.Fatalf("blocks after every release: %v (%v), want none", blocks, err)
	}
	if got, err := newGlobalOn(t, s, ipam.GlobalConfig{}).Addresses(ctx, p.ID); err != nil || len(got) != 1 {
		t.Fatalf("addresses after every release: %v (%v), want the gateway only", got, err)
	}
}

// TestGlobalBlocksRestart: a restarted host adopts its blocks from the store and takes its
// addresses back with static requests, with no store write, and confirms the blocks with one
// before it gives out a new address from them; another host can neither take nor
// free an address of those blocks; a block given back (as for a host that died) is free again.
func TestGlobalBlocksRestart(t *testing.T) {
	ctx := t.Context()
	s := openBolt(t, true)
	a := newGlobalOn(t, s, ipam.GlobalConfig{Host: "host-a"})
	p := reqPool(t, a, ipam.PoolRequest{Subnet: pfx("10.52.0.0/24")})
	var mine []netip.Addr
	for range 6 {
		mine = append(mine, reqAddr(t, a, p.ID, netip.Addr{}))
	}
	blocks, err := a.Blocks(ctx, p.ID)
	if err != nil || len(blocks) != 2 || blocks[0].Prefix != pfx("10.52.0.0/30") || blocks[1].Prefix != pfx("10.52.0.4/30") {
		t.Fatalf("blocks of a /24 after 6 addresses = %v (%v), want 10.52.0.0/30 and .4/30 (blocks of 4)", blocks, err)
	}
	if mine[0] != netip.MustParseAddr("10.52.0.1") || mine[5] != netip.MustParseAddr("10.52.0.6") {
		t.Fatalf("addresses %v, want .1 to .6", mine)
	}

	cs := &countingStore{GlobalStore: ipamkv.Adapt(s)}
	a2, err := ipam.NewGlobal(cs, ipam.GlobalConfig{Host: "host-a"})
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range mine[:5] { // mine[5]'s endpoint went while host-a was down
		reqAddr(t, a2, p.ID, x)
	}
	if _, err := a2.RequestAddress(ctx, p.ID, mine[0]); !errors.Is(err, ipam.ErrAddressInUse) {
		t.Fatalf("a second request for %s: %v, want ErrAddressInUse", mine[0], err)
	}
	if next := reqAddr(t, a2, p.ID, netip.Addr{}); next != mine[5] {
		t.Fatalf("next dynamic address after the restart = %s, want %s (free in host-a's block)", next, mine[5])
	}
	// One write: the chunk rewritten as read, which confirms the adopted blocks (a read
	// can be stale) before the first address is given out from them.
	if w := cs.writes.Load(); w != 1 {
		t.Fatalf("%d store writes to take back and allocate inside host-a's blocks, want 1", w)
	}

	b := newGlobalOn(t, s, ipam.GlobalConfig{Host: "host-b"})
	if _, err := b.RequestAddress(ctx, p.ID, mine[1]); !errors.Is(err, ipam.ErrAddressInUse) {
		t.Fatalf("host-b's request for host-a's %s: %v, want ErrAddressInUse", mine[1], err)
	}
	if got := reqAddr(t, b, p.ID, netip.Addr{}); got != netip.MustParseAddr("10.52.0.8") {
		t.Fatalf("host-b's first address = %s, want 10.52.0.8 (its own block)", got)
	}
	if err := b.ReleaseAddress(ctx, p.ID, mine[1]); err != nil {
		t.Fatal(err)
	}
	if _, err := a2.RequestAddress(ctx, p.ID, mine[1]); !errors.Is(err, ipam.ErrAddressInUse) {
		t.Fatalf("host-a's %s after host-b released it: %v, want still host-a's", mine[1], err)
	}

	// host-a dies: its blocks are given back, and are free for host-b.
	sweeper := newGlobalOn(t, s, ipam.GlobalConfig{})
	for _, blk := range blocks {
		if ok, err := sweeper.ReleaseBlock(ctx, p.ID, blk.Prefix, "host-a"); err != nil || !ok {
			t.Fatalf("ReleaseBlock(%s): %v, %v", blk.Prefix, ok, err)
		}
	}
	if ok, err := sweeper.ReleaseBlock(ctx, p.ID, blocks[0].Prefix, "host-a"); err != nil || ok {
		t.Fatalf("ReleaseBlock again: %v, %v; want false, nil", ok, err)
	}
	if got := reqAddr(t, b, p.ID, mine[1]); got != mine[1] {
		t.Fatalf("host-b's static %s: %s", mine[1], got)
	}
	if left, err := sweeper.Blocks(ctx, p.ID); err != nil || len(left) != 1 || left[0].Host != "host-b" {
		t.Fatalf("blocks = %v (%v), want host-b's only", left, err)
	}
}

// TestGlobalBlocksSmallPool: a pool of fewer than 128 dynamic addresses has no blocks.
func TestGlobalBlocksSmallPool(t *testing.T) {
	ctx := context.Background()
	s := openBolt(t, true)
	a := newGlobalOn(t, s, ipam.GlobalConfig{Host: "host-a"})
	p := reqPool(t, a, ipam.PoolRequest{Subnet: pfx("10.53.0.0/25")})
	reqAddr(t, a, p.ID, netip.Addr{})
	if blocks, err := a.Blocks(ctx, p.ID); err != nil || len(blocks) != 0 {
		t.Fatalf("blocks of a /25 = %v (%v), want none", blocks, err)
	}
}

// TestGlobalBlocksStaleRelease: a host whose cache predates another host's block releases an
// address of that block (a reclaim): it re-reads the chunk and leaves the block alone, rather
// than clearing one of its bits.
func TestGlobalBlocksStaleRelease(t *testing.T) {
	ctx := t.Context()
	s := openBolt(t, true)
	a := newGlobalOn(t, s, ipam.GlobalConfig{Host: "host-a"})
	b := newGlobalOn(t, s, ipam.GlobalConfig{Host: "host-b"})
	p := reqPool(t, a, ipam.PoolRequest{Subnet: pfx("10.54.0.0/16")})
	first := reqAddr(t, b, p.ID, netip.Addr{}) // b caches the chunk before a's block
	x := reqAddr(t, a, p.ID, netip.Addr{})
	if err := b.ReleaseAddress(ctx, p.ID, x); err != nil {
		t.Fatal(err)
	}
	if _, err := a.RequestAddress(ctx, p.ID, x); !errors.Is(err, ipam.ErrAddressInUse) {
		t.Fatalf("host-a's %s after host-b released it: %v, want still in use", x, err)
	}
	blocks, err := newGlobalOn(t, s, ipam.GlobalConfig{}).Blocks(ctx, p.ID)
	if err != nil || len(blocks) != 2 {
		t.Fatalf("blocks = %v (%v), want host-b's (with %s) and host-a's (with %s)", blocks, err, first, x)
	}
}

// TestGlobalBlocksLooseReleased: a block left in the store with no address in use, because
// the store did not answer its release or its claim, is given back by ReleaseEmptyBlocks; a
// loose block that an address went to since is kept.
func TestGlobalBlocksLooseReleased(t *testing.T) {
	ctx := t.Context()
	s := openBolt(t, true)
	f := &faultStore{GlobalStore: ipamkv.Adapt(s)}
	a, err := ipam.NewGlobal(f, ipam.GlobalConfig{Host: "host-a"})
	if err != nil {
		t.Fatal(err)
	}
	reader := newGlobalOn(t, s, ipam.GlobalConfig{})
	p := reqPool(t, a, ipam.PoolRequest{Subnet: pfx("10.55.0.0/24")})
	gw := reqAddr(t, a, p.ID, netip.MustParseAddr("10.55.0.1")) // keeps the chunk: releases are puts
	blocks := func() []ipam.Block {
		t.Helper()
		b, err := reader.Blocks(ctx, p.ID)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	gone := errors.New("injected: store gone")
	sweep := func(what string) {
		t.Helper()
		if err := a.ReleaseEmptyBlocks(ctx); err != nil {
			t.Fatalf("ReleaseEmptyBlocks %s: %v", what, err)
		}
		if b := blocks(); len(b) != 0 {
			t.Errorf("blocks after ReleaseEmptyBlocks %s: %v, want none", what, b)
		}
		if got, err := reader.Addresses(ctx, p.ID); err != nil || !slices.Equal(got, []netip.Addr{gw}) {
			t.Errorf("addresses after ReleaseEmptyBlocks %s: %v (%v), want only %s", what, got, err, gw)
		}
	}

	// A release the store did not answer.
	x := reqAddr(t, a, p.ID, netip.Addr{})
	f.fail(1, gone)
	if err := a.ReleaseAddress(ctx, p.ID, x); !errors.Is(err, gone) || !strings.Contains(err.Error(), "empty block stays") {
		t.Fatalf("release with the store gone: %v", err)
	}
	if b := blocks(); len(b) != 1 || b[0].Host != "host-a" || !b[0].Prefix.Contains(x) {
		t.Fatalf("blocks after the failed release: %v, want host-a's with %s", b, x)
	}
	sweep("after a failed release")

	// A claim applied, its answer lost.
	f.lose(1, gone)
	if _, err := a.RequestAddress(ctx, p.ID, netip.Addr{}); !errors.Is(err, gone) {
		t.Fatalf("request with the claim's answer lost: %v", err)
	}
	if b := blocks(); len(b) != 1 || b[0].Host != "host-a" {
		t.Fatalf("blocks after the lost answer: %v, want host-a's", b)
	}
	sweep("after a claim's lost answer")

	// A claim that was not applied: nothing to give back, for as many calls as it takes to
	// forget it.
	f.fail(1, gone)
	if _, err := a.RequestAddress(ctx, p.ID, netip.Addr{}); !errors.Is(err, gone) {
		t.Fatalf("request with the store gone: %v", err)
	}
	for range 4 {
		sweep("after a failed claim")
	}

	// A loose block that an address went to since stays, until that address goes.
	f.lose(1, gone)
	if _, err := a.RequestAddress(ctx, p.ID, netip.Addr{}); !errors.Is(err, gone) {
		t.Fatalf("request with the claim's answer lost: %v", err)
	}
	y := reqAddr(t, a, p.ID, netip.Addr{})
	if err := a.ReleaseEmptyBlocks(ctx); err != nil {
		t.Fatal(err)
	}
	if b := blocks(); len(b) != 1 || !b[0].Prefix.Contains(y) {
		t.Fatalf("blocks with %s in use: %v, want its block", y, b)
	}
	if err := a.ReleaseAddress(ctx, p.ID, y); err != nil {
		t.Fatal(err)
	}
	sweep("after the last address of a used loose block went")
}

// TestGlobalBlocksSettle: after a restart, once the host's addresses are requested again,
// SettleBlocks marks the blocks none of them is in, and ReleaseEmptyBlocks gives those back.
func TestGlobalBlocksSettle(t *testing.T) {
	ctx := t.Context()
	s := openBolt(t, true)
	a := newGlobalOn(t, s, ipam.GlobalConfig{Host: "host-a"})
	p := reqPool(t, a, ipam.PoolRequest{Subnet: pfx("10.56.0.0/24")})
	var kept netip.Addr
	for i := range 6 { // two blocks of four, the first with the network's address left out
		x := reqAddr(t, a, p.ID, netip.Addr{})
		if i == 0 {
			kept = x
		}
	}
	again := newGlobalOn(t, s, ipam.GlobalConfig{Host: "host-a"}) // the restart
	if got := reqAddr(t, again, p.ID, kept); got != kept {
		t.Fatalf("static request of %s after the restart = %s", kept, got)
	}
	if err := again.SettleBlocks(ctx, p.ID); err != nil {
		t.Fatal(err)
	}
	if err := again.ReleaseEmptyBlocks(ctx); err != nil {
		t.Fatal(err)
	}
	blocks, err := newGlobalOn(t, s, ipam.GlobalConfig{}).Blocks(ctx, p.ID)
	if err != nil || len(blocks) != 1 || !blocks[0].Prefix.Contains(kept) {
		t.Fatalf("blocks after SettleBlocks and ReleaseEmptyBlocks: %v (%v), want only the one with %s", blocks, err, kept)
	}
	unknown := ipam.MakePoolID(ipam.GlobalSpace, pfx("10.57.0.0/24"))
	if err := again.SettleBlocks(ctx, unknown); !errors.Is(err, ipam.ErrUnknownPool) {
		t.Errorf("SettleBlocks of an unknown pool: %v, want ErrUnknownPool", err)
	}
}

// laggingStore wraps a GlobalStore whose reads can go back in time, as those of a Consul
// server that restarted and answers before it has replayed its log: after snapshot, the next
// reads that lag allows (Get and List) answer from the state at the snapshot, while writes,
// compare-and-swap included, act on the current state.
type laggingStore struct {
	ipam.GlobalStore
	mu    sync.Mutex
	old   map[string]ipam.StoreEntry // the state at the last snapshot
	stale int                        // reads left to answer from old
}

// snapshot records the current state, for the stale reads that lag allows later.
func (l *laggingStore) snapshot(t interface {
	Helper()
	Fatal(...any)
}) {
	t.Helper()
	entries, err := l.GlobalStore.List(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	old := map[string]ipam.StoreEntry{}
	for _, e := range entries {
		old[e.Key] = e
	}
	l.mu.Lock()
	l.old = old
	l.mu.Unlock()
}

// lag makes the next n reads answer from the state at the last snapshot.
func (l *laggingStore) lag(n int) {
	l.mu.Lock()
	l.stale = n
	l.mu.Unlock()
}

// staleRead reports whether this read answers from the snapshot, counting it.
func (l *laggingStore) staleRead() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stale == 0 {
		return false
	}
	l.stale--
	return true
}

func (l *laggingStore) Get(ctx context.Context, key string) ([]byte, uint64, error) {
	if !l.staleRead() {
		return l.GlobalStore.Get(ctx, key)
	}
	e, ok := l.old[key]
	if !ok {
		return nil, 0, fmt.Errorf("stale get %q: %w", key, kvstore.ErrKeyNotFound)
	}
	return e.Value, e.Revision, nil
}

func (l *laggingStore) List(ctx context.Context, prefix string) ([]ipam.StoreEntry, error) {
	if !l.staleRead() {
		return l.GlobalStore.List(ctx, prefix)
	}
	var out []ipam.StoreEntry
	for k, e := range l.old {
		if strings.HasPrefix(k, prefix) {
			out = append(out, e)
		}
	}
	slices.SortFunc(out, func(a, b ipam.StoreEntry) int { return strings.Compare(a.Key, b.Key) })
	return out, nil
}

// TestGlobalBlocksStaleReadKeepsAllocations: a read that goes back to before this host
// claimed its block (a restarted store that has not replayed its log) must not make the host
// forget which addresses of the block it gave out: when the block shows again, they are still
// taken.
func TestGlobalBlocksStaleReadKeepsAllocations(t *testing.T) {
	ctx := t.Context()
	l := &laggingStore{GlobalStore: ipamkv.Adapt(openBolt(t, true))}
	a, err := ipam.NewGlobal(l, ipam.GlobalConfig{Host: "host-a"})
	if err != nil {
		t.Fatal(err)
	}
	p := reqPool(t, a, ipam.PoolRequest{Subnet: pfx("10.55.0.0/16")})
	l.snapshot(t) // before any block
	given := map[netip.Addr]bool{}
	for range 3 {
		given[reqAddr(t, a, p.ID, netip.Addr{})] = true
	}
	// A listing (the sweep's, Usage's) answered from before the block, then the state as it is.
	l.lag(2) // the index, then the chunks
	if _, err := a.Addresses(ctx, p.ID); err != nil {
		t.Fatal(err)
	}
	for range 64 {
		x := reqAddr(t, a, p.ID, netip.Addr{})
		if given[x] {
			t.Fatalf("%s given twice by host-a after a stale read", x)
		}
		given[x] = true
	}
}

// TestGlobalBlocksStaleReadNoAdoption: a read that goes back to before this host gave its
// block back must not make it allocate from that block again, which another host has
// claimed since.
func TestGlobalBlocksStaleReadNoAdoption(t *testing.T) {
	ctx := t.Context()
	s := openBolt(t, true)
	l := &laggingStore{GlobalStore: ipamkv.Adapt(s)}
	a, err := ipam.NewGlobal(l, ipam.GlobalConfig{Host: "host-a"})
	if err != nil {
		t.Fatal(err)
	}
	b := newGlobalOn(t, s, ipam.GlobalConfig{Host: "host-b"})
	p := reqPool(t, a, ipam.PoolRequest{Subnet: pfx("10.56.0.0/16")})
	x := reqAddr(t, a, p.ID, netip.Addr{})
	l.snapshot(t) // host-a's block with x
	// The block goes back.
	if err := a.ReleaseAddress(ctx, p.ID, x); err != nil {
		t.Fatal(err)
	}
	if got := reqAddr(t, b, p.ID, netip.Addr{}); got != x {
		t.Fatalf("host-b's first address = %s, want %s (the block host-a gave back)", got, x)
	}
	l.lag(2) // the index, then the chunks
	if _, err := a.Addresses(ctx, p.ID); err != nil {
		t.Fatal(err)
	}
	for range 64 {
		if got := reqAddr(t, a, p.ID, netip.Addr{}); got == x {
			t.Fatalf("host-a gave %s, host-b's, after a stale read showed its old block", got)
		}
	}
}

// TestPropertyGlobalBlocksStaleReads runs random sequences on two hosts with blocks whose
// reads may go back to any earlier state (each host's store answers its next few reads from
// a snapshot it took at some point): whatever they read, no address is given to a host while
// either host holds it, and a restarted host takes its addresses back.
func TestPropertyGlobalBlocksStaleReads(t *testing.T) {
	s := openBolt(t, true)
	var run atomic.Int64
	rapid.Check(t, func(t *rapid.T) {
		ctx := context.Background()
		cfg := ipam.GlobalConfig{Prefix: fmt.Sprintf("t/%d", run.Add(1))}
		names := [2]string{"host-a", "host-b"}
		var (
			stores [2]*laggingStore
			hosts  [2]*ipam.Global
		)
		open := func(i int) {
			c := cfg
			c.Host = names[i]
			g, err := ipam.NewGlobal(stores[i], c)
			if err != nil {
				t.Fatal(err)
			}
			hosts[i] = g
		}
		for i := range hosts {
			stores[i] = &laggingStore{GlobalStore: ipamkv.Adapt(s)}
			open(i)
		}
		pool, err := hosts[0].RequestPool(ctx, ipam.PoolRequest{Subnet: pfx("10.60.0.0/24")})
		if err != nil {
			t.Fatal(err)
		}
		for i := range stores {
			stores[i].snapshot(t)
		}
		holder := map[netip.Addr]int{} // address -> host that holds it
		held := func(i int) []netip.Addr {
			var out []netip.Addr
			for a, h := range holder {
				if h == i {
					out = append(out, a)
				}
			}
			slices.SortFunc(out, netip.Addr.Compare)
			return out
		}
		host := func(t *rapid.T) int { return rapid.IntRange(0, 1).Draw(t, "host") }
		t.Repeat(map[string]func(*rapid.T){
			"dynamic": func(t *rapid.T) {
				i := host(t)
				got, err := hosts[i].RequestAddress(ctx, pool.ID, netip.Addr{})
				if err != nil {
					return // a stale read may make it give up; it must not hand out a held address
				}
				if h, ok := holder[got]; ok {
					t.Fatalf("%s given to %s, held by %s", got, names[i], names[h])
				}
				holder[got] = i
			},
			"release": func(t *rapid.T) {
				i := host(t)
				mine := held(i)
				if len(mine) == 0 {
					return
				}
				a := rapid.SampledFrom(mine).Draw(t, "addr")
				if err := hosts[i].ReleaseAddress(ctx, pool.ID, a); err != nil {
					t.Fatalf("%s: ReleaseAddress(%s): %v", names[i], a, err)
				}
				delete(holder, a)
			},
			"snapshot": func(t *rapid.T) {
				stores[host(t)].snapshot(t)
			},
			"lag": func(t *rapid.T) {
				stores[host(t)].lag(rapid.IntRange(1, 4).Draw(t, "reads"))
			},
			"read": func(t *rapid.T) {
				_, _ = hosts[host(t)].Addresses(ctx, pool.ID)
			},
			"reconcile": func(t *rapid.T) {
				i := host(t)
				_ = hosts[i].ReconcileBlocks(ctx, pool.ID, held(i))
			},
			"restart": func(t *rapid.T) {
				i := host(t)
				open(i)
				for _, a := range held(i) {
					if _, err := hosts[i].RequestAddress(ctx, pool.ID, a); err != nil {
						t.Fatalf("%s after a restart: RequestAddress(%s): %v", names[i], a, err)
					}
				}
			},
		})
	})
}

// TestGlobalBlocksSuspended: a host whose registration lapsed (SuspendBlocks) gives out no
// address from its blocks, which the others may give back and claim meanwhile; once
// reconciled and resumed, it allocates again only from a block still its.
func TestGlobalBlocksSuspended(t *testing.T) {
	ctx := t.Context()
	s := openBolt(t, true)
	cs := &countingStore{GlobalStore: ipamkv.Adapt(s)}
	a, err := ipam.NewGlobal(cs, ipam.GlobalConfig{Host: "host-a"})
	if err != nil {
		t.Fatal(err)
	}
	b := newGlobalOn(t, s, ipam.GlobalConfig{Host: "host-b"})
	p := reqPool(t, a, ipam.PoolRequest{Subnet: pfx("10.57.0.0/16")})
	x := reqAddr(t, a, p.ID, netip.Addr{}) // in host-a's first block
	blocks, err := a.Blocks(ctx, p.ID)
	if err != nil || len(blocks) != 1 {
		t.Fatalf("blocks = %v (%v), want one", blocks, err)
	}
	a.SuspendBlocks()
	cs.reset()
	y := reqAddr(t, a, p.ID, netip.Addr{})
	if blocks[0].Prefix.Contains(y) || cs.writes.Load() != 1 {
		t.Fatalf("suspended: %s with %d writes, want an address outside %s with one write", y, cs.writes.Load(), blocks[0].Prefix)
	}
	// The others reclaim x's endpoint and give the block back; host-b claims it.
	if ok, err := newGlobalOn(t, s, ipam.GlobalConfig{}).ReleaseBlock(ctx, p.ID, blocks[0].Prefix, "host-a"); err != nil || !ok {
		t.Fatalf("ReleaseBlock: %v, %v", ok, err)
	}
	if got := reqAddr(t, b, p.ID, netip.Addr{}); got != x {
		t.Fatalf("host-b's first address = %s, want %s", got, x)
	}
	if err := a.ReconcileBlocks(ctx, p.ID, nil); err != nil {
		t.Fatal(err)
	}
	a.ResumeBlocks()
	for range 64 {
		if got := reqAddr(t, a, p.ID, netip.Addr{}); blocks[0].Prefix.Contains(got) || got == y {
			t.Fatalf("host-a after resuming: %s, in host-b's block %s or given already", got, blocks[0].Prefix)
		}
	}
}
