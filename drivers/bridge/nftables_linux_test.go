package bridge

import (
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/drivers/driverstest"
	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/cnmkit/cnm/internal/nstest"
	"github.com/google/go-cmp/cmp"
)

// testFirewall is the backend of the drivers newDriver makes: the wire tests run once with
// each (TestPrivilegedNftablesWire sets it). Tests do not run in parallel in this package.
var testFirewall = FirewallIPTables

// withFirewall makes newDriver use backend fw until the test ends.
func withFirewall(t testing.TB, fw Firewall) {
	old := testFirewall
	testFirewall = fw
	t.Cleanup(func() { testFirewall = old })
}

// noProcesses checks, when the test ends, that a driver with the nftables backend started no
// iptables process.
func noProcesses(t testing.TB, d *Driver) {
	if d.fwb.kind() != FirewallNftables {
		return
	}
	t.Cleanup(func() {
		if n := d.fw.Runs() + d.fw6.Runs(); n != 0 {
			t.Errorf("the nftables backend started %d iptables processes, want 0", n)
		}
	})
}

// wireTests are the tests that prove the firewall's semantics by traffic (and the driver's
// life cycle by kernel state): the same assertions hold for both backends.
var wireTests = []struct {
	name string
	fn   func(*testing.T)
}{
	{"NAT", TestPrivilegedNAT},
	{"Routed", TestPrivilegedRouted},
	{"ICCDisabled", TestPrivilegedICCDisabled},
	{"Isolation", TestPrivilegedIsolation},
	{"Internal", TestPrivilegedInternal},
	{"PublishedPorts", TestPrivilegedPublishedPorts},
	{"PublishedPorts6", TestPrivilegedPublishedPorts6},
	{"ConntrackFlush6", TestPrivilegedConntrackFlush6},
	{"ConntrackFlush", TestPrivilegedConntrackFlush},
	{"DualStackNAT", TestPrivilegedDualStackNAT},
	{"DualStackICCDisabled", TestPrivilegedDualStackICCDisabled},
	{"DualStackIsolation", TestPrivilegedDualStackIsolation},
	{"DualStackInternal", TestPrivilegedDualStackInternal},
	{"Conformance", TestPrivilegedConformance},
	{"Reconcile", TestPrivilegedReconcile},
	{"CreateNetworkConcurrentSameID", TestPrivilegedCreateNetworkConcurrentSameID},
}

// TestPrivilegedNftablesWire runs the wire tests with the nftables backend (they run with the
// iptables backend under their own names).
func TestPrivilegedNftablesWire(t *testing.T) {
	nstest.Privileged(t)
	for _, tc := range wireTests {
		t.Run(tc.name, func(t *testing.T) {
			withFirewall(t, FirewallNftables)
			tc.fn(t)
		})
	}
}

// forwardDrops reports whether the host namespace drops the forwarded traffic of the family
// (IPv6 when v6) that is not the driver's, as after the driver turned that family's forwarding
// on, and returns what it looked at: the FORWARD policy (iptables), or the forward-drop set
// (nftables).
func forwardDrops(t *testing.T, e *testEnv, v6 bool) (string, bool) {
	t.Helper()
	if testFirewall == FirewallNftables {
		out, err := nstest.Exec(e.host, "nft", "list", "set", "inet", NftTable, NftSetDrop)
		fam := "ipv4"
		if v6 {
			fam = "ipv6"
		}
		return out, err == nil && strings.Contains(out, fam)
	}
	cmd := "iptables"
	if v6 {
		cmd = "ip6tables"
	}
	out, err := nstest.Exec(e.host, cmd, "-S", "FORWARD")
	return out, err == nil && strings.HasPrefix(out, "-P FORWARD DROP")
}

var nftElements = regexp.MustCompile(`(?s)elements = \{(.*?)\}`)

