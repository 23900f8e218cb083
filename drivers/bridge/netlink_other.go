//go:build !linux

package bridge

import (
	"net/netip"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/netns"
	"github.com/vishvananda/netlink"
)

// This file holds the stubs of netlink_linux.go for other systems. New fails there before it
// reaches them, as the host namespace cannot be opened.

// errNetlink is what the stubs of this file return: netlink is a Linux kernel interface.
var errNetlink = drivers.LinuxOnly("netlink")

// newRouteHandle fails with an error matching [drivers.ErrNotSupported].
func newRouteHandle(ns *netns.NS) (*netlink.Handle, error) { return nil, errNetlink }

// listAddrs fails with an error matching [drivers.ErrNotSupported].
func listAddrs(h *netlink.Handle, link netlink.Link) ([]netlink.Addr, error) {
	return nil, errNetlink
}

// retryDump fails with an error matching [drivers.ErrNotSupported] without calling list:
// there is no kernel to dump.
func retryDump[T any](list func() ([]T, error)) ([]T, error) { return nil, errNetlink }

// bridgeAddr returns nil: there is no netlink address to build on this system.
func bridgeAddr(p netip.Prefix) *netlink.Addr { return nil }
