package dockerplugin

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/cnmkit/cnm"
	"github.com/cnmkit/cnm/drivers/remote"
	"github.com/cnmkit/cnm/internal/netns"
	"github.com/cnmkit/cnm/internal/nstest"
	"github.com/cnmkit/cnm/network"
	"github.com/cnmkit/cnm/sandbox"
	"github.com/docker/docker/libnetwork/drivers/remote/api"
	ipamapi "github.com/docker/docker/libnetwork/ipams/remote/api"
	"github.com/docker/docker/pkg/plugins"
	"github.com/vishvananda/netlink"
)

// vethPlugin is a Docker network and IPAM plugin written the way third parties write them,
// on moby's published JSON types: a bridge per network, a veth pair per joined endpoint whose
// container end it leaves in the host namespace for the caller to move in, and a pool of its
// own (10.88.0.0/24, addresses handed out in order).
type vethPlugin struct {
	t    *testing.T
	host *netns.NS

	mu    sync.Mutex // guards following
	calls []string
	next  int                   // last address handed out in the pool
	used  map[string]bool       // addresses in use
	nets  map[string]*net.IPNet // network ID to its gateway
}

func (p *vethPlugin) handle() *netlink.Handle {
	h, err := netlink.NewHandleAt(p.host.Handle())
	if err != nil {
		p.t.Errorf("plugin: netlink handle: %v", err)
	}
	return h
}

