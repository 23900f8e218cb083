package bridge

import (
	cnl "github.com/cnmkit/cnm/internal/nl"
	"net"
	"testing"
	"time"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/drivers/driverstest"
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
}

func (s *splitTimer) start() { s.t0 = time.Now() }
func (s *splitTimer) mid()   { s.t1 = time.Now() }
func (s *splitTimer) stop() {
	now := time.Now()
	s.create += s.t1.Sub(s.t0)
	s.delete += now.Sub(s.t1)
	s.n++
}

func (s *splitTimer) report(b *testing.B) {
	if s.n == 0 {
		return
	}
	b.ReportMetric(float64(s.create.Nanoseconds())/float64(s.n), "create-ns/op")
	b.ReportMetric(float64(s.delete.Nanoseconds())/float64(s.n), "delete-ns/op")
}
