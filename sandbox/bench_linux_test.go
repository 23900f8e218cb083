package sandbox_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/cnmkit/cnm/internal/netns"
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

// BenchmarkPrivilegedNew measures New and Delete of a ModeNamespace sandbox against the calls
// they make, made by hand in the same iteration (so under the same load): the namespace (file,
// unshare, bind mount, open), a netlink handle in it, loopback up, the files directory with
// resolv.conf (from the host's) and hosts; then unmount and remove. RunDir and the files are
// on a tmpfs (/dev/shm) as /run is, so the figures are the kernel's and cnm's, not a disk's.
// ns/op is the sum of both; the metrics are the medians of each.
//
//	CNM_PRIVILEGED_TESTS=1 ../shared/tools/nsrun -- \
//	  go test -run '^$' -bench PrivilegedNew -benchtime 1000x -count 5 ./sandbox/
func BenchmarkPrivilegedNew(b *testing.B) {
	if !nstest.Enabled() {
		b.Skip("privileged benchmark: set CNM_PRIVILEGED_TESTS=1 and run as root")
	}
	nstest.Privileged(b)
	e := newEnv(b)
	dir, err := os.MkdirTemp("/dev/shm", "cnm-bench-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	e.runDir = filepath.Join(dir, "run")
	e.root = filepath.Join(dir, "files")
	hostResolv, err := os.ReadFile(e.resolv)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	var newT, rawT, delT, rawDelT []time.Duration
	for i := 0; b.Loop(); i++ {
		id := fmt.Sprintf("s%d", i)
		cfg := e.config(id)
		t0 := time.Now()
		sb, err := sandbox.New(ctx, cfg)
		if err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if err := sb.Delete(ctx); err != nil {
			b.Fatal(err)
		}
		t2 := time.Now()

		rid := "r" + id
		path := filepath.Join(e.runDir, "netns", rid)
		files := filepath.Join(e.root, rid)
		ns, err := netns.New(path)
		if err != nil {
			b.Fatal(err)
		}
		h, err := netlink.NewHandleAt(ns.Handle(), unix.NETLINK_ROUTE)
		if err != nil {
			b.Fatal(err)
		}
		if err := h.LinkSetUp(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: 1}}); err != nil {
			b.Fatal(err)
		}
		if err := os.MkdirAll(files, 0o755); err != nil {
			b.Fatal(err)
		}
		host, _ := os.ReadFile(e.resolv)
		if err := os.WriteFile(filepath.Join(files, "resolv.conf"), append(host[:0:0], hostResolv...), 0o644); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(files, "hosts"), []byte("127.0.0.1\tlocalhost\n"), 0o644); err != nil {
			b.Fatal(err)
		}
		t3 := time.Now()
		h.Close()
		ns.Close()
		if err := netns.Remove(path); err != nil {
			b.Fatal(err)
		}
		if err := os.RemoveAll(files); err != nil {
			b.Fatal(err)
		}
		t4 := time.Now()
		newT, delT = append(newT, t1.Sub(t0)), append(delT, t2.Sub(t1))
		rawT, rawDelT = append(rawT, t3.Sub(t2)), append(rawDelT, t4.Sub(t3))
	}
	med := func(d []time.Duration) float64 {
		d = slices.Clone(d)
		slices.Sort(d)
		return float64(d[len(d)/2])
	}
	b.ReportMetric(med(newT)/1e6, "new-ms")
	b.ReportMetric(med(rawT)/1e6, "rawnew-ms")
	b.ReportMetric(med(newT)/med(rawT), "new/raw")
	b.ReportMetric(med(delT)/1e6, "delete-ms")
	b.ReportMetric(med(rawDelT)/1e6, "rawdelete-ms")
	b.ReportMetric(med(delT)/med(rawDelT), "delete/raw")
}
