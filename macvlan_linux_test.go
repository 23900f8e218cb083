package cnm_test

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/cnmkit/cnm"
	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/drivers/driverstest"
	"github.com/cnmkit/cnm/drivers/macvlan"
	"github.com/cnmkit/cnm/endpoint"
	"github.com/cnmkit/cnm/internal/netns"
	"github.com/cnmkit/cnm/internal/nstest"
	"github.com/cnmkit/cnm/network"
	"github.com/cnmkit/cnm/sandbox"
	"github.com/vishvananda/netlink"
)

func run(t *testing.T, ns *netns.NS, cmd string) string {
	t.Helper()
	f := strings.Fields(cmd)
	out, err := nstest.Exec(ns, f[0], f[1:]...)
	if err != nil {
		t.Fatalf("%s: %v: %s", cmd, err, out)
	}
	return out
}

// plugLAN gives ns an eth0, up, on the bridge "lan" of the namespace lanNS, through a veth
// whose LAN end is port.
func plugLAN(t *testing.T, lanNS, ns *netns.NS, port string) {
	t.Helper()
	run(t, lanNS, "ip link add "+port+" type veth peer name "+port+"p")
	run(t, lanNS, "ip link set "+port+" master lan up")
	h, err := netlink.NewHandleAt(lanNS.Handle())
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	peer, err := h.LinkByName(port + "p")
	if err == nil {
		err = h.LinkSetNsFd(peer, ns.FD())
	}
	if err != nil {
		t.Fatal(err)
	}
	run(t, ns, "ip link set "+port+"p name eth0")
	run(t, ns, "ip link set eth0 up")
}

// newMacvlanLab returns a lab whose host namespace has an eth0 (192.168.50.2/24) on a LAN
// bridge in a namespace of its own, and the LAN's router, a namespace on the LAN holding the
// gateway address 192.168.50.1.
func newMacvlanLab(t *testing.T) (l *lab, router *netns.NS) {
	t.Helper()
	l = newLab(t)
	lanNS := nstest.NewNS(t)
	router = nstest.NewNS(t)
	run(t, lanNS, "ip link add lan type bridge")
	run(t, lanNS, "ip link set lan up")
	plugLAN(t, lanNS, l.host, "host")
	plugLAN(t, lanNS, router, "rtr")
	run(t, router, "ip addr add 192.168.50.1/24 dev eth0")
	// The host is on the LAN too, as a real one is: its route to the LAN's subnet does not
	// make the macvlan network's subnet (the LAN's) a conflict.
	run(t, l.host, "ip addr add 192.168.50.2/24 dev eth0")
	return l, router
}

// newLANNetwork creates the macvlan network "lan" on the host's eth0, as Docker users write
// it: -d macvlan -o parent=eth0 -o macvlan_mode=bridge --subnet ... --gateway ... --ip-range ...
func newLANNetwork(t *testing.T, c *cnm.Controller) {
	t.Helper()
	if _, err := c.NewNetwork(t.Context(), "lan", "macvlan",
		network.WithSubnet(netip.MustParsePrefix("192.168.50.0/24")),
		network.WithGateway(netip.MustParseAddr("192.168.50.1")),
		network.WithIPRange(netip.MustParsePrefix("192.168.50.64/26")),
		network.WithDriverLabels(map[string]string{"parent": "eth0", "macvlan_mode": "bridge"})); err != nil {
		t.Fatal(err)
	}
}

// TestPrivilegedMacvlan: the built-in macvlan driver through the Controller, as Docker users
// write it (-d macvlan -o parent=eth0): two containers on the host's LAN reach each other and
// the LAN's router, which sees them with their own MACs; Disconnect and DeleteNetwork leave
// the host's links as they were.
func TestPrivilegedMacvlan(t *testing.T) {
	nstest.Privileged(t)
	ctx := t.Context()
	l, router := newMacvlanLab(t)
	if !slices.Contains(l.c.Drivers(), "macvlan") {
		t.Fatalf("drivers = %v, want macvlan built in", l.c.Drivers())
	}
	newLANNetwork(t, l.c)
	a, b := mustSandbox(t, l.c, "a"), mustSandbox(t, l.c, "b")
	epA, epB := mustConnect(t, l.c, "lan", "a"), mustConnect(t, l.c, "lan", "b")
	ia, ib := epA.Info(), epB.Info()
	if ia.Gateway != netip.MustParseAddr("192.168.50.1") {
		t.Errorf("endpoint gateway = %v, want the router", ia.Gateway)
	}
	pingOK(t, a, ib.IPv4.Addr())
	pingOK(t, b, ia.IPv4.Addr())
	pingOK(t, a, netip.MustParseAddr("192.168.50.1"))
	pingOK(t, b, netip.MustParseAddr("192.168.50.1"))
	neigh := run(t, router, "ip neigh show dev eth0")
	for _, i := range []struct {
		addr netip.Addr
		mac  string
	}{{ia.IPv4.Addr(), ia.MAC.String()}, {ib.IPv4.Addr(), ib.MAC.String()}} {
		if !strings.Contains(neigh, i.addr.String()+" lladdr "+i.mac) {
			t.Errorf("router's neighbours %q lack %s at %s", neigh, i.addr, i.mac)
		}
	}
	for _, id := range []string{"a", "b"} {
		if err := l.c.Disconnect(ctx, "lan", id); err != nil {
			t.Fatal(err)
		}
	}
	if got := links(t, a.Key()); !slices.Equal(got, []string{"lo"}) {
		t.Errorf("sandbox links after Disconnect = %v, want only lo", got)
	}
	if err := l.c.DeleteNetwork(ctx, "lan"); err != nil {
		t.Fatal(err)
	}
	waitLinks(t, l.host.Path(), cnm.DefaultBridge, "eth0", "lo")
}

