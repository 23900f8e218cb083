package cnm_test

import (
	"context"
	"errors"
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
	"github.com/cnmkit/cnm/internal/epobj"
	"github.com/cnmkit/cnm/internal/runstore"
	"github.com/cnmkit/cnm/kvstore"
	"github.com/cnmkit/cnm/network"
	"github.com/cnmkit/cnm/sandbox/sandboxtest"
)

// TestRunStoreRecords: Connect's endpoint for a sandbox with a namespace keeps its record in
// the run store, while an endpoint made by CreateEndpoint and a host-mode sandbox's endpoint
// keep theirs in the local store; a restart restores all three; a reboot (the machine's
// namespaces and the RunDir's tmpfs emptied, DataDir kept) leaves no endpoint of the sandboxes
// it removed, and their addresses are free.
func TestRunStoreRecords(t *testing.T) {
	ctx := t.Context()
	l := newFakeLab(t)
	c := l.c
	n := mustNetwork(t, c, "n1", network.WithSubnet(netip.MustParsePrefix("10.25.0.0/24")))
	mustSandbox(t, c, "box")
	hostbox := mustSandbox(t, c, "hostbox", cnm.HostMode())
	connected := mustConnect(t, c, "n1", "box")
	made, err := n.CreateEndpoint(ctx, "made")
	if err != nil {
		t.Fatal(err)
	}
	box, err := c.Sandbox("box")
	if err != nil {
		t.Fatal(err)
	}
	if err := made.Join(ctx, box); err != nil {
		t.Fatal(err)
	}
	hostNet, err := c.Network("host")
	if err != nil {
		t.Fatal(err)
	}
	hosted := mustConnect(t, c, "host", hostbox.ID())

	where := func(c *cnm.Controller, nid, id string) string {
		t.Helper()
		var in []string
		for name, s := range map[string]kvstore.Store{"local": cnm.StoreForTest(c), "run": cnm.RunStoreForTest(c)} {
			_, err := s.Get(ctx, epobj.Key(nid, id))
			switch {
			case err == nil:
				in = append(in, name)
			case !errors.Is(err, kvstore.ErrKeyNotFound):
				t.Fatalf("%s store: get endpoint %s: %v", name, id, err)
			}
		}
		slices.Sort(in)
		return strings.Join(in, "+")
	}
	for _, tc := range []struct {
		name    string
		nid, id string
		want    string
	}{
		{"Connect to a namespace sandbox", n.ID(), connected.ID(), "run"},
		{"CreateEndpoint then Join", n.ID(), made.ID(), "local"},
		{"Connect to a host-mode sandbox", hostNet.ID(), hosted.ID(), "local"},
	} {
		if got := where(c, tc.nid, tc.id); got != tc.want {
			t.Errorf("%s: record in %q, want %q", tc.name, got, tc.want)
		}
	}

	// A restart (the process ends, the machine stays) restores all three, joined.
	c.Close()
	c = l.open(t, nil)
	for _, tc := range []struct{ nw, ep, sb string }{{"n1", "box", "box"}, {"n1", "made", "box"}, {"host", "hostbox", "hostbox"}} {
		nw, err := c.Network(tc.nw)
		if err != nil {
			t.Fatal(err)
		}
		ep, err := nw.Endpoint(tc.ep)
		if err != nil {
			t.Fatalf("after a restart: endpoint %s of %s: %v", tc.ep, tc.nw, err)
		}
		if got := ep.Info().SandboxID; got != tc.sb {
			t.Errorf("after a restart: endpoint %s of %s joined to %q, want %q", tc.ep, tc.nw, got, tc.sb)
		}
	}
	if err := c.Disconnect(ctx, "n1", "box"); err != nil {
		t.Fatal(err)
	}
	if got := where(c, n.ID(), connected.ID()); got != "" {
		t.Fatalf("after Disconnect: record in %q, want none", got)
	}
	again := mustConnect(t, c, "n1", "box")
	addr := again.Info().IPv4.Addr()
	c.Close()

	// A reboot: the namespaces and RunDir are gone, DataDir stays.
	reboot := &fakeLab{m: sandboxtest.NewMachine(), bridge: driverstest.NewFake(drivers.Capabilities{}), dataDir: l.dataDir, runDir: t.TempDir()}
	c = reboot.open(t, nil)
	if _, err := c.Sandbox("box"); !errors.Is(err, cnm.ErrNotFound) {
		t.Fatalf("after a reboot: sandbox box: %v, want ErrNotFound", err)
	}
	nw, err := c.Network("n1")
	if err != nil {
		t.Fatal(err)
	}
	if eps := nw.Endpoints(); len(eps) != 0 {
		t.Fatalf("after a reboot: n1 has %d endpoints, want none", len(eps))
	}
	mustSandbox(t, c, "next")
	if ep := mustConnect(t, c, "n1", "next", endpoint.WithIPv4(addr)); ep.Info().IPv4.Addr() != addr {
		t.Fatalf("after a reboot: Connect asking for %s got %s", addr, ep.Info().IPv4.Addr())
	}
}

