package bridge

import (
	"strings"
	"testing"

	"github.com/cnmkit/cnm/internal/nstest"
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

// wireTests are the tests that prove the firewall's semantics by traffic only: the same
// assertions hold for both backends.
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
