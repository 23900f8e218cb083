package nl

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"
	"unsafe"

	vnl "github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// Conn is a NETLINK_ROUTE socket for a sandbox's interface configuration: it finds a link by
// name with ioctls, and sends several requests in one message. It answers for the namespace it
// was opened in. It is safe for concurrent use.
type Conn struct {
	fd  int
	mu  sync.Mutex // held across a batch's send and acknowledgements
	seq uint32     // under mu
	buf []byte     // under mu: the receive buffer
}

// OpenConn opens a Conn in the calling thread's namespace, with a receive timeout (the kernel
// answers a request before its send returns: only a receive could wait), and asks the kernel
// for extended error messages. Three system calls: a sandbox opens one with each namespace.
// The socket is bound (to a port the kernel picks) by its first send.
func OpenConn(timeout time.Duration) (*Conn, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, err
	}
	tv := unix.NsecToTimeval(timeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return nil, err
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_EXT_ACK, 1) // only better messages; old kernels lack it
	return &Conn{fd: fd, buf: make([]byte, 16<<10)}, nil
}

// Close closes the socket.
func (c *Conn) Close() error { return unix.Close(c.fd) }

// ifreqHW is struct ifreq with its union read as the struct sockaddr of SIOCGIFHWADDR.
type ifreqHW struct {
	name   [unix.IFNAMSIZ]byte
	family uint16
	data   [14]byte
	_      [8]byte // the rest of the union (struct ifmap is 24 bytes on 64-bit systems)
}

// LinkByName returns the index and MAC of link name, or a nil MAC when the link's hardware
// address is not an Ethernet one. It asks with two ioctls (SIOCGIFINDEX, SIOCGIFHWADDR), which
// the kernel answers under RCU, without the RTNL lock that an RTM_GETLINK request waits for,
// and without building and parsing a full link message. A missing link is unix.ENODEV.
func (c *Conn) LinkByName(name string) (int, net.HardwareAddr, error) {
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return 0, nil, err
	}
	if err := unix.IoctlIfreq(c.fd, unix.SIOCGIFINDEX, ifr); err != nil {
		return 0, nil, err
	}
	index := int(ifr.Uint32())
	var hw ifreqHW
	copy(hw.name[:], name)
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(c.fd), unix.SIOCGIFHWADDR, uintptr(unsafe.Pointer(&hw))); errno != 0 {
		return 0, nil, errno
	}
	var mac net.HardwareAddr
	if hw.family == unix.ARPHRD_ETHER {
		mac = net.HardwareAddr(append([]byte(nil), hw.data[:6]...))
	}
	return index, mac, nil
}

