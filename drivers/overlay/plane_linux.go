package overlay

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"syscall"
	"time"

	"github.com/cnmkit/cnm/drivers"
	cnl "github.com/cnmkit/cnm/internal/nl"
	"github.com/cnmkit/cnm/netns"
	"github.com/vishvananda/netlink"
)

// plane is a network's kernel state on this host: its namespace with the bridge and the VXLAN
// device. Its methods are called under the network's plane lock.
type plane struct {
	path string
	ns   *netns.NS
	h    *netlink.Handle // in the network's namespace
	sock cnl.Socket      // in the network's namespace, for the one-message joins
	br   int             // index of br0
	vx   int             // index of the VXLAN device
	mtu  int
	vtep netip.Addr
}

// underlay returns this host's VTEP address and the MTU of the interface that holds it.
func (d *Driver) underlay() (netip.Addr, int, error) {
	hns, err := d.hostNS()
	if err != nil {
		return netip.Addr{}, 0, err
	}
	defer hns.Close()
	h, err := netlink.NewHandleAt(hns.Handle())
	if err != nil {
		return netip.Addr{}, 0, err
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		return netip.Addr{}, 0, err
	}
	var ifindex int
	if d.cfg.Interface != "" {
		l, err := h.LinkByName(d.cfg.Interface)
		if err != nil {
			return netip.Addr{}, 0, &drivers.NotFoundError{Kind: "underlay interface", Name: d.cfg.Interface, Err: err}
		}
		ifindex = l.Attrs().Index
	} else if !d.cfg.VTEP.IsValid() {
		routes, err := h.RouteList(nil, netlink.FAMILY_V4)
		if err != nil {
			return netip.Addr{}, 0, err
		}
		for _, r := range routes {
			if r.Dst == nil || r.Dst.IP.IsUnspecified() {
				ifindex = r.LinkIndex
				break
			}
		}
		if ifindex == 0 {
			return netip.Addr{}, 0, &drivers.NotFoundError{Kind: "underlay", Name: "default route", Err: errors.New("no default route to take the VTEP address from: set the overlay's VTEP or Interface")}
		}
	}
	for _, l := range links {
		addrs, err := h.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			continue
		}
		for _, a := range addrs {
			ip, ok := netip.AddrFromSlice(a.IP)
			if !ok {
				continue
			}
			ip = ip.Unmap()
			if (d.cfg.VTEP.IsValid() && ip == d.cfg.VTEP) || (!d.cfg.VTEP.IsValid() && l.Attrs().Index == ifindex && ip.Is4() && !ip.IsLinkLocalUnicast()) {
				return ip, l.Attrs().MTU, nil
			}
		}
	}
	if d.cfg.VTEP.IsValid() {
		return netip.Addr{}, 0, &drivers.NotFoundError{Kind: "underlay address", Name: d.cfg.VTEP.String(), Err: errors.New("no interface of the host holds it")}
	}
	return netip.Addr{}, 0, &drivers.NotFoundError{Kind: "underlay address", Name: strconv.Itoa(ifindex), Err: errors.New("the underlay interface has no IPv4 address")}
}

func (d *Driver) hostNS() (*netns.NS, error) {
	if d.cfg.HostNetns == "" {
		return netns.Current()
	}
	return netns.Open(d.cfg.HostNetns)
}

