package cnm_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/cnmkit/cnm"
	"github.com/cnmkit/cnm/drivers/overlay"
	"github.com/cnmkit/cnm/gossip"
	"github.com/cnmkit/cnm/internal/netns"
	cnl "github.com/cnmkit/cnm/internal/nl"
	"github.com/cnmkit/cnm/internal/nstest"
	"github.com/cnmkit/cnm/internal/storetest"
	"github.com/cnmkit/cnm/network"
	"github.com/vishvananda/netlink"
)

// benchOverlay is two hosts on an underlay with an internal overlay network (no gateway
// service: the figures are the overlay's own).
type benchOverlay struct {
	a, b         *cnm.Controller
	hostA, hostB *netns.NS
	runA, runB   string
	nw           network.Network
	vni          string
}

func newBenchOverlay(b *testing.B) *benchOverlay {
	b.Helper()
	if !nstest.Enabled() {
		b.Skip("privileged benchmark: set CNM_PRIVILEGED_TESTS=1 and run as root")
	}
	ctx := b.Context()
	ec := storetest.StartEtcd(b)
	gs := openEtcd(b, ec.Endpoints(), "bench-overlay")
	key, _ := gossip.NewKey()
	lab := newOvLab(b)
	o := &benchOverlay{runA: b.TempDir(), runB: b.TempDir()}
	start := func(name, vtep, run string, peers ...string) (*cnm.Controller, *netns.NS) {
		ns := lab.host(b, name, netip.MustParsePrefix(vtep))
		c, err := cnm.New(ctx, cnm.Config{DataDir: b.TempDir(), RunDir: run, HostNetns: ns.Path(),
			GlobalStore: gs, Hostname: name, StoreTimeout: 5 * time.Second, NoPredefinedNetworks: true,
			Gossip:      &gossip.Config{BindAddr: netip.MustParseAddr("127.0.0.1"), Keys: [][]byte{key}},
			GossipPeers: peers, Overlay: overlay.Config{VTEP: netip.MustParsePrefix(vtep).Addr()}})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() {
			for _, sb := range c.Sandboxes() {
				c.DeleteSandbox(context.Background(), sb.ID())
			}
			c.Close()
		})
		return c, ns
	}
	o.a, o.hostA = start("host-a", "192.0.2.11/24", o.runA)
	o.b, o.hostB = start("host-b", "192.0.2.12/24", o.runB, o.a.GossipNode().LocalAddr().String())
	var err error
	if o.nw, err = o.a.NewNetwork(ctx, "bov", "overlay", network.WithSubnet(netip.MustParsePrefix("10.81.0.0/16")), network.WithInternal()); err != nil {
		b.Fatal(err)
	}
	o.vni = o.nw.Inspect().Options[overlay.LabelVNI]
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := o.b.Network("bov"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			b.Fatal("host-b did not adopt the network")
		}
	}
	return o
}

// rtt returns the average round trip of n pings from the namespace at path to ip.
func rtt(b *testing.B, path, ip string, n int) time.Duration {
	out, err := exec.Command("nsenter", "--net="+path, "--", "ping", "-n", "-q", "-c", strconv.Itoa(n), "-i", "0.01", ip).CombinedOutput()
	if err != nil {
		b.Fatalf("ping %s: %v: %s", ip, err, out)
	}
	m := regexp.MustCompile(`= [\d.]+/([\d.]+)/`).FindSubmatch(out)
	if m == nil {
		b.Fatalf("no rtt in %s", out)
	}
	ms, _ := strconv.ParseFloat(string(m[1]), 64)
	return time.Duration(ms * float64(time.Millisecond))
}

