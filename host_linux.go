package cnm

import "github.com/vishvananda/netlink"

// This file holds the controller's Linux-only code; host_other.go has its stubs for other
// systems.

// checkSystem returns nil: cnm runs on Linux.
func checkSystem() error { return nil }

// listRoutes lists the routes of every family and table that h's namespace has.
func listRoutes(h *netlink.Handle) ([]netlink.Route, error) {
	return h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: 0}, 0)
}
