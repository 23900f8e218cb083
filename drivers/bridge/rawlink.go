package bridge

import (
	"errors"
	"net"
	"time"

	"github.com/vishvananda/netlink/nl"
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

// vethRequest returns the RTM_NEWLINK request that creates the veth pair of a Join in one
// message: host end hostName, up, with MTU mtu, enslaved to the bridge with index master; peer
// end peerName with MTU mtu and MAC mac (nil: the kernel's choice), created directly in the
// namespace open at netnsFD, and left down.
func vethRequest(hostName string, master, mtu int, peerName string, mac net.HardwareAddr, netnsFD int) *nl.NetlinkRequest {
	req := nl.NewNetlinkRequest(unix.RTM_NEWLINK, unix.NLM_F_CREATE|unix.NLM_F_EXCL|unix.NLM_F_ACK)
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Flags = unix.IFF_UP
	msg.Change = unix.IFF_UP
	req.AddData(msg)
	req.AddData(nl.NewRtAttr(unix.IFLA_IFNAME, nl.ZeroTerminated(hostName)))
	req.AddData(nl.NewRtAttr(unix.IFLA_MTU, nl.Uint32Attr(uint32(mtu))))
	req.AddData(nl.NewRtAttr(unix.IFLA_MASTER, nl.Uint32Attr(uint32(master))))

	info := nl.NewRtAttr(unix.IFLA_LINKINFO, nil)
	info.AddRtAttr(nl.IFLA_INFO_KIND, nl.NonZeroTerminated("veth"))
	data := info.AddRtAttr(nl.IFLA_INFO_DATA, nil)
	peer := data.AddRtAttr(nl.VETH_INFO_PEER, nil)
	nl.NewIfInfomsgChild(peer, unix.AF_UNSPEC)
	peer.AddRtAttr(unix.IFLA_IFNAME, nl.ZeroTerminated(peerName))
	peer.AddRtAttr(unix.IFLA_MTU, nl.Uint32Attr(uint32(mtu)))
	if mac != nil {
		peer.AddRtAttr(unix.IFLA_ADDRESS, []byte(mac))
	}
	peer.AddRtAttr(unix.IFLA_NET_NS_FD, nl.Uint32Attr(uint32(netnsFD)))
	req.AddData(info)
	return req
}

// delLinkRequest returns the RTM_DELLINK request that deletes the link named name. The kernel
// answers ENODEV when there is none.
func delLinkRequest(name string) *nl.NetlinkRequest {
	req := nl.NewNetlinkRequest(unix.RTM_DELLINK, unix.NLM_F_ACK)
	req.AddData(nl.NewIfInfomsg(unix.AF_UNSPEC))
	req.AddData(nl.NewRtAttr(unix.IFLA_IFNAME, nl.ZeroTerminated(name)))
	return req
}

// rawSocket is a NETLINK_ROUTE socket in the host namespace for the hand-built requests. It is
// safe for concurrent use: the netlink library locks the socket for each request.
type rawSocket struct {
	socks map[int]*nl.SocketHandle // read-only after newRawSocket
}

// newRawSocket opens the socket in the namespace ns, with send and receive timeouts, and asks
// the kernel for extended error messages.
func newRawSocket(ns vnetns.NsHandle, timeout time.Duration) (rawSocket, error) {
	s, err := nl.GetNetlinkSocketAt(ns, vnetns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		return rawSocket{}, err
	}
	tv := unix.NsecToTimeval(timeout.Nanoseconds())
	err = errors.Join(s.SetSendTimeout(&tv), s.SetReceiveTimeout(&tv))
	if err == nil {
		_ = s.SetExtAck(true) // only better messages; old kernels lack it
	}
	if err != nil {
		s.Close()
		return rawSocket{}, err
	}
	return rawSocket{socks: map[int]*nl.SocketHandle{unix.NETLINK_ROUTE: {Socket: s}}}, nil
}

func (s rawSocket) close() {
	for _, sh := range s.socks {
		sh.Close()
	}
}

// exec sends req and waits for the kernel's acknowledgement. A kernel error is a
// syscall.Errno, possibly wrapped with the kernel's extended-ack message.
func (s rawSocket) exec(req *nl.NetlinkRequest) error {
	req.Sockets = s.socks
	_, err := req.Execute(unix.NETLINK_ROUTE, 0)
	return err
}
