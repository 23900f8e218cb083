package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/events"
	"github.com/cnmkit/cnm/internal/epobj"
	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/cnmkit/cnm/ipam"
	"github.com/cnmkit/cnm/kvstore"
)

// hostRecord is a host's entry in the registry, bound to its lease.
type hostRecord struct {
	Name    string    `json:"name"`
	ID      string    `json:"id"` // random, kept in the local store: the same host across restarts
	Started time.Time `json:"started"`
}

func (c *Cluster) localHostID(ctx context.Context) (string, error) {
	if kv, err := c.cfg.Local.Get(ctx, hostIDKey); err == nil {
		return string(kv.Value), nil
	} else if !errors.Is(err, kvstore.ErrKeyNotFound) {
		return "", fmt.Errorf("cluster: host id: %w", err)
	}
	var b [16]byte
	rand.Read(b[:])
	id := hex.EncodeToString(b[:])
	if _, err := c.cfg.Local.AtomicPut(ctx, hostIDKey, []byte(id), 0); err != nil {
		return "", fmt.Errorf("cluster: host id: %w", err)
	}
	return id, nil
}

// register puts this host in the registry under its name, bound to a lease the store keeps
// alive. A live entry of another host with the same name is refused; one of this host's
// (a restart before the old lease ran out) is taken over.
func (c *Cluster) register(ctx context.Context) error {
	leaser, ok := c.raw.(kvstore.Leaser)
	if !ok {
		return fmt.Errorf("cluster: host registry: %w", &errclass.NotSupportedError{What: "a global store without leases (kvstore.Leaser)"})
	}
	bctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	lease, err := leaser.Grant(bctx, c.cfg.TTL)
	if err != nil {
		return fmt.Errorf("cluster: host registry: %w", kvstore.Unavailable(bctx, ctx, err))
	}
	key := hostKeyPrefix + c.cfg.Host
	b, _ := json.Marshal(hostRecord{Name: c.cfg.Host, ID: c.hostID, Started: time.Now().UTC()})
	took := false
	for attempt := 0; ; attempt++ {
		_, err = lease.AtomicPut(bctx, key, b, 0)
		if !errors.Is(err, kvstore.ErrKeyExists) || attempt > 3 {
			break
		}
		kv, gerr := c.store.Get(ctx, key)
		if errors.Is(gerr, kvstore.ErrKeyNotFound) {
			continue // it just expired
		}
		if gerr != nil {
			err = gerr
			break
		}
		var other hostRecord
		_ = json.Unmarshal(kv.Value, &other)
		if other.ID != c.hostID {
			_ = lease.Revoke(context.WithoutCancel(ctx))
			return fmt.Errorf("cluster: host registry: %w: a live host with id %s has registered that name since %s; give each host a unique Config.Hostname",
				&errclass.AlreadyExistsError{Kind: "host", Name: c.cfg.Host}, shortHostID(other.ID), other.Started.Format(time.RFC3339))
		}
		// This host's own entry, from before a restart: delete it and register anew.
		if derr := c.store.AtomicDelete(ctx, key, kv.Revision); derr != nil && !errors.Is(derr, kvstore.ErrKeyNotFound) && !errors.Is(derr, kvstore.ErrKeyModified) {
			err = derr
			break
		}
		took = true
	}
	if err != nil {
		_ = lease.Revoke(context.WithoutCancel(ctx))
		return fmt.Errorf("cluster: host registry: %s: %w", c.cfg.Host, kvstore.Unavailable(bctx, ctx, err))
	}
	c.mu.Lock()
	if !c.registeredOnce {
		c.registeredOnce, c.resumed = true, took
	}
	c.lease = lease
	c.mu.Unlock()
	c.log.Info("registered host", "host", c.cfg.Host, "ttl", lease.TTL())
	return nil
}

// Resumed says whether New took over this host's own live entry in the registry (a restart
// before its lease ran out): no other host can have reclaimed its endpoints since its last
// registration. False after a first start, or a restart after the lease ran out.
func (c *Cluster) Resumed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.resumed
}

func shortHostID(id string) string { return id[:min(8, len(id))] }

// Hosts returns the names of the hosts in the registry, sorted.
func (c *Cluster) Hosts(ctx context.Context) ([]string, error) {
	recs, err := c.hostRecords(ctx)
	if err != nil {
		return nil, err
	}
	return slices.Sorted(maps.Keys(recs)), nil
}

