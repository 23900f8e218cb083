package cnm

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/internal/epobj"
	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/cnmkit/cnm/internal/netobj"
	"github.com/cnmkit/cnm/ipam"
	"github.com/cnmkit/cnm/kvstore"
	"github.com/cnmkit/cnm/network"
	"github.com/cnmkit/cnm/sandbox"
)

// A network whose driver or IPAM driver is not registered when the Controller starts (a
// third-party driver registered with RegisterDriver after New, say) is not dropped: its record
// and its endpoints' records stay in the store, untouched, and the network waits. Its name
// stays taken, its subnets stay reserved (when its IPAM driver is there), the interfaces of its
// joined endpoints stay in their sandboxes, and the drivers' reconcilers keep its kernel
// objects. RegisterDriver and RegisterIPAMDriver restore the networks that wait for them, with
// their endpoints, as New would have. A network whose restore failed for another reason (its
// driver refused it) waits the same way, and is tried again by the next registration or start.

// WaitingNetwork is a network kept in the store that this Controller could not restore yet,
// most often because its driver or IPAM driver is not registered.
type WaitingNetwork struct {
	ID         string
	Name       string
	Driver     string
	IPAMDriver string // "" is the default
	Scope      drivers.Scope
	// Endpoints is the number of this host's endpoint records kept for the network.
	Endpoints int
	// Reason says why the network is not restored.
	Reason string
}

// waitingNet is a network that could not be restored, with the records of its endpoints.
// Under Controller.mu.
type waitingNet struct {
	rec      netobj.Record
	global   bool
	reason   error
	eps      []waitingEp
	pools    []ipam.PoolID // pools held for it while it waits (local networks)
	resuming bool          // a registration is restoring it
}

// waitingEp is an endpoint record of a waiting network, as read from its store.
type waitingEp struct {
	key     string
	rev     uint64
	rec     epobj.Record
	runtime bool // read from the run store
}

