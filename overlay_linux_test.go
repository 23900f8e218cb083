package cnm_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cnmkit/cnm"
	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/drivers/overlay"
	"github.com/cnmkit/cnm/endpoint"
	"github.com/cnmkit/cnm/gossip"
	"github.com/cnmkit/cnm/internal/epobj"
	"github.com/cnmkit/cnm/internal/netns"
	"github.com/cnmkit/cnm/internal/nstest"
	"github.com/cnmkit/cnm/internal/storetest"
	"github.com/cnmkit/cnm/ipam"
	"github.com/cnmkit/cnm/ipam/ipamkv"
	"github.com/cnmkit/cnm/kvstore"
	"github.com/cnmkit/cnm/kvstore/consul"
	vnetns "github.com/cnmkit/cnm/netns"
	"github.com/cnmkit/cnm/network"
	"github.com/miekg/dns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ovLab is an underlay for overlay tests: a bridge in a lab namespace, and host namespaces
// each with an eth0 on it holding an address of 192.0.2.0/24 (a documentation range, used
// only inside these namespaces).
type ovLab struct {
	lab *netns.NS
	br  int
}

func newOvLab(t testing.TB) *ovLab {
	t.Helper()
	l := &ovLab{lab: nstest.NewNS(t)}
	h := nlHandle(t, l.lab)
	if err := h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "underlay"}}); err != nil {
		t.Fatal(err)
	}
	br, err := h.LinkByName("underlay")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(br); err != nil {
		t.Fatal(err)
	}
	l.br = br.Attrs().Index
	return l
}

func nlHandle(t testing.TB, ns *netns.NS) *netlink.Handle {
	t.Helper()
	h, err := netlink.NewHandleAt(ns.Handle())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

// host makes a host namespace with eth0 at addr (IPv4 or IPv6, without duplicate address
// detection) on the underlay.
func (l *ovLab) host(t testing.TB, name string, addr netip.Prefix) *netns.NS {
	t.Helper()
	ns := nstest.NewNS(t)
	h := nlHandle(t, ns)
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0", MTU: 1500}, PeerName: "ul-" + name, PeerNamespace: netlink.NsFd(l.lab.FD())}
	if err := h.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.AddrAdd(eth0, &netlink.Addr{IPNet: &net.IPNet{IP: addr.Addr().AsSlice(), Mask: net.CIDRMask(addr.Bits(), addr.Addr().BitLen())}, Flags: unix.IFA_F_NODAD}); err != nil {
		t.Fatal(err)
	}
	for _, l := range []netlink.Link{eth0, &netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: "lo"}}} {
		if err := h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	lh := nlHandle(t, l.lab)
	peer, err := lh.LinkByName("ul-" + name)
	if err != nil {
		t.Fatal(err)
	}
	if err := lh.LinkSetMasterByIndex(peer, l.br); err != nil {
		t.Fatal(err)
	}
	if err := lh.LinkSetUp(peer); err != nil {
		t.Fatal(err)
	}
	return ns
}

// ovHosts makes the hosts of an overlay test: Controllers on one lab, sharing a global store and
// a gossip key, with fast failure detection (200 ms probes).
type ovHosts struct {
	lab *ovLab
	gs  kvstore.Store
	key []byte
	ttl time.Duration // the registry's HostTTL; 0: the default
}

// ovHost is one host of an overlay test: its namespace on the lab and its Controller of the
// moment (restarted on the same directories).
type ovHost struct {
	hosts           *ovHosts
	name            string
	vtep            netip.Prefix
	ns              *netns.NS
	c               *cnm.Controller
	runDir, dataDir string
}

func (hs *ovHosts) newHost(t *testing.T, name, vtep string) *ovHost {
	t.Helper()
	h := &ovHost{hosts: hs, name: name, vtep: netip.MustParsePrefix(vtep), runDir: t.TempDir(), dataDir: t.TempDir()}
	h.ns = hs.lab.host(t, name, h.vtep)
	t.Cleanup(func() { // the host's Controller of the moment
		if h.c == nil {
			return
		}
		for _, sb := range h.c.Sandboxes() {
			h.c.DeleteSandbox(context.Background(), sb.ID())
		}
		h.c.Close()
	})
	return h
}

