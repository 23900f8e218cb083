// Package netobj is the implementation of network.Network, internal to the module.
//
// The Controller creates a network (Create) after it checked its name and driver, or
// restores it from its record (Restore); this package allocates its subnets, asks the driver
// to build it, stores its record, and creates, lists and deletes its endpoints. The exported
// methods beyond network.Network (Record, Eps, CreateEndpointForJoin, RestoreEndpoint,
// Forget, Reassert, Reclaim) are for the Controller and the cluster: an orchestrator holds a
// network.Network and cannot name this package, so it cannot call them. Committed operations
// on the network and its endpoints are published to the Controller's event stream
// (Config.Publish, package events).
//
// Every method is safe for concurrent use. Lock order: a network's lock is taken after the
// Controller's and before an endpoint's (and the event stream's last); none is held across
// driver, IPAM or store calls.
package netobj

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/endpoint"
	"github.com/cnmkit/cnm/events"
	"github.com/cnmkit/cnm/internal/epobj"
	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/cnmkit/cnm/internal/lookup"
	"github.com/cnmkit/cnm/ipam"
	"github.com/cnmkit/cnm/kvstore"
	"github.com/cnmkit/cnm/network"
)

// Record is a network as kept in the store under Key(id).
type Record struct {
	ID         string               `json:"id"`
	Name       string               `json:"name"`
	Driver     string               `json:"driver"`
	Scope      drivers.Scope        `json:"scope"`
	Created    time.Time            `json:"created"`
	EnableIPv6 bool                 `json:"enable_ipv6,omitempty"`
	Internal   bool                 `json:"internal,omitempty"`
	Attachable bool                 `json:"attachable,omitempty"`
	IPv4       []network.IPAMConfig `json:"ipv4,omitempty"`
	IPv6       []network.IPAMConfig `json:"ipv6,omitempty"`
	Options    map[string]string    `json:"options,omitempty"`
	Labels     map[string]string    `json:"labels,omitempty"`
	IPAMDriver string               `json:"ipam_driver,omitempty"` // "" is the default
	// Allocation is what the driver's NetworkAllocator reserved for the network, once per
	// cluster (its VNI): the one copy every host reads.
	Allocation map[string]string `json:"allocation,omitempty"`
}

// KeyPrefix is the store prefix of network records.
const KeyPrefix = "cnm/v1/networks/"

// Key returns the store key of a network record.
func Key(id string) string { return KeyPrefix + id }

// UncertainKey is a key that a write whose outcome is unknown may have left in the store; it
// is to be deleted if its value is Value (any value when Value is nil).
type UncertainKey struct {
	Key   string
	Value []byte
}

// Config is what a network needs from the Controller.
type Config struct {
	Entry *drivers.Entry
	// Records is where the network's and its endpoints' records live (LocalRecords, or the
	// cluster's for a global-scope driver).
	Records Records
	// RunStore, when set, holds the records of a local network's endpoints that live no
	// longer than their sandbox's namespace (CreateEndpointForJoin with runtime set): a store
	// that survives the process but not the machine, whose commits need no fsync. Their Join
	// commits to it before its kernel work rather than beside it (epobj.Config.InlineCommit).
	// Nil: they go to Records like the others.
	RunStore kvstore.Store
	// Behind, when set with RunStore, keeps the global copies of the records of a global
	// network's runtime endpoints, whose own records are then in RunStore too (WriteBehind).
	// Nil: those records are the global store's alone, written in line.
	Behind *WriteBehind
	IPAM   ipam.Allocator
	// Exclude lists prefixes an auto-picked subnet must avoid (the host's routes).
	Exclude []netip.Prefix
	// OnDelete is called once the network is deleted.
	OnDelete func(id string)
	// GatewayService gives a way out to sandboxes whose endpoints' driver asks for one.
	GatewayService epobj.GatewayService
	// Publish, when set, is given the events of the network and its endpoints once each
	// operation is committed: events.NetworkDeleted (by Delete, and by Forget with Remote set)
	// and the endpoints' events (see epobj.Config.Publish). NetworkCreated is the
	// Controller's to publish, once it has registered the network. It must not block.
	Publish func(events.Event)
	// Seq orders endpoint joins.
	Seq    func() uint64
	Logger *slog.Logger
	// ID, when set, is the ID Create gives the new network (else a random one).
	ID string
	// Begin, when set, is called first by CreateEndpoint (and CreateEndpointForJoin) and
	// Delete, after their arguments are checked, and is given to the endpoints
	// (epobj.Config.Begin): an error refuses the operation before it touches anything (the
	// Controller's is one matching cnm.ErrUnavailable once it is closing or closed);
	// otherwise the operation calls end when it returns.
	Begin func() (end func(), err error)
}

// Net is the implementation of Network.
type Net struct {
	cfg    Config
	rec    Record // immutable after creation
	poolV4 ipam.PoolID
	poolV6 ipam.PoolID
	opts   drivers.NetworkOptions

	mu        sync.Mutex // guards following
	endpoints map[string]*epobj.Ep
	names     map[string]string // endpoint name -> ID ("" while being created)
	deleting  bool
	deleted   bool
	gone      bool // Forget was called while this host was deleting the network
}

var _ network.Network = (*Net)(nil)

