package bridge

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"time"

	"github.com/cnmkit/cnm/drivers"
	"github.com/vishvananda/netlink"
)

// Reconcile removes what a crash left in the host namespace: every bridge whose alias starts
// with "cnm:" and names a network not in live.Networks, and every veth named like a host end
// ("veth" and 11 hex characters) that is enslaved to such a "cnm:" bridge and belongs to no
// endpoint in live.Endpoints; then the rules in the driver's iptables chains that name a
// bridge that is gone or was just removed. It reports one [drivers.Repair] per link removed
// (veths first) and one per bridge whose rules were left without it (the rules of a bridge it
// removes go with that bridge's repair), and joins the errors of the removals that failed,
// going on after each. Links of other programs are never touched. When New found FORWARD or nat
// rules in the iptables backend the driver does not use (a [*BackendConflictError]), the first
// repair reports them, "left alone".
//
// It must not run concurrently with CreateNetwork, DeleteNetwork or Join; the Controller calls
// it once, on start, after re-creating the live networks.
func (d *Driver) Reconcile(ctx context.Context, live drivers.LiveState) ([]drivers.Repair, error) {
	links, err := d.linkList()
	if err != nil {
		return nil, fmt.Errorf("bridge: reconcile: list links: %w", err)
	}
	liveNets := make(map[drivers.NetworkID]bool, len(live.Networks))
	for _, id := range live.Networks {
		liveNets[id] = true
	}
	liveVeths := make(map[string]bool, len(live.Endpoints))
	for _, id := range live.Endpoints {
		liveVeths[hostVethName(id)] = true
	}

	ourBridges := make(map[int]bool) // ifindex of every "cnm:" bridge
	var orphanBridges []netlink.Link
	for _, l := range links {
		alias := l.Attrs().Alias
		if l.Type() != "bridge" || !strings.HasPrefix(alias, aliasPrefix) {
			continue
		}
		ourBridges[l.Attrs().Index] = true
		if !liveNets[drivers.NetworkID(strings.TrimPrefix(alias, aliasPrefix))] {
			orphanBridges = append(orphanBridges, l)
		}
	}

	var (
		repairs []drivers.Repair
		errs    []error
	)
	var mixed *BackendConflictError
	if errors.As(d.ipt.OtherBackend, &mixed) {
		// Not the driver's to change: reported, so that the operator sees it.
		r := drivers.Repair{Object: "iptables " + mixed.Other + " rules", Action: "left alone", Reason: mixed.Error()}
		d.log.WarnContext(ctx, "reconcile", "repair", r.String())
		repairs = append(repairs, r)
	}
	remove := func(l netlink.Link, reason string) {
		if err := ctx.Err(); err != nil {
			errs = append(errs, err)
			return
		}
		name := l.Attrs().Name
		if err := d.h.LinkDel(l); err != nil && !errors.Is(err, syscall.ENODEV) {
			errs = append(errs, fmt.Errorf("bridge: reconcile: delete link %s: %w", name, err))
			return
		}
		r := drivers.Repair{Object: "link " + name, Action: "removed", Reason: reason}
		d.log.InfoContext(ctx, "reconcile", "repair", r.String())
		repairs = append(repairs, r)
	}
	byIndex := make(map[int]netlink.Link, len(links))
	for _, l := range links {
		byIndex[l.Attrs().Index] = l
	}
	var dying []netlink.Link
	for _, l := range links {
		a := l.Attrs()
		if l.Type() == "veth" && isHostVethName(a.Name) && ourBridges[a.MasterIndex] && !liveVeths[a.Name] {
			if peerElsewhere(l, byIndex) {
				dying = append(dying, l)
				continue
			}
			remove(l, "no live endpoint")
		}
	}
	// Host ends whose peer is in another namespace: that of a sandbox deleted just before this
	// start, which the kernel is still tearing down and which takes them with it, or (after a
	// crash) a namespace the Controller removed as a leftover before this Reconcile. Neither is
	// a leftover of ours unless it outstays the wait; the wait costs nothing when none is found.
	for _, l := range d.awaitGone(ctx, dying, dyingWait) {
		remove(l, "no live endpoint")
	}
	for _, l := range orphanBridges {
		remove(l, "no live network")
	}

	// Rules in the driver's chains for a bridge that no longer exists (a crash between deleting
	// a bridge and its rules), or that was just removed as an orphan.
	exists := make(map[string]bool, len(links))
	for _, l := range links {
		exists[l.Attrs().Name] = true
	}
	for _, l := range orphanBridges {
		exists[l.Attrs().Name] = false
	}
	if err := ctx.Err(); err != nil {
		errs = append(errs, err)
	} else if stale, err := d.fwb.staleNetworks(ctx, func(br string) bool { return exists[br] }); err != nil {
		errs = append(errs, fmt.Errorf("bridge: reconcile: firewall: %w", err))
	} else {
		for _, br := range stale {
			if _, orphan := exists[br]; orphan {
				continue // part of removing the orphan bridge, reported above
			}
			r := drivers.Repair{Object: string(d.fwb.kind()) + " rules of " + br, Action: "removed", Reason: "no such bridge"}
			d.log.InfoContext(ctx, "reconcile", "repair", r.String())
			repairs = append(repairs, r)
		}
	}

	// Rules of published ports of endpoints the driver does not know: Reconcile runs after
	// every live endpoint was re-created with CreateEndpoint.
	if err := ctx.Err(); err == nil {
		if stale, err := d.fwb.stalePorts(ctx, live.Endpoints); err != nil {
			errs = append(errs, fmt.Errorf("bridge: reconcile: published ports: %w", err))
		} else {
			for _, id := range stale {
				r := drivers.Repair{Object: "published port rules of endpoint " + id, Action: "removed", Reason: "no such endpoint"}
				d.log.InfoContext(ctx, "reconcile", "repair", r.String())
				repairs = append(repairs, r)
			}
		}
	}

	// What the other firewall backend left: a host that switched backends.
	if err := ctx.Err(); err == nil {
		other, err := d.fwb.removeOther(ctx)
		if err != nil {
			errs = append(errs, fmt.Errorf("bridge: reconcile: other firewall backend: %w", err))
		}
		for _, r := range other {
			d.log.InfoContext(ctx, "reconcile", "repair", r.String())
		}
		repairs = append(repairs, other...)
	}

	if len(orphanBridges) > 0 {
		d.mu.Lock()
		for _, l := range orphanBridges {
			nid := drivers.NetworkID(strings.TrimPrefix(l.Attrs().Alias, aliasPrefix))
			if n := d.networks[nid]; n != nil && d.busy[nid] == nil {
				delete(d.names, n.bridge)
				delete(d.networks, nid)
			}
		}
		d.mu.Unlock()
	}
	return repairs, errors.Join(errs...)
}