func (c *Cluster) hostRecords(ctx context.Context) (map[string]hostRecord, error) {
	pairs, err := c.store.List(ctx, hostKeyPrefix)
	if err != nil {
		return nil, fmt.Errorf("cluster: hosts: %w", err)
	}
	out := make(map[string]hostRecord, len(pairs))
	for _, p := range pairs {
		var r hostRecord
		if err := json.Unmarshal(p.Value, &r); err == nil {
			out[strings.TrimPrefix(p.Key, hostKeyPrefix)] = r
		}
	}
	return out, nil
}

// restoreGlobal reads the global networks and this host's endpoints on them from the global

// Start starts the background loops: the watch of global networks, the watch of the registry
// with the lease keeper, the reclaim of hosts that are gone and the sweep, and the cleanup of
// writes of unknown outcome. Stop or Leave ends them.
func (c *Cluster) Start() {
	ctx, cancel := context.WithCancel(context.Background())
	c.mu.Lock()
	c.cancel = cancel
	c.mu.Unlock()
	loops := []func(context.Context){c.watchNetworks, c.watchHosts, c.cleanUncertain}
	finished := make(chan struct{}, len(loops))
	for _, loop := range loops {
		go func() {
			defer func() { finished <- struct{}{} }()
			loop(ctx)
		}()
	}
	go func() {
		for range loops {
			<-finished
		}
		close(c.done)
	}()
}

// Stop ends the background loops and lets the host's lease run out rather than revoking it:
// the host's endpoints stay in the store for its next start, and if it does not come back
// within the TTL, the survivors reclaim them. Stop is idempotent.
func (c *Cluster) Stop() {
	c.stopLoops()
	c.mu.Lock()
	lease := c.lease
	c.lease = nil
	c.mu.Unlock()
	if lease != nil {
		lease.Abandon()
	}
}

// stopLoops ends the background loops, if they run, and waits for them.
func (c *Cluster) stopLoops() {
	c.mu.Lock()
	cancel := c.cancel
	c.cancel = nil
	c.mu.Unlock()
	if cancel != nil {
		cancel()
		<-c.done
	}
}

// Leave removes this host from the registry at once (its lease is revoked), for a host that
// leaves the cluster for good: the survivors reclaim its remaining endpoints on global
// networks right away. The background loops end; Stop afterwards only lets go.
func (c *Cluster) Leave(ctx context.Context) error {
	c.stopLoops()
	c.mu.Lock()
	lease := c.lease
	c.lease = nil
	c.mu.Unlock()
	if lease == nil {
		return nil
	}
	if err := lease.Revoke(ctx); err != nil {
		return fmt.Errorf("cluster: leave: %w", err)
	}
	return nil
}

// seedHosts records the hosts in the registry when the Controller starts: they did not join
// (Hosts lists them). When the store does not answer, watchHosts records them later.
func (c *Cluster) seedHosts(ctx context.Context) {
	recs, err := c.hostRecords(ctx)
	if err != nil {
		c.log.Warn("global: list hosts", "err", err)
		return
	}
	c.hosts = make(map[string]bool, len(recs))
	for name := range recs {
		c.hosts[name] = true
	}
}

