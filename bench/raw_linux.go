//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/cnmkit/cnm/netns"
	"github.com/vishvananda/netlink"
	vnl "github.com/vishvananda/netlink/nl"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// raw is the floor: the kernel calls an attach needs and nothing else, sent by hand. Its
// network is a bridge with the gateway address and one MASQUERADE rule; an attach is one
// RTM_NEWLINK that creates the veth pair with the host end up on the bridge and the other end
// created directly in the container's namespace under its final name (no move, no rename),
// then, in the namespace, the address, link up and the default route. A detach is one
// RTM_DELLINK of the container's end (the kernel takes its peer with it).
type raw struct {
	h      *netlink.Handle
	sock   map[int]*vnl.SocketHandle
	br     netlink.Link
	subnet netip.Prefix
	next   atomic.Uint32
}

type rawBox struct {
	path string
	ns   *netns.NS
	h    *netlink.Handle
	link netlink.Link
}

func newRaw(ctx context.Context) (*raw, error) {
	r := &raw{subnet: netip.MustParsePrefix(subnets["raw"][0])}
	var err error
	if r.h, err = netlink.NewHandle(); err != nil {
		return nil, err
	}
	s, err := vnl.GetNetlinkSocketAt(vnetns.None(), vnetns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		r.h.Close()
		return nil, err
	}
	tv := unix.NsecToTimeval((10 * time.Second).Nanoseconds())
	if err := errors.Join(s.SetSendTimeout(&tv), s.SetReceiveTimeout(&tv)); err != nil {
		s.Close()
		r.h.Close()
		return nil, err
	}
	r.sock = map[int]*vnl.SocketHandle{unix.NETLINK_ROUTE: {Socket: s}}
	if r.br, err = r.bridge("rawbr0", r.subnet); err != nil {
		r.close()
		return nil, err
	}
	return r, nil
}

func (r *raw) name() string { return "raw" }

// bridge creates an up bridge with the subnet's first address and a MASQUERADE rule for it.
func (r *raw) bridge(name string, subnet netip.Prefix) (netlink.Link, error) {
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name, Flags: net.FlagUp}}
	if err := r.h.LinkAdd(br); err != nil {
		return nil, fmt.Errorf("raw: bridge %s: %w", name, err)
	}
	gw := subnet.Addr().Next()
	if err := r.h.AddrAdd(br, &netlink.Addr{IPNet: &net.IPNet{IP: gw.AsSlice(), Mask: net.CIDRMask(subnet.Bits(), 32)}}); err != nil {
		return nil, fmt.Errorf("raw: bridge %s address: %w", name, err)
	}
	if err := iptables("-A", name, subnet); err != nil {
		return nil, err
	}
	return br, nil
}

// iptables adds (-A) or deletes (-D) the network's MASQUERADE rule: one iptables process.
func iptables(op, br string, subnet netip.Prefix) error {
	out, err := exec.Command("iptables", "-w", "-t", "nat", op, "POSTROUTING", "-s", subnet.String(), "!", "-o", br, "-j", "MASQUERADE").CombinedOutput()
	if err != nil {
		return fmt.Errorf("raw: iptables %s: %v: %s", op, err, out)
	}
	return nil
}

func (r *raw) netCreate(ctx context.Context, i int, subnet string) error {
	_, err := r.bridge(fmt.Sprintf("rawn%d", i), netip.MustParsePrefix(subnet))
	return err
}

func (r *raw) netDelete(ctx context.Context, i int) error {
	name := fmt.Sprintf("rawn%d", i)
	if err := iptables("-D", name, netip.MustParsePrefix(subnets["raw"][1])); err != nil {
		return err
	}
	return r.h.LinkDel(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}})
}

func (r *raw) newBox(ctx context.Context, id string) (any, error) {
	b := &rawBox{path: filepath.Join("/run/netns", "raw-"+id)}
	var err error
	if b.ns, err = netns.New(b.path); err != nil {
		return nil, err
	}
	if b.h, err = netlink.NewHandleAt(b.ns.Handle(), unix.NETLINK_ROUTE); err != nil {
		b.ns.Close()
		netns.Remove(b.path)
		return nil, err
	}
	return b, nil
}