func (p *vethPlugin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	method := strings.TrimPrefix(r.URL.Path, "/")
	p.mu.Lock()
	p.calls = append(p.calls, method)
	p.mu.Unlock()
	decode := func(v any) bool {
		if err := json.NewDecoder(r.Body).Decode(v); err != nil {
			w.WriteHeader(http.StatusBadRequest)
			json.NewEncoder(w).Encode(api.Response{Err: err.Error()})
			return false
		}
		return true
	}
	reply := func(v any) { json.NewEncoder(w).Encode(v) }
	fail := func(err error) {
		w.WriteHeader(http.StatusInternalServerError)
		reply(api.Response{Err: err.Error()})
	}
	switch method {
	case "Plugin.Activate":
		reply(plugins.Manifest{Implements: []string{"NetworkDriver", "IpamDriver"}})
	case "NetworkDriver.GetCapabilities":
		reply(api.GetCapabilityResponse{Scope: "local"})
	case "NetworkDriver.CreateNetwork":
		var req api.CreateNetworkRequest
		if !decode(&req) {
			return
		}
		if len(req.IPv4Data) != 1 || req.IPv4Data[0].Gateway == nil {
			fail(fmt.Errorf("invalid IPv4 data %v: want one pool with a gateway", req.IPv4Data))
			return
		}
		generic, _ := req.Options["com.docker.network.generic"].(map[string]any)
		if generic["vp.mtu"] != "1400" {
			fail(fmt.Errorf("invalid options %v: want vp.mtu 1400", req.Options))
			return
		}
		h := p.handle()
		defer h.Close()
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "vp-" + req.NetworkID[:8], MTU: 1400}}
		err := h.LinkAdd(br)
		if err == nil {
			err = h.AddrAdd(br, &netlink.Addr{IPNet: req.IPv4Data[0].Gateway})
		}
		if err == nil {
			err = h.LinkSetUp(br)
		}
		if err != nil {
			h.LinkDel(br)
			fail(err)
			return
		}
		p.mu.Lock()
		p.nets[req.NetworkID] = req.IPv4Data[0].Gateway
		p.mu.Unlock()
		reply(api.CreateNetworkResponse{})
	case "NetworkDriver.DeleteNetwork":
		var req api.DeleteNetworkRequest
		if !decode(&req) {
			return
		}
		h := p.handle()
		defer h.Close()
		if l, err := h.LinkByName("vp-" + req.NetworkID[:8]); err == nil {
			h.LinkDel(l)
		}
		reply(api.DeleteNetworkResponse{})
	case "NetworkDriver.CreateEndpoint":
		var req api.CreateEndpointRequest
		if !decode(&req) {
			return
		}
		var resp api.CreateEndpointResponse
		if req.Interface == nil || req.Interface.Address == "" {
			fail(fmt.Errorf("invalid interface %+v: no address", req.Interface))
			return
		}
		if req.Interface.MacAddress == "" {
			ip, _, _ := net.ParseCIDR(req.Interface.Address)
			resp.Interface = &api.EndpointInterface{MacAddress: net.HardwareAddr{0x02, 0xaa, ip[12], ip[13], ip[14], ip[15]}.String()}
		}
		reply(resp)
	case "NetworkDriver.DeleteEndpoint":
		var req api.DeleteEndpointRequest
		if decode(&req) {
			reply(api.DeleteEndpointResponse{})
		}
	case "NetworkDriver.Join":
		var req api.JoinRequest
		if !decode(&req) {
			return
		}
		p.mu.Lock()
		gw := p.nets[req.NetworkID]
		p.mu.Unlock()
		if gw == nil {
			fail(fmt.Errorf("network %s not found", req.NetworkID))
			return
		}
		if _, err := os.Stat(req.SandboxKey); err != nil {
			fail(fmt.Errorf("invalid sandbox key: %w", err))
			return
		}
		h := p.handle()
		defer h.Close()
		br, err := h.LinkByName("vp-" + req.NetworkID[:8])
		if err != nil {
			fail(err)
			return
		}
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "vp" + req.EndpointID[:8], MasterIndex: br.Attrs().Index, MTU: 1400}, PeerName: "vq" + req.EndpointID[:8]}
		err = h.LinkAdd(veth)
		if err == nil {
			err = h.LinkSetUp(veth)
		}
		if err != nil {
			h.LinkDel(veth)
			fail(err)
			return
		}
		reply(api.JoinResponse{
			InterfaceName: &api.InterfaceName{SrcName: "vq" + req.EndpointID[:8], DstPrefix: "eth"},
			Gateway:       gw.IP.String(),
			StaticRoutes:  []api.StaticRoute{{Destination: "192.0.2.0/24", RouteType: 0, NextHop: gw.IP.String()}},
		})
	case "NetworkDriver.Leave":
		var req api.LeaveRequest
		if !decode(&req) {
			return
		}
		h := p.handle()
		defer h.Close()
		if l, err := h.LinkByName("vp" + req.EndpointID[:8]); err == nil {
			h.LinkDel(l)
		}
		reply(api.LeaveResponse{})
	case "IpamDriver.GetCapabilities":
		reply(ipamapi.GetCapabilityResponse{})
	case "IpamDriver.GetDefaultAddressSpaces":
		reply(ipamapi.GetAddressSpacesResponse{LocalDefaultAddressSpace: "vpLocal", GlobalDefaultAddressSpace: "vpGlobal"})
	case "IpamDriver.RequestPool":
		var req ipamapi.RequestPoolRequest
		if !decode(&req) {
			return
		}
		if req.AddressSpace != "vpLocal" || req.Pool != "" || req.V6 {
			reply(ipamapi.RequestPoolResponse{Response: ipamapi.Response{Error: fmt.Sprintf("not supported: pool request %+v", req)}})
			return
		}
		reply(ipamapi.RequestPoolResponse{PoolID: "vp-pool", Pool: "10.88.0.0/24"})
	case "IpamDriver.ReleasePool":
		var req ipamapi.ReleasePoolRequest
		if decode(&req) {
			reply(ipamapi.ReleasePoolResponse{})
		}
	case "IpamDriver.RequestAddress":
		var req ipamapi.RequestAddressRequest
		if !decode(&req) {
			return
		}
		p.mu.Lock()
		defer p.mu.Unlock()
		addr := req.Address
		if addr == "" {
			p.next++
			addr = fmt.Sprintf("10.88.0.%d", p.next)
		}
		if p.used[addr] {
			reply(ipamapi.RequestAddressResponse{Response: ipamapi.Response{Error: "address " + addr + " in use"}})
			return
		}
		p.used[addr] = true
		reply(ipamapi.RequestAddressResponse{Address: addr + "/24"})
	case "IpamDriver.ReleaseAddress":
		var req ipamapi.ReleaseAddressRequest
		if !decode(&req) {
			return
		}
		p.mu.Lock()
		delete(p.used, req.Address)
		p.mu.Unlock()
		reply(ipamapi.ReleaseAddressResponse{})
	default:
		w.WriteHeader(http.StatusNotFound)
		reply(api.Response{Err: "unknown method " + method})
	}
}