// dyingWait bounds how long Reconcile waits for the kernel to finish tearing down the namespace
// of a sandbox deleted just before the start (it takes about 100 ms, longer on a busy machine).
const dyingWait = 2 * time.Second

// peerElsewhere reports whether the peer of veth l is in another namespace than l, which
// byIndex (l's namespace's links) tells: a peer here names l as its own peer. The peer of a
// stale host end is elsewhere when a sandbox's namespace was deleted just before the start and
// the kernel, which tears namespaces down asynchronously, has not yet taken the pair with it.
// (Its namespace still has its ID here until the teardown starts, so the ID tells nothing.)
func peerElsewhere(l netlink.Link, byIndex map[int]netlink.Link) bool {
	a := l.Attrs()
	p := byIndex[a.ParentIndex]
	return a.NetNsID >= 0 || p == nil || p.Type() != "veth" || p.Attrs().ParentIndex != a.Index
}

// awaitGone waits, up to bound, for the links to vanish on their own, and returns those that
// are still there.
func (d *Driver) awaitGone(ctx context.Context, links []netlink.Link, bound time.Duration) []netlink.Link {
	deadline := time.Now().Add(bound)
	for len(links) > 0 {
		left := links[:0]
		for _, l := range links {
			if got, err := d.h.LinkByIndex(l.Attrs().Index); err == nil && got.Attrs().Name == l.Attrs().Name {
				left = append(left, l)
			}
		}
		links = left
		if len(links) == 0 || time.Now().After(deadline) || ctx.Err() != nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	return links
}