// buildPlane makes the network's namespace, bridge and VXLAN device. On error nothing is left.
func (d *Driver) buildPlane(n *ovNetwork) (_ *plane, err error) {
	vtep, underMTU, err := d.underlay()
	if err != nil {
		return nil, err
	}
	mtu := n.mtu
	if mtu == 0 {
		mtu = underMTU - 50
		if vtep.Is6() {
			mtu = underMTU - 70
		}
	}
	if n.encrypted {
		// The VXLAN packets go between the hosts' tunnel addresses, inside WireGuard.
		encMTU, _ := encryptedMTU(underMTU, vtep)
		if n.mtu == 0 {
			mtu = encMTU
		}
		vtep = tunnelAddr(vtep)
	}
	p := &plane{path: d.nsPath(n.vni), mtu: mtu, vtep: vtep}
	if netns.IsMounted(p.path) {
		// Left by a crash or a previous Controller: it is this network's, start it afresh.
		if err := netns.Remove(p.path); err != nil {
			return nil, err
		}
	}
	if p.ns, err = netns.New(p.path); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, p.destroy())
		}
	}()
	if p.h, err = netlink.NewHandleAt(p.ns.Handle()); err != nil {
		return nil, err
	}
	if p.sock, err = cnl.NewSocket(p.ns.Handle(), 5*time.Second); err != nil {
		return nil, err
	}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0", MTU: mtu}}
	if err := p.h.LinkAdd(br); err != nil {
		return nil, fmt.Errorf("overlay: bridge: %w", err)
	}
	brl, err := p.h.LinkByName("br0")
	if err != nil {
		return nil, err
	}
	p.br = brl.Attrs().Index
	if err := p.h.LinkSetUp(brl); err != nil {
		return nil, err
	}
	if err := p.h.LinkSetUp(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: "lo"}}); err != nil {
		return nil, err
	}
	// The VXLAN device is made in the host's namespace, where its UDP socket is bound, then
	// moved into the network's.
	hns, err := d.hostNS()
	if err != nil {
		return nil, err
	}
	defer hns.Close()
	hh, err := netlink.NewHandleAt(hns.Handle())
	if err != nil {
		return nil, err
	}
	defer hh.Close()
	name := "vx-" + strconv.FormatUint(uint64(n.vni), 10)
	vx := &netlink.Vxlan{
		LinkAttrs: netlink.LinkAttrs{Name: name, MTU: mtu},
		VxlanId:   int(n.vni), SrcAddr: net.IP(vtep.AsSlice()), Port: d.cfg.Port,
		Learning: false, Proxy: true,
	}
	if err := hh.LinkAdd(vx); errors.Is(err, syscall.EEXIST) {
		// A leftover of this network's (a crash between create and move): ours by its name.
		if old, lerr := hh.LinkByName(name); lerr == nil {
			_ = hh.LinkDel(old)
		}
		err = hh.LinkAdd(vx)
		if err != nil {
			return nil, fmt.Errorf("overlay: vxlan %s: %w", name, err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("overlay: vxlan %s: %w", name, err)
	}
	if err := hh.LinkSetNsFd(vx, p.ns.FD()); err != nil {
		if l, lerr := hh.LinkByName(name); lerr == nil {
			_ = hh.LinkDel(l)
		}
		return nil, fmt.Errorf("overlay: vxlan %s: move: %w", name, err)
	}
	vxl, err := p.h.LinkByName(name)
	if err != nil {
		return nil, err
	}
	p.vx = vxl.Attrs().Index
	if err := p.h.LinkSetMasterByIndex(vxl, p.br); err != nil {
		return nil, err
	}
	// The bridge learns nothing on the VXLAN port either: remote MACs are the static entries
	// of the VXLAN device, one each.
	if err := p.h.LinkSetLearning(vxl, false); err != nil {
		return nil, fmt.Errorf("overlay: vxlan %s: bridge learning off: %w", name, err)
	}
	if err := p.h.LinkSetUp(vxl); err != nil {
		return nil, err
	}
	return p, nil
}

// destroy removes the network's namespace and what it holds.
func (p *plane) destroy() error {
	var errs []error
	if p.h != nil {
		if p.vx != 0 {
			if l, err := p.h.LinkByIndex(p.vx); err == nil {
				if err := p.h.LinkDel(l); err != nil {
					errs = append(errs, err)
				}
			}
		}
		p.h.Close()
	}
	p.sock.Close()
	if p.ns != nil {
		errs = append(errs, p.ns.Close())
	}
	errs = append(errs, netns.Remove(p.path))
	return errors.Join(errs...)
}

// close releases the plane's handles, leaving its kernel state for the next Controller.
func (p *plane) close() error {
	if p.h != nil {
		p.h.Close()
	}
	p.sock.Close()
	if p.ns != nil {
		return p.ns.Close()
	}
	return nil
}

// portName is the name of an endpoint's end on br0.
func portName(ep string) string { return "ve" + ep[:min(12, len(ep))] }

// addPort creates the endpoint's veth pair in one message: one end on br0, the other named
// ifName, with mac and the network's MTU, directly in the sandbox's namespace.
func (p *plane) addPort(ep string, ifName string, mac net.HardwareAddr, netnsFD int) error {
	if err := p.sock.Exec(cnl.VethRequest(portName(ep), p.br, p.mtu, ifName, mac, netnsFD)); err != nil {
		return fmt.Errorf("overlay: veth: %w", err)
	}
	return nil
}

// delPort deletes the endpoint's veth pair (the sandbox's end goes with it). A missing one is
// not an error.
func (p *plane) delPort(ep string) error {
	err := p.sock.Exec(cnl.DelLinkRequest(portName(ep)))
	if err != nil && !errors.Is(err, syscall.ENODEV) {
		return fmt.Errorf("overlay: delete veth: %w", err)
	}
	return nil
}

// addPeer programs a remote endpoint: its MAC behind its VTEP (FDB) and its addresses to its
// MAC (neighbours, answered by the VXLAN device's ARP proxy). It replaces what was there.
func (p *plane) addPeer(e peerEntry) error {
	mac, err := net.ParseMAC(e.MAC)
	if err != nil {
		return err
	}
	if err := p.h.NeighSet(&netlink.Neigh{
		LinkIndex: p.vx, Family: syscall.AF_BRIDGE, State: netlink.NUD_PERMANENT, Flags: netlink.NTF_SELF,
		IP: net.IP(e.VTEP.AsSlice()), HardwareAddr: mac,
	}); err != nil {
		return fmt.Errorf("overlay: fdb %s: %w", e.MAC, err)
	}
	for _, a := range []netip.Addr{e.IPv4, e.IPv6} {
		if !a.IsValid() {
			continue
		}
		fam := netlink.FAMILY_V4
		if a.Is6() {
			fam = netlink.FAMILY_V6
		}
		if err := p.h.NeighSet(&netlink.Neigh{LinkIndex: p.vx, Family: fam, State: netlink.NUD_PERMANENT, IP: net.IP(a.AsSlice()), HardwareAddr: mac}); err != nil {
			return fmt.Errorf("overlay: neighbour %s: %w", a, err)
		}
	}
	return nil
}

// delPeer removes what addPeer programmed. Missing entries are not an error.
func (p *plane) delPeer(e peerEntry) error {
	mac, err := net.ParseMAC(e.MAC)
	if err != nil {
		return err
	}
	var errs []error
	for _, a := range []netip.Addr{e.IPv4, e.IPv6} {
		if !a.IsValid() {
			continue
		}
		fam := netlink.FAMILY_V4
		if a.Is6() {
			fam = netlink.FAMILY_V6
		}
		if err := p.h.NeighDel(&netlink.Neigh{LinkIndex: p.vx, Family: fam, IP: net.IP(a.AsSlice())}); err != nil && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, err)
		}
	}
	if err := p.h.NeighDel(&netlink.Neigh{
		LinkIndex: p.vx, Family: syscall.AF_BRIDGE, Flags: netlink.NTF_SELF, IP: net.IP(e.VTEP.AsSlice()), HardwareAddr: mac,
	}); err != nil && !errors.Is(err, syscall.ENOENT) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// adoptPlane takes back the network's namespace a previous Controller left on this host (with
