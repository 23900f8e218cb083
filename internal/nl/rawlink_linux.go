package nl

import (
	"errors"
	"net"
	"time"

	vnl "github.com/vishvananda/netlink/nl"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// This file builds the two netlink messages of the Join and Leave fast path by hand.
//
// netlink v1.3.1's Handle.LinkAdd does not put IFLA_MASTER in the RTM_NEWLINK message: after
// the create it looks the new link up by name (RTM_GETLINK, to learn its index) and enslaves it
// with RTM_SETLINK, three round trips and a window in which the link exists without a master.
// Handle.LinkDel likewise looks the link up by name before RTM_DELLINK. The kernel takes
// IFLA_MASTER and IFF_UP in the create message itself (rtnl_newlink_create configures the
// link, then sets the master, and unregisters the link if either fails), and RTM_DELLINK with
// IFLA_IFNAME, so each of Join and Leave is one message, and Join is atomic.

// Request is a netlink request message, as the netlink library builds and sends it.
type Request = vnl.NetlinkRequest

// VethRequest returns the RTM_NEWLINK request that creates the veth pair of a Join in one
// message: host end hostName, up, with MTU mtu, enslaved to the bridge with index master; peer
// end peerName with MTU mtu and MAC mac (nil: the kernel's choice), created directly in the
// namespace open at netnsFD (left in the socket's namespace when netnsFD is negative), and
// left down.
func VethRequest(hostName string, master, mtu int, peerName string, mac net.HardwareAddr, netnsFD int) *Request {
	req := vnl.NewNetlinkRequest(unix.RTM_NEWLINK, unix.NLM_F_CREATE|unix.NLM_F_EXCL|unix.NLM_F_ACK)
	msg := vnl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Flags = unix.IFF_UP
	msg.Change = unix.IFF_UP
	req.AddData(msg)
	req.AddData(vnl.NewRtAttr(unix.IFLA_IFNAME, vnl.ZeroTerminated(hostName)))
	req.AddData(vnl.NewRtAttr(unix.IFLA_MTU, vnl.Uint32Attr(uint32(mtu))))
	req.AddData(vnl.NewRtAttr(unix.IFLA_MASTER, vnl.Uint32Attr(uint32(master))))

	info := vnl.NewRtAttr(unix.IFLA_LINKINFO, nil)
	info.AddRtAttr(vnl.IFLA_INFO_KIND, vnl.NonZeroTerminated("veth"))
	data := info.AddRtAttr(vnl.IFLA_INFO_DATA, nil)
	peer := data.AddRtAttr(vnl.VETH_INFO_PEER, nil)
	vnl.NewIfInfomsgChild(peer, unix.AF_UNSPEC)
	peer.AddRtAttr(unix.IFLA_IFNAME, vnl.ZeroTerminated(peerName))
	peer.AddRtAttr(unix.IFLA_MTU, vnl.Uint32Attr(uint32(mtu)))
	if mac != nil {
		peer.AddRtAttr(unix.IFLA_ADDRESS, []byte(mac))
	}
	if netnsFD >= 0 {
		peer.AddRtAttr(unix.IFLA_NET_NS_FD, vnl.Uint32Attr(uint32(netnsFD)))
	}
	req.AddData(info)
	return req
}

// MacvlanRequest returns the RTM_NEWLINK request that creates the macvlan link of a Join in
// one message: named name, on the parent link with index parent in the socket's namespace, in
// macvlan mode mode (a MACVLAN_MODE_* value of the kernel's if_link.h: 1 private, 2 vepa, 4
// bridge, 8 passthru), with MTU mtu and MAC mac (nil: the kernel's choice), created directly in
// the namespace open at netnsFD, and left down. The kernel looks the parent up in the
// namespace of the socket the request is sent on, and creates the link in the other one.
func MacvlanRequest(name string, parent, mtu int, mode uint32, mac net.HardwareAddr, netnsFD int) *Request {
	req := vnl.NewNetlinkRequest(unix.RTM_NEWLINK, unix.NLM_F_CREATE|unix.NLM_F_EXCL|unix.NLM_F_ACK)
	req.AddData(vnl.NewIfInfomsg(unix.AF_UNSPEC))
	req.AddData(vnl.NewRtAttr(unix.IFLA_IFNAME, vnl.ZeroTerminated(name)))
	req.AddData(vnl.NewRtAttr(unix.IFLA_LINK, vnl.Uint32Attr(uint32(parent))))
	if mtu > 0 {
		req.AddData(vnl.NewRtAttr(unix.IFLA_MTU, vnl.Uint32Attr(uint32(mtu))))
	}
	if mac != nil {
		req.AddData(vnl.NewRtAttr(unix.IFLA_ADDRESS, []byte(mac)))
	}
	req.AddData(vnl.NewRtAttr(unix.IFLA_NET_NS_FD, vnl.Uint32Attr(uint32(netnsFD))))
	info := vnl.NewRtAttr(unix.IFLA_LINKINFO, nil)
	info.AddRtAttr(vnl.IFLA_INFO_KIND, vnl.NonZeroTerminated("macvlan"))
	data := info.AddRtAttr(vnl.IFLA_INFO_DATA, nil)
	data.AddRtAttr(vnl.IFLA_MACVLAN_MODE, vnl.Uint32Attr(mode))
	req.AddData(info)
	return req
}

// DelLinkRequest returns the RTM_DELLINK request that deletes the link named name. The kernel
// answers ENODEV when there is none.
func DelLinkRequest(name string) *Request {
	req := vnl.NewNetlinkRequest(unix.RTM_DELLINK, unix.NLM_F_ACK)
	req.AddData(vnl.NewIfInfomsg(unix.AF_UNSPEC))
	req.AddData(vnl.NewRtAttr(unix.IFLA_IFNAME, vnl.ZeroTerminated(name)))
	return req
}

// Socket is a NETLINK_ROUTE socket in the host namespace for the hand-built requests. It is
// safe for concurrent use: the netlink library locks the socket for each request.
type Socket struct {
	socks map[int]*vnl.SocketHandle // read-only after NewSocket
}

// NewSocket opens the socket in the namespace ns, with send and receive timeouts, and asks
// the kernel for extended error messages.
func NewSocket(ns vnetns.NsHandle, timeout time.Duration) (Socket, error) {
	s, err := vnl.GetNetlinkSocketAt(ns, vnetns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		return Socket{}, err
	}
	tv := unix.NsecToTimeval(timeout.Nanoseconds())
	err = errors.Join(s.SetSendTimeout(&tv), s.SetReceiveTimeout(&tv))
	if err == nil {
		_ = s.SetExtAck(true) // only better messages; old kernels lack it
	}
	if err != nil {
		s.Close()
		return Socket{}, err
	}
	return Socket{socks: map[int]*vnl.SocketHandle{unix.NETLINK_ROUTE: {Socket: s}}}, nil
}

// Close closes the socket.
func (s Socket) Close() {
	for _, sh := range s.socks {
		sh.Close()
	}
}

// Exec sends req and waits for the kernel's acknowledgement. A kernel error is a
// syscall.Errno, possibly wrapped with the kernel's extended-ack message.
func (s Socket) Exec(req *Request) error {
	req.Sockets = s.socks
	_, err := req.Execute(unix.NETLINK_ROUTE, 0)
	return err
}