// nftList returns "nft list" of args in the host namespace, with the elements of each set
// sorted, so that two listings of the same state are equal.
func nftList(t *testing.T, e *testEnv, args ...string) string {
	t.Helper()
	out, err := nstest.Exec(e.host, "nft", append([]string{"list"}, args...)...)
	if err != nil {
		t.Fatalf("nft list %v: %v: %s", args, err, out)
	}
	return nftElements.ReplaceAllStringFunc(out, func(m string) string {
		body := nftElements.FindStringSubmatch(m)[1]
		var els []string
		for _, el := range strings.Split(body, ",") {
			els = append(els, strings.Join(strings.Fields(el), " "))
		}
		slices.Sort(els)
		return "elements = { " + strings.Join(els, ", ") + " }"
	})
}

// nftTable is nftList of the driver's table.
func nftTable(t *testing.T, e *testEnv) string {
	t.Helper()
	return nftList(t, e, "table", "inet", NftTable)
}

// noIPTables points PATH, until the test ends, at a directory holding every program of PATH
// but the iptables family (iptables*, ip6tables*, xtables*): a driver that started one would
// fail.
func noIPTables(t testing.TB) {
	dir := t.TempDir()
	for _, p := range filepath.SplitList(os.Getenv("PATH")) {
		entries, _ := os.ReadDir(p)
		for _, en := range entries {
			name := en.Name()
			if strings.HasPrefix(name, "iptables") || strings.HasPrefix(name, "ip6tables") || strings.HasPrefix(name, "xtables") {
				continue
			}
			target := filepath.Join(p, name)
			if _, err := exec.LookPath(target); err == nil {
				os.Symlink(target, filepath.Join(dir, name)) // the first in PATH wins
			}
		}
	}
	t.Setenv("PATH", dir)
	if _, err := exec.LookPath(iptablesRestore); err == nil {
		t.Fatal("iptables-restore still in PATH")
	}
}

const iptablesRestore = "iptables-restore"

