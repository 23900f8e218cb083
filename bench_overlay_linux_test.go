package cnm_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
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
	"golang.org/x/sys/unix"
)

// benchOverlay is two hosts on an underlay with an internal overlay network (no gateway
// service: the figures are the overlay's own).
type benchOverlay struct {
	a, b         *cnm.Controller
	hostA, hostB *netns.NS
	runA, runB   string
	nw           network.Network
	vni          string
	// restartB starts host-b's Controller (again) on its state; closing it without Leave is
	// host-b's crash, as far as the cluster can tell.
	restartB func()
}

func newBenchOverlay(b *testing.B) *benchOverlay { return newBenchOverlayGossip(b, gossip.Config{}) }

// newBenchOverlayGossip is newBenchOverlay with the hosts' gossip timings taken from timings
// (its zero fields: the defaults, memberlist's LAN profile).
func newBenchOverlayGossip(b *testing.B, timings gossip.Config) *benchOverlay {
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
	open := func(name, vtep, run, data string, ns *netns.NS, port int, peers ...string) *cnm.Controller {
		c, err := cnm.New(ctx, cnm.Config{DataDir: data, RunDir: run, HostNetns: ns.Path(),
			GlobalStore: gs, Hostname: name, StoreTimeout: 5 * time.Second, NoPredefinedNetworks: true,
			// A registry TTL above the drop benchmark's outages: host-b's endpoints are to come
			// back with it, not be reclaimed (TestPrivilegedOverlayReclaimedWhileAway).
			HostTTL: time.Minute,
			Gossip: &gossip.Config{BindAddr: netip.MustParseAddr("127.0.0.1"), BindPort: port, Keys: [][]byte{key},
				ProbeInterval: timings.ProbeInterval, ProbeTimeout: timings.ProbeTimeout, SuspicionMult: timings.SuspicionMult},
			GossipPeers: peers, Overlay: overlay.Config{VTEP: netip.MustParsePrefix(vtep).Addr()},
			// CNM_BENCH_NODNS=1: without the embedded DNS resolver, to see what it costs.
			DisableDNS: os.Getenv("CNM_BENCH_NODNS") != ""})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() {
			for _, sb := range c.Sandboxes() {
				c.DeleteSandbox(context.Background(), sb.ID())
			}
			c.Close()
		})
		return c
	}
	o.hostA = lab.host(b, "host-a", netip.MustParsePrefix("192.0.2.11/24"))
	o.hostB = lab.host(b, "host-b", netip.MustParsePrefix("192.0.2.12/24"))
	o.a = open("host-a", "192.0.2.11/24", o.runA, b.TempDir(), o.hostA, 0)
	dataB := b.TempDir()
	portB := 0 // the kernel's pick at the first start, kept after, as a host's 7946 is
	o.restartB = func() {
		o.b = open("host-b", "192.0.2.12/24", o.runB, dataB, o.hostB, portB, o.a.GossipNode().LocalAddr().String())
		portB = int(o.b.GossipNode().LocalAddr().Port())
	}
	o.restartB()
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
//     namespace made) against the raw netlink calls of the same attach: raw/attach and
//     cnm/connect one after the other, and "attach" both in turns in one loop (the ratio of
//     their medians), which holds up better on a shared machine;
//
//   - burst: ten attaches back to back of each kind, in turns (the ratio of the medians of
//     the ten's totals): the global copies of the records, written after Connect returns,
//     then meet the next Connects.
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
		reportMedians(b, "overlay-µs", over, "underlay-µs", under)
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
	// rawAttach makes, in r, the interface an attach makes (10.81.c.(d+2)), with the calls
	// the overlay's join makes: the veth pair in one message, address, link up.
	rawAttach := func(b *testing.B, r rawNS, c, d int) {
		a := netip.AddrFrom4([4]byte{10, 81, byte(c), byte(d + 2)})
		mac := net.HardwareAddr{0x02, 0x42, 10, 81, byte(c), byte(d + 2)}
		host := fmt.Sprintf("veraw%02x%06x", c, d)
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
	}
	b.Run("raw/attach", func(b *testing.B) {
		for i := 0; b.Loop(); i++ {
			b.StopTimer()
			r := newRawNS(b, dir, i)
			b.StartTimer()
			rawAttach(b, r, 200, i)
			b.StopTimer()
			r.remove()
			b.StartTimer()
		}
	})
	// attach: the two above in turns, one of each per iteration, so that both meet the same
	// load (the machine is shared): medians of each and their ratio.
	b.Run("attach", func(b *testing.B) {
		var raws, cnms []time.Duration
		for i := 0; b.Loop(); i++ {
			b.StopTimer()
			r := newRawNS(b, dir, 10000+i)
			id := fmt.Sprintf("m%d", i)
			mustSandbox(b, o.a, id)
			b.StartTimer()
			t0 := time.Now()
			rawAttach(b, r, 201+i/250, i%250)
			raws = append(raws, time.Since(t0))
			t0 = time.Now()
			mustConnect(b, o.a, "bov", id)
			cnms = append(cnms, time.Since(t0))
			b.StopTimer()
			r.remove()
			if err := o.a.DeleteSandbox(ctx, id); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
		reportMedians(b, "cnm-µs", cnms, "raw-µs", raws)
	})
	// burst: ten attaches back to back, of each kind in turn: the global copies of the
	// records, written after each Connect returns (the host has an endpoint on the network),
	// then compete with the next Connects for the CPUs, as in a burst of containers starting.
	b.Run("burst", func(b *testing.B) {
		const k = 10
		var raws, cnms []time.Duration
		for i := 0; b.Loop(); i++ {
			b.StopTimer()
			rs := make([]rawNS, k)
			ids := make([]string, k)
			for j := range k {
				rs[j] = newRawNS(b, dir, 20000+i*k+j)
				ids[j] = fmt.Sprintf("u%d-%d", i, j)
				mustSandbox(b, o.a, ids[j])
			}
			b.StartTimer()
			t0 := time.Now()
			for j := range k {
				n := i*k + j
				rawAttach(b, rs[j], 230+n/250, n%250)
			}
			raws = append(raws, time.Since(t0))
			t0 = time.Now()
			for _, id := range ids {
				mustConnect(b, o.a, "bov", id)
			}
			cnms = append(cnms, time.Since(t0))
			b.StopTimer()
			for j := range k {
				rs[j].remove()
				if err := o.a.DeleteSandbox(ctx, ids[j]); err != nil {
					b.Fatal(err)
				}
			}
			b.StartTimer()
		}
		reportMedians(b, "cnm10-µs", cnms, "raw10-µs", raws)
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

// BenchmarkPrivilegedOverlayDrop measures, for each gossip preset, the time from host-b's crash
// (its Controller closes without leaving: nothing tells the cluster) until host-a's VXLAN
// device no longer has host-b's container's MAC, against what the failure detector's settings
// say: a probe round, its timeout and the suspicion timeout, SuspicionMult · max(1, log10 N) ·
// ProbeInterval with N = 2 hosts. It splits the time into gossip's (until host-a's node reports
// host-b failed) and the data plane's (from then until the entry is gone). After each round it
// restarts host-b (on its gossip port, as a host's 7946) and lets the cluster run for ten probe
// intervals before the next crash, so that each crash meets a failure detector at rest, as a
// host's rare crash does: memberlist's Lifeguard raises a node's "awareness" with every probe
// that fails with no third member to probe through (up to 8x its probe interval and timeout)
// and lowers it by one per probe that succeeds. A host-b declared failed while it runs (during
// that rest) is a false positive, counted.
//
// The presets: "lan", memberlist's LAN profile (cnm's default, and Docker's networkdb's:
// probe 1 s, timeout 500 ms, SuspicionMult 4); "fast", probe 500 ms, timeout 250 ms,
// SuspicionMult 3.
//
//	CNM_PRIVILEGED_TESTS=1 ../shared/tools/nsrun -- go test -run '^$' -bench PrivilegedOverlayDrop -benchtime 8x -count 1 .
func BenchmarkPrivilegedOverlayDrop(b *testing.B) {
	for _, p := range []struct {
		name string
		cfg  gossip.Config
	}{
		{"lan", gossip.Config{ProbeInterval: time.Second, ProbeTimeout: 500 * time.Millisecond, SuspicionMult: 4}},
		{"fast", gossip.Config{ProbeInterval: 500 * time.Millisecond, ProbeTimeout: 250 * time.Millisecond, SuspicionMult: 3}},
	} {
		b.Run(p.name, func(b *testing.B) { benchDrop(b, p.cfg) })
	}
}

func benchDrop(b *testing.B, timings gossip.Config) {
	o := newBenchOverlayGossip(b, timings)
	setting := timings.ProbeInterval + timings.ProbeTimeout + time.Duration(timings.SuspicionMult)*timings.ProbeInterval
	settle := 10 * timings.ProbeInterval
	mustSandbox(b, o.a, "ra")
	sbb := mustSandbox(b, o.b, "rb")
	mustConnect(b, o.a, "bov", "ra")
	eb := mustConnect(b, o.b, "bov", "rb")
	ovB := filepath.Join(o.runB, "overlay", "ov-"+o.vni)
	ovA := filepath.Join(o.runA, "overlay", "ov-"+o.vni)
	nsA, err := netns.Open(ovA)
	if err != nil {
		b.Fatal(err)
	}
	defer nsA.Close()
	hA, err := netlink.NewHandleAt(nsA.Handle())
	if err != nil {
		b.Fatal(err)
	}
	defer hA.Close()
	vxA, err := hA.LinkByName("vx-" + o.vni)
	if err != nil {
		b.Fatal(err)
	}
	mac := eb.Info().MAC.String()
	has := func() bool {
		fdb, _ := hA.NeighList(vxA.Attrs().Index, unix.AF_BRIDGE)
		return slices.ContainsFunc(fdb, func(n netlink.Neigh) bool { return n.HardwareAddr.String() == mac })
	}
	await := func(want bool, what string) time.Duration {
		t0 := time.Now()
		for has() != want {
			if time.Since(t0) > 60*time.Second {
				var ents []string
				for _, nid := range o.a.GossipNode().Networks() {
					for _, e := range o.a.GossipNode().Entries(nid, "endpoints") {
						ents = append(ents, fmt.Sprintf("%+v", e))
					}
				}
				var bnets []string
				for _, n := range o.b.Networks() {
					var eps []string
					for _, e := range n.Endpoints() {
						eps = append(eps, e.Name()+"@"+e.Info().SandboxID)
					}
					bnets = append(bnets, n.Name()+fmt.Sprint(eps))
				}
				b.Logf("host-b: networks %v, repairs %v, waiting %v; rb's links %v; host-b's overlay links %v; a's reclaimed %v", bnets, o.b.Repairs(), o.b.Waiting(),
					links(b, sbb.Key()), links(b, ovB), o.a.Reclaimed())
				var bents []string
				for _, nid := range o.b.GossipNode().Networks() {
					for _, e := range o.b.GossipNode().Entries(nid, "endpoints") {
						bents = append(bents, e.Key[:8]+"@"+e.Owner)
					}
				}
				nids := o.a.GossipNode().Networks()
				b.Fatalf("host-a: %s after 60 s; host-a's members %+v, network nodes %v, entries %v; host-b's members %+v, networks %v, entries %v, a's stats %+v b's stats %+v", what,
					o.a.GossipNode().Members(), o.a.GossipNode().NetworkNodes(nids[0]), ents, o.b.GossipNode().Members(), o.b.GossipNode().Networks(), bents,
					o.a.GossipNode().Stats(), o.b.GossipNode().Stats())

			}
			time.Sleep(10 * time.Millisecond)
		}
		return time.Since(t0)
	}
	await(true, "no FDB entry for rb before the crash")
	failed := func() bool {
		for _, m := range o.a.GossipNode().Members() {
			if m.Name == "host-b" {
				return m.State == gossip.StateFailed
			}
		}
		return true // forgotten
	}
	var ds, fs, ps []time.Duration // crash to FDB entry gone; to host-b failed; failed to gone
	falseDead := 0
	time.Sleep(settle)
	for b.Loop() {
		if err := o.b.Close(); err != nil {
			b.Fatal(err)
		}
		t0 := time.Now()
		for !failed() {
			time.Sleep(10 * time.Millisecond)
		}
		fs = append(fs, time.Since(t0))
		ps = append(ps, await(false, "rb's FDB entry still there"))
		ds = append(ds, fs[len(fs)-1]+ps[len(ps)-1])
		b.StopTimer()
		o.restartB()
		await(true, "rb's FDB entry not back after host-b's restart")
		for t0, was := time.Now(), false; time.Since(t0) < settle; time.Sleep(20 * time.Millisecond) {
			f := failed()
			if f && !was {
				falseDead++
			}
			was = f
		}
		b.StartTimer()
	}
	for _, l := range [][]time.Duration{ds, fs, ps} {
		slices.Sort(l)
	}
	p50, p95 := ds[len(ds)/2], ds[len(ds)*95/100]
	b.ReportMetric(p50.Seconds(), "p50-s")
	b.ReportMetric(p95.Seconds(), "p95-s")
	b.ReportMetric(fs[len(fs)/2].Seconds(), "failed-p50-s")
	b.ReportMetric(float64(ps[len(ps)/2].Milliseconds()), "plane-p50-ms")
	b.ReportMetric(setting.Seconds(), "setting-s")
	b.ReportMetric(p50.Seconds()/setting.Seconds(), "ratio")
	b.ReportMetric(float64(falseDead), "false-dead")
}

// reportMedians reports the medians of xs and ys, in µs, under the units nameX and nameY, and
// the ratio of the first to the second. It sorts both.
func reportMedians(b *testing.B, nameX string, xs []time.Duration, nameY string, ys []time.Duration) {
	slices.Sort(xs)
	slices.Sort(ys)
	mx, my := xs[len(xs)/2], ys[len(ys)/2]
	b.ReportMetric(float64(mx.Microseconds()), nameX)
	b.ReportMetric(float64(my.Microseconds()), nameY)
	b.ReportMetric(float64(mx)/float64(my), "ratio")
}
