//go:build !linux

package nl

import (
	"net"
	"net/netip"
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

// Conn stands for a NETLINK_ROUTE socket, which only Linux has. No value of it is ever made on
// this system.
type Conn struct{}

// OpenConn fails with an error matching [errclass.ErrNotSupported]: netlink needs Linux.
func OpenConn(timeout time.Duration) (*Conn, error) { return nil, errNotSupported }

// Close does nothing: no socket was opened.
func (c *Conn) Close() error { return nil }

// LinkByName fails with an error matching [errclass.ErrNotSupported]: netlink needs Linux.
func (c *Conn) LinkByName(name string) (int, net.HardwareAddr, error) {
	return 0, nil, errNotSupported
}

// Batch fails each request with an error matching [errclass.ErrNotSupported]: netlink needs
// Linux.
func (c *Conn) Batch(reqs ...*Request) []error {
	errs := make([]error, len(reqs))
	for i := range errs {
		errs[i] = errNotSupported
	}
	return errs
}

// AddrRequest returns nil: there is no netlink message to build on this system.
func AddrRequest(index int, p netip.Prefix, flags uint32) *Request { return nil }

// LinkUpRequest returns nil: there is no netlink message to build on this system.
func LinkUpRequest(index int) *Request { return nil }

// RouteRequest returns nil: there is no netlink message to build on this system.
func RouteRequest(index int, dst netip.Prefix, gw netip.Addr, replace bool) *Request {
	return nil
}

// DelLinkIndexRequest returns nil: there is no netlink message to build on this system.
func DelLinkIndexRequest(index int) *Request { return nil }
