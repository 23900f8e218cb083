// Package cluster is cnm's multi-host state: everything that hosts sharing a global store
// (etcd or Consul) agree on, in one place with its own lock and lifecycle.
//
// A [Cluster] registers this host in the store's registry on a lease, and keeps it there; it
// is the netobj.Records of global-scope networks (their records and their endpoints' in the
// global store, names unique across hosts in one transaction with the record, deletion fenced
// against endpoint creation on every host); it holds the global IPAM (ipam.Global on the
// store with this host's per-host address blocks, unless given another); and it runs the background work of a multi-host Controller:
//
//   - the watch of global networks: those other hosts create are adopted here, those they
//     delete forgotten (through [Networks], the Controller's side);
//   - the watch of the registry: a host that leaves (its lease ran out, or it left) has its
//     endpoints reclaimed, their addresses freed (each record deleted in a transaction that
//     requires the host's registry key to be absent: a registry read may go back in time, as
//     a restarted Consul server's does, and miss a live host; so do the deletes of a departed
//     host's delete fences); hosts joining and leaving are published as
//     events; this host registers again when its own lease lapsed (an outage longer than the
//     TTL), and puts back the records of its endpoints that others reclaimed meanwhile (its
//     address blocks give out no address from the lapse until they are reconciled);
//   - the sweep, on the registry's first host (by name) every min(TTL, 5s): endpoints of hosts
//     no longer registered, delete fences of departed hosts, and orphans that no record refers
//     to for 10s (global IPAM addresses and pools, the address blocks of departed hosts
//     (ipam.Global's per-host blocks), drivers' network allocations);
//   - on every host, at the same interval: its own address blocks that a release or claim the
//     store did not answer left empty are given back (ipam.Global.ReleaseEmptyBlocks);
//   - the cleanup of writes whose outcome is unknown (the store did not answer): their keys
//     are deleted once the store answers again and has kept them absent for 10s.
//
// Every call to the global store is bounded by Config.Timeout (kvstore.Bound) and fails with
// an error matching cnm.ErrUnavailable past it.
//
// # Where each fact lives
//
// In the global store: network records (netobj.Key), name keys (NameKeyPrefix), delete
// fences (DeletingKeyPrefix), endpoint records (epobj.Key, each naming its host; those of
// endpoints Connect made for a sandbox's namespace are copies of the host's run-store records,
// written behind Connect once the host holds a record on the network: netobj.WriteBehind), host
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
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/events"
	"github.com/cnmkit/cnm/internal/epobj"
	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/cnmkit/cnm/internal/netobj"
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