// NewID returns a random 64-hex-character ID.
func NewID() string {
	var b [32]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Create makes a new network: it allocates its subnets and gateways, asks the driver to create
// it and stores its record (one commit). On error, everything it did is undone. The caller has
// checked that the name is free and resolved opts (the driver's typed options, or nil).
func Create(ctx context.Context, cfg Config, name string, spec network.Spec, opts drivers.NetworkOptions) (*Net, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	id := cfg.ID
	if id == "" {
		id = NewID()
	}
	rec := Record{
		ID: id, Name: name, Driver: cfg.Entry.Name, Scope: cfg.Entry.Caps.DataScope,
		Created: time.Now().UTC(), EnableIPv6: spec.EnableIPv6, Internal: spec.Internal,
		Attachable: spec.Attachable, Labels: maps.Clone(spec.Labels), IPAMDriver: spec.IPAMDriver,
	}
	if opts != nil {
		rec.Options = opts.Labels()
	}
	for _, c := range spec.IPv4 {
		rec.IPv4 = append(rec.IPv4, c.Clone())
	}
	for _, c := range spec.IPv6 {
		rec.IPv6 = append(rec.IPv6, c.Clone())
	}
	n := newNet(cfg, rec, opts)
	rb := context.WithoutCancel(ctx)
	if err := n.allocate(ctx, true); err != nil {
		return nil, fmt.Errorf("network %s: %w", name, err)
	}
	if err := n.allocateDriver(ctx); err != nil {
		n.releasePools(rb)
		return nil, fmt.Errorf("network %s: driver %s: allocate: %w", name, cfg.Entry.Name, err)
	}
	if err := cfg.Entry.Driver.CreateNetwork(ctx, n.driverRequest()); err != nil {
		ferr := n.freeDriver(rb)
		n.releasePools(rb)
		return nil, errors.Join(fmt.Errorf("network %s: driver %s: %w", name, cfg.Entry.Name, err), ferr)
	}
	b, err := json.Marshal(n.rec)
	if err == nil {
		err = cfg.Records.CreateNetwork(ctx, n.rec, b)
	}
	if err != nil {
		derr := cfg.Entry.Driver.DeleteNetwork(rb, drivers.DeleteNetworkRequest{NetworkID: drivers.NetworkID(rec.ID)})
		ferr := n.freeDriver(rb)
		n.releasePools(rb)
		return nil, errors.Join(fmt.Errorf("network %s: store: %w", name, err), derr, ferr)
	}
	return n, nil
}

// allocateDriver asks the driver's NetworkAllocator, if it has one, for the network's
// cluster-wide values, and keeps them in the record.
func (n *Net) allocateDriver(ctx context.Context) error {
	a := n.cfg.Entry.Allocator
	if a == nil {
		return nil
	}
	got, err := a.AllocateNetwork(ctx, drivers.AllocateNetworkRequest{
		NetworkID: drivers.NetworkID(n.rec.ID), Name: n.rec.Name, Options: n.opts,
		IPv4: ipamData(n.rec.IPv4), IPv6: ipamData(n.rec.IPv6),
	})
	if err != nil {
		return err
	}
	n.rec.Allocation = maps.Clone(got)
	return nil
}

// freeDriver frees the network's allocation in the driver's NetworkAllocator, if it has one.
func (n *Net) freeDriver(ctx context.Context) error {
	a := n.cfg.Entry.Allocator
	if a == nil {
		return nil
	}
	if err := a.FreeNetwork(ctx, drivers.FreeNetworkRequest{NetworkID: drivers.NetworkID(n.rec.ID), Allocation: maps.Clone(n.rec.Allocation)}); err != nil {
		return fmt.Errorf("network %s: driver %s: free: %w", n.rec.Name, n.cfg.Entry.Name, err)
	}
	return nil
}

// publish gives Config.Publish an event of kind about the network.
func (n *Net) publish(kind events.Kind, remote bool) {
	if n.cfg.Publish != nil {
		n.cfg.Publish(events.Event{Kind: kind, NetworkID: n.rec.ID, Network: n.rec.Name, Remote: remote})
	}
}

// Global reports whether the network's records are of global scope: shared by every host.
func (n *Net) Global() bool { return n.cfg.Records.Scope() == drivers.GlobalScope }

// Restore rebuilds a network from its record after a restart: it replays its IPAM pools and
// asks the driver to re-create (or verify) it. opts are the driver's options parsed from
// rec.Options.
func Restore(ctx context.Context, cfg Config, rec Record, opts drivers.NetworkOptions) (*Net, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	n := newNet(cfg, rec, opts)
	if err := n.allocate(ctx, false); err != nil {
		return nil, fmt.Errorf("network %s: restore: %w", rec.Name, err)
	}
	if err := cfg.Entry.Driver.CreateNetwork(ctx, n.driverRequest()); err != nil {
		n.releasePools(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("network %s: restore: driver %s: %w", rec.Name, cfg.Entry.Name, err)
	}
	return n, nil
}

func newNet(cfg Config, rec Record, opts drivers.NetworkOptions) *Net {
	return &Net{cfg: cfg, rec: rec, opts: opts, endpoints: make(map[string]*epobj.Ep), names: make(map[string]string)}
}

// allocate requests the pools, gateways and aux addresses of the record from IPAM, filling in
// what IPAM picks when pick is true (a new network).
func (n *Net) allocate(ctx context.Context, pick bool) (err error) {
	if n.cfg.Entry.Caps.NoIPAM {
		if len(n.rec.IPv4)+len(n.rec.IPv6) > 0 {
			return errclass.Invalid("subnet", n.rec.IPv4Subnets(), fmt.Sprintf("driver %s takes no addresses", n.rec.Driver))
		}
		return nil
	}
	defer func() {
		if err != nil {
			n.releasePools(context.WithoutCancel(ctx))
		}
	}()
	if len(n.rec.IPv4) == 0 && pick {
		n.rec.IPv4 = []network.IPAMConfig{{}}
	}
	if len(n.rec.IPv6) == 0 && n.rec.EnableIPv6 && pick {
		n.rec.IPv6 = []network.IPAMConfig{{}}
	}
	space := ipam.LocalSpace
	if n.rec.Scope == drivers.GlobalScope {
		space = ipam.GlobalSpace
	}
	for i := range n.rec.IPv4 {
		if n.poolV4, err = n.allocOne(ctx, space, &n.rec.IPv4[i], false, !pick); err != nil {
			return err
		}
	}
	for i := range n.rec.IPv6 {
		if n.poolV6, err = n.allocOne(ctx, space, &n.rec.IPv6[i], true, !pick); err != nil {
			return err
		}
	}
	return nil
}

// allocOne requests one subnet's pool, aux addresses and gateway. With adopt (a restart), a
// pool and addresses the IPAM driver already holds are taken as they are: a driver that keeps
// its own state (in a store) still has them.
func (n *Net) allocOne(ctx context.Context, space ipam.AddressSpace, c *network.IPAMConfig, v6, adopt bool) (ipam.PoolID, error) {
	pool, err := n.cfg.IPAM.RequestPool(ctx, ipam.PoolRequest{
		Space: space, Subnet: c.Subnet, Range: c.IPRange, V6: v6, Exclude: n.cfg.Exclude,
	})
	if oe, ok := errors.AsType[*ipam.OverlapError](err); ok && adopt && oe.Pool == ipam.MakePoolID(space, c.Subnet) {
		pool, err = ipam.Pool{ID: oe.Pool, Subnet: c.Subnet, Range: c.IPRange}, nil
	}
	if err != nil {
		return "", err
	}
	c.Subnet = pool.Subnet
	request := func(a netip.Addr) (netip.Addr, error) {
		got, err := n.cfg.IPAM.RequestAddress(ctx, pool.ID, a)
		if adopt && a.IsValid() && errors.Is(err, ipam.ErrAddressInUse) {
			return a, nil
		}
		return got, err
	}
	// Aux addresses first, so a gateway IPAM picks is never one of them.
	for _, name := range slices.Sorted(maps.Keys(c.AuxAddresses)) {
		if _, err := request(c.AuxAddresses[name]); err != nil {
			_ = n.cfg.IPAM.ReleasePool(context.WithoutCancel(ctx), pool.ID)
			return "", fmt.Errorf("aux-address %s: %w", name, err)
		}
	}
	gw, err := request(c.Gateway)
	if err != nil {
		_ = n.cfg.IPAM.ReleasePool(context.WithoutCancel(ctx), pool.ID)
		return "", fmt.Errorf("gateway: %w", err)
	}
	c.Gateway = gw
	return pool.ID, nil
}

func (n *Net) releasePools(ctx context.Context) {
	for _, id := range []ipam.PoolID{n.poolV4, n.poolV6} {
		if id != "" {
			if err := n.cfg.IPAM.ReleasePool(ctx, id); err != nil {
				n.cfg.Logger.Warn("release pool", "network", n.rec.Name, "pool", id, "err", err)
			}
		}
	}
}

// IPv4Subnets returns the record's IPv4 subnets, comma-separated.
func (r Record) IPv4Subnets() string {
	var s []string
	for _, c := range r.IPv4 {
		s = append(s, c.Subnet.String())
	}
	return strings.Join(s, ",")
}

func ipamData(cs []network.IPAMConfig) []drivers.IPAMData {
	var d []drivers.IPAMData
	for _, c := range cs {
		d = append(d, drivers.IPAMData{Subnet: c.Subnet, Range: c.IPRange, Gateway: c.Gateway, AuxAddresses: maps.Clone(c.AuxAddresses)})
	}
	return d
}

func (n *Net) driverRequest() drivers.CreateNetworkRequest {
	return drivers.CreateNetworkRequest{
		NetworkID: drivers.NetworkID(n.rec.ID), Name: n.rec.Name, Options: n.opts,
		IPv4: ipamData(n.rec.IPv4), IPv6: ipamData(n.rec.IPv6),
		Internal: n.rec.Internal, EnableIPv6: n.rec.EnableIPv6, Allocation: maps.Clone(n.rec.Allocation),
	}
}

// ID implements Network.
func (n *Net) ID() string { return n.rec.ID }

// Name implements Network.
func (n *Net) Name() string { return n.rec.Name }

// Driver implements Network.
func (n *Net) Driver() string { return n.rec.Driver }

// Scope implements Network.
func (n *Net) Scope() drivers.Scope { return n.rec.Scope }

// Record returns a copy of the network's record.
func (n *Net) Record() Record {
	r := n.rec
	r.IPv4 = slices.Clone(r.IPv4)
	r.IPv6 = slices.Clone(r.IPv6)
	for i := range r.IPv4 {
		r.IPv4[i] = r.IPv4[i].Clone()
	}
	for i := range r.IPv6 {
		r.IPv6[i] = r.IPv6[i].Clone()
	}
	r.Options, r.Labels, r.Allocation = maps.Clone(r.Options), maps.Clone(r.Labels), maps.Clone(r.Allocation)
	return r
}

// epConfig returns the configuration of an endpoint; runtime puts its record in the
// RunStore (see runStore).
func (n *Net) epConfig(runtime bool) epobj.Config {
	cfg := epobj.Config{
		Driver: n.cfg.Entry.Driver, DriverName: n.cfg.Entry.Name, Caps: n.cfg.Entry.Caps,
		Store: n.cfg.Records.Store(), IPAM: n.cfg.IPAM, PoolV4: n.poolV4, PoolV6: n.poolV6,
		OnDelete: n.dropEndpoint, Seq: n.cfg.Seq, Logger: n.cfg.Logger, GatewayService: n.cfg.GatewayService,
		NetworkName: n.rec.Name, Publish: n.cfg.Publish, Begin: n.cfg.Begin,
		CreateRecord: func(ctx context.Context, key string, b []byte) (uint64, error) {
			return n.cfg.Records.CreateEndpoint(ctx, n.Record(), key, b)
		},
	}
	if rs := n.runStore(runtime); rs != nil {
		cfg.Store, cfg.InlineCommit = rs, true
		cfg.CreateRecord = func(ctx context.Context, key string, b []byte) (uint64, error) {
			return rs.AtomicPut(ctx, key, b, 0)
		}
	}
	if bs := n.behindStore(runtime); bs != nil {
		cfg.Store, cfg.InlineCommit = bs, true
		cfg.CreateRecord = func(ctx context.Context, key string, b []byte) (uint64, error) {
			return bs.AtomicPut(ctx, key, b, 0)
		}
		cfg.Republish = func(ctx context.Context, key string, b []byte) error {
			return bs.w.republish(ctx, n, key, b)
		}
	}
	if !n.rec.Internal && !n.cfg.Entry.Caps.NoIPAM {
		if len(n.rec.IPv4) > 0 {
			cfg.Gateway = n.rec.IPv4[0].Gateway
		}
		if len(n.rec.IPv6) > 0 {
			cfg.GatewayIPv6 = n.rec.IPv6[0].Gateway
		}
	}
	return cfg
}

// runStore returns the store of an endpoint's record when runtime asks for the RunStore: nil
// when the network has none, or is global (its endpoints' records are the cluster's).
func (n *Net) runStore(runtime bool) kvstore.Store {
	if !runtime || n.cfg.RunStore == nil || n.Global() {
		return nil
	}
	return n.cfg.RunStore
}

// behindStore returns the store of a runtime endpoint's record on a global network whose
// global copies Config.Behind keeps; nil otherwise.
func (n *Net) behindStore(runtime bool) *behindStore {
	if !runtime || n.cfg.RunStore == nil || n.cfg.Behind == nil || !n.Global() {
		return nil
	}
	return n.cfg.Behind.store(n)
}

func (n *Net) dropEndpoint(id string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if ep, ok := n.endpoints[id]; ok {
		delete(n.names, ep.Name())
		delete(n.endpoints, id)
	}
}

func subnetPrefix(c []network.IPAMConfig, a netip.Addr) netip.Prefix {
	if len(c) == 0 || !a.IsValid() {
		return netip.Prefix{}
	}
	return netip.PrefixFrom(a, c[0].Subnet.Bits())
}

// CreateEndpoint implements Network.
func (n *Net) CreateEndpoint(ctx context.Context, name string, opts ...endpoint.Option) (endpoint.Endpoint, error) {
	ep, err := n.createEndpoint(ctx, name, true, false, opts)
	if err != nil {
		return nil, err
	}
	return ep.Sealed(), nil
}

// CreateEndpointForJoin creates an endpoint whose record is not written yet: the Join that
// must follow writes it, so create+join costs one store commit (Controller.Connect). Until
// then a restart forgets the endpoint; if the Join fails, Delete it. Its creation is published
// by the Join (events.EndpointCreated, then EndpointJoined), and not at all if the Join fails.
// With runtime set, a local network keeps the endpoint's record in Config.RunStore: the
// caller says the endpoint lives no longer than its sandbox's namespace.
func (n *Net) CreateEndpointForJoin(ctx context.Context, name string, runtime bool, opts ...endpoint.Option) (*epobj.Ep, error) {
	return n.createEndpoint(ctx, name, false, runtime, opts)
}

func (n *Net) createEndpoint(ctx context.Context, name string, store, runtime bool, opts []endpoint.Option) (_ *epobj.Ep, err error) {
	if err := errclass.CheckContext(ctx); err != nil {
		return nil, fmt.Errorf("network %s: create endpoint: %w", n.rec.Name, err)
	}
	if err := network.ValidateName("endpoint", name); err != nil {
		return nil, fmt.Errorf("network %s: create endpoint: %w", n.rec.Name, err)
	}
	endOp, err := n.beginOp("create endpoint " + name)
	if err != nil {
		return nil, err
	}
	defer endOp()
	var spec endpoint.Spec
	for _, o := range opts {
		if o != nil {
			o(&spec)
		}
	}
	if err := n.checkSpec(spec); err != nil {
		return nil, fmt.Errorf("network %s: create endpoint %s: %w", n.rec.Name, name, err)
	}
	n.mu.Lock()
	switch {
	case n.deleting || n.deleted:
		n.mu.Unlock()
		return nil, &errclass.ConflictError{Kind: "network", Name: n.rec.Name, Reason: "being deleted"}
	case n.names[name] != "" || hasKey(n.names, name):
		n.mu.Unlock()
		return nil, fmt.Errorf("network %s: %w", n.rec.Name, &errclass.AlreadyExistsError{Kind: "endpoint", Name: name})
	}
	n.names[name] = "" // reserved while being created
	n.mu.Unlock()
	defer func() {
		if err != nil {
			n.mu.Lock()
			delete(n.names, name)
			n.mu.Unlock()
		}
	}()

	rb := context.WithoutCancel(ctx)
	rec := epobj.Record{ID: NewID(), Name: name, NetworkID: n.rec.ID, Created: time.Now().UTC(), Connected: !store, Host: n.cfg.Records.Host(), Aliases: spec.Aliases, WantIfName: spec.IfName}
	if !n.cfg.Entry.Caps.NoIPAM {
		if n.poolV4 != "" {
			a, err := n.cfg.IPAM.RequestAddress(ctx, n.poolV4, spec.IPv4)
			if err != nil {
				return nil, fmt.Errorf("network %s: create endpoint %s: ipv4: %w", n.rec.Name, name, err)
			}
			rec.IPv4 = subnetPrefix(n.rec.IPv4, a)
		}
		if n.poolV6 != "" {
			a, err := n.cfg.IPAM.RequestAddress(ctx, n.poolV6, spec.IPv6)
			if err != nil {
				if rec.IPv4.IsValid() {
					_ = n.cfg.IPAM.ReleaseAddress(rb, n.poolV4, rec.IPv4.Addr())
				}
				return nil, fmt.Errorf("network %s: create endpoint %s: ipv6: %w", n.rec.Name, name, err)
			}
			rec.IPv6 = subnetPrefix(n.rec.IPv6, a)
		}
	}
	ep := epobj.New(n.epConfig(runtime), rec, 0)
	release := func() { ep.ReleaseAddresses(rb) }

	res, err := n.cfg.Entry.Driver.CreateEndpoint(ctx, drivers.CreateEndpointRequest{
		NetworkID: drivers.NetworkID(n.rec.ID), EndpointID: drivers.EndpointID(rec.ID),
		MAC: spec.MAC, IPv4: rec.IPv4, IPv6: rec.IPv6, Ports: n.driverPorts(spec.Ports),
	})
	if n.portsViaGateway() {
		// Published on the sandbox's gateway endpoint when the endpoint joins; the record
		// keeps them as asked until then, and as bound after.
		res.Ports = spec.Ports
	}
	if err == nil && len(spec.Ports) > 0 && len(res.Ports) == 0 {
		// A driver that knows nothing of ports would drop them silently.
		err = errors.Join(&errclass.NotSupportedError{What: "published ports on a " + n.cfg.Entry.Name + " network"},
			n.cfg.Entry.Driver.DeleteEndpoint(rb, drivers.DeleteEndpointRequest{NetworkID: drivers.NetworkID(n.rec.ID), EndpointID: drivers.EndpointID(rec.ID)}))
	}
	if err != nil {
		release()
		return nil, fmt.Errorf("network %s: create endpoint %s: driver %s: %w", n.rec.Name, name, n.cfg.Entry.Name, err)
	}
	rec.Ports = res.Ports
	mac := spec.MAC
	if res.MAC != nil {
		mac = res.MAC
	}
	if mac != nil {
		rec.MAC = mac.String()
	}
	var rev uint64
	if store {
		var b []byte
		b, err = json.Marshal(rec)
		if err == nil {
			rev, err = n.cfg.Records.CreateEndpoint(ctx, n.Record(), epobj.Key(n.rec.ID, rec.ID), b)
		}
	}
	if err != nil {
		derr := n.cfg.Entry.Driver.DeleteEndpoint(rb, drivers.DeleteEndpointRequest{NetworkID: drivers.NetworkID(n.rec.ID), EndpointID: drivers.EndpointID(rec.ID)})
		release()
		return nil, errors.Join(fmt.Errorf("network %s: create endpoint %s: store: %w", n.rec.Name, name, err), derr)
	}
	ep = epobj.New(n.epConfig(runtime), rec, rev)
	n.mu.Lock()
	n.endpoints[rec.ID] = ep
	n.names[name] = rec.ID
	if store && n.cfg.Publish != nil {
		// Under the lock, so that nothing can find the endpoint, join it and publish that
		// before its creation is published. Without a record, its Join publishes it.
		n.cfg.Publish(events.Event{
			Kind: events.EndpointCreated, NetworkID: n.rec.ID, Network: n.rec.Name,
			EndpointID: rec.ID, Endpoint: rec.Name, IPv4: rec.IPv4, IPv6: rec.IPv6,
		})
	}
	n.mu.Unlock()
	return ep, nil
}

func hasKey(m map[string]string, k string) bool { _, ok := m[k]; return ok }

func (n *Net) checkSpec(s endpoint.Spec) error {
	if s.MAC != nil && len(s.MAC) != 6 {
		return errclass.Invalid("mac address", s.MAC.String(), "want 6 bytes")
	}
	if s.MAC != nil && s.MAC[0]&1 == 1 {
		return errclass.Invalid("mac address", s.MAC.String(), "multicast address")
	}
	if err := s.Validate(); err != nil {
		return err
	}
	if len(s.Ports) > 0 && !n.cfg.Entry.Caps.Ports && !n.cfg.Entry.Caps.GatewayPorts {
		return &errclass.NotSupportedError{What: "published ports (" + s.Ports[0].String() + ") on a network of driver " + n.cfg.Entry.Name}
	}
	if len(s.Ports) > 0 && n.rec.Internal {
		return errclass.Invalid("published ports", s.Ports[0].String(), "an internal network publishes no ports")
	}
	if n.cfg.Entry.Caps.NoIPAM && (s.IPv4.IsValid() || s.IPv6.IsValid()) {
		return errclass.Invalid("ip", s.IPv4.String(), fmt.Sprintf("driver %s takes no addresses", n.rec.Driver))
	}
	check := func(field string, a netip.Addr, cs []network.IPAMConfig) error {
		if !a.IsValid() {
			return nil
		}
		if len(cs) == 0 {
			return errclass.Invalid(field, a.String(), "the network has no subnet of that family")
		}
		if !cs[0].Subnet.Contains(a.Unmap()) {
			return errclass.Invalid(field, a.String(), fmt.Sprintf("not inside subnet %s", cs[0].Subnet))
		}
		return nil
	}
	if err := check("ip", s.IPv4, n.rec.IPv4); err != nil {
		return err
	}
	return check("ip6", s.IPv6, n.rec.IPv6)
}

// RestoreEndpoint adds an endpoint read back from the store after a restart, replaying its
// addresses into IPAM; runtime says its record was read from Config.RunStore.
func (n *Net) RestoreEndpoint(ctx context.Context, rec epobj.Record, rev uint64, runtime bool) (*epobj.Ep, error) {
	if !n.cfg.Entry.Caps.NoIPAM {
		if err := n.checkDuplicate(rec); err != nil {
			return nil, err
		}
		// An address the IPAM driver holds already is adopted: a driver that keeps its own
		// state still has it (duplicates between records were refused above).
		request := func(pool ipam.PoolID, a netip.Addr) error {
			_, err := n.cfg.IPAM.RequestAddress(ctx, pool, a)
			if errors.Is(err, ipam.ErrAddressInUse) {
				return nil
			}
			return err
		}
		if rec.IPv4.IsValid() && n.poolV4 != "" {
			if err := request(n.poolV4, rec.IPv4.Addr()); err != nil {
				return nil, fmt.Errorf("endpoint %s: restore %s: %w", rec.Name, rec.IPv4.Addr(), err)
			}
		}
		if rec.IPv6.IsValid() && n.poolV6 != "" {
			if err := request(n.poolV6, rec.IPv6.Addr()); err != nil {
				if rec.IPv4.IsValid() {
					_ = n.cfg.IPAM.ReleaseAddress(ctx, n.poolV4, rec.IPv4.Addr())
				}
				return nil, fmt.Errorf("endpoint %s: restore %s: %w", rec.Name, rec.IPv6.Addr(), err)
			}
		}
	}
	if _, err := n.cfg.Entry.Driver.CreateEndpoint(ctx, drivers.CreateEndpointRequest{
		NetworkID: drivers.NetworkID(n.rec.ID), EndpointID: drivers.EndpointID(rec.ID),
		MAC: parseMAC(rec.MAC), IPv4: rec.IPv4, IPv6: rec.IPv6, Ports: n.driverPorts(rec.Ports),
	}); err != nil {
		return nil, fmt.Errorf("endpoint %s: restore: driver %s: %w", rec.Name, n.cfg.Entry.Name, err)
	}
	ep := epobj.New(n.epConfig(runtime), rec, rev)
	n.mu.Lock()
	n.endpoints[rec.ID] = ep
	n.names[rec.Name] = rec.ID
	n.mu.Unlock()
	if bs := n.behindStore(runtime); bs != nil {
		// Its global copy is written unless it is there: the process may have stopped
		// before it was.
		if b, err := json.Marshal(rec); err == nil {
			bs.w.Requeue(n, epobj.Key(n.rec.ID, rec.ID), b)
		}
	}
	return ep, nil
}

// checkDuplicate refuses a restored endpoint whose address another endpoint of the network
// holds, or that is the gateway or an aux address.
func (n *Net) checkDuplicate(rec epobj.Record) error {
	taken := func(p netip.Prefix, cfgs []network.IPAMConfig) string {
		if !p.IsValid() {
			return ""
		}
		for _, c := range cfgs {
			if c.Gateway == p.Addr() {
				return "the gateway"
			}
			for name, a := range c.AuxAddresses {
				if a == p.Addr() {
					return "aux address " + name
				}
			}
		}
		return ""
	}
	if by := taken(rec.IPv4, n.rec.IPv4) + taken(rec.IPv6, n.rec.IPv6); by != "" {
		return fmt.Errorf("endpoint %s: restore: %w: held by %s", rec.Name, ipam.ErrAddressInUse, by)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, ep := range n.endpoints {
		o := ep.Info()
		if (rec.IPv4.IsValid() && o.IPv4.Addr() == rec.IPv4.Addr()) || (rec.IPv6.IsValid() && o.IPv6.Addr() == rec.IPv6.Addr()) {
			return fmt.Errorf("endpoint %s: restore: %w: held by endpoint %s", rec.Name, ipam.ErrAddressInUse, o.Name)
		}
	}
	return nil
}

func parseMAC(s string) net.HardwareAddr {
	m, _ := net.ParseMAC(s)
	return m
}

// Endpoints implements Network.
func (n *Net) Endpoints() []endpoint.Endpoint {
	eps := n.eps()
	out := make([]endpoint.Endpoint, len(eps))
	for i, e := range eps {
		out[i] = e.Sealed()
	}
	return out
}

// eps returns the network's endpoints as their implementation type, sorted by name.
func (n *Net) eps() []*epobj.Ep {
	n.mu.Lock()
	eps := slices.Collect(maps.Values(n.endpoints))
	n.mu.Unlock()
	sort.Slice(eps, func(i, j int) bool { return eps[i].Name() < eps[j].Name() })
	return eps
}

// Eps returns the network's endpoints as *epobj.Ep, sorted by name.
func (n *Net) Eps() []*epobj.Ep { return n.eps() }

// EpsOf appends to eps the network's endpoints joined to sandbox sbID, in no order, and
// returns the result. It copies no record: Controller.DeleteSandbox calls it on every network.
func (n *Net) EpsOf(eps []*epobj.Ep, sbID string) []*epobj.Ep {
	n.mu.Lock()
	all := slices.Collect(maps.Values(n.endpoints))
	n.mu.Unlock()
	for _, ep := range all {
		if ep.SandboxID() == sbID {
			eps = append(eps, ep)
		}
	}
	return eps
}

// Endpoint implements Network.
func (n *Net) Endpoint(nameOrID string) (endpoint.Endpoint, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	ep, err := lookup.ByNameOrID("endpoint", nameOrID, n.names, n.endpoints)
	if err != nil {
		return nil, err
	}
	return ep.Sealed(), nil
}

// beginOp runs Config.Begin, if any: an error refuses the operation op, else the caller must
// call the returned func when done.
func (n *Net) beginOp(op string) (func(), error) {
	if n.cfg.Begin == nil {
		return func() {}, nil
	}
	end, err := n.cfg.Begin()
	if err != nil {
		return nil, fmt.Errorf("network %s: %s: %w", n.rec.Name, op, err)
	}
	return end, nil
}

// Delete implements Network.
func (n *Net) Delete(ctx context.Context) error {
	if err := errclass.CheckContext(ctx); err != nil {
		return fmt.Errorf("network %s: delete: %w", n.rec.Name, err)
	}
	endOp, err := n.beginOp("delete")
	if err != nil {
		return err
	}
	defer endOp()
	n.mu.Lock()
	if n.deleted {
		n.mu.Unlock()
		return nil
	}
	if n.deleting {
		n.mu.Unlock()
		return &errclass.ConflictError{Kind: "network", Name: n.rec.Name, Reason: "being deleted"}
	}
	if len(n.names) > 0 {
		names := slices.Sorted(maps.Keys(n.names))
		n.mu.Unlock()
		return &errclass.ConflictError{Kind: "network", Name: n.rec.Name, Reason: fmt.Sprintf("has active endpoints (%s)", strings.Join(names, ", "))}
	}
	n.deleting = true
	n.mu.Unlock()
	err = n.delete(ctx)
	n.mu.Lock()
	if err != nil && n.gone {
		// The record went from the store, as the watch saw, though the store's answer to
		// the delete did not say so (a transaction whose outcome was unknown): it is deleted,
		// and its pools, left held, are freed by the sweep as orphans.
		n.cfg.Logger.Warn("network deleted though the store did not confirm it", "network", n.rec.Name, "err", err)
		err = nil
	}
	n.deleting = false
	n.deleted = err == nil
	n.mu.Unlock()
	if err != nil {
		return err
	}
	// Before OnDelete frees the name: a network created again under it is published after.
	n.publish(events.NetworkDeleted, false)
	if n.cfg.OnDelete != nil {
		n.cfg.OnDelete(n.rec.ID)
	}
	return nil
}

func (n *Net) delete(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("network %s: delete: %w", n.rec.Name, err)
	}
	finish, err := n.cfg.Records.BeginDelete(ctx, n.rec)
	if err != nil {
		return fmt.Errorf("network %s: delete: %w", n.rec.Name, err)
	}
	rb := context.WithoutCancel(ctx)
	if err := n.cfg.Entry.Driver.DeleteNetwork(ctx, drivers.DeleteNetworkRequest{NetworkID: drivers.NetworkID(n.rec.ID)}); err != nil {
		return errors.Join(fmt.Errorf("network %s: delete: driver %s: %w", n.rec.Name, n.cfg.Entry.Name, err), finish(rb, false))
	}
	if err := finish(rb, true); err != nil {
		return fmt.Errorf("network %s: delete: %w", n.rec.Name, err)
	}
	n.releasePools(rb)
	n.freeAfterDelete(rb)
	return nil
}

// freeAfterDelete frees the allocation of a network whose record is gone. A failure is only
// logged: the network is deleted, and the sweep frees a global driver's orphans.
func (n *Net) freeAfterDelete(ctx context.Context) {
	if err := n.freeDriver(ctx); err != nil {
		n.cfg.Logger.Warn("free network allocation", "network", n.rec.Name, "err", err)
	}
}

// Forget drops a global network that another host deleted: the driver removes what it made on
// this host; the store and the shared IPAM pools were cleaned by the deleting host. Local
// endpoints, which the deleting host's check cannot have missed unless the store lost them, are
// dropped with it. It publishes events.NetworkDeleted with Remote set.
func (n *Net) Forget(ctx context.Context) error {
	n.mu.Lock()
	if n.deleted {
		n.mu.Unlock()
		return nil
	}
	if n.deleting {
		// This host's Delete removed the record that the watch saw go: Delete finishes, and
		// publishes a delete of this host's.
		n.gone = true
		n.mu.Unlock()
		return nil
	}
	n.deleted = true
	n.mu.Unlock()
	err := n.cfg.Entry.Driver.DeleteNetwork(ctx, drivers.DeleteNetworkRequest{NetworkID: drivers.NetworkID(n.rec.ID), Forget: true})
	n.publish(events.NetworkDeleted, true)
	if n.cfg.OnDelete != nil {
		n.cfg.OnDelete(n.rec.ID)
	}
	if err != nil {
		return fmt.Errorf("network %s: forget: driver %s: %w", n.rec.Name, n.cfg.Entry.Name, err)
	}
	return nil
}

// Reassert puts back the record of ep, an endpoint of this host whose record is gone from the
// global store (the other hosts reclaimed it while this host's registration had lapsed): it
// takes its addresses back from IPAM, then writes the record. An address that another endpoint
// took meanwhile fails it with an error matching cnm.ErrConflict, and nothing is changed. It
// reports false when the record was there.
//
// A read may go back in time (a Consul server answering before it replayed its log): the
// reconcile of this host's address blocks may have taken the record for gone and freed its
// addresses, and this call's own read may do the same. So a record found there has its
// addresses taken back too (those held already are left as they are), and one that the write
// finds there keeps the addresses taken for it.
func (n *Net) Reassert(ctx context.Context, ep *epobj.Ep) (bool, error) {
	rec := ep.Record()
	if n.cfg.Behind != nil && n.cfg.Behind.Owns(ep.Store()) {
		// Its global copy may be queued yet.
		if err := n.cfg.Behind.Flush(ctx); err != nil {
			return false, err
		}
	}
	addrs := []struct {
		pool ipam.PoolID
		p    netip.Prefix
	}{{n.poolV4, rec.IPv4}, {n.poolV6, rec.IPv6}}
	_, err := n.cfg.Records.Store().Get(ctx, epobj.Key(n.rec.ID, rec.ID))
	switch {
	case err == nil:
		for _, a := range addrs {
			if a.pool == "" || !a.p.IsValid() {
				continue
			}
			if _, err := n.cfg.IPAM.RequestAddress(ctx, a.pool, a.p.Addr()); err != nil && !errors.Is(err, ipam.ErrAddressInUse) {
				return false, fmt.Errorf("network %s: endpoint %s: hold %s: %w", n.rec.Name, rec.Name, a.p.Addr(), err)
			}
		}
		return false, nil
	case !errors.Is(err, kvstore.ErrKeyNotFound):
		return false, err
	}
	var taken []func()
	undo := func() {
		for _, f := range taken {
			f()
		}
	}
	rb := context.WithoutCancel(ctx)
	for _, a := range addrs {
		if a.pool == "" || !a.p.IsValid() {
			continue
		}
		if _, err := n.cfg.IPAM.RequestAddress(ctx, a.pool, a.p.Addr()); err != nil {
			undo()
			return false, fmt.Errorf("network %s: endpoint %s: take back %s: %w", n.rec.Name, rec.Name, a.p.Addr(), err)
		}
		taken = append(taken, func() { _ = n.cfg.IPAM.ReleaseAddress(rb, a.pool, a.p.Addr()) })
	}
	if err := ep.Rewrite(ctx); err != nil {
		if errors.Is(err, kvstore.ErrKeyExists) {
			return false, nil // there after all: the read went back in time
		}
		undo()
		return false, err
	}
	return true, nil
}

// ReleaseReclaimed frees the addresses of rec, an endpoint of another host that is gone from
// the registry, whose record the cluster deleted (the delete at its revision makes one
// survivor the one that frees them).
func (n *Net) ReleaseReclaimed(ctx context.Context, rec epobj.Record) error {
	var errs []error
	if rec.IPv4.IsValid() && n.poolV4 != "" {
		errs = append(errs, n.cfg.IPAM.ReleaseAddress(ctx, n.poolV4, rec.IPv4.Addr()))
	}
	if rec.IPv6.IsValid() && n.poolV6 != "" {
		errs = append(errs, n.cfg.IPAM.ReleaseAddress(ctx, n.poolV6, rec.IPv6.Addr()))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("network %s: reclaim endpoint %s: ipam: %w", n.rec.Name, rec.Name, err)
	}
	return nil
}

// portsViaGateway reports whether the network's published ports go on its endpoints'
// sandboxes' gateway endpoints rather than through its driver (Capabilities.GatewayPorts).
func (n *Net) portsViaGateway() bool {
	return !n.cfg.Entry.Caps.Ports && n.cfg.Entry.Caps.GatewayPorts
}

// driverPorts returns the ports that the driver publishes of ports: none when they go
// through the gateway network.
func (n *Net) driverPorts(ports []drivers.PortBinding) []drivers.PortBinding {
	if n.portsViaGateway() {
		return nil
	}
	return ports
}