// start starts (or restarts) the host's Controller, joining the gossip cluster through peers.
func (h *ovHost) start(t *testing.T, peers ...string) {
	t.Helper()
	c, err := cnm.New(t.Context(), cnm.Config{DataDir: h.dataDir, RunDir: h.runDir, HostNetns: h.ns.Path(),
		GlobalStore: h.hosts.gs, Hostname: h.name, StoreTimeout: 2 * time.Second, HostTTL: h.hosts.ttl,
		Gossip:      &gossip.Config{BindAddr: netip.MustParseAddr("127.0.0.1"), Keys: [][]byte{h.hosts.key}, ProbeInterval: 200 * time.Millisecond, ProbeTimeout: 100 * time.Millisecond, GossipInterval: 50 * time.Millisecond},
		GossipPeers: peers,
		Overlay:     overlay.Config{VTEP: h.vtep.Addr()},
	})
	if err != nil {
		t.Fatalf("cnm.New %s: %v", h.name, err)
	}
	h.c = c
}

// TestPrivilegedOverlay: two hosts on one underlay, each a Controller with its own namespace,
// sharing etcd and an encrypted gossip cluster: an overlay network created on one is usable on
// both, containers on the two hosts reach each other through VXLAN (the VNI from the cluster),
// the remote endpoint is one static FDB and one neighbour entry, and everything goes with the
// last endpoint.
func TestPrivilegedOverlay(t *testing.T) {
	nstest.Privileged(t)
	t.Parallel()
	ctx := t.Context()
	ec := storetest.StartEtcd(t)
	gs := openEtcd(t, ec.Endpoints(), "overlay")
	key, err := gossip.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	lab := newOvLab(t)
	hosts := &ovHosts{lab: lab, gs: gs, key: key}
	newHost := func(name, vtep string) *ovHost { return hosts.newHost(t, name, vtep) }
	start := func(h *ovHost, peers ...string) { h.start(t, peers...) }
	a, b := newHost("host-a", "192.0.2.11/24"), newHost("host-b", "192.0.2.12/24")
	start(a)
	start(b, a.c.GossipNode().LocalAddr().String())

	nw, err := a.c.NewNetwork(ctx, "ov", "overlay", network.WithSubnet(netip.MustParsePrefix("10.80.0.0/16")))
	if err != nil {
		t.Fatal(err)
	}
	vni := nw.Inspect().Options[overlay.LabelVNI]
	if vni != "4096" {
		t.Fatalf("VNI = %q, want the range's first, 4096", vni)
	}
	waitFor(t, 10*time.Second, "host-b adopts ov", func() bool { return hasNetwork(b.c, "ov") })

	c1 := mustSandbox(t, a.c, "c1")
	c2 := mustSandbox(t, b.c, "c2")
	e1 := mustConnect(t, a.c, "ov", "c1")
	e2 := mustConnect(t, b.c, "ov", "c2")
	if e1.Info().IfName != "eth0" || !strings.HasPrefix(e1.Info().MAC.String(), "02:42:") {
		t.Fatalf("endpoint on host-a: %+v", e1.Info())
	}
	// Each container also has its way out, through its host's gateway network.
	if got := links(t, c1.Key()); len(got) != 3 {
		t.Fatalf("c1 links = %v, want eth0 (overlay), eth1 (gateway network) and lo", got)
	}
	waitFor(t, 10*time.Second, "c1 reaches c2 over the overlay", func() bool {
		_, ok := nstest.Ping(c1.Key(), e2.Info().IPv4.Addr().String(), 1)
		return ok
	})
	if _, ok := nstest.Ping(c2.Key(), e1.Info().IPv4.Addr().String(), 3); !ok {
		t.Fatal("c2 does not reach c1")
	}
	// A port published on an overlay endpoint goes through the host's gateway network, as
	// Docker's do through docker_gwbridge: host-b reaches it at host-a's underlay address.
	web := mustSandbox(t, a.c, "web")
	pub, err := endpoint.ParsePortSpec("8080:80")
	if err != nil {
		t.Fatal(err)
	}
	ew := mustConnect(t, a.c, "ov", "web", endpoint.WithPorts(pub...))
	if got := ew.Info().Ports; len(got) != 1 || got[0].HostPort != 8080 {
		t.Fatalf("overlay endpoint ports = %v, want 8080", got)
	}
	ln := listenIn(t, web.Key(), "0.0.0.0:80")
	if err := talk(b.ns.Path(), netip.MustParseAddrPort("192.0.2.11:8080"), ln); err != nil {
		t.Fatalf("host-b to host-a:8080, published by an overlay endpoint: %v", err)
	}
	ln.Close() // a socket would keep web's namespace, and its gateway veth, alive
	if err := a.c.DeleteSandbox(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	if err := dialFrom(b.ns.Path(), netip.MustParseAddrPort("192.0.2.11:8080")); err == nil {
		t.Fatal("host-a:8080 still accepts connections after its sandbox was deleted")
	}
	// Each resolves the other by name: the names cross in the network's gossip table "dns".
	ip1, ip2 := e1.Info().IPv4.Addr().String(), e2.Info().IPv4.Addr().String()
	wantDNS(t, c1, "c2", dns.TypeA, "NOERROR "+ip2)
	wantDNS(t, c2, "c1.ov", dns.TypeA, "NOERROR "+ip1)
	// What crosses the underlay is VXLAN with the network's VNI.
	if !lab.vxlanSeen(t, "host-a", 3*time.Second, 4096, func() { nstest.Ping(c1.Key(), e2.Info().IPv4.Addr().String(), 3) }, false) {
		t.Fatal("no VXLAN packet with VNI 4096 seen on the underlay while c1 pinged c2")
	}
	// On host-b, c1 is one FDB entry (its MAC behind host-a's VTEP) and one neighbour entry.
	ovPath := func(h *ovHost) string { return filepath.Join(h.runDir, "overlay", "ov-"+vni) }
	show := func(h *ovHost, cmd ...string) string {
		t.Helper()
		out, err := nstest.ExecContext(ctx, ovPath(h), cmd[0], cmd[1:]...)
		if err != nil {
			t.Fatalf("%v in %s: %v: %s", cmd, ovPath(h), err, out)
		}
		return out
	}
	mac1 := e1.Info().MAC.String()
	fdb := show(b, "bridge", "fdb", "show", "dev", "vx-"+vni)
	if strings.Count(fdb, mac1) != 1 || !strings.Contains(fdb, mac1+" dst 192.0.2.11") {
		t.Fatalf("host-b fdb = %q, want exactly one entry of %s to 192.0.2.11", fdb, mac1)
	}
	neigh := show(b, "ip", "neigh", "show", "dev", "vx-"+vni)
	if strings.Count(neigh, e1.Info().IPv4.Addr().String()+" ") != 1 || !strings.Contains(neigh, mac1) {
		t.Fatalf("host-b neighbours = %q, want %s at %s", neigh, e1.Info().IPv4.Addr(), mac1)
	}
	// The VXLAN device carries the cluster's VNI, learning off, on the VTEP.
	if d := show(b, "ip", "-d", "link", "show", "vx-"+vni); !strings.Contains(d, "vxlan id "+vni) || !strings.Contains(d, "local 192.0.2.12") || !strings.Contains(d, "nolearning") {
		t.Fatalf("host-b vxlan = %q", d)
	}

	// exactly reports whether host h's VXLAN device has exactly one FDB entry for mac, to vtep,
	// and one neighbour entry for ip.
	exactly := func(h *ovHost, mac, vtep string, ip netip.Addr) bool {
		fdb := show(h, "bridge", "fdb", "show", "dev", "vx-"+vni)
		neigh := show(h, "ip", "neigh", "show", "dev", "vx-"+vni)
		return strings.Count(fdb, mac) == 1 && strings.Contains(fdb, mac+" dst "+vtep) && strings.Count(neigh, ip.String()+" ") == 1
	}
	mac2 := e2.Info().MAC.String()

	// host-a restarts: c1 keeps its interface, is published again, and each side holds one
	// entry for the other.
	a.c.Close()
	start(a, b.c.GossipNode().LocalAddr().String())
	waitFor(t, 15*time.Second, "c1 reaches c2 after host-a restarted", func() bool {
		_, ok := nstest.Ping(c1.Key(), e2.Info().IPv4.Addr().String(), 1)
		return ok
	})
	waitFor(t, 10*time.Second, "one entry each way after the restart", func() bool {
		return exactly(a, mac2, "192.0.2.12", e2.Info().IPv4.Addr()) && exactly(b, mac1, "192.0.2.11", e1.Info().IPv4.Addr())
	})
	if reps := a.c.Repairs(); len(reps) != 0 {
		t.Fatalf("host-a's restart repaired %v, want nothing", reps)
	}
	wantDNS(t, c2, "c1", dns.TypeA, "NOERROR "+ip1) // published again by the restarted host
	wantDNS(t, c1, "c2", dns.TypeA, "NOERROR "+ip2)

	// host-b dies (its Controller closes without leaving): host-a drops c2 once gossip has
	// declared host-b failed; host-b comes back: c2 is back.
	b.c.Close()
	waitFor(t, 20*time.Second, "host-a drops c2's entries after host-b failed", func() bool {
		time.Sleep(100 * time.Millisecond)
		return !strings.Contains(show(a, "bridge", "fdb", "show", "dev", "vx-"+vni), mac2)
	}, func() string {
		return fmt.Sprintf("members %+v, fdb %q", a.c.GossipNode().Members(), show(a, "bridge", "fdb", "show", "dev", "vx-"+vni))
	})
	start(b, a.c.GossipNode().LocalAddr().String())
	waitFor(t, 15*time.Second, "c1 reaches c2 after host-b came back", func() bool {
		_, ok := nstest.Ping(c1.Key(), e2.Info().IPv4.Addr().String(), 1)
		return ok
	})
	if !exactly(a, mac2, "192.0.2.12", e2.Info().IPv4.Addr()) {
		t.Fatalf("host-a fdb after host-b's return: %q", show(a, "bridge", "fdb", "show", "dev", "vx-"+vni))
	}

	// The global store goes away: traffic between existing endpoints does not care, and a new
	// container joins on host-a, which has c1 on the network: its record's global copy
	// follows once the store is back. (A container joins and leaves first, with the store
	// up, so that host-a holds a confirmed address block with room: claiming or confirming
	// one needs the store.)
	mustSandbox(t, a.c, "c4")
	mustConnect(t, a.c, "ov", "c4")
	if err := a.c.DeleteSandbox(ctx, "c4"); err != nil {
		t.Fatal(err)
	}
	ec.Stop(0)
	if _, ok := nstest.Ping(c1.Key(), e2.Info().IPv4.Addr().String(), 3); !ok {
		t.Fatal("c1 does not reach c2 with etcd down")
	}
	c3 := mustSandbox(t, a.c, "c3")
	e3 := mustConnect(t, a.c, "ov", "c3")
	waitFor(t, 10*time.Second, "c3, joined with etcd down, reaches c2 on host-b", func() bool {
		_, ok := nstest.Ping(c3.Key(), e2.Info().IPv4.Addr().String(), 1)
		return ok
	})
	ec.Start(0)
	waitFor(t, 20*time.Second, "c3's record in the global store once etcd is back", func() bool {
		_, err := gs.Get(ctx, epobj.Key(nw.ID(), e3.ID()))
		return err == nil
	})
	if err := a.c.DeleteSandbox(ctx, "c3"); err != nil {
		t.Fatal(err)
	}
	if _, err := gs.Get(ctx, epobj.Key(nw.ID(), e3.ID())); !errors.Is(err, kvstore.ErrKeyNotFound) {
		t.Fatalf("c3's record after DeleteSandbox: %v, want it gone", err)
	}

	// c1 leaves: host-a's namespace for the network goes, host-b forgets c1.
	if err := a.c.Disconnect(ctx, "ov", "c1"); err != nil {
		t.Fatal(err)
	}
	if got := links(t, c1.Key()); len(got) != 1 {
		t.Fatalf("c1 links after disconnect = %v, want lo only (the gateway attachment goes too)", got)
	}
	waitFor(t, 10*time.Second, "host-b drops c1's FDB entry", func() bool {
		return !strings.Contains(show(b, "bridge", "fdb", "show", "dev", "vx-"+vni), mac1)
	})
	wantDNS(t, c2, "c1", dns.TypeA, "NXDOMAIN")
	if vnetns.IsMounted(ovPath(a)) {
		t.Fatalf("host-a's overlay namespace %s is left without endpoints", ovPath(a))
	}
	if err := b.c.Disconnect(ctx, "ov", "c2"); err != nil {
		t.Fatal(err)
	}
	if vnetns.IsMounted(ovPath(b)) {
		t.Fatalf("host-b's overlay namespace %s is left without endpoints", ovPath(b))
	}
	if err := b.c.DeleteNetwork(ctx, "ov"); err != nil {
		t.Fatal(err)
	}
	if kvs, err := gs.List(ctx, overlay.VNIKeyPrefix); err != nil || len(kvs) != 0 {
		t.Fatalf("VNI keys after the delete: %v (%v)", kvs, err)
	}
	_ = c2
}

// vxlanSeen captures the frames on the underlay port of host for d, while during runs, and
// reports whether one was a VXLAN packet (UDP to port 4789) carrying vni.
func (l *ovLab) vxlanSeen(t *testing.T, host string, d time.Duration, vni uint32, during func(), v6 bool) bool {
	t.Helper()
	port, err := nlHandle(t, l.lab).LinkByName("ul-" + host)
	if err != nil {
		t.Fatal(err)
	}
	var fd int
	err = l.lab.Do(func() error {
		var err error
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: port.Attrs().Index})
	})
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	tv := unix.NsecToTimeval(int64(100 * time.Millisecond))
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		during()
	}()
	defer func() { <-done }()
	buf := make([]byte, 2048)
	for deadline := time.Now().Add(d); time.Now().Before(deadline); {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil || n < 14+20+8+8 {
			continue
		}
		f := buf[:n]
		var udp []byte
		switch ip := f[14:]; {
		case f[12] == 0x08 && f[13] == 0x00 && !v6: // IPv4
			ihl := int(ip[0]&0x0f) * 4
			if ip[9] != 17 || len(ip) < ihl+16 { // UDP
				continue
			}
			udp = ip[ihl:]
		case f[12] == 0x86 && f[13] == 0xdd && v6: // IPv6, UDP right after the fixed header
			if len(ip) < 40+16 || ip[6] != 17 {
				continue
			}
			udp = ip[40:]
		default:
			continue
		}
		if uint16(udp[2])<<8|uint16(udp[3]) != 4789 {
			continue
		}
		vx := udp[8:]
		if vx[0]&0x08 != 0 && uint32(vx[4])<<16|uint32(vx[5])<<8|uint32(vx[6]) == vni {
			return true
		}
	}
	return false
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// TestPrivilegedOverlayReclaimedWhileAway: a host away for longer than the registry's TTL has
// its endpoints reclaimed by the others. When it comes back, what it left of them (the
// container's interface, its port on the network's bridge, the network's namespace) goes, and
// each removal is reported; the container can join again and reach the others.
func TestPrivilegedOverlayReclaimedWhileAway(t *testing.T) {
	nstest.Privileged(t)
	t.Parallel()
	ctx := t.Context()
	ec := storetest.StartEtcd(t)
	key, err := gossip.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	hosts := &ovHosts{lab: newOvLab(t), gs: openEtcd(t, ec.Endpoints(), "reclaimed"), key: key, ttl: time.Second}
	a, b := hosts.newHost(t, "host-a", "192.0.2.21/24"), hosts.newHost(t, "host-b", "192.0.2.22/24")
	a.start(t)
	b.start(t, a.c.GossipNode().LocalAddr().String())
	if _, err := a.c.NewNetwork(ctx, "ov", "overlay", network.WithSubnet(netip.MustParsePrefix("10.82.0.0/24")), network.WithInternal()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "host-b adopts ov", func() bool { return hasNetwork(b.c, "ov") })
	c1 := mustSandbox(t, a.c, "c1")
	c2 := mustSandbox(t, b.c, "c2")
	mustConnect(t, a.c, "ov", "c1")
	e2 := mustConnect(t, b.c, "ov", "c2")
	waitFor(t, 10*time.Second, "c1 reaches c2", func() bool {
		_, ok := nstest.Ping(c1.Key(), e2.Info().IPv4.Addr().String(), 1)
		return ok
	})

	// host-b crashes, and stays away until host-a reclaimed its endpoint.
	b.c.Close()
	waitFor(t, 20*time.Second, "host-a reclaims c2's endpoint", func() bool {
		return slices.ContainsFunc(a.c.Reclaimed(), func(r drivers.Repair) bool { return strings.Contains(r.Object, "c2") })
	})
	b.start(t, a.c.GossipNode().LocalAddr().String())
	var reps []string
	for _, r := range b.c.Repairs() {
		reps = append(reps, r.String())
	}
	if !slices.ContainsFunc(reps, func(s string) bool { return strings.Contains(s, "overlay namespace ov-") }) {
		t.Errorf("host-b's restart repaired %q, want its overlay namespace removed", reps)
	}
	if hasMounted(t, filepath.Join(b.runDir, "overlay")) {
		t.Errorf("host-b keeps an overlay namespace with no endpoint in it")
	}
	waitFor(t, 5*time.Second, "c2 loses its reclaimed interface", func() bool {
		return slices.Equal(links(t, c2.Key()), []string{"lo"})
	})
	nw, err := b.c.Network("ov")
	if err != nil {
		t.Fatal(err)
	}
	if eps := nw.Endpoints(); len(eps) != 0 {
		t.Fatalf("host-b's endpoints on ov after the reclaim = %v, want none", eps)
	}
	// c2 joins again, with a new endpoint, and reaches c1.
	e2 = mustConnect(t, b.c, "ov", "c2")
	waitFor(t, 10*time.Second, "c1 reaches c2's new endpoint", func() bool {
		_, ok := nstest.Ping(c1.Key(), e2.Info().IPv4.Addr().String(), 1)
		return ok
	})
}

