package cnm_test

// Misuse of the public API (issue 20), in the unprivileged tier: calls after Close, nil
// contexts, subnets that cannot work. Each case checks the error class, that the message names
// what was wrong, and that nothing changed: the store's keys, the machine's namespaces and
// links, the sandboxes' files.

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cnmkit/cnm"
	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/drivers/driverstest"
	"github.com/cnmkit/cnm/endpoint"
	"github.com/cnmkit/cnm/ipam"
	"github.com/cnmkit/cnm/kvstore"
	"github.com/cnmkit/cnm/kvstore/boltdb"
	"github.com/cnmkit/cnm/network"
	"github.com/cnmkit/cnm/sandbox"
	"github.com/cnmkit/cnm/sandbox/sandboxtest"
	"github.com/google/go-cmp/cmp"
)

// newStoreLab is a fakeLab whose Controllers use a bbolt store the test owns: it stays open
// after Close, so that a call that Close failed to stop would change it, and the test can
// read it at any time.
func newStoreLab(t *testing.T) (*fakeLab, kvstore.Store) {
	t.Helper()
	st, err := boltdb.Open(filepath.Join(t.TempDir(), "local.db"), boltdb.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	l := &fakeLab{m: sandboxtest.NewMachine(), bridge: driverstest.NewFake(drivers.Capabilities{}), dataDir: t.TempDir(), runDir: t.TempDir()}
	l.c = l.open(t, func(cfg *cnm.Config) { cfg.Store = st })
	return l, st
}

// snapshot renders what the lab holds outside the Controller's memory: the store's keys, the
// machine's namespaces with their links, and the files under DataDir.
func (l *fakeLab) snapshot(t *testing.T, st kvstore.Store) string {
	t.Helper()
	var b strings.Builder
	pairs, err := st.List(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pairs {
		fmt.Fprintf(&b, "key %s rev %d\n", p.Key, p.Revision)
	}
	ids, err := l.m.List(l.runDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		links, _ := l.m.Links(l.runDir, id)
		fmt.Fprintf(&b, "netns %s links %v\n", id, links)
	}
	filepath.WalkDir(l.dataDir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			data, _ := os.ReadFile(p)
			fmt.Fprintf(&b, "file %s %q\n", strings.TrimPrefix(p, l.dataDir), data)
		}
		return nil
	})
	return b.String()
}

