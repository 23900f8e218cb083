package bridge

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/drivers/driverstest"
	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/cnmkit/cnm/internal/netns"
	"github.com/cnmkit/cnm/internal/nstest"
	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

var (
	hostUplink6 = netip.MustParsePrefix("2001:db8::1/64")
	outsideIP6  = netip.MustParsePrefix("2001:db8::2/64")
)

// newLab6 is newLab with IPv6 on the veth too: uplink 2001:db8::1/64 in the host, eth0
// 2001:db8::2/64 outside, both usable at once (nodad). The outside has no route to the
// containers' ULA subnets: only NAT makes replies find their way back.
func newLab6(t *testing.T) *lab {
	t.Helper()
	l := newLab(t)
	addAddr6(t, l.h, "uplink", hostUplink6, netip.Addr{})
	addAddr6(t, l.oh, "eth0", outsideIP6, netip.Addr{})
	return l
}

// addAddr6 adds the IPv6 address addr to the link ifName with nodad, so that it is usable at
// once, and a default route through gw when gw is valid.
func addAddr6(t *testing.T, h *netlink.Handle, ifName string, addr netip.Prefix, gw netip.Addr) {
	t.Helper()
	l, err := h.LinkByName(ifName)
	if err != nil {
		t.Fatal(err)
	}
	a := bridgeAddr(addr)
	a.Flags = unix.IFA_F_NODAD
	if err := h.AddrAdd(l, a); err != nil {
		t.Fatalf("add %s to %s: %v", addr, ifName, err)
	}
	if gw.IsValid() {
		if err := h.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: gw.AsSlice()}); err != nil {
			t.Fatalf("default route via %s: %v", gw, err)
		}
	}
}

// sandbox46 makes a sandbox joined to nid as eth0 with the IPv4 address addr4 and the IPv6
// address addr6, and default routes through gw4 and gw6 (none for a zero one).
func (e *testEnv) sandbox46(t *testing.T, nid drivers.NetworkID, addr4 string, gw4 netip.Addr, addr6 string, gw6 netip.Addr) *netns.NS {
	t.Helper()
	sb := e.sandbox(t, nid, addr4, gw4)
	addAddr6(t, handleAt(t, sb), "eth0", netip.MustParsePrefix(addr6), gw6)
	return sb
}

// ds is a dual-stack network request: 10.10.N.0/24 and fd00:10:N::/64.
func ds(n string) drivers.CreateNetworkRequest {
	return drivers.CreateNetworkRequest{IPv4: v4("10.10." + n + ".0/24"), IPv6: v6("fd00:10:" + n + "::/64"), EnableIPv6: true}
}

func hostSysctl(t *testing.T, e *testEnv, path string) string {
	t.Helper()
	out, err := nstest.Exec(e.host, "cat", path)
	if err != nil {
		t.Fatalf("read %s: %v: %s", path, err, out)
	}
	return out
}

