package bridge

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	cnl "github.com/cnmkit/cnm/internal/nl"
	"github.com/google/nftables"
	"github.com/vishvananda/netlink"

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

// growthN is the number of networks and of published ports BenchmarkPrivilegedNftablesGrowth
// makes, growthEdge the number of them, at each end, whose costs it compares, and growthReps
// how many times each of those is measured.
const growthN, growthEdge, growthReps = 1000, 20, 3

// growth holds, for each k of the first and last growthEdge, the cost of cnm's k-th operation
// over its baseline's at the same k.
type growth struct{ first, last []float64 }

func (g *growth) add(k int, cnm, base time.Duration) {
	r := float64(cnm) / float64(base)
	switch {
	case k <= growthEdge:
		g.first = append(g.first, r)
	case k > growthN-growthEdge:
		g.last = append(g.last, r)
	}
}

// report reports the medians of the ratios at each end, and the last's over the first's:
// the growth from k = 1..20 to k = 981..1000.
func (g *growth) report(b *testing.B, name string) {
	med := func(rs []float64) float64 {
		rs = slices.Clone(rs)
		slices.Sort(rs)
		return rs[len(rs)/2]
	}
	if len(g.first) == 0 || len(g.last) == 0 {
		return
	}
	b.ReportMetric(med(g.first), name+"-first-x")
	b.ReportMetric(med(g.last), name+"-last-x")
	b.ReportMetric(med(g.last)/med(g.first), name+"-growth")
}

// growthOps are the operations runGrowth measures: cnm's create and delete of the k-th
// object, and the baseline's create and delete of one object.
type growthOps struct {
	create, delete       func(k int) time.Duration
	rawCreate, rawDelete func() time.Duration
}

// runGrowth creates growthN objects one by one. Before the k-th is made for good, for each k
// of the first and last growthEdge, it creates and deletes the k-th (next to k-1 others)
// growthReps times, each time alternated with the baseline's create and delete, which goes
// first alternating too (the first of a pair runs after the other's delete, the second right
// after the first). The caller removes the objects.
func runGrowth(ops growthOps) (create, del growth) {
	for k := 1; k <= growthN; k++ {
		if k <= growthEdge || k > growthN-growthEdge {
			for rep := range growthReps {
				var c, r time.Duration
				if (k+rep)%2 == 0 {
					r, c = ops.rawCreate(), ops.create(k)
				} else {
					c, r = ops.create(k), ops.rawCreate()
				}
				create.add(k, c, r)
				if (k+rep)%2 == 0 {
					r, c = ops.rawDelete(), ops.delete(k)
				} else {
					c, r = ops.delete(k), ops.rawDelete()
				}
				del.add(k, c, r)
			}
		}
		ops.create(k)
	}
	return create, del
}

