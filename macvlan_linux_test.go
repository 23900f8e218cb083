package cnm_test

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/cnmkit/cnm"
	"github.com/cnmkit/cnm/internal/netns"
	"github.com/cnmkit/cnm/internal/nstest"
	"github.com/cnmkit/cnm/network"
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

// TestPrivilegedMacvlan: the built-in macvlan driver through the Controller, as Docker users
// write it (-d macvlan -o parent=eth0): two containers on the host's LAN reach each other and
// the LAN's router, which sees them with their own MACs; Disconnect and DeleteNetwork leave
// the host's links as they were.
func TestPrivilegedMacvlan(t *testing.T) {
	nstest.Privileged(t)
	ctx := t.Context()
	l := newLab(t)
	lanNS, router := nstest.NewNS(t), nstest.NewNS(t)
	run(t, lanNS, "ip link add lan type bridge")
	run(t, lanNS, "ip link set lan up")
	plugLAN(t, lanNS, l.host, "host")
	plugLAN(t, lanNS, router, "rtr")
	run(t, router, "ip addr add 192.168.50.1/24 dev eth0")
	// The host is on the LAN too, as a real one is: its route to the LAN's subnet does not
	// make the macvlan network's subnet (the LAN's) a conflict.
	run(t, l.host, "ip addr add 192.168.50.2/24 dev eth0")

	if !slices.Contains(l.c.Drivers(), "macvlan") {
		t.Fatalf("drivers = %v, want macvlan built in", l.c.Drivers())
	}
	if _, err := l.c.NewNetwork(ctx, "lan", "macvlan",
		network.WithSubnet(netip.MustParsePrefix("192.168.50.0/24")),
		network.WithGateway(netip.MustParseAddr("192.168.50.1")),
		network.WithIPRange(netip.MustParsePrefix("192.168.50.64/26")),
		network.WithDriverLabels(map[string]string{"parent": "eth0", "macvlan_mode": "bridge"})); err != nil {
		t.Fatal(err)
	}
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
