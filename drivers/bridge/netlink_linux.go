package bridge

import (
	"errors"
	"net"
	"net/netip"

	"github.com/cnmkit/cnm/netns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// This file holds the driver's uses of the netlink library that exist on Linux only;
// netlink_other.go has their stubs for other systems.

// newRouteHandle opens a NETLINK_ROUTE handle in ns.
func newRouteHandle(ns *netns.NS) (*netlink.Handle, error) {
	return netlink.NewHandleAt(ns.Handle(), unix.NETLINK_ROUTE)
}

// listAddrs lists the addresses of every family on link, retrying a dump the kernel
// interrupted.
func listAddrs(h *netlink.Handle, link netlink.Link) ([]netlink.Addr, error) {
	return retryDump(func() ([]netlink.Addr, error) { return h.AddrList(link, netlink.FAMILY_ALL) })
}

// retryDump calls list until its dump is not interrupted, at most five times.
func retryDump[T any](list func() ([]T, error)) ([]T, error) {
	var (
		out []T
		err error
	)
	for range 5 {
		out, err = list()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return out, err
		}
	}
	return nil, err
}

// bridgeAddr returns the netlink address for p. An IPv6 address skips duplicate address
// detection, which would keep it tentative, unusable, until the bridge has carrier.
func bridgeAddr(p netip.Prefix) *netlink.Addr {
	a := &netlink.Addr{IPNet: &net.IPNet{
		IP:   p.Addr().AsSlice(),
		Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen()),
	}}
	if p.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD
	}
	return a
}
