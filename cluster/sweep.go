package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"maps"
	"net/netip"
	"slices"
	"time"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/events"
	"github.com/cnmkit/cnm/internal/epobj"
	"github.com/cnmkit/cnm/internal/netobj"
	"github.com/cnmkit/cnm/ipam"
	"github.com/cnmkit/cnm/kvstore"
	"github.com/cnmkit/cnm/network"
)

// sweep reclaims the endpoints of every host that is not in the registry, removes delete
// fences left by such hosts, and frees orphan addresses and pools. Only the registry's first
// host (by name) sweeps: the others' reads would be for nothing.
func (c *Cluster) sweep(ctx context.Context) {
	hosts, err := c.hostRecords(ctx)
	if err != nil || len(hosts) == 0 || slices.Min(slices.Collect(maps.Keys(hosts))) != c.cfg.Host {
		return
	}
	gone := map[string]bool{}
	pairs, err := c.store.List(ctx, epobj.KeyPrefix)
	if err != nil {
		return
	}
	for _, p := range pairs {
		var rec epobj.Record
		if json.Unmarshal(p.Value, &rec) == nil && rec.Host != "" && rec.Host != c.cfg.Host {
			if _, ok := hosts[rec.Host]; !ok {
				gone[rec.Host] = true
			}
		}
	}
	if len(gone) > 0 {
		c.reclaim(ctx, gone, pairs, hosts)
	}
	// The records just read serve the orphan sweep too: those reclaimed above had their
	// addresses freed already, so counting them live changes nothing.
	c.sweepOrphans(ctx, pairs, hosts)
	fences, err := c.store.List(ctx, DeletingKeyPrefix)
	if err != nil {
		return
	}
	for _, f := range fences {
		if _, ok := hosts[string(f.Value)]; !ok {
			// Only if its host is still not registered when the delete commits (as above).
			_, _ = c.store.Batch(ctx, []kvstore.Op{
				{Key: f.Key, Check: true, PrevRevision: f.Revision},
				{Key: hostKeyPrefix + string(f.Value), Check: true},
			})
		}
	}
}

// orphanGrace is how long an address or pool must stay without a record before the sweep
// frees it: far longer than any create takes between its allocation and its record.
var orphanGrace = 10 * time.Second

// globalLister is what the orphan sweep needs of the global IPAM; ipam.Global has it.
type globalLister interface {
	Pools(ctx context.Context) ([]ipam.Pool, error)
	Addresses(ctx context.Context, id ipam.PoolID) ([]netip.Addr, error)
	ipam.Allocator
}

