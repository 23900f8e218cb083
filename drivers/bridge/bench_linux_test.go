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
	"github.com/cnmkit/cnm/internal/netns"
	"github.com/cnmkit/cnm/internal/nstest"
	"github.com/vishvananda/netlink"
)

// BenchmarkPrivilegedJoin measures one Join and Leave of an endpoint against the netlink work
// they do, each iteration creating and deleting one veth pair between a bridge in a host
// namespace and a sandbox namespace:
//   - raw: Join's create message and Leave's delete message, built and sent by hand;
//   - linkadd: the same pair through netlink v1.3.1's Handle.LinkAdd with MasterIndex and
//     Handle.LinkDel (what a driver gets from the library: five round trips);
//   - driver: Driver.Join and Driver.Leave with SandboxGone false.
//
// Besides ns/op (create and delete), each reports create-ns/op and delete-ns/op.
func BenchmarkPrivilegedJoin(b *testing.B) {
	nstest.Privileged(b)
	e := newEnv(b)
	nid, eid := driverstest.NewNetworkID(), driverstest.NewEndpointID()
	e.createNetwork(b, drivers.CreateNetworkRequest{NetworkID: nid, IPv4: ipv4})
	n, err := e.d.network(nid)
	if err != nil {
		b.Fatal(err)
	}
	sb := nstest.NewNS(b)
	mac := net.HardwareAddr{0x02, 0x42, 0x0a, 0x7b, 0x00, 0x02}
	host := hostVethName(eid)

	b.Run("raw", func(b *testing.B) {
		b.ReportAllocs()
		var split splitTimer
		for b.Loop() {
			split.start()
			if err := e.d.raw.Exec(cnl.VethRequest(host, n.index, n.mtu, "eth0", mac, sb.FD())); err != nil {
				b.Fatal(err)
			}
			split.mid()
			if err := e.d.raw.Exec(cnl.DelLinkRequest(host)); err != nil {
				b.Fatal(err)
			}
			split.stop()
		}
		split.report(b)
	})
	b.Run("linkadd", func(b *testing.B) {
		b.ReportAllocs()
		var split splitTimer
		for b.Loop() {
			split.start()
			veth := &netlink.Veth{
				LinkAttrs: netlink.LinkAttrs{
					Name: host, MTU: n.mtu, MasterIndex: n.index, Flags: net.FlagUp, TxQLen: -1,
				},
				PeerName:         "eth0",
				PeerHardwareAddr: mac,
				PeerNamespace:    netlink.NsFd(sb.FD()),
				PeerMTU:          uint32(n.mtu),
			}
			if err := e.d.h.LinkAdd(veth); err != nil {
				b.Fatal(err)
			}
			split.mid()
			if err := e.d.h.LinkDel(veth); err != nil {
				b.Fatal(err)
			}
			split.stop()
		}
		split.report(b)
	})
	b.Run("driver", func(b *testing.B) {
		b.ReportAllocs()
		jreq := drivers.JoinRequest{
			NetworkID: nid, EndpointID: eid, SandboxKey: sb.Path(), NetnsFD: sb.FD(),
			IfName: "eth0", MAC: mac,
		}
		lreq := drivers.LeaveRequest{NetworkID: nid, EndpointID: eid, SandboxKey: sb.Path(), IfName: "eth0"}
		var split splitTimer
		for b.Loop() {
			split.start()
			if _, err := e.d.Join(b.Context(), jreq); err != nil {
				b.Fatal(err)
			}
			split.mid()
			if err := e.d.Leave(b.Context(), lreq); err != nil {
				b.Fatal(err)
			}
			split.stop()
		}
		split.report(b)
	})
}

// splitTimer times the two halves of an iteration, create and delete.
type splitTimer struct {
	t0, t1         time.Time
	create, delete time.Duration
	n              int
	// cs and ds are each iteration's create and delete halves.
	cs, ds []time.Duration
}

func (s *splitTimer) start() { s.t0 = time.Now() }
func (s *splitTimer) mid()   { s.t1 = time.Now() }
func (s *splitTimer) stop() {
	now := time.Now()
	s.create += s.t1.Sub(s.t0)
	s.delete += now.Sub(s.t1)
	s.cs, s.ds = append(s.cs, s.t1.Sub(s.t0)), append(s.ds, now.Sub(s.t1))
	s.n++
}

