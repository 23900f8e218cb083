package bridge

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/google/go-cmp/cmp"
)

const (
	testNID = drivers.NetworkID("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
	testEID = drivers.EndpointID("89abcdef0123456789abcdef0123456789abcdef0123456789abcdef01234567")
)

func TestNames(t *testing.T) {
	if got := defaultBridgeName(testNID); got != "br-0123456789ab" {
		t.Errorf("defaultBridgeName = %q", got)
	}
	if got := hostVethName(testEID); got != "veth89abcdef012" || !isHostVethName(got) {
		t.Errorf("hostVethName = %q", got)
	}
	for _, n := range []string{"veth89abcdef01", "veth89abcdef0123", "vethXXabcdef012", "eth089abcdef012"} {
		if isHostVethName(n) {
			t.Errorf("isHostVethName(%q) = true", n)
		}
	}
}

func TestEndpointMAC(t *testing.T) {
	if got := endpointMAC(netip.MustParseAddr("172.17.0.2")).String(); got != "02:42:ac:11:00:02" {
		t.Errorf("endpointMAC(172.17.0.2) = %s", got)
	}
	for range 100 {
		m := endpointMAC(netip.Addr{})
		if len(m) != 6 || m[0]&1 != 0 || m[0]&2 == 0 {
			t.Fatalf("endpointMAC() = %s, want locally administered unicast", m)
		}
		if err := checkMAC(m); err != nil {
			t.Fatal(err)
		}
	}
}

func TestNetworkConfigErrors(t *testing.T) {
	v4 := []drivers.IPAMData{{Subnet: netip.MustParsePrefix("10.1.0.0/24"), Gateway: netip.MustParseAddr("10.1.0.1")}}
	v6 := []drivers.IPAMData{{Subnet: netip.MustParsePrefix("fd00:1::/64"), Gateway: netip.MustParseAddr("fd00:1::1")}}
	for name, req := range map[string]drivers.CreateNetworkRequest{
		"short ID":        {NetworkID: "0123"},
		"upper-case ID":   {NetworkID: "0123456789ABCDEF"},
		"MTU":             {NetworkID: testNID, Options: NetworkOptions{MTU: 67}},
		"MTU pointer":     {NetworkID: testNID, Options: &NetworkOptions{MTU: 65536}},
		"bridge name":     {NetworkID: testNID, Options: NetworkOptions{BridgeName: "a:b"}},
		"foreign options": {NetworkID: testNID, Options: foreignOptions{}},
		"gateway outside": {NetworkID: testNID, IPv4: []drivers.IPAMData{{Subnet: v4[0].Subnet, Gateway: netip.MustParseAddr("10.2.0.1")}}},
		"IPv6 in IPv4":    {NetworkID: testNID, IPv4: v6},
		"IPv6 small MTU":  {NetworkID: testNID, IPv4: v4, IPv6: v6, Options: NetworkOptions{MTU: 1279}},
	} {
		if _, err := networkConfig(req); !errors.Is(err, errclass.ErrInvalidParameter) {
			t.Errorf("%s: networkConfig = %v, want an invalid parameter", name, err)
		}
	}
	n, err := networkConfig(drivers.CreateNetworkRequest{NetworkID: testNID, IPv4: v4, IPv6: v6, Internal: true})
	if err != nil {
		t.Fatal(err)
	}
	want := network{bridge: "br-0123456789ab", mtu: 1500, gw4: v4[0].Gateway, gw6: v6[0].Gateway, internal: true,
		subnets4: []netip.Prefix{v4[0].Subnet}, subnets6: []netip.Prefix{v6[0].Subnet.Masked()}}
	if diff := cmp.Diff(want, *n, cmp.AllowUnexported(network{}), cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
		cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
		t.Errorf("networkConfig (-want +got):\n%s", diff)
	}
}

type foreignOptions struct{}

func (foreignOptions) DriverType() string        { return "macvlan" }
func (foreignOptions) Labels() map[string]string { return nil }