// TestRunStoreUnreadable: a run store file that cannot be read (a power cut with RunDir on a
// disk) is started afresh, and New says so in Repairs.
func TestRunStoreUnreadable(t *testing.T) {
	l := newFakeLab(t)
	l.c.Close()
	path := filepath.Join(l.runDir, "records.log")
	if err := os.WriteFile(path, []byte(strings.Repeat("not a journal ", 512)), 0o600); err != nil {
		t.Fatal(err)
	}
	c := l.open(t, nil)
	var found bool
	for _, r := range c.Repairs() {
		found = found || (strings.Contains(r.Object, "run store") && r.Action == "removed")
	}
	if !found {
		t.Fatalf("repairs %v: want the run store removed", c.Repairs())
	}
	mustNetwork(t, c, "n1", network.WithSubnet(netip.MustParsePrefix("10.26.0.0/24")))
	mustSandbox(t, c, "box")
	mustConnect(t, c, "n1", "box")
}

// failingStore is a run store whose writes fail while fail is set.
type failingStore struct {
	*runstore.Store
	fail error
}

func (s *failingStore) AtomicPut(ctx context.Context, key string, value []byte, prev uint64) (uint64, error) {
	if s.fail != nil {
		return 0, s.fail
	}
	return s.Store.AtomicPut(ctx, key, value, prev)
}

// TestRunStoreCommitFails: Connect commits its run-store record before any kernel work, so a
// commit that fails leaves no interface, no Join in the driver, no endpoint and no lease.
func TestRunStoreCommitFails(t *testing.T) {
	ctx := t.Context()
	l := newFakeLab(t)
	l.c.Close()
	rs, _, err := runstore.Open(filepath.Join(t.TempDir(), "records.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rs.Close() })
	boom := errors.New("boom")
	fs := &failingStore{Store: rs, fail: boom}
	c := l.open(t, func(cfg *cnm.Config) { cfg.RunStore = fs })
	n := mustNetwork(t, c, "n1", network.WithSubnet(netip.MustParsePrefix("10.27.0.0/24")))
	mustSandbox(t, c, "box")
	addr := netip.MustParseAddr("10.27.0.9")
	if _, err := c.Connect(ctx, "n1", "box", endpoint.WithIPv4(addr)); !errors.Is(err, boom) {
		t.Fatalf("Connect with the run store failing = %v, want boom", err)
	}
	if links := l.links(t, "box"); len(links) != 0 {
		t.Errorf("box has links %v after the failed Connect, want none", links)
	}
	if slices.ContainsFunc(l.bridge.Calls(), func(c string) bool { return strings.HasPrefix(c, "Join ") }) {
		t.Errorf("the driver was asked to Join: %v", l.bridge.Calls())
	}
	if eps := n.Endpoints(); len(eps) != 0 {
		t.Errorf("n1 has %d endpoints after the failed Connect, want none", len(eps))
	}
	fs.fail = nil
	if ep := mustConnect(t, c, "n1", "box", endpoint.WithIPv4(addr)); ep.Info().IPv4.Addr() != addr {
		t.Fatalf("Connect again got %s, want %s (its lease was not released)", ep.Info().IPv4.Addr(), addr)
	}
}

// TestRunStoreHeldElsewhere: a run store another process holds makes New fail with
// ErrUnavailable, and leaves its journal as it was (only a file that is not a journal is
// started afresh).
func TestRunStoreHeldElsewhere(t *testing.T) {
	ctx := t.Context()
	l := newFakeLab(t)
	mustNetwork(t, l.c, "n1", network.WithSubnet(netip.MustParsePrefix("10.28.0.0/24")))
	mustSandbox(t, l.c, "box")
	mustConnect(t, l.c, "n1", "box")
	l.c.Close()
	path := filepath.Join(l.runDir, "records.log")
	held, _, err := runstore.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	before, err := held.List(ctx, "")
	if err != nil || len(before) != 1 {
		t.Fatalf("journal holds %v, %v; want the one endpoint record", before, err)
	}
	if _, err := cnm.New(ctx, cnm.Config{DataDir: t.TempDir(), RunDir: l.runDir, Machine: l.m,
		Drivers: map[string]drivers.Driver{"bridge": l.bridge}}); !errors.Is(err, cnm.ErrUnavailable) {
		t.Fatalf("New with the run store held = %v, want ErrUnavailable", err)
	}
	held.Close()
	again, _, err := runstore.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if after, err := again.List(ctx, ""); err != nil || len(after) != 1 || after[0].Key != before[0].Key {
		t.Fatalf("journal after the refused New holds %v, %v; want %v", after, err, before)
	}
}
