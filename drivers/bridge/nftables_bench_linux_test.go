package bridge

import (
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/drivers/driverstest"
	"github.com/cnmkit/cnm/internal/nstest"
)

// BenchmarkPrivilegedNftables measures the nftables backend against the raw netlink work of
// the same objects, in one run, with no iptables binary in PATH (and the driver's iptables
// runners checked to have started nothing):
//   - network/raw: the bridge's netlink calls (create, alias, address, up; delete);
//   - network/nftables: CreateNetwork and DeleteNetwork of a network with one IPv4 subnet (one
//     nf_tables batch each, and the sysctl reads);
//   - endpoint/raw: Join's veth create and Leave's delete messages, by hand;
//   - endpoint/oneport: CreateEndpoint with one published port, Join, Leave and
//     DeleteEndpoint (one batch each for create and delete, and the conntrack flush).
func BenchmarkPrivilegedNftables(b *testing.B) {
	nstest.Privileged(b)
	withFirewall(b, FirewallNftables)
	noIPTables(b)
	e := newEnv(b)
	b.Run("network/raw", func(b *testing.B) { benchRawBridge(b, e.h) })
	b.Run("network/nftables", func(b *testing.B) {
		benchCreateDelete(b, e.d, drivers.CreateNetworkRequest{NetworkID: driverstest.NewNetworkID(), IPv4: v4("10.30.0.0/24")})
	})
	nid := driverstest.NewNetworkID()
	e.createNetwork(b, drivers.CreateNetworkRequest{NetworkID: nid, IPv4: ipv4})
	n, err := e.d.network(nid)
	if err != nil {
		b.Fatal(err)
	}
	sb := nstest.NewNS(b)
	eid := driverstest.NewEndpointID()
	mac := net.HardwareAddr{0x02, 0x42, 0x0a, 0x7b, 0x00, 0x02}
	b.Run("endpoint/raw", func(b *testing.B) { benchRawVeth(b, e.d, n, hostVethName(eid), mac, sb) })
	b.Run("endpoint/oneport", func(b *testing.B) {
		ports := []drivers.PortBinding{{Proto: "tcp", HostPort: 8080, ContainerPort: 80}}
		for b.Loop() {
			benchEndpoint(b, e.d, nid, eid, sb, mac, ports)
		}
	})
}

// BenchmarkPrivilegedNftablesKth measures, with the nftables backend, CreateNetwork and
// DeleteNetwork of one more network when k-1 networks exist, and CreateEndpoint and
// DeleteEndpoint of one more endpoint with a published port when k-1 such endpoints exist:
// the cost must not grow with k (elements of hash maps; the batch touches nothing else).
func BenchmarkPrivilegedNftablesKth(b *testing.B) {
	nstest.Privileged(b)
	withFirewall(b, FirewallNftables)
	noIPTables(b)
	for _, k := range []int{1, 1000} {
		b.Run(fmt.Sprintf("network/k=%d", k), func(b *testing.B) {
			e := newEnv(b)
			for i := range k - 1 {
				e.createNetwork(b, drivers.CreateNetworkRequest{IPv4: v4(fmt.Sprintf("10.%d.%d.0/24", 20+i/256, i%256))})
			}
			benchCreateDelete(b, e.d, drivers.CreateNetworkRequest{NetworkID: driverstest.NewNetworkID(), IPv4: v4("10.30.0.0/24")})
		})
	}
	for _, k := range []int{1, 1000} {
		b.Run(fmt.Sprintf("port/k=%d", k), func(b *testing.B) {
			e := newEnv(b)
			nid := driverstest.NewNetworkID()
			e.createNetwork(b, drivers.CreateNetworkRequest{NetworkID: nid, IPv4: v4("10.20.0.0/16")})
			for i := range k - 1 {
				eid := driverstest.NewEndpointID()
				if _, err := e.d.CreateEndpoint(b.Context(), drivers.CreateEndpointRequest{NetworkID: nid, EndpointID: eid,
					IPv4:  netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 20, byte(1 + i/250), byte(2 + i%250)}), 16),
					Ports: []drivers.PortBinding{{Proto: "tcp", HostPort: uint16(20000 + i), ContainerPort: 80}}}); err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() {
					e.d.DeleteEndpoint(b.Context(), drivers.DeleteEndpointRequest{NetworkID: nid, EndpointID: eid})
				})
			}
			eid := driverstest.NewEndpointID()
			req := drivers.CreateEndpointRequest{NetworkID: nid, EndpointID: eid, IPv4: netip.MustParsePrefix("10.20.0.2/16"),
				Ports: []drivers.PortBinding{{Proto: "tcp", HostPort: 8080, ContainerPort: 80}}}
			var split splitTimer
			for b.Loop() {
				split.start()
				if _, err := e.d.CreateEndpoint(b.Context(), req); err != nil {
					b.Fatal(err)
				}
				split.mid()
				if err := e.d.DeleteEndpoint(b.Context(), drivers.DeleteEndpointRequest{NetworkID: nid, EndpointID: eid}); err != nil {
					b.Fatal(err)
				}
				split.stop()
			}
			split.report(b)
		})
	}
}
