package bridge

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	cnl "github.com/cnmkit/cnm/internal/nl"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/drivers/driverstest"
	"github.com/cnmkit/cnm/internal/nstest"
)

// pairTimer times a baseline and cnm's operation in the same iterations, alternated, so that
// their ratio holds on a machine whose load changes: each reports its create and delete
// halves, and the ratios cnm/baseline of create, delete and both.
type pairTimer struct{ base, cnm splitTimer }

func (p *pairTimer) report(b *testing.B, base, cnm string) {
	if p.base.n == 0 || p.cnm.n == 0 {
		return
	}
	n := func(d time.Duration, s *splitTimer) float64 { return float64(d.Nanoseconds()) / float64(s.n) }
	b.ReportMetric(n(p.base.create, &p.base), base+"-create-ns/op")
	b.ReportMetric(n(p.base.delete, &p.base), base+"-delete-ns/op")
	b.ReportMetric(n(p.cnm.create, &p.cnm), cnm+"-create-ns/op")
	b.ReportMetric(n(p.cnm.delete, &p.cnm), cnm+"-delete-ns/op")
	b.ReportMetric(n(p.cnm.create, &p.cnm)/n(p.base.create, &p.base), "create-x")
	b.ReportMetric(n(p.cnm.delete, &p.cnm)/n(p.base.delete, &p.base), "delete-x")
	b.ReportMetric(n(p.cnm.create+p.cnm.delete, &p.cnm)/n(p.base.create+p.base.delete, &p.base), "total-x")
	// The medians of the iterations' own ratios: one slow moment of a shared machine moves a
	// mean, not these.
	b.ReportMetric(medianRatio(p.cnm.cs, p.base.cs, nil, nil), "create-med-x")
	b.ReportMetric(medianRatio(p.cnm.ds, p.base.ds, nil, nil), "delete-med-x")
	b.ReportMetric(medianRatio(p.cnm.cs, p.base.cs, p.cnm.ds, p.base.ds), "total-med-x")
}

// medianRatio returns the median over iterations i of (a[i]+a2[i]) / (b[i]+b2[i]); a2 and b2
// may be nil.
func medianRatio(a, b, a2, b2 []time.Duration) float64 {
	var rs []float64
	for i := range min(len(a), len(b)) {
		num, den := a[i], b[i]
		if a2 != nil {
			num, den = num+a2[i], den+b2[i]
		}
		rs = append(rs, float64(num)/float64(den))
	}
	if len(rs) == 0 {
		return 0
	}
	slices.Sort(rs)
	return rs[len(rs)/2]
}

// BenchmarkPrivilegedNftables measures the nftables backend against the raw netlink work of
// the same objects, alternated in each iteration, with no iptables binary in PATH (and the
// driver's iptables runners checked to have started nothing):
//   - network: the bridge's netlink calls by hand (create, alias, address, up; delete)
//     against CreateNetwork and DeleteNetwork of a network with one IPv4 subnet (one
//     nf_tables batch each, and the sysctl reads);
//   - endpoint: Join's veth create and Leave's delete messages by hand against CreateEndpoint
//     with one published port, Join, Leave and DeleteEndpoint (one batch each for the port's
//     elements, and the conntrack flush); "create" is the raw veth create against
//     CreateEndpoint+Join, "delete" the raw delete against Leave+DeleteEndpoint.
func BenchmarkPrivilegedNftables(b *testing.B) {
	nstest.Privileged(b)
	withFirewall(b, FirewallNftables)
	noIPTables(b)
	e := newEnv(b)
	b.Run("network", func(b *testing.B) {
		req := drivers.CreateNetworkRequest{NetworkID: driverstest.NewNetworkID(), IPv4: v4("10.31.0.0/24")}
		createDeleteCycle(b, e.d, req, &splitTimer{}) // the first of the process converges the base
		var p pairTimer
		for b.Loop() {
			rawBridgeCycle(b, e.h, &p.base)
			createDeleteCycle(b, e.d, req, &p.cnm)
		}
		p.report(b, "raw", "nft")
	})
	b.Run("endpoint", func(b *testing.B) {
		nid := driverstest.NewNetworkID()
		e.createNetwork(b, drivers.CreateNetworkRequest{NetworkID: nid, IPv4: ipv4})
		n, err := e.d.network(nid)
		if err != nil {
			b.Fatal(err)
		}
		sb := nstest.NewNS(b)
		eid := driverstest.NewEndpointID()
		mac := net.HardwareAddr{0x02, 0x42, 0x0a, 0x7b, 0x00, 0x02}
		host := hostVethName(eid)
		ports := []drivers.PortBinding{{Proto: "tcp", HostPort: 8080, ContainerPort: 80}}
		var p pairTimer
		for b.Loop() {
			p.base.start()
			if err := e.d.raw.Exec(cnl.VethRequest(host, n.index, n.mtu, "eth0", mac, sb.FD())); err != nil {
				b.Fatal(err)
			}
			p.base.mid()
			if err := e.d.raw.Exec(cnl.DelLinkRequest(host)); err != nil {
				b.Fatal(err)
			}
			p.base.stop()

			p.cnm.start()
			if _, err := e.d.CreateEndpoint(b.Context(), drivers.CreateEndpointRequest{NetworkID: nid, EndpointID: eid, IPv4: netip.MustParsePrefix("10.123.0.2/24"), MAC: mac, Ports: ports}); err != nil {
				b.Fatal(err)
			}
			if _, err := e.d.Join(b.Context(), drivers.JoinRequest{NetworkID: nid, EndpointID: eid, SandboxKey: sb.Path(), NetnsFD: sb.FD(), IfName: "eth0", MAC: mac}); err != nil {
				b.Fatal(err)
			}
			p.cnm.mid()
			if err := e.d.Leave(b.Context(), drivers.LeaveRequest{NetworkID: nid, EndpointID: eid, IfName: "eth0"}); err != nil {
				b.Fatal(err)
			}
			if err := e.d.DeleteEndpoint(b.Context(), drivers.DeleteEndpointRequest{NetworkID: nid, EndpointID: eid}); err != nil {
				b.Fatal(err)
			}
			p.cnm.stop()
		}
		p.report(b, "raw", "nft")
	})
}