// Networks is what the cluster asks of the Controller about the global networks on this host.
// Its methods are called from the cluster's goroutines, never with the cluster's lock held.
type Networks interface {
	// Adopt makes the global network of rec, seen in the store, known on this host: its
	// driver creates what it needs here, or it waits for its driver. The cluster does not
	// call it for a network being created on this host. A network known already is left.
	Adopt(ctx context.Context, rec netobj.Record)
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

// Network is a global network on this host, as the cluster uses it; *netobj.Net is one.
type Network interface {
	ID() string
	Name() string
	// Record returns the network's record: its subnets, gateways and aux addresses.
	Record() netobj.Record
	Eps() []*epobj.Ep
	// Reassert puts back the record of ep, reclaimed by others while this host was away.
	Reassert(ctx context.Context, ep *epobj.Ep) (bool, error)
	// ReleaseReclaimed frees the addresses of an endpoint of a departed host, whose record
	// the cluster deleted.
	ReleaseReclaimed(ctx context.Context, rec epobj.Record) error
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
	// NoAddressBlocks makes the default IPAM (IPAM nil) take one compare-and-swap per
	// address. By default it takes this host's dynamic addresses from per-host blocks
	// (ipam.GlobalConfig.Host).
	NoAddressBlocks bool
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
	// registeredOnce is set by New's registration; resumed, then, if it took over this
	// host's live entry (Resumed).
	registeredOnce, resumed bool
}

var _ netobj.Records = (*Cluster)(nil)

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
		// Per-host blocks: this host's dynamic addresses need no store write (ipam.Global);
		// the sweep gives back the blocks of hosts that are gone, reassert re-reads this
		// host's after its registration lapsed.
		var gc ipam.GlobalConfig
		if !cfg.NoAddressBlocks {
			gc.Host = cfg.Host
		}
		a, err := ipamkv.NewGlobal(c.store, gc)
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

// Scope implements netobj.Records: drivers.GlobalScope.
func (c *Cluster) Scope() drivers.Scope { return drivers.GlobalScope }

// Store implements netobj.Records: the global store, each call bounded by Config.Timeout.
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

// CreateNetwork implements netobj.Records: the record and the name key in one transaction,
// create-only, so that two hosts creating the same name cannot both win.
func (c *Cluster) CreateNetwork(ctx context.Context, rec netobj.Record, b []byte) error {
	_, err := c.store.Batch(ctx, []kvstore.Op{
		{Key: NameKeyPrefix + rec.Name, Value: []byte(rec.ID), Check: true},
		{Key: netobj.Key(rec.ID), Value: b, Check: true},
	})
	c.Uncertain(err, netobj.UncertainKey{Key: netobj.Key(rec.ID)}, netobj.UncertainKey{Key: NameKeyPrefix + rec.Name, Value: []byte(rec.ID)})
	if errors.Is(err, kvstore.ErrKeyExists) {
		owner := ""
		if kv, gerr := c.store.Get(ctx, NameKeyPrefix+rec.Name); gerr == nil {
			owner = " (network " + string(kv.Value)[:min(12, len(kv.Value))] + ")"
		}
		return fmt.Errorf("%w%s", &errclass.AlreadyExistsError{Kind: "global network", Name: rec.Name}, owner)
	}
	return err
}

// CreateEndpoint implements netobj.Records. The record is written in one transaction with a
// check that no host is deleting the network (its fence key, DeletingKeyPrefix, is absent)
// and that the network's record exists: a host that deletes the network writes the fence
// first and then lists the endpoints, so one of the two always sees the other, and a network
// deleted outright before the transaction (its fence already gone with its record) fails the
// record's check. So a new endpoint costs one round trip to the store, which
// Controller.Connect overlaps with the kernel work (or, once the host holds a record on the
// network, leaves behind it: netobj.WriteBehind).
func (c *Cluster) CreateEndpoint(ctx context.Context, rec netobj.Record, key string, b []byte) (uint64, error) {
	rev, err := c.createEndpoints(ctx, rec, []kvstore.KVPair{{Key: key, Value: b}}, false)
	c.Uncertain(err, netobj.UncertainKey{Key: key})
	return rev, err
}

// PutEndpoints implements netobj.Records: CreateEndpoint's fenced transaction, for several
// records at once, for a writer that retries until it knows the outcome (netobj.WriteBehind):
// an unanswered write is not handed to Uncertain, whose cleanup would delete the records that
// a retry confirms, and a single record already at its key (an earlier try that landed) is
// this one, whose revision it returns.
func (c *Cluster) PutEndpoints(ctx context.Context, rec netobj.Record, kvs []kvstore.KVPair) (uint64, error) {
	return c.createEndpoints(ctx, rec, kvs, true)
}

// createEndpoints is the fenced transaction of CreateEndpoint for the records kvs; with adopt,
// a single record already at its key is taken as written.
func (c *Cluster) createEndpoints(ctx context.Context, rec netobj.Record, kvs []kvstore.KVPair, adopt bool) (uint64, error) {
	fence := DeletingKeyPrefix + rec.ID
	ops := make([]kvstore.Op, 0, len(kvs)+2)
	for _, kv := range kvs {
		ops = append(ops, kvstore.Op{Key: kv.Key, Value: kv.Value, Check: true})
	}
	ops = append(ops,
		kvstore.Op{Key: fence, Check: true}, // a checked delete of a missing key: "absent", nothing written
		kvstore.Op{Key: netobj.Key(rec.ID), Exists: true})
	rev, err := c.store.Batch(ctx, ops)
	switch {
	case err == nil:
		return rev, nil
	case errors.Is(err, kvstore.ErrKeyNotFound):
		return 0, &errclass.ConflictError{Kind: "network", Name: rec.Name, Reason: "deleted by another host"}
	case errors.Is(err, kvstore.ErrKeyExists):
		if adopt && len(kvs) == 1 {
			if kv, gerr := c.store.Get(ctx, kvs[0].Key); gerr == nil {
				return kv.Revision, nil
			}
		}
		if _, gerr := c.store.Get(ctx, fence); gerr == nil {
			return 0, &errclass.ConflictError{Kind: "network", Name: rec.Name, Reason: "being deleted by another host"}
		}
	}
	return 0, err
}

// BeginDelete implements netobj.Records: a fence key (DeletingKeyPrefix) stops endpoint
// creation on every host while the endpoints of every host are listed; any endpoint refuses
// the delete, naming the hosts. finish(ok) removes the record, the name key and the fence in
// one transaction; finish(!ok) removes the fence.
func (c *Cluster) BeginDelete(ctx context.Context, rec netobj.Record) (func(context.Context, bool) error, error) {
	fence := DeletingKeyPrefix + rec.ID
	if _, err := c.store.AtomicPut(ctx, fence, []byte(c.cfg.Host), 0); err != nil {
		if errors.Is(err, kvstore.ErrKeyExists) {
			return nil, &errclass.ConflictError{Kind: "network", Name: rec.Name, Reason: "being deleted by another host"}
		}
		c.Uncertain(err, netobj.UncertainKey{Key: fence, Value: []byte(c.cfg.Host)})
		return nil, fmt.Errorf("store: %w", err)
	}
	unfence := func(ctx context.Context, err error) error {
		if derr := c.store.Delete(ctx, fence); derr != nil {
			c.Uncertain(derr, netobj.UncertainKey{Key: fence, Value: []byte(c.cfg.Host)})
			return errors.Join(err, fmt.Errorf("remove fence: %w", derr))
		}
		return err
	}
	eps, err := c.store.List(ctx, epobj.KeyPrefix+rec.ID+"/")
	if err != nil {
		return nil, unfence(context.WithoutCancel(ctx), fmt.Errorf("store: %w", err))
	}
	if len(eps) > 0 {
		hosts := map[string]int{}
		for _, p := range eps {
			var r epobj.Record
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
		_, err := c.store.Batch(ctx, []kvstore.Op{{Key: netobj.Key(rec.ID)}, {Key: NameKeyPrefix + rec.Name}, {Key: fence}})
		if err != nil {
			if errors.Is(err, errclass.ErrUnavailable) {
				// It may yet take effect. If it does not, the fence must not stay behind:
				// the cleanup of uncertain writes deletes it (if it is still this host's)
				// once the store answers, and the network can be deleted again.
				c.Uncertain(err, netobj.UncertainKey{Key: fence, Value: []byte(c.cfg.Host)})
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
func (c *Cluster) NetworkRecords(ctx context.Context) ([]netobj.Record, error) {
	pairs, err := c.store.List(ctx, netobj.KeyPrefix)
	if err != nil {
		return nil, fmt.Errorf("cluster: list networks: %w", err)
	}
	out := make([]netobj.Record, 0, len(pairs))
	for _, p := range pairs {
		var rec netobj.Record
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
	epobj.Record
}

// OwnEndpoints returns the records of this host's endpoints on global networks.
func (c *Cluster) OwnEndpoints(ctx context.Context) ([]EndpointRecord, error) {
	pairs, err := c.store.List(ctx, epobj.KeyPrefix)
	if err != nil {
		return nil, fmt.Errorf("cluster: list endpoints: %w", err)
	}
	var out []EndpointRecord
	for _, p := range pairs {
		var rec epobj.Record
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
