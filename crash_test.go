package cnm_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cnmkit/cnm"
	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/drivers/bridge"
	"github.com/cnmkit/cnm/endpoint"
	"github.com/cnmkit/cnm/internal/nstest"
	"github.com/cnmkit/cnm/kvstore"
	"github.com/cnmkit/cnm/kvstore/boltdb"
	"github.com/cnmkit/cnm/network"
	"github.com/cnmkit/cnm/sandbox"
)

// Crash tests: a child process (this test binary, re-executed to run TestCrashHelper) opens a
// Controller on the lab's DataDir, RunDir and host namespace, builds some state, and dies with
// os.Exit(crashExitCode) in the middle of an operation: no deferred cleanup, no Close. The
// parent then starts a new Controller on the same directories and checks that it removed or
// adopted every leftover, reported it in Repairs, kept IPAM equal to the live endpoints, and
// that once everything is deleted nothing remains in the kernel.
//
// The crash points are hooks in a "crashy" driver (the real bridge driver, wrapped) and in a
// store wrapper (bbolt, wrapped), both armed by the child just before the operation that must
// die, so the setup before it runs normally.

// crashEnv carries the crashConfig, as JSON, from the parent to the child.
const crashEnv = "CNM_CRASH_HELPER"

// crashExitCode is the child's exit code at a crash point.
const crashExitCode = 3

// crashyDriver is the name the wrapped bridge driver is registered under.
const crashyDriver = "crashy"

// sandboxKeyPrefix is the store prefix of sandbox records (cnm's sandboxPrefix).
const sandboxKeyPrefix = "cnm/v1/sandboxes/"

// Crash points.
const (
	// In CreateNetwork of the crashy driver, after the bridge exists, before the record.
	crashCreateNetwork = "create-network"
	// In Join, after the veth pair exists; during a Connect: no endpoint record at all.
	crashJoinConnect = "join-connect"
	// In Join of an endpoint created (and stored) beforehand: its record says "not joined".
	crashJoinStored = "join-stored"
	// In CreateEndpoint during a Connect made right after NewSandbox.
	crashCreateEndpoint = "create-endpoint"
	// In the store, when NewSandbox writes the sandbox record: its namespace exists.
	crashSandboxRecord = "sandbox-record"
	// In the store, when DeleteSandbox commits: the namespace is gone, the records are not.
	crashDeleteSandbox = "delete-sandbox"
	// In NewSandbox, once its record is committed, before the kernel makes its namespace (the
	// two run at once).
	crashSandboxNamespace = "sandbox-namespace"
)

// crashConfig is what the child needs: where the lab is and where to die.
type crashConfig struct {
	Point     string `json:"point"`
	DataDir   string `json:"data_dir"`
	RunDir    string `json:"run_dir"`
	HostNetns string `json:"host_netns"`
	InfoFile  string `json:"info_file"` // the child writes crashInfo here just before dying
}

// crashInfo is what the child reports of the operation it died in.
type crashInfo map[string]string

// Names and subnets of the state every child builds before its crash.
var (
	stableSubnet = netip.MustParsePrefix("10.70.0.0/24") // network "stable" (crashy driver)
	doomedSubnet = netip.MustParsePrefix("10.71.0.0/24") // network "doomed", crashed in CreateNetwork
)

// crashBridge is the bridge driver behind another name, with crash points. Capabilities,
// ParseNetworkOptions, Reconcile, Leave, DeleteEndpoint, DeleteNetwork and Close are the
// embedded driver's.
type crashBridge struct {
	*bridge.Driver
	point string       // "" in the parent: never crashes
	armed *atomic.Bool // the next call at point dies
	crash func(info crashInfo)
}

func newCrashBridge(t *testing.T, hostNetns, point string, armed *atomic.Bool, crash func(crashInfo)) *crashBridge {
	t.Helper()
	br, err := bridge.New(bridge.Config{HostNetns: hostNetns})
	if err != nil {
		t.Fatal(err)
	}
	if armed == nil {
		armed = new(atomic.Bool)
	}
	return &crashBridge{Driver: br, point: point, armed: armed, crash: crash}
}

func (d *crashBridge) at(point string) bool { return d.point == point && d.armed.Load() }

func (d *crashBridge) CreateNetwork(ctx context.Context, req drivers.CreateNetworkRequest) error {
	err := d.Driver.CreateNetwork(ctx, req)
	if err == nil && d.at(crashCreateNetwork) {
		d.crash(crashInfo{"network_id": string(req.NetworkID), "network": req.Name})
	}
	return err
}

