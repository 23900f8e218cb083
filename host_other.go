//go:build !linux

package cnm

import (
	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/vishvananda/netlink"
)

// This file holds the stubs of host_linux.go for other systems.

// checkSystem fails with an error matching [ErrNotSupported]: the Controller needs Linux.
func checkSystem() error { return errclass.LinuxOnly("the Controller") }

// listRoutes fails with an error matching [ErrNotSupported]. It is not reached: New fails
// first.
func listRoutes(h *netlink.Handle) ([]netlink.Route, error) {
	return nil, errclass.LinuxOnly("netlink")
}