func (s *splitTimer) report(b *testing.B) {
	if s.n == 0 {
		return
	}
	b.ReportMetric(float64(s.create.Nanoseconds())/float64(s.n), "create-ns/op")
	b.ReportMetric(float64(s.delete.Nanoseconds())/float64(s.n), "delete-ns/op")
}

// BenchmarkPrivilegedNetwork measures one CreateNetwork and DeleteNetwork of a network with
// one IPv4 subnet against the netlink work they do:
//   - raw: the bridge's netlink calls (create, alias, address, up; delete);
//   - nofw: the driver with Config.DisableIPTables;
//   - driver: the driver with its firewall rules (one iptables-restore each for create and
//     delete, no iptables-save, and the sysctl reads).
func BenchmarkPrivilegedNetwork(b *testing.B) {
	nstest.Privileged(b)
	e := newEnv(b)
	req := drivers.CreateNetworkRequest{NetworkID: driverstest.NewNetworkID(), IPv4: v4("10.30.0.0/24")}
	b.Run("raw", func(b *testing.B) { benchRawBridge(b, e.h) })
	for _, tc := range []struct {
		name string
		noFW bool
	}{{"nofw", true}, {"driver", false}} {
		b.Run(tc.name, func(b *testing.B) {
			d, err := New(Config{HostNetns: e.host.Path(), DisableIPTables: tc.noFW})
			if err != nil {
				b.Fatal(err)
			}
			defer d.Close()
			benchCreateDelete(b, d, req)
		})
	}
}

// benchRawBridge measures the bridge's netlink calls of CreateNetwork (create, alias, address,
// up) and DeleteNetwork (delete), made by hand through h.
func benchRawBridge(b *testing.B, h *netlink.Handle) {
	b.ReportAllocs()
	var split splitTimer
	for b.Loop() {
		rawBridgeCycle(b, h, &split)
	}
	split.report(b)
}

// rawBridgeCycle creates and deletes a bridge as benchRawBridge does, timing both halves.
func rawBridgeCycle(b *testing.B, h *netlink.Handle, split *splitTimer) {
	split.start()
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br-bench", MTU: 1500}}
	if err := h.LinkAdd(br); err != nil {
		b.Fatal(err)
	}
	if err := h.LinkSetAlias(br, "cnm:bench"); err != nil {
		b.Fatal(err)
	}
	if err := h.AddrAdd(br, bridgeAddr(netip.MustParsePrefix("10.30.0.1/24"))); err != nil {
		b.Fatal(err)
	}
	if err := h.LinkSetUp(br); err != nil {
		b.Fatal(err)
	}
	split.mid()
	if err := h.LinkDel(br); err != nil {
		b.Fatal(err)
	}
	split.stop()
}

// createDeleteCycle creates and deletes the network of req with d, timing both halves.
func createDeleteCycle(b *testing.B, d *Driver, req drivers.CreateNetworkRequest, split *splitTimer) {
	split.start()
	if err := d.CreateNetwork(b.Context(), req); err != nil {
		b.Fatal(err)
	}
	split.mid()
	if err := d.DeleteNetwork(b.Context(), drivers.DeleteNetworkRequest{NetworkID: req.NetworkID}); err != nil {
		b.Fatal(err)
	}
	split.stop()
}

func benchCreateDelete(b *testing.B, d *Driver, req drivers.CreateNetworkRequest) {
	b.ReportAllocs()
	var split splitTimer
	for b.Loop() {
		createDeleteCycle(b, d, req, &split)
	}
	split.report(b)
}

// BenchmarkPrivilegedKthNetwork measures CreateNetwork and DeleteNetwork of one more network
// when k-1 networks, with their rules, exist already: the cost must not grow noticeably with
// k (the rules are O(networks), never pairwise).
func BenchmarkPrivilegedKthNetwork(b *testing.B) {
	nstest.Privileged(b)
	for _, k := range []int{1, 50, 200} {
		b.Run(fmt.Sprintf("k=%d", k), func(b *testing.B) {
			e := newEnv(b)
			for i := range k - 1 {
				e.createNetwork(b, drivers.CreateNetworkRequest{IPv4: v4(fmt.Sprintf("10.20.%d.0/24", i))})
			}
			benchCreateDelete(b, e.d, drivers.CreateNetworkRequest{NetworkID: driverstest.NewNetworkID(), IPv4: v4("10.30.0.0/24")})
		})
	}
}

