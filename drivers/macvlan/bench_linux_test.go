package macvlan

import (
	"net"
	"net/netip"
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