// TestPrivilegedNftablesConverges checks the nftables backend's state: a network or port adds
// elements, never rules or chains; creating again (same driver,
// or after a restart) changes nothing; lost elements and rules come back once; Reconcile
// removes what belongs to no bridge or endpoint and reports it; deleting everything leaves
// the base only. No iptables binary is in PATH.
func TestPrivilegedNftablesConverges(t *testing.T) {
	nstest.Privileged(t)
	withFirewall(t, FirewallNftables)
	noIPTables(t)
	e := newEnv(t)
	first := e.newNetwork(t, drivers.CreateNetworkRequest{IPv4: v4("10.10.1.0/24")})
	base := nftTable(t, e)
	shared := func() string {
		var b strings.Builder
		for _, c := range []string{NftChainForward, NftChainPostrouting, NftChainPrerouting, NftChainOutput, NftChainDNAT, NftChainUser} {
			b.WriteString(nftList(t, e, "chain", "inet", NftTable, c))
		}
		return b.String()
	}
	sharedBefore := shared()

	reqs := []drivers.CreateNetworkRequest{
		{NetworkID: driverstest.NewNetworkID(), IPv4: v4("10.10.2.0/24"), IPv6: v6("fd00:10:2::/64"), EnableIPv6: true, Options: NetworkOptions{DisableICC: true}},
		{NetworkID: driverstest.NewNetworkID(), IPv4: v4("10.10.3.0/24"), Internal: true},
		{NetworkID: driverstest.NewNetworkID(), IPv4: v4("10.10.4.0/24"), Options: NetworkOptions{GatewayModeIPv4: GatewayModeRouted, BridgeName: "custom4"}},
	}
	for _, req := range reqs {
		if err := e.d.CreateNetwork(t.Context(), req); err != nil {
			t.Fatal(err)
		}
	}
	eid := driverstest.NewEndpointID()
	ereq := drivers.CreateEndpointRequest{NetworkID: first, EndpointID: eid, IPv4: netip.MustParsePrefix("10.10.1.2/24"),
		Ports: []drivers.PortBinding{tcp(8080, 80), {Proto: "udp", HostIP: netip.MustParseAddr("192.0.2.1"), HostPort: 5353, ContainerPort: 53}}}
	if _, err := e.d.CreateEndpoint(t.Context(), ereq); err != nil {
		t.Fatal(err)
	}
	full := nftTable(t, e)
	// The backend reads the sysctls of the host namespace through files opened there.
	for _, path := range []string{sysctlIPForward, sysctlIP6Forward, sysctlBrNF} {
		on, err := e.d.fwb.(*nftFirewall).readSysctl(path)
		if want := hostSysctl(t, e, path) != "0"; err != nil || on != want {
			t.Errorf("readSysctl(%s) = %v, %v; want %v", path, on, err, want)
		}
	}
	if diff := cmp.Diff(sharedBefore, shared()); diff != "" {
		t.Errorf("networks and ports changed the shared chains (-before +after):\n%s", diff)
	}
	br0 := "br-" + reqs[0].NetworkID.Short()
	for _, want := range []string{`"custom4" . "custom4"`, `"` + br0 + `"`, `tcp . 8080 comment "cnm:` + eid.Short() + `" : 10.10.1.2 . 80`,
		`192.0.2.1 . udp . 5353 comment "cnm:` + eid.Short() + `" : 10.10.1.2 . 53`} {
		if !strings.Contains(full, want) {
			t.Errorf("table lacks %q:\n%s", want, full)
		}
	}

	// Again, by the same driver and after a restart.
	for _, req := range reqs {
		if err := e.d.CreateNetwork(t.Context(), req); err != nil {
			t.Fatal(err)
		}
	}
	if diff := cmp.Diff(full, nftTable(t, e)); diff != "" {
		t.Errorf("table after CreateNetwork again (-before +after):\n%s", diff)
	}
	letGoOfPorts(e.d) // a restart: the old process's sockets are gone
	d2 := newDriver(t, e.host)
	for _, req := range append(reqs, drivers.CreateNetworkRequest{NetworkID: first, IPv4: v4("10.10.1.0/24")}) {
		if err := d2.CreateNetwork(t.Context(), req); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := d2.CreateEndpoint(t.Context(), ereq); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(full, nftTable(t, e)); diff != "" {
		t.Errorf("table after a restart (-before +after):\n%s", diff)
	}

	// Lost state comes back, once.
	br := "br-" + reqs[0].NetworkID.Short()
	for _, args := range [][]string{
		{"delete", "element", "inet", NftTable, NftSetBridges, "{", `"` + br + `"`, "}"},
		{"delete", "element", "inet", NftTable, NftSetMasq6, "{", `"` + br + `"`, "}"},
		{"delete", "element", "inet", NftTable, NftMapDNAT4Any, "{", "tcp", ".", "8080", "}"},
	} {
		if out, err := nstest.Exec(e.host, "nft", args...); err != nil {
			t.Fatalf("nft %v: %v: %s", args, err, out)
		}
	}
	if err := d2.CreateNetwork(t.Context(), reqs[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := d2.CreateEndpoint(t.Context(), ereq); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(full, nftTable(t, e)); diff != "" {
		t.Errorf("table after repairing lost state (-before +after):\n%s", diff)
	}

	// A crash: a network's bridge and an endpoint gone without their elements and chains.
	gone := drivers.CreateNetworkRequest{NetworkID: driverstest.NewNetworkID(), IPv4: v4("10.10.5.0/24")}
	if err := d2.CreateNetwork(t.Context(), gone); err != nil {
		t.Fatal(err)
	}
	goneEP := driverstest.NewEndpointID()
	if _, err := d2.CreateEndpoint(t.Context(), drivers.CreateEndpointRequest{NetworkID: gone.NetworkID, EndpointID: goneEP,
		IPv4: netip.MustParsePrefix("10.10.5.2/24"), Ports: []drivers.PortBinding{tcp(9090, 90)}}); err != nil {
		t.Fatal(err)
	}
	if err := e.h.LinkDel(e.link(t, "br-"+gone.NetworkID.Short())); err != nil {
		t.Fatal(err)
	}
	letGoOfPorts(d2)
	d3 := newDriver(t, e.host)
	live := []drivers.NetworkID{first}
	for _, req := range append(reqs, drivers.CreateNetworkRequest{NetworkID: first, IPv4: v4("10.10.1.0/24")}) {
		if err := d3.CreateNetwork(t.Context(), req); err != nil {
			t.Fatal(err)
		}
		live = append(live, req.NetworkID)
	}
	if _, err := d3.CreateEndpoint(t.Context(), ereq); err != nil {
		t.Fatal(err)
	}
	repairs, err := d3.Reconcile(t.Context(), drivers.LiveState{Networks: live, Endpoints: []drivers.EndpointID{eid}})
	if err != nil {
		t.Fatal(err)
	}
	want := []drivers.Repair{
		{Object: "nftables rules of br-" + gone.NetworkID.Short(), Action: "removed", Reason: "no such bridge"},
		{Object: "published port rules of endpoint " + goneEP.Short(), Action: "removed", Reason: "no such endpoint"},
	}
	if diff := cmp.Diff(want, repairs); diff != "" {
		t.Errorf("repairs (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(full, nftTable(t, e)); diff != "" {
		t.Errorf("table after Reconcile (-want +got):\n%s", diff)
	}
	if repairs, err := d3.Reconcile(t.Context(), drivers.LiveState{Networks: live, Endpoints: []drivers.EndpointID{eid}}); err != nil || len(repairs) != 0 {
		t.Errorf("second Reconcile = %v, %v; want nothing to do", repairs, err)
	}

	// Deleting removes exactly what was added.
	if err := d3.DeleteEndpoint(t.Context(), drivers.DeleteEndpointRequest{NetworkID: first, EndpointID: eid}); err != nil {
		t.Fatal(err)
	}
	for _, req := range reqs {
		if err := d3.DeleteNetwork(t.Context(), drivers.DeleteNetworkRequest{NetworkID: req.NetworkID}); err != nil {
			t.Fatal(err)
		}
	}
	// The dual-stack network turned IPv6 forwarding on: the rest of IPv6 stays dropped.
	base = strings.Replace(base, "elements = { ipv4 }", "elements = { ipv4, ipv6 }", 1)
	if diff := cmp.Diff(base, nftTable(t, e)); diff != "" {
		t.Errorf("table after deleting (-before create +after delete):\n%s", diff)
	}
}

// TestPrivilegedNftablesIPTablesForwardDrop checks coexistence with another program that
// uses the iptables compatibility tables (iptables-nft) with a FORWARD policy DROP: a
// forwarded packet must pass both tables, so the nftables backend puts one accept rule for
// the packets it marked first in that FORWARD chain, and traffic crosses (out through NAT, in
// through a published port, between the containers), and stops crossing when that rule is
// removed by hand.
func TestPrivilegedNftablesIPTablesForwardDrop(t *testing.T) {
	nstest.Privileged(t)
	withFirewall(t, FirewallNftables)
	l := newLab(t)
	for _, args := range [][]string{{"-P", "FORWARD", "DROP"}, {"-A", "FORWARD", "-s", "198.51.100.0/24", "-j", "ACCEPT"}} {
		if out, err := nstest.Exec(l.host, "iptables-nft", args...); err != nil {
			t.Fatalf("iptables-nft %v: %v: %s", args, err, out)
		}
	}
	nid := l.newNetwork(t, drivers.CreateNetworkRequest{IPv4: v4("10.10.1.0/24")})
	gw := netip.MustParseAddr("10.10.1.1")
	sb := l.sandbox(t, nid, "10.10.1.2/24", gw)
	sb2 := l.sandbox(t, nid, "10.10.1.3/24", gw)
	canPing(t, sb, "sandbox", "192.0.2.2", true)
	canPing(t, sb, "sandbox", "10.10.1.3", true)
	ln := listen(t, l.outside, "192.0.2.2:0")
	if remote, err := dial(sb, outsideIP.Addr(), ln); err != nil || remote != hostUplink.Addr() {
		t.Errorf("TCP from the sandbox to the outside: seen as %v, %v; want %v", remote, err, hostUplink.Addr())
	}
	eid := driverstest.NewEndpointID()
	l.publish(t, nid, eid, "10.10.1.4/24", tcp(8080, 80))
	srv := nstest.NewNS(t)
	l.joinEID(t, srv, nid, eid, "eth0", "10.10.1.4/24", gw)
	lnSrv := listen(t, srv, "10.10.1.4:80")
	if _, err := exchange(l.outside, netip.AddrPortFrom(hostUplink.Addr(), 8080), lnSrv); err != nil {
		t.Errorf("published port from the outside through an iptables FORWARD policy DROP: %v", err)
	}
	out, err := nstest.Exec(l.host, "iptables-nft", "-S", "FORWARD")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"-P FORWARD DROP",
		`-A FORWARD -m mark --mark 0x10000000/0x10000000 -m comment --comment "` + nftIPTablesComment + `" -j ACCEPT`,
		"-A FORWARD -s 198.51.100.0/24 -j ACCEPT"}
	if diff := cmp.Diff(want, strings.Split(out, "\n")); diff != "" {
		t.Errorf("iptables FORWARD (-want +got):\n%s", diff)
	}
	// Both tables decide: without the accept rule, the other program's policy drops the
	// driver's traffic; converging (a restart) puts the rule back, once.
	if out, err := nstest.Exec(l.host, "iptables-nft", "-D", "FORWARD", "1"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	canPing(t, sb, "sandbox without the accept rule", "192.0.2.2", false)
	if err := newDriver(t, l.host).CreateNetwork(t.Context(), drivers.CreateNetworkRequest{NetworkID: nid, IPv4: v4("10.10.1.0/24")}); err != nil {
		t.Fatal(err)
	}
	if out2, err := nstest.Exec(l.host, "iptables-nft", "-S", "FORWARD"); err != nil || out2 != out {
		t.Errorf("iptables FORWARD after a restart: %q, %v; want it as before:\n%s", out2, err, out)
	}
	canPing(t, sb2, "sandbox after the restart", "192.0.2.2", true)
}

// TestPrivilegedFirewallSwitch checks a host that switches backends: what the other backend
// left is removed by Reconcile and reported, the user's iptables chain CNM-USER stays, and
// traffic crosses throughout.
func TestPrivilegedFirewallSwitch(t *testing.T) {
	nstest.Privileged(t)
	l := newLab(t)
	req := drivers.CreateNetworkRequest{NetworkID: driverstest.NewNetworkID(), IPv4: v4("10.10.1.0/24")}
	gw := netip.MustParseAddr("10.10.1.1")
	l.createNetwork(t, req) // iptables, deleted by l.d at the end
	eid := driverstest.NewEndpointID()
	ereq := drivers.CreateEndpointRequest{NetworkID: req.NetworkID, EndpointID: eid, IPv4: netip.MustParsePrefix("10.10.1.2/24"), Ports: []drivers.PortBinding{tcp(8080, 80)}}
	if _, err := l.d.CreateEndpoint(t.Context(), ereq); err != nil {
		t.Fatal(err)
	}
	sb := nstest.NewNS(t)
	l.joinEID(t, sb, req.NetworkID, eid, "eth0", "10.10.1.2/24", gw)
	ln := listen(t, sb, "10.10.1.2:80")
	check := func(when string) {
		t.Helper()
		canPing(t, sb, when, "192.0.2.2", true)
		if _, err := exchange(l.outside, netip.AddrPortFrom(hostUplink.Addr(), 8080), ln); err != nil {
			t.Errorf("%s: published port: %v", when, err)
		}
	}
	check("iptables")
	if !strings.Contains(l.save(t), ChainNetworkPrefix) {
		t.Fatalf("no iptables rules:\n%s", l.save(t))
	}

	// To nftables: a restart that re-creates the network and endpoint, then Reconcile.
	withFirewall(t, FirewallNftables)
	letGoOfPorts(l.d) // a restart: the old process's sockets are gone
	d2 := newDriver(t, l.host)
	if err := d2.CreateNetwork(t.Context(), req); err != nil {
		t.Fatal(err)
	}
	if _, err := d2.CreateEndpoint(t.Context(), ereq); err != nil {
		t.Fatal(err)
	}
	live := drivers.LiveState{Networks: []drivers.NetworkID{req.NetworkID}, Endpoints: []drivers.EndpointID{eid}}
	repairs, err := d2.Reconcile(t.Context(), live)
	if err != nil {
		t.Fatal(err)
	}
	// The iptables backend writes IPv6 rules for every network (its isolation and ICC rules
	// in the ip6 tables too): both families' chains go.
	if len(repairs) != 2 || !strings.Contains(repairs[0].Object, " ip iptables chains") || !strings.Contains(repairs[1].Object, " ip6 iptables chains") {
		t.Errorf("repairs after switching to nftables: %v, want the iptables chains of both families removed", repairs)
	}
	save := l.save(t)
	for _, line := range strings.Split(save, "\n") {
		if strings.Contains(line, "CNM-") && !strings.Contains(line, ChainUser) {
			t.Errorf("iptables backend leftover: %s", line)
		}
	}
	if !strings.Contains(save, "-A FORWARD -j "+ChainUser) {
		t.Errorf("the jump to the user's chain is gone:\n%s", save)
	}
	check("nftables")

	// And back to iptables.
	withFirewall(t, FirewallIPTables)
	letGoOfPorts(d2)
	d3 := newDriver(t, l.host)
	if err := d3.CreateNetwork(t.Context(), req); err != nil {
		t.Fatal(err)
	}
	if _, err := d3.CreateEndpoint(t.Context(), ereq); err != nil {
		t.Fatal(err)
	}
	repairs, err = d3.Reconcile(t.Context(), live)
	if err != nil {
		t.Fatal(err)
	}
	want := []drivers.Repair{
		{Object: "nftables table inet cnm", Action: "removed", Reason: "left by the nftables firewall backend; the backend is iptables"},
		{Object: "ip filter FORWARD accept rule of the nftables backend", Action: "removed", Reason: "the backend is iptables"},
		{Object: "ip6 filter FORWARD accept rule of the nftables backend", Action: "removed", Reason: "the backend is iptables"},
	}
	if diff := cmp.Diff(want, repairs); diff != "" {
		t.Errorf("repairs after switching back to iptables (-want +got):\n%s", diff)
	}
	if out, err := nstest.Exec(l.host, "nft", "list", "tables"); err != nil || strings.Contains(out, "inet "+NftTable) {
		t.Errorf("nft list tables: %q, %v; want no inet %s", out, err, NftTable)
	}
	check("iptables again")
	if err := d3.DeleteEndpoint(t.Context(), drivers.DeleteEndpointRequest{NetworkID: req.NetworkID, EndpointID: eid}); err != nil {
		t.Fatal(err)
	}
}

// TestPrivilegedFirewallChoice checks Config.Firewall: the zero value is iptables, auto picks
// nftables on a kernel that has it (this one) unless iptables-legacy rules are in use, and
// anything else is refused.
func TestPrivilegedFirewallChoice(t *testing.T) {
	nstest.Privileged(t)
	host := nstest.NewNS(t)
	for _, c := range []struct {
		fw   Firewall
		want Firewall
	}{{"", FirewallIPTables}, {FirewallIPTables, FirewallIPTables}, {FirewallNftables, FirewallNftables}, {FirewallAuto, FirewallNftables}} {
		d, err := New(Config{HostNetns: host.Path(), Firewall: c.fw})
		if err != nil {
			t.Fatalf("New with Firewall %q: %v", c.fw, err)
		}
		if got := d.fwb.kind(); got != c.want {
			t.Errorf("Firewall %q: backend %q, want %q", c.fw, got, c.want)
		}
		d.Close()
	}
	if _, err := New(Config{HostNetns: host.Path(), Firewall: "pf"}); !errors.Is(err, errclass.ErrInvalidParameter) {
		t.Errorf("New with Firewall \"pf\": %v, want an invalid parameter", err)
	}
	// auto and iptables-legacy: tables that were only listed are not in use; a rule or a
	// policy other than ACCEPT in either family is, and then auto picks iptables.
	for _, c := range []struct {
		name string
		cmds [][]string
		want Firewall
	}{
		{"legacy tables listed only", [][]string{{"iptables-legacy", "-S"}, {"iptables-legacy", "-t", "nat", "-S"}, {"ip6tables-legacy", "-S"}}, FirewallNftables},
		{"a legacy FORWARD policy DROP", [][]string{{"iptables-legacy", "-P", "FORWARD", "DROP"}}, FirewallIPTables},
		{"a legacy nat rule", [][]string{{"iptables-legacy", "-t", "nat", "-A", "POSTROUTING", "-o", "lo", "-j", "ACCEPT"}}, FirewallIPTables},
		{"a legacy ip6 rule", [][]string{{"ip6tables-legacy", "-A", "INPUT", "-i", "lo", "-j", "ACCEPT"}}, FirewallIPTables},
	} {
		host := nstest.NewNS(t)
		for _, cmd := range c.cmds {
			if out, err := nstest.Exec(host, cmd[0], cmd[1:]...); err != nil {
				t.Fatalf("%s: %v: %v: %s", c.name, cmd, err, out)
			}
		}
		d, err := New(Config{HostNetns: host.Path(), Firewall: FirewallAuto})
		if err != nil {
			t.Fatalf("%s: New: %v", c.name, err)
		}
		if got := d.fwb.kind(); got != c.want {
			t.Errorf("%s: auto picked %q, want %q", c.name, got, c.want)
		}
		d.Close()
	}
}

// letGoOfPorts closes the sockets that hold d's published ports, as the end of its process
// would, so that a driver started for a restart can hold them; d stays usable for the test's
// cleanups.
func letGoOfPorts(d *Driver) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, ep := range d.endpoints {
		closePortSockets(heldFds(ep.held))
		ep.held = nil
	}
}

// TestPrivilegedNftablesCreateRollback checks a CreateNetwork that fails after its batch went
// out concurrently with the bridge's set-up (a duplicate gateway address fails the second
// address add): the bridge and the network's elements are both gone, and the name is free.
func TestPrivilegedNftablesCreateRollback(t *testing.T) {
	nstest.Privileged(t)
	withFirewall(t, FirewallNftables)
	e := newEnv(t)
	first := driverstest.NewNetworkID()
	e.createNetwork(t, drivers.CreateNetworkRequest{NetworkID: first, IPv4: v4("10.10.9.0/24")}) // the base is converged
	before := nftTable(t, e)
	req := drivers.CreateNetworkRequest{NetworkID: driverstest.NewNetworkID(), IPv4: append(slices.Clone(ipv4), ipv4...)}
	n, err := networkConfig(req)
	if err != nil {
		t.Fatal(err)
	}
	if !e.d.fwb.concurrent(n) {
		t.Fatal("the backend would not send the batch concurrently: the test proves nothing")
	}
	if err := e.d.CreateNetwork(t.Context(), req); err == nil {
		t.Fatal("CreateNetwork with a duplicate gateway: nil error")
	}
	if names := linkNames(t, e.h); !slices.Equal(names, []string{"br-" + first.Short(), "lo"}) {
		t.Errorf("links after a failed CreateNetwork: %v", names)
	}
	if diff := cmp.Diff(before, nftTable(t, e)); diff != "" {
		t.Errorf("table after a failed CreateNetwork (-before +after):\n%s", diff)
	}
	req.IPv4 = ipv4
	e.createNetwork(t, req)
}
