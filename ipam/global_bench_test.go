package ipam_test

import (
	"fmt"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cnmkit/cnm/ipam"
	"github.com/cnmkit/cnm/ipam/ipamkv"
	"github.com/cnmkit/cnm/kvstore/boltdb"
)

// chunkValueSize is the size of a stored bitmap chunk: a version byte and 4096 bits.
const chunkValueSize = 1 + 4096/8

// benchGlobal returns a Global on a bbolt store with fsync on, and a pool of subnet in it with
// held addresses allocated.
func benchGlobal(b *testing.B, subnet string, held int) (*boltdb.Store, *ipam.Global, ipam.Pool) {
	b.Helper()
	s := openBolt(b, false)
	g, err := ipamkv.NewGlobal(s, ipam.GlobalConfig{})
	if err != nil {
		b.Fatal(err)
	}
	p := reqPool(b, g, ipam.PoolRequest{Subnet: pfx(subnet)})
	for range held {
		reqAddr(b, g, p.ID, netip.Addr{})
	}
	return s, g, p
}

// BenchmarkGlobalVsRawAtomicPut is the cost of a Global against the floor its store sets, in
// one run on one bbolt file with fsync on. Each iteration does, timed separately:
//
//   - raw: one kvstore AtomicPut of a value the size of a bitmap chunk (513 bytes) over its
//     current revision: one bbolt commit, what any CAS-based allocation must pay;
//   - request: Global.RequestAddress of the next dynamic address in a /16 holding 1,000;
//   - release: Global.ReleaseAddress of it.
//
// It reports each in ns and the ratios request/raw and (request+release)/(2 raw).
func BenchmarkGlobalVsRawAtomicPut(b *testing.B) {
	for _, subnet := range []string{"10.0.0.0/16", "10.0.0.0/8"} {
		b.Run(subnet, func(b *testing.B) {
			ctx := b.Context()
			s, g, p := benchGlobal(b, subnet, 1000)
			value := make([]byte, chunkValueSize)
			rev, err := s.AtomicPut(ctx, "bench/raw", value, 0)
			if err != nil {
				b.Fatal(err)
			}
			var raw, req, rel time.Duration
			n := 0
			b.ReportAllocs()
			for b.Loop() {
				t0 := time.Now()
				value[1]++
				if rev, err = s.AtomicPut(ctx, "bench/raw", value, rev); err != nil {
					b.Fatal(err)
				}
				t1 := time.Now()
				a, err := g.RequestAddress(ctx, p.ID, netip.Addr{})
				if err != nil {
					b.Fatal(err)
				}
				t2 := time.Now()
				if err := g.ReleaseAddress(ctx, p.ID, a); err != nil {
					b.Fatal(err)
				}
				t3 := time.Now()
				raw, req, rel = raw+t1.Sub(t0), req+t2.Sub(t1), rel+t3.Sub(t2)
				n++
			}
			per := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / float64(n) }
			b.ReportMetric(per(raw), "raw-ns")
			b.ReportMetric(per(req), "request-ns")
			b.ReportMetric(per(rel), "release-ns")
			b.ReportMetric(float64(req)/float64(raw), "request/raw")
			b.ReportMetric(float64(req+rel)/float64(2*raw), "reqrel/2raw")
		})
	}
}

// BenchmarkGlobalRoundTrip is a request and a release of one dynamic address in a /16 of a
// Global on bbolt with fsync on: two commits.
func BenchmarkGlobalRoundTrip(b *testing.B) {
	ctx := b.Context()
	_, g, p := benchGlobal(b, "10.0.0.0/16", 1000)
	b.ReportAllocs()
	for b.Loop() {
		a, err := g.RequestAddress(ctx, p.ID, netip.Addr{})
		if err != nil {
			b.Fatal(err)
		}
		if err := g.ReleaseAddress(ctx, p.ID, a); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkGlobalRequestParallel has goroutines on two Globals sharing one store (fsync on),
// half on each, request addresses of one /8: the throughput of the global space, bound by one
// bbolt commit per address. It reports the compare-and-swaps lost to the other Global.
func BenchmarkGlobalRequestParallel(b *testing.B) {
	s := openBolt(b, false)
	counters := []*countingStore{{GlobalStore: ipamkv.Adapt(s)}, {GlobalStore: ipamkv.Adapt(s)}}
	var hosts []*ipam.Global
	for _, c := range counters {
		g, err := ipam.NewGlobal(c, ipam.GlobalConfig{})
		if err != nil {
			b.Fatal(err)
		}
		hosts = append(hosts, g)
	}
	p := reqPool(b, hosts[0], ipam.PoolRequest{Subnet: pfx("10.0.0.0/8")})
	var next atomic.Int64
	b.SetParallelism(4) // 4 goroutines per CPU
	b.RunParallel(func(pb *testing.PB) {
		ctx := b.Context()
		g := hosts[next.Add(1)%2]
		for pb.Next() {
			if _, err := g.RequestAddress(ctx, p.ID, netip.Addr{}); err != nil {
				b.Error(err)
				return
			}
		}
	})
	var writes, lost int64
	for _, c := range counters {
		writes += c.writes.Load()
		lost += c.lost.Load()
	}
	b.ReportMetric(float64(lost)/float64(max(writes, 1)), "lost/write")
}

// BenchmarkGlobalPoolPickWith1000Pools requests and releases an auto-picked pool while 1,000
// pools are held: the index holds 1,001 pools, read, checked and rewritten (one commit) by each
// request and each release.
func BenchmarkGlobalPoolPickWith1000Pools(b *testing.B) {
	ctx := b.Context()
	s := openBolt(b, false)
	g, err := ipamkv.NewGlobal(s, ipam.GlobalConfig{})
	if err != nil {
		b.Fatal(err)
	}
	for range 1000 {
		reqPool(b, g, ipam.PoolRequest{})
	}
	b.ReportAllocs()
	for b.Loop() {
		p, err := g.RequestPool(ctx, ipam.PoolRequest{})
		if err != nil {
			b.Fatal(err)
		}
		if err := g.ReleasePool(ctx, p.ID); err != nil {
			b.Fatal(fmt.Errorf("release %s: %w", p.ID, err))
		}
	}
}