// TestCallsAfterClose: once Close has returned, every method that can fail refuses with an
// error matching ErrUnavailable, and nothing changes: the store (still open: the test owns
// it), the machine's namespaces and links, the sandboxes' files. The next Controller on the
// same state finds exactly what was made, and repairs nothing.
func TestCallsAfterClose(t *testing.T) {
	ctx := t.Context()
	l, st := newStoreLab(t)
	c := l.c
	front, err := c.NewNetwork(ctx, "front", "bridge", network.WithSubnet(netip.MustParsePrefix("10.20.0.0/24")))
	if err != nil {
		t.Fatal(err)
	}
	empty, err := c.NewNetwork(ctx, "empty", "bridge")
	if err != nil {
		t.Fatal(err)
	}
	a, err := c.NewSandbox(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.NewSandbox(ctx, "b")
	if err != nil {
		t.Fatal(err)
	}
	epA, err := c.Connect(ctx, "front", "a")
	if err != nil {
		t.Fatal(err)
	}
	spare, err := front.CreateEndpoint(ctx, "spare")
	if err != nil {
		t.Fatal(err)
	}
	evs := c.Events(ctx)
	before := l.snapshot(t, st)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, ok := <-evs; ok {
		t.Error("Events channel open after Close")
	}
	alloc, err := ipam.NewDefault(ipam.DefaultConfig{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		call func() error
	}{
		{"NewNetwork", func() error { _, err := c.NewNetwork(ctx, "x", "bridge"); return err }},
		{"DeleteNetwork", func() error { return c.DeleteNetwork(ctx, "empty") }},
		{"Network", func() error { _, err := c.Network("front"); return err }},
		{"NewSandbox", func() error { _, err := c.NewSandbox(ctx, "c"); return err }},
		{"DeleteSandbox", func() error { return c.DeleteSandbox(ctx, "b") }},
		{"DeleteSandbox(joined)", func() error { return c.DeleteSandbox(ctx, "a") }},
		{"Sandbox", func() error { _, err := c.Sandbox("a"); return err }},
		{"Connect", func() error { _, err := c.Connect(ctx, "front", "b"); return err }},
		{"Disconnect", func() error { return c.Disconnect(ctx, "front", "a") }},
		{"RegisterDriver", func() error {
			return c.RegisterDriver(ctx, "other", driverstest.NewFake(drivers.Capabilities{}))
		}},
		{"RegisterIPAMDriver", func() error { return c.RegisterIPAMDriver(ctx, "other", alloc) }},
		{"Hosts", func() error { _, err := c.Hosts(ctx); return err }},
		{"Leave", func() error { return c.Leave(ctx) }},
		{"Network.CreateEndpoint", func() error { _, err := front.CreateEndpoint(ctx, "late"); return err }},
		{"Network.Endpoint", func() error { _, err := front.Endpoint("spare"); return err }},
		{"Network.Delete", func() error { return empty.Delete(ctx) }},
		{"Endpoint.Join", func() error { return spare.Join(ctx, b) }},
		{"Endpoint.Leave", func() error { return epA.Leave(ctx, a) }},
		{"Endpoint.Delete", func() error { return spare.Delete(ctx) }},
		{"Sandbox.ReserveName", func() error { _, _, err := b.ReserveName(""); return err }},
		{"Sandbox.AddInterface", func() error {
			return b.AddInterface(ctx, sandbox.InterfaceConfig{Name: "eth0", SrcName: "nosuch"})
		}},
		{"Sandbox.RemoveInterface", func() error { return a.RemoveInterface(ctx, "eth0") }},
	} {
		err := tc.call()
		if !errors.Is(err, cnm.ErrUnavailable) || !strings.Contains(err.Error(), "closed") {
			t.Errorf("%s after Close = %v, want ErrUnavailable saying closed", tc.name, err)
		}
	}
	// The lookups that hand out objects hand out none.
	if n := c.Networks(); n != nil {
		t.Errorf("Networks after Close = %d networks, want none", len(n))
	}
	if s := c.Sandboxes(); s != nil {
		t.Errorf("Sandboxes after Close = %d sandboxes, want none", len(s))
	}
	if e := front.Endpoints(); e != nil {
		t.Errorf("Network.Endpoints after Close = %d endpoints, want none", len(e))
	}
	if diff := cmp.Diff(before, l.snapshot(t, st)); diff != "" {
		t.Errorf("calls after Close changed the lab (-before +after):\n%s", diff)
	}
	if err := c.Close(); err != nil {
		t.Errorf("Close again = %v", err)
	}

	// The next Controller finds what was made, and nothing to repair.
	c2 := l.open(t, func(cfg *cnm.Config) { cfg.Store = st })
	if r := repairLines(c2); len(r) > 0 {
		t.Errorf("repairs after a Close with refused calls: %v", r)
	}
	var nets []string
	for _, n := range c2.Networks() {
		nets = append(nets, n.Name())
	}
	if want := []string{"bridge", "empty", "front", "host", "none"}; !slices.Equal(nets, want) {
		t.Errorf("networks after restart = %v, want %v", nets, want)
	}
	var sbs []string
	for _, sb := range c2.Sandboxes() {
		sbs = append(sbs, sb.ID())
	}
	if !slices.Equal(sbs, []string{"a", "b"}) {
		t.Errorf("sandboxes after restart = %v, want [a b]", sbs)
	}
	n2, _ := c2.Network("front")
	var eps []string
	for _, ep := range n2.Endpoints() {
		eps = append(eps, ep.Name()+"@"+ep.Info().SandboxID)
	}
	if !slices.Equal(eps, []string{"a@a", "spare@"}) {
		t.Errorf("front's endpoints after restart = %v, want [a@a spare@]", eps)
	}
	if got := l.links(t, "a"); !slices.Equal(got, []string{"eth0"}) {
		t.Errorf("sandbox a's links after restart = %v, want [eth0]", got)
	}
}

// TestCloseWaitsForOperations: Close waits for an operation in flight (a driver call that
// blocks), and refuses the ones that begin meanwhile.
func TestCloseWaitsForOperations(t *testing.T) {
	ctx := t.Context()
	l := newFakeLab(t)
	c := l.c
	entered, release := make(chan struct{}), make(chan struct{})
	slow := &blockingDriver{Fake: driverstest.NewFake(drivers.Capabilities{}), entered: entered, release: release}
	if err := c.RegisterDriver(ctx, "slow", slow); err != nil {
		t.Fatal(err)
	}
	created := make(chan error, 1)
	go func() {
		_, err := c.NewNetwork(ctx, "slow", "slow")
		created <- err
	}()
	<-entered
	closed := make(chan error, 1)
	go func() { closed <- c.Close() }()
	// Close has begun once new operations are refused.
	for {
		if _, err := c.NewSandbox(ctx, "late"); errors.Is(err, cnm.ErrUnavailable) {
			break
		}
		c.DeleteSandbox(ctx, "late")
	}
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) while NewNetwork was in flight", err)
	default:
	}
	close(release)
	if err := <-created; err != nil {
		t.Errorf("NewNetwork in flight when Close began = %v, want it to finish", err)
	}
	if err := <-closed; err != nil {
		t.Errorf("Close = %v", err)
	}
}

