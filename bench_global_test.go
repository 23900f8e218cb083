package cnm_test

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	consulapi "github.com/hashicorp/consul/api"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cnmkit/cnm/internal/nstest"
	"github.com/cnmkit/cnm/internal/storetest"
	"github.com/cnmkit/cnm/ipam"
	"github.com/cnmkit/cnm/ipam/ipamkv"
	"github.com/cnmkit/cnm/kvstore"
	"github.com/cnmkit/cnm/kvstore/consul"
	"github.com/cnmkit/cnm/kvstore/etcd"
	"github.com/cnmkit/cnm/network"
)

// latencies records the time of each operation and reports ops/s, p50 and p99.
type latencies []time.Duration

func (l *latencies) time(f func()) {
	start := time.Now()
	f()
	*l = append(*l, time.Since(start))
}

func (l latencies) report(b *testing.B) {
	if len(l) == 0 {
		return
	}
	s := slices.Clone(l)
	slices.Sort(s)
	var total time.Duration
	for _, d := range s {
		total += d
	}
	pct := func(p float64) float64 { return float64(s[min(len(s)-1, int(p*float64(len(s))))].Microseconds()) }
	b.ReportMetric(float64(len(s))/total.Seconds(), "ops/s")
	b.ReportMetric(pct(0.50), "p50-µs")
	b.ReportMetric(pct(0.99), "p99-µs")
}

// BenchmarkPrivilegedGlobal measures, on a real etcd and a real Consul agent (one each, data on
// the real disk), a global network create and a global address allocation (the IPAM alone, and
// a whole endpoint of a global network with its record), against a raw client put of a value of
// the same size on the same server, in the same run.
//
//	../shared/tools/nsrun -- env CNM_PRIVILEGED_TESTS=1 go test -run x -bench PrivilegedGlobal -benchtime 300x .
func BenchmarkPrivilegedGlobal(b *testing.B) {
	if !nstest.Enabled() {
		b.Skip("privileged benchmark: set CNM_PRIVILEGED_TESTS=1 and run as root")
	}
	type server struct {
		name string
		open func(b *testing.B, prefix string) kvstore.Store
		raw  func(b *testing.B) func(ctx context.Context, key string, value []byte) error
	}
	ec := storetest.StartEtcd(b)
	ca := storetest.StartConsul(b)
	servers := []server{
		{"etcd",
			func(b *testing.B, prefix string) kvstore.Store {
				s, err := etcd.Open(context.Background(), etcd.Config{Endpoints: ec.Endpoints(), Prefix: prefix})
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { s.Close() })
				return s
			},
			func(b *testing.B) func(ctx context.Context, key string, value []byte) error {
				cli, err := clientv3.New(clientv3.Config{Endpoints: ec.Endpoints(), DialTimeout: 5 * time.Second})
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { cli.Close() })
				return func(ctx context.Context, key string, value []byte) error {
					_, err := cli.Put(ctx, "raw/"+key, string(value))
					return err
				}
			}},
		{"consul",
			func(b *testing.B, prefix string) kvstore.Store {
				s, err := consul.Open(context.Background(), consul.Config{Address: ca.Addr(), Prefix: prefix})
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { s.Close() })
				return s
			},
			func(b *testing.B) func(ctx context.Context, key string, value []byte) error {
				cli, err := consulapi.NewClient(&consulapi.Config{Address: ca.Addr()})
				if err != nil {
					b.Fatal(err)
				}
				kv := cli.KV()
				return func(ctx context.Context, key string, value []byte) error {
					_, err := kv.Put(&consulapi.KVPair{Key: "raw/" + key, Value: value}, (&consulapi.WriteOptions{}).WithContext(ctx))
					return err
				}
			}},
	}
	for _, srv := range servers {
		b.Run(srv.name, func(b *testing.B) {
			b.Run("RawPut-record-size", func(b *testing.B) {
				put := srv.raw(b)
				value := []byte(strings.Repeat("x", 420)) // about a network record
				var lat latencies
				i := 0
				for b.Loop() {
					lat.time(func() {
						if err := put(context.Background(), fmt.Sprintf("n%d", i), value); err != nil {
							b.Fatal(err)
						}
					})
					i++
				}
				lat.report(b)
			})
			b.Run("NetworkCreate", func(b *testing.B) {
				h := benchGhost(b, srv.open(b, fmt.Sprintf("bn%d", time.Now().UnixNano())))
				var lat latencies
				var names []string
				i := 0
				for b.Loop() {
					name := fmt.Sprintf("n%d", i)
					lat.time(func() {
						if _, err := h.NewNetwork(context.Background(), name, globalDriver); err != nil {
							b.Fatal(err)
						}
					})
					names = append(names, name)
					i++
				}
				lat.report(b)
				b.StopTimer()
				for _, n := range names {
					if err := h.DeleteNetwork(context.Background(), n); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run("RawPut-chunk-size", func(b *testing.B) {
				put := srv.raw(b)
				value := []byte(strings.Repeat("x", 513)) // an IPAM bitmap chunk
				var lat latencies
				i := 0
				for b.Loop() {
					lat.time(func() {
						if err := put(context.Background(), fmt.Sprintf("c%d", i%64), value); err != nil {
							b.Fatal(err)
						}
					})
					i++
				}
				lat.report(b)
			})
			b.Run("Address", func(b *testing.B) {
				g, err := ipamkv.NewGlobal(srv.open(b, fmt.Sprintf("ba%d", time.Now().UnixNano())), ipam.GlobalConfig{})
				if err != nil {
					b.Fatal(err)
				}
				ctx := context.Background()
				pool, err := g.RequestPool(ctx, ipam.PoolRequest{Space: ipam.GlobalSpace, Subnet: netip.MustParsePrefix("10.128.0.0/12")})
				if err != nil {
					b.Fatal(err)
				}
				var lat latencies
				var addrs []netip.Addr
				for b.Loop() {
					lat.time(func() {
						a, err := g.RequestAddress(ctx, pool.ID, netip.Addr{})
						if err != nil {
							b.Fatal(err)
						}
						addrs = append(addrs, a)
					})
				}
				lat.report(b)
				b.StopTimer()
				for _, a := range addrs {
					if err := g.ReleaseAddress(ctx, pool.ID, a); err != nil {
						b.Fatal(err)
					}
				}
				if err := g.ReleasePool(ctx, pool.ID); err != nil {
					b.Fatal(err)
				}
			})
			b.Run("Endpoint", func(b *testing.B) {
				h := benchGhost(b, srv.open(b, fmt.Sprintf("be%d", time.Now().UnixNano())))
				ctx := context.Background()
				n, err := h.NewNetwork(ctx, "eps", globalDriver, network.WithSubnet(netip.MustParsePrefix("10.144.0.0/12")))
				if err != nil {
					b.Fatal(err)
				}
				var lat latencies
				i := 0
				for b.Loop() {
					lat.time(func() {
						if _, err := n.CreateEndpoint(ctx, fmt.Sprintf("e%d", i)); err != nil {
							b.Fatal(err)
						}
					})
					i++
				}
				lat.report(b)
				b.StopTimer()
				for _, ep := range n.Endpoints() {
					if err := ep.Delete(ctx); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
}