// sweepOrphans frees what the global IPAM holds that no record refers to: an address whose
// release failed (the store went away after its endpoint record was deleted), or was allocated
// by a write that timed out yet took effect; a pool left by a network create that failed the
// same way. Something in flight (allocated, its record not yet written) looks the same for a
// moment, so an orphan is freed only when sweeps find it for orphanGrace. Only the registry's
// first host (by name) sweeps, so that hosts do not race.
func (c *Cluster) sweepOrphans(ctx context.Context, eps []kvstore.KVPair, hosts map[string]hostRecord) {
	nets, err := c.store.List(ctx, netobj.KeyPrefix)
	if err != nil {
		return
	}
	live := map[ipam.PoolID]map[netip.Addr]bool{}
	subnets := map[string][]network.IPAMConfig{} // network ID -> its subnets
	for _, p := range nets {
		var rec netobj.Record
		if json.Unmarshal(p.Value, &rec) != nil {
			return // unreadable: sweep nothing rather than free what it holds
		}
		subnets[rec.ID] = nil // known, even without subnets
		for _, cfg := range append(slices.Clone(rec.IPv4), rec.IPv6...) {
			m := map[netip.Addr]bool{cfg.Gateway: true}
			for _, a := range cfg.AuxAddresses {
				m[a] = true
			}
			live[ipam.MakePoolID(ipam.GlobalSpace, cfg.Subnet)] = m
			subnets[rec.ID] = append(subnets[rec.ID], cfg)
		}
	}
	for _, p := range eps {
		var rec epobj.Record
		if json.Unmarshal(p.Value, &rec) != nil {
			return
		}
		for _, a := range []netip.Prefix{rec.IPv4, rec.IPv6} {
			if !a.IsValid() {
				continue
			}
			for _, cfg := range subnets[rec.NetworkID] {
				if cfg.Subnet.Contains(a.Addr()) {
					live[ipam.MakePoolID(ipam.GlobalSpace, cfg.Subnet)][a.Addr()] = true
				}
			}
		}
	}
	next := map[string]time.Time{}
	now := time.Now()
	defer func() { c.suspects = next }()
	// due reports whether the orphan key was seen long enough; it carries it to the next sweep.
	due := func(key string) bool {
		first, ok := c.suspects[key]
		if !ok {
			first = now
		}
		if now.Sub(first) >= orphanGrace {
			return true
		}
		next[key] = first
		return false
	}
	c.sweepAllocations(ctx, subnets, due)
	l, ok := c.ipam.(globalLister)
	if !ok {
		return
	}
	pools, err := l.Pools(ctx)
	if err != nil {
		return
	}
	for _, p := range pools {
		used, ok := live[p.ID]
		if !ok {
			if !due("pool " + string(p.ID)) {
				continue
			}
			if err := l.ReleasePool(ctx, p.ID); err != nil {
				c.log.Warn("global: release orphan pool", "pool", p.ID, "err", err)
				continue
			}
			c.noteGlobalRepair(drivers.Repair{Object: "pool " + p.Subnet.String(), Action: "released", Reason: "no network refers to it"})
			continue
		}
		c.sweepBlocks(ctx, p.ID, used, hosts, due)
		addrs, err := l.Addresses(ctx, p.ID)
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if used[a] {
				continue
			}
			if !due(string(p.ID) + " " + a.String()) {
				continue
			}
			if err := l.ReleaseAddress(ctx, p.ID, a); err != nil {
				c.log.Warn("global: release orphan address", "pool", p.ID, "address", a, "err", err)
				continue
			}
			c.noteGlobalRepair(drivers.Repair{Object: "address " + a.String(), Action: "released", Reason: "no endpoint, gateway or aux address holds it"})
		}
	}
}

// blockLister is what the sweep needs of a global IPAM with per-host blocks; ipam.Global has it.
type blockLister interface {
	Blocks(ctx context.Context, id ipam.PoolID) ([]ipam.Block, error)
	ReleaseBlock(ctx context.Context, id ipam.PoolID, prefix netip.Prefix, host string) (bool, error)
}

// sweepBlocks gives back the address blocks of pool id whose host is not in the registry and
// in which no record holds an address (the host's endpoints were reclaimed first), once due
// says they have been seen so long enough.
func (c *Cluster) sweepBlocks(ctx context.Context, id ipam.PoolID, used map[netip.Addr]bool, hosts map[string]hostRecord, due func(string) bool) {
	l, ok := c.ipam.(blockLister)
	if !ok {
		return
	}
	blocks, err := l.Blocks(ctx, id)
	if err != nil {
		return
	}
	for _, b := range blocks {
		if _, live := hosts[b.Host]; live || slices.ContainsFunc(slices.Collect(maps.Keys(used)), b.Prefix.Contains) {
			continue
		}
		if !due("block " + string(id) + " " + b.Prefix.String() + " " + b.Host) {
			continue
		}
		released, err := l.ReleaseBlock(ctx, id, b.Prefix, b.Host)
		if err != nil {
			c.log.Warn("global: release block of departed host", "pool", id, "block", b.Prefix, "host", b.Host, "err", err)
			continue
		}
		if released {
			c.noteGlobalRepair(drivers.Repair{Object: "address block " + b.Prefix.String() + " of host " + b.Host, Action: "released", Reason: "its host left the registry"})
		}
	}
}

