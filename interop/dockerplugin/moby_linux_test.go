package dockerplugin

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

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
// into ns, renames it to prefix+"0", gives it addr and sets it up, with a default route via gw
// (none when gw is nil).
func moveIn(host, ns *netns.NS, src, prefix string, addr *net.IPNet, gw net.IP) error {
	hh, err := netlink.NewHandleAt(host.Handle())
	if err != nil {
		return err
	}
	defer hh.Close()
	link, err := hh.LinkByName(src)
	if err != nil {
		return fmt.Errorf("find %s in the host: %w", src, err)
	}
	if err := hh.LinkSetNsFd(link, ns.FD()); err != nil {
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
	if gw == nil {
		return nil
	}
	return h.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Gw: gw})
}

func id(c byte) string { return strings.Repeat(string(c), 64) }

// TestPrivilegedMobyClientDrivesCNMServer runs moby's libnetwork remote driver and remote
// IPAM, over moby's pkg/plugins client, against cnm's server (in this process) serving the
// bridge driver and the default IPAM; see driveWithMoby.
func TestPrivilegedMobyClientDrivesCNMServer(t *testing.T) {
	nstest.Privileged(t)
	ctx := t.Context()
	host := nstest.NewNS(t)
	drv, err := bridge.New(bridge.Config{HostNetns: host.Path(), DisableIPTables: true})
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
	driveWithMoby(t, host, filepath.Join(dir, "cnm.sock"))
}

// TestPrivilegedMobyClientDrivesCNMPlugin does the same against the cnm-plugin command, built
// and started in a "host" namespace as an operator would, then stopped with SIGTERM: it must
// exit 0 and remove its socket.
func TestPrivilegedMobyClientDrivesCNMPlugin(t *testing.T) {
	nstest.Privileged(t)
	host := nstest.NewNS(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "cnm-plugin")
	// Built in cnm's own module (the repository's root), whose go.sum has cobra.
	if out, err := exec.Command("go", "build", "-C", "../..", "-o", bin, "./cmd/cnm-plugin").CombinedOutput(); err != nil {
		t.Fatalf("go build cnm-plugin: %v\n%s", err, out)
	}
	var logs syncBuffer
	cmd := exec.Command("nsenter", "--net="+host.Path(), "--", bin, "--name", "cnm", "--dir", dir, "--no-iptables")
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	sock := filepath.Join(dir, "cnm.sock")
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("cnm-plugin exited with %v:\n%s", err, logs.String())
			}
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
			t.Errorf("cnm-plugin did not stop within 10s of SIGTERM:\n%s", logs.String())
		}
	}
	defer stop()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if fi, err := os.Stat(sock); err == nil && fi.Mode()&os.ModeSocket != 0 {
			break
		}
		select {
		case err := <-exited:
			stopped = true
			t.Fatalf("cnm-plugin exited before serving: %v\n%s", err, logs.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no socket %s after 20s:\n%s", sock, logs.String())
		}
	}
	driveWithMoby(t, host, sock)
	stop()
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("socket still there after cnm-plugin stopped: %v", err)
	}
}

// syncBuffer is the command's output, read while it may still write.
type syncBuffer struct {
	mu sync.Mutex // guards b
	b  strings.Builder
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// driveWithMoby runs moby's libnetwork remote driver and remote IPAM, over moby's pkg/plugins
// client, against the plugin at sock, which serves cnm's bridge driver and default IPAM in the
// namespace host: pool, gateway and addresses from IPAM, network, two endpoints joined into
// two namespaces the way Docker does (move, rename, address), a real ping across, then leave,
// delete and release, and nothing left in the kernel.
func driveWithMoby(t *testing.T, host *netns.NS, sock string) {
	t.Helper()
	ctx := t.Context()
	hh, err := netlink.NewHandleAt(host.Handle())
	if err != nil {
		t.Fatal(err)
	}
	defer hh.Close()
	// pkg/plugins: the client Docker uses, and the activation handshake.
	client, err := plugins.NewClient("unix://"+sock, nil)
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
	if _, err := hh.LinkByName("br-moby"); err != nil {
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
		if err := moveIn(host, e.ns, j.src, j.prefix, addr, j.gw); err != nil {
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
	links, err := hh.LinkList()
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
