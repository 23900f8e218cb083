package nl

import (
	"net"
	"unsafe"

	"golang.org/x/sys/unix"
)

// IfreqSocket opens the socket that LinkByNameIoctl asks on, in the calling thread's
// namespace: an unbound NETLINK_ROUTE socket, which receives nothing. The kernel answers an
// interface ioctl for the namespace the socket was opened in.
func IfreqSocket() (int, error) {
	return unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
}

// ifreqHW is struct ifreq with its union read as the struct sockaddr of SIOCGIFHWADDR.
type ifreqHW struct {
	name   [unix.IFNAMSIZ]byte
	family uint16
	data   [14]byte
	_      [8]byte // the rest of the union (struct ifmap is 24 bytes on 64-bit systems)
}

// LinkByNameIoctl returns the index and MAC of link name in the namespace of fd, a socket
// from IfreqSocket. It asks with two ioctls (SIOCGIFINDEX, SIOCGIFHWADDR), which the kernel
// answers under RCU, without the RTNL lock that an RTM_GETLINK request waits for, and without
// building and parsing a full link message. A missing link is unix.ENODEV.
func LinkByNameIoctl(fd int, name string) (int, net.HardwareAddr, error) {
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return 0, nil, err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFINDEX, ifr); err != nil {
		return 0, nil, err
	}
	index := int(ifr.Uint32())
	var hw ifreqHW
	copy(hw.name[:], name)
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCGIFHWADDR, uintptr(unsafe.Pointer(&hw))); errno != 0 {
		return 0, nil, errno
	}
	var mac net.HardwareAddr
	if hw.family == unix.ARPHRD_ETHER {
		mac = net.HardwareAddr(append([]byte(nil), hw.data[:6]...))
	}
	return index, mac, nil
}