// BenchmarkPrivilegedOverlay measures, on two hosts of a namespace underlay:
//
//   - rtt: container-to-container ping round trip across the overlay, against host-to-host on
//     the underlay, in the same run;
//
//   - reachable: from Connect returning on host A until host B has the endpoint programmed
//     (its neighbour entry on the VXLAN device), p50 and p95;
//
//   - attach: Connect on the overlay network (the second endpoint on the host, the network's
//     namespace made) against the raw netlink calls of the same attach.
//
//     CNM_PRIVILEGED_TESTS=1 ../shared/tools/nsrun -- go test -run '^$' -bench PrivilegedOverlay -benchtime 50x -count 3 .
func BenchmarkPrivilegedOverlay(b *testing.B) {
	o := newBenchOverlay(b)
	ctx := b.Context()
	// A resident endpoint on each host: the networks' namespaces exist on both.
	sa := mustSandbox(b, o.a, "ra")
	sbb := mustSandbox(b, o.b, "rb")
	mustConnect(b, o.a, "bov", "ra")
	eb := mustConnect(b, o.b, "bov", "rb")
	for deadline := time.Now().Add(10 * time.Second); ; {
		if _, ok := nstest.Ping(sa.Key(), eb.Info().IPv4.Addr().String(), 1); ok {
			break
		}
		if time.Now().After(deadline) {
			b.Fatal("the resident endpoints do not reach each other")
		}
	}
	b.Run("rtt", func(b *testing.B) {
		var over, under []time.Duration
		for b.Loop() {
			over = append(over, rtt(b, sa.Key(), eb.Info().IPv4.Addr().String(), 20))
			under = append(under, rtt(b, o.hostB.Path(), "192.0.2.11", 20))
		}
		slices.Sort(over)
		slices.Sort(under)
		mo, mu := over[len(over)/2], under[len(under)/2]
		b.ReportMetric(float64(mo.Microseconds()), "overlay-µs")
		b.ReportMetric(float64(mu.Microseconds()), "underlay-µs")
		b.ReportMetric(float64(mo)/float64(mu), "ratio")
	})
	b.Run("tcp", func(b *testing.B) {
		if _, err := exec.LookPath("iperf3"); err != nil {
			b.Skip("iperf3 is not installed (Debian: apt-get install iperf3)")
		}
		var over, under []float64
		for b.Loop() {
			over = append(over, nstest.Iperf(b, sbb.Key(), sa.Key(), eb.Info().IPv4.Addr().String()))
			under = append(under, nstest.Iperf(b, o.hostB.Path(), o.hostA.Path(), "192.0.2.12"))
		}
		slices.Sort(over)
		slices.Sort(under)
		mo, mu := over[len(over)/2], under[len(under)/2]
		b.ReportMetric(mo/1e9, "overlay-Gbit/s")
		b.ReportMetric(mu/1e9, "underlay-Gbit/s")
		b.ReportMetric(mo/mu, "ratio")
	})
	ovB := filepath.Join(o.runB, "overlay", "ov-"+o.vni)
	nsB, err := netns.Open(ovB)
	if err != nil {
		b.Fatal(err)
	}
	defer nsB.Close()
	hB, err := netlink.NewHandleAt(nsB.Handle())
	if err != nil {
		b.Fatal(err)
	}
	defer hB.Close()
	vx, err := hB.LinkByName("vx-" + o.vni)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("reachable", func(b *testing.B) {
		var ds []time.Duration
		for i := 0; b.Loop(); i++ {
			b.StopTimer()
			id := fmt.Sprintf("j%d", i)
			mustSandbox(b, o.a, id)
			b.StartTimer()
			ep := mustConnect(b, o.a, "bov", id)
			t0 := time.Now()
			ip := net.IP(ep.Info().IPv4.Addr().AsSlice())
			for {
				ns, _ := hB.NeighList(vx.Attrs().Index, netlink.FAMILY_V4)
				if slices.ContainsFunc(ns, func(n netlink.Neigh) bool { return n.IP.Equal(ip) }) {
					break
				}
				if time.Since(t0) > 10*time.Second {
					b.Fatal("host-b never got the endpoint")
				}
				time.Sleep(200 * time.Microsecond)
			}
			ds = append(ds, time.Since(t0))
			b.StopTimer()
			if err := o.a.DeleteSandbox(ctx, id); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
		slices.Sort(ds)
		b.ReportMetric(float64(ds[len(ds)/2].Milliseconds()), "p50-ms")
		b.ReportMetric(float64(ds[len(ds)*95/100].Milliseconds()), "p95-ms")
	})
	// The raw attach: what the overlay's join sends, by hand: the veth pair in one message (one
	// end on br0 of the network's namespace, the other in the container's), then the
	// address and link up in the container.
	ovA := filepath.Join(o.runA, "overlay", "ov-"+o.vni)
	nsA, err := netns.Open(ovA)
	if err != nil {
		b.Fatal(err)
	}
	defer nsA.Close()
	sock, err := cnl.NewSocket(nsA.Handle(), 10*time.Second)
	if err != nil {
		b.Fatal(err)
	}
	defer sock.Close()
	hA, err := netlink.NewHandleAt(nsA.Handle())
	if err != nil {
		b.Fatal(err)
	}
	defer hA.Close()
	br0, err := hA.LinkByName("br0")
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	b.Run("raw/attach", func(b *testing.B) {
		for i := 0; b.Loop(); i++ {
			b.StopTimer()
			r := newRawNS(b, dir, i)
			b.StartTimer()
			a := netip.AddrFrom4([4]byte{10, 81, 200, byte(i + 2)})
			mac := net.HardwareAddr{0x02, 0x42, 10, 81, 200, byte(i + 2)}
			host := fmt.Sprintf("veraw%08x", i)
			if err := sock.Exec(cnl.VethRequest(host, br0.Attrs().Index, 1450, "eth0", mac, r.ns.FD())); err != nil {
				b.Fatal(err)
			}
			link, err := r.h.LinkByName("eth0")
			if err == nil {
				err = r.h.AddrAdd(link, &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(16, 32)}})
			}
			if err == nil {
				err = r.h.LinkSetUp(link)
			}
			if err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			r.remove()
			b.StartTimer()
		}
	})
	b.Run("cnm/connect", func(b *testing.B) {
		for i := 0; b.Loop(); i++ {
			b.StopTimer()
			id := fmt.Sprintf("k%d", i)
			mustSandbox(b, o.a, id)
			b.StartTimer()
			mustConnect(b, o.a, "bov", id)
			b.StopTimer()
			if err := o.a.DeleteSandbox(ctx, id); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
	})
}
