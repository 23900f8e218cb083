//go:build !linux

package nl

import (
	"net"
	"time"

	"github.com/cnmkit/cnm/internal/errclass"
	vnetns "github.com/vishvananda/netns"
)

// errNotSupported is what NewSocket and Exec return: rtnetlink is a Linux kernel interface.
var errNotSupported = errclass.LinuxOnly("netlink")

// Request stands for a netlink request message, which only Linux has. No value of it is ever
// built on this system.
type Request struct{}

// VethRequest returns nil: there is no netlink message to build on this system. Passing the
// result to [Socket.Exec] fails with an error matching [errclass.ErrNotSupported].
func VethRequest(hostName string, master, mtu int, peerName string, mac net.HardwareAddr, netnsFD int) *Request {
	return nil
}

// MacvlanRequest returns nil: there is no netlink message to build on this system. Passing the
// result to [Socket.Exec] fails with an error matching [errclass.ErrNotSupported].
func MacvlanRequest(name string, parent, mtu int, mode uint32, mac net.HardwareAddr, netnsFD int) *Request {
	return nil
}

// DelLinkRequest returns nil: there is no netlink message to build on this system. Passing the
// result to [Socket.Exec] fails with an error matching [errclass.ErrNotSupported].
func DelLinkRequest(name string) *Request { return nil }

// Socket stands for a NETLINK_ROUTE socket, which only Linux has. Its zero value is the only
// one; Exec on it fails.
type Socket struct{}

// NewSocket fails with an error matching [errclass.ErrNotSupported]: netlink needs Linux.
func NewSocket(ns vnetns.NsHandle, timeout time.Duration) (Socket, error) {
	return Socket{}, errNotSupported
}

// Close does nothing: no socket was opened.
func (s Socket) Close() {}

// Exec fails with an error matching [errclass.ErrNotSupported]: netlink needs Linux.
func (s Socket) Exec(req *Request) error { return errNotSupported }

// IfreqSocket fails with an error matching [errclass.ErrNotSupported]: the interface ioctls it
// serves are Linux's.
func IfreqSocket() (int, error) { return -1, errNotSupported }

// LinkByNameIoctl fails with an error matching [errclass.ErrNotSupported]: the interface
// ioctls are Linux's.
func LinkByNameIoctl(fd int, name string) (int, net.HardwareAddr, error) {
	return 0, nil, errNotSupported
}