// BenchmarkPrivilegedNftablesGrowth measures, with the nftables backend, how the cost of the
// k-th network and of the k-th published port grows from k = 1 to 1000 (see runGrowth), each
// against a baseline at the same k in the same namespace, so that the machine's speed at that
// moment cancels out:
//   - a network (CreateNetwork, DeleteNetwork): a raw netlink bridge create (create, alias,
//     address, up) and delete, next to the same k-1 bridges;
//   - a port (CreateEndpoint with one published port, DeleteEndpoint): a raw nf_tables batch
//     adding one element to a set of a table of its own, and one deleting it (the floor of a
//     batch), next to the same k-1 ports' elements.
//
// It reports the median ratio cnm/baseline over the first 20 k (growthReps each) and over the
// last 20, and their quotient, "-growth": 1.00 is flat.
func BenchmarkPrivilegedNftablesGrowth(b *testing.B) {
	nstest.Privileged(b)
	withFirewall(b, FirewallNftables)
	noIPTables(b)
	b.Run("network", func(b *testing.B) {
		for b.Loop() {
			e := newEnv(b)
			ids := make([]drivers.NetworkID, growthN+1)
			raw := &rawBridge{h: e.h}
			create, del := runGrowth(growthOps{
				create: func(k int) time.Duration {
					i := k - 1
					ids[k] = driverstest.NewNetworkID()
					t0 := time.Now()
					if err := e.d.CreateNetwork(b.Context(), drivers.CreateNetworkRequest{NetworkID: ids[k],
						IPv4: v4(fmt.Sprintf("10.%d.%d.0/24", 20+i/256, i%256))}); err != nil {
						b.Fatal(err)
					}
					return time.Since(t0)
				},
				delete: func(k int) time.Duration {
					t0 := time.Now()
					if err := e.d.DeleteNetwork(b.Context(), drivers.DeleteNetworkRequest{NetworkID: ids[k]}); err != nil {
						b.Fatal(err)
					}
					return time.Since(t0)
				},
				rawCreate: func() time.Duration { return raw.create(b) },
				rawDelete: func() time.Duration { return raw.delete(b) },
			})
			create.report(b, "create")
			del.report(b, "delete")
			for _, id := range ids[1:] {
				if err := e.d.DeleteNetwork(b.Context(), drivers.DeleteNetworkRequest{NetworkID: id}); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
	// "port-noflush" is "port" without DeleteEndpoint's conntrack flush: the kernel walks its
	// conntrack table, which every namespace of the machine shares, so that cost drifts with
	// what the machine's other tenants do during the run.
	for _, noFlush := range []bool{false, true} {
		name := "port"
		if noFlush {
			name = "port-noflush"
		}
		b.Run(name, func(b *testing.B) { benchPortGrowth(b, noFlush) })
	}
}

// benchPortGrowth is the port half of BenchmarkPrivilegedNftablesGrowth.
func benchPortGrowth(b *testing.B, noFlush bool) {
	for b.Loop() {
		e := newEnv(b)
		nid := driverstest.NewNetworkID()
		e.createNetwork(b, drivers.CreateNetworkRequest{NetworkID: nid, IPv4: v4("10.20.0.0/16")})
		raw := newRawNftBatch(b, e)
		if noFlush {
			e.d.ct = nil
		}
		eids := make([]drivers.EndpointID, growthN+1)
		create, del := runGrowth(growthOps{
			create: func(k int) time.Duration {
				i := k - 1
				eids[k] = driverstest.NewEndpointID()
				t0 := time.Now()
				if _, err := e.d.CreateEndpoint(b.Context(), drivers.CreateEndpointRequest{NetworkID: nid, EndpointID: eids[k],
					IPv4:  netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 20, byte(1 + i/250), byte(2 + i%250)}), 16),
					Ports: []drivers.PortBinding{{Proto: "tcp", HostPort: uint16(20000 + i), ContainerPort: 80}}}); err != nil {
					b.Fatal(err)
				}
				return time.Since(t0)
			},
			delete: func(k int) time.Duration {
				t0 := time.Now()
				if err := e.d.DeleteEndpoint(b.Context(), drivers.DeleteEndpointRequest{NetworkID: nid, EndpointID: eids[k]}); err != nil {
					b.Fatal(err)
				}
				return time.Since(t0)
			},
			rawCreate: func() time.Duration { return raw.add(b) },
			rawDelete: func() time.Duration { return raw.del(b) },
		})
		create.report(b, "create")
		del.report(b, "delete")
		for _, eid := range eids[1:] {
			if err := e.d.DeleteEndpoint(b.Context(), drivers.DeleteEndpointRequest{NetworkID: nid, EndpointID: eid}); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// rawNftBatch is the floor of an nf_tables batch: one element added to, or deleted from, a
// set of a table of its own ("inet bench"), over a lasting netlink socket.
type rawNftBatch struct {
	conn *nftables.Conn
	set  *nftables.Set
}

func newRawNftBatch(b *testing.B, e *testEnv) *rawNftBatch {
	conn, err := nftables.New(nftables.WithNetNSFd(e.host.FD()), nftables.AsLasting())
	if err != nil {
		b.Fatal(err)
	}
	t := conn.AddTable(&nftables.Table{Name: "bench", Family: nftables.TableFamilyINet})
	s := &nftables.Set{Table: t, Name: "s", KeyType: nftables.TypeInetService}
	if err := conn.AddSet(s, nil); err != nil {
		b.Fatal(err)
	}
	if err := conn.Flush(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		conn.DelTable(t)
		if err := conn.Flush(); err != nil {
			b.Error(err)
		}
		conn.CloseLasting()
	})
	return &rawNftBatch{conn: conn, set: s}
}

// add adds the element in one batch and returns how long that took.
func (r *rawNftBatch) add(b *testing.B) time.Duration {
	t0 := time.Now()
	if err := r.conn.SetAddElements(r.set, []nftables.SetElement{{Key: be16(8080)}}); err != nil {
		b.Fatal(err)
	}
	if err := r.conn.Flush(); err != nil {
		b.Fatal(err)
	}
	return time.Since(t0)
}

// del deletes the element in one batch and returns how long that took.
func (r *rawNftBatch) del(b *testing.B) time.Duration {
	t0 := time.Now()
	if err := r.conn.SetDeleteElements(r.set, []nftables.SetElement{{Key: be16(8080)}}); err != nil {
		b.Fatal(err)
	}
	if err := r.conn.Flush(); err != nil {
		b.Fatal(err)
	}
	return time.Since(t0)
}

// rawBridge is rawBridgeCycle in two halves.
type rawBridge struct{ h *netlink.Handle }

func (r *rawBridge) create(b *testing.B) time.Duration {
	var s splitTimer
	s.start()
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br-bench", MTU: 1500}}
	if err := r.h.LinkAdd(br); err != nil {
		b.Fatal(err)
	}
	if err := r.h.LinkSetAlias(br, "cnm:bench"); err != nil {
		b.Fatal(err)
	}
	if err := r.h.AddrAdd(br, bridgeAddr(netip.MustParsePrefix("10.30.0.1/24"))); err != nil {
		b.Fatal(err)
	}
	if err := r.h.LinkSetUp(br); err != nil {
		b.Fatal(err)
	}
	return time.Since(s.t0)
}

func (r *rawBridge) delete(b *testing.B) time.Duration {
	t0 := time.Now()
	if err := r.h.LinkDel(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br-bench"}}); err != nil {
		b.Fatal(err)
	}
	return time.Since(t0)
}
