package ipam_test

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"testing"

	"github.com/cnmkit/cnm/ipam"
	"github.com/cnmkit/cnm/ipam/ipamkv"
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
// addresses back with static requests, with no store write; another host can neither take nor
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
	if w := cs.writes.Load(); w != 0 {
		t.Fatalf("%d store writes to take back and allocate inside host-a's blocks, want 0", w)
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
