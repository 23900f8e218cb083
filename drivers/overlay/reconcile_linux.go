package overlay

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/internal/netns"
)

var _ drivers.Reconciler = (*Driver)(nil)

// Reconcile implements drivers.Reconciler. It removes what a previous Controller left of this
// host's data planes that no live endpoint uses:
//
//   - a port (veth "ve" + 12 hex characters of the endpoint ID) on the bridge of a plane that a
//     restored endpoint took back, whose endpoint is not live: its endpoint was reclaimed by
//     another host while this one was away (past the registry's TTL), or deleted meanwhile.
//     Deleting the port takes its peer, the sandbox's interface, with it;
//   - a plane (namespace Config.RunDir/ov-<VNI>) that no live endpoint of this host took back:
//     its network is gone, or none of its endpoints here is left. Its ports, bridge and VXLAN
//     device go with the namespace.
//
// It reports one repair per port and per plane removed, and joins the errors of the removals
// that failed, going on after each. The Controller calls it once on start, after it restored
// the live endpoints (RestoreEndpoint adopts the planes they use).
func (d *Driver) Reconcile(ctx context.Context, live drivers.LiveState) ([]drivers.Repair, error) {
	entries, err := os.ReadDir(d.cfg.RunDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("overlay: reconcile: %w", err)
	}
	livePorts := make(map[string]bool, len(live.Endpoints))
	for _, id := range live.Endpoints {
		livePorts[portName(string(id))] = true
	}
	d.mu.Lock()
	byVNI := make(map[uint32]*ovNetwork, len(d.networks))
	for _, n := range d.networks {
		byVNI[n.vni] = n
	}
	d.mu.Unlock()
	var (
		repairs []drivers.Repair
		errs    []error
	)
	repaired := func(r drivers.Repair) {
		d.log.InfoContext(ctx, "reconcile", "repair", r.String())
		repairs = append(repairs, r)
	}
	for _, e := range entries {
		vni, err := strconv.ParseUint(strings.TrimPrefix(e.Name(), "ov-"), 10, 32)
		if !strings.HasPrefix(e.Name(), "ov-") || err != nil {
			continue
		}
		if err := ctx.Err(); err != nil {
			errs = append(errs, err)
			break
		}
		path := d.nsPath(uint32(vni))
		var p *plane
		if n := byVNI[uint32(vni)]; n != nil {
			n.planeMu.Lock()
			p = n.plane
			n.planeMu.Unlock()
		}
		if p == nil {
			if err := netns.Remove(path); err != nil {
				errs = append(errs, fmt.Errorf("overlay: reconcile: remove %s: %w", path, err))
				continue
			}
			repaired(drivers.Repair{Object: "overlay namespace " + e.Name(), Action: "removed", Reason: "no live endpoint of this host"})
			continue
		}
		links, err := p.h.LinkList()
		if err != nil {
			errs = append(errs, fmt.Errorf("overlay: reconcile: list links of %s: %w", path, err))
			continue
		}
		for _, l := range links {
			a := l.Attrs()
			if l.Type() != "veth" || a.MasterIndex != p.br || !strings.HasPrefix(a.Name, "ve") || livePorts[a.Name] {
				continue
			}
			if err := p.h.LinkDel(l); err != nil && !errors.Is(err, syscall.ENODEV) {
				errs = append(errs, fmt.Errorf("overlay: reconcile: delete %s in %s: %w", a.Name, path, err))
				continue
			}
			repaired(drivers.Repair{Object: "link " + a.Name + " of overlay namespace " + e.Name(), Action: "removed", Reason: "no live endpoint"})
		}
	}
	return repairs, errors.Join(errs...)
}
