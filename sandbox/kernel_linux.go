package sandbox

import (
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// Routes returns the destinations of the host namespace's routes in the main table, IPv4 and
// IPv6, as the kernel lists them; default routes are left out.
func (k *Kernel) Routes() ([]netip.Prefix, error) {
	routes, err := k.nl.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: 0}, 0)
	if err != nil {
		return nil, fmt.Errorf("sandbox: host routes: %w", err)
	}
	out := make([]netip.Prefix, 0, len(routes))
	for _, r := range routes {
		if r.Dst == nil {
			continue
		}
		a, ok := netip.AddrFromSlice(r.Dst.IP)
		if !ok {
			continue
		}
		bits, _ := r.Dst.Mask.Size()
		out = append(out, netip.PrefixFrom(a.Unmap(), bits).Masked())
	}
	return out, nil
}
