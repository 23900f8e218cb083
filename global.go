package cnm

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
	"github.com/cnmkit/cnm/endpoint"
	"github.com/cnmkit/cnm/events"
	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/cnmkit/cnm/ipam"
	"github.com/cnmkit/cnm/ipam/ipamkv"
	"github.com/cnmkit/cnm/kvstore"
	"github.com/cnmkit/cnm/network"
)

// Defaults for the global-scope fields of Config.
const (
	// DefaultHostTTL is how long a host stays in the registry after its last renewal.
	DefaultHostTTL = 15 * time.Second
	// DefaultStoreTimeout bounds each call to the global store.
	DefaultStoreTimeout = 5 * time.Second
)

// Keys in the global store (besides network records, name keys and endpoint records, which the
// network package writes, and the global IPAM state under ipam.DefaultGlobalPrefix).
const (
	hostKeyPrefix = "cnm/v1/hosts/"
	hostIDKey     = "cnm/v1/host-id" // in the local store: this host's identity
)

// hostRecord is a host's entry in the registry, bound to its lease.
type hostRecord struct {
	Name    string    `json:"name"`
	ID      string    `json:"id"` // random, kept in the local store: the same host across restarts
	Started time.Time `json:"started"`
}

// global is the Controller's global-scope state; nil when Config.GlobalStore is nil.
type global struct {
	store   kvstore.Store // bounded by Config.StoreTimeout
	raw     kvstore.Store
	ipam    ipam.Allocator
	host    string
	hostID  string
	ttl     time.Duration
	timeout time.Duration

	cancel context.CancelFunc
	done   chan struct{} // closed when the background loops have ended

	// suspects are the orphans (an address or pool that the global IPAM holds but no record
	// refers to) the last sweep found, with when they were first seen; owned by the
	// watchHosts goroutine.
	suspects map[string]time.Time
	// hosts is the registry as this host last saw it, to publish HostJoined and HostLeft for
	// what changes; nil until first listed. Set in New, then owned by the watchHosts goroutine.
	hosts map[string]bool

	// Under Controller.mu:
	lease     kvstore.Lease
	pending   map[string]struct{} // IDs of global networks being created here
	uncertain []uncertainKey      // keys to delete once the store answers
	kick      chan struct{}       // capacity 1: uncertain has grown
}

// initGlobal checks the global-scope configuration, sets up the bounded store and the global
// IPAM, and registers this host. It runs in New before restore.
func (c *Controller) initGlobal(ctx context.Context) error {
	cfg := c.cfg
	if cfg.GlobalStore == nil {
		return nil
	}
	host, err := c.hostname()
	if err != nil {
		return err
	}
	if err := network.ValidateName("hostname", host); err != nil {
		return fmt.Errorf("cnm: %w", err)
	}
	ttl := cfg.HostTTL
	if ttl == 0 {
		ttl = DefaultHostTTL
	}
	timeout := cfg.StoreTimeout
	if timeout == 0 {
		timeout = DefaultStoreTimeout
	}
	if ttl < 0 || timeout < 0 {
		return fmt.Errorf("cnm: %w", errclass.Invalid("HostTTL/StoreTimeout", fmt.Sprint(ttl, "/", timeout), "must not be negative"))
	}
	g := &global{
		store: boundedStore{s: cfg.GlobalStore, d: timeout}, raw: cfg.GlobalStore,
		ipam: cfg.GlobalIPAM, host: host, ttl: ttl, timeout: timeout, pending: map[string]struct{}{},
		done: make(chan struct{}), kick: make(chan struct{}, 1),
	}
	if g.ipam == nil {
		a, err := ipamkv.NewGlobal(g.store, ipam.GlobalConfig{})
		if err != nil {
			return fmt.Errorf("cnm: global ipam: %w", err)
		}
		g.ipam = a
	}
	id, err := c.localHostID(ctx)
	if err != nil {
		return err
	}
	g.hostID = id
	c.global = g
	if err := c.register(ctx); err != nil {
		c.global = nil
		return err
	}
	return nil
}