// TestPrivilegedDualStackNAT checks that a sandbox of a dual-stack network reaches the outside
// over IPv6 through the host's masquerade (the outside has no route back to the ULA subnet),
// that without masquerade it does not, that the outside cannot open connections in, and that
// IPv4, including a published port, keeps working on the same network.
func TestPrivilegedDualStackNAT(t *testing.T) {
	nstest.Privileged(t)
	l := newLab6(t)
	if got := hostSysctl(t, l.testEnv, sysctlIP6Forward); got != "0" {
		t.Fatalf("IPv6 forwarding in a new host namespace = %q, want 0", got)
	}
	req := ds("1")
	nid := l.newNetwork(t, req)
	noMasqReq := ds("2")
	noMasqReq.Options = NetworkOptions{DisableIPMasquerade: true}
	noMasq := l.newNetwork(t, noMasqReq)
	sb := l.sandbox46(t, nid, "10.10.1.2/24", netip.MustParseAddr("10.10.1.1"), "fd00:10:1::2/64", netip.MustParseAddr("fd00:10:1::1"))
	sbNoMasq := l.sandbox46(t, noMasq, "10.10.2.2/24", netip.MustParseAddr("10.10.2.1"), "fd00:10:2::2/64", netip.MustParseAddr("fd00:10:2::1"))

	if got := hostSysctl(t, l.testEnv, sysctlIP6Forward); got != "1" {
		t.Errorf("IPv6 forwarding in the host namespace = %q, want 1", got)
	}
	if out, ok := forwardDrops(t, l.testEnv, true); !ok {
		t.Errorf("IPv6 forwarding turned on, but other IPv6 traffic is not dropped:\n%s", out)
	}
	canPing(t, sb, "sandbox", "2001:db8::2", true)
	ln := listen(t, l.outside, "[2001:db8::2]:0")
	remote, err := dial(sb, outsideIP6.Addr(), ln)
	if err != nil {
		t.Fatalf("TCP over IPv6 from the sandbox to the outside: %v", err)
	}
	if remote != hostUplink6.Addr() {
		t.Errorf("the outside sees the sandbox as %v, want the host's address %v", remote, hostUplink6.Addr())
	}
	canPing(t, sbNoMasq, "sandbox without masquerade", "2001:db8::2", false)
	if remote, err := dial(sbNoMasq, outsideIP6.Addr(), ln); err == nil {
		t.Errorf("TCP over IPv6 from a network without masquerade crossed, seen as %v; want no reply", remote)
	}
	// The outside cannot open connections to the containers, even with a route.
	if err := l.oh.RouteAdd(&netlink.Route{Dst: prefixNet("fd00:10::/32"), Gw: hostUplink6.Addr().AsSlice()}); err != nil {
		t.Fatal(err)
	}
	lnIn := listen(t, sb, "[fd00:10:1::2]:0")
	if _, err := dial(l.outside, netip.MustParseAddr("fd00:10:1::2"), lnIn); err == nil {
		t.Error("TCP over IPv6 from the outside to a container of a NAT network crossed")
	}

	// IPv4 on the same network: out through NAT, and in through a published port.
	canPing(t, sb, "sandbox", "192.0.2.2", true)
	srv := l.sandbox(t, nid, "10.10.1.3/24", netip.MustParseAddr("10.10.1.1"))
	lnSrv := listen(t, srv, "10.10.1.3:0")
	cport := uint16(lnSrv.Addr().(*net.TCPAddr).Port)
	bound := l.publish(t, nid, driverstest.NewEndpointID(), "10.10.1.3/24", drivers.PortBinding{Proto: "tcp", HostPort: 8080, ContainerPort: cport})
	if len(bound) != 1 || bound[0].HostPort != 8080 {
		t.Fatalf("bound ports = %v", bound)
	}
	if _, err := exchange(l.outside, netip.AddrPortFrom(hostUplink.Addr(), 8080), lnSrv); err != nil {
		t.Errorf("published IPv4 port of a dual-stack network from the outside: %v", err)
	}
	// Publishing on an IPv6 host address needs an IPv6 address (TestPrivilegedPublishedPorts6).
	_, err = l.d.CreateEndpoint(t.Context(), drivers.CreateEndpointRequest{NetworkID: nid, EndpointID: driverstest.NewEndpointID(),
		IPv4: netip.MustParsePrefix("10.10.1.4/24"), Ports: []drivers.PortBinding{{Proto: "tcp", HostIP: hostUplink6.Addr(), HostPort: 8081, ContainerPort: 80}}})
	if !errors.Is(err, errclass.ErrInvalidParameter) {
		t.Errorf("publishing on %v for an endpoint without an IPv6 address: %v, want invalid", hostUplink6.Addr(), err)
	}
}