// BenchmarkPrivilegedPublish measures CreateEndpoint, Join, Leave and DeleteEndpoint of one
// endpoint against the raw netlink messages of Join and Leave: without published ports (no
// iptables work, one conntrack flush on delete) and with one published port (one
// iptables-restore each for create and delete, no iptables-save).
func BenchmarkPrivilegedPublish(b *testing.B) {
	nstest.Privileged(b)
	e := newEnv(b)
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
	b.Run("raw", func(b *testing.B) { benchRawVeth(b, e.d, n, host, mac, sb) })
	for _, tc := range []struct {
		name  string
		ports []drivers.PortBinding
	}{{"noports", nil}, {"oneport", []drivers.PortBinding{{Proto: "tcp", HostPort: 8080, ContainerPort: 80}}}} {
		b.Run(tc.name, func(b *testing.B) {
			runs := e.d.fw.Runs()
			for b.Loop() {
				benchEndpoint(b, e.d, nid, eid, sb, mac, tc.ports)
			}
			b.ReportMetric(float64(e.d.fw.Runs()-runs)/float64(b.N), "iptables/op")
		})
	}
}

// benchRawVeth measures Join's create message and Leave's delete message of a veth named host
// on n's bridge, sent by hand through d's socket.
func benchRawVeth(b *testing.B, d *Driver, n *network, host string, mac net.HardwareAddr, sb *netns.NS) {
	for b.Loop() {
		if err := d.raw.Exec(cnl.VethRequest(host, n.index, n.mtu, "eth0", mac, sb.FD())); err != nil {
			b.Fatal(err)
		}
		if err := d.raw.Exec(cnl.DelLinkRequest(host)); err != nil {
			b.Fatal(err)
		}
	}
}

