package bridge

import (
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
	"github.com/cnmkit/cnm/internal/nstest"
	"github.com/google/go-cmp/cmp"
)

// testFirewall is the backend of the drivers newDriver makes: the wire tests run once with
// each (TestPrivilegedNftablesWire sets it). Tests do not run in parallel in this package.
var testFirewall = FirewallIPTables

// withFirewall makes newDriver use backend fw until the test ends.
func withFirewall(t *testing.T, fw Firewall) {
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
// elements and its own chains, never rules in the shared chains; creating again (same driver,
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
	if diff := cmp.Diff(sharedBefore, shared()); diff != "" {
		t.Errorf("networks and ports changed the shared chains (-before +after):\n%s", diff)
	}
	for _, want := range []string{`"custom4" : goto in-custom4`, "10.10.2.0/24 : jump nat-br-" + reqs[0].NetworkID.Short(),
		"fd00:10:2::/64 : jump nat-br-" + reqs[0].NetworkID.Short(), `tcp . 8080 comment "cnm:` + eid.Short() + `" : 10.10.1.2 . 80`,
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
		{"delete", "element", "inet", NftTable, NftMapForwardIn, "{", `"` + br + `"`, "}"},
		{"flush", "chain", "inet", NftTable, NftChainOutPrefix + br},
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