// TestPrivilegedDualStackICCDisabled checks that with enable_icc=false two sandboxes on one
// bridge cannot reach each other over IPv6, and still reach the outside.
func TestPrivilegedDualStackICCDisabled(t *testing.T) {
	nstest.Privileged(t)
	l := newLab6(t)
	req := ds("1")
	req.Options = NetworkOptions{DisableICC: true}
	nid := l.newNetwork(t, req)
	gw4, gw6 := netip.MustParseAddr("10.10.1.1"), netip.MustParseAddr("fd00:10:1::1")
	sb1 := l.sandbox46(t, nid, "10.10.1.2/24", gw4, "fd00:10:1::2/64", gw6)
	sb2 := l.sandbox46(t, nid, "10.10.1.3/24", gw4, "fd00:10:1::3/64", gw6)
	if got := hostSysctl(t, l.testEnv, sysctlBrNF6); got != "1" {
		t.Errorf("bridge-nf-call-ip6tables in the host namespace = %q, want 1", got)
	}
	canPing(t, sb1, "sb1", "fd00:10:1::3", false)
	canPing(t, sb2, "sb2", "fd00:10:1::2", false)
	ln := listen(t, sb2, "[fd00:10:1::3]:0")
	if _, err := dial(sb1, netip.MustParseAddr("fd00:10:1::3"), ln); err == nil {
		t.Error("TCP over IPv6 between two sandboxes with ICC off crossed")
	}
	canPing(t, sb1, "sb1", "2001:db8::2", true)
	canPing(t, sb1, "sb1", gw6.String(), true)
	canPing(t, sb1, "sb1", "10.10.1.3", false)

	// With ICC on, they do reach each other over IPv6.
	on := l.newNetwork(t, ds("2"))
	sb3 := l.sandbox46(t, on, "10.10.2.2/24", netip.Addr{}, "fd00:10:2::2/64", netip.Addr{})
	l.sandbox46(t, on, "10.10.2.3/24", netip.Addr{}, "fd00:10:2::3/64", netip.Addr{})
	canPing(t, sb3, "sb3", "fd00:10:2::3", true)
}

// TestPrivilegedDualStackIsolation checks that sandboxes on two dual-stack bridges cannot reach
// each other over IPv6, in either direction, while one joined to both reaches both.
func TestPrivilegedDualStackIsolation(t *testing.T) {
	nstest.Privileged(t)
	l := newLab6(t)
	a := l.newNetwork(t, ds("1"))
	b := l.newNetwork(t, ds("2"))
	sbA := l.sandbox46(t, a, "10.10.1.2/24", netip.MustParseAddr("10.10.1.1"), "fd00:10:1::2/64", netip.MustParseAddr("fd00:10:1::1"))
	sbB := l.sandbox46(t, b, "10.10.2.2/24", netip.MustParseAddr("10.10.2.1"), "fd00:10:2::2/64", netip.MustParseAddr("fd00:10:2::1"))
	both := nstest.NewNS(t)
	l.join(t, both, a, "eth0", "10.10.1.3/24", netip.Addr{})
	l.join(t, both, b, "eth1", "10.10.2.3/24", netip.Addr{})
	bh := handleAt(t, both)
	addAddr6(t, bh, "eth0", netip.MustParsePrefix("fd00:10:1::3/64"), netip.Addr{})
	addAddr6(t, bh, "eth1", netip.MustParsePrefix("fd00:10:2::3/64"), netip.Addr{})

	canPing(t, sbA, "A", "fd00:10:2::2", false)
	canPing(t, sbB, "B", "fd00:10:1::2", false)
	lnB := listen(t, sbB, "[fd00:10:2::2]:0")
	if _, err := dial(sbA, netip.MustParseAddr("fd00:10:2::2"), lnB); err == nil {
		t.Error("TCP over IPv6 from network A to network B crossed")
	}
	canPing(t, both, "A+B", "fd00:10:1::2", true)
	canPing(t, both, "A+B", "fd00:10:2::2", true)
	canPing(t, sbA, "A", "fd00:10:1::3", true)
	canPing(t, sbB, "B", "fd00:10:2::3", true)
	canPing(t, sbA, "A", "2001:db8::2", true)
	canPing(t, sbB, "B", "2001:db8::2", true)
}

