package cnm_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cnmkit/cnm"
	"github.com/cnmkit/cnm/cluster"
	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/drivers/driverstest"
	"github.com/cnmkit/cnm/endpoint"
	"github.com/cnmkit/cnm/internal/epobj"
	"github.com/cnmkit/cnm/internal/netobj"
	"github.com/cnmkit/cnm/internal/nstest"
	"github.com/cnmkit/cnm/internal/storetest"
	"github.com/cnmkit/cnm/ipam"
	"github.com/cnmkit/cnm/ipam/ipamkv"
	"github.com/cnmkit/cnm/kvstore"
	"github.com/cnmkit/cnm/kvstore/consul"
	"github.com/cnmkit/cnm/kvstore/etcd"
	"github.com/cnmkit/cnm/network"
)

// globalDriver is the name of the global-scope test driver every host registers.
const globalDriver = "gfake"

// globalBackend opens global stores on one server: each call a new client on the same data.
type globalBackend struct {
	name string
	open func(t *testing.T) kvstore.Store
	// openAt is open with a prefix of its own under the test's (for subtests that share a
	// server).
	openAt      func(t *testing.T, sub string) kvstore.Store
	stop, start func() // the server
}

// globalBackends starts one etcd and one Consul server for the test and returns openers on
// them, each with a prefix of its own for this test. The clients' own request timeout is long
// (a list of 10,000 records under load takes seconds): the hosts bound their calls with
// StoreTimeout (2s), which is what the outage tests measure.
func globalBackends(t *testing.T) []globalBackend {
	t.Helper()
	nstest.Privileged(t)
	prefix := fmt.Sprintf("t%d", time.Now().UnixNano())
	ec := storetest.StartEtcd(t)
	ca := storetest.StartConsul(t)
	openEtcdAt := func(t *testing.T, sub string) kvstore.Store {
		s, err := etcd.Open(t.Context(), etcd.Config{Endpoints: ec.Endpoints(), Prefix: prefix + sub, RequestTimeout: 10 * time.Second})
		if err != nil {
			t.Fatalf("etcd.Open: %v", err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	openConsulAt := func(t *testing.T, sub string) kvstore.Store {
		s, err := consul.Open(t.Context(), consul.Config{Address: ca.Addr(), Prefix: prefix + sub, RequestTimeout: 10 * time.Second})
		if err != nil {
			t.Fatalf("consul.Open: %v", err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	return []globalBackend{
		{"etcd", func(t *testing.T) kvstore.Store { return openEtcdAt(t, "") }, openEtcdAt, func() { ec.Stop(0) }, func() { ec.Start(0) }},
		{"consul", func(t *testing.T) kvstore.Store { return openConsulAt(t, "") }, openConsulAt, ca.Stop, ca.Start},
	}
}

// ghost is one host of a cluster: a Controller on its own namespace and directories, with the
// global store gs.
type ghost struct {
	name    string
	dataDir string
	runDir  string
	netns   string
	gs      kvstore.Store
	ttl     time.Duration
	blocks  bool // per-host address blocks: Config.NoGlobalAddressBlocks unset
	c       *cnm.Controller
}

func newGhost(t *testing.T, name string, gs kvstore.Store, ttl time.Duration) *ghost {
	t.Helper()
	return newGhostWith(t, name, gs, ttl, true)
}

// newGhostWith is newGhost with per-host address blocks (the default) or without
// (Config.NoGlobalAddressBlocks).
func newGhostWith(t *testing.T, name string, gs kvstore.Store, ttl time.Duration, blocks bool) *ghost {
	t.Helper()
	h := &ghost{name: name, dataDir: t.TempDir(), runDir: t.TempDir(), netns: nstest.NewNS(t).Path(), gs: gs, ttl: ttl, blocks: blocks}
	c, err := h.start(t)
	if err != nil {
		t.Fatalf("host %s: cnm.New: %v", name, err)
	}
	h.c = c
	return h
}

func (h *ghost) start(t testing.TB) (*cnm.Controller, error) {
	t.Helper()
	c, err := cnm.New(context.Background(), cnm.Config{
		DataDir: h.dataDir, RunDir: h.runDir, HostNetns: h.netns, NoPredefinedNetworks: true,
		Drivers:     map[string]drivers.Driver{globalDriver: driverstest.NewFake(drivers.Capabilities{DataScope: drivers.GlobalScope})},
		GlobalStore: h.gs, Hostname: h.name, HostTTL: h.ttl, StoreTimeout: 2 * time.Second,
		NoGlobalAddressBlocks: !h.blocks,
	})
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Close() })
	return c, nil
}

// benchGhost starts a host named "bench" on gs for a benchmark.
func benchGhost(b *testing.B, gs kvstore.Store) *cnm.Controller {
	h := &ghost{name: "bench", dataDir: b.TempDir(), runDir: b.TempDir(), netns: nstest.NewNS(b).Path(), gs: gs}
	c, err := h.start(b)
	if err != nil {
		b.Fatal(err)
	}
	return c
}

// waitFor polls cond every 20ms until it holds or d passes; detail, if given, says what it saw
// last.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool, detail ...func() string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			for _, f := range detail {
				what += ": " + f()
			}
			t.Fatalf("after %v: %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func hasNetwork(c *cnm.Controller, name string) bool {
	_, err := c.Network(name)
	return err == nil
}

func TestPrivilegedGlobalNetworks(t *testing.T) {
	nstest.Privileged(t)
	t.Parallel() // its servers, hosts and prefixes are its own
	for _, be := range globalBackends(t) {
		t.Run(be.name, func(t *testing.T) {
			t.Parallel() // the backends have servers of their own
			ctx := t.Context()
			a := newGhost(t, "host-a", be.open(t), 0)
			b := newGhost(t, "host-b", be.open(t), 0)

			// Created on one host, seen on the other through the watch.
			n, err := a.c.NewNetwork(ctx, "g1", globalDriver, network.WithSubnet(netip.MustParsePrefix("10.90.0.0/24")))
			if err != nil {
				t.Fatalf("NewNetwork on a: %v", err)
			}
			if n.Scope() != drivers.GlobalScope {
				t.Errorf("scope = %v, want global", n.Scope())
			}
			waitFor(t, 5*time.Second, "host b does not see g1", func() bool { return hasNetwork(b.c, "g1") })
			nb, _ := b.c.Network("g1")
			if nb.ID() != n.ID() {
				t.Errorf("b sees g1 with ID %s, want %s", nb.ID(), n.ID())
			}
			// The name is taken cluster-wide; so is the subnet.
			if _, err := b.c.NewNetwork(ctx, "g1", globalDriver); !errors.Is(err, cnm.ErrAlreadyExists) {
				t.Errorf("NewNetwork(g1) on b: error = %v, want ErrAlreadyExists", err)
			}
			if _, err := b.c.NewNetwork(ctx, "g2", globalDriver, network.WithSubnet(netip.MustParsePrefix("10.90.0.0/25"))); !errors.Is(err, cnm.ErrConflict) {
				t.Errorf("NewNetwork(g2, overlapping subnet) on b: error = %v, want ErrConflict", err)
			}

			// Concurrent creates of one name from both hosts: exactly one wins, every round.
			for i := range 10 {
				name := fmt.Sprintf("race%d", i)
				var wg sync.WaitGroup
				errs := make([]error, 2)
				for j, h := range []*ghost{a, b} {
					wg.Go(func() { _, errs[j] = h.c.NewNetwork(ctx, name, globalDriver) })
				}
				wg.Wait()
				won := 0
				for j, err := range errs {
					switch {
					case err == nil:
						won++
					case !errors.Is(err, cnm.ErrAlreadyExists):
						t.Errorf("%s: host %d: error = %v, want ErrAlreadyExists", name, j, err)
					}
				}
				if won != 1 {
					t.Fatalf("%s: %d creates won, want exactly 1 (%v)", name, won, errs)
				}
				waitFor(t, 5*time.Second, name+" not on both hosts", func() bool { return hasNetwork(a.c, name) && hasNetwork(b.c, name) })
				na, _ := a.c.Network(name)
				nb, _ := b.c.Network(name)
				if na.ID() != nb.ID() {
					t.Errorf("%s: hosts disagree on its ID", name)
				}
				if err := b.c.DeleteNetwork(ctx, name); err != nil {
					t.Fatalf("delete %s: %v", name, err)
				}
			}

			// Deletion is refused while any host has endpoints on it, from any host.
			ep, err := n.CreateEndpoint(ctx, "ep1")
			if err != nil {
				t.Fatalf("CreateEndpoint on a: %v", err)
			}
			err = b.c.DeleteNetwork(ctx, "g1")
			if !errors.Is(err, cnm.ErrConflict) || !strings.Contains(err.Error(), "host-a") {
				t.Fatalf("DeleteNetwork(g1) on b with an endpoint on a: error = %v, want ErrConflict naming host-a", err)
			}
			if err := ep.Delete(ctx); err != nil {
				t.Fatalf("endpoint delete: %v", err)
			}
			if err := b.c.DeleteNetwork(ctx, "g1"); err != nil {
				t.Fatalf("DeleteNetwork(g1) on b: %v", err)
			}
			waitFor(t, 5*time.Second, "host a still has g1", func() bool { return !hasNetwork(a.c, "g1") })

			// Nothing is left in the global store but the host registry and the empty IPAM index.
			assertGlobalClean(t, be.open(t))
		})
	}
}

// assertGlobalClean checks that the global store holds no network, name, fence or endpoint
// key, and no allocated address.
func assertGlobalClean(t *testing.T, s kvstore.Store) {
	t.Helper()
	for _, prefix := range []string{netobj.KeyPrefix, cluster.NameKeyPrefix, cluster.DeletingKeyPrefix, epobj.KeyPrefix, ipam.DefaultGlobalPrefix + "/chunks/"} {
		kvs, err := s.List(t.Context(), prefix)
		if err != nil {
			t.Fatalf("List(%s): %v", prefix, err)
		}
		for _, kv := range kvs {
			t.Errorf("left in the global store: %s", kv.Key)
		}
	}
}

func TestPrivilegedGlobalAddresses10k(t *testing.T) {
	nstest.Privileged(t)
	t.Parallel() // its servers, hosts and prefixes are its own
	const (
		total   = 10000
		workers = 8 // per host
	)
	for _, be := range globalBackends(t) {
		t.Run(be.name, func(t *testing.T) {
			t.Parallel() // the backends have servers of their own
			ctx := t.Context()
			a := newGhost(t, "host-a", be.open(t), 0)
			b := newGhost(t, "host-b", be.open(t), 0)
			if _, err := a.c.NewNetwork(ctx, "big", globalDriver, network.WithSubnet(netip.MustParsePrefix("10.64.0.0/18"))); err != nil {
				t.Fatalf("NewNetwork: %v", err)
			}
			waitFor(t, 5*time.Second, "b does not see big", func() bool { return hasNetwork(b.c, "big") })

			var (
				mu   sync.Mutex
				seen = map[netip.Addr]string{}
				eps  []endpoint.Endpoint
				wg   sync.WaitGroup
				errs = make(chan error, 2*workers)
			)
			start := time.Now()
			for hi, h := range []*ghost{a, b} {
				n, _ := h.c.Network("big")
				for w := range workers {
					wg.Go(func() {
						for i := w; i < total/2; i += workers {
							name := fmt.Sprintf("h%d-%d", hi, i)
							ep, err := n.CreateEndpoint(ctx, name)
							if err != nil {
								errs <- fmt.Errorf("%s: %w", name, err)
								return
							}
							addr := ep.Info().IPv4.Addr()
							mu.Lock()
							if other, dup := seen[addr]; dup {
								mu.Unlock()
								errs <- fmt.Errorf("address %s given to %s and %s", addr, other, name)
								return
							}
							seen[addr] = name
							eps = append(eps, ep)
							mu.Unlock()
						}
					})
				}
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
			t.Logf("%s: %d endpoints from two hosts in %v", be.name, len(seen), time.Since(start))
			if len(seen) != total {
				t.Fatalf("%d distinct addresses, want %d", len(seen), total)
			}
			recs, err := be.open(t).List(ctx, epobj.KeyPrefix)
			if err != nil || len(recs) != total {
				t.Fatalf("global store holds %d endpoint records (err %v), want %d", len(recs), err, total)
			}
			// Delete from both hosts concurrently; then the network, and nothing is left.
			jobs := make(chan endpoint.Endpoint)
			var dwg sync.WaitGroup
			derrs := make(chan error, total)
			for range 2 * workers {
				dwg.Go(func() {
					for ep := range jobs {
						if err := ep.Delete(ctx); err != nil {
							derrs <- err
						}
					}
				})
			}
			for _, ep := range eps {
				jobs <- ep
			}
			close(jobs)
			dwg.Wait()
			close(derrs)
			for err := range derrs {
				t.Fatal(err)
			}
			if err := b.c.DeleteNetwork(ctx, "big"); err != nil {
				t.Fatalf("DeleteNetwork: %v", err)
			}
			assertGlobalClean(t, be.open(t))
		})
	}
}

func TestPrivilegedHostRegistry(t *testing.T) {
	nstest.Privileged(t)
	t.Parallel() // its servers, hosts and prefixes are its own
	for _, be := range globalBackends(t) {
		t.Run(be.name, func(t *testing.T) {
			t.Parallel() // the backends have servers of their own
			ctx := t.Context()
			ttl := time.Second
			a := newGhost(t, "host-a", be.open(t), ttl)

			// A second host with the same name is refused, and leaves nothing behind.
			dup := &ghost{name: "host-a", dataDir: t.TempDir(), runDir: t.TempDir(), netns: nstest.NewNS(t).Path(), gs: be.open(t), ttl: ttl}
			if _, err := dup.start(t); !errors.Is(err, cnm.ErrAlreadyExists) || !strings.Contains(err.Error(), "host-a") {
				t.Fatalf("second host-a: error = %v, want ErrAlreadyExists naming host-a", err)
			}
			hosts, err := a.c.Hosts(ctx)
			if err != nil || len(hosts) != 1 || hosts[0] != "host-a" {
				t.Fatalf("Hosts = %v, %v; want [host-a]", hosts, err)
			}

			// The same host restarting before its lease ran out takes its entry back.
			if err := a.c.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			if a.c, err = a.start(t); err != nil {
				t.Fatalf("restart of host-a within its TTL: %v", err)
			}

			// A host that stops is gone when its TTL runs out, and a survivor reclaims its
			// endpoints: their addresses can be given again.
			b := newGhost(t, "host-b", be.open(t), ttl)
			n, err := a.c.NewNetwork(ctx, "g", globalDriver, network.WithSubnet(netip.MustParsePrefix("10.91.0.0/24")))
			if err != nil {
				t.Fatalf("NewNetwork: %v", err)
			}
			waitFor(t, 5*time.Second, "b does not see g", func() bool { return hasNetwork(b.c, "g") })
			nb, _ := b.c.Network("g")
			want := netip.MustParseAddr("10.91.0.77")
			if _, err := nb.CreateEndpoint(ctx, "on-b", endpoint.WithIPv4(want)); err != nil {
				t.Fatalf("CreateEndpoint on b: %v", err)
			}
			if _, err := n.CreateEndpoint(ctx, "taken", endpoint.WithIPv4(want)); !errors.Is(err, cnm.ErrConflict) {
				t.Fatalf("CreateEndpoint(%s) on a while b holds it: error = %v, want ErrConflict", want, err)
			}
			stopped := time.Now()
			if err := b.c.Close(); err != nil { // as a crash: the lease is not revoked
				t.Fatalf("Close b: %v", err)
			}
			lease := ttl
			if be.name == "consul" {
				lease = 10 * time.Second // Consul's minimum session TTL
			}
			waitFor(t, 3*lease+10*time.Second, "host-b still registered", func() bool {
				hosts, err := a.c.Hosts(ctx)
				return err == nil && len(hosts) == 1
			})
			waitFor(t, 10*time.Second, "b's endpoint not reclaimed", func() bool { return len(a.c.Reclaimed()) == 1 })
			t.Logf("%s: host-b gone and reclaimed %v after it stopped", be.name, time.Since(stopped).Round(10*time.Millisecond))
			ep, err := n.CreateEndpoint(ctx, "again", endpoint.WithIPv4(want))
			if err != nil {
				t.Fatalf("CreateEndpoint(%s) after reclaim: %v", want, err)
			}
			if err := ep.Delete(ctx); err != nil {
				t.Fatal(err)
			}
			if err := a.c.DeleteNetwork(ctx, "g"); err != nil {
				t.Fatalf("DeleteNetwork: %v", err)
			}
			assertGlobalClean(t, be.open(t))
		})
	}
}

// openEtcd opens a client on the given endpoints with the test's prefix.
func openEtcd(t testing.TB, endpoints []string, prefix string) kvstore.Store {
	t.Helper()
	s, err := etcd.Open(t.Context(), etcd.Config{Endpoints: endpoints, Prefix: prefix, RequestTimeout: 2 * time.Second, DialTimeout: 2 * time.Second})
	if err != nil {
		t.Fatalf("etcd.Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// ipamHoldsExactly reports whether the global pool of subnet holds exactly the addresses in
// want, read from the store: those outside the hosts' address blocks as addresses, those
// inside as blocks (only their hosts know which of a block's addresses are in use), with no
// block that holds none of want.
func ipamHoldsExactly(ctx context.Context, g *ipam.Global, subnet netip.Prefix, want map[netip.Addr]bool) bool {
	id := ipam.MakePoolID(ipam.GlobalSpace, subnet)
	got, err := g.Addresses(ctx, id)
	if err != nil {
		return false
	}
	blocks, err := g.Blocks(ctx, id)
	if err != nil {
		return false
	}
	inBlocks := 0
	for _, b := range blocks {
		n := 0
		for x := range want {
			if b.Prefix.Contains(x) {
				n++
			}
		}
		if n == 0 {
			return false
		}
		inBlocks += n
	}
	if len(got) != len(want)-inBlocks {
		return false
	}
	for _, x := range got {
		if !want[x] {
			return false
		}
	}
	return true
}

// networkNames returns the names of c's networks, sorted.
func networkNames(c *cnm.Controller) []string {
	var out []string
	for _, n := range c.Networks() {
		out = append(out, n.Name())
	}
	return out
}

// retryUntil calls f until it succeeds or d passes, and returns its last error.
func retryUntil(d time.Duration, f func() error) error {
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestPrivilegedGlobalEtcdOutage runs two hosts on a three-member etcd cluster: losing one
// member changes nothing; losing two makes global operations fail promptly with ErrUnavailable
// while local networks keep working; when the members return, the watches resume and both hosts
// agree on every network, with nothing lost or leaked.
func TestPrivilegedGlobalEtcdOutage(t *testing.T) {
	nstest.Privileged(t)
	t.Parallel() // its servers, hosts and prefixes are its own
	ctx := t.Context()
	ec := storetest.StartEtcdCluster(t, 3)
	prefix := "outage"
	a := newGhost(t, "host-a", openEtcd(t, ec.Endpoints(), prefix), 20*time.Second)
	b := newGhost(t, "host-b", openEtcd(t, ec.Endpoints(), prefix), 20*time.Second)
	seen := func(h *ghost, names ...string) func() bool {
		return func() bool {
			for _, n := range names {
				if !hasNetwork(h.c, n) {
					return false
				}
			}
			return true
		}
	}

	if _, err := a.c.NewNetwork(ctx, "g1", globalDriver); err != nil {
		t.Fatalf("NewNetwork(g1): %v", err)
	}
	waitFor(t, 5*time.Second, "b does not see g1", seen(b, "g1"))

	// One member down: quorum holds, nothing changes for the hosts.
	ec.Stop(0)
	if err := retryUntil(5*time.Second, func() error { _, err := a.c.NewNetwork(ctx, "g2", globalDriver); return err }); err != nil {
		t.Fatalf("NewNetwork(g2) with one member down: %v", err)
	}
	waitFor(t, 10*time.Second, "b does not see g2 with one member down", seen(b, "g2"))

	// Two members down: no quorum. Global calls fail within the bound; local ones work.
	ec.Stop(1)
	start := time.Now()
	_, err := a.c.NewNetwork(ctx, "g3", globalDriver)
	took := time.Since(start)
	if !errors.Is(err, cnm.ErrUnavailable) {
		t.Fatalf("NewNetwork(g3) without quorum: error = %v, want ErrUnavailable", err)
	}
	if took > 5*time.Second {
		t.Errorf("NewNetwork(g3) without quorum took %v, want it bounded by StoreTimeout (2s)", took)
	}
	t.Logf("without quorum: NewNetwork failed in %v: %v", took.Round(time.Millisecond), err)
	if hasNetwork(a.c, "g3") {
		t.Errorf("a failed create left g3 behind")
	}
	loc, err := a.c.NewNetwork(ctx, "local", "null")
	if err != nil {
		t.Fatalf("local network during the outage: %v", err)
	}
	if _, err := loc.CreateEndpoint(ctx, "lep"); err != nil {
		t.Fatalf("local endpoint during the outage: %v", err)
	}
	if err := a.c.DeleteNetwork(ctx, "g1"); !errors.Is(err, cnm.ErrUnavailable) {
		t.Errorf("DeleteNetwork(g1) without quorum: error = %v, want ErrUnavailable", err)
	}

	// Back: the hosts resume, and see each other's changes again.
	ec.Start(0)
	ec.Start(1)
	if err := retryUntil(15*time.Second, func() error { _, err := a.c.NewNetwork(ctx, "g3", globalDriver); return err }); err != nil {
		t.Fatalf("NewNetwork(g3) after the outage: %v", err)
	}
	waitFor(t, 10*time.Second, "b does not see g3 after the outage", seen(b, "g3"))
	if err := b.c.DeleteNetwork(ctx, "g2"); err != nil {
		t.Fatalf("DeleteNetwork(g2) on b after the outage: %v", err)
	}
	waitFor(t, 10*time.Second, "a still has g2", func() bool { return !hasNetwork(a.c, "g2") })
	want := []string{"g1", "g3", "local"}
	if got := networkNames(a.c); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("a's networks = %v, want %v", got, want)
	}
	if got := networkNames(b.c); strings.Join(got, ",") != "g1,g3" {
		t.Errorf("b's networks = %v, want [g1 g3]", got)
	}
	hosts, err := a.c.Hosts(ctx)
	if err != nil || strings.Join(hosts, ",") != "host-a,host-b" {
		t.Errorf("Hosts after the outage = %v, %v; want both", hosts, err)
	}
	for _, n := range []string{"g1", "g3"} {
		if err := a.c.DeleteNetwork(ctx, n); err != nil {
			t.Fatalf("DeleteNetwork(%s): %v", n, err)
		}
	}
	assertGlobalClean(t, openEtcd(t, ec.Endpoints(), prefix))
}

// TestPrivilegedGlobalStoreRestartMidWork stops the store (the etcd member, the Consul agent)
// while two hosts create endpoints on a global network without pause, and starts it again.
// Calls fail with ErrUnavailable while it is away, and nothing else; afterwards every endpoint
// that was created is in the store, no record is left by a failed create, and the global IPAM
// holds exactly the addresses of the records (what failed creates took is freed), with none
// given twice.
func TestPrivilegedGlobalStoreRestartMidWork(t *testing.T) {
	nstest.Privileged(t)
	t.Parallel() // its servers, hosts and prefixes are its own
	for _, be := range globalBackends(t) {
		t.Run(be.name, func(t *testing.T) {
			t.Parallel() // the backends have servers of their own
			// One after the other: each stops the server.
			t.Run("blocks", func(t *testing.T) { restartMidWork(t, be, true) })
			t.Run("cas", func(t *testing.T) { restartMidWork(t, be, false) })
		})
	}
}

// restartMidWork is TestPrivilegedGlobalStoreRestartMidWork on be, with per-host address
// blocks (the default) or without (Config.NoGlobalAddressBlocks).
func restartMidWork(t *testing.T, be globalBackend, blocks bool) {
	ctx := t.Context()
	open := func(t *testing.T) kvstore.Store { return be.openAt(t, "/"+t.Name()) }
	// The leases outlive the outage: this test is about the store, not the registry.
	a := newGhostWith(t, "host-a", open(t), 30*time.Second, blocks)
	b := newGhostWith(t, "host-b", open(t), 30*time.Second, blocks)
	subnet := netip.MustParsePrefix("10.70.0.0/16")
	if _, err := a.c.NewNetwork(ctx, "w", globalDriver, network.WithSubnet(subnet)); err != nil {
		t.Fatalf("NewNetwork: %v", err)
	}
	waitFor(t, 5*time.Second, "b does not see w", func() bool { return hasNetwork(b.c, "w") })

	var work []func(i int) error
	for hi, h := range []*ghost{a, b} {
		n, _ := h.c.Network("w")
		for w := range 3 {
			work = append(work, func(i int) error {
				_, err := n.CreateEndpoint(ctx, fmt.Sprintf("h%d-w%d-%d", hi, w, i))
				return err
			})
		}
	}
	tl := workThroughRestart(be, work)
	ok := tl.ok
	t.Logf("%s: %d endpoints created, %d creates failed as unavailable", be.name, ok, len(tl.unavailable))
	for _, err := range tl.other {
		t.Errorf("create failed other than unavailable: %v", err)
	}
	if len(tl.unavailable) == 0 {
		t.Errorf("no create failed while the store was stopped")
	}

	s := open(t)
	assertRecordsHeld(t, s, "w", subnet, ok, map[string]*cnm.Controller{a.name: a.c, b.name: b.c})
	t.Logf("%s: repairs on a: %d, on b: %d", be.name, len(a.c.Reclaimed()), len(b.c.Reclaimed()))

	for _, h := range []*ghost{a, b} {
		n, _ := h.c.Network("w")
		for _, ep := range n.Endpoints() {
			if err := ep.Delete(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := a.c.DeleteNetwork(ctx, "w"); err != nil {
		t.Fatalf("DeleteNetwork: %v", err)
	}
	assertGlobalClean(t, s)
}

// tally is what workThroughRestart's workers did.
type tally struct {
	ok, inOutage int     // calls that succeeded; of them, while the server was stopped
	unavailable  []error // calls that failed with ErrUnavailable
	other        []error // calls that failed otherwise
}

// workThroughRestart runs each of work in a loop of its own (its argument counts its calls),
// without pause but for 50ms after a failure, for a second, while be's server is stopped for 3
// seconds, and for 3 seconds after it started again; it returns what the calls did.
func workThroughRestart(be globalBackend, work []func(i int) error) tally {
	stop := make(chan struct{})
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		tl     tally
		outage bool
	)
	for _, f := range work {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				err := f(i)
				mu.Lock()
				switch {
				case err == nil:
					tl.ok++
					if outage {
						tl.inOutage++
					}
				case errors.Is(err, cnm.ErrUnavailable):
					tl.unavailable = append(tl.unavailable, err)
				default:
					tl.other = append(tl.other, err)
				}
				mu.Unlock()
				if err != nil {
					time.Sleep(50 * time.Millisecond)
				}
			}
		})
	}
	setOutage := func(on bool) {
		mu.Lock()
		outage = on
		mu.Unlock()
	}
	time.Sleep(time.Second)
	be.stop()
	setOutage(true)
	time.Sleep(3 * time.Second)
	setOutage(false)
	be.start()
	time.Sleep(3 * time.Second)
	close(stop)
	wg.Wait()
	return tl
}

// assertRecordsHeld checks, once the writes of unknown outcome are cleaned up, that the records
// of global network nw (subnet, its gateway the first address) in store s are exactly the
// endpoints the hosts hold (created of them, as the caller counted), and that the global IPAM
// holds the gateway and their addresses, each once, and nothing else.
func assertRecordsHeld(t *testing.T, s kvstore.Store, nw string, subnet netip.Prefix, created int, hosts map[string]*cnm.Controller) {
	t.Helper()
	ctx := t.Context()
	var nid string
	held := map[string]bool{}
	for _, c := range hosts {
		n, err := c.Network(nw)
		if err != nil {
			t.Fatal(err)
		}
		nid = n.ID()
		for _, ep := range n.Endpoints() {
			held[ep.ID()] = true
		}
	}
	if len(held) != created {
		t.Errorf("hosts hold %d endpoints, %d creates succeeded", len(held), created)
	}
	var diff string
	waitFor(t, 30*time.Second, "records differ from the endpoints the hosts hold", func() bool {
		recs, err := s.List(ctx, epobj.KeyPrefix+nid+"/")
		if err != nil {
			diff = err.Error()
			return false
		}
		inStore := map[string]bool{}
		var extra, missing []string
		for _, r := range recs {
			id := strings.TrimPrefix(r.Key, epobj.KeyPrefix+nid+"/")
			inStore[id] = true
			if !held[id] {
				extra = append(extra, string(r.Value))
			}
		}
		for id := range held {
			if !inStore[id] {
				missing = append(missing, id)
			}
		}
		diff = fmt.Sprintf("records no host holds: %v; endpoints without a record: %v", extra, missing)
		return len(extra) == 0 && len(missing) == 0
	}, func() string { return diff })
	g, err := ipamkv.NewGlobal(s, ipam.GlobalConfig{})
	if err != nil {
		t.Fatal(err)
	}
	want := map[netip.Addr]bool{subnet.Addr().Next(): true}
	holder := map[netip.Addr]string{}
	for name, c := range hosts {
		n, _ := c.Network(nw)
		for _, ep := range n.Endpoints() {
			addr := ep.Info().IPv4.Addr()
			if want[addr] {
				t.Fatalf("address %s held twice: by %s and by %s on %s", addr, holder[addr], ep.Name(), name)
			}
			want[addr] = true
			holder[addr] = ep.Name() + " on " + name
		}
	}
	waitFor(t, 60*time.Second, "the global IPAM holds addresses no record holds", func() bool {
		return ipamHoldsExactly(ctx, g, subnet, want)
	}, func() string { return ipamDiff(ctx, g, subnet, want) })
}

// ipamDiff says how the global IPAM's holdings in subnet differ from want: blocks without a
// wanted address, and addresses outside the blocks that are not wanted.
func ipamDiff(ctx context.Context, g *ipam.Global, subnet netip.Prefix, want map[netip.Addr]bool) string {
	id := ipam.MakePoolID(ipam.GlobalSpace, subnet)
	got, err := g.Addresses(ctx, id)
	if err != nil {
		return err.Error()
	}
	blocks, err := g.Blocks(ctx, id)
	if err != nil {
		return err.Error()
	}
	var empty []string
	for _, b := range blocks {
		if !slices.ContainsFunc(slices.Collect(maps.Keys(want)), b.Prefix.Contains) {
			empty = append(empty, fmt.Sprintf("%+v", b))
		}
	}
	var extra []netip.Addr
	for _, x := range got {
		if !want[x] {
			extra = append(extra, x)
		}
	}
	return fmt.Sprintf("%d blocks, empty: %v; %d addresses outside blocks, not wanted: %v", len(blocks), empty, len(got), extra)
}

// TestPrivilegedGlobalLeaseLost ends every host's lease behind its back (as an outage longer
// than the TTL would): the registry empties, the survivors may reclaim each other's endpoints,
// and each host registers again and puts back its own. In the end every endpoint has its record
// and its address, held once.
func TestPrivilegedGlobalLeaseLost(t *testing.T) {
	nstest.Privileged(t)
	t.Parallel() // its servers, hosts and prefixes are its own
	ctx := t.Context()
	ec := storetest.StartEtcd(t)
	prefix := "leaselost"
	a := newGhost(t, "host-a", openEtcd(t, ec.Endpoints(), prefix), 2*time.Second)
	b := newGhost(t, "host-b", openEtcd(t, ec.Endpoints(), prefix), 2*time.Second)
	subnet := netip.MustParsePrefix("10.71.0.0/24")
	na, err := a.c.NewNetwork(ctx, "g", globalDriver, network.WithSubnet(subnet))
	if err != nil {
		t.Fatalf("NewNetwork: %v", err)
	}
	waitFor(t, 5*time.Second, "b does not see g", func() bool { return hasNetwork(b.c, "g") })
	nb, _ := b.c.Network("g")
	// The gateway is in host-a's first address block; two endpoints fill that block, and go
	// once the others are in blocks of their own: the gateway alone keeps its block.
	var fillers []endpoint.Endpoint
	for _, name := range []string{"f1", "f2"} {
		ep, err := na.CreateEndpoint(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		fillers = append(fillers, ep)
	}
	want := map[netip.Addr]bool{netip.MustParseAddr("10.71.0.1"): true}
	for i, n := range []network.Network{na, nb, na, nb} {
		ep, err := n.CreateEndpoint(ctx, fmt.Sprintf("e%d", i))
		if err != nil {
			t.Fatal(err)
		}
		want[ep.Info().IPv4.Addr()] = true
	}
	for _, ep := range fillers {
		if err := ep.Delete(ctx); err != nil {
			t.Fatal(err)
		}
	}

	// The registry entries go at once.
	t.Logf("revoked %d leases", revokeLeases(t, ec.Endpoints()))

	s := openEtcd(t, ec.Endpoints(), prefix)
	g, err := ipamkv.NewGlobal(s, ipam.GlobalConfig{})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "the hosts did not register again with every record and address back", func() bool {
		hosts, err := a.c.Hosts(ctx)
		if err != nil || len(hosts) != 2 {
			return false
		}
		recs, err := s.List(ctx, epobj.KeyPrefix+na.ID()+"/")
		if err != nil || len(recs) != 4 {
			return false
		}
		return ipamHoldsExactly(ctx, g, subnet, want)
	}, func() string { return ipamDiff(ctx, g, subnet, want) })
	// Stable: a later sweep does not take anything away again.
	time.Sleep(3 * time.Second)
	if !ipamHoldsExactly(ctx, g, subnet, want) {
		t.Errorf("after the sweeps, the global IPAM holds other than the gateway and the endpoints: %s", ipamDiff(ctx, g, subnet, want))
	}
	recs, err := s.List(ctx, epobj.KeyPrefix+na.ID()+"/")
	if err != nil || len(recs) != 4 {
		t.Fatalf("after the sweeps: %d records (%v), want 4", len(recs), err)
	}
	t.Logf("repairs: a %v; b %v", a.c.Reclaimed(), b.c.Reclaimed())
	for _, n := range []network.Network{na, nb} {
		for _, ep := range n.Endpoints() {
			if err := ep.Delete(ctx); err != nil {
				t.Fatalf("delete %s: %v", ep.Name(), err)
			}
		}
	}
	if err := a.c.DeleteNetwork(ctx, "g"); err != nil {
		t.Fatal(err)
	}
	assertGlobalClean(t, s)
}

// revokeLeases revokes every lease of the etcd at endpoints with a raw client, as an outage
// longer than the TTL would end them, and returns how many there were.
func revokeLeases(t *testing.T, endpoints []string) int {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	leases, err := cli.Leases(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range leases.Leases {
		if _, err := cli.Revoke(t.Context(), l.ID); err != nil {
			t.Fatal(err)
		}
	}
	return len(leases.Leases)
}

// gp2pDriver is the p2p test driver with global scope: its networks live in the global store,
// and its endpoints join sandboxes with a real veth.
type gp2pDriver struct{ p2pDriver }

func (d *gp2pDriver) Capabilities() drivers.Capabilities {
	return drivers.Capabilities{DataScope: drivers.GlobalScope}
}

// TestPrivilegedGlobalJoinRestart joins a sandbox to a global network, restarts the host, and
// deletes the sandbox: the endpoint's record lives in the global store throughout, the
// interface survives the restart, and the sandbox's deletion removes the record and frees the
// address there.
func TestPrivilegedGlobalJoinRestart(t *testing.T) {
	nstest.Privileged(t)
	t.Parallel() // its servers, hosts and prefixes are its own
	ctx := t.Context()
	ec := storetest.StartEtcd(t)
	gs := openEtcd(t, ec.Endpoints(), "join")
	hostNS := nstest.NewNS(t).Path()
	dataDir, runDir := t.TempDir(), t.TempDir()
	open := func() *cnm.Controller {
		c, err := cnm.New(ctx, cnm.Config{
			DataDir: dataDir, RunDir: runDir, HostNetns: hostNS, NoPredefinedNetworks: true,
			Drivers:     map[string]drivers.Driver{"gp2p": &gp2pDriver{p2pDriver{hostPath: hostNS}}},
			GlobalStore: gs, Hostname: "host-j", StoreTimeout: 2 * time.Second,
		})
		if err != nil {
			t.Fatalf("cnm.New: %v", err)
		}
		t.Cleanup(func() {
			for _, sb := range c.Sandboxes() {
				c.DeleteSandbox(context.Background(), sb.ID())
			}
			c.Close()
		})
		return c
	}
	c := open()
	nw, err := c.NewNetwork(ctx, "gx", "gp2p", network.WithSubnet(netip.MustParsePrefix("10.72.0.0/24")))
	if err != nil {
		t.Fatalf("NewNetwork: %v", err)
	}
	sb := mustSandbox(t, c, "sb1")
	ep := mustConnect(t, c, "gx", "sb1")
	addr := ep.Info().IPv4.Addr()
	pingOK(t, sb, netip.MustParseAddr("10.72.0.1"))
	recs, err := gs.List(ctx, epobj.KeyPrefix+nw.ID()+"/")
	if err != nil || len(recs) != 1 || !strings.Contains(string(recs[0].Value), `"host":"host-j"`) || !strings.Contains(string(recs[0].Value), `"sandbox_id":"sb1"`) {
		t.Fatalf("global endpoint records = %v (%v), want one of host-j joined to sb1", recs, err)
	}

	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	c = open()
	if reps := c.Repairs(); len(reps) != 0 {
		t.Errorf("restart repaired %v, want nothing", reps)
	}
	sb = mustGet(t, c, "sb1")
	pingOK(t, sb, netip.MustParseAddr("10.72.0.1"))
	nw, _ = c.Network("gx")
	if eps := nw.Endpoints(); len(eps) != 1 || eps[0].Info().IPv4.Addr() != addr || eps[0].Info().SandboxID != "sb1" {
		t.Fatalf("after restart: endpoints %v, want one joined to sb1 with %s", eps, addr)
	}

	if err := c.DeleteSandbox(ctx, "sb1"); err != nil {
		t.Fatalf("DeleteSandbox: %v", err)
	}
	if recs, err := gs.List(ctx, epobj.KeyPrefix); err != nil || len(recs) != 0 {
		t.Fatalf("after DeleteSandbox: global endpoint records %d (%v), want none", len(recs), err)
	}
	if err := c.DeleteNetwork(ctx, "gx"); err != nil {
		t.Fatalf("DeleteNetwork: %v", err)
	}
	assertGlobalClean(t, gs)
}

// TestPrivilegedGlobalEvents checks what one host's event stream says of the others: a host
// joining and leaving the registry, networks another host created and deleted (Remote), the
// reclaim of a departed host's endpoint, and a delete made here.
func TestPrivilegedGlobalEvents(t *testing.T) {
	nstest.Privileged(t)
	t.Parallel() // its server, hosts and prefix are its own
	ctx := t.Context()
	ec := storetest.StartEtcd(t)
	prefix := fmt.Sprintf("t%d", time.Now().UnixNano())
	a := newGhost(t, "host-a", openEtcd(t, ec.Endpoints(), prefix), time.Second)
	evs := a.c.Events(ctx)

	b := newGhost(t, "host-b", openEtcd(t, ec.Endpoints(), prefix), time.Second)
	g, err := b.c.NewNetwork(ctx, "g", globalDriver, network.WithSubnet(netip.MustParsePrefix("10.92.0.0/24")))
	if err != nil {
		t.Fatal(err)
	}
	g2, err := b.c.NewNetwork(ctx, "g2", globalDriver)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "a does not see g2", func() bool { return hasNetwork(a.c, "g2") })
	if err := b.c.DeleteNetwork(ctx, "g2"); err != nil {
		t.Fatal(err)
	}
	if _, err := g.CreateEndpoint(ctx, "on-b"); err != nil {
		t.Fatal(err)
	}
	if err := b.c.Leave(ctx); err != nil { // for good: a reclaims its endpoint at once
		t.Fatal(err)
	}

	check := func(want ...string) {
		t.Helper()
		got := map[string]bool{}
		for range want {
			ev := nextEvent(t, evs)
			if ev.NetworkID != "" && ev.NetworkID != g.ID() && ev.NetworkID != g2.ID() {
				t.Errorf("%s: NetworkID %s, want g's %s or g2's %s", evLine(ev), ev.NetworkID, g.ID(), g2.ID())
			}
			got[evLine(ev)] = true
		}
		for _, w := range want {
			if !got[w] {
				t.Fatalf("events %v, want %q", got, w)
			}
		}
	}
	check("host.joined host=host-b")
	check("network.created net=g remote=true")
	check("network.created net=g2 remote=true")
	check("network.deleted net=g2 remote=true")
	// The registry's delete and the sweep may each be first to reclaim: either order.
	check("host.left host=host-b", "repaired repair=reclaimed endpoint on-b of host host-b")

	if err := a.c.DeleteNetwork(ctx, "g"); err != nil {
		t.Fatal(err)
	}
	check("network.deleted net=g")
}
