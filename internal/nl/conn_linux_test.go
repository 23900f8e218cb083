package nl_test

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/cnmkit/cnm/internal/netns"
	cnl "github.com/cnmkit/cnm/internal/nl"
	"github.com/cnmkit/cnm/internal/nstest"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// connIn opens a Conn and a netlink handle in ns.
func connIn(t *testing.T, ns *netns.NS) (*cnl.Conn, *netlink.Handle) {
	t.Helper()
	h, err := netlink.NewHandleAt(ns.Handle(), unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	var c *cnl.Conn
	if err := ns.Do(func() (err error) { c, err = cnl.OpenConn(5 * time.Second); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, h
}

// TestPrivilegedConnLinkByName checks the ioctl lookup against netlink's in a namespace of its
// own: the same index and MAC for a veth end, no MAC for loopback (not Ethernet), ENODEV for
// a link that is not there or is in another namespace.
func TestPrivilegedConnLinkByName(t *testing.T) {
	nstest.Privileged(t)
	c, h := connIn(t, nstest.NewNS(t))
	mac := net.HardwareAddr{0x02, 0x42, 0x0a, 0x00, 0x00, 0x07}
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "va"}, PeerName: "vb", PeerHardwareAddr: mac}); err != nil {
		t.Fatal(err)
	}
	want, err := h.LinkByName("vb")
	if err != nil {
		t.Fatal(err)
	}
	index, got, err := c.LinkByName("vb")
	if err != nil {
		t.Fatalf("LinkByName(vb) = %v", err)
	}
	if index != want.Attrs().Index || got.String() != mac.String() {
		t.Errorf("LinkByName(vb) = %d, %s; want %d, %s", index, got, want.Attrs().Index, mac)
	}
	if index, got, err := c.LinkByName("lo"); err != nil || index != 1 || got != nil {
		t.Errorf("LinkByName(lo) = %d, %v, %v; want 1, no MAC, nil", index, got, err)
	}
	if _, _, err := c.LinkByName("nonesuch0"); !errors.Is(err, unix.ENODEV) {
		t.Errorf("LinkByName(nonesuch0) = %v, want ENODEV", err)
	}
	_, oh := connIn(t, nstest.NewNS(t))
	if err := oh.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "vc"}, PeerName: "vd"}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.LinkByName("vc"); !errors.Is(err, unix.ENODEV) {
		t.Errorf("LinkByName(vc of another namespace) = %v, want ENODEV", err)
	}
}

// TestPrivilegedConnBatch sends addresses and link up in one message and checks the kernel's
// state: the addresses as the netlink library's AddrAdd makes them (an IPv4 broadcast address,
// IPv6 without duplicate address detection), the link up; then a batch whose middle request
// fails: its error alone is returned, and the requests around it are done.
func TestPrivilegedConnBatch(t *testing.T) {
	nstest.Privileged(t)
	c, h := connIn(t, nstest.NewNS(t))
	l := vethIn(t, h)
	i := l.Attrs().Index
	v4, v6 := netip.MustParsePrefix("10.9.0.2/24"), netip.MustParsePrefix("fd00:9::2/64")
	errs := c.Batch(cnl.AddrRequest(i, v4, 0), cnl.AddrRequest(i, v6, unix.IFA_F_NODAD), cnl.LinkUpRequest(i))
	if slices.ContainsFunc(errs, func(err error) bool { return err != nil }) {
		t.Fatalf("Batch = %v, want no error", errs)
	}
	if up, err := h.LinkByIndex(i); err != nil || up.Attrs().RawFlags&unix.IFF_UP == 0 {
		t.Errorf("va after the batch: %v, %v; want it up", err, up)
	}
	addrs, err := h.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	var got4, got6 bool
	for _, a := range addrs {
		switch a.IPNet.String() {
		case "10.9.0.2/24":
			got4 = true
			if !a.Broadcast.Equal(net.IPv4(10, 9, 0, 255)) {
				t.Errorf("%s: broadcast %v, want 10.9.0.255", a.IPNet, a.Broadcast)
			}
		case "fd00:9::2/64":
			got6 = true
			if a.Flags&unix.IFA_F_NODAD == 0 || a.Flags&unix.IFA_F_TENTATIVE != 0 {
				t.Errorf("%s: flags %#x, want nodad and not tentative", a.IPNet, a.Flags)
			}
		}
	}
	if !got4 || !got6 {
		t.Errorf("addresses of va = %v, want 10.9.0.2/24 and fd00:9::2/64", addrs)
	}

	w := netip.MustParsePrefix("10.9.1.2/24")
	errs = c.Batch(cnl.LinkUpRequest(i), cnl.AddrRequest(i, v4, 0), cnl.AddrRequest(i, w, 0))
	if errs[0] != nil || !errors.Is(errs[1], unix.EEXIST) || errs[2] != nil {
		t.Errorf("Batch(up, existing address, new address) = %v; want nil, EEXIST, nil", errs)
	}
	addrs, _ = h.AddrList(l, netlink.FAMILY_V4)
	if !slices.ContainsFunc(addrs, func(a netlink.Addr) bool { return a.IPNet.String() == w.String() }) {
		t.Errorf("addresses of va = %v, want %s too (after the failed request)", addrs, w)
	}
	if errs := c.Batch(cnl.LinkUpRequest(1 << 30)); !errors.Is(errs[0], unix.ENODEV) {
		t.Errorf("Batch(up of no link) = %v, want ENODEV", errs)
	}
}