func (d *crashBridge) CreateEndpoint(ctx context.Context, req drivers.CreateEndpointRequest) (drivers.CreateEndpointResult, error) {
	res, err := d.Driver.CreateEndpoint(ctx, req)
	if err == nil && d.at(crashCreateEndpoint) {
		d.crash(crashInfo{"endpoint_id": string(req.EndpointID), "ipv4": req.IPv4.String()})
	}
	return res, err
}

func (d *crashBridge) Join(ctx context.Context, req drivers.JoinRequest) (drivers.JoinResult, error) {
	res, err := d.Driver.Join(ctx, req)
	if err == nil && (d.at(crashJoinConnect) || d.at(crashJoinStored)) {
		d.crash(crashInfo{"endpoint_id": string(req.EndpointID), "ipv4": req.IPv4.String(), "ifname": req.IfName})
	}
	return res, err
}

var (
	_ drivers.OptionParser = (*crashBridge)(nil)
	_ drivers.Reconciler   = (*crashBridge)(nil)
	_ drivers.Closer       = (*crashBridge)(nil)
)

// crashStore is the bbolt store with crash points on the writes of sandbox records.
type crashStore struct {
	*boltdb.Store
	point  string
	armed  *atomic.Bool
	crash  func(info crashInfo)
	runDir string
}