// sweepAllocations frees the allocations of global-scope drivers (drivers.NetworkAllocator)
// whose network has no record in the global store (known), once due says the orphan has been
// seen long enough: a crash between allocating and storing the record, or a free that failed.
func (c *Cluster) sweepAllocations(ctx context.Context, known map[string][]network.IPAMConfig, due func(string) bool) {
	allocators := c.cfg.Networks.Allocators()
	for _, name := range slices.Sorted(maps.Keys(allocators)) {
		a := allocators[name]
		ids, err := a.Allocated(ctx)
		if err != nil {
			c.log.Warn("global: list allocations", "driver", name, "err", err)
			continue
		}
		for _, id := range ids {
			if _, ok := known[string(id)]; ok || !due("allocation "+name+" "+string(id)) {
				continue
			}
			if err := a.FreeNetwork(ctx, drivers.FreeNetworkRequest{NetworkID: id}); err != nil {
				c.log.Warn("global: free orphan allocation", "driver", name, "network", id, "err", err)
				continue
			}
			c.noteGlobalRepair(drivers.Repair{Object: "allocation of network " + id.Short() + " (driver " + name + ")", Action: "released", Reason: "no network record refers to it"})
		}
	}
}

func (c *Cluster) noteGlobalRepair(r drivers.Repair) {
	c.log.Info("global: repaired", "object", r.Object, "action", r.Action, "reason", r.Reason)
	c.mu.Lock()
	c.reclaimed = append(c.reclaimed, r)
	c.mu.Unlock()
	c.publish(events.Event{Kind: events.Repaired, Repair: events.Repair{Object: r.Object, Action: r.Action, Reason: r.Reason}})
}

// reclaimHosts deletes the endpoint records of the hosts in gone and frees their addresses in
// the global IPAM. Several survivors may run it at once: each record is reclaimed by one.
func (c *Cluster) reclaimHosts(ctx context.Context, gone map[string]bool) {
	pairs, err := c.store.List(ctx, epobj.KeyPrefix)
	if err != nil {
		c.log.Warn("global: reclaim: list endpoints", "err", err)
		return
	}
	// A host that registered again since is not gone.
	hosts, err := c.hostRecords(ctx)
	if err != nil {
		return
	}
	c.reclaim(ctx, gone, pairs, hosts)
}

// reclaim reclaims the records among pairs of the hosts in gone that are not in hosts.
func (c *Cluster) reclaim(ctx context.Context, gone map[string]bool, pairs []kvstore.KVPair, hosts map[string]hostRecord) {
	for _, p := range pairs {
		var rec epobj.Record
		if json.Unmarshal(p.Value, &rec) != nil || !gone[rec.Host] {
			continue
		}
		if _, back := hosts[rec.Host]; back {
			continue
		}
		n := c.cfg.Networks.Network(rec.NetworkID)
		if n == nil {
			continue
		}
		// The record goes at its revision (of the survivors reclaiming at once, one does),
		// and only if its host is still not registered when the delete commits: the
		// registry read that named it gone may have gone back in time (a Consul server
		// answering before it replayed its log) and missed a live host.
		_, err := c.store.Batch(ctx, []kvstore.Op{
			{Key: p.Key, Check: true, PrevRevision: p.Revision},
			{Key: hostKeyPrefix + rec.Host, Check: true},
		})
		switch {
		case errors.Is(err, kvstore.ErrKeyModified) || errors.Is(err, kvstore.ErrKeyNotFound):
			continue // reclaimed by another survivor, or written again by its host
		case errors.Is(err, kvstore.ErrKeyExists):
			continue // its host is registered
		case err != nil:
			c.log.Warn("global: reclaim endpoint", "endpoint", rec.Name, "host", rec.Host, "err", err)
			continue
		}
		c.noteGlobalRepair(drivers.Repair{Object: "endpoint " + rec.Name + " of host " + rec.Host, Action: "reclaimed", Reason: "its host left the registry"})
		if err := n.ReleaseReclaimed(ctx, rec); err != nil {
			c.log.Warn("global: reclaim endpoint", "endpoint", rec.Name, "host", rec.Host, "err", err)
		}
	}
}

// Reclaimed returns what this host repaired in the global store: endpoints of departed
// hosts it reclaimed, and orphan addresses and pools it released.
func (c *Cluster) Reclaimed() []drivers.Repair {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.reclaimed)
}