// TestPrivilegedConnRoutes adds routes with RouteRequest, on the link and via a gateway, replaces
// the default route, checks them as the netlink library reads them, and deletes the link by
// index with DelLinkIndexRequest.
func TestPrivilegedConnRoutes(t *testing.T) {
	nstest.Privileged(t)
	c, h := connIn(t, nstest.NewNS(t))
	l := vethIn(t, h)
	i := l.Attrs().Index
	def := netip.MustParsePrefix("0.0.0.0/0")
	errs := c.Batch(cnl.AddrRequest(i, netip.MustParsePrefix("10.9.0.2/24"), 0), cnl.LinkUpRequest(i),
		cnl.RouteRequest(i, netip.MustParsePrefix("192.0.2.0/24"), netip.MustParseAddr("10.9.0.1"), false),
		cnl.RouteRequest(i, netip.MustParsePrefix("198.51.100.0/24"), netip.Addr{}, false),
		cnl.RouteRequest(i, def, netip.MustParseAddr("10.9.0.1"), true),
		cnl.RouteRequest(i, def, netip.MustParseAddr("10.9.0.254"), true))
	if slices.ContainsFunc(errs, func(err error) bool { return err != nil }) {
		t.Fatalf("Batch = %v, want no error", errs)
	}
	if err := c.Batch(cnl.RouteRequest(i, netip.MustParsePrefix("192.0.2.0/24"), netip.MustParseAddr("10.9.0.1"), false))[0]; !errors.Is(err, unix.EEXIST) {
		t.Errorf("adding an existing route = %v, want EEXIST", err)
	}
	routes, err := h.RouteList(l, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, r := range routes {
		dst := "default"
		if r.Dst != nil && r.Dst.IP != nil && !r.Dst.IP.IsUnspecified() {
			dst = r.Dst.String()
		}
		got[dst] = fmt.Sprintf("via %v scope %v dev %d", r.Gw, r.Scope, r.LinkIndex)
	}
	want := map[string]string{
		"default":         fmt.Sprintf("via 10.9.0.254 scope universe dev %d", i),
		"10.9.0.0/24":     fmt.Sprintf("via <nil> scope link dev %d", i),
		"192.0.2.0/24":    fmt.Sprintf("via 10.9.0.1 scope universe dev %d", i),
		"198.51.100.0/24": fmt.Sprintf("via <nil> scope link dev %d", i),
	}
	if !maps.Equal(got, want) {
		t.Errorf("routes = %v, want %v", got, want)
	}
	if err := c.Batch(cnl.DelLinkIndexRequest(i))[0]; err != nil {
		t.Fatalf("delete va by index = %v", err)
	}
	if _, err := h.LinkByName("vb"); err == nil {
		t.Error("vb is still there after va's deletion")
	}
	if err := c.Batch(cnl.DelLinkIndexRequest(i))[0]; !errors.Is(err, unix.ENODEV) {
		t.Errorf("delete va again = %v, want ENODEV", err)
	}
}

// vethIn makes the veth pair va and vb with h, and returns va.
func vethIn(t *testing.T, h *netlink.Handle) netlink.Link {
	t.Helper()
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "va"}, PeerName: "vb"}); err != nil {
		t.Fatal(err)
	}
	l, err := h.LinkByName("va")
	if err != nil {
		t.Fatal(err)
	}
	return l
}
