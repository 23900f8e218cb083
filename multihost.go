package cnm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"slices"

	"github.com/cnmkit/cnm/cluster"
	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/drivers/overlay"
	"github.com/cnmkit/cnm/events"
	"github.com/cnmkit/cnm/internal/epobj"
	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/cnmkit/cnm/internal/netobj"
	"github.com/cnmkit/cnm/kvstore"
)

// The multi-host state lives in package cluster; this file wires it to the Controller:
// cluster.Networks on the Controller's networks, and the Controller's multi-host methods.

// Defaults for the global-scope fields of Config.
const (
	// DefaultHostTTL is how long a host stays in the registry after its last renewal.
	DefaultHostTTL = cluster.DefaultTTL
	// DefaultStoreTimeout bounds each call to the global store.
	DefaultStoreTimeout = cluster.DefaultTimeout
)

// initCluster registers this host in the cluster of Config.GlobalStore. It runs in New, before
// restore; the cluster's background work starts after restore.
func (c *Controller) initCluster(ctx context.Context) error {
	cfg := c.cfg
	if cfg.GlobalStore == nil {
		return nil
	}
	host, err := c.hostname()
	if err != nil {
		return err
	}
	cl, err := cluster.New(ctx, cluster.Config{
		Store: cfg.GlobalStore, Local: c.store, IPAM: cfg.GlobalIPAM, Host: host, NoAddressBlocks: cfg.NoGlobalAddressBlocks,
		TTL: cfg.HostTTL, Timeout: cfg.StoreTimeout, Networks: clusterSide{c},
		Publish: c.bus.Publish, Logger: c.log,
	})
	if err != nil {
		return fmt.Errorf("cnm: %w", err)
	}
	c.cluster = cl
	if c.run != nil && c.run != c.store {
		timeout := cfg.StoreTimeout
		if timeout <= 0 {
			timeout = DefaultStoreTimeout
		}
		c.behind = netobj.NewWriteBehind(c.run, cl.Store(), timeout, c.log)
	}
	return nil
}

// clusterSide is the Controller as cluster.Networks sees it.
type clusterSide struct{ c *Controller }

var _ cluster.Networks = clusterSide{}

