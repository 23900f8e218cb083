package macvlan

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/drivers/driverstest"
	"github.com/cnmkit/cnm/internal/netns"
	"github.com/cnmkit/cnm/internal/nstest"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

var (
	lanSubnet = netip.MustParsePrefix("192.168.50.0/24")
	lanGW     = netip.MustParseAddr("192.168.50.1")
	lanIPAM   = []drivers.IPAMData{{Subnet: lanSubnet, Gateway: lanGW}}
)

func newDriver(t testing.TB, host *netns.NS) *Driver {
	t.Helper()
	d, err := New(Config{
		HostNetns: host.Path(),
		Logger:    slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func handleAt(t testing.TB, ns *netns.NS) *netlink.Handle {
	t.Helper()
	h, err := netlink.NewHandleAt(ns.Handle(), unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

func linkNames(t testing.TB, h *netlink.Handle) []string {
	t.Helper()
	links, err := h.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range links {
		names = append(names, l.Attrs().Name)
	}
	slices.Sort(names)
	return names
}

func sh(t testing.TB, ns *netns.NS, cmd string) string {
	t.Helper()
	f := strings.Fields(cmd)
	out, err := nstest.Exec(ns, f[0], f[1:]...)
	if err != nil {
		t.Fatalf("%s: %v: %s", cmd, err, out)
	}
	return out
}

// lab is the LAN of the tests: a bridge "lan" in its own namespace, and namespaces plugged
// into it with a veth whose end in them is eth0.
type lab struct {
	ns *netns.NS
	h  *netlink.Handle
	n  int
}

func newLab(t testing.TB) *lab {
	t.Helper()
	l := &lab{ns: nstest.NewNS(t)}
	l.h = handleAt(t, l.ns)
	sh(t, l.ns, "ip link add lan type bridge")
	sh(t, l.ns, "ip link set lan up")
	return l
}

// plug gives ns an eth0 (up, with addr when valid) on the LAN and returns the name of the
// LAN's port for it.
func (l *lab) plug(t testing.TB, ns *netns.NS, addr netip.Prefix) string {
	t.Helper()
	l.n++
	port := fmt.Sprintf("port%d", l.n)
	tmp := fmt.Sprintf("tmp%d", l.n)
	sh(t, l.ns, "ip link add "+port+" type veth peer name "+tmp)
	sh(t, l.ns, "ip link set "+port+" master lan up")
	peer, err := l.h.LinkByName(tmp)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.h.LinkSetNsFd(peer, ns.FD()); err != nil {
		t.Fatal(err)
	}
	sh(t, ns, "ip link set "+tmp+" name eth0")
	sh(t, ns, "ip link set eth0 up")
	if addr.IsValid() {
		sh(t, ns, "ip addr add "+addr.String()+" dev eth0")
	}
	return port
}

// container is a sandbox namespace joined to a network of d.
type container struct {
	ns  *netns.NS
	ip  netip.Prefix
	mac net.HardwareAddr
}

// join creates an endpoint with address ip on network nid, joins it to a new sandbox as eth0
// and configures it as the sandbox would: address, up, default route via the gateway. Leave
// and DeleteEndpoint run when the test ends.
func join(t testing.TB, d *Driver, nid drivers.NetworkID, ip string) *container {
	t.Helper()
	c := &container{ns: nstest.NewNS(t), ip: netip.MustParsePrefix(ip)}
	eid := driverstest.NewEndpointID()
	res, err := d.CreateEndpoint(t.Context(), drivers.CreateEndpointRequest{NetworkID: nid, EndpointID: eid, IPv4: c.ip})
	if err != nil {
		t.Fatalf("CreateEndpoint: %v", err)
	}
	c.mac = res.MAC
	jr, err := d.Join(t.Context(), drivers.JoinRequest{
		NetworkID: nid, EndpointID: eid, SandboxKey: c.ns.Path(), NetnsFD: c.ns.FD(),
		IfName: "eth0", MAC: c.mac, IPv4: c.ip,
	})
	if err != nil {
		t.Fatalf("Join: %v", err)
	}
	t.Cleanup(func() {
		if err := d.Leave(t.Context(), drivers.LeaveRequest{NetworkID: nid, EndpointID: eid, SandboxKey: c.ns.Path(), IfName: "eth0"}); err != nil {
			t.Errorf("Leave: %v", err)
		}
		if err := d.DeleteEndpoint(t.Context(), drivers.DeleteEndpointRequest{NetworkID: nid, EndpointID: eid}); err != nil {
			t.Errorf("DeleteEndpoint: %v", err)
		}
	})
	sh(t, c.ns, "ip addr add "+c.ip.String()+" dev eth0")
	sh(t, c.ns, "ip link set eth0 up")
	if jr.Gateway.IsValid() {
		sh(t, c.ns, "ip route add default via "+jr.Gateway.String())
	}
	return c
}

func createNetwork(t testing.TB, d *Driver, req drivers.CreateNetworkRequest) drivers.NetworkID {
	t.Helper()
	if req.NetworkID == "" {
		req.NetworkID = driverstest.NewNetworkID()
	}
	if err := d.CreateNetwork(t.Context(), req); err != nil {
		t.Fatalf("CreateNetwork: %v", err)
	}
	t.Cleanup(func() {
		if err := d.DeleteNetwork(t.Context(), drivers.DeleteNetworkRequest{NetworkID: req.NetworkID}); err != nil {
			t.Errorf("DeleteNetwork: %v", err)
		}
	})
	return req.NetworkID
}

func reaches(t testing.TB, from *netns.NS, to netip.Addr) bool {
	t.Helper()
	_, ok := nstest.Ping(from.Path(), to.String(), 2)
	return ok
}

// TestPrivilegedConformance runs driverstest.Run on networks without a parent (each has its
// own veth parent): the suite gives every network the same subnet, which networks sharing a
// parent refuse as overlapping.
func TestPrivilegedConformance(t *testing.T) {
	nstest.Privileged(t)
	driverstest.Run(t, driverstest.Harness{
		New: func(t *testing.T) drivers.Driver {
			host := nstest.NewNS(t)
			h := handleAt(t, host)
			t.Cleanup(func() {
				if names := linkNames(t, h); !slices.Equal(names, []string{"lo"}) {
					t.Errorf("links left in the host namespace: %v, want only lo", names)
				}
			})
			return newDriver(t, host)
		},
		Options: NetworkOptions{Mode: ModeBridge, MTU: 1400},
		IPv4:    lanIPAM,
		Sandbox: func(t *testing.T) (string, int) {
			ns := nstest.NewNS(t)
			return ns.Path(), ns.FD()
		},
	})
}

// TestPrivilegedLAN: containers on two hosts, each a macvlan link on its host's eth0, reach
// each other and the LAN's router directly, and the router sees them with their own MACs. The
// host itself cannot reach its own macvlan containers: the kernel hands a frame from a
// macvlan parent out to the wire, never to the parent's own macvlan links (and frames from a
// macvlan link to its parent's address go out to the wire too).
func TestPrivilegedLAN(t *testing.T) {
	nstest.Privileged(t)
	l := newLab(t)
	router, host1, host2 := nstest.NewNS(t), nstest.NewNS(t), nstest.NewNS(t)
	l.plug(t, router, netip.PrefixFrom(lanGW, 24))
	l.plug(t, host1, netip.MustParsePrefix("192.168.50.2/24"))
	l.plug(t, host2, netip.MustParsePrefix("192.168.50.3/24"))
	d1, d2 := newDriver(t, host1), newDriver(t, host2)
	opts := NetworkOptions{Parent: "eth0"}
	n1 := createNetwork(t, d1, drivers.CreateNetworkRequest{Options: opts, IPv4: lanIPAM})
	n2 := createNetwork(t, d2, drivers.CreateNetworkRequest{Options: opts, IPv4: lanIPAM})
	c1 := join(t, d1, n1, "192.168.50.10/24")
	c2 := join(t, d2, n2, "192.168.50.20/24")

	// The link is a macvlan link on the host's eth0, in the container, with the Docker MAC.
	l1, err := handleAt(t, c1.ns).LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	mv, ok := l1.(*netlink.Macvlan)
	if !ok || mv.Mode != netlink.MACVLAN_MODE_BRIDGE {
		t.Fatalf("container eth0 is %T %+v, want a bridge-mode macvlan link", l1, l1)
	}
	if got, want := l1.Attrs().HardwareAddr.String(), "02:42:c0:a8:32:0a"; got != want {
		t.Errorf("container MAC = %s, want %s (02:42 and the address)", got, want)
	}
	if got := l1.Attrs().MTU; got != 1500 {
		t.Errorf("container MTU = %d, want the parent's 1500", got)
	}

	for _, p := range []struct {
		from *netns.NS
		to   netip.Addr
		what string
	}{
		{c1.ns, c2.ip.Addr(), "container on host 1 -> container on host 2"},
		{c2.ns, c1.ip.Addr(), "container on host 2 -> container on host 1"},
		{c1.ns, lanGW, "container on host 1 -> router"},
		{c2.ns, lanGW, "container on host 2 -> router"},
		{router, c1.ip.Addr(), "router -> container on host 1"},
		{host2, c1.ip.Addr(), "host 2 -> container on host 1"},
	} {
		if !reaches(t, p.from, p.to) {
			t.Errorf("%s (%s): no answer", p.what, p.to)
		}
	}
	neigh := sh(t, router, "ip neigh show dev eth0")
	for _, c := range []*container{c1, c2} {
		want := c.ip.Addr().String() + " lladdr " + c.mac.String()
		if !strings.Contains(neigh, want) {
			t.Errorf("router's neighbour table %q lacks %q", neigh, want)
		}
	}
	// The kernel's rule: a host does not reach its own macvlan containers through the parent.
	if reaches(t, host1, c1.ip.Addr()) {
		t.Errorf("host 1 reached its own macvlan container %s: the kernel should not allow it", c1.ip.Addr())
	}
	if reaches(t, c1.ns, netip.MustParseAddr("192.168.50.2")) {
		t.Errorf("container reached its own host's eth0 address: the kernel should not allow it")
	}
}

// TestPrivilegedModes shows the kernel's semantics of the modes for two containers on one
// host: bridge reaches, private does not, and vepa only through a LAN port in hairpin mode
// (reflective relay), which the lab's bridge can turn on.
func TestPrivilegedModes(t *testing.T) {
	nstest.Privileged(t)
	for _, tc := range []struct {
		mode    Mode
		hairpin bool
		want    bool
	}{
		{ModeBridge, false, true},
		{ModePrivate, false, false},
		{ModePrivate, true, false},
		{ModeVEPA, false, false},
		{ModeVEPA, true, true},
	} {
		t.Run(fmt.Sprintf("%s/hairpin=%v", tc.mode, tc.hairpin), func(t *testing.T) {
			l := newLab(t)
			host := nstest.NewNS(t)
			port := l.plug(t, host, netip.Prefix{})
			if tc.hairpin {
				sh(t, l.ns, "ip link set "+port+" type bridge_slave hairpin on")
			}
			d := newDriver(t, host)
			nid := createNetwork(t, d, drivers.CreateNetworkRequest{Options: NetworkOptions{Parent: "eth0", Mode: tc.mode}, IPv4: lanIPAM})
			a := join(t, d, nid, "192.168.50.10/24")
			b := join(t, d, nid, "192.168.50.11/24")
			if got := reaches(t, a.ns, b.ip.Addr()); got != tc.want {
				t.Errorf("%s mode, hairpin %v: containers on one host reach each other = %v, want %v", tc.mode, tc.hairpin, got, tc.want)
			}
		})
	}
}

// TestPrivilegedInternal: a network without a parent is internal: its containers reach each
// other, get no gateway, and the veth pair the driver made goes with the network.
func TestPrivilegedInternal(t *testing.T) {
	nstest.Privileged(t)
	host := nstest.NewNS(t)
	h := handleAt(t, host)
	d := newDriver(t, host)
	nid := driverstest.NewNetworkID()
	if err := d.CreateNetwork(t.Context(), drivers.CreateNetworkRequest{NetworkID: nid, IPv4: lanIPAM}); err != nil {
		t.Fatal(err)
	}
	p, q := internalNames(nid)
	if got, want := linkNames(t, h), []string{"lo", p, q}; !slices.Equal(got, want) {
		t.Errorf("host links = %v, want %v", got, want)
	}
	func() {
		eid := driverstest.NewEndpointID()
		sb := nstest.NewNS(t)
		if _, err := d.CreateEndpoint(t.Context(), drivers.CreateEndpointRequest{NetworkID: nid, EndpointID: eid}); err != nil {
			t.Fatal(err)
		}
		jr, err := d.Join(t.Context(), drivers.JoinRequest{NetworkID: nid, EndpointID: eid, NetnsFD: sb.FD(), SandboxKey: sb.Path(), IfName: "eth0",
			IPv4: netip.MustParsePrefix("192.168.50.9/24")})
		if err != nil {
			t.Fatal(err)
		}
		if jr.Gateway.IsValid() {
			t.Errorf("internal network's join gave gateway %v, want none", jr.Gateway)
		}
		if err := d.Leave(t.Context(), drivers.LeaveRequest{NetworkID: nid, EndpointID: eid, SandboxKey: sb.Path(), IfName: "eth0"}); err != nil {
			t.Fatal(err)
		}
		if got := linkNames(t, handleAt(t, sb)); !slices.Equal(got, []string{"lo"}) {
			t.Errorf("sandbox links after Leave = %v, want only lo", got)
		}
	}()
	a := join(t, d, nid, "192.168.50.10/24")
	b := join(t, d, nid, "192.168.50.11/24")
	if !reaches(t, a.ns, b.ip.Addr()) {
		t.Errorf("containers of an internal network do not reach each other")
	}
	if out := sh(t, a.ns, "ip route show default"); out != "" {
		t.Errorf("internal network's container has a default route: %s", out)
	}
	t.Cleanup(func() {
		if err := d.DeleteNetwork(t.Context(), drivers.DeleteNetworkRequest{NetworkID: nid}); err != nil {
			t.Errorf("DeleteNetwork: %v", err)
		}
		if got := linkNames(t, h); !slices.Equal(got, []string{"lo"}) {
			t.Errorf("host links after DeleteNetwork = %v, want only lo", got)
		}
	})
}

// TestPrivilegedVLANNotSupported: this kernel has no 802.1q, so a parent eth0.10 fails with
// an error matching ErrNotSupported that says so, and leaves no link.
func TestPrivilegedVLANNotSupported(t *testing.T) {
	nstest.Privileged(t)
	host := nstest.NewNS(t)
	h := handleAt(t, host)
	l := newLab(t)
	l.plug(t, host, netip.Prefix{})
	d := newDriver(t, host)
	before := linkNames(t, h)
	err := d.CreateNetwork(t.Context(), drivers.CreateNetworkRequest{
		NetworkID: driverstest.NewNetworkID(), Options: NetworkOptions{Parent: "eth0.10"}, IPv4: lanIPAM,
	})
	if !errors.Is(err, drivers.ErrNotSupported) || !strings.Contains(err.Error(), "802.1q") {
		t.Fatalf("CreateNetwork on eth0.10: %v, want an error matching ErrNotSupported that names 802.1q", err)
	}
	t.Log(err)
	if got := linkNames(t, h); !slices.Equal(got, before) {
		t.Errorf("links after the failed create = %v, want %v", got, before)
	}
	// A missing base interface is not found, before any kernel work.
	err = d.CreateNetwork(t.Context(), drivers.CreateNetworkRequest{
		NetworkID: driverstest.NewNetworkID(), Options: NetworkOptions{Parent: "eth9.10"}, IPv4: lanIPAM,
	})
	if !errors.Is(err, drivers.ErrNotFound) {
		t.Errorf("CreateNetwork on eth9.10 without eth9: %v, want an error matching ErrNotFound", err)
	}
}

// TestPrivilegedRefused: bad input and conflicts are refused with typed errors and leave the
// host's links as they were.
func TestPrivilegedRefused(t *testing.T) {
	nstest.Privileged(t)
	host := nstest.NewNS(t)
	h := handleAt(t, host)
	l := newLab(t)
	l.plug(t, host, netip.Prefix{})
	sh(t, host, "ip link add br0 type bridge")
	sh(t, host, "ip link set br0 up")
	sh(t, host, "ip link add port0 type veth peer name port0p")
	sh(t, host, "ip link set port0 master br0 up")
	sh(t, host, "ip link set port0p up")
	sh(t, host, "ip link add down0 type veth peer name down0p")
	d := newDriver(t, host)
	before := linkNames(t, h)
	other := netip.MustParsePrefix("10.9.0.0/24")
	// A network to conflict with.
	createNetwork(t, d, drivers.CreateNetworkRequest{Options: NetworkOptions{Parent: "eth0"}, IPv4: lanIPAM})
	createNetwork(t, d, drivers.CreateNetworkRequest{Options: NetworkOptions{Parent: "port0p", Mode: ModePassthru}})

	for _, tc := range []struct {
		what string
		opts drivers.NetworkOptions
		ipv4 []drivers.IPAMData
		want error
	}{
		{"missing parent", NetworkOptions{Parent: "eth7"}, nil, drivers.ErrNotFound},
		{"down parent", NetworkOptions{Parent: "down0"}, nil, drivers.ErrConflict},
		{"bridge parent", NetworkOptions{Parent: "br0"}, nil, drivers.ErrConflict},
		{"bridge port parent", NetworkOptions{Parent: "port0"}, nil, drivers.ErrConflict},
		{"overlapping subnet on one parent", NetworkOptions{Parent: "eth0"}, []drivers.IPAMData{{Subnet: netip.MustParsePrefix("192.168.50.128/25")}}, drivers.ErrConflict},
		{"passthru on a used parent", NetworkOptions{Parent: "eth0", Mode: ModePassthru}, []drivers.IPAMData{{Subnet: other}}, drivers.ErrConflict},
		{"network on a passthru parent", NetworkOptions{Parent: "port0p"}, []drivers.IPAMData{{Subnet: other}}, drivers.ErrConflict},
		{"MTU above the parent's", NetworkOptions{Parent: "eth0", MTU: 9000}, []drivers.IPAMData{{Subnet: other}}, drivers.ErrInvalidParameter},
		{"bad mode", NetworkOptions{Parent: "eth0", Mode: "source"}, []drivers.IPAMData{{Subnet: other}}, drivers.ErrInvalidParameter},
		{"loopback parent", NetworkOptions{Parent: "lo"}, []drivers.IPAMData{{Subnet: other}}, drivers.ErrInvalidParameter},
		{"no-parent MTU too large for a veth", NetworkOptions{MTU: 70000}, nil, drivers.ErrInvalidParameter},
	} {
		err := d.CreateNetwork(t.Context(), drivers.CreateNetworkRequest{NetworkID: driverstest.NewNetworkID(), Options: tc.opts, IPv4: tc.ipv4})
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: CreateNetwork = %v, want an error matching %v", tc.what, err, tc.want)
		} else {
			t.Logf("%s: %v", tc.what, err)
		}
	}
	if got := linkNames(t, h); !slices.Equal(got, before) {
		t.Errorf("links after the refused creates = %v, want %v", got, before)
	}
	// Same subnet on another parent is fine.
	createNetwork(t, d, drivers.CreateNetworkRequest{IPv4: lanIPAM})
}

// TestPrivilegedReconcile: the veth parent of an internal network whose record is gone (a
// crash) is removed by the next driver's Reconcile and reported; a live one stays, and links
// the driver did not make are never touched.
func TestPrivilegedReconcile(t *testing.T) {
	nstest.Privileged(t)
	host := nstest.NewNS(t)
	h := handleAt(t, host)
	sh(t, host, "ip link add mvp-foreign type veth peer name mvq-foreign")
	d1 := newDriver(t, host)
	dead, alive := driverstest.NewNetworkID(), driverstest.NewNetworkID()
	for _, nid := range []drivers.NetworkID{dead, alive} {
		if err := d1.CreateNetwork(t.Context(), drivers.CreateNetworkRequest{NetworkID: nid}); err != nil {
			t.Fatal(err)
		}
	}
	d1.Close() // a crash: no DeleteNetwork

	d2 := newDriver(t, host)
	if err := d2.CreateNetwork(t.Context(), drivers.CreateNetworkRequest{NetworkID: alive}); err != nil {
		t.Fatalf("re-create after restart: %v", err)
	}
	repairs, err := d2.Reconcile(t.Context(), drivers.LiveState{Networks: []drivers.NetworkID{alive}})
	if err != nil {
		t.Fatal(err)
	}
	deadName, _ := internalNames(dead)
	if len(repairs) != 1 || repairs[0].Object != "link "+deadName || repairs[0].Action != "removed" {
		t.Errorf("repairs = %v, want the removal of link %s", repairs, deadName)
	}
	aliveName, aliveQ := internalNames(alive)
	if got, want := linkNames(t, h), []string{"lo", aliveName, "mvp-foreign", aliveQ, "mvq-foreign"}; !slices.Equal(got, want) {
		t.Errorf("links after Reconcile = %v, want %v", got, want)
	}
	if repairs, err := d2.Reconcile(t.Context(), drivers.LiveState{Networks: []drivers.NetworkID{alive}}); err != nil || len(repairs) != 0 {
		t.Errorf("second Reconcile = %v, %v; want nothing to do", repairs, err)
	}
	if err := d2.DeleteNetwork(t.Context(), drivers.DeleteNetworkRequest{NetworkID: alive}); err != nil {
		t.Fatal(err)
	}
	if got, want := linkNames(t, h), []string{"lo", "mvp-foreign", "mvq-foreign"}; !slices.Equal(got, want) {
		t.Errorf("links after DeleteNetwork = %v, want %v", got, want)
	}
}
