package bridge

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"github.com/cnmkit/cnm/drivers"
	"github.com/vishvananda/netlink"
)

// ensureBridge makes the bridge of network nid as n describes (n.index is ignored), with the
// addresses addrs, or adopts it when it exists and is the network's; it returns the bridge's
// ifindex, and reports whether it created the bridge. A link of that name that is not the network's bridge is a conflict and is left
// alone. On error, what the call made is removed again.
//
// A bridge named defaultBridgeName(nid) with no alias is taken as the network's: a crash
// between creating the bridge and setting its alias leaves one, and the name comes from the
// network ID. A bridge with any other name needs the alias.
//
// The bridge is created first, with no look-up: a link of that name that exists makes the
// create fail, and only then is it looked up and adopted. onCreate, when not nil, is called
// as soon as the kernel has created the bridge, before its alias, addresses and up are set.
func (d *Driver) ensureBridge(ctx context.Context, nid drivers.NetworkID, n *network, addrs []netip.Prefix, onCreate func()) (index int, created bool, err error) {
	index, err = d.createBridge(ctx, nid, n, addrs, onCreate)
	if !errors.Is(err, errLinkExists) {
		return index, err == nil, err
	}
	link, err := d.h.LinkByName(n.bridge)
	switch {
	case errors.As(err, new(netlink.LinkNotFoundError)): // gone again: a race with its delete
		return 0, false, &drivers.ConflictError{Kind: "bridge", Name: n.bridge, Reason: "bridge name taken by a link being deleted"}
	case err != nil:
		return 0, false, fmt.Errorf("look up link %q: %w", n.bridge, err)
	}
	alias := link.Attrs().Alias
	if link.Type() != "bridge" || (alias != aliasPrefix+string(nid) && (alias != "" || n.bridge != defaultBridgeName(nid))) {
		return 0, false, &drivers.ConflictError{Kind: "bridge", Name: n.bridge, Reason: "bridge name taken by a foreign device"}
	}
	index, err = d.adoptBridge(ctx, nid, link, n, addrs)
	return index, false, err
}

// errLinkExists is createBridge's error when a link of the bridge's name exists.
var errLinkExists = errors.New("link exists")

// createBridge makes the bridge: create with the MTU, alias, addresses, up; onCreate (when not
// nil) is called right after the create. A link of that name that exists fails with
// errLinkExists.
func (d *Driver) createBridge(ctx context.Context, nid drivers.NetworkID, n *network, addrs []netip.Prefix, onCreate func()) (_ int, err error) {
	la := netlink.NewLinkAttrs()
	la.Name = n.bridge
	la.MTU = n.mtu
	br := &netlink.Bridge{LinkAttrs: la}
	if err := d.h.LinkAdd(br); err != nil {
		if errors.Is(err, syscall.EEXIST) {
			return 0, errLinkExists
		}
		return 0, fmt.Errorf("create bridge %q: %w", n.bridge, err)
	}
	if onCreate != nil {
		onCreate()
	}
	var undo undoStack
	undo.push("delete bridge "+n.bridge, func() error { return d.h.LinkDel(br) })
	defer func() {
		if err != nil {
			err = errors.Join(err, undo.run(context.WithoutCancel(ctx), d))
		}
	}()
	if br.Index == 0 { // LinkAdd looks the index up, but ignores a failure
		l, err := d.h.LinkByName(n.bridge)
		if err != nil {
			return 0, fmt.Errorf("look up new bridge %q: %w", n.bridge, err)
		}
		br.Index = l.Attrs().Index
	}
	// The kernel ignores IFLA_IFALIAS in a create message: set it now.
	if err := d.h.LinkSetAlias(br, aliasPrefix+string(nid)); err != nil {
		return 0, fmt.Errorf("set alias of bridge %q: %w", n.bridge, err)
	}
	for _, p := range addrs {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		if err := d.h.AddrAdd(br, bridgeAddr(p)); err != nil {
			return 0, fmt.Errorf("add address %s to bridge %q: %w", p, n.bridge, err)
		}
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if err := d.h.LinkSetUp(br); err != nil {
		return 0, fmt.Errorf("set bridge %q up: %w", n.bridge, err)
	}
	d.log.DebugContext(ctx, "created bridge", "network", nid.Short(), "bridge", n.bridge, "index", br.Index, "mtu", n.mtu)
	return br.Index, nil
}

// adoptBridge brings the network's existing bridge to the state createBridge makes. It adds
// what is missing and removes, on error, only what it added.
func (d *Driver) adoptBridge(ctx context.Context, nid drivers.NetworkID, link netlink.Link, n *network, addrs []netip.Prefix) (_ int, err error) {
	var undo undoStack
	defer func() {
		if err != nil {
			err = errors.Join(err, undo.run(context.WithoutCancel(ctx), d))
		}
	}()
	a := link.Attrs()
	if a.Alias == "" {
		if err := d.h.LinkSetAlias(link, aliasPrefix+string(nid)); err != nil {
			return 0, fmt.Errorf("set alias of bridge %q: %w", n.bridge, err)
		}
	}
	if a.MTU != n.mtu {
		if err := d.h.LinkSetMTU(link, n.mtu); err != nil {
			return 0, fmt.Errorf("set MTU of bridge %q to %d: %w", n.bridge, n.mtu, err)
		}
	}
	have, err := listAddrs(d.h, link)
	if err != nil {
		return 0, fmt.Errorf("list addresses of bridge %q: %w", n.bridge, err)
	}
	present := make(map[netip.Prefix]bool, len(have))
	for _, h := range have {
		if p, ok := prefixOf(h.IPNet); ok {
			present[p] = true
		}
	}
	for _, p := range addrs {
		if present[p] {
			continue
		}
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		addr := bridgeAddr(p)
		if err := d.h.AddrAdd(link, addr); err != nil {
			return 0, fmt.Errorf("add address %s to bridge %q: %w", p, n.bridge, err)
		}
		undo.push("delete address "+p.String()+" of bridge "+n.bridge, func() error { return d.h.AddrDel(link, addr) })
	}
	if a.Flags&net.FlagUp == 0 {
		if err := d.h.LinkSetUp(link); err != nil {
			return 0, fmt.Errorf("set bridge %q up: %w", n.bridge, err)
		}
	}
	d.log.DebugContext(ctx, "adopted bridge", "network", nid.Short(), "bridge", n.bridge, "index", a.Index)
	return a.Index, nil
}

// prefixOf converts n to a prefix that keeps the address (not masked).
func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	a = a.Unmap()
	ones, bits := n.Mask.Size()
	if bits == 0 || bits != a.BitLen() {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(a, ones), true
}

// undoStack holds the steps that take back what a call made, run in reverse on error.
type undoStack []undoStep

type undoStep struct {
	what string
	f    func() error
}

func (u *undoStack) push(what string, f func() error) { *u = append(*u, undoStep{what, f}) }

// run runs the steps, newest first, and joins their errors. ctx is for logging: the caller
// passes it through context.WithoutCancel so the rollback is not cut short.
func (u undoStack) run(ctx context.Context, d *Driver) error {
	var errs []error
	for i := len(u) - 1; i >= 0; i-- {
		if err := u[i].f(); err != nil {
			errs = append(errs, fmt.Errorf("rollback: %s: %w", u[i].what, err))
			d.log.ErrorContext(ctx, "rollback failed", "step", u[i].what, "err", err)
		}
	}
	return errors.Join(errs...)
}