// localHostID returns this host's identity, made once and kept in the local store, so that a
// restarted host takes its registry entry back while another host with the same name cannot.
func (c *Controller) localHostID(ctx context.Context) (string, error) {
	if kv, err := c.store.Get(ctx, hostIDKey); err == nil {
		return string(kv.Value), nil
	} else if !errors.Is(err, kvstore.ErrKeyNotFound) {
		return "", fmt.Errorf("cnm: host id: %w", err)
	}
	var b [16]byte
	rand.Read(b[:])
	id := hex.EncodeToString(b[:])
	if _, err := c.store.AtomicPut(ctx, hostIDKey, []byte(id), 0); err != nil {
		return "", fmt.Errorf("cnm: host id: %w", err)
	}
	return id, nil
}

// register puts this host in the registry under its name, bound to a lease the store keeps
// alive. A live entry of another host with the same name is refused; one of this host's
// (a restart before the old lease ran out) is taken over.
func (c *Controller) register(ctx context.Context) error {
	g := c.global
	leaser, ok := g.raw.(kvstore.Leaser)
	if !ok {
		return fmt.Errorf("cnm: host registry: %w", &errclass.NotSupportedError{What: "a global store without leases (kvstore.Leaser)"})
	}
	bctx, cancel := context.WithTimeout(ctx, g.timeout)
	defer cancel()
	lease, err := leaser.Grant(bctx, g.ttl)
	if err != nil {
		return fmt.Errorf("cnm: host registry: %w", unavailable(bctx, ctx, err))
	}
	key := hostKeyPrefix + g.host
	b, _ := json.Marshal(hostRecord{Name: g.host, ID: g.hostID, Started: time.Now().UTC()})
	for attempt := 0; ; attempt++ {
		_, err = lease.AtomicPut(bctx, key, b, 0)
		if !errors.Is(err, kvstore.ErrKeyExists) || attempt > 3 {
			break
		}
		kv, gerr := g.store.Get(ctx, key)
		if errors.Is(gerr, kvstore.ErrKeyNotFound) {
			continue // it just expired
		}
		if gerr != nil {
			err = gerr
			break
		}
		var other hostRecord
		_ = json.Unmarshal(kv.Value, &other)
		if other.ID != g.hostID {
			_ = lease.Revoke(context.WithoutCancel(ctx))
			return fmt.Errorf("cnm: host registry: %w: a live host with id %s has registered that name since %s; give each host a unique Config.Hostname",
				&errclass.AlreadyExistsError{Kind: "host", Name: g.host}, shortHostID(other.ID), other.Started.Format(time.RFC3339))
		}
		// This host's own entry, from before a restart: delete it and register anew.
		if derr := g.store.AtomicDelete(ctx, key, kv.Revision); derr != nil && !errors.Is(derr, kvstore.ErrKeyNotFound) && !errors.Is(derr, kvstore.ErrKeyModified) {
			err = derr
			break
		}
	}
	if err != nil {
		_ = lease.Revoke(context.WithoutCancel(ctx))
		return fmt.Errorf("cnm: host registry: %s: %w", g.host, unavailable(bctx, ctx, err))
	}
	c.mu.Lock()
	g.lease = lease
	c.mu.Unlock()
	c.log.Info("registered host", "host", g.host, "ttl", lease.TTL())
	return nil
}

func shortHostID(id string) string { return id[:min(8, len(id))] }

// Hosts returns the names of the hosts in the registry, sorted. It needs Config.GlobalStore.
func (c *Controller) Hosts(ctx context.Context) ([]string, error) {
	if c.global == nil {
		return nil, fmt.Errorf("cnm: hosts: %w", &errclass.NotSupportedError{What: "a host registry without Config.GlobalStore"})
	}
	recs, err := c.hostRecords(ctx)
	if err != nil {
		return nil, err
	}
	return slices.Sorted(maps.Keys(recs)), nil
}