// hasMounted reports whether a directory entry under dir is a network-namespace mount.
func hasMounted(t *testing.T, dir string) bool {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	return slices.ContainsFunc(ents, func(e os.DirEntry) bool { return vnetns.IsMounted(filepath.Join(dir, e.Name())) })
}

// TestPrivilegedOverlayIPv6Underlay: hosts whose VTEPs are IPv6 addresses carry the overlay in
// VXLAN over IPv6, with the MTU less the 70 bytes of that encapsulation.
func TestPrivilegedOverlayIPv6Underlay(t *testing.T) {
	nstest.Privileged(t)
	t.Parallel()
	ctx := t.Context()
	ec := storetest.StartEtcd(t)
	key, err := gossip.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	lab := newOvLab(t)
	hosts := &ovHosts{lab: lab, gs: openEtcd(t, ec.Endpoints(), "ipv6"), key: key}
	a, b := hosts.newHost(t, "host-a", "fd00:192::11/64"), hosts.newHost(t, "host-b", "fd00:192::12/64")
	a.start(t)
	b.start(t, a.c.GossipNode().LocalAddr().String())
	if _, err := a.c.NewNetwork(ctx, "ov6", "overlay", network.WithSubnet(netip.MustParsePrefix("10.83.0.0/24")), network.WithInternal()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "host-b adopts ov6", func() bool { return hasNetwork(b.c, "ov6") })
	c1 := mustSandbox(t, a.c, "c1")
	mustSandbox(t, b.c, "c2")
	mustConnect(t, a.c, "ov6", "c1")
	e2 := mustConnect(t, b.c, "ov6", "c2")
	waitFor(t, 10*time.Second, "c1 reaches c2 over VXLAN on IPv6", func() bool {
		_, ok := nstest.Ping(c1.Key(), e2.Info().IPv4.Addr().String(), 1)
		return ok
	})
	h := nlHandle(t, mustOpenNS(t, c1.Key()))
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if eth0.Attrs().MTU != 1500-70 {
		t.Errorf("c1's eth0 MTU = %d, want %d (the underlay's 1500 less VXLAN over IPv6)", eth0.Attrs().MTU, 1500-70)
	}
	// A full-size packet crosses unfragmented (DF set).
	if out, err := nstest.ExecContext(ctx, c1.Key(), "ping", "-c", "1", "-W", "2", "-M", "do", "-s", strconv.Itoa(1500-70-28), e2.Info().IPv4.Addr().String()); err != nil {
		t.Errorf("a %d-byte packet with DF from c1 to c2: %v: %s", 1500-70, err, out)
	}
	nw, err := a.c.Network("ov6")
	if err != nil {
		t.Fatal(err)
	}
	vni, err := strconv.ParseUint(nw.Inspect().Options[overlay.LabelVNI], 10, 32)
	if err != nil {
		t.Fatal(err)
	}
	if !lab.vxlanSeen(t, "host-a", 3*time.Second, uint32(vni), func() { nstest.Ping(c1.Key(), e2.Info().IPv4.Addr().String(), 3) }, true) {
		t.Error("no VXLAN over IPv6 (UDP 4789 in an IPv6 packet) with the network's VNI seen on the underlay")
	}
}