func (r *raw) deleteBox(ctx context.Context, x any) error {
	b := x.(*rawBox)
	b.h.Close()
	b.ns.Close()
	return netns.Remove(b.path)
}

func (r *raw) attach(ctx context.Context, x any) error {
	b := x.(*rawBox)
	i := r.next.Add(1)%65000 + 2
	a := netip.AddrFrom4([4]byte{10, 204, byte(i >> 8), byte(i)})
	mac := net.HardwareAddr{0x02, 0x42, 10, 204, byte(i >> 8), byte(i)}
	req := vethRequest(fmt.Sprintf("vraw%x", i), r.br.Attrs().Index, 1500, "eth0", mac, b.ns.FD())
	req.Sockets = r.sock
	if _, err := req.Execute(unix.NETLINK_ROUTE, 0); err != nil {
		return fmt.Errorf("raw: veth: %w", err)
	}
	link, err := b.h.LinkByName("eth0")
	if err != nil {
		return err
	}
	if err := b.h.AddrAdd(link, &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(r.subnet.Bits(), 32)}}); err != nil {
		return err
	}
	if err := b.h.LinkSetUp(link); err != nil {
		return err
	}
	if err := b.h.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Gw: r.subnet.Addr().Next().AsSlice()}); err != nil {
		return err
	}
	b.link = link
	return nil
}

func (r *raw) detach(ctx context.Context, x any) error {
	b := x.(*rawBox)
	return b.h.LinkDel(b.link)
}

func (r *raw) removeDetaches() bool { return true }

func (r *raw) nsPath(x any) string { return x.(*rawBox).path }

func (r *raw) close() error {
	if r.sock != nil {
		r.sock[unix.NETLINK_ROUTE].Close()
	}
	r.h.Close()
	return nil
}

// vethRequest is the RTM_NEWLINK message of an attach: the host end hostName, up, with MTU
// mtu, enslaved to the bridge with index master; its peer peerName, with the same MTU and MAC
// mac, created in the namespace open at netnsFD. The kernel sets the master and the up flag
// as part of the create, so this is one round trip where netlink's LinkAdd takes three.
func vethRequest(hostName string, master, mtu int, peerName string, mac net.HardwareAddr, netnsFD int) *vnl.NetlinkRequest {
	req := vnl.NewNetlinkRequest(unix.RTM_NEWLINK, unix.NLM_F_CREATE|unix.NLM_F_EXCL|unix.NLM_F_ACK)
	msg := vnl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Flags, msg.Change = unix.IFF_UP, unix.IFF_UP
	req.AddData(msg)
	req.AddData(vnl.NewRtAttr(unix.IFLA_IFNAME, vnl.ZeroTerminated(hostName)))
	req.AddData(vnl.NewRtAttr(unix.IFLA_MTU, vnl.Uint32Attr(uint32(mtu))))
	req.AddData(vnl.NewRtAttr(unix.IFLA_MASTER, vnl.Uint32Attr(uint32(master))))
	info := vnl.NewRtAttr(unix.IFLA_LINKINFO, nil)
	info.AddRtAttr(vnl.IFLA_INFO_KIND, vnl.NonZeroTerminated("veth"))
	peer := info.AddRtAttr(vnl.IFLA_INFO_DATA, nil).AddRtAttr(vnl.VETH_INFO_PEER, nil)
	vnl.NewIfInfomsgChild(peer, unix.AF_UNSPEC)
	peer.AddRtAttr(unix.IFLA_IFNAME, vnl.ZeroTerminated(peerName))
	peer.AddRtAttr(unix.IFLA_MTU, vnl.Uint32Attr(uint32(mtu)))
	peer.AddRtAttr(unix.IFLA_ADDRESS, []byte(mac))
	peer.AddRtAttr(unix.IFLA_NET_NS_FD, vnl.Uint32Attr(uint32(netnsFD)))
	req.AddData(info)
	return req
}
