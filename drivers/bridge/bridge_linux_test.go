package bridge

import (
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/drivers/driverstest"
	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/cnmkit/cnm/internal/netns"
	"github.com/cnmkit/cnm/internal/nstest"
	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

var (
	subnet4 = netip.MustParsePrefix("10.123.0.0/24")
	gw4     = netip.MustParseAddr("10.123.0.1")
	subnet6 = netip.MustParsePrefix("fd00:123::/64")
	gw6     = netip.MustParseAddr("fd00:123::1")
	ipv4    = []drivers.IPAMData{{Subnet: subnet4, Gateway: gw4}}
	ipv6    = []drivers.IPAMData{{Subnet: subnet6, Gateway: gw6}}
)

// testEnv is a "host" namespace with a driver in it and a netlink handle to check on it.
type testEnv struct {
	host *netns.NS
	h    *netlink.Handle
	d    *Driver
}

// newEnv makes a host namespace and a driver for it. When the test ends, after the test's own
// cleanups, it checks that the host namespace holds nothing but lo.
func newEnv(t testing.TB) *testEnv {
	t.Helper()
	e := &testEnv{host: nstest.NewNS(t)}
	e.h = handleAt(t, e.host)
	e.d = newDriver(t, e.host)
	t.Cleanup(func() {
		e.d.Close() // a driver restart put there
		e.onlyLo(t)
	})
	return e
}

// restart closes the env's driver, as a process that ends would, and puts a new one for the
// same host namespace in its place; the cleanups registered before use the new one.
func (e *testEnv) restart(t testing.TB) {
	t.Helper()
	e.d.Close()
	d, err := New(Config{
		HostNetns: e.host.Path(),
		Firewall:  testFirewall,
		Logger:    slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatal(err)
	}
	e.d = d
}

// newDriver returns a driver for the host namespace, closed when the test ends.
func newDriver(t testing.TB, host *netns.NS) *Driver {
	t.Helper()
	d, err := New(Config{
		HostNetns: host.Path(),
		Firewall:  testFirewall,
		Logger:    slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	noProcesses(t, d)
	return d
}

func handleAt(t testing.TB, ns *netns.NS) *netlink.Handle {
	t.Helper()
	h, err := netlink.NewHandleAt(ns.Handle(), unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

func (e *testEnv) onlyLo(t testing.TB) {
	t.Helper()
	if names := linkNames(t, e.h); !slices.Equal(names, []string{"lo"}) {
		t.Errorf("links left in the host namespace: %v, want only lo", names)
	}
}

func linkNames(t testing.TB, h *netlink.Handle) []string {
	t.Helper()
	links, err := h.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range links {
		names = append(names, l.Attrs().Name)
	}
	slices.Sort(names)
	return names
}

// createNetwork creates a network and deletes it when the test ends.
func (e *testEnv) createNetwork(t testing.TB, req drivers.CreateNetworkRequest) {
	t.Helper()
	if req.NetworkID == "" {
		req.NetworkID = driverstest.NewNetworkID()
	}
	if err := e.d.CreateNetwork(t.Context(), req); err != nil {
		t.Fatalf("CreateNetwork: %v", err)
	}
	t.Cleanup(func() {
		if err := e.d.DeleteNetwork(t.Context(), drivers.DeleteNetworkRequest{NetworkID: req.NetworkID}); err != nil {
			t.Errorf("DeleteNetwork: %v", err)
		}
	})
}

func (e *testEnv) link(t testing.TB, name string) netlink.Link {
	t.Helper()
	l, err := e.h.LinkByName(name)
	if err != nil {
		t.Fatalf("link %s: %v", name, err)
	}
	return l
}

func addrsOf(t testing.TB, h *netlink.Handle, l netlink.Link) []string {
	t.Helper()
	list, err := h.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, a := range list {
		if a.IP.IsLinkLocalUnicast() {
			continue
		}
		out = append(out, a.IPNet.String())
	}
	slices.Sort(out)
	return out
}

func TestPrivilegedConformance(t *testing.T) {
	nstest.Privileged(t)
	driverstest.Run(t, driverstest.Harness{
		New: func(t *testing.T) drivers.Driver {
			host := nstest.NewNS(t)
			h := handleAt(t, host)
			t.Cleanup(func() {
				if names := linkNames(t, h); !slices.Equal(names, []string{"lo"}) {
					t.Errorf("links left in the host namespace: %v, want only lo", names)
				}
			})
			return newDriver(t, host)
		},
		Options: NetworkOptions{MTU: 1400},
		IPv4:    ipv4,
		Sandbox: func(t *testing.T) (string, int) {
			ns := nstest.NewNS(t)
			return ns.Path(), ns.FD()
		},
	})
}

func TestPrivilegedCreateNetwork(t *testing.T) {
	nstest.Privileged(t)
	e := newEnv(t)
	nid := driverstest.NewNetworkID()
	req := drivers.CreateNetworkRequest{
		NetworkID: nid, Name: "n1", Options: NetworkOptions{MTU: 1400},
		IPv4: ipv4, IPv6: ipv6, EnableIPv6: true,
	}
	e.createNetwork(t, req)
	name := "br-" + nid.Short()
	check := func(when string) {
		t.Helper()
		l := e.link(t, name)
		a := l.Attrs()
		if l.Type() != "bridge" || a.MTU != 1400 || a.Alias != "cnm:"+string(nid) || a.Flags&net.FlagUp == 0 {
			t.Errorf("%s: %s is a %s, MTU %d, alias %q, flags %v; want an up bridge, MTU 1400, alias cnm:<id>",
				when, name, l.Type(), a.MTU, a.Alias, a.Flags)
		}
		if diff := cmp.Diff([]string{"10.123.0.1/24", "fd00:123::1/64"}, addrsOf(t, e.h, l)); diff != "" {
			t.Errorf("%s: bridge addresses (-want +got):\n%s", when, diff)
		}
	}
	check("after create")

	if err := e.d.CreateNetwork(t.Context(), req); err != nil {
		t.Fatalf("CreateNetwork again: %v", err)
	}
	check("after create again")

	// A restart: the bridge is down and lost an address; a new driver adopts and repairs it.
	l := e.link(t, name)
	if err := e.h.LinkSetDown(l); err != nil {
		t.Fatal(err)
	}
	if err := e.h.AddrDel(l, bridgeAddr(netip.PrefixFrom(gw4, 24))); err != nil {
		t.Fatal(err)
	}
	d2 := newDriver(t, e.host)
	if err := d2.CreateNetwork(t.Context(), req); err != nil {
		t.Fatalf("CreateNetwork after restart: %v", err)
	}
	check("after restart")
	if got := e.link(t, name).Attrs().Index; got != l.Attrs().Index {
		t.Errorf("bridge re-created (index %d, was %d), want it adopted", got, l.Attrs().Index)
	}
	// Another network may not take the name.
	err := d2.CreateNetwork(t.Context(), drivers.CreateNetworkRequest{
		NetworkID: driverstest.NewNetworkID(), Options: NetworkOptions{BridgeName: name}, IPv4: ipv4,
	})
	if !errors.Is(err, errclass.ErrConflict) {
		t.Errorf("second network with bridge name %s: %v, want a conflict", name, err)
	}

	if err := d2.DeleteNetwork(t.Context(), drivers.DeleteNetworkRequest{NetworkID: nid}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.h.LinkByName(name); !errors.As(err, new(netlink.LinkNotFoundError)) {
		t.Errorf("bridge %s after DeleteNetwork: %v, want it gone", name, err)
	}
}

func TestPrivilegedDeleteNetworkAfterRestart(t *testing.T) {
	nstest.Privileged(t)
	e := newEnv(t)
	nid := driverstest.NewNetworkID()
	e.createNetwork(t, drivers.CreateNetworkRequest{NetworkID: nid, Options: NetworkOptions{BridgeName: "custom0"}, IPv4: ipv4})
	// A fresh driver never told of the network finds its bridge by the alias.
	d2 := newDriver(t, e.host)
	if err := d2.DeleteNetwork(t.Context(), drivers.DeleteNetworkRequest{NetworkID: nid}); err != nil {
		t.Fatal(err)
	}
	if names := linkNames(t, e.h); !slices.Equal(names, []string{"lo"}) {
		t.Errorf("links after DeleteNetwork = %v, want only lo", names)
	}
}

func TestPrivilegedSameBridgeName(t *testing.T) {
	nstest.Privileged(t)
	e := newEnv(t)
	opts := NetworkOptions{BridgeName: "shared0"}
	e.createNetwork(t, drivers.CreateNetworkRequest{Options: opts, IPv4: ipv4})
	err := e.d.CreateNetwork(t.Context(), drivers.CreateNetworkRequest{
		NetworkID: driverstest.NewNetworkID(), Options: opts, IPv4: ipv4,
	})
	if !errors.Is(err, errclass.ErrConflict) {
		t.Fatalf("second network on bridge shared0: %v, want a conflict", err)
	}
}

func TestPrivilegedForeignLink(t *testing.T) {
	nstest.Privileged(t)
	e := newEnv(t)
	for _, foreign := range []netlink.Link{
		&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "taken0", MTU: 1500}, PeerName: "taken0-peer"},
		&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "taken1", MTU: 1500}},
	} {
		name := foreign.Attrs().Name
		if err := e.h.LinkAdd(foreign); err != nil {
			t.Fatal(err)
		}
		before := e.link(t, name)
		nid := driverstest.NewNetworkID()
		err := e.d.CreateNetwork(t.Context(), drivers.CreateNetworkRequest{
			NetworkID: nid, Options: NetworkOptions{BridgeName: name, MTU: 9000}, IPv4: ipv4,
		})
		var ce *errclass.ConflictError
		if !errors.As(err, &ce) || !strings.Contains(err.Error(), "foreign device") {
			t.Errorf("CreateNetwork on foreign %s %s: %v, want a conflict about a foreign device", foreign.Type(), name, err)
		}
		after := e.link(t, name)
		if a, b := after.Attrs(), before.Attrs(); a.Index != b.Index || a.MTU != b.MTU || a.Alias != b.Alias || a.Flags != b.Flags {
			t.Errorf("foreign %s changed: %+v, was %+v", name, a, b)
		}
		if got := addrsOf(t, e.h, after); len(got) != 0 {
			t.Errorf("foreign %s got addresses %v", name, got)
		}
		// DeleteNetwork leaves it alone too.
		if err := e.d.DeleteNetwork(t.Context(), drivers.DeleteNetworkRequest{NetworkID: nid}); err != nil {
			t.Errorf("DeleteNetwork: %v", err)
		}
		e.link(t, name)
		if err := e.h.LinkDel(after); err != nil {
			t.Fatal(err)
		}
	}
}

func TestPrivilegedAdoptUnaliasedDefaultBridge(t *testing.T) {
	nstest.Privileged(t)
	e := newEnv(t)
	nid := driverstest.NewNetworkID()
	// What a crash between creating the bridge and setting its alias leaves.
	if err := e.h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br-" + nid.Short()}}); err != nil {
		t.Fatal(err)
	}
	e.createNetwork(t, drivers.CreateNetworkRequest{NetworkID: nid, IPv4: ipv4})
	if got := e.link(t, "br-"+nid.Short()).Attrs().Alias; got != "cnm:"+string(nid) {
		t.Errorf("alias after adoption = %q", got)
	}
}

func TestPrivilegedBadOptions(t *testing.T) {
	nstest.Privileged(t)
	e := newEnv(t)
	for _, o := range []NetworkOptions{{MTU: 50}, {MTU: 70000}, {BridgeName: "bad/name"}, {BridgeName: "sixteen-chars-xx"}} {
		err := e.d.CreateNetwork(t.Context(), drivers.CreateNetworkRequest{
			NetworkID: driverstest.NewNetworkID(), Options: o, IPv4: ipv4,
		})
		if !errors.Is(err, errclass.ErrInvalidParameter) {
			t.Errorf("CreateNetwork with %+v: %v, want an invalid parameter", o, err)
		}
		if names := linkNames(t, e.h); !slices.Equal(names, []string{"lo"}) {
			t.Errorf("links after CreateNetwork with %+v: %v, want only lo", o, names)
		}
	}
}

// TestPrivilegedCreateNetworkRollback makes the second address fail (the same gateway twice)
// and checks that the half-made bridge is removed.
func TestPrivilegedCreateNetworkRollback(t *testing.T) {
	nstest.Privileged(t)
	e := newEnv(t)
	nid := driverstest.NewNetworkID()
	err := e.d.CreateNetwork(t.Context(), drivers.CreateNetworkRequest{NetworkID: nid, IPv4: append(slices.Clone(ipv4), ipv4...)})
	if err == nil {
		t.Fatal("CreateNetwork with a duplicate gateway: nil error")
	}
	if names := linkNames(t, e.h); !slices.Equal(names, []string{"lo"}) {
		t.Errorf("links after a failed CreateNetwork: %v, want only lo", names)
	}
	// The name is free again.
	e.createNetwork(t, drivers.CreateNetworkRequest{NetworkID: nid, IPv4: ipv4})
}

func TestPrivilegedJoin(t *testing.T) {
	nstest.Privileged(t)
	e := newEnv(t)
	nid, eid := driverstest.NewNetworkID(), driverstest.NewEndpointID()
	e.createNetwork(t, drivers.CreateNetworkRequest{NetworkID: nid, Options: NetworkOptions{MTU: 1450}, IPv4: ipv4, IPv6: ipv6})
	addr := netip.PrefixFrom(netip.MustParseAddr("10.123.0.2"), 24)
	res, err := e.d.CreateEndpoint(t.Context(), drivers.CreateEndpointRequest{NetworkID: nid, EndpointID: eid, IPv4: addr})
	if err != nil {
		t.Fatal(err)
	}
	if res.MAC.String() != "02:42:0a:7b:00:02" {
		t.Errorf("CreateEndpoint MAC = %v, want 02:42:0a:7b:00:02", res.MAC)
	}

	sb := nstest.NewNS(t)
	sh := handleAt(t, sb)
	jres, err := e.d.Join(t.Context(), drivers.JoinRequest{
		NetworkID: nid, EndpointID: eid, SandboxKey: sb.Path(), NetnsFD: sb.FD(),
		IfName: "eth0", MAC: res.MAC, IPv4: addr,
	})
	if err != nil {
		t.Fatalf("Join: %v", err)
	}
	if want := (drivers.JoinResult{InterfaceInSandbox: true, Gateway: gw4, GatewayIPv6: gw6}); !joinResultEqual(jres, want) {
		t.Errorf("Join = %+v, want %+v", jres, want)
	}

	br := e.link(t, "br-"+nid.Short())
	host := e.link(t, hostVethName(eid))
	if a := host.Attrs(); host.Type() != "veth" || a.MasterIndex != br.Attrs().Index || a.Flags&net.FlagUp == 0 || a.MTU != 1450 {
		t.Errorf("host end %s: type %s, master %d (bridge %d), flags %v, MTU %d; want an up veth on the bridge, MTU 1450",
			a.Name, host.Type(), a.MasterIndex, br.Attrs().Index, a.Flags, a.MTU)
	}
	c, err := sh.LinkByName("eth0")
	if err != nil {
		t.Fatalf("eth0 in the sandbox: %v", err)
	}
	if a := c.Attrs(); a.HardwareAddr.String() != res.MAC.String() || a.MTU != 1450 || c.Type() != "veth" {
		t.Errorf("sandbox eth0: type %s, MAC %s, MTU %d; want a veth with MAC %s, MTU 1450", c.Type(), a.HardwareAddr, a.MTU, res.MAC)
	}
	if _, err := e.h.LinkByName("eth0"); err == nil {
		t.Error("eth0 is in the host namespace")
	}

	// Configure the sandbox end by hand, as the sandbox would, and ping the gateway.
	if err := sh.AddrAdd(c, bridgeAddr(addr)); err != nil {
		t.Fatal(err)
	}
	if err := sh.LinkSetUp(c); err != nil {
		t.Fatal(err)
	}
	if out, ok := nstest.Ping(sb.Path(), gw4.String(), 3); !ok {
		t.Errorf("ping from the sandbox to the gateway %s failed:\n%s", gw4, out)
	}

	// Leave removes both ends; leaving again is fine.
	lreq := drivers.LeaveRequest{NetworkID: nid, EndpointID: eid, SandboxKey: sb.Path(), IfName: "eth0"}
	for range 2 {
		if err := e.d.Leave(t.Context(), lreq); err != nil {
			t.Fatalf("Leave: %v", err)
		}
	}
	if _, err := e.h.LinkByName(hostVethName(eid)); err == nil {
		t.Error("host end still there after Leave")
	}
	if _, err := sh.LinkByName("eth0"); err == nil {
		t.Error("sandbox eth0 still there after Leave")
	}
}

func joinResultEqual(a, b drivers.JoinResult) bool {
	return cmp.Equal(a, b, cmp.Comparer(func(x, y netip.Addr) bool { return x == y }),
		cmp.Comparer(func(x, y netip.Prefix) bool { return x == y }))
}

func TestPrivilegedJoinInternal(t *testing.T) {
	nstest.Privileged(t)
	e := newEnv(t)
	nid, eid := driverstest.NewNetworkID(), driverstest.NewEndpointID()
	e.createNetwork(t, drivers.CreateNetworkRequest{NetworkID: nid, IPv4: ipv4, Internal: true})
	sb := nstest.NewNS(t)
	res, err := e.d.Join(t.Context(), drivers.JoinRequest{NetworkID: nid, EndpointID: eid, NetnsFD: sb.FD(), IfName: "eth0"})
	if err != nil {
		t.Fatal(err)
	}
	if res.Gateway.IsValid() || res.GatewayIPv6.IsValid() {
		t.Errorf("Join on an internal network gives gateways %v %v, want none", res.Gateway, res.GatewayIPv6)
	}
	// The gateway address is on the bridge all the same.
	if got := addrsOf(t, e.h, e.link(t, "br-"+nid.Short())); !slices.Equal(got, []string{"10.123.0.1/24"}) {
		t.Errorf("internal bridge addresses = %v", got)
	}
	if err := e.d.Leave(t.Context(), drivers.LeaveRequest{NetworkID: nid, EndpointID: eid}); err != nil {
		t.Fatal(err)
	}
}

func TestPrivilegedJoinStaleVeth(t *testing.T) {
	nstest.Privileged(t)
	e := newEnv(t)
	nid, eid := driverstest.NewNetworkID(), driverstest.NewEndpointID()
	e.createNetwork(t, drivers.CreateNetworkRequest{NetworkID: nid, IPv4: ipv4})
	// A crash left the host end of an earlier join.
	stale := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: hostVethName(eid)}, PeerName: "stale-peer"}
	if err := e.h.LinkAdd(stale); err != nil {
		t.Fatal(err)
	}
	sb := nstest.NewNS(t)
	if _, err := e.d.Join(t.Context(), drivers.JoinRequest{NetworkID: nid, EndpointID: eid, NetnsFD: sb.FD(), IfName: "eth0"}); err != nil {
		t.Fatalf("Join over a stale veth: %v", err)
	}
	if _, err := e.h.LinkByName("stale-peer"); err == nil {
		t.Error("stale veth still there")
	}
	// A second endpoint asking for a name the sandbox has is a conflict, and leaves nothing.
	eid2 := driverstest.NewEndpointID()
	_, err := e.d.Join(t.Context(), drivers.JoinRequest{NetworkID: nid, EndpointID: eid2, NetnsFD: sb.FD(), IfName: "eth0"})
	if !errors.Is(err, errclass.ErrConflict) {
		t.Errorf("Join with an ifname taken in the sandbox: %v, want a conflict", err)
	}
	if _, err := e.h.LinkByName(hostVethName(eid2)); err == nil {
		t.Error("failed Join left its host end")
	}
	if err := e.d.Leave(t.Context(), drivers.LeaveRequest{NetworkID: nid, EndpointID: eid}); err != nil {
		t.Fatal(err)
	}
}

