//go:build !linux

package macvlan

import (
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

// retryDump fails with an error matching [drivers.ErrNotSupported] without calling list.
func retryDump[T any](list func() ([]T, error)) ([]T, error) { return nil, errNetlink }