// Adopt implements cluster.Networks: the network's driver creates what it needs here and its
// pools are adopted from the global IPAM; when that fails (its driver is not registered here,
// say) the network waits.
func (s clusterSide) Adopt(ctx context.Context, rec netobj.Record) {
	c := s.c
	c.mu.Lock()
	_, known := c.networks[rec.ID]
	w := c.waiting[rec.ID]
	c.mu.Unlock()
	if known || w != nil {
		return
	}
	n, err := c.restoreNetwork(ctx, rec)
	if err != nil {
		c.wait(ctx, rec, true, err)
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, known := c.networks[rec.ID]; known {
		return
	}
	c.networks[rec.ID] = n
	c.bus.Publish(events.Event{Kind: events.NetworkCreated, NetworkID: rec.ID, Network: rec.Name, Remote: true})
	if id, taken := c.netNames[rec.Name]; !taken || id == "" {
		if taken {
			// A create of the same name is running here: it will lose (the name key is
			// taken); NewNetwork points the name at this network then.
			return
		}
		c.netNames[rec.Name] = rec.ID
	} else {
		c.log.Warn("global network has the name of a local one: reachable here by ID only", "network", rec.Name, "id", rec.ID)
	}
}

// Forget implements cluster.Networks.
func (s clusterSide) Forget(ctx context.Context, id string) {
	c := s.c
	c.mu.Lock()
	n := c.networks[id]
	if w := c.waiting[id]; w != nil && !w.resuming {
		delete(c.waiting, id) // its records are gone with the network
	}
	c.mu.Unlock()
	if n == nil || !n.Global() {
		return
	}
	if err := n.Forget(ctx); err != nil {
		c.log.Error("global: forget network", "network", n.Name(), "err", err)
	}
}

// Known implements cluster.Networks.
func (s clusterSide) Known() []string {
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	var ids []string
	for id, n := range c.networks {
		if n.Global() {
			ids = append(ids, id)
		}
	}
	for id, w := range c.waiting {
		if w.global {
			ids = append(ids, id)
		}
	}
	return ids
}

// Network implements cluster.Networks.
func (s clusterSide) Network(id string) cluster.Network {
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if n := c.networks[id]; n != nil && n.Global() {
		return n
	}
	return nil
}

// Global implements cluster.Networks.
func (s clusterSide) Global() []cluster.Network {
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []cluster.Network
	for _, id := range slices.Sorted(maps.Keys(c.networks)) {
		if n := c.networks[id]; n.Global() {
			out = append(out, n)
		}
	}
	return out
}

// Allocators implements cluster.Networks.
func (s clusterSide) Allocators() map[string]drivers.NetworkAllocator {
	out := map[string]drivers.NetworkAllocator{}
	for _, name := range s.c.reg.Names() {
		if e, err := s.c.reg.Get(name); err == nil && e.Allocator != nil && e.Caps.DataScope == drivers.GlobalScope {
			out[name] = e.Allocator
		}
	}
	return out
}

// restoreGlobal adopts the global networks of the store and restores this host's endpoints on
// them: those whose own records are in the run store (runtime, the pairs of the run store
// whose network restore did not know), then those the global store alone has. It runs in
// restore, after the local networks; eps collects the joined endpoints.
func (c *Controller) restoreGlobal(ctx context.Context, eps map[string][]*epobj.Ep, runtime []kvstore.KVPair) (maxSeq uint64, err error) {
	recs, err := c.cluster.NetworkRecords(ctx)
	if err != nil {
		return 0, fmt.Errorf("cnm: restore: %w", err)
	}
	side := clusterSide{c}
	for _, rec := range recs {
		side.Adopt(ctx, rec)
	}
	own, err := c.cluster.OwnEndpoints(ctx)
	if err != nil {
		return 0, fmt.Errorf("cnm: restore: %w", err)
	}
	ownKeys := map[string]cluster.EndpointRecord{}
	for _, r := range own {
		ownKeys[r.Key] = r
	}
	restored := map[string]bool{}
	for _, p := range runtime {
		var rec epobj.Record
		if err := json.Unmarshal(p.Value, &rec); err != nil {
			continue // restore read it already
		}
		restored[p.Key] = true
		if _, ok := ownKeys[p.Key]; !ok && !c.cluster.Resumed() {
			// The global copy is missing, and this host was away past its lease: the other
			// hosts reclaimed the endpoint (or the copy was still queued when the process
			// stopped, which a restart within the lease puts back). Its address may be
			// another's by now.
			c.dropRecord(ctx, c.run, p.Key, "endpoint "+rec.Name, "reclaimed by the other hosts while this host was away")
			// A list that went back in time (a Consul server answering before it replayed
			// its log) may have missed a copy that is there: it goes with its endpoint.
			if err := c.cluster.Store().Delete(ctx, p.Key); err != nil && !errors.Is(err, kvstore.ErrKeyNotFound) {
				c.log.Warn("restore: delete global record", "key", p.Key, "err", err)
			}
			continue
		}
		n := c.networks[rec.NetworkID]
		if n == nil {
			if w := c.waiting[rec.NetworkID]; w != nil {
				w.eps = append(w.eps, waitingEp{key: p.Key, rev: p.Revision, rec: rec, runtime: true})
				maxSeq = max(maxSeq, rec.JoinSeq)
				continue
			}
			c.dropRecord(ctx, c.run, p.Key, "endpoint "+rec.Name, "its network is gone")
			if g, ok := ownKeys[p.Key]; ok {
				c.dropGlobalRecord(ctx, g.Key, g.Revision, "endpoint "+rec.Name, "its network is gone")
			}
			continue
		}
		// Its global copy is written again unless it is there (RestoreEndpoint).
		ep, err := n.RestoreEndpoint(ctx, rec, p.Revision, true)
		if err != nil {
			c.dropRecord(ctx, c.run, p.Key, "endpoint "+rec.Name, err.Error())
			if g, ok := ownKeys[p.Key]; ok {
				c.dropGlobalRecord(ctx, g.Key, g.Revision, "endpoint "+rec.Name, err.Error())
			}
			continue
		}
		maxSeq = max(maxSeq, rec.JoinSeq)
		if rec.SandboxID != "" {
			eps[rec.SandboxID] = append(eps[rec.SandboxID], ep)
		}
	}
	for _, r := range own {
		if restored[r.Key] {
			continue
		}
		n := c.networks[r.NetworkID]
		if n == nil {
			if w := c.waiting[r.NetworkID]; w != nil {
				w.eps = append(w.eps, waitingEp{key: r.Key, rev: r.Revision, rec: r.Record})
				maxSeq = max(maxSeq, r.JoinSeq)
				continue
			}
			c.dropGlobalRecord(ctx, r.Key, r.Revision, "endpoint "+r.Name, "its network is gone")
			continue
		}
		ep, err := n.RestoreEndpoint(ctx, r.Record, r.Revision, false)
		if err != nil {
			c.dropGlobalRecord(ctx, r.Key, r.Revision, "endpoint "+r.Name, err.Error())
			continue
		}
		maxSeq = max(maxSeq, r.JoinSeq)
		if r.SandboxID != "" {
			eps[r.SandboxID] = append(eps[r.SandboxID], ep)
		}
	}
	// Every address this host holds on the restored networks is requested again.
	c.cluster.SettleBlocks(ctx)
	return maxSeq, nil
}

func (c *Controller) dropGlobalRecord(ctx context.Context, key string, rev uint64, object, reason string) {
	if err := c.cluster.DropRecord(ctx, key, rev); err != nil {
		c.log.Error("restore: delete global record", "key", key, "err", err)
		return
	}
	c.repaired(drivers.Repair{Object: object, Action: "removed record", Reason: reason})
}

// Hosts returns the names of the hosts in the registry, sorted. It needs Config.GlobalStore.
func (c *Controller) Hosts(ctx context.Context) ([]string, error) {
	if err := errclass.CheckContext(ctx); err != nil {
		return nil, fmt.Errorf("cnm: hosts: %w", err)
	}
	end, err := c.begin()
	if err != nil {
		return nil, fmt.Errorf("cnm: hosts: %w", err)
	}
	defer end()
	if c.cluster == nil {
		return nil, fmt.Errorf("cnm: hosts: %w", &errclass.NotSupportedError{What: "a host registry without Config.GlobalStore"})
	}
	hosts, err := c.cluster.Hosts(ctx)
	if err != nil {
		return nil, fmt.Errorf("cnm: %w", err)
	}
	return hosts, nil
}

// Reclaimed returns what this Controller repaired in the global store: endpoints of departed
// hosts it reclaimed, and orphan addresses, pools and allocations it released.
func (c *Controller) Reclaimed() []drivers.Repair {
	if c.cluster == nil {
		return nil
	}
	return c.cluster.Reclaimed()
}

// Leave removes this host from the registry at once (its lease is revoked), for a host that
// leaves the cluster for good: the survivors reclaim its remaining endpoints on global
// networks right away, and it leaves the gossip cluster when the Controller started the gossip
// node (peers drop its entries at once). Close it afterwards.
func (c *Controller) Leave(ctx context.Context) error {
	if err := errclass.CheckContext(ctx); err != nil {
		return fmt.Errorf("cnm: leave: %w", err)
	}
	end, err := c.begin()
	if err != nil {
		return fmt.Errorf("cnm: leave: %w", err)
	}
	defer end()
	var errs []error
	if c.gossip != nil && c.gossip.own {
		if err := c.gossip.node.Leave(ctx); err != nil {
			errs = append(errs, fmt.Errorf("cnm: leave gossip: %w", err))
		}
	}
	if c.cluster != nil {
		if err := c.cluster.Leave(ctx); err != nil {
			errs = append(errs, fmt.Errorf("cnm: leave: %w", err))
		}
	}
	return errors.Join(errs...)
}

// registerOverlay registers the built-in overlay driver when there is a global store (its VNIs
// are claimed there) and Config.Drivers does not replace it.
func (c *Controller) registerOverlay() error {
	cfg := c.cfg
	if cfg.GlobalStore == nil {
		return nil
	}
	if _, replaced := cfg.Drivers[overlay.DriverType]; replaced {
		return nil
	}
	timeout := cfg.StoreTimeout
	if timeout == 0 {
		timeout = DefaultStoreTimeout
	}
	oc := cfg.Overlay
	oc.Store = kvstore.Bound(cfg.GlobalStore, timeout)
	oc.HostNetns, oc.RunDir, oc.Logger = c.machine.Path(), filepath.Join(cfg.RunDir, "overlay"), c.log
	ov, err := overlay.New(oc)
	if err != nil {
		return fmt.Errorf("cnm: overlay driver: %w", err)
	}
	if err := c.useGossip(overlay.DriverType, ov); err != nil {
		return err
	}
	if err := c.reg.Register(overlay.DriverType, ov); err != nil {
		return fmt.Errorf("cnm: %w", err)
	}
	return nil
}
