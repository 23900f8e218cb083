package cnm_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cnmkit/cnm"
	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/drivers/driverstest"
	"github.com/cnmkit/cnm/endpoint"
	"github.com/cnmkit/cnm/internal/epobj"
	"github.com/cnmkit/cnm/internal/nstest"
	"github.com/cnmkit/cnm/internal/storetest"
	"github.com/cnmkit/cnm/ipam"
	"github.com/cnmkit/cnm/ipam/ipamkv"
	"github.com/cnmkit/cnm/kvstore"
	"github.com/cnmkit/cnm/kvstore/etcd"
	"github.com/cnmkit/cnm/network"
	"github.com/cnmkit/cnm/sandbox"
	"github.com/cnmkit/cnm/sandbox/sandboxtest"
)

// heldStore is a global store whose transactions (kvstore.Batcher: endpoint records, network
// records) can be held back: a held Batch waits until release, or fails when its context ends,
// having written nothing.
// Its IPAM writes can be made to fail (failIPAM) or to lose their answers (loseIPAM), as a
// store going away or restarting mid-call.
type heldStore struct {
	kvstore.Store
	mu   sync.Mutex
	gate chan struct{} // nil: open
	// ipamFault is what AtomicPuts of IPAM keys do: "" succeed, "fail" fail with
	// ErrUnavailable having written nothing, "lose" write and then fail so.
	ipamFault string
}

// failIPAM makes the AtomicPuts of IPAM keys fail, having written nothing, until release.
func (h *heldStore) failIPAM() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ipamFault = "fail"
}

// loseIPAM makes the AtomicPuts of IPAM keys write and then fail, until release.
func (h *heldStore) loseIPAM() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ipamFault = "lose"
}

func (h *heldStore) AtomicPut(ctx context.Context, key string, value []byte, prev uint64) (uint64, error) {
	h.mu.Lock()
	fault := h.ipamFault
	h.mu.Unlock()
	if fault == "" || !strings.Contains(key, "/ipam/") {
		return h.Store.AtomicPut(ctx, key, value, prev)
	}
	if fault == "lose" {
		if _, err := h.Store.AtomicPut(ctx, key, value, prev); err != nil {
			return 0, err
		}
	}
	return 0, fmt.Errorf("held store: put %q: %s: %w", key, fault, cnm.ErrUnavailable)
}

func (h *heldStore) hold() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.gate == nil {
		h.gate = make(chan struct{})
	}
}

func (h *heldStore) release() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.gate != nil {
		close(h.gate)
		h.gate = nil
	}
	h.ipamFault = ""
}

func (h *heldStore) Batch(ctx context.Context, ops []kvstore.Op) (uint64, error) {
	h.mu.Lock()
	gate := h.gate
	h.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	return h.Store.(kvstore.Batcher).Batch(ctx, ops)
}

func (h *heldStore) Grant(ctx context.Context, ttl time.Duration) (kvstore.Lease, error) {
	return h.Store.(kvstore.Leaser).Grant(ctx, ttl)
}

// globalFakeHost returns a function that opens, on a fake machine of its own (the same one at
// each call, as a restart), the Controller of host name on the global store gs, with the fake
// global-scope driver and no predefined networks; timeout and ttl are Config.StoreTimeout and
// HostTTL (0: the defaults).
func globalFakeHost(t *testing.T, gs kvstore.Store, name string, timeout, ttl time.Duration) func() *cnm.Controller {
	l := &fakeLab{m: sandboxtest.NewMachine(), bridge: driverstest.NewFake(drivers.Capabilities{}), dataDir: t.TempDir(), runDir: t.TempDir()}
	return func() *cnm.Controller {
		return l.open(t, func(cfg *cnm.Config) {
			cfg.NoPredefinedNetworks = true
			cfg.Drivers[globalDriver] = driverstest.NewFake(drivers.Capabilities{DataScope: drivers.GlobalScope})
			cfg.GlobalStore, cfg.Hostname, cfg.StoreTimeout, cfg.HostTTL = gs, name, timeout, ttl
		})
	}
}

