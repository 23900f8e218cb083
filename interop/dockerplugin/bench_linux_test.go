package dockerplugin

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/drivers/bridge"
	"github.com/cnmkit/cnm/drivers/remote/server"
	"github.com/cnmkit/cnm/internal/nstest"
	"github.com/cnmkit/cnm/ipam"
	"github.com/docker/docker/libnetwork/driverapi"
	mobyremote "github.com/docker/docker/libnetwork/drivers/remote"
	"github.com/docker/docker/pkg/plugins"
	"github.com/vishvananda/netlink"
)

// BenchmarkPrivilegedPluginAttach measures one endpoint's attach and detach (create, join,
// interface configured in the sandbox, leave, delete) on a cnm bridge network three ways:
//   - fastpath: cnm's bridge driver called in process, the interface made directly in the
//     sandbox (what cnm does when embedded);
//   - hostside: the same driver's host-side join, the interface then moved in, renamed and
//     configured as Docker does (the work a plugin's caller adds);
//   - moby: Docker's own remote driver (libnetwork/drivers/remote over pkg/plugins) calling
//     cnm's server, which calls the same driver: the protocol's cost on top of hostside.
func BenchmarkPrivilegedPluginAttach(b *testing.B) {
	nstest.Privileged(b)
	ctx := b.Context()
	host, sb := nstest.NewNS(b), nstest.NewNS(b)
	drv, err := bridge.New(bridge.Config{HostNetns: host.Path(), DisableIPTables: true})
	if err != nil {
		b.Fatal(err)
	}
	defer drv.Close()
	alloc, err := ipam.NewDefault(ipam.DefaultConfig{})
	if err != nil {
		b.Fatal(err)
	}
	srv, err := server.New(server.Config{Driver: drv, IPAM: alloc})
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	l, err := server.Listen(dir, "cnm")
	if err != nil {
		b.Fatal(err)
	}
	sctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	wg.Go(func() { _ = srv.Serve(sctx, l) })
	defer func() { stop(); wg.Wait() }()
	client, err := plugins.NewClient("unix://"+filepath.Join(dir, "cnm.sock"), nil)
	if err != nil {
		b.Fatal(err)
	}
	var reg registry
	if err := mobyremote.Register(&reg, getter{"cnm", client}); err != nil {
		b.Fatal(err)
	}
	moby := reg.driver

	nid := id('d')
	subnet := netip.MustParsePrefix("10.66.0.0/16")
	gw := netip.MustParseAddr("10.66.0.1")
	_, ipnet, _ := net.ParseCIDR(subnet.String())
	gwNet := &net.IPNet{IP: gw.AsSlice(), Mask: ipnet.Mask}
	if err := moby.CreateNetwork(ctx, nid, map[string]any{}, nil, []driverapi.IPAMData{{AddressSpace: "local", Pool: ipnet, Gateway: gwNet}}, nil); err != nil {
		b.Fatal(err)
	}
	defer moby.DeleteNetwork(nid)
	sh, err := netlink.NewHandleAt(sb.Handle())
	if err != nil {
		b.Fatal(err)
	}
	defer sh.Close()
	configure := func(name string, addr netip.Prefix) error {
		link, err := sh.LinkByName(name)
		if err == nil && name != "eth0" {
			err = sh.LinkSetName(link, "eth0")
		}
		if err == nil {
			err = sh.AddrAdd(link, &netlink.Addr{IPNet: &net.IPNet{IP: addr.Addr().AsSlice(), Mask: ipnet.Mask}})
		}
		if err == nil {
			err = sh.LinkSetUp(link)
		}
		return err
	}
	n := 0
	next := func() (string, netip.Prefix) {
		n++
		return fmt.Sprintf("%064x", n), netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 66, byte(n >> 8 % 256), byte(n%250 + 2)}), 16)
	}
	direct := func(b *testing.B, hostSide bool) {
		for b.Loop() {
			e, addr := next()
			eid := drivers.EndpointID(e)
			res, err := drv.CreateEndpoint(ctx, drivers.CreateEndpointRequest{NetworkID: drivers.NetworkID(nid), EndpointID: eid, IPv4: addr})
			if err != nil {
				b.Fatal(err)
			}
			req := drivers.JoinRequest{NetworkID: drivers.NetworkID(nid), EndpointID: eid, SandboxKey: sb.Path(), NetnsFD: sb.FD(), IfName: "eth0", MAC: res.MAC, IPv4: addr}
			name := "eth0"
			if hostSide {
				req.IfName = "cnm" + e[:12]
				jr, err := drv.JoinHostSide(ctx, req)
				if err == nil {
					err = moveIn(host, sb, jr.SrcName, "eth", &net.IPNet{IP: addr.Addr().AsSlice(), Mask: ipnet.Mask}, nil)
				}
				if err != nil {
					b.Fatal(err)
				}
			} else {
				if _, err := drv.Join(ctx, req); err != nil {
					b.Fatal(err)
				}
				if err := configure(name, addr); err != nil {
					b.Fatal(err)
				}
			}
			if err := drv.Leave(ctx, drivers.LeaveRequest{NetworkID: drivers.NetworkID(nid), EndpointID: eid, IfName: "eth0"}); err != nil {
				b.Fatal(err)
			}
			if err := drv.DeleteEndpoint(ctx, drivers.DeleteEndpointRequest{NetworkID: drivers.NetworkID(nid), EndpointID: eid}); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("fastpath", func(b *testing.B) { direct(b, false) })
	b.Run("hostside", func(b *testing.B) { direct(b, true) })
	b.Run("moby", func(b *testing.B) {
		for b.Loop() {
			e, addr := next()
			ipn := &net.IPNet{IP: addr.Addr().AsSlice(), Mask: ipnet.Mask}
			if err := moby.CreateEndpoint(ctx, nid, e, &ifInfo{addr: ipn}, map[string]any{}); err != nil {
				b.Fatal(err)
			}
			j := &joinInfo{}
			if err := moby.Join(ctx, nid, e, sb.Path(), j, nil, nil); err != nil {
				b.Fatal(err)
			}
			if err := moveIn(host, sb, j.src, j.prefix, ipn, nil); err != nil {
				b.Fatal(err)
			}
			if err := moby.Leave(nid, e); err != nil {
				b.Fatal(err)
			}
			if err := moby.DeleteEndpoint(nid, e); err != nil {
				b.Fatal(err)
			}
		}
	})
}