// syncHosts lists the registry and publishes HostJoined and HostLeft for what changed since
// the hosts were last seen: watchHosts runs it each time it starts a watch, so that what
// happened while it did not watch is published too.
func (c *Cluster) syncHosts(ctx context.Context) {
	if c.hosts == nil {
		c.seedHosts(ctx)
		return
	}
	recs, err := c.hostRecords(ctx)
	if err != nil {
		return
	}
	for _, name := range slices.Sorted(maps.Keys(c.hosts)) {
		if _, ok := recs[name]; !ok {
			c.hostSeen(name, false)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(recs)) {
		c.hostSeen(name, true)
	}
}

// hostSeen records that host name is in the registry (present) or not, and publishes
// HostJoined or HostLeft when that is news.
func (c *Cluster) hostSeen(name string, present bool) {
	if c.hosts == nil || c.hosts[name] == present {
		return
	}
	kind := events.HostLeft
	if present {
		kind = events.HostJoined
		c.hosts[name] = true
	} else {
		delete(c.hosts, name)
	}
	c.log.Info("global: registry", "host", name, "event", kind.String())
	c.publish(events.Event{Kind: kind, Host: name})
}

// watchHosts keeps this host registered (registering again after its lease ended, as after an
// outage longer than the TTL) and reclaims the endpoints of hosts that left the registry: on
// their delete event, and in a sweep every TTL that also catches what happened while no
// host watched.
func (c *Cluster) watchHosts(ctx context.Context) {
	sweep := time.NewTicker(min(c.cfg.TTL, 5*time.Second))
	reassertAgain := 0
	blocksPending := false // the address blocks are suspended until reconciled
	defer sweep.Stop()
	// A host whose entry goes is reclaimed after reclaimGrace, if it has not registered again
	// meanwhile: a host restarting before its lease ran out takes its entry over by deleting
	// and writing it, and must not lose its endpoints in between.
	departed := map[string]time.Time{}
	grace := time.NewTicker(reclaimGrace / 4)
	defer grace.Stop()
	c.sweep(ctx)
	for attempt := 0; ctx.Err() == nil; attempt++ {
		ch, err := c.raw.Watch(ctx, hostKeyPrefix, 0)
		if err != nil {
			if !retryWait(ctx, attempt) {
				return
			}
			continue
		}
		attempt = 0
		c.syncHosts(ctx) // after the watch started: nothing falls between the two
		c.mu.Lock()
		lease := c.lease
		c.mu.Unlock()
		var leaseDone <-chan struct{}
		if lease != nil {
			leaseDone = lease.Done()
		}
	events:
		for {
			select {
			case ev, ok := <-ch:
				if !ok {
					break events
				}
				name := strings.TrimPrefix(ev.Pair.Key, hostKeyPrefix)
				switch ev.Type {
				case kvstore.EventPut:
					c.hostSeen(name, true)
				case kvstore.EventDelete:
					c.hostSeen(name, false)
					if name != c.cfg.Host {
						departed[name] = time.Now()
					}
				}
			case <-leaseDone:
				c.log.Warn("global: host lease ended; registering again", "host", c.cfg.Host)
				leaseDone = nil
				// Its address blocks may be given back by the others once they have
				// reclaimed its endpoints: no more addresses from them until reconciled.
				c.suspendBlocks()
				blocksPending = true
				for i := 0; ctx.Err() == nil; i++ {
					if err := c.register(ctx); err == nil {
						c.mu.Lock()
						leaseDone = c.lease.Done()
						c.mu.Unlock()
						// Once now, and again at the next sweeps: a survivor's reclaim
						// that started before this registration may still land.
						if c.reconcileBlocks(ctx) {
							c.resumeBlocks()
							blocksPending = false
						}
						c.reassert(ctx)
						reassertAgain = 3
						break
					} else if errors.Is(err, errclass.ErrAlreadyExists) {
						c.log.Error("global: host name taken by another host while this one was away", "err", err)
						break
					}
					if !retryWait(ctx, i) {
						return
					}
				}
			case now := <-grace.C:
				gone := map[string]bool{}
				for name, since := range departed {
					if now.Sub(since) >= reclaimGrace {
						gone[name] = true
						delete(departed, name)
					}
				}
				if len(gone) > 0 {
					c.reclaimHosts(ctx, gone) // skips the hosts registered again
				}
			case <-sweep.C:
				c.releaseEmptyBlocks(ctx)
				if blocksPending && c.registered() && c.reconcileBlocks(ctx) {
					c.resumeBlocks()
					blocksPending = false
				}
				if reassertAgain > 0 {
					reassertAgain--
					c.reassert(ctx)
				}
				c.sweep(ctx)
			case <-ctx.Done():
				return
			}
		}
	}
}

// reclaimGrace is how long after a host's entry went its endpoints are reclaimed: long enough
// for a restarting host's takeover (delete, then write) to complete.
var reclaimGrace = 2 * time.Second

// blockReconciler is what reconcileBlocks needs of a global IPAM with per-host blocks;
// ipam.Global has it.
type blockReconciler interface {
	ReconcileBlocks(ctx context.Context, id ipam.PoolID, live []netip.Addr) error
	SuspendBlocks()
	ResumeBlocks()
}

// emptyBlockReleaser is what releaseEmptyBlocks needs of a global IPAM with per-host blocks;
// ipam.Global has it.
type emptyBlockReleaser interface {
	ReleaseEmptyBlocks(ctx context.Context) error
}

// releaseEmptyBlocks gives back this host's address blocks that a release or a claim the
// store did not answer left with no address in use, if the IPAM has blocks. Each host does
// its own: only it knows which addresses of its blocks it gave out (their records may still
// be queued behind Connect).
func (c *Cluster) releaseEmptyBlocks(ctx context.Context) {
	if r, ok := c.ipam.(emptyBlockReleaser); ok {
		if err := r.ReleaseEmptyBlocks(ctx); err != nil {
			c.log.Warn("global: give back empty address blocks", "err", err)
		}
	}
}

// blockSettler is what SettleBlocks needs of a global IPAM with per-host blocks; ipam.Global
// has it.
type blockSettler interface {
	SettleBlocks(ctx context.Context, id ipam.PoolID) error
}

// SettleBlocks is called once the Controller restored the endpoints of the global networks
// known here: this host's address blocks in their pools that none of its addresses is in are
// given back at the next sweep tick, unless an address goes to them first. Pools of networks
// still waiting for their driver are left alone.
func (c *Cluster) SettleBlocks(ctx context.Context) {
	r, ok := c.ipam.(blockSettler)
	if !ok {
		return
	}
	for _, n := range c.cfg.Networks.Global() {
		rec := n.Record()
		for _, cfg := range append(slices.Clone(rec.IPv4), rec.IPv6...) {
			if err := r.SettleBlocks(ctx, ipam.MakePoolID(ipam.GlobalSpace, cfg.Subnet)); err != nil {
				c.log.Warn("global: settle address blocks", "network", rec.Name, "subnet", cfg.Subnet, "err", err)
			}
		}
	}
}

// suspendBlocks stops the allocation from this host's address blocks, if the IPAM has them.
func (c *Cluster) suspendBlocks() {
	if r, ok := c.ipam.(blockReconciler); ok {
		r.SuspendBlocks()
	}
}

// resumeBlocks ends suspendBlocks.
func (c *Cluster) resumeBlocks() {
	if r, ok := c.ipam.(blockReconciler); ok {
		r.ResumeBlocks()
	}
}

// registered reports whether this host holds a lease in the registry.
func (c *Cluster) registered() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lease != nil
}

