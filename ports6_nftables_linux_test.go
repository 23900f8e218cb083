package cnm_test

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/cnmkit/cnm"
	"github.com/cnmkit/cnm/drivers/bridge"
	"github.com/cnmkit/cnm/endpoint"
	"github.com/cnmkit/cnm/internal/netns"
	"github.com/cnmkit/cnm/internal/nstest"
	"github.com/cnmkit/cnm/network"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The addresses of addOutside's veth, with portsHostIP: the host's uplink and the outside host.
var (
	uplink6  = netip.MustParsePrefix("2001:db8::1/64")
	outside4 = netip.MustParsePrefix("192.0.2.2/24")
	outside6 = netip.MustParsePrefix("2001:db8::2/64")
)

// addOutside gives the host namespace ns an uplink veth whose peer is eth0 of a new "outside"
// namespace, as a host's LAN and another machine on it: uplink0 has portsHostIP and uplink6, the
// outside outside4 and outside6 (IPv6 with nodad, usable at once). The outside has no route
// to the containers' subnets.
func addOutside(t *testing.T, ns *netns.NS) *netns.NS {
	t.Helper()
	out := nstest.NewNS(t)
	h, err := netlink.NewHandleAt(ns.Handle(), unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	oh, err := netlink.NewHandleAt(out.Handle(), unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	defer oh.Close()
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "uplink0"}, PeerName: "eth0", PeerNamespace: netlink.NsFd(out.FD())}); err != nil {
		t.Fatal(err)
	}
	for _, side := range []struct {
		h     *netlink.Handle
		name  string
		addrs []netip.Prefix
	}{{h, "uplink0", []netip.Prefix{portsHostIP, uplink6}}, {oh, "eth0", []netip.Prefix{outside4, outside6}}} {
		l, err := side.h.LinkByName(side.name)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range side.addrs {
			na := &netlink.Addr{IPNet: &net.IPNet{IP: a.Addr().AsSlice(), Mask: net.CIDRMask(a.Bits(), a.Addr().BitLen())}}
			if a.Addr().Is6() {
				na.Flags = unix.IFA_F_NODAD
			}
			if err := side.h.AddrAdd(l, na); err != nil {
				t.Fatalf("add %s to %s: %v", a, side.name, err)
			}
		}
		if err := side.h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// TestPrivilegedControllerPorts6Nftables: with Config.Firewall nftables, -p 8080:80 on a
// container of a dual-stack user-defined network is reached by a real TCP exchange from an
// outside host through the host's uplink, over IPv6 and over IPv4; the table inet cnm holds
// the port's elements for both of the container's addresses while it is published and none
// once it is disconnected, nor the network's once it is deleted; and iptables holds no rule
// of cnm in either family.
func TestPrivilegedControllerPorts6Nftables(t *testing.T) {
	nstest.Privileged(t)
	ctx := t.Context()
	host := nstest.NewNS(t)
	outside := addOutside(t, host)
	c, err := cnm.New(ctx, cnm.Config{DataDir: t.TempDir(), RunDir: t.TempDir(), HostNetns: host.Path(), Firewall: bridge.FirewallNftables})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, sb := range c.Sandboxes() {
			c.DeleteSandbox(context.Background(), sb.ID())
		}
		c.Close()
	})
	nw := mustNetwork(t, c, "ds6", network.WithSubnet(netip.MustParsePrefix("10.92.0.0/24")),
		network.WithSubnet(netip.MustParsePrefix("fd00:92::/64")))
	srv := mustSandbox(t, c, "srv")
	p, err := endpoint.ParsePortSpec("8080:80")
	if err != nil {
		t.Fatal(err)
	}
	info := mustConnect(t, c, "ds6", "srv", endpoint.WithPorts(p...)).Info()
	if !info.IPv6.IsValid() || len(info.Ports) != 1 || info.Ports[0].HostPort != 8080 {
		t.Fatalf("endpoint = %+v, want an IPv6 address and host port 8080", info)
	}
	ctr4, ctr6 := info.IPv4.Addr(), info.IPv6.Addr()
	ln6 := listenIn(t, srv.Key(), netip.AddrPortFrom(ctr6, 80).String())
	ln4 := listenIn(t, srv.Key(), netip.AddrPortFrom(ctr4, 80).String())
	// No warm-up: the first exchange, right after the bridge got its first port, must cross
	// (the bridge's link-local address is usable at once, so neighbour discovery does not wait).
	for _, x := range []struct {
		name string
		to   netip.AddrPort
		ln   net.Listener
	}{
		{"IPv6", netip.AddrPortFrom(uplink6.Addr(), 8080), ln6},
		{"IPv4", netip.AddrPortFrom(portsHostIP.Addr(), 8080), ln4},
	} {
		if err := talk(outside.Path(), x.to, x.ln); err != nil {
			t.Errorf("published port from the outside over %s to %s: %v", x.name, x.to, err)
		}
	}

	nft := func() string {
		t.Helper()
		out, err := nstest.Exec(host, "nft", "list", "table", "inet", bridge.NftTable)
		if err != nil {
			t.Fatalf("nft list table inet %s: %v: %s", bridge.NftTable, err, out)
		}
		return out
	}
	// The DNAT map's values, one per family, name the container's address and port.
	portEls := []string{": " + ctr6.String() + " . 80", ": " + ctr4.String() + " . 80"}
	table := nft()
	for _, el := range portEls {
		if !strings.Contains(table, el) {
			t.Errorf("table inet %s has no element %q while the port is published:\n%s", bridge.NftTable, el, table)
		}
	}
	for _, cmd := range []string{"iptables-save", "ip6tables-save"} {
		if save, err := nstest.Exec(host, cmd); err != nil || strings.Contains(save, "CNM-") {
			t.Errorf("%s = %v, %q; want no CNM chain with the nftables backend", cmd, err, save)
		}
	}

	if err := c.Disconnect(ctx, "ds6", "srv"); err != nil {
		t.Fatal(err)
	}
	table = nft()
	for _, s := range []string{ctr6.String(), ctr4.String(), "8080"} {
		if strings.Contains(table, s) {
			t.Errorf("table inet %s still names %s after Disconnect:\n%s", bridge.NftTable, s, table)
		}
	}
	if err := talk(outside.Path(), netip.AddrPortFrom(uplink6.Addr(), 8080), ln6); err == nil {
		t.Error("the port is reached over IPv6 after Disconnect")
	}
	if err := c.DeleteSandbox(ctx, "srv"); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteNetwork(ctx, "ds6"); err != nil {
		t.Fatal(err)
	}
	br := "br-" + nw.ID()[:12]
	if table := nft(); strings.Contains(table, `"`+br+`"`) || strings.Contains(table, "fd00:92::") {
		t.Errorf("table inet %s still has %s or its subnet after DeleteNetwork:\n%s", bridge.NftTable, br, table)
	}
}