// TestPrivilegedDualStackInternal checks that an internal dual-stack network gets no IPv6 out
// (not even with a default route added by hand) and no NAT, while its members reach each other.
func TestPrivilegedDualStackInternal(t *testing.T) {
	nstest.Privileged(t)
	l := newLab6(t)
	req := ds("3")
	req.Internal = true
	in := l.newNetwork(t, req)
	ext := l.newNetwork(t, ds("1"))
	gw6 := netip.MustParseAddr("fd00:10:3::1")
	sb1 := l.sandbox46(t, in, "10.10.3.2/24", netip.Addr{}, "fd00:10:3::2/64", gw6)
	sb2 := l.sandbox46(t, in, "10.10.3.3/24", netip.Addr{}, "fd00:10:3::3/64", gw6)
	sbExt := l.sandbox46(t, ext, "10.10.1.2/24", netip.MustParseAddr("10.10.1.1"), "fd00:10:1::2/64", netip.MustParseAddr("fd00:10:1::1"))
	canPing(t, sb1, "internal sb1", "fd00:10:3::3", true)
	canPing(t, sb2, "internal sb2", "fd00:10:3::2", true)
	canPing(t, sb1, "internal sb1", "2001:db8::2", false)
	canPing(t, sb1, "internal sb1", "fd00:10:1::2", false)
	canPing(t, sbExt, "external", "fd00:10:3::2", false)
	canPing(t, sbExt, "external", "2001:db8::2", true)
	if s := l.save6(t); strings.Contains(s, "-s fd00:10:3::/64") {
		t.Errorf("an internal network has an IPv6 NAT rule:\n%s", s)
	}
}