// blockingDriver is a fake whose CreateNetwork waits for release.
type blockingDriver struct {
	*driverstest.Fake
	entered chan<- struct{}
	release <-chan struct{}
}

func (d *blockingDriver) CreateNetwork(ctx context.Context, req drivers.CreateNetworkRequest) error {
	d.entered <- struct{}{}
	<-d.release
	return d.Fake.CreateNetwork(ctx, req)
}

// TestNilContext: each method taking a context refuses a nil one with ErrInvalidParameter
// saying so, and the same call with a context then works: nothing stayed reserved (a name, a
// sandbox being deleted, the store's lock).
func TestNilContext(t *testing.T) {
	ctx := t.Context()
	var nilCtx context.Context

	// New: nothing is made in a fresh DataDir, and a New with a context works after it.
	dir := filepath.Join(t.TempDir(), "data")
	m := sandboxtest.NewMachine()
	cfg := cnm.Config{DataDir: dir, RunDir: t.TempDir(), Machine: m, Drivers: map[string]drivers.Driver{"bridge": driverstest.NewFake(drivers.Capabilities{})}}
	if _, err := cnm.New(nilCtx, cfg); !isNilCtxErr(err) {
		t.Fatalf("New(nil) = %v, want ErrInvalidParameter saying the context is nil", err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("New(nil) left %s: %v", dir, err)
	}
	c, err := cnm.New(ctx, cfg)
	if err != nil {
		t.Fatalf("New after New(nil): %v", err)
	}
	t.Cleanup(func() { c.Close() })

	var (
		nw    network.Network
		ep    endpoint.Endpoint
		sb    sandbox.Sandbox
		alloc ipam.Allocator
	)
	alloc, err = ipam.NewDefault(ipam.DefaultConfig{})
	if err != nil {
		t.Fatal(err)
	}
	for _, step := range []struct {
		name string
		call func(ctx context.Context) error
	}{
		{"NewNetwork", func(ctx context.Context) (err error) { nw, err = c.NewNetwork(ctx, "n1", "bridge"); return err }},
		{"NewSandbox", func(ctx context.Context) (err error) { sb, err = c.NewSandbox(ctx, "s1"); return err }},
		{"Connect", func(ctx context.Context) error { _, err := c.Connect(ctx, "n1", "s1"); return err }},
		{"Disconnect", func(ctx context.Context) error { return c.Disconnect(ctx, "n1", "s1") }},
		{"Network.CreateEndpoint", func(ctx context.Context) (err error) { ep, err = nw.CreateEndpoint(ctx, "e1"); return err }},
		{"Endpoint.Join", func(ctx context.Context) error { return ep.Join(ctx, sb) }},
		{"Sandbox.RemoveInterface", func(ctx context.Context) error { return sb.RemoveInterface(ctx, "nosuch") }},
		{"Endpoint.Leave", func(ctx context.Context) error { return ep.Leave(ctx, sb) }},
		{"Endpoint.Delete", func(ctx context.Context) error { return ep.Delete(ctx) }},
		{"DeleteNetwork", func(ctx context.Context) error { return c.DeleteNetwork(ctx, "n1") }},
		{"DeleteSandbox", func(ctx context.Context) error { return c.DeleteSandbox(ctx, "s1") }},
		{"RegisterDriver", func(ctx context.Context) error {
			return c.RegisterDriver(ctx, "d2", driverstest.NewFake(drivers.Capabilities{}))
		}},
		{"RegisterIPAMDriver", func(ctx context.Context) error { return c.RegisterIPAMDriver(ctx, "i2", alloc) }},
		{"Leave", func(ctx context.Context) error { return c.Leave(ctx) }},
	} {
		if err := step.call(nilCtx); !isNilCtxErr(err) {
			t.Fatalf("%s(nil) = %v, want ErrInvalidParameter saying the context is nil", step.name, err)
		}
		if err := step.call(ctx); err != nil {
			t.Fatalf("%s after %s(nil): %v", step.name, step.name, err)
		}
	}
	if err := nw.Delete(nilCtx); !isNilCtxErr(err) {
		t.Errorf("Network.Delete(nil) = %v, want ErrInvalidParameter", err)
	}
	if err := sb.AddInterface(nilCtx, sandbox.InterfaceConfig{Name: "eth0"}); !isNilCtxErr(err) {
		t.Errorf("Sandbox.AddInterface(nil) = %v, want ErrInvalidParameter", err)
	}
	if _, ok := <-c.Events(nilCtx); ok {
		t.Error("Events(nil) gave an open channel, want a closed one")
	}
	if _, err := c.Hosts(nilCtx); !isNilCtxErr(err) {
		t.Errorf("Hosts(nil) = %v, want ErrInvalidParameter", err)
	}
}

func isNilCtxErr(err error) bool {
	return errors.Is(err, cnm.ErrInvalidParameter) && strings.Contains(err.Error(), "context is nil")
}

// TestNewCancelledLeavesNothing: New with a cancelled context on a fresh DataDir makes no
// file, nor does a New that fails later (here: an unknown IPAM driver name); an existing
// DataDir keeps what it had.
func TestNewCancelledLeavesNothing(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	cfg := cnm.Config{DataDir: dir, RunDir: t.TempDir(), Machine: sandboxtest.NewMachine(), Drivers: map[string]drivers.Driver{"bridge": driverstest.NewFake(drivers.Capabilities{})}}
	cancelled, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := cnm.New(cancelled, cfg); !errors.Is(err, context.Canceled) {
		t.Fatalf("New(cancelled) = %v, want context.Canceled", err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("New(cancelled) left %s: %v", dir, err)
	}
	bad := cfg
	bad.IPAMDrivers = map[string]ipam.Allocator{"bad/name": nil}
	if _, err := cnm.New(t.Context(), bad); err == nil {
		t.Fatal("New with a bad IPAM driver name succeeded")
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a failed New left %s: %v", dir, err)
	}
	// A used DataDir keeps its store when a later New fails.
	c, err := cnm.New(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if _, err := cnm.New(t.Context(), bad); err == nil {
		t.Fatal("New with a bad IPAM driver name succeeded")
	}
	if _, err := os.Stat(filepath.Join(dir, "local.db")); err != nil {
		t.Errorf("a failed New on a used DataDir removed its store: %v", err)
	}
}

// TestSubnetsThatCannotWork: NewNetwork refuses subnets of loopback, multicast, IPv6
// link-local and IPv4-mapped addresses (ErrInvalidParameter naming the value), and an
// explicit subnet that overlaps a host route (ErrConflict naming the route) unless
// network.WithHostRouteOverlap is given; the routes to its own networks are left to IPAM,
// whose error names the network. Nothing is left behind by a refusal.
func TestSubnetsThatCannotWork(t *testing.T) {
	ctx := t.Context()
	l, st := newStoreLab(t)
	c := l.c
	l.m.SetRoutes(netip.MustParsePrefix("10.99.0.0/16"), netip.MustParsePrefix("fd99::/64"))
	before := l.snapshot(t, st)
	for _, tc := range []struct {
		subnet string
		class  error
		names  []string
	}{
		{"127.0.0.0/24", cnm.ErrInvalidParameter, []string{"127.0.0.0/24", "loopback"}},
		{"224.1.0.0/24", cnm.ErrInvalidParameter, []string{"224.1.0.0/24", "multicast"}},
		{"fe80::/64", cnm.ErrInvalidParameter, []string{"fe80::/64", "link-local"}},
		{"::ffff:10.0.0.0/104", cnm.ErrInvalidParameter, []string{"::ffff:10.0.0.0/104", "IPv4-mapped"}},
		{"10.99.1.0/24", cnm.ErrConflict, []string{"10.99.1.0/24", "10.99.0.0/16", "WithHostRouteOverlap"}},
		{"10.0.0.0/8", cnm.ErrConflict, []string{"10.0.0.0/8", "10.99.0.0/16"}},
		{"fd99::/64", cnm.ErrConflict, []string{"fd99::/64", "route to fd99::/64"}},
	} {
		_, err := c.NewNetwork(ctx, "n", "bridge", network.WithSubnet(netip.MustParsePrefix(tc.subnet)))
		if !errors.Is(err, tc.class) {
			t.Errorf("NewNetwork(%s) = %v, want %v", tc.subnet, err, tc.class)
			continue
		}
		for _, s := range tc.names {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("NewNetwork(%s) = %v, want it to name %s", tc.subnet, err, s)
			}
		}
	}
	if diff := cmp.Diff(before, l.snapshot(t, st)); diff != "" {
		t.Errorf("refused subnets changed the lab (-before +after):\n%s", diff)
	}
	if _, err := c.Network("n"); !errors.Is(err, cnm.ErrNotFound) {
		t.Errorf("Network(n) after refusals = %v, want ErrNotFound (name not kept)", err)
	}
	// Opting in works; an auto-picked subnet avoids the route anyway.
	n, err := c.NewNetwork(ctx, "n", "bridge", network.WithSubnet(netip.MustParsePrefix("10.99.1.0/24")), network.WithHostRouteOverlap())
	if err != nil {
		t.Fatalf("NewNetwork with WithHostRouteOverlap: %v", err)
	}
	if auto, err := c.NewNetwork(ctx, "auto", "bridge"); err != nil {
		t.Fatal(err)
	} else if sub := netip.MustParsePrefix(auto.Inspect().IPAM.Config[0].Subnet); sub.Overlaps(netip.MustParsePrefix("10.99.0.0/16")) {
		t.Errorf("auto-picked subnet %s overlaps the host route", sub)
	}
	// A route to one of its own networks (a bridge's connected route) is not the host's: the
	// overlap is reported against the network.
	l.m.SetRoutes(netip.MustParsePrefix(n.Inspect().IPAM.Config[0].Subnet))
	if _, err := c.NewNetwork(ctx, "m", "bridge", network.WithSubnet(netip.MustParsePrefix("10.99.1.0/25"))); !errors.Is(err, cnm.ErrConflict) || !strings.Contains(err.Error(), `network "n"`) {
		t.Errorf("NewNetwork on n's subnet = %v, want ErrConflict naming network n", err)
	}
}