func benchEndpoint(b *testing.B, d *Driver, nid drivers.NetworkID, eid drivers.EndpointID, sb *netns.NS, mac net.HardwareAddr, ports []drivers.PortBinding) {
	if _, err := d.CreateEndpoint(b.Context(), drivers.CreateEndpointRequest{NetworkID: nid, EndpointID: eid, IPv4: netip.MustParsePrefix("10.123.0.2/24"), MAC: mac, Ports: ports}); err != nil {
		b.Fatal(err)
	}
	if _, err := d.Join(b.Context(), drivers.JoinRequest{NetworkID: nid, EndpointID: eid, SandboxKey: sb.Path(), NetnsFD: sb.FD(), IfName: "eth0", MAC: mac}); err != nil {
		b.Fatal(err)
	}
	if err := d.Leave(b.Context(), drivers.LeaveRequest{NetworkID: nid, EndpointID: eid, IfName: "eth0"}); err != nil {
		b.Fatal(err)
	}
	if err := d.DeleteEndpoint(b.Context(), drivers.DeleteEndpointRequest{NetworkID: nid, EndpointID: eid}); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkPrivilegedKthPort measures CreateEndpoint and DeleteEndpoint of an endpoint with one
// published port when k-1 endpoints with one published port each exist already.
func BenchmarkPrivilegedKthPort(b *testing.B) {
	nstest.Privileged(b)
	for _, k := range []int{1, 50, 200} {
		b.Run(fmt.Sprintf("k=%d", k), func(b *testing.B) {
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

// BenchmarkPrivilegedKthInterleaved measures the k-th network and the k-th published port at
// k = 1 and k = 200 in alternation: each iteration creates and deletes one network (or one
// endpoint with a published port) in a host namespace with nothing else, then in one with 199
// others, so that the load of a shared machine weighs on both sides alike, which running
// k = 1 and k = 200 one after the other (BenchmarkPrivilegedKthNetwork, ...KthPort) does not
// ensure. It reports the median create and delete times of each side, in ms, and their ratios
// (k = 200 over k = 1), which must stay close to 1.
func BenchmarkPrivilegedKthInterleaved(b *testing.B) {
	nstest.Privileged(b)
	const k = 200
	b.Run("network", func(b *testing.B) {
		small, big := newEnv(b), newEnv(b)
		for i := range k - 1 {
			big.createNetwork(b, drivers.CreateNetworkRequest{IPv4: v4(fmt.Sprintf("10.20.%d.0/24", i))})
		}
		req := drivers.CreateNetworkRequest{NetworkID: driverstest.NewNetworkID(), IPv4: v4("10.30.0.0/24")}
		var s [2]medianSplit
		for b.Loop() {
			for i, e := range []*testEnv{small, big} {
				t0 := time.Now()
				if err := e.d.CreateNetwork(b.Context(), req); err != nil {
					b.Fatal(err)
				}
				t1 := time.Now()
				if err := e.d.DeleteNetwork(b.Context(), drivers.DeleteNetworkRequest{NetworkID: req.NetworkID}); err != nil {
					b.Fatal(err)
				}
				s[i].add(t1.Sub(t0), time.Since(t1))
			}
		}
		reportMedians(b, s)
	})
	b.Run("port", func(b *testing.B) {
		var (
			envs [2]*testEnv
			nids [2]drivers.NetworkID
		)
		for j := range envs {
			envs[j], nids[j] = newEnv(b), driverstest.NewNetworkID()
			envs[j].createNetwork(b, drivers.CreateNetworkRequest{NetworkID: nids[j], IPv4: v4("10.20.0.0/16")})
		}
		big := envs[1]
		for i := range k - 1 {
			eid := driverstest.NewEndpointID()
			if _, err := big.d.CreateEndpoint(b.Context(), drivers.CreateEndpointRequest{NetworkID: nids[1], EndpointID: eid,
				IPv4:  netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 20, byte(1 + i/250), byte(2 + i%250)}), 16),
				Ports: []drivers.PortBinding{{Proto: "tcp", HostPort: uint16(20000 + i), ContainerPort: 80}}}); err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() {
				big.d.DeleteEndpoint(b.Context(), drivers.DeleteEndpointRequest{NetworkID: nids[1], EndpointID: eid})
			})
		}
		eid := driverstest.NewEndpointID()
		var s [2]medianSplit
		for b.Loop() {
			for i, e := range envs {
				req := drivers.CreateEndpointRequest{NetworkID: nids[i], EndpointID: eid, IPv4: netip.MustParsePrefix("10.20.0.2/16"),
					Ports: []drivers.PortBinding{{Proto: "tcp", HostPort: 8080, ContainerPort: 80}}}
				t0 := time.Now()
				if _, err := e.d.CreateEndpoint(b.Context(), req); err != nil {
					b.Fatal(err)
				}
				t1 := time.Now()
				if err := e.d.DeleteEndpoint(b.Context(), drivers.DeleteEndpointRequest{NetworkID: nids[i], EndpointID: eid}); err != nil {
					b.Fatal(err)
				}
				s[i].add(t1.Sub(t0), time.Since(t1))
			}
		}
		reportMedians(b, s)
	})
}

// medianSplit collects the create and delete times of one side of an interleaved benchmark.
type medianSplit struct{ create, delete []time.Duration }

func (m *medianSplit) add(create, delete time.Duration) {
	m.create = append(m.create, create)
	m.delete = append(m.delete, delete)
}

func median(d []time.Duration) float64 {
	s := slices.Clone(d)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return float64(s[len(s)/2]) / float64(time.Millisecond)
}

// reportMedians reports the medians of s[0] (k = 1) and s[1] (k = 200), and their ratios.
func reportMedians(b *testing.B, s [2]medianSplit) {
	c1, d1, c2, d2 := median(s[0].create), median(s[0].delete), median(s[1].create), median(s[1].delete)
	b.ReportMetric(c1, "k1-create-ms")
	b.ReportMetric(d1, "k1-delete-ms")
	b.ReportMetric(c2, "k200-create-ms")
	b.ReportMetric(d2, "k200-delete-ms")
	if c1 > 0 && d1 > 0 {
		b.ReportMetric(c2/c1, "create-x")
		b.ReportMetric(d2/d1, "delete-x")
	}
}
