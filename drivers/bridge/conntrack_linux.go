package bridge

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	vnl "github.com/vishvananda/netlink/nl"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Conntrack attributes the netlink library does not name (linux/netfilter/nfnetlink_conntrack.h).
const (
	ctaFilter            = 25 // CTA_FILTER
	ctaFilterOrigFlags   = 1  // CTA_FILTER_ORIG_FLAGS
	ctaFilterReplyFlags  = 2  // CTA_FILTER_REPLY_FLAGS
	ctaFilterFlagIPSrc   = 1 << 0
	ipctnlMsgCtDelete    = 2 // IPCTNL_MSG_CT_DELETE
	nfnlSubsysCtnetlink  = 1 // NFNL_SUBSYS_CTNETLINK
	ctaTupleIP           = 1 // CTA_TUPLE_IP
	ctaIPv4Src           = 1 // CTA_IP_V4_SRC
	ctaTupleOrig         = 1 // CTA_TUPLE_ORIG
	ctaTupleReply        = 2 // CTA_TUPLE_REPLY
	nfnetlinkV0          = 0
	conntrackFilterFlags = ctaFilterFlagIPSrc
)

// conntrackSocket is a NETLINK_NETFILTER socket in the host namespace. It is safe for
// concurrent use: the netlink library locks the socket for each request.
type conntrackSocket struct {
	ns       vnetns.NsHandle // not owned
	socks    map[int]*vnl.SocketHandle
	fallback atomic.Bool // the kernel has no filtered flush (before Linux 6.8?): dump and filter
}

func newConntrackSocket(ns vnetns.NsHandle, timeout time.Duration) (*conntrackSocket, error) {
	s, err := vnl.GetNetlinkSocketAt(ns, vnetns.None(), unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, err
	}
	tv := unix.NsecToTimeval(timeout.Nanoseconds())
	if err := errors.Join(s.SetSendTimeout(&tv), s.SetReceiveTimeout(&tv)); err != nil {
		s.Close()
		return nil, err
	}
	return &conntrackSocket{ns: ns, socks: map[int]*vnl.SocketHandle{unix.NETLINK_NETFILTER: {Socket: s}}}, nil
}

// Close closes the socket. A nil socket is fine.
func (c *conntrackSocket) Close() {
	if c == nil {
		return
	}
	for _, sh := range c.socks {
		sh.Close()
	}
}

// flushAddr deletes the conntrack entries, of a's family (IPv4 or IPv6), that have a as their
// original source (the endpoint's own connections) or as their reply source (connections to
// it, NATed or not). For IPv4 each is one IPCTNL_MSG_CT_DELETE with a CTA_FILTER: the kernel
// deletes the matching entries itself, and nothing of the table crosses to user space. On a
// kernel that refuses the filter, and always for IPv6, it uses the netlink library's
// dump-and-delete of that family's table, for that address only: the kernel's IPv6 filter
// match is inverted (ctnetlink_filter_match_tuple in nf_conntrack_netlink.c, as of Linux 6.18,
// skips the entries whose address equals the filter's), so a filtered IPv6 delete would flush
// every entry but a's.
func (c *conntrackSocket) flushAddr(a netip.Addr) error {
	a = a.Unmap()
	if !a.IsValid() {
		return nil
	}
	if a.Is4() && !c.fallback.Load() {
		err := errors.Join(c.exec(flushRequest(a, ctaTupleOrig)), c.exec(flushRequest(a, ctaTupleReply)))
		if err == nil || !(errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL)) {
			return err
		}
		c.fallback.Store(true)
	}
	h, err := netlink.NewHandleAt(c.ns, unix.NETLINK_NETFILTER)
	if err != nil {
		return err
	}
	defer h.Close()
	ip := net.IP(a.AsSlice())
	var orig, reply netlink.ConntrackFilter
	if err := errors.Join(orig.AddIP(netlink.ConntrackOrigSrcIP, ip), reply.AddIP(netlink.ConntrackReplySrcIP, ip)); err != nil {
		return err
	}
	_, err = h.ConntrackDeleteFilters(netlink.ConntrackTable, ctFamily(a), &orig, &reply)
	return err
}

// ctFamily returns the conntrack (nfgenmsg) family of a.
func ctFamily(a netip.Addr) netlink.InetFamily {
	if a.Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

func (c *conntrackSocket) exec(req *vnl.NetlinkRequest) error {
	req.Sockets = c.socks
	_, err := req.Execute(unix.NETLINK_NETFILTER, 0)
	if errors.Is(err, unix.ENOENT) { // nothing matched
		return nil
	}
	if err != nil {
		return fmt.Errorf("conntrack delete: %w", err)
	}
	return nil
}

// flushRequest returns the request that deletes every IPv4 conntrack entry whose tuple
// (ctaTupleOrig or ctaTupleReply) has source address a.
func flushRequest(a netip.Addr, tuple uint16) *vnl.NetlinkRequest {
	req := vnl.NewNetlinkRequest(nfnlSubsysCtnetlink<<8|ipctnlMsgCtDelete, unix.NLM_F_ACK)
	req.AddData(&vnl.Nfgenmsg{NfgenFamily: unix.AF_INET, Version: nfnetlinkV0})
	t := vnl.NewRtAttr(int(tuple)|int(vnl.NLA_F_NESTED), nil)
	ip := t.AddRtAttr(ctaTupleIP|int(vnl.NLA_F_NESTED), nil)
	ip.AddRtAttr(ctaIPv4Src, a.AsSlice())
	req.AddData(t)
	f := vnl.NewRtAttr(ctaFilter|int(vnl.NLA_F_NESTED), nil)
	flags := ctaFilterOrigFlags
	if tuple == ctaTupleReply {
		flags = ctaFilterReplyFlags
	}
	f.AddRtAttr(flags, vnl.Uint32Attr(conntrackFilterFlags))
	req.AddData(f)
	return req
}
