package bridge

import (
	"encoding/binary"
	"fmt"
	"net"
	"strings"
	"testing"

	cnl "github.com/cnmkit/cnm/internal/nl"
	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
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