func (c *Controller) hostRecords(ctx context.Context) (map[string]hostRecord, error) {
	pairs, err := c.global.store.List(ctx, hostKeyPrefix)
	if err != nil {
		return nil, fmt.Errorf("cnm: hosts: %w", err)
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
// store. It runs in restore, after the local networks; eps collects the joined endpoints.
func (c *Controller) restoreGlobal(ctx context.Context, eps map[string][]*endpoint.Ep) (maxSeq uint64, err error) {
	g := c.global
	pairs, err := g.store.List(ctx, network.KeyPrefix)
	if err != nil {
		return 0, fmt.Errorf("cnm: restore global networks: %w", err)
	}
	for _, p := range pairs {
		c.adoptGlobal(ctx, p.Value)
	}
	pairs, err = g.store.List(ctx, endpoint.KeyPrefix)
	if err != nil {
		return 0, fmt.Errorf("cnm: restore global endpoints: %w", err)
	}
	for _, p := range pairs {
		var rec endpoint.Record
		if err := json.Unmarshal(p.Value, &rec); err != nil || rec.Host != g.host {
			continue
		}
		n := c.networks[rec.NetworkID]
		if n == nil {
			if w := c.waiting[rec.NetworkID]; w != nil {
				w.eps = append(w.eps, waitingEp{key: p.Key, rev: p.Revision, rec: rec})
				maxSeq = max(maxSeq, rec.JoinSeq)
				continue
			}
			c.dropGlobalRecord(ctx, p.Key, p.Revision, "endpoint "+rec.Name, "its network is gone")
			continue
		}
		ep, err := n.RestoreEndpoint(ctx, rec, p.Revision)
		if err != nil {
			c.dropGlobalRecord(ctx, p.Key, p.Revision, "endpoint "+rec.Name, err.Error())
			continue
		}
		maxSeq = max(maxSeq, rec.JoinSeq)
		if rec.SandboxID != "" {
			eps[rec.SandboxID] = append(eps[rec.SandboxID], ep)
		}
	}
	return maxSeq, nil
}

func (c *Controller) dropGlobalRecord(ctx context.Context, key string, rev uint64, object, reason string) {
	if err := c.global.store.AtomicDelete(ctx, key, rev); err != nil && !errors.Is(err, kvstore.ErrKeyNotFound) {
		c.log.Error("restore: delete global record", "key", key, "err", err)
		return
	}
	c.repaired(drivers.Repair{Object: object, Action: "removed record", Reason: reason})
}

// adoptGlobal makes a global network known on this host, from its record: its driver creates
// what it needs here, and its pools are adopted from the global IPAM. It returns false when the
// record is not adopted (known already, being created here, bad record, or its restore failed:
// its driver is not registered here, say; it then waits for it).
func (c *Controller) adoptGlobal(ctx context.Context, value []byte) bool {
	var rec network.Record
	if err := json.Unmarshal(value, &rec); err != nil {
		c.log.Error("global: bad network record", "err", err)
		return false
	}
	c.mu.Lock()
	_, known := c.networks[rec.ID]
	_, pending := c.global.pending[rec.ID]
	w := c.waiting[rec.ID]
	c.mu.Unlock()
	if known || pending || w != nil {
		return false
	}
	n, err := c.restoreNetwork(ctx, rec)
	if err != nil {
		c.wait(ctx, rec, true, err)
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, known := c.networks[rec.ID]; known {
		return false
	}
	c.networks[rec.ID] = n
	c.bus.Publish(events.Event{Kind: events.NetworkCreated, NetworkID: rec.ID, Network: rec.Name, Remote: true})
	if id, taken := c.netNames[rec.Name]; !taken || id == "" {
		if taken {
			// A create of the same name is running here: it will lose (the name key is
			// taken); NewNetwork points the name at this network then.
			return true
		}
		c.netNames[rec.Name] = rec.ID
	} else {
		c.log.Warn("global network has the name of a local one: reachable here by ID only", "network", rec.Name, "id", rec.ID)
	}
	return true
}

// forgetGlobal drops a global network another host deleted.
func (c *Controller) forgetGlobal(ctx context.Context, id string) {
	c.mu.Lock()
	n := c.networks[id]
	if w := c.waiting[id]; w != nil && !w.resuming {
		delete(c.waiting, id) // its records are gone with the network
	}
	c.mu.Unlock()
	if n == nil {
		return
	}
	if err := n.Forget(ctx); err != nil {
		c.log.Error("global: forget network", "network", n.Name(), "err", err)
	}
}

// startGlobal starts the background loops: the watch of global networks, and the watch of the
// registry with the lease keeper and reclaim of hosts that are gone.
func (c *Controller) startGlobal() {
	g := c.global
	ctx, cancel := context.WithCancel(context.Background())
	g.cancel = cancel
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
		close(g.done)
	}()
}

// uncertainKey is a key that a write of unknown outcome may have left, and since when it has
// been found absent (zero: not yet).
type uncertainKey struct {
	network.UncertainKey
	absentSince time.Time
}

// noteUncertain queues keys that a write whose outcome is unknown may have left.
func (c *Controller) noteUncertain(keys ...network.UncertainKey) {
	c.mu.Lock()
	for _, k := range keys {
		c.global.uncertain = append(c.global.uncertain, uncertainKey{UncertainKey: k})
	}
	c.mu.Unlock()
	select {
	case c.global.kick <- struct{}{}:
	default:
	}
}

// cleanUncertain deletes the keys that writes of unknown outcome may have left, retrying until
// the store answers. Addresses and pools those writes held are then orphans, which the sweep
// frees.
func (c *Controller) cleanUncertain(ctx context.Context) {
	g := c.global
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-g.kick:
		case <-tick.C:
		}
		c.mu.Lock()
		keys := g.uncertain
		g.uncertain = nil
		c.mu.Unlock()
		var again []uncertainKey
		for i := range keys {
			if !c.deleteUncertain(ctx, &keys[i]) {
				again = append(again, keys[i])
			}
		}
		if len(again) > 0 {
			c.mu.Lock()
			g.uncertain = append(again, g.uncertain...)
			c.mu.Unlock()
		}
	}
}

