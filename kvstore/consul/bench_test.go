package consul_test

import (
	"fmt"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/cnmkit/cnm/internal/storetest"
	"github.com/cnmkit/cnm/kvstore/consul"
)

// benchValue is about the size of a stored network or endpoint.
var benchValue = make([]byte, 256)

// latencies records the duration of each operation of a benchmark and reports ops/s, p50
// and p99 (in µs) at the end.
type latencies struct {
	b     *testing.B
	start time.Time
	d     []time.Duration
}

func newLatencies(b *testing.B) *latencies {
	return &latencies{b: b, start: time.Now()}
}

// time runs op and records how long it took.
func (l *latencies) time(op func() error) {
	t0 := time.Now()
	if err := op(); err != nil {
		l.b.Fatal(err)
	}
	l.d = append(l.d, time.Since(t0))
}

func (l *latencies) report() {
	if len(l.d) == 0 {
		return
	}
	elapsed := time.Since(l.start)
	slices.Sort(l.d)
	pct := func(p float64) float64 {
		return float64(l.d[min(len(l.d)-1, int(p*float64(len(l.d))))].Microseconds())
	}
	l.b.ReportMetric(float64(len(l.d))/elapsed.Seconds(), "ops/s")
	l.b.ReportMetric(pct(0.50), "p50-µs")
	l.b.ReportMetric(pct(0.99), "p99-µs")
}

// BenchmarkConsul runs the write benchmarks on one agent, so that the store's figures and
// the raw client's baseline come from the same server and data directory:
//
//   - Put: one Put, one write transaction (/v1/txn with a "set"), one raft commit;
//   - AtomicPut: one compare-and-swap update of a key whose revision the caller knows (a
//     "cas"), or its creation (index 0) the first time;
//   - BaselineRawPut: the raw Consul client's KV Put (PUT /v1/kv/<key>) of the same value
//     size, what Put costs without the store;
//   - PutVsRaw: a Put and a raw Put in turn, for a ratio of medians that load on the machine
//     does not skew.
//
// The first three report ops/s and the p50 and p99 latency of one call in µs.
func BenchmarkConsul(b *testing.B) {
	agent := storetest.StartConsul(b)
	// A fresh server is busy for a while after its election (its first raft writes,
	// anti-entropy): warm it up, so that the first sub-benchmark is not the one to pay.
	s := open(b, agent, consul.Config{})
	for i := range 500 {
		if _, err := s.Put(b.Context(), fmt.Sprintf("warmup/%d", i%100), benchValue); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("Put", func(b *testing.B) { benchPut(b, agent) })
	b.Run("AtomicPut", func(b *testing.B) { benchAtomicPut(b, agent) })
	b.Run("BaselineRawPut", func(b *testing.B) { benchBaselineRawPut(b, agent) })
	b.Run("PutVsRaw", func(b *testing.B) { benchPutVsRaw(b, agent) })
}

func benchPut(b *testing.B, agent *storetest.ConsulAgent) {
	s := open(b, agent, consul.Config{})
	ctx := b.Context()
	lat := newLatencies(b)
	i := 0
	for b.Loop() {
		key := fmt.Sprintf("cnm/v1/endpoints/%d", i%1000)
		lat.time(func() error { _, err := s.Put(ctx, key, benchValue); return err })
		i++
	}
	lat.report()
}

func benchAtomicPut(b *testing.B, agent *storetest.ConsulAgent) {
	s := open(b, agent, consul.Config{})
	ctx := b.Context()
	revs := make([]uint64, 1000) // 0: not created yet, so the first AtomicPut creates
	lat := newLatencies(b)
	i := 0
	for b.Loop() {
		n := i % len(revs)
		key := fmt.Sprintf("cnm/v1/endpoints/%d", n)
		lat.time(func() error {
			rev, err := s.AtomicPut(ctx, key, benchValue, revs[n])
			revs[n] = rev
			return err
		})
		i++
	}
	lat.report()
}

// rawKV returns the KV API of a raw Consul client of agent.
func rawKV(b *testing.B, agent *storetest.ConsulAgent) *api.KV {
	transport := &http.Transport{MaxIdleConnsPerHost: 32}
	b.Cleanup(transport.CloseIdleConnections)
	client, err := api.NewClient(&api.Config{Address: agent.Addr(), HttpClient: &http.Client{Transport: transport}})
	if err != nil {
		b.Fatal(err)
	}
	return client.KV()
}

// benchPutVsRaw alternates a store Put and a raw client Put in one loop, so that both see the
// same load on the machine, and reports the median of each and their ratio.
func benchPutVsRaw(b *testing.B, agent *storetest.ConsulAgent) {
	s := open(b, agent, consul.Config{})
	kv := rawKV(b, agent)
	ctx := b.Context()
	wopts := (&api.WriteOptions{}).WithContext(ctx)
	var put, raw []time.Duration
	i := 0
	for b.Loop() {
		key := fmt.Sprintf("cnm/v1/endpoints/%d", i%1000)
		t0 := time.Now()
		if _, err := s.Put(ctx, key, benchValue); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if _, err := kv.Put(&api.KVPair{Key: "raw/" + key, Value: benchValue, Flags: uint64(i)}, wopts); err != nil {
			b.Fatal(err)
		}
		put, raw = append(put, t1.Sub(t0)), append(raw, time.Since(t1))
		i++
	}
	slices.Sort(put)
	slices.Sort(raw)
	p50 := func(d []time.Duration) float64 { return float64(d[len(d)/2].Microseconds()) }
	b.ReportMetric(p50(put), "put-p50-µs")
	b.ReportMetric(p50(raw), "raw-p50-µs")
	b.ReportMetric(p50(put)/p50(raw), "put/raw-p50")
}

// benchBaselineRawPut writes with new Flags each time, as the store does, so that Consul
// applies every write.
func benchBaselineRawPut(b *testing.B, agent *storetest.ConsulAgent) {
	kv := rawKV(b, agent)
	wopts := (&api.WriteOptions{}).WithContext(b.Context())
	lat := newLatencies(b)
	i := 0
	for b.Loop() {
		p := &api.KVPair{Key: fmt.Sprintf("raw/cnm/v1/endpoints/%d", i%1000), Value: benchValue, Flags: uint64(i)}
		lat.time(func() error { _, err := kv.Put(p, wopts); return err })
		i++
	}
	lat.report()
}
