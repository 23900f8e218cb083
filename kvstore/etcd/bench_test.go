package etcd_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/cnmkit/cnm/internal/storetest"
	"github.com/cnmkit/cnm/kvstore/etcd"
)

// benchValue is about the size of a stored network or endpoint, as in the boltdb benchmarks.
var benchValue = make([]byte, 256)

// benchKeys is how many keys the writes cycle over.
const benchKeys = 1000

// latencies records the duration of each operation of a benchmark and reports ops/s and the
// median and 99th percentile latency.
type latencies struct {
	start time.Time
	d     []time.Duration
}

func (l *latencies) report(b *testing.B) {
	b.Helper()
	total := time.Since(l.start)
	if len(l.d) == 0 {
		return
	}
	slices.Sort(l.d)
	pct := func(p float64) float64 {
		return float64(l.d[int(p*float64(len(l.d)-1))].Microseconds()) / 1000
	}
	b.ReportMetric(float64(len(l.d))/total.Seconds(), "ops/s")
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
}

// BenchmarkPut is one Store.Put of a 256-byte value on a one-member etcd, over 1000 keys: one
// etcd write (a raft entry and a WAL fsync) and the store's prefixing and error mapping.
func BenchmarkPut(b *testing.B) {
	cluster := storetest.StartEtcd(b)
	s := openClosed(b, cluster.Endpoints(), etcd.Config{})
	ctx := b.Context()
	var lat latencies
	i := 0
	for b.Loop() {
		if i == 0 {
			lat.start = time.Now()
		}
		t0 := time.Now()
		if _, err := s.Put(ctx, fmt.Sprintf("cnm/v1/endpoints/%d", i%benchKeys), benchValue); err != nil {
			b.Fatal(err)
		}
		lat.d = append(lat.d, time.Since(t0))
		i++
	}
	lat.report(b)
}

// BenchmarkAtomicPut is one compare-and-swap Store.AtomicPut (an etcd transaction) of a
// 256-byte value, over 1000 keys created beforehand.
func BenchmarkAtomicPut(b *testing.B) {
	cluster := storetest.StartEtcd(b)
	s := openClosed(b, cluster.Endpoints(), etcd.Config{})
	ctx := b.Context()
	revs := make([]uint64, benchKeys)
	for i := range revs {
		rev, err := s.AtomicPut(ctx, fmt.Sprintf("cnm/v1/endpoints/%d", i), benchValue, 0)
		if err != nil {
			b.Fatal(err)
		}
		revs[i] = rev
	}
	var lat latencies
	i := 0
	for b.Loop() {
		if i == 0 {
			lat.start = time.Now()
		}
		k := i % benchKeys
		t0 := time.Now()
		rev, err := s.AtomicPut(ctx, fmt.Sprintf("cnm/v1/endpoints/%d", k), benchValue, revs[k])
		if err != nil {
			b.Fatal(err)
		}
		lat.d = append(lat.d, time.Since(t0))
		revs[k] = rev
		i++
	}
	lat.report(b)
}

// BenchmarkBaselineRawPut is the raw etcd client's Put of the same value over the same keys
// (with the prefix the store would add), on a one-member etcd started the same way: the cost
// under BenchmarkPut.
func BenchmarkBaselineRawPut(b *testing.B) {
	cluster := storetest.StartEtcd(b)
	cli := rawClient(b, cluster.Endpoints())
	ctx := b.Context()
	prefix := uniquePrefix(b)
	value := string(benchValue)
	var lat latencies
	i := 0
	for b.Loop() {
		if i == 0 {
			lat.start = time.Now()
		}
		t0 := time.Now()
		if _, err := cli.Put(ctx, fmt.Sprintf("%scnm/v1/endpoints/%d", prefix, i%benchKeys), value); err != nil {
			b.Fatal(err)
		}
		lat.d = append(lat.d, time.Since(t0))
		i++
	}
	lat.report(b)
}