// TestPrivilegedDualStackFirewallConverges checks that deleting dual-stack networks restores
// ip6tables-save exactly, that creating them again (by the same driver or after a restart)
// changes nothing in either family, that a lost IPv6 rule comes back once, and that Reconcile
// removes the IPv6 chains of a bridge that is gone.
func TestPrivilegedDualStackFirewallConverges(t *testing.T) {
	nstest.Privileged(t)
	e := newEnv(t)
	e.newNetwork(t, ds("1"))
	base4, base6 := e.save(t), e.save6(t)
	if !strings.Contains(base6, "-A FORWARD -j CNM-USER\n-A FORWARD -j CNM-FORWARD\n") || !strings.Contains(base6, ":FORWARD DROP") {
		t.Errorf("ip6tables after one dual-stack network: want CNM-USER then CNM-FORWARD first in FORWARD, policy DROP:\n%s", base6)
	}
	mk := func(n string, f func(*drivers.CreateNetworkRequest)) drivers.CreateNetworkRequest {
		r := ds(n)
		r.NetworkID = driverstest.NewNetworkID()
		f(&r)
		return r
	}
	reqs := []drivers.CreateNetworkRequest{
		mk("2", func(r *drivers.CreateNetworkRequest) { r.Options = NetworkOptions{DisableICC: true} }),
		mk("3", func(r *drivers.CreateNetworkRequest) { r.Internal = true }),
		mk("4", func(r *drivers.CreateNetworkRequest) {
			r.Options = NetworkOptions{DisableIPMasquerade: true, BridgeName: "custom4"}
		}),
	}
	for _, req := range reqs {
		if err := e.d.CreateNetwork(t.Context(), req); err != nil {
			t.Fatal(err)
		}
	}
	full4, full6 := e.save(t), e.save6(t)
	for _, req := range reqs {
		if err := e.d.CreateNetwork(t.Context(), req); err != nil {
			t.Fatal(err)
		}
	}
	if diff := cmp.Diff(full6, e.save6(t)); diff != "" {
		t.Errorf("ip6tables after CreateNetwork again (-before +after):\n%s", diff)
	}
	d2 := newDriver(t, e.host) // a restart
	for _, req := range reqs {
		if err := d2.CreateNetwork(t.Context(), req); err != nil {
			t.Fatal(err)
		}
	}
	if diff := cmp.Diff(full6, e.save6(t)); diff != "" {
		t.Errorf("ip6tables after a restart (-before +after):\n%s", diff)
	}
	if diff := cmp.Diff(full4, e.save(t)); diff != "" {
		t.Errorf("iptables after a restart (-before +after):\n%s", diff)
	}
	// A lost IPv6 rule comes back, once.
	br := "br-" + reqs[0].NetworkID.Short()
	if out, err := nstest.Exec(e.host, "ip6tables", "-D", networkChain(br), "-i", br, "-o", br, "-j", "DROP"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if err := d2.CreateNetwork(t.Context(), reqs[0]); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(full6, e.save6(t)); diff != "" {
		t.Errorf("ip6tables after repairing a lost rule (-before +after):\n%s", diff)
	}
	for _, req := range reqs {
		if err := d2.DeleteNetwork(t.Context(), drivers.DeleteNetworkRequest{NetworkID: req.NetworkID}); err != nil {
			t.Fatal(err)
		}
	}
	if diff := cmp.Diff(base6, e.save6(t)); diff != "" {
		t.Errorf("ip6tables after deleting the networks (-before create +after delete):\n%s", diff)
	}
	if diff := cmp.Diff(base4, e.save(t)); diff != "" {
		t.Errorf("iptables after deleting the networks (-before create +after delete):\n%s", diff)
	}

	// A crash between deleting a bridge and its rules: Reconcile removes its IPv6 rules too.
	gone := mk("5", func(*drivers.CreateNetworkRequest) {})
	if err := d2.CreateNetwork(t.Context(), gone); err != nil {
		t.Fatal(err)
	}
	if err := e.h.LinkDel(e.link(t, "br-"+gone.NetworkID.Short())); err != nil {
		t.Fatal(err)
	}
	d3 := newDriver(t, e.host)
	repairs, err := d3.Reconcile(t.Context(), drivers.LiveState{Networks: e.liveNetworks(t)})
	if err != nil {
		t.Fatal(err)
	}
	want := []drivers.Repair{{Object: "iptables rules of br-" + gone.NetworkID.Short(), Action: "removed", Reason: "no such bridge"}}
	if diff := cmp.Diff(want, repairs); diff != "" {
		t.Errorf("repairs (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(base6, e.save6(t)); diff != "" {
		t.Errorf("ip6tables after Reconcile (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(base4, e.save(t)); diff != "" {
		t.Errorf("iptables after Reconcile (-want +got):\n%s", diff)
	}
}

// liveNetworks returns the networks of the driver's "cnm:" bridges in the host namespace.
func (e *testEnv) liveNetworks(t *testing.T) []drivers.NetworkID {
	t.Helper()
	links, err := e.h.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var out []drivers.NetworkID
	for _, l := range links {
		if id, ok := strings.CutPrefix(l.Attrs().Alias, aliasPrefix); ok && l.Type() == "bridge" {
			out = append(out, drivers.NetworkID(id))
		}
	}
	return out
}

// pathWith returns a directory holding links to the named binaries of PATH, and the scripts
// given, each as its own executable.
func pathWith(t *testing.T, binaries []string, scripts map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for _, b := range binaries {
		target, err := exec.LookPath(b)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, filepath.Join(dir, b)); err != nil {
			t.Fatal(err)
		}
	}
	for name, body := range scripts {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// TestPrivilegedMissingIP6Tables checks that a network with IPv6 subnets is refused with an
// *UnavailableError naming ip6tables when ip6tables is missing, before any kernel work, while an
// IPv4-only network is made; and that when ip6tables-restore fails, the bridge and the IPv4
// rules that CreateNetwork wrote are removed again.
func TestPrivilegedMissingIP6Tables(t *testing.T) {
	nstest.Privileged(t)
	e := newEnv(t)
	v4only := []string{"iptables-save", "iptables-restore"}
	path := os.Getenv("PATH")
	t.Setenv("PATH", pathWith(t, v4only, nil)) // the driver looks the binaries up in New
	d := newDriver(t, e.host)
	t.Setenv("PATH", path)
	nid := e.newNetworkWith(t, d, drivers.CreateNetworkRequest{IPv4: v4("10.10.1.0/24")})
	before4 := e.save(t)
	req := ds("2")
	req.NetworkID = driverstest.NewNetworkID()
	err := d.CreateNetwork(t.Context(), req)
	var ue *errclass.UnavailableError
	if !errors.As(err, &ue) || !errors.Is(err, errclass.ErrUnavailable) || !strings.Contains(err.Error(), "ip6tables-restore") {
		t.Errorf("CreateNetwork of a dual-stack network without ip6tables: %v, want an *UnavailableError naming ip6tables-restore", err)
	}
	if names := linkNames(t, e.h); !slices.Equal(names, []string{"br-" + nid.Short(), "lo"}) {
		t.Errorf("links after a refused CreateNetwork: %v", names)
	}
	if diff := cmp.Diff(before4, e.save(t)); diff != "" {
		t.Errorf("iptables after a refused CreateNetwork (-before +after):\n%s", diff)
	}

	// ip6tables-restore there but failing: nothing of the network stays.
	t.Setenv("PATH", pathWith(t, append(v4only, "ip6tables-save"), map[string]string{
		"ip6tables-restore": "#!/bin/sh\necho 'ip6tables-restore: broken for the test' >&2\nexit 1\n",
	}))
	d = newDriver(t, e.host)
	t.Setenv("PATH", path)
	fwd := hostSysctl(t, e, sysctlIP6Forward)
	// An IPv4-only network's IPv6 rules are best effort (ip6tables fails where the kernel has
	// no IPv6): it is made, with its IPv4 rules, and deleted.
	plain4 := drivers.CreateNetworkRequest{NetworkID: driverstest.NewNetworkID(), IPv4: v4("10.10.3.0/24")}
	if err := d.CreateNetwork(t.Context(), plain4); err != nil {
		t.Errorf("CreateNetwork of an IPv4-only network with a failing ip6tables-restore: %v", err)
	}
	if s := e.save(t); !strings.Contains(s, networkChain("br-"+plain4.NetworkID.Short())) {
		t.Errorf("the IPv4-only network has no IPv4 rules:\n%s", s)
	}
	if err := d.DeleteNetwork(t.Context(), drivers.DeleteNetworkRequest{NetworkID: plain4.NetworkID}); err != nil {
		t.Errorf("DeleteNetwork of that network: %v", err)
	}
	err = d.CreateNetwork(t.Context(), req)
	if err == nil || !strings.Contains(err.Error(), "ip6tables-restore") {
		t.Errorf("CreateNetwork of a dual-stack network with a failing ip6tables-restore: %v, want its error", err)
	}
	if names := linkNames(t, e.h); !slices.Equal(names, []string{"br-" + nid.Short(), "lo"}) {
		t.Errorf("links after a failed CreateNetwork: %v", names)
	}
	if diff := cmp.Diff(before4, e.save(t)); diff != "" {
		t.Errorf("iptables after a failed CreateNetwork (-before +after):\n%s", diff)
	}
	if got := hostSysctl(t, e, sysctlIP6Forward); got != fwd {
		t.Errorf("IPv6 forwarding after a failed CreateNetwork = %s, was %s", got, fwd)
	}
}

// newNetworkWith creates a network with driver d and deletes it when the test ends.
func (e *testEnv) newNetworkWith(t *testing.T, d *Driver, req drivers.CreateNetworkRequest) drivers.NetworkID {
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

// TestPrivilegedIPv4OnlyLinkLocal checks that an IPv4-only network has its isolation and ICC
// rules in the IPv6 tables too (no nat rule, no sysctl touched), so that IPv6 link-local
// traffic between its containers still crosses its bridge after a dual-stack network has set
// the IPv6 FORWARD policy to DROP with br_netfilter on; and that without those rules it would
// not.
func TestPrivilegedIPv4OnlyLinkLocal(t *testing.T) {
	nstest.Privileged(t)
	e := newEnv(t)
	v4req := drivers.CreateNetworkRequest{NetworkID: driverstest.NewNetworkID(), IPv4: v4("10.10.1.0/24")}
	e.createNetwork(t, v4req)
	br := "br-" + v4req.NetworkID.Short()
	if got := hostSysctl(t, e, sysctlIP6Forward); got != "0" {
		t.Errorf("an IPv4-only network turned IPv6 forwarding on: %s", got)
	}
	s6 := e.save6(t)
	nb := networkBuckets(br)
	iso1, fwd := nb[0].chain, nb[2].chain
	for _, want := range []string{
		"-A " + iso1 + " -i " + br + " ! -o " + br + " -j " + ChainIsolation2,
		"-A " + fwd + " -i " + br + " -j " + networkChain(br),
		"-A " + networkChain(br) + " -i " + br + " -o " + br + " -j ACCEPT",
	} {
		if !strings.Contains(s6, want+"\n") {
			t.Errorf("ip6tables of an IPv4-only network: missing %q:\n%s", want, s6)
		}
	}
	if strings.Contains(s6, "MASQUERADE") || strings.Contains(s6, ":FORWARD DROP") {
		t.Errorf("ip6tables of an IPv4-only network: a nat rule or a DROP policy:\n%s", s6)
	}

	// A dual-stack network with ICC off: the IPv6 FORWARD policy becomes DROP, and br_netfilter
	// hands bridged IPv6 to ip6tables.
	dsReq := ds("2")
	dsReq.Options = NetworkOptions{DisableICC: true}
	e.newNetwork(t, dsReq)
	if out, err := nstest.Exec(e.host, "ip6tables", "-S", "FORWARD"); err != nil || !strings.HasPrefix(out, "-P FORWARD DROP") {
		t.Fatalf("ip6tables FORWARD: %q, %v; want the policy DROP", out, err)
	}
	if got := hostSysctl(t, e, sysctlBrNF6); got != "1" {
		t.Fatalf("%s = %s, want 1", sysctlBrNF6, got)
	}
	a, b := e.sandbox(t, v4req.NetworkID, "10.10.1.2/24", netip.Addr{}), e.sandbox(t, v4req.NetworkID, "10.10.1.3/24", netip.Addr{})
	addAddr6(t, handleAt(t, a), "eth0", netip.MustParsePrefix("fe80::a/64"), netip.Addr{})
	addAddr6(t, handleAt(t, b), "eth0", netip.MustParsePrefix("fe80::b/64"), netip.Addr{})
	// Static neighbours: what crosses the bridge is then the echo traffic itself, with no wait
	// on multicast neighbour discovery, which a loaded machine makes slow on fresh links.
	for _, n := range []struct {
		ns       *netns.NS
		peer     string
		peerAddr string
	}{{a, "fe80::b", "10.10.1.3/24"}, {b, "fe80::a", "10.10.1.2/24"}} {
		mac := endpointMAC(netip.MustParsePrefix(n.peerAddr).Addr()).String()
		if out, err := nstest.Exec(n.ns, "ip", "-6", "neigh", "replace", n.peer, "lladdr", mac, "dev", "eth0", "nud", "permanent"); err != nil {
			t.Fatalf("static neighbour %s: %v: %s", n.peer, err, out)
		}
	}
	waitPing(t, a, netip.MustParseAddr("fe80::b%eth0")) // over IPv6 link-local in an IPv4-only bridge
	canPing(t, a, "a, over IPv4 in the same bridge", "10.10.1.3", true)
	full6 := e.save6(t)

	// Without the network's IPv6 rules, the DROP policy takes that traffic: the rules are what
	// keeps it.
	for _, args := range [][]string{
		{"-D", fwd, "-i", br, "-j", networkChain(br)},
		{"-D", fwd, "-o", br, "-j", networkChain(br)},
	} {
		if out, err := nstest.Exec(e.host, "ip6tables", args...); err != nil {
			t.Fatalf("ip6tables %v: %v: %s", args, err, out)
		}
	}
	canPing(t, a, "a, over IPv6 link-local without the network's IPv6 rules", "fe80::b%eth0", false)
	if err := e.d.CreateNetwork(t.Context(), v4req); err != nil { // converges: the jumps come back
		t.Fatal(err)
	}
	waitPing(t, a, netip.MustParseAddr("fe80::b%eth0")) // after CreateNetwork again
	if diff := cmp.Diff(sortedLines(full6), sortedLines(e.save6(t))); diff != "" {
		t.Errorf("ip6tables after the repair (-before +after):\n%s", diff)
	}

	// Deleting the IPv4-only network removes its IPv6 rules.
	if err := e.d.DeleteNetwork(t.Context(), drivers.DeleteNetworkRequest{NetworkID: v4req.NetworkID}); err != nil {
		t.Fatal(err)
	}
	if s := e.save6(t); strings.Contains(s, br) {
		t.Errorf("ip6tables after deleting the IPv4-only network still names %s:\n%s", br, s)
	}
}
