package macvlan

import (
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"testing"
	"time"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/drivers/driverstest"
	cnl "github.com/cnmkit/cnm/internal/nl"
	"github.com/cnmkit/cnm/internal/nstest"
)

// BenchmarkPrivilegedAttach measures the attach of an endpoint, one macvlan link created in a
// sandbox namespace on a parent in a host namespace, against the netlink work it does:
//   - raw: the one RTM_NEWLINK message of Join, built and sent by hand;
//   - join: Driver.Join.
//
// Each iteration does both, alternating, so that the two meet the same machine load, and
// deletes the link after each (raw: RTM_DELLINK in the sandbox; join: Driver.Leave). It
// reports the median of each and their ratio (join/raw); ns/op covers the whole iteration.
func BenchmarkPrivilegedAttach(b *testing.B) {
	nstest.Privileged(b)
	host := nstest.NewNS(b)
	l := newLab(b)
	l.plug(b, host, netip.Prefix{})
	d := newDriver(b, host)
	nid, eid := driverstest.NewNetworkID(), driverstest.NewEndpointID()
	createNetwork(b, d, drivers.CreateNetworkRequest{NetworkID: nid, Options: NetworkOptions{Parent: "eth0"}, IPv4: lanIPAM})
	n, err := d.network(nid)
	if err != nil {
		b.Fatal(err)
	}
	ip := netip.MustParsePrefix("192.168.50.10/24")
	if _, err := d.CreateEndpoint(b.Context(), drivers.CreateEndpointRequest{NetworkID: nid, EndpointID: eid, IPv4: ip}); err != nil {
		b.Fatal(err)
	}
	sb := nstest.NewNS(b)
	inSB, err := cnl.NewSocket(sb.Handle(), 10*time.Second)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(inSB.Close)
	mac := net.HardwareAddr{0x02, 0x42, 0xc0, 0xa8, 0x32, 0x0a}

	jreq := drivers.JoinRequest{NetworkID: nid, EndpointID: eid, SandboxKey: sb.Path(), NetnsFD: sb.FD(), IfName: "eth0", MAC: mac, IPv4: ip}
	lreq := drivers.LeaveRequest{NetworkID: nid, EndpointID: eid, SandboxKey: sb.Path(), IfName: "eth0"}
	var raw, drv []time.Duration
	for b.Loop() {
		t0 := time.Now()
		if err := d.raw.Exec(cnl.MacvlanRequest("eth0", n.index, n.mtu, n.opts.Mode.kernelMode(), mac, sb.FD())); err != nil {
			b.Fatal(err)
		}
		raw = append(raw, time.Since(t0))
		if err := inSB.Exec(cnl.DelLinkRequest("eth0")); err != nil {
			b.Fatal(err)
		}
		t0 = time.Now()
		if _, err := d.Join(b.Context(), jreq); err != nil {
			b.Fatal(err)
		}
		drv = append(drv, time.Since(t0))
		if err := d.Leave(b.Context(), lreq); err != nil {
			b.Fatal(err)
		}
	}
	r, j := median(raw), median(drv)
	b.ReportMetric(float64(r.Nanoseconds()), "raw-median-ns")
	b.ReportMetric(float64(j.Nanoseconds()), "join-median-ns")
	b.ReportMetric(float64(j)/float64(r), "join/raw")
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// BenchmarkPrivilegedThroughput measures TCP throughput between containers on two hosts of
// the LAN lab (each host a namespace whose eth0 is a veth on the LAN bridge; each container a
// macvlan link on its host's eth0) against the hosts' own eth0 path, host 1 to host 2. Each
// iteration runs iperf3 for 3 seconds on both paths, alternating, so that both meet the same
// machine load. It reports the median of each in Gbit/s and their ratio (macvlan/eth0).
//
// It needs iperf3 (Debian: apt-get install iperf3) and skips without it.
func BenchmarkPrivilegedThroughput(b *testing.B) {
	nstest.Privileged(b)
	if _, err := exec.LookPath("iperf3"); err != nil {
		b.Skip("iperf3 is not installed (Debian: apt-get install iperf3)")
	}
	l := newLab(b)
	host1, host2 := nstest.NewNS(b), nstest.NewNS(b)
	l.plug(b, host1, netip.MustParsePrefix("192.168.50.2/24"))
	l.plug(b, host2, netip.MustParsePrefix("192.168.50.3/24"))
	d1, d2 := newDriver(b, host1), newDriver(b, host2)
	opts := NetworkOptions{Parent: "eth0"}
	n1 := createNetwork(b, d1, drivers.CreateNetworkRequest{Options: opts, IPv4: lanIPAM})
	n2 := createNetwork(b, d2, drivers.CreateNetworkRequest{Options: opts, IPv4: lanIPAM})
	c1 := join(b, d1, n1, "192.168.50.10/24")
	c2 := join(b, d2, n2, "192.168.50.20/24")

	var mv, eth []float64
	for b.Loop() {
		mv = append(mv, nstest.Iperf(b, c2.ns.Path(), c1.ns.Path(), "192.168.50.20"))
		eth = append(eth, nstest.Iperf(b, host2.Path(), host1.Path(), "192.168.50.3"))
	}
	slices.Sort(mv)
	slices.Sort(eth)
	m, e := mv[len(mv)/2], eth[len(eth)/2]
	b.ReportMetric(m/1e9, "macvlan-Gbit/s")
	b.ReportMetric(e/1e9, "eth0-Gbit/s")
	b.ReportMetric(m/e, "macvlan/eth0")
}
