package bridge

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/internal/errclass"
	cnl "github.com/cnmkit/cnm/internal/nl"
	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

const (
	testNID = drivers.NetworkID("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
	testEID = drivers.EndpointID("89abcdef0123456789abcdef0123456789abcdef0123456789abcdef01234567")
)

// renderRequest renders a link request as text, one attribute a line, nested attributes
// under their parent's name.
func renderRequest(t *testing.T, req *nl.NetlinkRequest) []string {
	t.Helper()
	b := req.Serialize()
	typ := binary.NativeEndian.Uint16(b[4:6])
	flags := binary.NativeEndian.Uint16(b[6:8])
	var fl []string
	for _, f := range []struct {
		bit  uint16
		name string
	}{{unix.NLM_F_REQUEST, "REQUEST"}, {unix.NLM_F_ACK, "ACK"}, {unix.NLM_F_EXCL, "EXCL"}, {unix.NLM_F_CREATE, "CREATE"}} {
		if flags&f.bit != 0 {
			fl = append(fl, f.name)
		}
	}
	names := map[uint16]string{unix.RTM_NEWLINK: "RTM_NEWLINK", unix.RTM_DELLINK: "RTM_DELLINK"}
	out := []string{fmt.Sprintf("%s %s", names[typ], strings.Join(fl, "|"))}
	return append(out, renderLink(t, "", b[unix.SizeofNlMsghdr:])...)
}

// renderLink renders an ifinfomsg and the attributes after it.
func renderLink(t *testing.T, prefix string, b []byte) []string {
	t.Helper()
	msg := nl.DeserializeIfInfomsg(b)
	out := []string{fmt.Sprintf("%sifinfomsg index=%d flags=%#x change=%#x", prefix, msg.Index, msg.Flags, msg.Change)}
	attrs, err := nl.ParseRouteAttr(b[unix.SizeofIfInfomsg:])
	if err != nil {
		t.Fatalf("parse attributes: %v", err)
	}
	for _, a := range attrs {
		v := a.Value
		switch a.Attr.Type {
		case unix.IFLA_IFNAME:
			out = append(out, fmt.Sprintf("%sIFNAME %q", prefix, v))
		case unix.IFLA_MTU:
			out = append(out, fmt.Sprintf("%sMTU %d", prefix, binary.NativeEndian.Uint32(v)))
		case unix.IFLA_MASTER:
			out = append(out, fmt.Sprintf("%sMASTER %d", prefix, binary.NativeEndian.Uint32(v)))
		case unix.IFLA_ADDRESS:
			out = append(out, fmt.Sprintf("%sADDRESS %s", prefix, net.HardwareAddr(v)))
		case unix.IFLA_NET_NS_FD:
			out = append(out, fmt.Sprintf("%sNET_NS_FD %d", prefix, binary.NativeEndian.Uint32(v)))
		case unix.IFLA_LINKINFO:
			info, err := nl.ParseRouteAttr(v)
			if err != nil {
				t.Fatal(err)
			}
			for _, i := range info {
				switch i.Attr.Type {
				case nl.IFLA_INFO_KIND:
					out = append(out, fmt.Sprintf("%sLINKINFO.KIND %q", prefix, i.Value))
				case nl.IFLA_INFO_DATA:
					data, err := nl.ParseRouteAttr(i.Value)
					if err != nil || len(data) != 1 || data[0].Attr.Type != nl.VETH_INFO_PEER {
						t.Fatalf("LINKINFO.DATA = %v, %v; want one VETH_INFO_PEER", data, err)
					}
					out = append(out, renderLink(t, prefix+"PEER.", data[0].Value)...)
				default:
					out = append(out, fmt.Sprintf("%sLINKINFO.%d %x", prefix, i.Attr.Type, i.Value))
				}
			}
		default:
			out = append(out, fmt.Sprintf("%s%d %x", prefix, a.Attr.Type, v))
		}
	}
	return out
}

// TestVethRequest checks that Join's single message holds everything: IFF_UP and IFLA_MASTER
// for the host end, and the peer's name, MTU, MAC and namespace.
func TestVethRequest(t *testing.T) {
	mac := net.HardwareAddr{0x02, 0x42, 0x0a, 0x00, 0x00, 0x02}
	got := renderRequest(t, cnl.VethRequest("veth89abcdef012", 7, 1400, "eth0", mac, 9))
	want := []string{
		"RTM_NEWLINK REQUEST|ACK|EXCL|CREATE",
		"ifinfomsg index=0 flags=0x1 change=0x1",
		`IFNAME "veth89abcdef012\x00"`,
		"MTU 1400",
		"MASTER 7",
		`LINKINFO.KIND "veth"`,
		"PEER.ifinfomsg index=0 flags=0x0 change=0x0",
		`PEER.IFNAME "eth0\x00"`,
		"PEER.MTU 1400",
		"PEER.ADDRESS 02:42:0a:00:00:02",
		"PEER.NET_NS_FD 9",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("veth request (-want +got):\n%s", diff)
	}
	got = renderRequest(t, cnl.VethRequest("veth89abcdef012", 7, 1500, "eth1", nil, 9))
	for _, l := range got {
		if strings.HasPrefix(l, "PEER.ADDRESS") {
			t.Errorf("request without a MAC has %s", l)
		}
	}
}

func TestDelLinkRequest(t *testing.T) {
	got := renderRequest(t, cnl.DelLinkRequest("veth89abcdef012"))
	want := []string{
		"RTM_DELLINK REQUEST|ACK",
		"ifinfomsg index=0 flags=0x0 change=0x0",
		`IFNAME "veth89abcdef012\x00"`,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("del request (-want +got):\n%s", diff)
	}
}

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
