package dockerplugin

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/cnmkit/cnm/drivers/bridge"
	"github.com/cnmkit/cnm/drivers/remote/server"
	"github.com/cnmkit/cnm/internal/netns"
	"github.com/cnmkit/cnm/internal/nstest"
	"github.com/cnmkit/cnm/ipam"
	"github.com/docker/docker/libnetwork/driverapi"
	mobyremote "github.com/docker/docker/libnetwork/drivers/remote"
	"github.com/docker/docker/libnetwork/ipamapi"
	mobyipam "github.com/docker/docker/libnetwork/ipams/remote"
	"github.com/docker/docker/pkg/plugingetter"
	"github.com/docker/docker/pkg/plugins"
	"github.com/vishvananda/netlink"
)

// getter is a plugingetter.PluginGetter that knows one plugin, reached with pkg/plugins'
// client at a socket: moby's drivers register through it as they do for a managed plugin.
type getter struct {
	name   string
	client *plugins.Client
}

type compat struct {
	name   string
	client *plugins.Client
}

func (c compat) Name() string               { return c.name }
func (c compat) ScopedPath(p string) string { return p }
func (c compat) IsV1() bool                 { return true }
func (c compat) Client() *plugins.Client    { return c.client }

func (g getter) Get(name, capability string, mode int) (plugingetter.CompatPlugin, error) {
	return compat{g.name, g.client}, nil
}
func (g getter) GetAllByCap(string) ([]plugingetter.CompatPlugin, error) {
	return []plugingetter.CompatPlugin{compat{g.name, g.client}}, nil
}
func (g getter) GetAllManagedPluginsByCap(string) []plugingetter.CompatPlugin {
	return []plugingetter.CompatPlugin{compat{g.name, g.client}}
}
func (g getter) Handle(string, func(string, *plugins.Client)) {}

// registry captures what moby's Register functions register.
type registry struct {
	driver driverapi.Driver
	caps   driverapi.Capability
	ipam   ipamapi.Ipam
}

func (r *registry) RegisterDriver(name string, d driverapi.Driver, c driverapi.Capability) error {
	r.driver, r.caps = d, c
	return nil
}
func (r *registry) RegisterIpamDriver(name string, d ipamapi.Ipam) error { r.ipam = d; return nil }
func (r *registry) RegisterIpamDriverWithCapabilities(name string, d ipamapi.Ipam, _ *ipamapi.Capability) error {
	r.ipam = d
	return nil
}

// ifInfo is the endpoint's interface as libnetwork keeps it (driverapi.InterfaceInfo).
type ifInfo struct {
	driverapi.InterfaceInfo
	mac  net.HardwareAddr
	addr *net.IPNet
}

func (i *ifInfo) MacAddress() net.HardwareAddr { return i.mac }
func (i *ifInfo) Address() *net.IPNet          { return i.addr }
func (i *ifInfo) AddressIPv6() *net.IPNet      { return nil }
func (i *ifInfo) SetMacAddress(m net.HardwareAddr) error {
	if i.mac != nil {
		return fmt.Errorf("MAC set already")
	}
	i.mac = m
	return nil
}
func (i *ifInfo) SetIPAddress(*net.IPNet) error { return fmt.Errorf("address set already") }

// joinInfo is libnetwork's driverapi.JoinInfo of one Join.
type joinInfo struct {
	driverapi.JoinInfo
	src, prefix string
	gw          net.IP
}

func (j *joinInfo) InterfaceName() driverapi.InterfaceNameInfo { return j }
func (j *joinInfo) SetNames(src, prefix, _ string) error {
	j.src, j.prefix = src, prefix
	return nil
}
func (j *joinInfo) SetGateway(ip net.IP) error                   { j.gw = ip; return nil }
func (j *joinInfo) SetGatewayIPv6(net.IP) error                  { return nil }
func (j *joinInfo) DisableGatewayService()                       {}
func (j *joinInfo) AddStaticRoute(*net.IPNet, int, net.IP) error { return nil }