func (s *crashStore) AtomicPut(ctx context.Context, key string, value []byte, prev uint64) (uint64, error) {
	if s.point == crashSandboxRecord && s.armed.Load() && strings.HasPrefix(key, sandboxKeyPrefix) {
		// NewSandbox commits the record while the kernel makes the namespace: die once the
		// namespace and the files are made (the hosts file is written last), before the commit.
		hosts := filepath.Join(s.runDir, "sandboxes", strings.TrimPrefix(key, sandboxKeyPrefix), "hosts")
		for range 500 {
			if _, err := os.Stat(hosts); err == nil {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		s.crash(crashInfo{"key": key})
	}
	return s.Store.AtomicPut(ctx, key, value, prev)
}

func (s *crashStore) Batch(ctx context.Context, ops []kvstore.Op) (uint64, error) {
	if s.point == crashDeleteSandbox && s.armed.Load() {
		var keys []string
		for _, op := range ops {
			keys = append(keys, op.Key)
		}
		s.crash(crashInfo{"keys": strings.Join(keys, " ")})
	}
	return s.Store.Batch(ctx, ops)
}

var _ kvstore.Batcher = (*crashStore)(nil)

// crashMachine is the kernel, with a crash point in New: once the sandbox's record is in the
// store, before the namespace or the files are made.
type crashMachine struct {
	*sandbox.Kernel
	store kvstore.Store
	armed *atomic.Bool
	crash func(info crashInfo)
}

func (m *crashMachine) New(ctx context.Context, cfg sandbox.Config) (sandbox.Handle, error) {
	if m.armed.Load() {
		for range 500 {
			if _, err := m.store.Get(ctx, sandboxKeyPrefix+cfg.ID); err == nil {
				m.crash(crashInfo{"sandbox": cfg.ID})
			}
			time.Sleep(10 * time.Millisecond)
		}
		return nil, fmt.Errorf("crash machine: the record of sandbox %s was never stored", cfg.ID)
	}
	return m.Kernel.New(ctx, cfg)
}

// TestCrashHelper is the child side of the crash tests. It does nothing unless crashEnv is set.
func TestCrashHelper(t *testing.T) {
	raw := os.Getenv(crashEnv)
	if raw == "" {
		return
	}
	var cfg crashConfig
	if err := json.Unmarshal([]byte(raw), &cfg); err != nil {
		t.Fatalf("%s: %v", crashEnv, err)
	}
	crashChild(t, cfg)
	t.Fatalf("crash point %q was not reached", cfg.Point)
}

// crashChild builds the common state, arms the crash point and runs the operation that dies.
func crashChild(t *testing.T, cfg crashConfig) {
	ctx := t.Context()
	info := crashInfo{}
	crash := func(more crashInfo) {
		for k, v := range more {
			info[k] = v
		}
		b, _ := json.Marshal(info)
		if err := os.WriteFile(cfg.InfoFile, b, 0o600); err != nil {
			fmt.Fprintln(os.Stderr, "write crash info:", err)
			os.Exit(1)
		}
		fmt.Fprintf(os.Stderr, "crashing at %s: %s\n", cfg.Point, b)
		os.Exit(crashExitCode) // a hard crash: no deferred function, no Close
	}
	armed := new(atomic.Bool)
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	st, err := boltdb.Open(filepath.Join(cfg.DataDir, "local.db"), boltdb.Config{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	store := &crashStore{Store: st, point: cfg.Point, armed: armed, crash: crash, runDir: cfg.RunDir}
	drv := newCrashBridge(t, cfg.HostNetns, cfg.Point, armed, crash)
	ccfg := cnm.Config{
		DataDir: cfg.DataDir, RunDir: cfg.RunDir, HostNetns: cfg.HostNetns, Store: store,
		Drivers: map[string]drivers.Driver{crashyDriver: drv}, Logger: log,
	}
	if cfg.Point == crashSandboxNamespace {
		k, err := sandbox.OpenKernel(cfg.HostNetns)
		if err != nil {
			t.Fatal(err)
		}
		ccfg.Machine, ccfg.HostNetns = &crashMachine{Kernel: k, store: st, armed: armed, crash: crash}, ""
	}
	c, err := cnm.New(ctx, ccfg)
	if err != nil {
		t.Fatal(err)
	}

	// Fully stored before the crash: network "stable" on the crashy driver, and sandbox "old"
	// attached to it and to the default bridge network.
	if _, err := c.NewNetwork(ctx, "stable", crashyDriver, network.WithSubnet(stableSubnet)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.NewSandbox(ctx, "old"); err != nil {
		t.Fatal(err)
	}
	for _, nw := range []string{"stable", cnm.DefaultNetwork} {
		if _, err := c.Connect(ctx, nw, "old"); err != nil {
			t.Fatal(err)
		}
	}

	switch cfg.Point {
	case crashCreateNetwork:
		armed.Store(true)
		_, err = c.NewNetwork(ctx, "doomed", crashyDriver, network.WithSubnet(doomedSubnet))
	case crashJoinConnect:
		if _, err := c.NewSandbox(ctx, "victim"); err != nil {
			t.Fatal(err)
		}
		armed.Store(true)
		_, err = c.Connect(ctx, "stable", "victim")
	case crashJoinStored:
		sb, err := c.NewSandbox(ctx, "victim")
		if err != nil {
			t.Fatal(err)
		}
		nw, _ := c.Network("stable")
		ep, err := nw.CreateEndpoint(ctx, "parked")
		if err != nil {
			t.Fatal(err)
		}
		info["parked_ipv4"] = ep.Info().IPv4.String()
		armed.Store(true)
		err = ep.Join(ctx, sb)
	case crashCreateEndpoint:
		if _, err := c.NewSandbox(ctx, "fresh"); err != nil {
			t.Fatal(err)
		}
		armed.Store(true)
		_, err = c.Connect(ctx, "stable", "fresh")
	case crashSandboxRecord, crashSandboxNamespace:
		armed.Store(true)
		_, err = c.NewSandbox(ctx, "ghost")
	case crashDeleteSandbox:
		if _, err := c.NewSandbox(ctx, "victim"); err != nil {
			t.Fatal(err)
		}
		for _, nw := range []string{"stable", cnm.DefaultNetwork} {
			ep, err := c.Connect(ctx, nw, "victim")
			if err != nil {
				t.Fatal(err)
			}
			info["victim_"+nw] = ep.Info().IPv4.String()
			info["victim_ids"] += ep.ID() + " "
		}
		armed.Store(true)
		err = c.DeleteSandbox(ctx, "victim")
	default:
		t.Fatalf("unknown crash point %q", cfg.Point)
	}
	t.Fatalf("operation at crash point %s returned (err %v) instead of crashing", cfg.Point, err)
}

// crashLab is a lab whose first Controller runs, and dies, in a child process.
type crashLab struct {
	*lab
	info crashInfo
}

func newCrashLab(t *testing.T) *crashLab {
	t.Helper()
	l := &lab{host: nstest.NewNS(t), dataDir: t.TempDir(), runDir: t.TempDir()}
	t.Cleanup(func() {
		// A failed test may leave namespaces no Controller knows: unmount them so the temp
		// dir can go (the checks that nothing is left run in the test itself).
		ids, _ := sandbox.ListNamespaces(l.runDir)
		for _, id := range ids {
			sandbox.RemoveNamespace(l.runDir, id)
		}
	})
	return &crashLab{lab: l}
}

// crash runs the child up to point and checks that it died there.
func (l *crashLab) crash(t *testing.T, point string) {
	t.Helper()
	cfg := crashConfig{
		Point: point, DataDir: l.dataDir, RunDir: l.runDir, HostNetns: l.host.Path(),
		InfoFile: filepath.Join(t.TempDir(), "crash.json"),
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestCrashHelper$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), crashEnv+"="+string(b))
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != crashExitCode {
		t.Fatalf("child for crash point %s: %v, want exit code %d; output:\n%s", point, err, crashExitCode, out)
	}
	t.Logf("child crashed at %s:\n%s", point, strings.TrimSpace(string(out)))
	raw, err := os.ReadFile(cfg.InfoFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &l.info); err != nil {
		t.Fatal(err)
	}
}

// restart opens a new Controller on the crashed lab, with the crashy driver registered (never
// crashing), and returns it with its repairs rendered one per line.
func (l *crashLab) restart(t *testing.T) (*cnm.Controller, []string) {
	t.Helper()
	drv := newCrashBridge(t, l.host.Path(), "", nil, nil)
	c, err := cnm.New(t.Context(), cnm.Config{
		DataDir: l.dataDir, RunDir: l.runDir, HostNetns: l.host.Path(),
		Drivers: map[string]drivers.Driver{crashyDriver: drv},
	})
	if err != nil {
		drv.Close()
		t.Fatalf("cnm.New after the crash: %v", err)
	}
	t.Cleanup(func() {
		for _, sb := range c.Sandboxes() {
			c.DeleteSandbox(context.Background(), sb.ID())
		}
		c.Close()
	})
	var reps []string
	for _, r := range c.Repairs() {
		reps = append(reps, r.String())
	}
	t.Logf("repairs:\n%s", strings.Join(reps, "\n"))
	return c, reps
}

// wantRepairs checks that the repairs are exactly want: each want entry is a set of
// substrings that one repair, and only one, must all contain.
func wantRepairs(t *testing.T, got []string, want ...[]string) {
	t.Helper()
	left := slices.Clone(got)
	for _, w := range want {
		i := slices.IndexFunc(left, func(s string) bool {
			for _, sub := range w {
				if !strings.Contains(s, sub) {
					return false
				}
			}
			return true
		})
		if i < 0 {
			t.Errorf("no repair contains all of %q; repairs: %q", w, got)
			continue
		}
		left = slices.Delete(left, i, i+1)
	}
	if len(left) > 0 {
		t.Errorf("unexpected repairs %q (of %q)", left, got)
	}
}

// checkNoFiles checks that sandbox id has no files directory (hosts, resolv.conf) left.
func checkNoFiles(t *testing.T, l *crashLab, id string) {
	t.Helper()
	dir := filepath.Join(l.runDir, "sandboxes", id)
	if ents, err := os.ReadDir(dir); !errors.Is(err, os.ErrNotExist) {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("files of sandbox %s left after the restart: %s %v (err %v)", id, dir, names, err)
	}
}

// optionalRepairs returns reps without those for which allowed is true: repairs that may or
// may not happen.
func optionalRepairs(t *testing.T, reps []string, allowed func(string) bool) []string {
	t.Helper()
	var out []string
	for _, r := range reps {
		if allowed(r) {
			t.Logf("optional repair: %s", r)
			continue
		}
		out = append(out, r)
	}
	return out
}

func hostVeth(epID string) string { return "veth" + epID[:11] }

func bridgeOf(t *testing.T, c *cnm.Controller, name string) string {
	t.Helper()
	nw, err := c.Network(name)
	if err != nil {
		t.Fatalf("network %s after the crash: %v", name, err)
	}
	if name == cnm.DefaultNetwork {
		return cnm.DefaultBridge
	}
	return "br-" + nw.ID()[:12]
}

func endpointOf(t *testing.T, c *cnm.Controller, nwName, epName string) endpoint.Endpoint {
	t.Helper()
	nw, err := c.Network(nwName)
	if err != nil {
		t.Fatal(err)
	}
	ep, err := nw.Endpoint(epName)
	if err != nil {
		t.Fatalf("endpoint %s of %s: %v", epName, nwName, err)
	}
	return ep
}

// checkOld checks that sandbox "old", attached before the crash, was adopted as it was: eth0
// on "stable" and eth1 on the default bridge, each reaching its gateway. It returns the host
// links the stored state accounts for: lo, the two bridges and old's two veths.
func checkOld(t *testing.T, c *cnm.Controller) []string {
	t.Helper()
	old, err := c.Sandbox("old")
	if err != nil {
		t.Fatalf("sandbox old after the crash: %v", err)
	}
	ifs := old.Interfaces()
	if len(ifs) != 2 || ifs[0].Name != "eth0" || ifs[1].Name != "eth1" {
		t.Fatalf("old's interfaces after the crash = %+v, want eth0 and eth1", ifs)
	}
	if got := links(t, old.Key()); !slices.Equal(got, []string{"eth0", "eth1", "lo"}) {
		t.Fatalf("links in old's namespace = %v, want eth0, eth1 and lo", got)
	}
	want := []string{"lo"}
	for _, nwName := range []string{"stable", cnm.DefaultNetwork} {
		ep := endpointOf(t, c, nwName, "old")
		if ep.Info().SandboxID != "old" {
			t.Fatalf("endpoint old of %s after the crash: %+v, want joined to old", nwName, ep.Info())
		}
		pingOK(t, old, ep.Info().Gateway)
		want = append(want, bridgeOf(t, c, nwName), hostVeth(ep.ID()))
	}
	return want
}

// liveAddrs returns the IPv4 addresses held by the endpoints of network nw.
func liveAddrs(t *testing.T, c *cnm.Controller, nwName string) map[netip.Addr]string {
	t.Helper()
	nw, err := c.Network(nwName)
	if err != nil {
		t.Fatal(err)
	}
	out := map[netip.Addr]string{}
	for _, ep := range nw.Endpoints() {
		if a := ep.Info().IPv4; a.IsValid() {
			if other, ok := out[a.Addr()]; ok {
				t.Errorf("address %v held by endpoints %s and %s", a.Addr(), other, ep.Name())
			}
			out[a.Addr()] = ep.Name()
		}
	}
	return out
}

// connectFresh connects sandbox id to nw with a dynamic address and checks the address is
// held by no other endpoint and reaches the gateway.
func connectFresh(t *testing.T, c *cnm.Controller, nwName, id string) endpoint.Endpoint {
	t.Helper()
	held := liveAddrs(t, c, nwName)
	ep := mustConnect(t, c, nwName, id)
	if other, ok := held[ep.Info().IPv4.Addr()]; ok {
		t.Fatalf("address %v handed to %s is held by endpoint %s", ep.Info().IPv4.Addr(), id, other)
	}
	pingOK(t, mustGet(t, c, id), ep.Info().Gateway)
	return ep
}

// teardown deletes every sandbox and every network but the predefined ones, checks that only
// the default bridge and lo are left in the host namespace, that no sandbox namespace or
// files are left, and that a further start finds nothing to repair.
func (l *crashLab) teardown(t *testing.T, c *cnm.Controller) {
	t.Helper()
	ctx := t.Context()
	for _, sb := range c.Sandboxes() {
		if err := c.DeleteSandbox(ctx, sb.ID()); err != nil {
			t.Fatal(err)
		}
	}
	for _, nw := range c.Networks() {
		switch nw.Name() {
		case cnm.DefaultNetwork, cnm.HostNetwork, cnm.NoneNetwork:
			continue
		}
		for _, ep := range nw.Endpoints() { // created but never joined
			if err := ep.Delete(ctx); err != nil {
				t.Fatal(err)
			}
		}
		if err := c.DeleteNetwork(ctx, nw.Name()); err != nil {
			t.Fatal(err)
		}
	}
	waitLinks(t, l.host.Path(), cnm.DefaultBridge, "lo")
	if got := l.namespaces(t); len(got) != 0 {
		t.Fatalf("namespaces left under RunDir: %v", got)
	}
	if ents, err := os.ReadDir(filepath.Join(l.runDir, "sandboxes")); err == nil && len(ents) > 0 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("sandbox files left under RunDir: %v", names)
	}
	c.Close()
	c3, reps := l.restart(t)
	if len(reps) != 0 {
		t.Errorf("a start after the cleanup repaired %q, want nothing", reps)
	}
	if got := len(c3.Networks()); got != 3 {
		t.Errorf("networks after the cleanup = %d, want the 3 predefined", got)
	}
	c3.Close()
	waitLinks(t, l.host.Path(), cnm.DefaultBridge, "lo")
}

// TestPrivilegedCrashInCreateNetwork: killed in the driver's CreateNetwork after the kernel
// bridge exists, before the network record is stored. The bridge is removed, the subnet is
// free again, "stable" and "old" are untouched.
func TestPrivilegedCrashInCreateNetwork(t *testing.T) {
	nstest.Privileged(t)
	l := newCrashLab(t)
	l.crash(t, crashCreateNetwork)
	doomedBr := "br-" + l.info["network_id"][:12]
	if got := links(t, l.host.Path()); !slices.Contains(got, doomedBr) {
		t.Fatalf("host links after the crash = %v, want the half-made bridge %s", got, doomedBr)
	}

	c, reps := l.restart(t)
	wantRepairs(t, reps, []string{"removed", "link " + doomedBr})
	if _, err := c.Network("doomed"); !errors.Is(err, cnm.ErrNotFound) {
		t.Fatalf("network doomed after the crash: %v, want ErrNotFound", err)
	}
	wantLinks := checkOld(t, c)
	waitLinks(t, l.host.Path(), wantLinks...)

	// The subnet and the name are free: the network can be made again, and works.
	nw, err := c.NewNetwork(t.Context(), "doomed", crashyDriver, network.WithSubnet(doomedSubnet))
	if err != nil {
		t.Fatalf("re-create doomed on %v: %v", doomedSubnet, err)
	}
	if nw.ID() == l.info["network_id"] {
		t.Fatalf("re-created network has the crashed one's ID")
	}
	mustSandbox(t, c, "new")
	connectFresh(t, c, "doomed", "new")
	connectFresh(t, c, "stable", "new")
	l.teardown(t, c)
}

// TestPrivilegedCrashInJoin: killed in the driver's Join, after the veth pair exists (host end
// on the bridge, other end in the sandbox's namespace). "connect": during Connect, so the
// endpoint has no record at all; "stored endpoint": an endpoint created (and stored) earlier,
// whose record does not say joined. The veth is removed, the sandbox is adopted without the
// interface, and the endpoint's lease is free (connect) or still held (stored endpoint).
func TestPrivilegedCrashInJoin(t *testing.T) {
	nstest.Privileged(t)
	for _, tc := range []struct{ name, point string }{
		{"connect", crashJoinConnect},
		{"stored endpoint", crashJoinStored},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := t.Context()
			l := newCrashLab(t)
			l.crash(t, tc.point)
			veth := hostVeth(l.info["endpoint_id"])
			crashed := netip.MustParsePrefix(l.info["ipv4"]).Addr()
			if got := links(t, l.host.Path()); !slices.Contains(got, veth) {
				t.Fatalf("host links after the crash = %v, want the joined veth %s", got, veth)
			}
			victimKey := filepath.Join(l.runDir, "netns", "victim")
			if got := links(t, victimKey); !slices.Equal(got, []string{l.info["ifname"], "lo"}) {
				t.Fatalf("links in victim's namespace after the crash = %v, want %s and lo", got, l.info["ifname"])
			}

			c, reps := l.restart(t)
			// The join record is committed while the driver works, so the crash finds it
			// committed or not. Committed: the sandbox finds the half-configured interface and
			// removes it (and the veth with it); the endpoint is deleted when Connect made it,
			// left otherwise. Not committed: the bridge driver removes the orphan veth.
			committed := false
			reps = optionalRepairs(t, reps, func(r string) bool {
				if strings.Contains(r, "interface "+l.info["ifname"]+" of sandbox victim") ||
					(tc.point == crashJoinConnect && strings.Contains(r, "removed endpoint victim")) {
					committed = true
					return true
				}
				return false
			})
			if committed {
				wantRepairs(t, reps)
			} else {
				wantRepairs(t, reps, []string{"removed", "link " + veth})
			}
			wantLinks := checkOld(t, c)
			waitLinks(t, l.host.Path(), wantLinks...)
			victim, err := c.Sandbox("victim")
			if err != nil {
				t.Fatalf("sandbox victim after the crash: %v", err)
			}
			if got := victim.Interfaces(); len(got) != 0 {
				t.Fatalf("victim's interfaces after the crash = %+v, want none", got)
			}
			waitLinks(t, victim.Key(), "lo")
			nw, _ := c.Network("stable")
			if _, ok := nw.Inspect().Containers["victim"]; ok {
				t.Fatalf("victim reported on stable after the crash: %+v", nw.Inspect().Containers)
			}

			switch tc.point {
			case crashJoinConnect:
				// No record, no lease: the address can be asked for again, and connects.
				if _, err := nw.Endpoint("victim"); !errors.Is(err, cnm.ErrNotFound) {
					t.Fatalf("endpoint victim after the crash: %v, want ErrNotFound", err)
				}
				ep := mustConnect(t, c, "stable", "victim", endpoint.WithIPv4(crashed))
				pingOK(t, victim, ep.Info().Gateway)
			case crashJoinStored:
				// The record is the lease: parked keeps its address, nobody else gets it, and it
				// can join now.
				parked := endpointOf(t, c, "stable", "parked")
				if got := parked.Info(); got.IPv4.Addr() != crashed || got.SandboxID != "" {
					t.Fatalf("parked after the crash = %+v, want %v and not joined", got, crashed)
				}
				mustSandbox(t, c, "thief")
				if _, err := c.Connect(ctx, "stable", "thief", endpoint.WithIPv4(crashed)); !errors.Is(err, cnm.ErrConflict) {
					t.Fatalf("connect with parked's address %v: %v, want ErrConflict", crashed, err)
				}
				if err := parked.Join(ctx, victim); err != nil {
					t.Fatal(err)
				}
				pingOK(t, victim, parked.Info().Gateway)
				pingOK(t, mustGet(t, c, "old"), crashed)
			}
			connectFresh(t, c, cnm.DefaultNetwork, "victim")
			l.teardown(t, c)
		})
	}
}

// TestPrivilegedCrashInCreateEndpoint: killed in the driver's CreateEndpoint during a Connect
// made right after NewSandbox: the sandbox (namespace and record) exists, the endpoint has an
// address from IPAM and no record. The sandbox is adopted as it is, nothing needs repairing,
// and the address is free.
func TestPrivilegedCrashInCreateEndpoint(t *testing.T) {
	nstest.Privileged(t)
	l := newCrashLab(t)
	l.crash(t, crashCreateEndpoint)
	crashed := netip.MustParsePrefix(l.info["ipv4"]).Addr()

	c, reps := l.restart(t)
	wantRepairs(t, reps) // the sandbox was stored whole; the endpoint left nothing
	wantLinks := checkOld(t, c)
	waitLinks(t, l.host.Path(), wantLinks...)
	fresh, err := c.Sandbox("fresh")
	if err != nil {
		t.Fatalf("sandbox fresh after the crash: %v", err)
	}
	if got := links(t, fresh.Key()); len(fresh.Interfaces()) != 0 || !slices.Equal(got, []string{"lo"}) {
		t.Fatalf("fresh after the crash: interfaces %+v, links %v; want none and lo", fresh.Interfaces(), got)
	}
	nw, _ := c.Network("stable")
	if _, err := nw.Endpoint("fresh"); !errors.Is(err, cnm.ErrNotFound) {
		t.Fatalf("endpoint fresh after the crash: %v, want ErrNotFound", err)
	}
	ep := mustConnect(t, c, "stable", "fresh", endpoint.WithIPv4(crashed))
	pingOK(t, fresh, ep.Info().Gateway)
	pingOK(t, mustGet(t, c, "old"), crashed)
	mustSandbox(t, c, "other")
	connectFresh(t, c, "stable", "other")
	l.teardown(t, c)
}

// TestPrivilegedCrashBeforeSandboxRecord: killed while NewSandbox stores the sandbox record,
// after its namespace was made and mounted under RunDir. The namespace is removed and the ID
// is free again.
func TestPrivilegedCrashBeforeSandboxRecord(t *testing.T) {
	nstest.Privileged(t)
	l := newCrashLab(t)
	l.crash(t, crashSandboxRecord)
	if got := l.namespaces(t); !slices.Contains(got, "ghost") {
		t.Fatalf("namespaces after the crash = %v, want ghost", got)
	}

	c, reps := l.restart(t)
	// The namespace's removal must be reported; a separate report of ghost's files is fine.
	reps = optionalRepairs(t, reps, func(r string) bool {
		return !strings.Contains(r, "netns ghost") && strings.Contains(r, "ghost")
	})
	wantRepairs(t, reps, []string{"removed", "netns ghost"})
	if got := l.namespaces(t); !slices.Equal(got, []string{"old"}) {
		t.Fatalf("namespaces after the restart = %v, want old only", got)
	}
	if _, err := c.Sandbox("ghost"); !errors.Is(err, cnm.ErrNotFound) {
		t.Fatalf("sandbox ghost after the crash: %v, want ErrNotFound", err)
	}
	// NewSandbox wrote ghost's hosts and resolv.conf before the crash: no sandbox owns them.
	checkNoFiles(t, l, "ghost")
	wantLinks := checkOld(t, c)
	waitLinks(t, l.host.Path(), wantLinks...)
	mustSandbox(t, c, "ghost")
	connectFresh(t, c, "stable", "ghost")
	l.teardown(t, c)
}

// TestPrivilegedCrashAfterSandboxRecord: killed in NewSandbox once the sandbox's record is
// committed, before its namespace was made (NewSandbox commits while the kernel works). The
// record is dropped and the ID is free again.
func TestPrivilegedCrashAfterSandboxRecord(t *testing.T) {
	nstest.Privileged(t)
	l := newCrashLab(t)
	l.crash(t, crashSandboxNamespace)
	if got := l.namespaces(t); slices.Contains(got, "ghost") {
		t.Fatalf("namespaces after the crash = %v, want no ghost", got)
	}

	c, reps := l.restart(t)
	wantRepairs(t, reps, []string{"removed record", "sandbox ghost"})
	if got := l.namespaces(t); !slices.Equal(got, []string{"old"}) {
		t.Fatalf("namespaces after the restart = %v, want old only", got)
	}
	if _, err := c.Sandbox("ghost"); !errors.Is(err, cnm.ErrNotFound) {
		t.Fatalf("sandbox ghost after the crash: %v, want ErrNotFound", err)
	}
	checkNoFiles(t, l, "ghost")
	wantLinks := checkOld(t, c)
	waitLinks(t, l.host.Path(), wantLinks...)
	mustSandbox(t, c, "ghost")
	connectFresh(t, c, "stable", "ghost")
	l.teardown(t, c)
}

// TestPrivilegedCrashInDeleteSandbox: killed while DeleteSandbox commits, after the sandbox's
// namespace (and the interfaces in it) went, before its record and its endpoints' records were
// deleted. The sandbox and its endpoints are dropped and their addresses freed.
func TestPrivilegedCrashInDeleteSandbox(t *testing.T) {
	nstest.Privileged(t)
	l := newCrashLab(t)
	l.crash(t, crashDeleteSandbox)
	if got := l.namespaces(t); slices.Contains(got, "victim") {
		t.Fatalf("namespaces after the crash = %v, want victim's gone", got)
	}

	c, reps := l.restart(t)
	// The kernel deletes the veths of a removed namespace asynchronously: the new Controller
	// may still find the host ends of victim's veths, and then rightly removes them.
	// Connect's endpoints keep their records in the run store, committed after the local
	// store's, so the crash left both.
	var victimVeths []string
	for _, id := range strings.Fields(l.info["victim_ids"]) {
		victimVeths = append(victimVeths, "link "+hostVeth(id)+":")
	}
	if len(victimVeths) != 2 || l.info["keys"] != "cnm/v1/sandboxes/victim" {
		t.Fatalf("victim's endpoints %v, crashed commit's keys %q: want two endpoints and the sandbox's record alone", victimVeths, l.info["keys"])
	}
	reps = optionalRepairs(t, reps, func(r string) bool {
		return strings.HasPrefix(r, "removed ") && slices.ContainsFunc(victimVeths, func(v string) bool { return strings.Contains(r, v) })
	})
	wantRepairs(t, reps,
		[]string{"removed", "endpoint victim", "sandbox victim"},
		[]string{"removed", "endpoint victim", "sandbox victim"},
		[]string{"removed record", "sandbox victim"})
	if _, err := c.Sandbox("victim"); !errors.Is(err, cnm.ErrNotFound) {
		t.Fatalf("sandbox victim after the crash: %v, want ErrNotFound", err)
	}
	checkNoFiles(t, l, "victim")
	wantLinks := checkOld(t, c)
	waitLinks(t, l.host.Path(), wantLinks...)
	mustSandbox(t, c, "next")
	for _, nwName := range []string{"stable", cnm.DefaultNetwork} {
		nw, _ := c.Network(nwName)
		if _, err := nw.Endpoint("victim"); !errors.Is(err, cnm.ErrNotFound) {
			t.Fatalf("endpoint victim of %s after the crash: %v, want ErrNotFound", nwName, err)
		}
		// The lost endpoint's address is free: it can be asked for again.
		crashed := netip.MustParsePrefix(l.info["victim_"+nwName]).Addr()
		ep := mustConnect(t, c, nwName, "next", endpoint.WithIPv4(crashed))
		pingOK(t, mustGet(t, c, "next"), ep.Info().Gateway)
	}
	l.teardown(t, c)
}