// Batch sends reqs in one message and waits for the kernel's acknowledgement of each. The
// kernel handles them in order and goes on past a failed one. It returns one error per
// request, nil for those that succeeded, and an error for all when the exchange itself
// failed. A kernel error is a syscall.Errno, possibly wrapped with the kernel's
// extended-ack message.
func (c *Conn) Batch(reqs ...*Request) []error {
	errs := make([]error, len(reqs))
	if len(reqs) == 0 {
		return errs
	}
	fail := func(err error) []error {
		for i := range errs {
			errs[i] = err
		}
		return errs
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	first := c.seq + 1
	var msg []byte
	for _, r := range reqs {
		c.seq++
		r.Seq = c.seq
		r.Flags |= unix.NLM_F_ACK
		msg = append(msg, r.Serialize()...)
	}
	if err := unix.Sendto(c.fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fail(fmt.Errorf("netlink send: %w", err))
	}
	for left := len(reqs); left > 0; {
		n, _, err := unix.Recvfrom(c.fd, c.buf, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fail(fmt.Errorf("netlink receive: %w", err))
		}
		msgs, err := syscall.ParseNetlinkMessage(c.buf[:n])
		if err != nil {
			return fail(fmt.Errorf("netlink receive: %w", err))
		}
		for _, m := range msgs {
			i := m.Header.Seq - first // wraps with the sequence numbers
			if m.Header.Type != unix.NLMSG_ERROR || i >= uint32(len(reqs)) || len(m.Data) < 4 {
				continue // a late answer to an exchange that failed
			}
			left--
			errs[i] = ackError(m)
		}
	}
	return errs
}

// ackError returns the error an NLMSG_ERROR message carries, nil for an acknowledgement.
func ackError(m syscall.NetlinkMessage) error {
	errno := int32(vnl.NativeEndian().Uint32(m.Data[0:4]))
	if errno == 0 {
		return nil
	}
	err := error(syscall.Errno(-errno))
	if m.Header.Flags&unix.NLM_F_ACK_TLVS == 0 || len(m.Data) < 4+unix.SizeofNlMsghdr {
		return err
	}
	// The request echoed back (only its header when capped), then the attributes.
	h := (*unix.NlMsghdr)(unsafe.Pointer(&m.Data[4]))
	rest := m.Data[4:]
	skip := unix.SizeofNlMsghdr
	if m.Header.Flags&unix.NLM_F_CAPPED == 0 {
		skip = int(h.Len)
	}
	skip = (skip + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1)
	if skip > len(rest) {
		return err
	}
	for rest = rest[skip:]; len(rest) >= unix.SizeofRtAttr; {
		a := (*unix.RtAttr)(unsafe.Pointer(&rest[0]))
		if int(a.Len) < unix.SizeofRtAttr || int(a.Len) > len(rest) {
			break
		}
		if a.Type == unix.NLMSGERR_ATTR_MSG {
			return fmt.Errorf("%w: %s", err, unix.ByteSliceToString(rest[unix.SizeofRtAttr:a.Len]))
		}
		rest = rest[(int(a.Len)+unix.RTA_ALIGNTO-1)&^(unix.RTA_ALIGNTO-1):]
	}
	return err
}

// AddrRequest returns the RTM_NEWADDR request that adds address p to the link with index, as
// the netlink library's AddrAdd makes it: an IPv4 address below /31 with its subnet's
// broadcast address. flags are IFA_F_* flags, such as IFA_F_NODAD.
func AddrRequest(index int, p netip.Prefix, flags uint32) *Request {
	req := vnl.NewNetlinkRequest(unix.RTM_NEWADDR, unix.NLM_F_CREATE|unix.NLM_F_EXCL|unix.NLM_F_ACK)
	family := unix.AF_INET6
	if p.Addr().Is4() {
		family = unix.AF_INET
	}
	msg := vnl.NewIfAddrmsg(family)
	msg.Index = uint32(index)
	msg.Prefixlen = uint8(p.Bits())
	if flags <= 0xff {
		msg.Flags = uint8(flags)
	}
	req.AddData(msg)
	local := p.Addr().AsSlice()
	req.AddData(vnl.NewRtAttr(unix.IFA_LOCAL, local))
	req.AddData(vnl.NewRtAttr(unix.IFA_ADDRESS, local))
	if flags > 0xff {
		req.AddData(vnl.NewRtAttr(unix.IFA_FLAGS, vnl.Uint32Attr(flags)))
	}
	if p.Addr().Is4() && p.Bits() < 31 {
		mask := net.CIDRMask(p.Bits(), 32)
		brd := make([]byte, 4)
		for i := range brd {
			brd[i] = local[i] | ^mask[i]
		}
		req.AddData(vnl.NewRtAttr(unix.IFA_BROADCAST, brd))
	}
	return req
}

// LinkUpRequest returns the RTM_NEWLINK request that sets the link with index up.
func LinkUpRequest(index int) *Request {
	req := vnl.NewNetlinkRequest(unix.RTM_NEWLINK, unix.NLM_F_ACK)
	msg := vnl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(index)
	msg.Flags = unix.IFF_UP
	msg.Change = unix.IFF_UP
	req.AddData(msg)
	return req
}

// RouteRequest returns the RTM_NEWROUTE request for a route to dst through the link with
// index, in the main table, as the netlink library's RouteReplace (replace) or RouteAdd makes
// it: via gw when it is valid, else on the link (scope link). dst must be masked.
func RouteRequest(index int, dst netip.Prefix, gw netip.Addr, replace bool) *Request {
	flags := unix.NLM_F_CREATE | unix.NLM_F_EXCL | unix.NLM_F_ACK
	if replace {
		flags = unix.NLM_F_CREATE | unix.NLM_F_REPLACE | unix.NLM_F_ACK
	}
	req := vnl.NewNetlinkRequest(unix.RTM_NEWROUTE, flags)
	msg := vnl.NewRtMsg()
	msg.Family = unix.AF_INET6
	if dst.Addr().Is4() {
		msg.Family = unix.AF_INET
	}
	msg.Dst_len = uint8(dst.Bits())
	if !gw.IsValid() {
		msg.Scope = unix.RT_SCOPE_LINK
	}
	req.AddData(msg)
	req.AddData(vnl.NewRtAttr(unix.RTA_DST, dst.Addr().AsSlice()))
	if gw.IsValid() {
		req.AddData(vnl.NewRtAttr(unix.RTA_GATEWAY, gw.AsSlice()))
	}
	req.AddData(vnl.NewRtAttr(unix.RTA_OIF, vnl.Uint32Attr(uint32(index))))
	return req
}

// DelLinkIndexRequest returns the RTM_DELLINK request that deletes the link with index. The
// kernel answers ENODEV when there is none.
func DelLinkIndexRequest(index int) *Request {
	req := vnl.NewNetlinkRequest(unix.RTM_DELLINK, unix.NLM_F_ACK)
	msg := vnl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(index)
	req.AddData(msg)
	return req
}
