package sandbox_test

import (
	"context"
	"net/netip"
	"testing"

	"github.com/cnmkit/cnm/internal/nstest"
	"github.com/cnmkit/cnm/sandbox"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// BenchmarkPrivilegedAddInterface measures AddInterface on its fast path (the link is already
// in the sandbox) against the raw netlink calls it makes, on a handle in the same namespace:
// LinkByName, AddrAdd per address, LinkSetUp and RouteReplace per default route. The veth is
// made before and deleted after each iteration with the timer stopped, so run it with a fixed
// count, e.g.
//
//	CNM_PRIVILEGED_TESTS=1 go test -run '^$' -bench PrivilegedAddInterface -benchtime 200x -count 5 -benchmem ./sandbox/
func BenchmarkPrivilegedAddInterface(b *testing.B) {
	if !nstest.Enabled() {
		b.Skip("privileged benchmark: set CNM_PRIVILEGED_TESTS=1 and run as root")
	}
	nstest.Privileged(b)
	e := newEnv(b)
	sb := e.newSandbox(e.config("bench"))
	h := handleIn(b, sb)
	if err := h.SetSocketTimeout(10e9); err != nil {
		b.Fatal(err)
	}
	mac := mustMAC("02:42:0a:63:00:02")
	ctx := context.Background()

	cases := []struct {
		name string
		ic   sandbox.InterfaceConfig
	}{
		{"ipv4", sandbox.InterfaceConfig{
			Name: "eth0", InSandbox: true, MAC: mac,
			IPv4: netip.MustParsePrefix("10.99.0.2/24"), Gateway: netip.MustParseAddr("10.99.0.1"),
		}},
		{"dual", sandbox.InterfaceConfig{
			Name: "eth0", InSandbox: true, MAC: mac,
			IPv4: netip.MustParsePrefix("10.99.0.2/24"), Gateway: netip.MustParseAddr("10.99.0.1"),
			IPv6: netip.MustParsePrefix("fd00:99::2/64"), GatewayIPv6: netip.MustParseAddr("fd00:99::1"),
		}},
	}
	for _, c := range cases {
		b.Run(c.name+"/AddInterface", func(b *testing.B) {
			b.ReportAllocs()
			for range b.N {
				b.StopTimer()
				e.vethInto(sb, "vh0", "eth0", mac)
				b.StartTimer()
				if err := sb.AddInterface(ctx, c.ic); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				if err := sb.RemoveInterface(ctx, "eth0"); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
		})
		b.Run(c.name+"/RawNetlink", func(b *testing.B) {
			b.ReportAllocs()
			ic := c.ic
			for range b.N {
				b.StopTimer()
				e.vethInto(sb, "vh0", "eth0", mac)
				b.StartTimer()
				link, err := h.LinkByName(ic.Name)
				if err != nil {
					b.Fatal(err)
				}
				idx := link.Attrs().Index
				if err := h.AddrAdd(link, &netlink.Addr{IPNet: ipNet(ic.IPv4)}); err != nil {
					b.Fatal(err)
				}
				if ic.IPv6.IsValid() {
					if err := h.AddrAdd(link, &netlink.Addr{IPNet: ipNet(ic.IPv6), Flags: unix.IFA_F_NODAD}); err != nil {
						b.Fatal(err)
					}
				}
				if err := h.LinkSetUp(link); err != nil {
					b.Fatal(err)
				}
				gw4 := &netlink.Route{LinkIndex: idx, Dst: ipNet(netip.MustParsePrefix("0.0.0.0/0")), Gw: ic.Gateway.AsSlice()}
				if err := h.RouteReplace(gw4); err != nil {
					b.Fatal(err)
				}
				if ic.GatewayIPv6.IsValid() {
					gw6 := &netlink.Route{LinkIndex: idx, Dst: ipNet(netip.MustParsePrefix("::/0")), Gw: ic.GatewayIPv6.AsSlice()}
					if err := h.RouteReplace(gw6); err != nil {
						b.Fatal(err)
					}
				}
				b.StopTimer()
				if err := h.LinkDel(link); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
		})
	}
}