// reconcileBlocks sets the allocations of this host's address blocks (ipam.Global) to the
// addresses of its endpoints whose records are still in the store, and the gateways and aux
// addresses of its global networks, after its registration lapsed: the addresses of those
// others reclaimed meanwhile are free in its blocks again, for reassert to take back. It reports whether every pool was reconciled: false when the store
// did not answer (nothing is changed in a pool whose records could not all be read).
func (c *Cluster) reconcileBlocks(ctx context.Context) bool {
	r, ok := c.ipam.(blockReconciler)
	if !ok {
		return true
	}
	live := map[ipam.PoolID][]netip.Addr{}
	for _, n := range c.cfg.Networks.Global() {
		// The network's gateways and aux addresses are in this host's blocks when it
		// created the network: they stay, whatever the endpoints.
		rec := n.Record()
		for _, cfg := range append(slices.Clone(rec.IPv4), rec.IPv6...) {
			pool := ipam.MakePoolID(ipam.GlobalSpace, cfg.Subnet)
			live[pool] = append(live[pool], slices.Collect(maps.Values(cfg.AuxAddresses))...)
			if cfg.Gateway.IsValid() {
				live[pool] = append(live[pool], cfg.Gateway)
			}
		}
		for _, ep := range n.Eps() {
			rec := ep.Record()
			_, err := c.store.Get(ctx, epobj.Key(n.ID(), rec.ID))
			if err != nil && !errors.Is(err, kvstore.ErrKeyNotFound) {
				c.log.Warn("global: reconcile address blocks: read endpoint record", "endpoint", rec.Name, "err", err)
				return false
			}
			for _, a := range []netip.Prefix{rec.IPv4, rec.IPv6} {
				if !a.IsValid() {
					continue
				}
				pool := ipam.MakePoolID(ipam.GlobalSpace, a.Masked())
				if err == nil {
					live[pool] = append(live[pool], a.Addr())
				} else if _, ok := live[pool]; !ok {
					live[pool] = nil
				}
			}
		}
	}
	ok = true
	for pool, addrs := range live {
		if err := r.ReconcileBlocks(ctx, pool, addrs); err != nil {
			c.log.Warn("global: reconcile address blocks", "pool", pool, "err", err)
			ok = false
		}
	}
	return ok
}

// reassert puts back the records of this host's endpoints on global networks that the other
// hosts reclaimed while its registration had lapsed, taking their addresses back. An address
// another endpoint took meanwhile is reported (Reclaimed) and its endpoint left as it is.
func (c *Cluster) reassert(ctx context.Context) {
	for _, n := range c.cfg.Networks.Global() {
		for _, ep := range n.Eps() {
			back, err := n.Reassert(ctx, ep)
			switch {
			case errors.Is(err, errclass.ErrConflict):
				c.noteGlobalRepair(drivers.Repair{Object: "endpoint " + ep.Name() + " of network " + n.Name(), Action: "not restored", Reason: err.Error()})
			case err != nil:
				c.log.Warn("global: reassert endpoint", "endpoint", ep.Name(), "err", err)
			case back:
				c.noteGlobalRepair(drivers.Repair{Object: "endpoint " + ep.Name() + " of network " + n.Name(), Action: "record restored", Reason: "reclaimed while this host's registration had lapsed"})
			}
		}
	}
}
