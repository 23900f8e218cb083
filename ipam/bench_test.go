package ipam_test

import (
	"context"
	"net/netip"
	"runtime"
	"testing"

	"github.com/cnmkit/cnm/ipam"
)

// benchRequestRelease requests and releases one dynamic address in subnet while held addresses
// are allocated. Sequential allocation means the loop walks the whole free part of the pool and
// wraps past the held part again and again.
func benchRequestRelease(b *testing.B, subnet string, held int) {
	ctx := b.Context()
	d := newDefault(b, ipam.DefaultConfig{})
	p := mustPool(b, d, ipam.PoolRequest{Subnet: pfx(subnet)})
	for range held {
		mustAddr(b, d, p.ID, netip.Addr{})
	}
	b.ReportAllocs()
	for b.Loop() {
		a, err := d.RequestAddress(ctx, p.ID, netip.Addr{})
		if err != nil {
			b.Fatal(err)
		}
		if err := d.ReleaseAddress(ctx, p.ID, a); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRequestReleaseV4_16 holds half of a /16.
func BenchmarkRequestReleaseV4_16(b *testing.B) { benchRequestRelease(b, "10.0.0.0/16", 1<<15) }

// BenchmarkRequestReleaseV4_8 holds half of a /8.
func BenchmarkRequestReleaseV4_8(b *testing.B) { benchRequestRelease(b, "10.0.0.0/8", 1<<23) }

// BenchmarkRequestReleaseV6_64 holds 10,000 addresses of a /64.
func BenchmarkRequestReleaseV6_64(b *testing.B) { benchRequestRelease(b, "fd00::/64", 10000) }

// benchAlmostFull fills subnet, frees one address in the middle, then requests and releases
// dynamic addresses: each search wraps around the whole pool to find the only free address.
func benchAlmostFull(b *testing.B, subnet string) {
	ctx := b.Context()
	d := newDefault(b, ipam.DefaultConfig{})
	p := mustPool(b, d, ipam.PoolRequest{Subnet: pfx(subnet)})
	var mid netip.Addr
	for i := 0; ; i++ {
		a, err := d.RequestAddress(ctx, p.ID, netip.Addr{})
		if err != nil {
			break
		}
		if i == 1000 {
			mid = a
		}
	}
	if err := d.ReleaseAddress(ctx, p.ID, mid); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		a, err := d.RequestAddress(ctx, p.ID, netip.Addr{})
		if err != nil || a != mid {
			b.Fatalf("got %v, %v; want %v", a, err, mid)
		}
		if err := d.ReleaseAddress(ctx, p.ID, a); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRequestReleaseV4_16AlmostFull has one free address in a /16.
func BenchmarkRequestReleaseV4_16AlmostFull(b *testing.B) { benchAlmostFull(b, "10.0.0.0/16") }

// BenchmarkRequestReleaseV4_8AlmostFull has one free address in a /8.
func BenchmarkRequestReleaseV4_8AlmostFull(b *testing.B) { benchAlmostFull(b, "10.0.0.0/8") }

// BenchmarkRequestV4_16 fills a /16 with 10,000 addresses per round.
func BenchmarkRequestV4_16(b *testing.B) {
	ctx := b.Context()
	b.ReportAllocs()
	for b.Loop() {
		d := newDefault(b, ipam.DefaultConfig{})
		p := mustPool(b, d, ipam.PoolRequest{Subnet: pfx("10.0.0.0/16")})
		for range 10000 {
			if _, err := d.RequestAddress(ctx, p.ID, netip.Addr{}); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// autoPickWith requests and releases an auto-picked pool while the pools made by setup are held.
func autoPickWith(b *testing.B, setup func(d *ipam.Default)) {
	ctx := b.Context()
	d := newDefault(b, ipam.DefaultConfig{})
	setup(d)
	b.ReportAllocs()
	for b.Loop() {
		p, err := d.RequestPool(ctx, ipam.PoolRequest{})
		if err != nil {
			b.Fatal(err)
		}
		if err := d.ReleasePool(ctx, p.ID); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAutoPickWith1000Pools holds 1,000 auto-picked pools (all the /16s and /20s, then /24s
// of 10.0.0.0/8).
func BenchmarkAutoPickWith1000Pools(b *testing.B) {
	autoPickWith(b, func(d *ipam.Default) {
		for range 1000 {
			mustPool(b, d, ipam.PoolRequest{})
		}
	})
}

// BenchmarkAutoPickWith1000PoolsFragmented holds 1,000 /25s, one in each of the first 1,000 /24s
// of 10.0.0.0/8, after filling the 172 and 192.168 bases: the worst case, where each pool is a
// separate step of the pick.
func BenchmarkAutoPickWith1000PoolsFragmented(b *testing.B) {
	autoPickWith(b, func(d *ipam.Default) {
		for range 31 {
			mustPool(b, d, ipam.PoolRequest{})
		}
		for i := range 1000 {
			a := netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 128})
			mustPool(b, d, ipam.PoolRequest{Subnet: netip.PrefixFrom(a, 25)})
		}
	})
}

// BenchmarkFillV4_8 allocates every address of a /8 and reports the heap it takes.
func BenchmarkFillV4_8(b *testing.B) {
	ctx := b.Context()
	var heap uint64
	for b.Loop() {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		d := newDefault(b, ipam.DefaultConfig{})
		p := mustPool(b, d, ipam.PoolRequest{Subnet: pfx("10.0.0.0/8")})
		for {
			if _, err := d.RequestAddress(ctx, p.ID, netip.Addr{}); err != nil {
				break
			}
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		heap = after.HeapAlloc - before.HeapAlloc
		if _, n, _ := d.Usage(context.Background(), p.ID); n != 1<<24-2 {
			b.Fatalf("in use %d", n)
		}
		runtime.KeepAlive(d)
	}
	b.ReportMetric(float64(heap)/(1<<20), "MiB/pool")
}