// TestPrivilegedMacvlanRestart: a Controller started again on the same directories restores
// the macvlan network and its endpoints (same addresses and MACs) without repairs; the
// containers keep reaching each other and the router, and Disconnect and DeleteNetwork work
// on the restored objects and leave no link behind.
func TestPrivilegedMacvlanRestart(t *testing.T) {
	nstest.Privileged(t)
	ctx := t.Context()
	l, _ := newMacvlanLab(t)
	newLANNetwork(t, l.c)
	a, b := mustSandbox(t, l.c, "a"), mustSandbox(t, l.c, "b")
	epA, epB := mustConnect(t, l.c, "lan", "a"), mustConnect(t, l.c, "lan", "b")
	ia, ib := epA.Info(), epB.Info()
	pingOK(t, a, ib.IPv4.Addr())
	pingOK(t, b, ia.IPv4.Addr())

	if err := l.c.Close(); err != nil {
		t.Fatal(err)
	}
	c := l.open(t)
	if reps := c.Repairs(); len(reps) != 0 {
		t.Errorf("repairs after a clean restart = %v, want none", reps)
	}
	nw, err := c.Network("lan")
	if err != nil {
		t.Fatal(err)
	}
	if nw.Driver() != "macvlan" {
		t.Errorf("restored network driver = %q, want macvlan", nw.Driver())
	}
	for _, want := range []endpoint.Info{ia, ib} {
		ep, err := nw.Endpoint(want.ID)
		if err != nil {
			t.Fatalf("endpoint %s after restart: %v", want.ID, err)
		}
		got := ep.Info()
		if got.IPv4 != want.IPv4 || got.MAC.String() != want.MAC.String() || got.Gateway != want.Gateway {
			t.Errorf("endpoint %s after restart: ip %v mac %v gw %v, want %v %v %v",
				want.ID, got.IPv4, got.MAC, got.Gateway, want.IPv4, want.MAC, want.Gateway)
		}
	}
	a, b = mustGet(t, c, "a"), mustGet(t, c, "b")
	pingOK(t, a, ib.IPv4.Addr())
	pingOK(t, b, ia.IPv4.Addr())
	pingOK(t, a, netip.MustParseAddr("192.168.50.1"))
	pingOK(t, b, netip.MustParseAddr("192.168.50.1"))

	for _, id := range []string{"a", "b"} {
		if err := c.Disconnect(ctx, "lan", id); err != nil {
			t.Fatalf("Disconnect %s after restart: %v", id, err)
		}
	}
	for _, sb := range []sandbox.Sandbox{a, b} {
		if got := links(t, sb.Key()); !slices.Equal(got, []string{"lo"}) {
			t.Errorf("sandbox %s links after Disconnect = %v, want only lo", sb.ID(), got)
		}
	}
	if err := c.DeleteNetwork(ctx, "lan"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Network("lan"); !errors.Is(err, cnm.ErrNotFound) {
		t.Errorf("Network(lan) after DeleteNetwork: %v, want ErrNotFound", err)
	}
	waitLinks(t, l.host.Path(), cnm.DefaultBridge, "eth0", "lo")
}

// TestPrivilegedMacvlanCrashLeftover: the veth parent the macvlan driver made for an internal
// network whose record is gone (the process died between creating it and storing the
// record) is removed by the next Controller's start and reported in Repairs.
func TestPrivilegedMacvlanCrashLeftover(t *testing.T) {
	nstest.Privileged(t)
	l := newLab(t)
	d, err := macvlan.New(macvlan.Config{HostNetns: l.host.Path()})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.CreateNetwork(t.Context(), drivers.CreateNetworkRequest{NetworkID: driverstest.NewNetworkID()}); err != nil {
		t.Fatal(err)
	}
	d.Close() // the crash: no record, no DeleteNetwork
	var leftover []string
	for _, name := range links(t, l.host.Path()) {
		if name != cnm.DefaultBridge && name != "lo" {
			leftover = append(leftover, name)
		}
	}
	if len(leftover) != 2 {
		t.Fatalf("links the driver made = %v, want a veth pair", leftover)
	}

	l.c.Close()
	c := l.open(t)
	if !slices.ContainsFunc(c.Repairs(), func(r drivers.Repair) bool {
		return slices.Contains([]string{"link " + leftover[0], "link " + leftover[1]}, r.Object) && r.Action == "removed"
	}) {
		t.Errorf("repairs = %v, want the removal of the leftover veth %v", c.Repairs(), leftover)
	}
	waitLinks(t, l.host.Path(), cnm.DefaultBridge, "lo")
}