// the veths of the endpoints still joined), if there is one: it forgets the remote endpoints
// programmed then, which the gossip table programs again. It returns nil, nil when there is
// no namespace to adopt.
func (d *Driver) adoptPlane(n *ovNetwork) (_ *plane, err error) {
	path := d.nsPath(n.vni)
	if !netns.IsMounted(path) {
		return nil, nil
	}
	vtep, _, err := d.underlay()
	if err != nil {
		return nil, err
	}
	if n.encrypted {
		vtep = tunnelAddr(vtep)
	}
	p := &plane{path: path, vtep: vtep}
	if p.ns, err = netns.Open(path); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			p.h.Close()
			p.sock.Close()
			p.ns.Close()
		}
	}()
	if p.h, err = netlink.NewHandleAt(p.ns.Handle()); err != nil {
		return nil, err
	}
	if p.sock, err = cnl.NewSocket(p.ns.Handle(), 5*time.Second); err != nil {
		return nil, err
	}
	br, err := p.h.LinkByName("br0")
	if err != nil {
		return nil, fmt.Errorf("overlay: adopt %s: %w", path, err)
	}
	vx, err := p.h.LinkByName("vx-" + strconv.FormatUint(uint64(n.vni), 10))
	if err != nil {
		return nil, fmt.Errorf("overlay: adopt %s: %w", path, err)
	}
	p.br, p.vx, p.mtu = br.Attrs().Index, vx.Attrs().Index, br.Attrs().MTU
	return p, p.flushPeers()
}

// flushPeers deletes every remote endpoint programmed on the VXLAN device.
func (p *plane) flushPeers() error {
	var errs []error
	for _, fam := range []int{syscall.AF_BRIDGE, netlink.FAMILY_V4, netlink.FAMILY_V6} {
		ns, err := p.h.NeighList(p.vx, fam)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, e := range ns {
			if fam == syscall.AF_BRIDGE && (e.Flags&netlink.NTF_SELF == 0 || e.IP == nil || e.IP.IsUnspecified()) {
				continue
			}
			if err := p.h.NeighDel(&e); err != nil && !errors.Is(err, syscall.ENOENT) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}