// mustOpenNS opens the namespace at path; cleanup closes it.
func mustOpenNS(t *testing.T, path string) *netns.NS {
	t.Helper()
	ns, err := netns.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	return ns
}

// TestPrivilegedOverlayConsul: the overlay on Consul as the global store, as on etcd: a network
// made on one host is adopted by the other, containers on the two reach each other across
// VXLAN with the cluster's VNI, and deleting the network frees the VNI in the store.
func TestPrivilegedOverlayConsul(t *testing.T) {
	nstest.Privileged(t)
	t.Parallel()
	ctx := t.Context()
	ca := storetest.StartConsul(t)
	gs, err := consul.Open(ctx, consul.Config{Address: ca.Addr(), Prefix: "overlay-consul", RequestTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { gs.Close() })
	key, err := gossip.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	lab := newOvLab(t)
	hosts := &ovHosts{lab: lab, gs: gs, key: key}
	a, b := hosts.newHost(t, "host-a", "192.0.2.31/24"), hosts.newHost(t, "host-b", "192.0.2.32/24")
	a.start(t)
	b.start(t, a.c.GossipNode().LocalAddr().String())
	nw, err := a.c.NewNetwork(ctx, "ovc", "overlay", network.WithSubnet(netip.MustParsePrefix("10.84.0.0/24")), network.WithInternal())
	if err != nil {
		t.Fatal(err)
	}
	vni, err := strconv.ParseUint(nw.Inspect().Options[overlay.LabelVNI], 10, 32)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := gs.Get(ctx, overlay.VNIKeyPrefix+strconv.FormatUint(vni, 10)); err != nil {
		t.Fatalf("VNI %d not claimed in Consul: %v", vni, err)
	}
	waitFor(t, 15*time.Second, "host-b adopts ovc", func() bool { return hasNetwork(b.c, "ovc") })
	c1 := mustSandbox(t, a.c, "c1")
	mustSandbox(t, b.c, "c2")
	mustConnect(t, a.c, "ovc", "c1")
	e2 := mustConnect(t, b.c, "ovc", "c2")
	waitFor(t, 10*time.Second, "c1 reaches c2 over the overlay on Consul", func() bool {
		_, ok := nstest.Ping(c1.Key(), e2.Info().IPv4.Addr().String(), 1)
		return ok
	})
	if !lab.vxlanSeen(t, "host-a", 3*time.Second, uint32(vni), func() { nstest.Ping(c1.Key(), e2.Info().IPv4.Addr().String(), 3) }, false) {
		t.Errorf("no VXLAN packet with VNI %d seen on the underlay", vni)
	}
	for _, h := range []*ovHost{a, b} {
		for _, sb := range h.c.Sandboxes() {
			if err := h.c.DeleteSandbox(ctx, sb.ID()); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := a.c.DeleteNetwork(ctx, "ovc"); err != nil {
		t.Fatal(err)
	}
	if _, err := gs.Get(ctx, overlay.VNIKeyPrefix+strconv.FormatUint(vni, 10)); !errors.Is(err, kvstore.ErrKeyNotFound) {
		t.Errorf("VNI %d after DeleteNetwork: %v, want it freed", vni, err)
	}
}

// TestPrivilegedOverlayAddressBlocks: the global IPAM's per-host address blocks (which take
// the store's compare-and-swap off an overlay attach) on real etcd, with two hosts: both
// create endpoints on one global network at once, and no address is given twice, each inside
// a block of its own host; a restarted host takes its addresses back and goes on in its
// blocks without a duplicate; a host that dies has its endpoints reclaimed and then its
// blocks given back by the sweep; the last release gives a host's blocks back, and deleting
// the network leaves nothing in the store.
func TestPrivilegedOverlayAddressBlocks(t *testing.T) {
	nstest.Privileged(t)
	t.Parallel()
	ctx := t.Context()
	ec := storetest.StartEtcd(t)
	gs := openEtcd(t, ec.Endpoints(), "blocks")
	a := newGhostWith(t, "host-a", gs, 3*time.Second, true)
	b := newGhostWith(t, "host-b", gs, 3*time.Second, true)
	subnet := netip.MustParsePrefix("10.90.0.0/16")
	if _, err := a.c.NewNetwork(ctx, "blk", globalDriver, network.WithSubnet(subnet)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "host-b adopts blk", func() bool { return hasNetwork(b.c, "blk") })
	pool := ipam.MakePoolID(ipam.GlobalSpace, subnet)
	reader, err := ipamkv.NewGlobal(gs, ipam.GlobalConfig{})
	if err != nil {
		t.Fatal(err)
	}
	blocksOf := func() map[string][]netip.Prefix {
		t.Helper()
		bs, err := reader.Blocks(ctx, pool)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string][]netip.Prefix{}
		for _, b := range bs {
			out[b.Host] = append(out[b.Host], b.Prefix)
		}
		return out
	}
	inBlockOf := func(blocks map[string][]netip.Prefix, x netip.Addr) string {
		for h, ps := range blocks {
			if slices.ContainsFunc(ps, func(p netip.Prefix) bool { return p.Contains(x) }) {
				return h
			}
		}
		return ""
	}

	// Two hosts at once, four workers each.
	const workers, each = 4, 40
	var (
		mu    sync.Mutex
		owner = map[netip.Addr]string{}
		errs  []error
		wg    sync.WaitGroup
	)
	for _, h := range []*ghost{a, b} {
		n, err := h.c.Network("blk")
		if err != nil {
			t.Fatal(err)
		}
		for w := range workers {
			wg.Go(func() {
				for i := range each {
					ep, err := n.CreateEndpoint(ctx, fmt.Sprintf("%s-%d-%d", h.name, w, i))
					mu.Lock()
					if err != nil {
						errs = append(errs, err)
					} else if x := ep.Info().IPv4.Addr(); owner[x] != "" {
						errs = append(errs, fmt.Errorf("%s given to %s and %s", x, owner[x], h.name))
					} else {
						owner[x] = h.name
					}
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	blocks := blocksOf()
	for x, h := range owner {
		if got := inBlockOf(blocks, x); got != h {
			t.Fatalf("%s of %s is in a block of %q (blocks %v)", x, h, got, blocks)
		}
	}
	if len(blocks["host-a"]) == 0 || len(blocks["host-b"]) == 0 || len(blocks["host-a"])+len(blocks["host-b"]) > 2*workers*each/64+4 {
		t.Fatalf("blocks %v for %d addresses of each host, want a few of 64 each", blocks, workers*each)
	}

	// host-a restarts: its endpoints come back with their addresses, and the next one is
	// new, in its blocks.
	a.c.Close()
	if a.c, err = a.start(t); err != nil {
		t.Fatal(err)
	}
	na, err := a.c.Network("blk")
	if err != nil {
		t.Fatal(err)
	}
	if got := len(na.Endpoints()); got != workers*each {
		t.Fatalf("host-a has %d endpoints after its restart, want %d", got, workers*each)
	}
	ep, err := na.CreateEndpoint(ctx, "after-restart")
	if err != nil {
		t.Fatal(err)
	}
	x := ep.Info().IPv4.Addr()
	if owner[x] != "" || inBlockOf(blocksOf(), x) != "host-a" {
		t.Fatalf("host-a's address after its restart %s: held by %q before, in a block of %q", x, owner[x], inBlockOf(blocksOf(), x))
	}
	owner[x] = "host-a"

	// host-b dies (no Leave): host-a reclaims its endpoints, then gives its blocks back.
	b.c.Close()
	waitFor(t, 60*time.Second, "host-b's blocks given back", func() bool { return len(blocksOf()["host-b"]) == 0 }, func() string {
		return fmt.Sprintf("blocks %v, host-a's repairs %v", blocksOf(), a.c.Reclaimed())
	})
	released := 0
	for _, r := range a.c.Reclaimed() {
		if strings.HasPrefix(r.Object, "address block ") && strings.HasSuffix(r.Object, " of host host-b") {
			released++
		}
	}
	if released == 0 {
		t.Fatalf("host-a's repairs %v, want host-b's blocks released", a.c.Reclaimed())
	}
	if got := len(na.Endpoints()); got != workers*each+1 {
		t.Fatalf("%d endpoints after host-b's were reclaimed, want host-a's %d", got, workers*each+1)
	}

	// The last release gives host-a's blocks back, but for the one of the network's gateway
	// (picked by host-a's IPAM when it created the network), which goes with the network;
	// then nothing is left.
	for _, ep := range na.Endpoints() {
		if err := ep.Delete(ctx); err != nil {
			t.Fatal(err)
		}
	}
	gw := netip.MustParseAddr(na.Inspect().IPAM.Config[0].Gateway)
	if left := blocksOf(); len(left) != 1 || len(left["host-a"]) != 1 || !left["host-a"][0].Contains(gw) {
		t.Fatalf("blocks left after every endpoint went: %v, want host-a's with the gateway %s", left, gw)
	}
	if err := a.c.DeleteNetwork(ctx, "blk"); err != nil {
		t.Fatal(err)
	}
	assertGlobalClean(t, gs)
}