// TestGlobalWriteBehind: the record of an endpoint that Connect makes for a sandbox's namespace
// on a global network is committed to the run store in line, and its global copy:
//   - is written before Connect returns when the host has no other record on the network (a
//     first Connect whose copy the store does not take fails with ErrUnavailable and leaves
//     no record anywhere);
//   - otherwise follows Connect, which returns while the global store holds the write back;
//     the host's first record keeps another host from deleting the network meanwhile;
//   - is deleted by DeleteSandbox after the write queued before it;
//   - is written by the next start when the process stopped before it was (a restart within
//     the host's lease).
func TestGlobalWriteBehind(t *testing.T) {
	ctx := t.Context()
	ec := storetest.StartEtcd(t)
	prefix := fmt.Sprintf("wb%d", time.Now().UnixNano())
	gs := openEtcd(t, ec.Endpoints(), prefix) // the test's own view of the global store
	held := &heldStore{Store: openEtcd(t, ec.Endpoints(), prefix)}
	t.Cleanup(held.release)
	openA := globalFakeHost(t, held, "host-a", time.Second, time.Minute)
	a := openA()
	b := globalFakeHost(t, openEtcd(t, ec.Endpoints(), prefix), "host-b", time.Second, 0)()
	g1, err := a.NewNetwork(ctx, "g1", globalDriver, network.WithSubnet(netip.MustParsePrefix("10.91.0.0/24")))
	if err != nil {
		t.Fatal(err)
	}
	// g2's gateway is outside the host's address blocks: its first Connect claims one.
	g2, err := a.NewNetwork(ctx, "g2", globalDriver, network.WithSubnet(netip.MustParsePrefix("10.91.1.0/24")),
		network.WithGateway(netip.MustParseAddr("10.91.1.254")))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "host-b adopts g1", func() bool { return hasNetwork(b, "g1") })
	inGlobal := func(nid, eid string) bool {
		_, err := gs.Get(ctx, epobj.Key(nid, eid))
		if err != nil && !errors.Is(err, kvstore.ErrKeyNotFound) {
			t.Fatal(err)
		}
		return err == nil
	}
	inRun := func(c *cnm.Controller, nid, eid string) bool {
		_, err := cnm.RunStoreForTest(c).Get(ctx, epobj.Key(nid, eid))
		return err == nil
	}

	// The host's first endpoint on g1: its global copy is there when Connect returns.
	mustSandbox(t, a, "s1")
	e1 := mustConnect(t, a, "g1", "s1")
	if !inGlobal(g1.ID(), e1.ID()) || !inRun(a, g1.ID(), e1.ID()) {
		t.Fatalf("first endpoint: in the global store %v, in the run store %v; want both", inGlobal(g1.ID(), e1.ID()), inRun(a, g1.ID(), e1.ID()))
	}

	// The second: Connect returns while the global store holds its write back.
	held.hold()
	mustSandbox(t, a, "s2")
	e2 := mustConnect(t, a, "g1", "s2")
	if inGlobal(g1.ID(), e2.ID()) {
		t.Fatal("second endpoint's global copy written while the store held writes back")
	}
	if !inRun(a, g1.ID(), e2.ID()) {
		t.Fatal("second endpoint: no record in the run store")
	}
	if err := b.DeleteNetwork(ctx, "g1"); !errors.Is(err, cnm.ErrConflict) {
		t.Fatalf("DeleteNetwork(g1) on host-b while host-a's copy is queued = %v, want ErrConflict", err)
	}
	// A first endpoint on g2 waits for its copy: the store does not take it, so Connect fails
	// and leaves nothing.
	mustSandbox(t, a, "s3")
	if _, err := a.Connect(ctx, "g2", "s3"); !errors.Is(err, cnm.ErrUnavailable) {
		t.Fatalf("Connect(g2) with the store holding writes back = %v, want ErrUnavailable", err)
	}
	if pairs, err := cnm.RunStoreForTest(a).List(ctx, epobj.KeyPrefix+g2.ID()+"/"); err != nil || len(pairs) != 0 {
		t.Errorf("run store after the failed Connect: %d records of g2 (%v), want none", len(pairs), err)
	}
	if eps := g2.Endpoints(); len(eps) != 0 {
		t.Errorf("g2 keeps %d endpoints after the failed Connect", len(eps))
	}
	held.release()
	waitFor(t, 5*time.Second, "the second endpoint's global copy", func() bool { return inGlobal(g1.ID(), e2.ID()) })
	if pairs, err := gs.List(ctx, epobj.KeyPrefix+g2.ID()+"/"); err != nil || len(pairs) != 0 {
		t.Errorf("global store after the failed Connect: %d records of g2 (%v), want none", len(pairs), err)
	}
	// The store takes the claim of an address block on g2 but its answer is lost: Connect
	// fails, and the block, which no address of host-a's is in, is given back by host-a's
	// next sweep.
	held.loseIPAM()
	if _, err := a.Connect(ctx, "g2", "s3"); !errors.Is(err, cnm.ErrUnavailable) {
		t.Fatalf("Connect(g2) with the claim's answer lost = %v, want ErrUnavailable", err)
	}
	held.release()
	gi, err := ipamkv.NewGlobal(gs, ipam.GlobalConfig{})
	if err != nil {
		t.Fatal(err)
	}
	g2Subnet := netip.MustParsePrefix("10.91.1.0/24")
	g2Want := map[netip.Addr]bool{netip.MustParseAddr("10.91.1.254"): true} // the gateway
	if blocks, err := gi.Blocks(ctx, ipam.MakePoolID(ipam.GlobalSpace, g2Subnet)); err != nil || len(blocks) != 1 {
		t.Fatalf("g2's blocks after the claim's answer was lost: %v (%v), want host-a's", blocks, err)
	}
	waitFor(t, 15*time.Second, "g2's empty address block given back", func() bool {
		return ipamHoldsExactly(ctx, gi, g2Subnet, g2Want)
	}, func() string { return ipamDiff(ctx, gi, g2Subnet, g2Want) })

	// DeleteSandbox waits for the queued copy, then deletes both records.
	held.hold()
	mustSandbox(t, a, "s4")
	e4 := mustConnect(t, a, "g1", "s4")
	go func() { time.Sleep(200 * time.Millisecond); held.release() }()
	if err := a.DeleteSandbox(ctx, "s4"); err != nil {
		t.Fatalf("DeleteSandbox(s4): %v", err)
	}
	if inGlobal(g1.ID(), e4.ID()) || inRun(a, g1.ID(), e4.ID()) {
		t.Errorf("after DeleteSandbox(s4): in the global store %v, in the run store %v; want neither", inGlobal(g1.ID(), e4.ID()), inRun(a, g1.ID(), e4.ID()))
	}

	// An endpoint made by Network.CreateEndpoint keeps its record in the global store alone
	// (it may outlive its sandbox): DeleteSandbox deletes it there.
	ex, err := g1.CreateEndpoint(ctx, "x1")
	if err != nil {
		t.Fatal(err)
	}
	sx := mustSandbox(t, a, "s6")
	if err := ex.Join(ctx, sx); err != nil {
		t.Fatal(err)
	}
	if !inGlobal(g1.ID(), ex.ID()) || inRun(a, g1.ID(), ex.ID()) {
		t.Errorf("CreateEndpoint's endpoint: in the global store %v, in the run store %v; want the global store only", inGlobal(g1.ID(), ex.ID()), inRun(a, g1.ID(), ex.ID()))
	}
	if err := a.DeleteSandbox(ctx, "s6"); err != nil {
		t.Fatal(err)
	}
	if inGlobal(g1.ID(), ex.ID()) {
		t.Error("CreateEndpoint's endpoint: its record left in the global store by DeleteSandbox")
	}

	// The process stops before a queued copy is written (Close gives up after StoreTimeout):
	// the next start, within the lease, writes it.
	held.hold()
	mustSandbox(t, a, "s5")
	e5 := mustConnect(t, a, "g1", "s5")
	if err := a.Close(); err == nil {
		t.Error("Close with a copy it could not write = nil, want the error that says so")
	}
	held.release()
	if inGlobal(g1.ID(), e5.ID()) {
		t.Fatal("s5's copy written though the store held it back until Close")
	}
	a = openA()
	waitFor(t, 5*time.Second, "s5's copy written by the next start", func() bool { return inGlobal(g1.ID(), e5.ID()) })
	ng1, err := a.Network("g1")
	if err != nil {
		t.Fatal(err)
	}
	if got := len(ng1.Endpoints()); got != 3 {
		t.Errorf("host-a's endpoints on g1 after the restart = %d, want 3 (s1, s2, s5)", got)
	}
	for _, id := range []string{"s1", "s2", "s5"} {
		if err := a.DeleteSandbox(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.DeleteNetwork(ctx, "g1"); err != nil {
		t.Fatalf("DeleteNetwork(g1) on host-b once host-a's endpoints are gone: %v", err)
	}
	if pairs, err := gs.List(ctx, epobj.KeyPrefix); err != nil || len(pairs) != 0 {
		t.Errorf("global endpoint records left: %d (%v)", len(pairs), err)
	}
}

// TestGlobalEmptyBlockAfterRestart: a release of an address block's last address that the
// store did not take, then a restart of the host within its lease: the block, adopted from the
// store with none of the host's addresses in it, is given back by the host's first sweep.
func TestGlobalEmptyBlockAfterRestart(t *testing.T) {
	ctx := t.Context()
	ec := storetest.StartEtcd(t)
	prefix := fmt.Sprintf("eb%d", time.Now().UnixNano())
	gs := openEtcd(t, ec.Endpoints(), prefix)
	held := &heldStore{Store: openEtcd(t, ec.Endpoints(), prefix)}
	t.Cleanup(held.release)
	open := globalFakeHost(t, held, "host-a", time.Second, time.Minute)
	a := open()
	subnet := netip.MustParsePrefix("10.92.0.0/24")
	g, err := a.NewNetwork(ctx, "g", globalDriver, network.WithSubnet(subnet))
	if err != nil {
		t.Fatal(err)
	}
	// The gateway and e1, e2 fill the host's first block of four; e3 is in a second.
	want := map[netip.Addr]bool{subnet.Addr().Next(): true}
	var e3 endpoint.Endpoint
	for _, name := range []string{"e1", "e2", "e3"} {
		ep, err := g.CreateEndpoint(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if name == "e3" {
			e3 = ep
		} else {
			want[ep.Info().IPv4.Addr()] = true
		}
	}
	held.failIPAM()
	if err := e3.Delete(ctx); err != nil {
		t.Logf("delete e3 with the IPAM's writes failing: %v", err)
	}
	held.release()
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	gi, err := ipamkv.NewGlobal(gs, ipam.GlobalConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if ipamHoldsExactly(ctx, gi, subnet, want) {
		t.Fatal("e3's block was given back before the restart: the test proves nothing")
	}
	a = open()
	waitFor(t, 15*time.Second, "e3's empty block given back after the restart", func() bool {
		return ipamHoldsExactly(ctx, gi, subnet, want)
	}, func() string { return ipamDiff(ctx, gi, subnet, want) })
	if _, err := a.Network("g"); err != nil {
		t.Fatal(err)
	}
	if err := a.DeleteNetwork(ctx, "g"); !errors.Is(err, cnm.ErrConflict) {
		t.Fatalf("DeleteNetwork with e1 and e2 = %v, want ErrConflict", err)
	}
}

// TestPrivilegedGlobalWriteBehindStoreRestart stops the store (the etcd member, the Consul
// agent) while two hosts connect new sandboxes to a global network without pause, and starts
// it again. Each host's first Connect writes its record in line; the others' copies follow
// them, so Connect goes on working while the store is away, the copies queued (a Connect that
// must claim an address block from the store fails as unavailable, and no other). Afterwards the
// records are exactly the endpoints the hosts hold, and the global IPAM holds their addresses,
// each once.
func TestPrivilegedGlobalWriteBehindStoreRestart(t *testing.T) {
	nstest.Privileged(t)
	t.Parallel()
	for _, be := range globalBackends(t) {
		t.Run(be.name, func(t *testing.T) {
			t.Parallel()
			writeBehindStoreRestart(t, be)
		})
	}
}

func writeBehindStoreRestart(t *testing.T, be globalBackend) {
	ctx := t.Context()
	hosts := map[string]*cnm.Controller{}
	for _, name := range []string{"host-a", "host-b"} {
		hosts[name] = globalFakeHost(t, be.open(t), name, 2*time.Second, 30*time.Second)()
	}
	a, b := hosts["host-a"], hosts["host-b"]
	subnet := netip.MustParsePrefix("10.71.0.0/16")
	if _, err := a.NewNetwork(ctx, "w", globalDriver, network.WithSubnet(subnet)); err != nil {
		t.Fatalf("NewNetwork: %v", err)
	}
	waitFor(t, 5*time.Second, "host-b adopts w", func() bool { return hasNetwork(b, "w") })

	var work []func(i int) error
	for name, c := range hosts {
		for w := range 2 {
			work = append(work, func(i int) error {
				id := fmt.Sprintf("%s-w%d-%d", name, w, i)
				if _, err := c.NewSandbox(ctx, id); err != nil {
					return fmt.Errorf("new sandbox: %w", err)
				}
				_, err := c.Connect(ctx, "w", id)
				return err
			})
		}
	}
	tl := workThroughRestart(be, work)
	ok := tl.ok
	t.Logf("%s: %d connects, %d of them while the store was stopped; %d failed as unavailable (address blocks to claim)", be.name, ok, tl.inOutage, len(tl.unavailable))
	for _, err := range tl.other {
		t.Errorf("connect failed other than unavailable: %v", err)
	}
	for _, err := range tl.unavailable {
		// Only an address block to claim needs the store (the host's first endpoint on w
		// was written before the outage).
		if !strings.Contains(err.Error(), "ipam: ") {
			t.Errorf("connect failed other than for an address block: %v", err)
		}
	}
	s := be.open(t)
	assertRecordsHeld(t, s, "w", subnet, ok, hosts)
	for _, c := range hosts {
		for _, sb := range c.Sandboxes() {
			if err := c.DeleteSandbox(ctx, sb.ID()); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := a.DeleteNetwork(ctx, "w"); err != nil {
		t.Fatalf("DeleteNetwork: %v", err)
	}
	assertGlobalClean(t, s)
}

// wbKillEnv carries the child's configuration (wbKillConfig, as JSON) for
// TestWriteBehindKillHelper.
const wbKillEnv = "CNM_WB_KILL_CHILD"

type wbKillConfig struct {
	Etcd             []string
	Prefix           string
	HostNetns        string
	DataDir, RunDir  string
	Network, Sandbox string
}

// openWBKillHost opens the Controller of TestPrivilegedGlobalWriteBehindKilled's host on cfg
// with global store gs.
func openWBKillHost(ctx context.Context, cfg wbKillConfig, gs kvstore.Store) (*cnm.Controller, error) {
	return cnm.New(ctx, cnm.Config{
		DataDir: cfg.DataDir, RunDir: cfg.RunDir, HostNetns: cfg.HostNetns, NoPredefinedNetworks: true,
		Drivers:     map[string]drivers.Driver{"gp2p": &gp2pDriver{p2pDriver{hostPath: cfg.HostNetns}}},
		GlobalStore: gs, Hostname: "host-k", StoreTimeout: 2 * time.Second,
	})
}

// TestWriteBehindKillHelper is the child of TestPrivilegedGlobalWriteBehindKilled: it opens
// the host's Controller with the global store holding transactions back, connects a new
// sandbox to the network (its record's copy queued), prints its endpoint's ID, and waits to be
// killed.
func TestWriteBehindKillHelper(t *testing.T) {
	raw := os.Getenv(wbKillEnv)
	if raw == "" {
		return
	}
	var cfg wbKillConfig
	if err := json.Unmarshal([]byte(raw), &cfg); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	s, err := etcd.Open(ctx, etcd.Config{Endpoints: cfg.Etcd, Prefix: cfg.Prefix})
	if err != nil {
		t.Fatal(err)
	}
	held := &heldStore{Store: s}
	c, err := openWBKillHost(ctx, cfg, held)
	if err != nil {
		t.Fatal(err)
	}
	held.hold()
	if _, err := c.NewSandbox(ctx, cfg.Sandbox); err != nil {
		t.Fatal(err)
	}
	ep, err := c.Connect(ctx, cfg.Network, cfg.Sandbox)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("connected %s\n", ep.ID())
	select {} // until killed
}

// TestPrivilegedGlobalWriteBehindKilled: a host's process is killed (SIGKILL) right after a
// Connect whose record's global copy was still queued (the store held it back). The next start
// (within the host's lease) finds the record in the run store, keeps the endpoint (its
// interface survived in the sandbox's namespace) and writes the copy; DeleteSandbox removes it.
func TestPrivilegedGlobalWriteBehindKilled(t *testing.T) {
	nstest.Privileged(t)
	t.Parallel()
	ctx := t.Context()
	ec := storetest.StartEtcd(t)
	cfg := wbKillConfig{Etcd: ec.Endpoints(), Prefix: "killed", HostNetns: nstest.NewNS(t).Path(),
		DataDir: t.TempDir(), RunDir: t.TempDir(), Network: "gx", Sandbox: "sb2"}
	gs := openEtcd(t, cfg.Etcd, cfg.Prefix)
	t.Cleanup(func() {
		ids, _ := sandbox.ListNamespaces(cfg.RunDir)
		for _, id := range ids {
			sandbox.RemoveNamespace(cfg.RunDir, id)
		}
	})
	c, err := openWBKillHost(ctx, cfg, gs)
	if err != nil {
		t.Fatal(err)
	}
	nw, err := c.NewNetwork(ctx, "gx", "gp2p", network.WithSubnet(netip.MustParsePrefix("10.73.0.0/24")))
	if err != nil {
		t.Fatal(err)
	}
	mustSandbox(t, c, "sb1")
	mustConnect(t, c, "gx", "sb1") // the host's first endpoint on gx: its copy fences gx
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}

	b, _ := json.Marshal(cfg)
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestWriteBehindKillHelper$", "-test.count=1")
	cmd.Env = append(os.Environ(), wbKillEnv+"="+string(b))
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	epID, ok := strings.CutPrefix(strings.TrimSpace(line), "connected ")
	if err != nil || !ok {
		t.Fatalf("child: %q, %v", line, err)
	}
	key := epobj.Key(nw.ID(), epID)
	if _, err := gs.Get(ctx, key); !errors.Is(err, kvstore.ErrKeyNotFound) {
		t.Fatalf("sb2's copy before the restart: %v, want none (the child's store held it back)", err)
	}

	c, err = openWBKillHost(ctx, cfg, gs)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	for _, r := range c.Repairs() {
		if strings.Contains(r.String(), "sb2") {
			t.Errorf("restart repaired %q, want sb2's endpoint kept", r)
		}
	}
	waitFor(t, 10*time.Second, "sb2's copy written by the restarted host", func() bool {
		_, err := gs.Get(ctx, key)
		return err == nil
	})
	nw, _ = c.Network("gx")
	ep, err := nw.Endpoint(epID)
	if err != nil || ep.Info().SandboxID != "sb2" {
		t.Fatalf("sb2's endpoint after the restart: %v, %v; want it joined to sb2", ep, err)
	}
	// The p2p driver gives each endpoint's host end the gateway's address: with sb1 gone,
	// the host's route to the subnet is sb2's.
	if err := c.DeleteSandbox(ctx, "sb1"); err != nil {
		t.Fatal(err)
	}
	pingOK(t, mustGet(t, c, "sb2"), netip.MustParseAddr("10.73.0.1"))
	if err := c.DeleteSandbox(ctx, "sb2"); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteNetwork(ctx, "gx"); err != nil {
		t.Fatal(err)
	}
	assertGlobalClean(t, gs)
}