// deleteUncertain deletes k if it is there (with its expected value); false to try again. A key
// is given up only once it has been absent for orphanGrace: a write that went unanswered can
// still land after the store came back (a server that restarts replays its log, and may answer
// reads before it has), and a late record would be left to no one.
func (c *Controller) deleteUncertain(ctx context.Context, k *uncertainKey) bool {
	s := c.global.store
	kv, err := s.Get(ctx, k.Key)
	switch {
	case errors.Is(err, kvstore.ErrKeyNotFound):
		if k.absentSince.IsZero() {
			k.absentSince = time.Now()
		}
		return time.Since(k.absentSince) >= orphanGrace
	case err != nil:
		return false
	case k.Value != nil && string(kv.Value) != string(k.Value):
		return true // someone else's
	}
	err = s.AtomicDelete(ctx, k.Key, kv.Revision)
	if err == nil || errors.Is(err, kvstore.ErrKeyNotFound) || errors.Is(err, kvstore.ErrKeyModified) {
		if err == nil {
			c.noteGlobalRepair(drivers.Repair{Object: "key " + k.Key, Action: "removed", Reason: "left by a write that timed out"})
		}
		return true
	}
	return false
}

// stopGlobal ends the loops and lets the host's lease run out rather than revoking it: the
// host's endpoints stay in the store for its next start, and if it does not come back within
// the TTL, the survivors reclaim them.
func (c *Controller) stopGlobal() {
	g := c.global
	if g == nil {
		return
	}
	if g.cancel != nil {
		g.cancel()
		<-g.done
	}
	c.mu.Lock()
	lease := g.lease
	g.lease = nil
	c.mu.Unlock()
	if lease != nil {
		lease.Abandon()
	}
}

// Leave removes this host from the registry at once (its lease is revoked), for a host that
// leaves the cluster for good: the survivors reclaim its remaining endpoints on global
// networks right away, and it leaves the gossip cluster when the Controller started the gossip
// node (peers drop its entries at once). Close it afterwards.
func (c *Controller) Leave(ctx context.Context) error {
	var gerr error
	if c.gossip != nil && c.gossip.own {
		// Peers drop this host's gossip entries at once, rather than after a failure verdict.
		if err := c.gossip.node.Leave(ctx); err != nil {
			gerr = fmt.Errorf("cnm: leave gossip: %w", err)
		}
	}
	if c.global == nil {
		return gerr
	}
	c.global.cancel()
	<-c.global.done
	c.mu.Lock()
	lease := c.global.lease
	c.global.lease = nil
	c.mu.Unlock()
	if lease == nil {
		return gerr
	}
	if err := lease.Revoke(ctx); err != nil {
		return errors.Join(gerr, fmt.Errorf("cnm: leave: %w", err))
	}
	return gerr
}