// moveIn does what Docker's sandbox does with a Join's interface: it moves the host link src
// into ns, renames it to prefix+"0", gives it addr and sets it up, with a default route via gw.
func moveIn(ns *netns.NS, src, prefix string, addr *net.IPNet, gw net.IP) error {
	link, err := netlink.LinkByName(src)
	if err != nil {
		return fmt.Errorf("find %s in the host: %w", src, err)
	}
	if err := netlink.LinkSetNsFd(link, ns.FD()); err != nil {
		return fmt.Errorf("move %s: %w", src, err)
	}
	h, err := netlink.NewHandleAt(ns.Handle())
	if err != nil {
		return err
	}
	defer h.Close()
	if link, err = h.LinkByName(src); err != nil {
		return err
	}
	name := prefix + "0"
	if err := h.LinkSetName(link, name); err != nil {
		return err
	}
	if err := h.AddrAdd(link, &netlink.Addr{IPNet: addr}); err != nil {
		return err
	}
	if err := h.LinkSetUp(link); err != nil {
		return err
	}
	return h.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Gw: gw})
}

func id(c byte) string { return strings.Repeat(string(c), 64) }

// TestPrivilegedMobyClientDrivesCNMServer runs moby's libnetwork remote driver and remote
// IPAM, over moby's pkg/plugins client, against cnm's server serving the bridge driver and
// the default IPAM: pool, gateway and addresses from IPAM, network, two endpoints joined into
// two namespaces the way Docker does (move, rename, address), a real ping across, then leave,
// delete and release, and nothing left in the kernel.
func TestPrivilegedMobyClientDrivesCNMServer(t *testing.T) {
	nstest.Privileged(t)
	ctx := t.Context()
	drv, err := bridge.New(bridge.Config{DisableIPTables: true})
	if err != nil {
		t.Fatal(err)
	}
	defer drv.Close()
	alloc, err := ipam.NewDefault(ipam.DefaultConfig{})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Config{Driver: drv, IPAM: alloc})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	l, err := server.Listen(dir, "cnm")
	if err != nil {
		t.Fatal(err)
	}
	sctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := srv.Serve(sctx, l); err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	defer func() { stop(); wg.Wait() }()

	// pkg/plugins: the client Docker uses, and the activation handshake.
	client, err := plugins.NewClient("unix://"+dir+"/cnm.sock", nil)
	if err != nil {
		t.Fatal(err)
	}
	var m plugins.Manifest
	if err := client.Call("Plugin.Activate", nil, &m); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(m.Implements) != "[NetworkDriver IpamDriver]" {
		t.Fatalf("Implements = %v", m.Implements)
	}
	var reg registry
	g := getter{"cnm", client}
	if err := mobyremote.Register(&reg, g); err != nil {
		t.Fatal(err)
	}
	if err := mobyipam.Register(&reg, g); err != nil {
		t.Fatal(err)
	}
	if reg.driver == nil || reg.ipam == nil || reg.caps.DataScope != "local" {
		t.Fatalf("moby registered driver %v caps %+v ipam %v", reg.driver, reg.caps, reg.ipam)
	}
	d, a := reg.driver, reg.ipam

	// IPAM, as libnetwork asks for a network: a pool, its gateway, two addresses.
	local, _, err := a.GetDefaultAddressSpaces()
	if err != nil {
		t.Fatal(err)
	}
	pool, err := a.RequestPool(ipamapi.PoolRequest{AddressSpace: local, Pool: "10.77.0.0/24"})
	if err != nil {
		t.Fatal(err)
	}
	gw, _, err := a.RequestAddress(pool.PoolID, nil, map[string]string{ipamapi.RequestAddressType: "com.docker.network.gateway"})
	if err != nil {
		t.Fatal(err)
	}
	if gw.String() != "10.77.0.1/24" {
		t.Errorf("gateway %v, want 10.77.0.1/24", gw)
	}
	_, subnet, _ := net.ParseCIDR(pool.Pool.String())
	nid := id('a')
	if err := d.CreateNetwork(ctx, nid, map[string]any{
		"com.docker.network.generic":     map[string]string{"com.docker.network.bridge.name": "br-moby"},
		"com.docker.network.enable_ipv6": false,
	}, nil, []driverapi.IPAMData{{AddressSpace: local, Pool: subnet, Gateway: gw}}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := netlink.LinkByName("br-moby"); err != nil {
		t.Fatalf("the bridge is not there: %v", err)
	}

	type ep struct {
		eid  string
		ns   *netns.NS
		addr *net.IPNet
	}
	var eps []ep
	for i, c := range []byte{'b', 'c'} {
		addr, _, err := a.RequestAddress(pool.PoolID, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		e := ep{eid: id(c), ns: nstest.NewNS(t), addr: addr}
		info := &ifInfo{addr: addr}
		if err := d.CreateEndpoint(ctx, nid, e.eid, info, map[string]any{}); err != nil {
			t.Fatal(err)
		}
		if info.mac == nil || info.mac[0] != 0x02 || info.mac[1] != 0x42 {
			t.Errorf("endpoint %d: MAC %v, want the bridge's 02:42:... chosen by the driver", i, info.mac)
		}
		j := &joinInfo{}
		if err := d.Join(ctx, nid, e.eid, e.ns.Path(), j, nil, nil); err != nil {
			t.Fatal(err)
		}
		if j.src != "cnm"+e.eid[:12] || j.prefix != "eth" || !j.gw.Equal(gw.IP) {
			t.Errorf("Join: SrcName %q DstPrefix %q gateway %v", j.src, j.prefix, j.gw)
		}
		if err := moveIn(e.ns, j.src, j.prefix, addr, j.gw); err != nil {
			t.Fatal(err)
		}
		eps = append(eps, e)
	}
	if out, ok := nstest.Ping(eps[0].ns.Path(), eps[1].addr.IP.String(), 2); !ok {
		t.Fatalf("ping %v from the first namespace: %s", eps[1].addr.IP, out)
	}
	if out, ok := nstest.Ping(eps[1].ns.Path(), "10.77.0.1", 1); !ok {
		t.Errorf("ping the gateway from the second namespace: %s", out)
	}
	if _, err := d.EndpointOperInfo(nid, eps[0].eid); err != nil {
		t.Errorf("EndpointOperInfo: %v", err)
	}
	if err := d.ProgramExternalConnectivity(ctx, nid, eps[0].eid, nil); err != nil {
		t.Errorf("ProgramExternalConnectivity: %v", err)
	}
	if err := d.RevokeExternalConnectivity(nid, eps[0].eid); err != nil {
		t.Errorf("RevokeExternalConnectivity: %v", err)
	}

	for _, e := range eps {
		if err := d.Leave(nid, e.eid); err != nil {
			t.Fatal(err)
		}
		if out, _ := nstest.Exec(e.ns, "ip", "-o", "link", "show", "eth0"); !strings.Contains(out, "does not exist") {
			t.Errorf("eth0 still in the namespace after Leave: %s", out)
		}
		if err := d.DeleteEndpoint(nid, e.eid); err != nil {
			t.Fatal(err)
		}
		if err := a.ReleaseAddress(pool.PoolID, e.addr.IP); err != nil {
			t.Error(err)
		}
	}
	if err := d.DeleteNetwork(nid); err != nil {
		t.Fatal(err)
	}
	if err := a.ReleaseAddress(pool.PoolID, gw.IP); err != nil {
		t.Error(err)
	}
	if err := a.ReleasePool(pool.PoolID); err != nil {
		t.Error(err)
	}
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if n := l.Attrs().Name; n != "lo" {
			t.Errorf("link %s (%s) left in the host namespace", n, l.Type())
		}
	}
	// The pool is free: requesting it again works.
	if p, err := a.RequestPool(ipamapi.PoolRequest{AddressSpace: local, Pool: "10.77.0.0/24"}); err != nil {
		t.Errorf("pool not released: %v", err)
	} else if err := a.ReleasePool(p.PoolID); err != nil {
		t.Error(err)
	}
}