func TestPrivilegedUnknownNetwork(t *testing.T) {
	nstest.Privileged(t)
	e := newEnv(t)
	_, err := e.d.Join(t.Context(), drivers.JoinRequest{NetworkID: driverstest.NewNetworkID(), EndpointID: driverstest.NewEndpointID(), IfName: "eth0"})
	if !errors.Is(err, errclass.ErrNotFound) {
		t.Errorf("Join on an unknown network: %v, want not found", err)
	}
}

func TestPrivilegedReconcile(t *testing.T) {
	nstest.Privileged(t)
	e := newEnv(t)
	live, orphan := driverstest.NewNetworkID(), driverstest.NewNetworkID()
	e.createNetwork(t, drivers.CreateNetworkRequest{NetworkID: live, IPv4: ipv4})
	if err := e.d.CreateNetwork(t.Context(), drivers.CreateNetworkRequest{NetworkID: orphan, IPv4: ipv4}); err != nil {
		t.Fatal(err)
	}
	liveEP, orphanEP := driverstest.NewEndpointID(), driverstest.NewEndpointID()
	sb := nstest.NewNS(t)
	for i, eid := range []drivers.EndpointID{liveEP, orphanEP} {
		if _, err := e.d.Join(t.Context(), drivers.JoinRequest{
			NetworkID: live, EndpointID: eid, NetnsFD: sb.FD(), IfName: "eth" + string(rune('0'+i)),
		}); err != nil {
			t.Fatal(err)
		}
	}
	// Someone else's links that look like ours are left alone.
	foreign := []netlink.Link{
		&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "veth0123456789a"}, PeerName: "foreign-peer"},
		&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br-notours"}},
	}
	for _, l := range foreign {
		if err := e.h.LinkAdd(l); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.h.LinkSetAlias(foreign[1], "notcnm:"+string(orphan)); err != nil {
		t.Fatal(err)
	}

	// A restart that knows only the live network and endpoint.
	d2 := newDriver(t, e.host)
	if err := d2.CreateNetwork(t.Context(), drivers.CreateNetworkRequest{NetworkID: live, IPv4: ipv4}); err != nil {
		t.Fatal(err)
	}
	repairs, err := d2.Reconcile(t.Context(), drivers.LiveState{Networks: []drivers.NetworkID{live}, Endpoints: []drivers.EndpointID{liveEP}})
	if err != nil {
		t.Fatalf("Reconcile: %v", err)
	}
	want := []drivers.Repair{
		{Object: "link " + hostVethName(orphanEP), Action: "removed", Reason: "no live endpoint"},
		{Object: "link br-" + orphan.Short(), Action: "removed", Reason: "no live network"},
	}
	if diff := cmp.Diff(want, repairs); diff != "" {
		t.Errorf("repairs (-want +got):\n%s", diff)
	}
	if save := e.save(t); strings.Contains(save, "br-"+orphan.Short()) {
		t.Errorf("rules of the orphan bridge left after Reconcile:\n%s", save)
	}
	wantLinks := []string{"br-" + live.Short(), "br-notours", "foreign-peer", "lo", hostVethName(liveEP), "veth0123456789a"}
	slices.Sort(wantLinks)
	if diff := cmp.Diff(wantLinks, linkNames(t, e.h)); diff != "" {
		t.Errorf("links after Reconcile (-want +got):\n%s", diff)
	}
	if repairs, err := d2.Reconcile(t.Context(), drivers.LiveState{Networks: []drivers.NetworkID{live}, Endpoints: []drivers.EndpointID{liveEP}}); err != nil || len(repairs) != 0 {
		t.Errorf("second Reconcile = %v, %v; want nothing to do", repairs, err)
	}

	if err := d2.Leave(t.Context(), drivers.LeaveRequest{NetworkID: live, EndpointID: liveEP}); err != nil {
		t.Fatal(err)
	}
	for _, l := range foreign {
		if err := e.h.LinkDel(l); err != nil {
			t.Fatal(err)
		}
	}
}

// TestPrivilegedCreateNetworkConcurrentSameID checks that concurrent creations of one network
// (a retry racing the first try) all converge on one bridge.
func TestPrivilegedCreateNetworkConcurrentSameID(t *testing.T) {
	nstest.Privileged(t)
	e := newEnv(t)
	req := drivers.CreateNetworkRequest{NetworkID: driverstest.NewNetworkID(), IPv4: ipv4}
	errs := make([]error, 4)
	var wg sync.WaitGroup
	for i := range errs {
		wg.Go(func() { errs[i] = e.d.CreateNetwork(t.Context(), req) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("CreateNetwork %d: %v", i, err)
		}
	}
	if err := e.d.DeleteNetwork(t.Context(), drivers.DeleteNetworkRequest{NetworkID: req.NetworkID}); err != nil {
		t.Fatal(err)
	}
}
