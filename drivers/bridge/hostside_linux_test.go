package bridge

import (
	"errors"
	"net"
	"net/netip"
	"testing"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/drivers/driverstest"
	"github.com/cnmkit/cnm/internal/nstest"
)

// TestPrivilegedJoinHostSide: the veth pair of a host-side join has both ends in the host
// namespace, the sandbox end named as asked, with the MAC and MTU and down; the caller moves
// it into a sandbox (as Docker does), and Leave removes the pair, moved or not.
func TestPrivilegedJoinHostSide(t *testing.T) {
	nstest.Privileged(t)
	e := newEnv(t)
	nid := driverstest.NewNetworkID()
	e.createNetwork(t, drivers.CreateNetworkRequest{NetworkID: nid, Options: NetworkOptions{MTU: 1450}, IPv4: ipv4})
	addr := netip.MustParsePrefix("10.123.0.2/24")
	ctx := t.Context()
	for _, moved := range []bool{true, false} {
		eid := driverstest.NewEndpointID()
		res, err := e.d.CreateEndpoint(ctx, drivers.CreateEndpointRequest{NetworkID: nid, EndpointID: eid, IPv4: addr})
		if err != nil {
			t.Fatal(err)
		}
		name := "cnm" + string(eid)[:12]
		jres, err := e.d.JoinHostSide(ctx, drivers.JoinRequest{NetworkID: nid, EndpointID: eid, NetnsFD: -1, IfName: name, MAC: res.MAC, IPv4: addr})
		if err != nil {
			t.Fatalf("JoinHostSide: %v", err)
		}
		if want := (drivers.JoinResult{SrcName: name, Gateway: gw4}); !joinResultEqual(jres, want) {
			t.Errorf("JoinHostSide = %+v, want %+v", jres, want)
		}
		br := e.link(t, "br-"+nid.Short())
		host := e.link(t, hostVethName(eid))
		if a := host.Attrs(); a.MasterIndex != br.Attrs().Index || a.Flags&net.FlagUp == 0 {
			t.Errorf("host end %s: master %d (bridge %d), flags %v; want up on the bridge", a.Name, a.MasterIndex, br.Attrs().Index, a.Flags)
		}
		c := e.link(t, name)
		if a := c.Attrs(); c.Type() != "veth" || a.HardwareAddr.String() != res.MAC.String() || a.MTU != 1450 || a.Flags&net.FlagUp != 0 {
			t.Errorf("sandbox end %s in the host: type %s, MAC %v, MTU %d, flags %v; want a down veth with MAC %v, MTU 1450", name, c.Type(), a.HardwareAddr, a.MTU, a.Flags, res.MAC)
		}
		// Joining it again conflicts: the name is taken in the host.
		if _, err := e.d.JoinHostSide(ctx, drivers.JoinRequest{NetworkID: nid, EndpointID: driverstest.NewEndpointID(), IfName: name}); !errors.Is(err, drivers.ErrConflict) {
			t.Errorf("JoinHostSide with a taken name: %v, want a conflict", err)
		}
		sb := nstest.NewNS(t)
		if moved {
			sh := handleAt(t, sb)
			if err := e.h.LinkSetNsFd(c, sb.FD()); err != nil {
				t.Fatal(err)
			}
			c, err := sh.LinkByName(name)
			if err == nil {
				err = sh.LinkSetName(c, "eth0")
			}
			if err == nil {
				err = sh.AddrAdd(c, bridgeAddr(addr))
			}
			if err == nil {
				err = sh.LinkSetUp(c)
			}
			if err != nil {
				t.Fatal(err)
			}
			if out, ok := nstest.Ping(sb.Path(), gw4.String(), 2); !ok {
				t.Errorf("ping the gateway from the moved interface:\n%s", out)
			}
		}
		if err := e.d.Leave(ctx, drivers.LeaveRequest{NetworkID: nid, EndpointID: eid, IfName: name}); err != nil {
			t.Fatal(err)
		}
		if err := e.d.DeleteEndpoint(ctx, drivers.DeleteEndpointRequest{NetworkID: nid, EndpointID: eid}); err != nil {
			t.Fatal(err)
		}
		if names := linkNames(t, e.h); len(names) != 2 { // lo and the bridge
			t.Errorf("links after Leave (moved %v): %v, want lo and the bridge", moved, names)
		}
	}
	if _, err := e.d.JoinHostSide(ctx, drivers.JoinRequest{NetworkID: nid, EndpointID: driverstest.NewEndpointID(), IfName: "a/b"}); !errors.Is(err, drivers.ErrInvalidParameter) {
		t.Errorf("JoinHostSide with a bad name: %v, want invalid parameter", err)
	}
}