// retryWait waits for a backoff step of a background loop; false when ctx ended.
func retryWait(ctx context.Context, attempt int) bool {
	d := min(50*time.Millisecond<<min(attempt, 6), 2*time.Second)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// watchNetworks keeps the global networks known here in step with the store: networks created
// on other hosts are adopted, networks deleted elsewhere forgotten. After the watch breaks (the
// store went away), it lists again and resumes.
func (c *Controller) watchNetworks(ctx context.Context) {
	g := c.global
	for attempt := 0; ctx.Err() == nil; attempt++ {
		ch, err := g.raw.Watch(ctx, network.KeyPrefix, 0)
		if err == nil {
			err = c.syncNetworks(ctx)
		}
		if err != nil {
			c.log.Warn("global: watch networks", "err", err)
			if !retryWait(ctx, attempt) {
				return
			}
			continue
		}
		attempt = 0
		for ev := range ch {
			id := strings.TrimPrefix(ev.Pair.Key, network.KeyPrefix)
			switch ev.Type {
			case kvstore.EventPut:
				c.adoptGlobal(ctx, ev.Pair.Value)
			case kvstore.EventDelete:
				c.forgetGlobal(ctx, id)
			}
		}
	}
}

// syncNetworks adopts every global network in the store and forgets those that are gone.
func (c *Controller) syncNetworks(ctx context.Context) error {
	pairs, err := c.global.store.List(ctx, network.KeyPrefix)
	if err != nil {
		return err
	}
	live := map[string]bool{}
	for _, p := range pairs {
		live[strings.TrimPrefix(p.Key, network.KeyPrefix)] = true
		c.adoptGlobal(ctx, p.Value)
	}
	c.mu.Lock()
	var gone []string
	for id, n := range c.networks {
		if n.Global() && !live[id] {
			if _, pending := c.global.pending[id]; !pending {
				gone = append(gone, id)
			}
		}
	}
	for id, w := range c.waiting {
		if w.global && !live[id] {
			gone = append(gone, id)
		}
	}
	c.mu.Unlock()
	for _, id := range gone {
		c.forgetGlobal(ctx, id)
	}
	return nil
}

// seedHosts records the hosts in the registry when the Controller starts: they did not join
// (Hosts lists them). When the store does not answer, watchHosts records them later.
func (c *Controller) seedHosts(ctx context.Context) {
	recs, err := c.hostRecords(ctx)
	if err != nil {
		c.log.Warn("global: list hosts", "err", err)
		return
	}
	c.global.hosts = make(map[string]bool, len(recs))
	for name := range recs {
		c.global.hosts[name] = true
	}
}

// syncHosts lists the registry and publishes HostJoined and HostLeft for what changed since
// the hosts were last seen: watchHosts runs it each time it starts a watch, so that what
// happened while it did not watch is published too.
func (c *Controller) syncHosts(ctx context.Context) {
	g := c.global
	if g.hosts == nil {
		c.seedHosts(ctx)
		return
	}
	recs, err := c.hostRecords(ctx)
	if err != nil {
		return
	}
	for _, name := range slices.Sorted(maps.Keys(g.hosts)) {
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
func (c *Controller) hostSeen(name string, present bool) {
	g := c.global
	if g.hosts == nil || g.hosts[name] == present {
		return
	}
	kind := events.HostLeft
	if present {
		kind = events.HostJoined
		g.hosts[name] = true
	} else {
		delete(g.hosts, name)
	}
	c.log.Info("global: registry", "host", name, "event", kind.String())
	c.bus.Publish(events.Event{Kind: kind, Host: name})
}

// watchHosts keeps this host registered (registering again after its lease ended, as after an
// outage longer than the TTL) and reclaims the endpoints of hosts that left the registry: on
// their delete event, and in a sweep every TTL that also catches what happened while no
// host watched.
func (c *Controller) watchHosts(ctx context.Context) {
	g := c.global
	sweep := time.NewTicker(min(g.ttl, 5*time.Second))
	reassertAgain := 0
	defer sweep.Stop()
	c.sweep(ctx)
	for attempt := 0; ctx.Err() == nil; attempt++ {
		ch, err := g.raw.Watch(ctx, hostKeyPrefix, 0)
		if err != nil {
			if !retryWait(ctx, attempt) {
				return
			}
			continue
		}
		attempt = 0
		c.syncHosts(ctx) // after the watch started: nothing falls between the two
		c.mu.Lock()
		lease := g.lease
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
					if name != g.host {
						c.reclaimHosts(ctx, map[string]bool{name: true})
					}
				}
			case <-leaseDone:
				c.log.Warn("global: host lease ended; registering again", "host", g.host)
				leaseDone = nil
				for i := 0; ctx.Err() == nil; i++ {
					if err := c.register(ctx); err == nil {
						c.mu.Lock()
						leaseDone = g.lease.Done()
						c.mu.Unlock()
						// Once now, and again at the next sweeps: a survivor's reclaim
						// that started before this registration may still land.
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
			case <-sweep.C:
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

// reassert puts back the records of this host's endpoints on global networks that the other
// hosts reclaimed while its registration had lapsed, taking their addresses back. An address
// another endpoint took meanwhile is reported (Reclaimed) and its endpoint left as it is.
func (c *Controller) reassert(ctx context.Context) {
	c.mu.Lock()
	nets := slices.Collect(maps.Values(c.networks))
	c.mu.Unlock()
	for _, n := range nets {
		if !n.Global() {
			continue
		}
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

// sweep reclaims the endpoints of every host that is not in the registry, removes delete
// fences left by such hosts, and frees orphan addresses and pools. Only the registry's first
// host (by name) sweeps: the others' reads would be for nothing.
func (c *Controller) sweep(ctx context.Context) {
	hosts, err := c.hostRecords(ctx)
	if err != nil || len(hosts) == 0 || slices.Min(slices.Collect(maps.Keys(hosts))) != c.global.host {
		return
	}
	gone := map[string]bool{}
	pairs, err := c.global.store.List(ctx, endpoint.KeyPrefix)
	if err != nil {
		return
	}
	for _, p := range pairs {
		var rec endpoint.Record
		if json.Unmarshal(p.Value, &rec) == nil && rec.Host != "" && rec.Host != c.global.host {
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
	c.sweepOrphans(ctx, pairs)
	fences, err := c.global.store.List(ctx, network.DeletingKeyPrefix)
	if err != nil {
		return
	}
	for _, f := range fences {
		if _, ok := hosts[string(f.Value)]; !ok {
			_ = c.global.store.AtomicDelete(ctx, f.Key, f.Revision)
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
func (c *Controller) sweepOrphans(ctx context.Context, eps []kvstore.KVPair) {
	g := c.global
	nets, err := g.store.List(ctx, network.KeyPrefix)
	if err != nil {
		return
	}
	live := map[ipam.PoolID]map[netip.Addr]bool{}
	subnets := map[string][]network.IPAMConfig{} // network ID -> its subnets
	for _, p := range nets {
		var rec network.Record
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
		var rec endpoint.Record
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
	defer func() { g.suspects = next }()
	// due reports whether the orphan key was seen long enough; it carries it to the next sweep.
	due := func(key string) bool {
		first, ok := g.suspects[key]
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
	l, ok := g.ipam.(globalLister)
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

// sweepAllocations frees the allocations of global-scope drivers (drivers.NetworkAllocator)
// whose network has no record in the global store (known), once due says the orphan has been
// seen long enough: a crash between allocating and storing the record, or a free that failed.
func (c *Controller) sweepAllocations(ctx context.Context, known map[string][]network.IPAMConfig, due func(string) bool) {
	for _, name := range c.reg.Names() {
		e, err := c.reg.Get(name)
		if err != nil || e.Allocator == nil || e.Caps.DataScope != drivers.GlobalScope {
			continue
		}
		ids, err := e.Allocator.Allocated(ctx)
		if err != nil {
			c.log.Warn("global: list allocations", "driver", name, "err", err)
			continue
		}
		for _, id := range ids {
			if _, ok := known[string(id)]; ok || !due("allocation "+name+" "+string(id)) {
				continue
			}
			if err := e.Allocator.FreeNetwork(ctx, drivers.FreeNetworkRequest{NetworkID: id}); err != nil {
				c.log.Warn("global: free orphan allocation", "driver", name, "network", id, "err", err)
				continue
			}
			c.noteGlobalRepair(drivers.Repair{Object: "allocation of network " + id.Short() + " (driver " + name + ")", Action: "released", Reason: "no network record refers to it"})
		}
	}
}

func (c *Controller) noteGlobalRepair(r drivers.Repair) {
	c.log.Info("global: repaired", "object", r.Object, "action", r.Action, "reason", r.Reason)
	c.mu.Lock()
	c.reclaimed = append(c.reclaimed, r)
	c.mu.Unlock()
	c.publishRepair(r)
}

// reclaimHosts deletes the endpoint records of the hosts in gone and frees their addresses in
// the global IPAM. Several survivors may run it at once: each record is reclaimed by one.
func (c *Controller) reclaimHosts(ctx context.Context, gone map[string]bool) {
	pairs, err := c.global.store.List(ctx, endpoint.KeyPrefix)
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
func (c *Controller) reclaim(ctx context.Context, gone map[string]bool, pairs []kvstore.KVPair, hosts map[string]hostRecord) {
	for _, p := range pairs {
		var rec endpoint.Record
		if json.Unmarshal(p.Value, &rec) != nil || !gone[rec.Host] {
			continue
		}
		if _, back := hosts[rec.Host]; back {
			continue
		}
		c.mu.Lock()
		n := c.networks[rec.NetworkID]
		c.mu.Unlock()
		if n == nil {
			continue
		}
		ok, err := n.Reclaim(ctx, rec, p.Revision)
		if err != nil {
			c.log.Warn("global: reclaim endpoint", "endpoint", rec.Name, "host", rec.Host, "err", err)
			continue
		}
		if ok {
			c.noteGlobalRepair(drivers.Repair{Object: "endpoint " + rec.Name + " of host " + rec.Host, Action: "reclaimed", Reason: "its host left the registry"})
		}
	}
}

// Reclaimed returns what this Controller repaired in the global store: endpoints of departed
// hosts it reclaimed, and orphan addresses and pools it released.
func (c *Controller) Reclaimed() []drivers.Repair {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.reclaimed)
}

// boundedStore bounds every call to a remote store by d, so that an unreachable store fails
// the call with an error matching ErrUnavailable instead of hanging. Watch is not bounded.
type boundedStore struct {
	s kvstore.Store
	d time.Duration
}

var _ kvstore.Batcher = boundedStore{}

// unavailable turns the expiry of the bound (ctx, derived from parent) into ErrUnavailable.
func unavailable(ctx, parent context.Context, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.DeadlineExceeded) && parent.Err() == nil && ctx.Err() != nil {
		return fmt.Errorf("%w: no answer in time: %v", kvstore.ErrUnavailable, err)
	}
	return err
}

func (b boundedStore) Get(ctx context.Context, key string) (kvstore.KVPair, error) {
	bctx, cancel := context.WithTimeout(ctx, b.d)
	defer cancel()
	kv, err := b.s.Get(bctx, key)
	return kv, unavailable(bctx, ctx, err)
}

func (b boundedStore) Put(ctx context.Context, key string, value []byte) (uint64, error) {
	bctx, cancel := context.WithTimeout(ctx, b.d)
	defer cancel()
	rev, err := b.s.Put(bctx, key, value)
	return rev, unavailable(bctx, ctx, err)
}

func (b boundedStore) AtomicPut(ctx context.Context, key string, value []byte, prev uint64) (uint64, error) {
	bctx, cancel := context.WithTimeout(ctx, b.d)
	defer cancel()
	rev, err := b.s.AtomicPut(bctx, key, value, prev)
	return rev, unavailable(bctx, ctx, err)
}

func (b boundedStore) Delete(ctx context.Context, key string) error {
	bctx, cancel := context.WithTimeout(ctx, b.d)
	defer cancel()
	return unavailable(bctx, ctx, b.s.Delete(bctx, key))
}

func (b boundedStore) AtomicDelete(ctx context.Context, key string, prev uint64) error {
	bctx, cancel := context.WithTimeout(ctx, b.d)
	defer cancel()
	return unavailable(bctx, ctx, b.s.AtomicDelete(bctx, key, prev))
}

func (b boundedStore) List(ctx context.Context, prefix string) ([]kvstore.KVPair, error) {
	bctx, cancel := context.WithTimeout(ctx, b.d)
	defer cancel()
	kvs, err := b.s.List(bctx, prefix)
	return kvs, unavailable(bctx, ctx, err)
}

func (b boundedStore) Batch(ctx context.Context, ops []kvstore.Op) (uint64, error) {
	bs, ok := b.s.(kvstore.Batcher)
	if !ok {
		return 0, &errclass.NotSupportedError{What: "a global store without transactions (kvstore.Batcher)"}
	}
	bctx, cancel := context.WithTimeout(ctx, b.d)
	defer cancel()
	rev, err := bs.Batch(bctx, ops)
	return rev, unavailable(bctx, ctx, err)
}

func (b boundedStore) Watch(ctx context.Context, prefix string, from uint64) (<-chan kvstore.Event, error) {
	return b.s.Watch(ctx, prefix, from)
}

// Close does nothing: the Controller does not own the global store.
func (b boundedStore) Close() error { return nil }
