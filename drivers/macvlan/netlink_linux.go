package macvlan

import (
	"errors"

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
