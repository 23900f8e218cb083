// Package cluster is cnm's multi-host state: everything that hosts sharing a global store
// (etcd or Consul) agree on, in one place with its own lock and lifecycle.
//
// A [Cluster] registers this host in the store's registry on a lease, and keeps it there; it
// is the network.Records of global-scope networks (their records and their endpoints' in the
// global store, names unique across hosts in one transaction with the record, deletion fenced
// against endpoint creation on every host); it holds the global IPAM (ipam.Global on the
// store unless given another); and it runs the background work of a multi-host Controller:
//
//   - the watch of global networks: those other hosts create are adopted here, those they
//     delete forgotten (through [Networks], the Controller's side);
//   - the watch of the registry: a host that leaves (its lease ran out, or it left) has its
//     endpoints reclaimed, their addresses freed; hosts joining and leaving are published as
//     events; this host registers again when its own lease lapsed (an outage longer than the
//     TTL), and puts back the records of its endpoints that others reclaimed meanwhile;
//   - the sweep, on the registry's first host (by name) every min(TTL, 5s): endpoints of hosts
//     no longer registered, delete fences of departed hosts, and orphans that no record refers
//     to for 10s (global IPAM addresses and pools, drivers' network allocations);
//   - the cleanup of writes whose outcome is unknown (the store did not answer): their keys
//     are deleted once the store answers again and has kept them absent for 10s.
//
// Every call to the global store is bounded by Config.Timeout (kvstore.Bound) and fails with
// an error matching cnm.ErrUnavailable past it.
//
// # Where each fact lives
//
// In the global store: network records (network.Key), name keys (NameKeyPrefix), delete
// fences (DeletingKeyPrefix), endpoint records (endpoint.Key, each naming its host), host
// records (HostKeyPrefix, bound to the host's lease), the global IPAM's state, and drivers'
// allocations kept in the network records. In the local store: this host's identity
// (HostIDKey), which lets a restarted host take its registry entry back while another host of
// the same name cannot. In memory: only what the store gives back (pending creates, the
// uncertain keys, the suspects of the sweep, the hosts last seen).
//
// # Concurrency
//
// Every method is safe for concurrent use. The Cluster's lock is taken after the
// Controller's and never held across a store call or a call into [Networks].
package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
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

// Defaults of Config.
const (
	// DefaultTTL is how long a host stays in the registry after its last renewal.
	DefaultTTL = 15 * time.Second
	// DefaultTimeout bounds each call to the global store.
	DefaultTimeout = 5 * time.Second
)

// Keys of the cluster's own records.
const (
	// HostKeyPrefix + name is a host's registry entry, in the global store, bound to its lease.
	HostKeyPrefix = "cnm/v1/hosts/"
	// HostIDKey holds this host's identity, in the local store.
	HostIDKey = "cnm/v1/host-id"
)

// Keys of global networks, in the global store (the network package writes the records).
const (
	// NameKeyPrefix + name holds the ID of the global network of that name: it is created in
	// the same transaction as the record, so names are unique across the cluster.
	NameKeyPrefix = "cnm/v1/names/"
	// DeletingKeyPrefix + id exists while a host deletes the network: endpoint creation on
	// any host checks it after storing its record, and deletion lists the endpoints after
	// writing it, so one of the two always sees the other.
	DeletingKeyPrefix = "cnm/v1/deleting/"
)

const (
	hostKeyPrefix = HostKeyPrefix
	hostIDKey     = HostIDKey
)

// hostRecord is a host's entry in the registry, bound to its lease.
type hostRecord struct {
	Name    string    `json:"name"`
	ID      string    `json:"id"` // random, kept in the local store: the same host across restarts
	Started time.Time `json:"started"`
}