func linkNames(t *testing.T, ns *netns.NS) []string {
	t.Helper()
	h, err := netlink.NewHandleAt(ns.Handle())
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	ls, err := h.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range ls {
		names = append(names, l.Attrs().Name)
	}
	slices.Sort(names)
	return names
}

// TestPrivilegedCNMDrivesPlugin runs cnm's drivers/remote (network driver and IPAM) through a
// cnm Controller against a plugin built on moby's published types, found by discovery (the
// network driver by its socket, the IPAM by a .spec file): a network on the plugin's pool,
// two sandboxes joined (the plugin's interfaces moved in, renamed eth0, with the plugin's MAC
// and route), a real ping between them, then disconnect, delete, and nothing left in the host
// namespace or the plugin's pool.
func TestPrivilegedCNMDrivesPlugin(t *testing.T) {
	nstest.Privileged(t)
	ctx := t.Context()
	host := nstest.NewNS(t)
	p := &vethPlugin{t: t, host: host, used: map[string]bool{}, nets: map[string]*net.IPNet{}}

	socks, specs := t.TempDir(), t.TempDir()
	l, err := net.Listen("unix", filepath.Join(socks, "vethplug.sock"))
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: p}
	var wg sync.WaitGroup
	wg.Go(func() { _ = hs.Serve(l) })
	defer func() { hs.Close(); wg.Wait() }()
	if err := os.WriteFile(filepath.Join(specs, "vpipam.spec"), []byte("unix://"+filepath.Join(socks, "vethplug.sock")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	drv, err := remote.Open(ctx, remote.Config{Name: "vethplug", SocketDirs: []string{socks}, SpecDirs: []string{}})
	if err != nil {
		t.Fatal(err)
	}
	alloc, err := remote.OpenIPAM(ctx, remote.Config{Name: "vpipam", SocketDirs: []string{}, SpecDirs: []string{specs}})
	if err != nil {
		t.Fatal(err)
	}
	defer alloc.Close()
	// The plugin's bridge is its own business, as under Docker, where a plugin writes its own
	// firewall rules: cnm's built-in bridge driver would set the FORWARD policy to DROP (as
	// Docker does) and, with br_netfilter loaded, drop the plugin's bridged traffic.
	c, err := cnm.New(ctx, cnm.Config{DataDir: t.TempDir(), RunDir: t.TempDir(), HostNetns: host.Path(), DisableIPTables: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, sb := range c.Sandboxes() { // whatever a failure left: no namespace stays mounted
			c.DeleteSandbox(context.WithoutCancel(ctx), sb.ID())
		}
		c.Close()
	})
	if err := c.RegisterDriver(ctx, "vethplug", drv); err != nil {
		t.Fatal(err)
	}
	if err := c.RegisterIPAMDriver(ctx, "vpipam", alloc); err != nil {
		t.Fatal(err)
	}
	before := linkNames(t, host)

	nw, err := c.NewNetwork(ctx, "vp", "vethplug", network.WithIPAMDriver("vpipam"),
		network.WithDriverLabels(map[string]string{"vp.mtu": "1400"}))
	if err != nil {
		t.Fatal(err)
	}
	in := nw.Inspect()
	if in.IPAM.Driver != "vpipam" || len(in.IPAM.Config) != 1 || in.IPAM.Config[0].Subnet != "10.88.0.0/24" {
		t.Fatalf("inspect IPAM = %+v, want the plugin's pool 10.88.0.0/24", in.IPAM)
	}
	var sbs []sandbox.Sandbox
	var addrs []netip.Prefix
	for _, name := range []string{"a", "b"} {
		sb, err := c.NewSandbox(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		ep, err := c.Connect(ctx, "vp", name)
		if err != nil {
			t.Fatal(err)
		}
		info := ep.Info()
		if info.IfName != "eth0" || info.Gateway != netip.MustParseAddr("10.88.0.1") || info.MAC[1] != 0xaa {
			t.Errorf("endpoint %s: %+v, want eth0, gateway 10.88.0.1, the plugin's MAC 02:aa:...", name, info)
		}
		sbNS, err := netns.Open(sb.Key())
		if err != nil {
			t.Fatal(err)
		}
		h, err := netlink.NewHandleAt(sbNS.Handle())
		if err != nil {
			t.Fatal(err)
		}
		eth0, err := h.LinkByName("eth0")
		if err != nil {
			t.Fatalf("sandbox %s: %v (links %v)", name, err, linkNames(t, sbNS))
		}
		if eth0.Attrs().HardwareAddr.String() != info.MAC.String() || eth0.Attrs().MTU != 1400 {
			t.Errorf("sandbox %s eth0: MAC %v MTU %d, want %v and the plugin's 1400", name, eth0.Attrs().HardwareAddr, eth0.Attrs().MTU, info.MAC)
		}
		routes, err := h.RouteList(eth0, netlink.FAMILY_V4)
		if err != nil {
			t.Fatal(err)
		}
		var haveStatic bool
		for _, r := range routes {
			haveStatic = haveStatic || (r.Dst != nil && r.Dst.String() == "192.0.2.0/24" && r.Gw.String() == "10.88.0.1")
		}
		if !haveStatic {
			t.Errorf("sandbox %s: no route 192.0.2.0/24 via 10.88.0.1 (the plugin's static route): %v", name, routes)
		}
		h.Close()
		sbNS.Close()
		sbs = append(sbs, sb)
		addrs = append(addrs, info.IPv4)
	}
	if addrs[0].Addr() == addrs[1].Addr() || !netip.MustParsePrefix("10.88.0.0/24").Contains(addrs[1].Addr()) {
		t.Fatalf("addresses %v, want two of the plugin's pool", addrs)
	}
	if out, ok := nstest.Ping(sbs[0].Key(), addrs[1].Addr().String(), 2); !ok {
		t.Fatalf("ping %v from a: %s", addrs[1].Addr(), out)
	}
	if out, ok := nstest.Ping(sbs[1].Key(), "10.88.0.1", 1); !ok {
		t.Errorf("ping the plugin's gateway from b: %s", out)
	}

	for _, name := range []string{"a", "b"} {
		if err := c.Disconnect(ctx, "vp", name); err != nil {
			t.Fatal(err)
		}
		if err := c.DeleteSandbox(ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.DeleteNetwork(ctx, "vp"); err != nil {
		t.Fatal(err)
	}
	if got := linkNames(t, host); !slices.Equal(got, before) {
		t.Errorf("host links after delete = %v, want %v as before", got, before)
	}
	p.mu.Lock()
	used, calls := len(p.used), slices.Clone(p.calls)
	p.mu.Unlock()
	if used != 0 {
		t.Errorf("%d addresses still leased in the plugin", used)
	}
	for _, m := range []string{"Plugin.Activate", "NetworkDriver.GetCapabilities", "NetworkDriver.CreateNetwork", "NetworkDriver.CreateEndpoint",
		"NetworkDriver.Join", "NetworkDriver.ProgramExternalConnectivity", "NetworkDriver.RevokeExternalConnectivity", "NetworkDriver.Leave",
		"NetworkDriver.DeleteEndpoint", "NetworkDriver.DeleteNetwork", "IpamDriver.GetDefaultAddressSpaces", "IpamDriver.RequestPool",
		"IpamDriver.RequestAddress", "IpamDriver.ReleaseAddress", "IpamDriver.ReleasePool"} {
		if !slices.Contains(calls, m) {
			t.Errorf("the plugin never got %s (calls %v)", m, calls)
		}
	}
}
