package sandbox

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
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

// OnMemoryFS reports whether dir, or its nearest existing parent when dir does not exist yet,
// is on a filesystem held in memory (tmpfs or ramfs), as a run directory should be: a
// sandbox's namespace mount point and its hosts and resolv.conf files are made and removed
// with it, and on a disk filesystem each of those is a metadata operation of the filesystem's
// journal, whose time depends on every other writer of the filesystem.
func OnMemoryFS(dir string) (bool, error) {
	for d := filepath.Clean(dir); ; d = filepath.Dir(d) {
		var st unix.Statfs_t
		err := unix.Statfs(d, &st)
		if err == nil {
			return st.Type == unix.TMPFS_MAGIC || st.Type == unix.RAMFS_MAGIC, nil
		}
		if !errors.Is(err, unix.ENOENT) || filepath.Dir(d) == d {
			return false, fmt.Errorf("sandbox: filesystem of %s: %w", dir, err)
		}
	}
}