// Networks is what the cluster asks of the Controller about the global networks on this host.
// Its methods are called from the cluster's goroutines, never with the cluster's lock held.
type Networks interface {
	// Adopt makes the global network of rec, seen in the store, known on this host: its
	// driver creates what it needs here, or it waits for its driver. The cluster does not
	// call it for a network being created on this host. A network known already is left.
	Adopt(ctx context.Context, rec network.Record)
	// Forget drops the global network id, which another host deleted.
	Forget(ctx context.Context, id string)
	// Known returns the IDs of the global networks known on this host: restored, adopted, or
	// waiting for their driver.
	Known() []string
	// Network returns the global network id if it is restored or adopted here, else nil.
	Network(id string) Network
	// Global returns the global networks restored or adopted here.
	Global() []Network
	// Allocators returns the network allocators of the global-scope drivers, by driver name.
	Allocators() map[string]drivers.NetworkAllocator
}

// Network is a global network on this host, as the cluster uses it; *network.Net is one.
type Network interface {
	ID() string
	Name() string
	Eps() []*endpoint.Ep
	// Reassert puts back the record of ep, reclaimed by others while this host was away.
	Reassert(ctx context.Context, ep *endpoint.Ep) (bool, error)
	// Reclaim deletes the record of an endpoint of a departed host and frees its addresses.
	Reclaim(ctx context.Context, rec endpoint.Record, rev uint64) (bool, error)
}

// Config configures a Cluster.
type Config struct {
	// Store is the store the hosts share (etcd or Consul, opened with kvstore/kvurl.Open). It
	// must implement kvstore.Batcher and kvstore.Leaser. Required; the Cluster does not
	// close it.
	Store kvstore.Store
	// Local is this host's own store; it keeps the host's identity. Required.
	Local kvstore.Store
	// IPAM is the allocator of global networks' addresses; nil means ipam.Global on Store.
	IPAM ipam.Allocator
	// Host is this host's name in the registry, unique in the cluster. Required.
	Host string
	// TTL is how long the registry keeps this host after its last renewal; 0 means
	// DefaultTTL. The store may round it up (Consul: at least 10s).
	TTL time.Duration
	// Timeout bounds each call to Store; 0 means DefaultTimeout.
	Timeout time.Duration
	// Networks is the Controller's side. Required.
	Networks Networks
	// Publish, when set, receives the cluster's events: hosts joining and leaving, repairs.
	// It must not block.
	Publish func(events.Event)
	// Logger receives the cluster's logs; nil discards them.
	Logger *slog.Logger
}

// Cluster is this host's part in the cluster. Create it with New, start its background work
// with Start, end it with Stop (or Leave).
type Cluster struct {
	cfg    Config
	store  kvstore.Bounded // Config.Store, bounded by Config.Timeout
	raw    kvstore.Store   // Config.Store, for leases and watches
	ipam   ipam.Allocator
	hostID string
	log    *slog.Logger

	done chan struct{} // closed when the background loops have ended
	kick chan struct{} // capacity 1: uncertain has grown

	// suspects are the orphans (an address, pool or allocation no record refers to) the last
	// sweep found, with when they were first seen; owned by the watchHosts goroutine.
	suspects map[string]time.Time
	// hosts is the registry as this host last saw it, to publish HostJoined and HostLeft for
	// what changes; nil until first listed. Set in New, then owned by the watchHosts goroutine.
	hosts map[string]bool

	mu        sync.Mutex // guards following
	cancel    context.CancelFunc
	lease     kvstore.Lease
	pending   map[string]struct{} // IDs of global networks being created here
	uncertain []uncertainKey      // keys to delete once the store answers
	reclaimed []drivers.Repair    // what this host repaired in the global store
}

var _ network.Records = (*Cluster)(nil)