// BenchmarkPrivilegedNftablesKth measures, with the nftables backend, CreateNetwork and
// DeleteNetwork of one more network when k-1 networks exist, and CreateEndpoint and
// DeleteEndpoint of one more endpoint with a published port when k-1 such endpoints exist,
// for k = 1 (the baseline) and k = 1000, alternated in each iteration (two host namespaces):
// the ratios must stay near 1 (elements of hash maps; a batch touches nothing else).
func BenchmarkPrivilegedNftablesKth(b *testing.B) {
	nstest.Privileged(b)
	withFirewall(b, FirewallNftables)
	noIPTables(b)
	const k = 1000
	b.Run(fmt.Sprintf("network/k=%d", k), func(b *testing.B) {
		one, many := newEnv(b), newEnv(b)
		for i := range k - 1 {
			many.createNetwork(b, drivers.CreateNetworkRequest{IPv4: v4(fmt.Sprintf("10.%d.%d.0/24", 20+i/256, i%256))})
		}
		req := drivers.CreateNetworkRequest{NetworkID: driverstest.NewNetworkID(), IPv4: v4("10.30.0.0/24")}
		createDeleteCycle(b, one.d, req, &splitTimer{})
		var p pairTimer
		for b.Loop() {
			createDeleteCycle(b, one.d, req, &p.base)
			createDeleteCycle(b, many.d, req, &p.cnm)
		}
		p.report(b, "k1", fmt.Sprintf("k%d", k))
	})
	// The backend's own work for a network (its batch and the sysctl reads, no bridge), since a
	// bridge's kernel cost itself grows with the number of links (see BENCHMARKS.md).
	b.Run(fmt.Sprintf("firewall/k=%d", k), func(b *testing.B) {
		one, many := newEnv(b), newEnv(b)
		for i := range k - 1 {
			many.createNetwork(b, drivers.CreateNetworkRequest{IPv4: v4(fmt.Sprintf("10.%d.%d.0/24", 20+i/256, i%256))})
		}
		n, err := networkConfig(drivers.CreateNetworkRequest{NetworkID: driverstest.NewNetworkID(), IPv4: v4("10.30.0.0/24")})
		if err != nil {
			b.Fatal(err)
		}
		cycle := func(d *Driver, split *splitTimer) {
			split.start()
			if err := d.fwb.ensureNetwork(b.Context(), n, true); err != nil {
				b.Fatal(err)
			}
			split.mid()
			if err := d.fwb.removeNetwork(b.Context(), n.bridge, n); err != nil {
				b.Fatal(err)
			}
			split.stop()
		}
		cycle(one.d, &splitTimer{}) // the first of the process converges the base
		var p pairTimer
		for b.Loop() {
			cycle(one.d, &p.base)
			cycle(many.d, &p.cnm)
		}
		p.report(b, "k1", fmt.Sprintf("k%d", k))
	})
	b.Run(fmt.Sprintf("port/k=%d", k), func(b *testing.B) {
		nid := driverstest.NewNetworkID()
		one, many := newEnv(b), newEnv(b)
		for _, e := range []*testEnv{one, many} {
			e.createNetwork(b, drivers.CreateNetworkRequest{NetworkID: nid, IPv4: v4("10.20.0.0/16")})
		}
		for i := range k - 1 {
			eid := driverstest.NewEndpointID()
			if _, err := many.d.CreateEndpoint(b.Context(), drivers.CreateEndpointRequest{NetworkID: nid, EndpointID: eid,
				IPv4:  netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 20, byte(1 + i/250), byte(2 + i%250)}), 16),
				Ports: []drivers.PortBinding{{Proto: "tcp", HostPort: uint16(20000 + i), ContainerPort: 80}}}); err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() {
				many.d.DeleteEndpoint(b.Context(), drivers.DeleteEndpointRequest{NetworkID: nid, EndpointID: eid})
			})
		}
		eid := driverstest.NewEndpointID()
		req := drivers.CreateEndpointRequest{NetworkID: nid, EndpointID: eid, IPv4: netip.MustParsePrefix("10.20.0.2/16"),
			Ports: []drivers.PortBinding{{Proto: "tcp", HostPort: 8080, ContainerPort: 80}}}
		cycle := func(d *Driver, split *splitTimer) {
			split.start()
			if _, err := d.CreateEndpoint(b.Context(), req); err != nil {
				b.Fatal(err)
			}
			split.mid()
			if err := d.DeleteEndpoint(b.Context(), drivers.DeleteEndpointRequest{NetworkID: nid, EndpointID: eid}); err != nil {
				b.Fatal(err)
			}
			split.stop()
		}
		var p pairTimer
		for b.Loop() {
			cycle(one.d, &p.base)
			cycle(many.d, &p.cnm)
		}
		p.report(b, "k1", fmt.Sprintf("k%d", k))
	})
}