// Waiting returns the networks kept in the store that wait for their driver or IPAM driver
// (or failed to restore), sorted by name.
func (c *Controller) Waiting() []WaitingNetwork {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]WaitingNetwork, 0, len(c.waiting))
	for _, w := range c.waiting {
		out = append(out, WaitingNetwork{
			ID: w.rec.ID, Name: w.rec.Name, Driver: w.rec.Driver, IPAMDriver: w.rec.IPAMDriver,
			Scope: w.rec.Scope, Endpoints: len(w.eps), Reason: w.reason.Error(),
		})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// wait keeps a network that could not be restored (err says why) for a later registration.
// A local network's subnets are held in its IPAM driver meanwhile, so that no other network
// takes them; a global network's are held in the global store already.
func (c *Controller) wait(ctx context.Context, rec netobj.Record, global bool, err error) {
	w := &waitingNet{rec: rec, global: global, reason: err}
	if !global {
		if a, aerr := c.ipamDriver(rec.IPAMDriver); aerr == nil {
			for _, fam := range []struct {
				cfgs []network.IPAMConfig
				v6   bool
			}{{rec.IPv4, false}, {rec.IPv6, true}} {
				for _, cfg := range fam.cfgs {
					pool, perr := a.RequestPool(ctx, ipam.PoolRequest{Space: ipam.LocalSpace, Subnet: cfg.Subnet, Range: cfg.IPRange, V6: fam.v6})
					if perr != nil {
						c.log.Warn("waiting network: hold subnet", "network", rec.Name, "subnet", cfg.Subnet, "err", perr)
						continue
					}
					w.pools = append(w.pools, pool.ID)
				}
			}
		}
	}
	c.mu.Lock()
	if old := c.waiting[rec.ID]; old != nil {
		w.eps, w.pools = old.eps, append(old.pools, w.pools...)
	}
	c.waiting[rec.ID] = w
	c.mu.Unlock()
	c.log.Warn("network waits", "network", rec.Name, "driver", rec.Driver, "reason", err)
}

// waitingFor returns the waiting network whose name or ID is key; the caller holds c.mu.
func (c *Controller) waitingLocked(key string) *waitingNet {
	for _, w := range c.waiting {
		if w.rec.Name == key || w.rec.ID == key {
			return w
		}
	}
	return nil
}

// waitingErr is the error for an operation on a waiting network.
func waitingErr(w *waitingNet) error {
	return &errclass.UnavailableError{What: "network " + w.rec.Name, Err: fmt.Errorf("not restored, its records are kept: %w", w.reason)}
}

// heldInterfaces returns, by sandbox ID, the interfaces of the joined endpoints of waiting
// networks: restore keeps them in their sandboxes until their networks are restored.
func (c *Controller) heldInterfaces() map[string][]heldIface {
	out := map[string][]heldIface{}
	for _, w := range c.waiting {
		for _, e := range w.eps {
			if e.rec.SandboxID != "" && e.rec.IfName != "" {
				out[e.rec.SandboxID] = append(out[e.rec.SandboxID], heldIface{seq: e.rec.JoinSeq, iface: interfaceOf(e.rec)})
			}
		}
	}
	return out
}

// heldIface is an interface a sandbox keeps for an endpoint, with the endpoint's join order.
type heldIface struct {
	seq   uint64
	iface sandbox.Interface
}

func interfaceOf(r epobj.Record) sandbox.Interface {
	mac, _ := parseMAC(r.MAC)
	return sandbox.Interface{
		Name: r.IfName, MAC: mac, IPv4: r.IPv4, IPv6: r.IPv6,
		Gateway: r.Gateway, GatewayIPv6: r.GatewayIPv6, Routes: r.Routes,
	}
}

// resume restores the waiting networks whose drivers are all registered now. It returns the
// failures, each naming its network; a network that fails keeps waiting.
func (c *Controller) resume(ctx context.Context) error {
	c.mu.Lock()
	var ready []*waitingNet
	for _, w := range c.waiting {
		if w.resuming {
			continue
		}
		if _, err := c.reg.Get(w.rec.Driver); err != nil {
			continue
		}
		if _, ok := c.ipams[ipamName(w.rec.IPAMDriver)]; !ok && !(w.global && ipamName(w.rec.IPAMDriver) == DefaultIPAM) {
			continue
		}
		w.resuming = true
		ready = append(ready, w)
	}
	c.mu.Unlock()
	sort.Slice(ready, func(i, j int) bool { return ready[i].rec.Name < ready[j].rec.Name })
	var errs []error
	for _, w := range ready {
		if err := c.resumeNetwork(ctx, w); err != nil {
			errs = append(errs, err)
		}
	}
	if len(ready) > 0 {
		c.dns.refresh() // restoring publishes no event: the resolver reads the state again
	}
	return errors.Join(errs...)
}

func ipamName(name string) string {
	if name == "" {
		return DefaultIPAM
	}
	return name
}

// resumeNetwork restores one waiting network and its endpoints, and puts the joined ones back
// in their sandboxes.
func (c *Controller) resumeNetwork(ctx context.Context, w *waitingNet) error {
	n, err := c.restoreNetwork(ctx, w.rec)
	if err != nil {
		c.mu.Lock()
		w.resuming, w.reason = false, err
		c.mu.Unlock()
		return fmt.Errorf("network %s stays waiting: %w", w.rec.Name, err)
	}
	type joined struct {
		ep *epobj.Ep
		r  epobj.Record
	}
	var js []joined
	for _, e := range w.eps {
		ep, err := n.RestoreEndpoint(ctx, e.rec, e.rev, e.runtime)
		if err != nil {
			c.dropWaitingRecord(ctx, w, e, err.Error())
			continue
		}
		if e.rec.SandboxID != "" {
			js = append(js, joined{ep, e.rec})
		}
	}
	c.mu.Lock()
	delete(c.waiting, w.rec.ID)
	c.networks[n.ID()] = n
	if id, taken := c.netNames[n.Name()]; !taken || id == "" || id == n.ID() {
		c.netNames[n.Name()] = n.ID()
	} else {
		c.log.Warn("restored network has the name of another: reachable by ID only", "network", n.Name(), "id", n.ID())
	}
	c.mu.Unlock()
	for _, j := range js {
		c.mu.Lock()
		sb := c.sandboxes[j.r.SandboxID]
		if sb != nil && sb.deleting {
			sb = nil
		}
		c.mu.Unlock()
		switch {
		case sb == nil:
			if _, err := c.store.Get(ctx, sandboxPrefix+j.r.SandboxID); err == nil {
				continue // kept for the next start, which restores the sandbox and its endpoints
			}
			c.loseEndpoint(ctx, j.ep, "sandbox "+j.r.SandboxID+" is gone")
		case slices.ContainsFunc(sb.ns.Interfaces(), func(i sandbox.Interface) bool { return i.Name == j.r.IfName }):
			c.rejoin(ctx, j.ep, sb.ns)
		default:
			c.settleDropped(ctx, j.ep, j.r.SandboxID, j.r.IfName)
		}
	}
	c.gw.restore(n.Eps())
	c.repaired(drivers.Repair{Object: "network " + n.Name(), Action: "restored", Reason: fmt.Sprintf("driver %s and IPAM driver %s registered; %d endpoints", n.Driver(), ipamName(w.rec.IPAMDriver), len(n.Eps()))})
	return nil
}

// dropWaitingRecord deletes the record of an endpoint of a waiting network that cannot be
// restored (its address is another's, its driver refused it), from the store it came from.
func (c *Controller) dropWaitingRecord(ctx context.Context, w *waitingNet, e waitingEp, reason string) {
	if w.global && c.cluster != nil && !e.runtime {
		c.dropGlobalRecord(ctx, e.key, e.rev, "endpoint "+e.rec.Name, reason)
		return
	}
	if w.global && c.cluster != nil {
		// Its own record is in the run store; its global copy, if written, goes first.
		if err := c.cluster.Store().Delete(ctx, e.key); err != nil && !errors.Is(err, kvstore.ErrKeyNotFound) {
			c.log.Error("restore: delete global record", "key", e.key, "err", err)
			return
		}
	}
	c.dropRecord(ctx, c.storeOf(e.runtime), e.key, "endpoint "+e.rec.Name, reason)
}

// waitingLive adds the waiting networks and their joined endpoints to live: a driver's
// reconciler must keep their kernel objects.
func (c *Controller) waitingLive(live *drivers.LiveState) {
	for _, id := range slices.Sorted(maps.Keys(c.waiting)) {
		w := c.waiting[id]
		live.Networks = append(live.Networks, drivers.NetworkID(id))
		for _, e := range w.eps {
			if e.rec.SandboxID != "" {
				live.Endpoints = append(live.Endpoints, drivers.EndpointID(e.rec.ID))
			}
		}
	}
}