// New checks cfg, sets up the global IPAM and registers this host. A live host of the same
// name fails it with an error matching cnm.ErrAlreadyExists; a store that does not answer,
// with one matching cnm.ErrUnavailable.
func New(ctx context.Context, cfg Config) (*Cluster, error) {
	switch {
	case cfg.Store == nil:
		return nil, fmt.Errorf("cluster: %w", errclass.Invalid("Store", "<nil>", "required"))
	case cfg.Local == nil:
		return nil, fmt.Errorf("cluster: %w", errclass.Invalid("Local", "<nil>", "required"))
	case cfg.Networks == nil:
		return nil, fmt.Errorf("cluster: %w", errclass.Invalid("Networks", "<nil>", "required"))
	case cfg.TTL < 0 || cfg.Timeout < 0:
		return nil, fmt.Errorf("cluster: %w", errclass.Invalid("TTL/Timeout", fmt.Sprint(cfg.TTL, "/", cfg.Timeout), "must not be negative"))
	}
	if err := network.ValidateName("hostname", cfg.Host); err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	if cfg.TTL == 0 {
		cfg.TTL = DefaultTTL
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	c := &Cluster{
		cfg: cfg, store: kvstore.Bound(cfg.Store, cfg.Timeout), raw: cfg.Store, ipam: cfg.IPAM,
		log: cfg.Logger, done: make(chan struct{}), kick: make(chan struct{}, 1),
		pending: map[string]struct{}{},
	}
	if c.ipam == nil {
		a, err := ipamkv.NewGlobal(c.store, ipam.GlobalConfig{})
		if err != nil {
			return nil, fmt.Errorf("cluster: global ipam: %w", err)
		}
		c.ipam = a
	}
	id, err := c.localHostID(ctx)
	if err != nil {
		return nil, err
	}
	c.hostID = id
	if err := c.register(ctx); err != nil {
		return nil, err
	}
	c.seedHosts(ctx)
	return c, nil
}

// Host returns this host's name in the registry.
func (c *Cluster) Host() string { return c.cfg.Host }

// Scope implements network.Records: drivers.GlobalScope.
func (c *Cluster) Scope() drivers.Scope { return drivers.GlobalScope }

// Store implements network.Records: the global store, each call bounded by Config.Timeout.
func (c *Cluster) Store() kvstore.Store { return c.store }

// IPAM returns the allocator of global networks' addresses.
func (c *Cluster) IPAM() ipam.Allocator { return c.ipam }

// Creating marks the global network id as being created on this host: the watch does not
// adopt it meanwhile. Created ends the mark, once the Controller knows the network (or gave
// the create up).
func (c *Cluster) Creating(id string) {
	c.mu.Lock()
	c.pending[id] = struct{}{}
	c.mu.Unlock()
}

// Created ends the mark of Creating.
func (c *Cluster) Created(id string) {
	c.mu.Lock()
	delete(c.pending, id)
	c.mu.Unlock()
}

// adopt hands a network record seen in the store to the Controller, unless the network is
// being created here.
func (c *Cluster) adopt(ctx context.Context, value []byte) {
	var rec network.Record
	if err := json.Unmarshal(value, &rec); err != nil {
		c.log.Error("global: bad network record", "err", err)
		return
	}
	c.mu.Lock()
	_, pending := c.pending[rec.ID]
	c.mu.Unlock()
	if !pending {
		c.cfg.Networks.Adopt(ctx, rec)
	}
}

// CreateNetwork implements network.Records: the record and the name key in one transaction,
// create-only, so that two hosts creating the same name cannot both win.
func (c *Cluster) CreateNetwork(ctx context.Context, rec network.Record, b []byte) error {
	_, err := c.store.Batch(ctx, []kvstore.Op{
		{Key: NameKeyPrefix + rec.Name, Value: []byte(rec.ID), Check: true},
		{Key: network.Key(rec.ID), Value: b, Check: true},
	})
	c.Uncertain(err, network.UncertainKey{Key: network.Key(rec.ID)}, network.UncertainKey{Key: NameKeyPrefix + rec.Name, Value: []byte(rec.ID)})
	if errors.Is(err, kvstore.ErrKeyExists) {
		owner := ""
		if kv, gerr := c.store.Get(ctx, NameKeyPrefix+rec.Name); gerr == nil {
			owner = " (network " + string(kv.Value)[:min(12, len(kv.Value))] + ")"
		}
		return fmt.Errorf("%w%s", &errclass.AlreadyExistsError{Kind: "global network", Name: rec.Name}, owner)
	}
	return err
}

// CheckEndpoint implements network.Records: after an endpoint record was stored, no host may
// be deleting the network, and its record must still be there.
func (c *Cluster) CheckEndpoint(ctx context.Context, rec network.Record) error {
	if _, err := c.store.Get(ctx, DeletingKeyPrefix+rec.ID); err == nil {
		return &errclass.ConflictError{Kind: "network", Name: rec.Name, Reason: "being deleted by another host"}
	} else if !errors.Is(err, kvstore.ErrKeyNotFound) {
		return err
	}
	if _, err := c.store.Get(ctx, network.Key(rec.ID)); errors.Is(err, kvstore.ErrKeyNotFound) {
		return &errclass.ConflictError{Kind: "network", Name: rec.Name, Reason: "deleted by another host"}
	} else if err != nil {
		return err
	}
	return nil
}

// BeginDelete implements network.Records: a fence key (DeletingKeyPrefix) stops endpoint
// creation on every host while the endpoints of every host are listed; any endpoint refuses
// the delete, naming the hosts. finish(ok) removes the record, the name key and the fence in
// one transaction; finish(!ok) removes the fence.
func (c *Cluster) BeginDelete(ctx context.Context, rec network.Record) (func(context.Context, bool) error, error) {
	fence := DeletingKeyPrefix + rec.ID
	if _, err := c.store.AtomicPut(ctx, fence, []byte(c.cfg.Host), 0); err != nil {
		if errors.Is(err, kvstore.ErrKeyExists) {
			return nil, &errclass.ConflictError{Kind: "network", Name: rec.Name, Reason: "being deleted by another host"}
		}
		c.Uncertain(err, network.UncertainKey{Key: fence, Value: []byte(c.cfg.Host)})
		return nil, fmt.Errorf("store: %w", err)
	}
	unfence := func(ctx context.Context, err error) error {
		if derr := c.store.Delete(ctx, fence); derr != nil {
			c.Uncertain(derr, network.UncertainKey{Key: fence, Value: []byte(c.cfg.Host)})
			return errors.Join(err, fmt.Errorf("remove fence: %w", derr))
		}
		return err
	}
	eps, err := c.store.List(ctx, endpoint.KeyPrefix+rec.ID+"/")
	if err != nil {
		return nil, unfence(context.WithoutCancel(ctx), fmt.Errorf("store: %w", err))
	}
	if len(eps) > 0 {
		hosts := map[string]int{}
		for _, p := range eps {
			var r endpoint.Record
			if json.Unmarshal(p.Value, &r) == nil {
				hosts[r.Host]++
			}
		}
		var parts []string
		for _, h := range slices.Sorted(maps.Keys(hosts)) {
			parts = append(parts, fmt.Sprintf("%d on %s", hosts[h], h))
		}
		return nil, unfence(context.WithoutCancel(ctx), &errclass.ConflictError{Kind: "network", Name: rec.Name,
			Reason: fmt.Sprintf("has active endpoints (%s)", strings.Join(parts, ", "))})
	}
	return func(ctx context.Context, ok bool) error {
		if !ok {
			return unfence(ctx, nil)
		}
		_, err := c.store.Batch(ctx, []kvstore.Op{{Key: network.Key(rec.ID)}, {Key: NameKeyPrefix + rec.Name}, {Key: fence}})
		if err != nil {
			if errors.Is(err, errclass.ErrUnavailable) {
				// It may yet take effect; if not, the fence must not stay behind.
				return fmt.Errorf("store: %w", err)
			}
			return unfence(ctx, fmt.Errorf("store: %w", err))
		}
		return nil
	}, nil
}

// publish gives Config.Publish an event, if there is one.
func (c *Cluster) publish(ev events.Event) {
	if c.cfg.Publish != nil {
		c.cfg.Publish(ev)
	}
}

// NetworkRecords returns the records of every global network in the store.
func (c *Cluster) NetworkRecords(ctx context.Context) ([]network.Record, error) {
	pairs, err := c.store.List(ctx, network.KeyPrefix)
	if err != nil {
		return nil, fmt.Errorf("cluster: list networks: %w", err)
	}
	out := make([]network.Record, 0, len(pairs))
	for _, p := range pairs {
		var rec network.Record
		if err := json.Unmarshal(p.Value, &rec); err != nil {
			c.log.Error("global: bad network record", "key", p.Key, "err", err)
			continue
		}
		out = append(out, rec)
	}
	return out, nil
}

// EndpointRecord is an endpoint record read from the global store, with its key and revision.
type EndpointRecord struct {
	Key      string
	Revision uint64
	endpoint.Record
}

// OwnEndpoints returns the records of this host's endpoints on global networks.
func (c *Cluster) OwnEndpoints(ctx context.Context) ([]EndpointRecord, error) {
	pairs, err := c.store.List(ctx, endpoint.KeyPrefix)
	if err != nil {
		return nil, fmt.Errorf("cluster: list endpoints: %w", err)
	}
	var out []EndpointRecord
	for _, p := range pairs {
		var rec endpoint.Record
		if err := json.Unmarshal(p.Value, &rec); err != nil || rec.Host != c.cfg.Host {
			continue
		}
		out = append(out, EndpointRecord{Key: p.Key, Revision: p.Revision, Record: rec})
	}
	return out, nil
}

// DropRecord deletes the record at key if it is still at revision rev (one of this host's
// endpoint records that cannot be restored). A record already gone is not an error.
func (c *Cluster) DropRecord(ctx context.Context, key string, rev uint64) error {
	if err := c.store.AtomicDelete(ctx, key, rev); err != nil && !errors.Is(err, kvstore.ErrKeyNotFound) {
		return err
	}
	return nil
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
	}
	if err != nil {
		_ = lease.Revoke(context.WithoutCancel(ctx))
		return fmt.Errorf("cluster: host registry: %s: %w", c.cfg.Host, kvstore.Unavailable(bctx, ctx, err))
	}
	c.mu.Lock()
	c.lease = lease
	c.mu.Unlock()
	c.log.Info("registered host", "host", c.cfg.Host, "ttl", lease.TTL())
	return nil
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

// uncertainKey is a key that a write of unknown outcome may have left, and since when it has
// been found absent (zero: not yet).
type uncertainKey struct {
	network.UncertainKey
	absentSince time.Time
}

// Uncertain implements network.Records: it queues the keys that a write whose outcome is
// unknown (err matching cnm.ErrUnavailable) may have left, to delete them once the store
// answers. Other errors are ignored.
func (c *Cluster) Uncertain(err error, keys ...network.UncertainKey) {
	if !errors.Is(err, errclass.ErrUnavailable) {
		return
	}
	c.mu.Lock()
	for _, k := range keys {
		c.uncertain = append(c.uncertain, uncertainKey{UncertainKey: k})
	}
	c.mu.Unlock()
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// cleanUncertain deletes the keys that writes of unknown outcome may have left, retrying until
// the store answers. Addresses and pools those writes held are then orphans, which the sweep
// frees.
func (c *Cluster) cleanUncertain(ctx context.Context) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.kick:
		case <-tick.C:
		}
		c.mu.Lock()
		keys := c.uncertain
		c.uncertain = nil
		c.mu.Unlock()
		var again []uncertainKey
		for i := range keys {
			if !c.deleteUncertain(ctx, &keys[i]) {
				again = append(again, keys[i])
			}
		}
		if len(again) > 0 {
			c.mu.Lock()
			c.uncertain = append(again, c.uncertain...)
			c.mu.Unlock()
		}
	}
}

// deleteUncertain deletes k if it is there (with its expected value); false to try again. A key
// is given up only once it has been absent for orphanGrace: a write that went unanswered can
// still land after the store came back (a server that restarts replays its log, and may answer
// reads before it has), and a late record would be left to no one.
func (c *Cluster) deleteUncertain(ctx context.Context, k *uncertainKey) bool {
	s := c.store
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

// watchNetworks keeps the global networks known here in step with the store: networks created
// on other hosts are adopted, networks deleted elsewhere forgotten. After the watch breaks (the
// store went away), it lists again and resumes.
func (c *Cluster) watchNetworks(ctx context.Context) {
	for attempt := 0; ctx.Err() == nil; attempt++ {
		ch, err := c.raw.Watch(ctx, network.KeyPrefix, 0)
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
				c.adopt(ctx, ev.Pair.Value)
			case kvstore.EventDelete:
				c.cfg.Networks.Forget(ctx, id)
			}
		}
	}
}

// syncNetworks adopts every global network in the store and forgets those that are gone.
func (c *Cluster) syncNetworks(ctx context.Context) error {
	pairs, err := c.store.List(ctx, network.KeyPrefix)
	if err != nil {
		return err
	}
	live := map[string]bool{}
	for _, p := range pairs {
		live[strings.TrimPrefix(p.Key, network.KeyPrefix)] = true
		c.adopt(ctx, p.Value)
	}
	known := c.cfg.Networks.Known()
	c.mu.Lock()
	var gone []string
	for _, id := range known {
		if _, pending := c.pending[id]; !pending && !live[id] {
			gone = append(gone, id)
		}
	}
	c.mu.Unlock()
	for _, id := range gone {
		c.cfg.Networks.Forget(ctx, id)
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
	defer sweep.Stop()
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
						c.reclaimHosts(ctx, map[string]bool{name: true})
					}
				}
			case <-leaseDone:
				c.log.Warn("global: host lease ended; registering again", "host", c.cfg.Host)
				leaseDone = nil
				for i := 0; ctx.Err() == nil; i++ {
					if err := c.register(ctx); err == nil {
						c.mu.Lock()
						leaseDone = c.lease.Done()
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

// sweep reclaims the endpoints of every host that is not in the registry, removes delete
// fences left by such hosts, and frees orphan addresses and pools. Only the registry's first
// host (by name) sweeps: the others' reads would be for nothing.
func (c *Cluster) sweep(ctx context.Context) {
	hosts, err := c.hostRecords(ctx)
	if err != nil || len(hosts) == 0 || slices.Min(slices.Collect(maps.Keys(hosts))) != c.cfg.Host {
		return
	}
	gone := map[string]bool{}
	pairs, err := c.store.List(ctx, endpoint.KeyPrefix)
	if err != nil {
		return
	}
	for _, p := range pairs {
		var rec endpoint.Record
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
	c.sweepOrphans(ctx, pairs)
	fences, err := c.store.List(ctx, DeletingKeyPrefix)
	if err != nil {
		return
	}
	for _, f := range fences {
		if _, ok := hosts[string(f.Value)]; !ok {
			_ = c.store.AtomicDelete(ctx, f.Key, f.Revision)
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
func (c *Cluster) sweepOrphans(ctx context.Context, eps []kvstore.KVPair) {
	nets, err := c.store.List(ctx, network.KeyPrefix)
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
	pairs, err := c.store.List(ctx, endpoint.KeyPrefix)
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
		var rec endpoint.Record
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

// Reclaimed returns what this host repaired in the global store: endpoints of departed
// hosts it reclaimed, and orphan addresses and pools it released.
func (c *Cluster) Reclaimed() []drivers.Repair {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.reclaimed)
}

// boundedStore bounds every call to a remote store by d, so that an unreachable store fails
// the call with an error matching ErrUnavailable instead of hanging. Watch is not bounded.
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
