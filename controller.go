// Package cnm is an embeddable implementation of the Container Networking Model: the
// Controller that owns drivers, IPAM and the store, and creates networks and sandboxes.
//
// A Go program imports it to give containers networks, as Docker's libnetwork did:
//
//	c, err := cnm.New(ctx, cnm.Config{DataDir: dir})
//	nw, err := c.NewNetwork(ctx, "new_bridge", "bridge", network.WithSubnet(netip.MustParsePrefix("10.10.0.0/24")))
//	db, err := c.NewSandbox(ctx, "db")
//	ep, err := nw.CreateEndpoint(ctx, "db")
//	err = ep.Join(ctx, db) // db now has eth0 with an address on new_bridge
//
// # Privileges
//
// The Controller works on the kernel: it needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN). It acts
// on the host namespace named by Config.HostNetns (by default the caller's), and creates a
// namespace per sandbox, bind-mounted under Config.RunDir.
//
// Config.Machine replaces what it asks of the kernel: the host namespace and the sandboxes'
// namespaces. With the in-memory sandboxtest.Machine (package sandbox/sandboxtest) and drivers
// that do no kernel work (the built-in host and null, and drivers/driverstest's Fake in place
// of the bridge driver, through Config.Drivers), the Controller needs no privilege: names,
// Connect and Disconnect, events, restore across restarts and the multi-host logic run as any
// user. cnm's unprivileged tests run this way, and an orchestrator's can.
//
// It needs Linux. The module builds on other systems, so that programs embedding it can be
// built there, but New fails on them with an error matching ErrNotSupported, before it touches
// anything, unless it is given a Config.Machine (and a bridge driver) of the caller's.
//
// # State and restart
//
// Networks, endpoints and sandboxes are kept in a kvstore.Store (bbolt under Config.DataDir by
// default): an endpoint's record is the only copy of its addresses. New on the same DataDir
// restores every object, replays IPAM from the live endpoints, and reconciles the kernel with
// the store: leftovers of a crash (a namespace, bridge or veth without a record) are removed,
// records whose kernel objects vanished are cleaned up. Repairs returns what was fixed.
//
// The endpoints that Connect makes for a sandbox with a namespace (all but host-mode ones)
// keep their records in the run store instead (RunDir/records.log, Config.RunStore): a journal
// on the RunDir's tmpfs, appended with one write and no fsync. Such an endpoint lives no longer
// than its sandbox's namespace, which a reboot removes, so its record must outlive a crash of
// the process, which it does (the write is in the page cache), not of the machine: Connect's
// one commit costs microseconds instead of two disk flushes. After a reboot the tmpfs is
// empty, and the sandboxes' records, without their namespaces, are dropped as before.
// Endpoints made by Network.CreateEndpoint, and host-mode sandboxes' endpoints, stay in the
// local store.
//
// A network whose driver or IPAM driver is not registered at start (one registered with
// RegisterDriver after New) is never pruned: it waits, with its records, name, subnets and
// interfaces kept, and RegisterDriver or RegisterIPAMDriver restores it with its endpoints.
// Waiting lists such networks.
//
// # Global scope: several hosts
//
// With Config.GlobalStore (etcd or Consul, see kvstore/kvurl), networks of global-scope
// drivers live in that store with their endpoints and the global IPAM space; local networks
// stay in the local store. Each host registers under Config.Hostname on a lease; it watches the
// global networks (adopting those other hosts create, forgetting those they delete) and the
// registry (reclaiming the endpoints of a host whose lease ran out). Names of global networks
// are unique across the cluster and a global network with endpoints on any host cannot be
// deleted. Every call to the global store is bounded by Config.StoreTimeout and fails with
// ErrUnavailable past it. The registry's first host (by name) sweeps the store every
// min(HostTTL, 5s) for what departed hosts and failed writes left.
//
// A host whose lease runs out while it is cut off from the store (longer than HostTTL) may have
// its endpoints reclaimed by the others meanwhile; when the store answers again it registers
// again and puts their records back, taking their addresses back from IPAM (an address another
// endpoint took in between is reported in Reclaimed). Keep HostTTL above the outages to ride
// out, so that this stays rare. New needs the global store to answer: it restores the global
// networks.
//
// An endpoint that Connect makes for a sandbox's namespace on a global network keeps its record
// in the run store, as on a local network, and the copy that the other hosts read follows it
// (netobj.WriteBehind). For the host's first endpoint on the network, the copy is written
// before Connect returns, and from then on fences the network's deletion on every host. For the
// others, it is written after Connect returns, in order, and retried until the store answers.
// So such a Connect does not wait for the store's round trip. It works while the store is
// down, unless it must claim a new address block.
//
// All of this lives in package cluster, with its own lock and lifecycle; a network's Records
// (netobj.LocalRecords, or the cluster) is chosen by its driver's DataScope, stated at
// registration. The gossip plane (Config.Gossip) is started and stopped with the Controller
// and reaches drivers that ask for it (drivers.GossipUser) as drivers.Gossip.
//
// # Where each fact lives
//
// Local store: local networks' and their endpoints' records, sandbox records, this host's
// identity in the cluster. Run store: the records of the endpoints Connect makes for a
// sandbox's namespace (on global networks too: the global store has their copies). Global
// store: global networks' records (with their drivers' allocations, such as a VNI), name keys,
// delete fences, their endpoints' records (each naming its host), host registry entries, the
// global IPAM, the gossip keyring. Kernel: namespaces, links, addresses, routes, rules,
// rebuilt or adopted from the records at start. Memory: only what the store and the kernel
// give back (the networks waiting for a driver, the gateway-network claims, both rebuilt from
// records).
//
// # Events
//
// Events returns a channel of typed events (package events): networks, endpoints and
// sandboxes created and deleted, endpoints joined and left, hosts joining and leaving the
// registry, and repairs made at run time, in the order they happened, each published once its
// store commit is done. A receiver that falls more than Config.EventBuffer events behind loses
// the newest ones and is told how many; the Controller never waits for it. Restoring in New
// publishes nothing: read the state after subscribing.
//
// # Embedded DNS
//
// Sandboxes with an endpoint on a user-defined network (any network whose driver's sandboxes
// have a namespace of their own, but the default bridge network, as in Docker, and
// GatewayNetwork) are served by an embedded DNS resolver (package resolver) at 127.0.0.11:53,
// UDP and TCP. One resolver runs in the Controller's process; it answers on a socket and a
// listener opened inside each such sandbox's namespace once its first such endpoint joins, and
// closed when its last one leaves or the sandbox is deleted. The sandbox's resolv.conf then
// names 127.0.0.11 only (with options ndots:0, unless the sandbox's DNSOptions set ndots), and
// the sandbox's own DNS servers, else the host's (Config.HostResolvConf), become the
// resolver's upstreams, reached from the sandbox's namespace; when it leaves its last such
// network, its resolv.conf gets them back. The resolver follows the event stream (and reads the
// state at New, so that a restarted Controller serves the same names), a few milliseconds at
// most behind each operation. It is off with Config.DisableDNS, and with a Config.Machine
// (there are no namespaces to open its sockets in). Sandboxes sharing another's namespace
// (ContainerMode) keep their own resolv.conf. On global-scope networks, with the gossip
// plane, each host publishes the names of its endpoints in the network's gossip table "dns"
// and resolves the other hosts' from it, while it has endpoints on the network.
//
// # Concurrency
//
// Every method of the Controller, and of the networks, endpoints and sandboxes it returns, is
// safe for concurrent use.
//
// # Close and bad arguments
//
// Once Close has begun, every method that returns an error (of the Controller, and of the
// networks, endpoints and sandboxes it returned: CreateEndpoint, Delete, Join, Leave,
// ReserveName, AddInterface, RemoveInterface, ...) refuses with an error matching
// ErrUnavailable before it touches the kernel, the store, the files or the Controller's own
// state; Close waits for the operations that began before it. Those taking a context refuse a
// nil one with an error matching ErrInvalidParameter, before they reserve anything. Lock order: Controller, then network, then endpoint, then sandbox,
// and the event stream's last; no lock is held across a driver, IPAM, store or netlink call.
package cnm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cnmkit/cnm/cluster"
	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/drivers/bridge"
	"github.com/cnmkit/cnm/drivers/host"
	"github.com/cnmkit/cnm/drivers/macvlan"
	"github.com/cnmkit/cnm/drivers/null"
	"github.com/cnmkit/cnm/drivers/overlay"
	"github.com/cnmkit/cnm/endpoint"
	"github.com/cnmkit/cnm/events"
	"github.com/cnmkit/cnm/gossip"
	"github.com/cnmkit/cnm/internal/epobj"
	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/cnmkit/cnm/internal/lookup"
	"github.com/cnmkit/cnm/internal/netobj"
	"github.com/cnmkit/cnm/ipam"
	"github.com/cnmkit/cnm/kvstore"
	"github.com/cnmkit/cnm/kvstore/boltdb"
	"github.com/cnmkit/cnm/network"
	"github.com/cnmkit/cnm/resolver"
	"github.com/cnmkit/cnm/sandbox"
)

// Names of the predefined networks, created on first start like Docker's.
const (
	DefaultNetwork = "bridge" // bridge driver, device DefaultBridge
	HostNetwork    = "host"   // host driver
	NoneNetwork    = "none"   // null driver
	DefaultBridge  = "cnm0"
)

// DefaultSubnet is the default bridge network's subnet unless it overlaps a host route.
var DefaultSubnet = netip.MustParsePrefix("172.17.0.0/16")

// Config configures a Controller. The zero value is usable as root on a Linux host.
type Config struct {
	// DataDir holds the store (DataDir/local.db). Default /var/lib/cnm.
	DataDir string
	// RunDir holds what lives as long as the sandboxes' namespaces: their bind mounts
	// (RunDir/netns/<id>) and their hosts and resolv.conf files (RunDir/sandboxes/<id>/), which
	// are rewritten on restart. Default /run/cnm. It should be on a tmpfs, as /run is: on a disk
	// filesystem each file and mount point costs a metadata operation of the filesystem's
	// journal, whose time depends on every other writer of that filesystem (New logs a warning).
	// Sandboxes made by an older version, whose files are under DataDir/sandboxes/<id>/, keep
	// them there.
	RunDir string
	// HostNetns is the path of the namespace the Controller treats as the host's (bridges live
	// there; host-mode sandboxes use it). Default: the caller's namespace at New. It must be
	// empty when Machine is set.
	HostNetns string
	// Machine is what the Controller asks of the machine: the host namespace (its path, for
	// the bridge driver and host-mode sandboxes, and its routes, which IPAM avoids) and the
	// sandboxes' namespaces. Nil means the real kernel: New opens the namespace HostNetns
	// names (sandbox.OpenKernel) and Close closes it. Another Machine, such as
	// sandbox/sandboxtest's in-memory one, lets the Controller run without privileges, with
	// drivers that need none: the built-in bridge driver needs a real host namespace, so
	// replace it through Drivers. The Controller does not close a Machine it was given.
	Machine sandbox.Machine
	// Store replaces the embedded bbolt store. The Controller does not close a Store it was given.
	Store kvstore.Store
	// RunStore replaces the run store, RunDir/records.log (a journal in memory and on the
	// tmpfs, no fsync), for the records of endpoints that Connect makes for a sandbox with a
	// namespace, which a reboot removes with the namespace (see "State and restart" in the
	// package doc). Connect commits to it before its kernel work rather than beside it, so it
	// must commit in microseconds. The Controller does not close a RunStore it was given;
	// giving Store here as well keeps every record in it.
	RunStore kvstore.Store
	// IPAM replaces the built-in "default" IPAM driver (ipam.Default with its default pools).
	IPAM ipam.Allocator
	// IPAMDrivers registers extra IPAM drivers by name, next to "default"; a network picks
	// one with network.WithIPAMDriver.
	IPAMDrivers map[string]ipam.Allocator
	// Drivers registers drivers by name, next to the built-in bridge, host, null and macvlan
	// (macvlan is built in when Machine is nil, or with a Machine when the bridge driver is
	// built in too). A driver named "bridge", "host", "null" or "macvlan" replaces that
	// built-in one, which is then not created:
	// the predefined network of that name uses it (the bridge network without
	// bridge.NetworkOptions), and so do the networks restored from the store.
	Drivers map[string]drivers.Driver
	// DisableIPTables makes the built-in bridge driver write no iptables rules and leave
	// forwarding alone (Docker's --iptables=false): no NAT, ICC or isolation rules.
	DisableIPTables bool
	// Firewall chooses the built-in bridge driver's firewall backend: bridge.FirewallIPTables
	// (iptables-restore; the zero value, for now), bridge.FirewallNftables (nf_tables over
	// netlink, no process on any path) or bridge.FirewallAuto (nftables where the kernel has
	// it and no iptables-legacy rules are in use). See the bridge package doc for both
	// backends' rules.
	Firewall bridge.Firewall
	// PortRange is where the built-in bridge driver picks ephemeral host ports for published
	// ports (-P); the zero value is 49153-60999.
	PortRange bridge.PortRange
	// NoPredefinedNetworks skips creating the bridge, host and none networks.
	NoPredefinedNetworks bool
	// Logger receives the Controller's logs. Nil discards them.
	Logger *slog.Logger
	// EventBuffer is how many events each receiver of Events may fall behind before newer
	// ones are dropped for it (and reported by an events.Dropped event). Zero means
	// events.DefaultBuffer (1024); negative is invalid.
	EventBuffer int

	// GlobalStore is the store that hosts share (etcd or Consul, opened with
	// kvstore/kvurl.Open): networks of global-scope drivers, their endpoints, the global
	// IPAM space and the host registry live there. It must implement kvstore.Batcher and
	// kvstore.Leaser. Nil: no global-scope networks. The Controller does not close it.
	GlobalStore kvstore.Store
	// GlobalIPAM replaces the IPAM of global networks; default ipam.Global on GlobalStore.
	GlobalIPAM ipam.Allocator
	// NoGlobalAddressBlocks makes the default global IPAM take one compare-and-swap of the
	// store per address. By default it hands out this host's dynamic addresses from blocks it
	// claims for itself (ipam.GlobalConfig.Host): no store write per address, so an attach
	// does not wait for a compare-and-swap.
	NoGlobalAddressBlocks bool
	// Hostname is this host's name in the registry, unique in the cluster. Default: the
	// machine's host name.
	Hostname string
	// HostTTL is how long the registry keeps this host after its last renewal (a crashed
	// host's endpoints are reclaimed by the survivors once it has run out). Default
	// DefaultHostTTL; the store may round it up (Consul: at least 10s).
	HostTTL time.Duration
	// StoreTimeout bounds each call to GlobalStore: past it the call fails with an error
	// matching ErrUnavailable. Default DefaultStoreTimeout.
	StoreTimeout time.Duration

	// Gossip starts the gossip plane: a gossip.Node with this configuration, started by New
	// and closed by Close, given to the drivers that need one (drivers.GossipUser). Its
	// NodeName defaults to Hostname (else the machine's host name), its Logger to Logger, and
	// its Store to GlobalStore when that store has locks (kvstore.Locker), so that the
	// cluster's keyring and rotation schedule are kept there. Nil (and GossipNode nil): no
	// gossip plane, and networks of drivers that need one are refused with ErrNotSupported.
	Gossip *gossip.Config
	// GossipPeers are members ("host:port") the gossip node joins at start; when none
	// answers, New goes on and the node keeps trying in the background.
	GossipPeers []string
	// GossipNode is a gossip node the caller started (and closes), used instead of Gossip.
	GossipNode *gossip.Node
	// DisableDNS turns the embedded DNS resolver off: sandboxes on user-defined networks then
	// get the host's resolvers in their resolv.conf, as those on the default bridge do.
	DisableDNS bool
	// DNS configures the embedded DNS resolver (package resolver): its forwarding bounds and
	// timeout, and the per-sandbox query rate. Its Logger defaults to Logger.
	DNS resolver.Config
	// HostResolvConf is the host's resolv.conf, from which sandboxes take the nameservers,
	// search domains and options they were not given (and the embedded resolver its
	// upstreams). Default /etc/resolv.conf.
	HostResolvConf string

	// Overlay configures the built-in overlay driver (registered as "overlay" with a
	// GlobalStore, unless Drivers replaces it): this host's VTEP address or interface, the
	// VXLAN port and the VNI range. Its Store, HostNetns, RunDir (RunDir/overlay) and Logger
	// are the Controller's.
	Overlay overlay.Config
}

// Controller is the entry point: it owns the drivers, IPAM and the store, and creates networks
// and sandboxes. Create it with New and release it with Close.
type Controller struct {
	cfg      Config
	log      *slog.Logger
	store    kvstore.Store
	ownStore bool
	run      kvstore.Store // the run store (see openRunStore)
	ownRun   bool
	ipam     ipam.Allocator // the "default" IPAM driver
	reg      drivers.Registry
	machine  sandbox.Machine
	kernel   *sandbox.Kernel // the Machine New opened, closed by Close; nil with Config.Machine
	bridge   bool            // whether "bridge" is the built-in bridge driver
	seq      atomic.Uint64
	cluster  *cluster.Cluster // nil without Config.GlobalStore
	// behind keeps the global copies of runtime endpoints' records on global networks, whose
	// own records are in the run store; nil without a cluster or a run store of its own.
	behind *netobj.WriteBehind
	gossip *gossipPlane // nil without Config.Gossip or GossipNode
	gw     gatewayService
	bus    events.Bus  // what Events returns; closed by Close
	dns    *dnsService // the embedded DNS resolver; nil when off

	// ops counts the operations in flight: each is added under mu while the Controller is
	// open (begin), and Close waits for them once it has marked the Controller closed.
	ops sync.WaitGroup

	mu        sync.Mutex                // guards following
	ipams     map[string]ipam.Allocator // IPAM drivers by name
	networks  map[string]*netobj.Net
	netNames  map[string]string      // name -> ID; "" while being created
	reclaimed []drivers.Repair       // endpoints of departed hosts reclaimed here
	repairs   []drivers.Repair       // what restores (New's, and later registrations') repaired
	sandboxes map[string]*sbox       // by ID; nil while being created
	waiting   map[string]*waitingNet // by ID: networks kept in the store, not restored yet
	closed    bool                   // Close has begun: no operation may begin
}

type sbox struct {
	ns       sandbox.Handle
	rec      sandboxRecord
	deleting bool
}

// user returns the sandbox as the Controller hands it out.
func (sb *sbox) user(c *Controller) sandbox.Sandbox { return userSandbox{Sandbox: sb.ns, c: c} }

// userSandbox is a sandbox as the Controller hands it out: the methods that change it refuse
// once the Controller is closing or closed, as the Controller's own do. It is a comparable
// value: two handed out for one sandbox are equal.
type userSandbox struct {
	sandbox.Sandbox
	c *Controller
}

// ReserveName implements sandbox.Sandbox.
func (s userSandbox) ReserveName(want string) (string, func(), error) {
	end, err := s.c.begin()
	if err != nil {
		return "", nil, fmt.Errorf("sandbox %s: reserve name: %w", s.ID(), err)
	}
	defer end()
	return s.Sandbox.ReserveName(want)
}

// AddInterface implements sandbox.Sandbox.
func (s userSandbox) AddInterface(ctx context.Context, cfg sandbox.InterfaceConfig) error {
	if err := errclass.CheckContext(ctx); err != nil {
		return fmt.Errorf("sandbox %s: add interface: %w", s.ID(), err)
	}
	end, err := s.c.begin()
	if err != nil {
		return fmt.Errorf("sandbox %s: add interface: %w", s.ID(), err)
	}
	defer end()
	return s.Sandbox.AddInterface(ctx, cfg)
}

// RemoveInterface implements sandbox.Sandbox.
func (s userSandbox) RemoveInterface(ctx context.Context, name string) error {
	if err := errclass.CheckContext(ctx); err != nil {
		return fmt.Errorf("sandbox %s: remove interface: %w", s.ID(), err)
	}
	end, err := s.c.begin()
	if err != nil {
		return fmt.Errorf("sandbox %s: remove interface: %w", s.ID(), err)
	}
	defer end()
	return s.Sandbox.RemoveInterface(ctx, name)
}

// New creates a Controller, restoring and reconciling the state kept in its store. On systems
// other than Linux it fails with an error matching [ErrNotSupported], unless Config.Machine is
// a machine of the caller's (sandbox/sandboxtest's, say) and Config.Drivers replaces the
// bridge driver: then it runs as on Linux, without a kernel.
func New(ctx context.Context, cfg Config) (_ *Controller, err error) {
	if err := errclass.CheckContext(ctx); err != nil {
		return nil, fmt.Errorf("cnm: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("cnm: %w", err) // before any file is made
	}
	if cfg.Machine == nil {
		if err := checkSystem(); err != nil {
			return nil, fmt.Errorf("cnm: %w", err)
		}
	}
	if cfg.DataDir == "" {
		cfg.DataDir = "/var/lib/cnm"
	}
	if cfg.RunDir == "" {
		cfg.RunDir = "/run/cnm"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.EventBuffer < 0 {
		return nil, fmt.Errorf("cnm: %w", errclass.Invalid("EventBuffer", fmt.Sprint(cfg.EventBuffer), "must not be negative"))
	}
	dnsResolver, err := newDNSResolver(cfg)
	if err != nil {
		return nil, fmt.Errorf("cnm: DNS: %w", err)
	}
	if cfg.Machine != nil && cfg.HostNetns != "" {
		return nil, fmt.Errorf("cnm: %w", errclass.Invalid("HostNetns", cfg.HostNetns, "must be empty with Machine, which has its own host namespace"))
	}
	c := &Controller{
		cfg: cfg, log: cfg.Logger, store: cfg.Store, ipam: cfg.IPAM,
		networks: make(map[string]*netobj.Net), netNames: make(map[string]string),
		sandboxes: make(map[string]*sbox), waiting: make(map[string]*waitingNet),
	}
	c.gw.c = c
	// A failed New leaves behind no DataDir or store of its own making (an empty local.db
	// would make the next start's DataDir look used). Deferred before closeResources, so
	// that it runs after the store is closed.
	var made []string // removed on failure, last first; os.Remove keeps a directory not empty
	if _, serr := os.Lstat(cfg.DataDir); errors.Is(serr, os.ErrNotExist) {
		made = append(made, cfg.DataDir)
	}
	if db := filepath.Join(cfg.DataDir, "local.db"); cfg.Store == nil {
		if _, serr := os.Lstat(db); errors.Is(serr, os.ErrNotExist) {
			made = append(made, db)
		}
	}
	if cfg.RunStore == nil {
		if _, serr := os.Lstat(cfg.RunDir); errors.Is(serr, os.ErrNotExist) {
			made = append(made, cfg.RunDir)
		}
		if _, serr := os.Lstat(filepath.Join(cfg.RunDir, runStoreFile)); errors.Is(serr, os.ErrNotExist) {
			made = append(made, filepath.Join(cfg.RunDir, runStoreFile))
		}
	}
	defer func() {
		if err == nil {
			return
		}
		for _, p := range slices.Backward(made) {
			if rerr := os.Remove(p); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
				c.log.Debug("failed start: leave what it made", "path", p, "err", rerr)
			}
		}
	}()
	defer func() {
		if err != nil {
			c.closeResources()
		}
	}()
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("cnm: data dir: %w", err)
	}
	if c.machine = cfg.Machine; c.machine == nil {
		if c.kernel, err = sandbox.OpenKernel(cfg.HostNetns); err != nil {
			return nil, fmt.Errorf("cnm: %w", err)
		}
		c.machine = c.kernel
		if mem, err := sandbox.OnMemoryFS(cfg.RunDir); err == nil && !mem {
			c.log.Warn("run dir is not on a tmpfs: each sandbox's mount point and files are journaled metadata operations of a disk filesystem, slower and uneven under its other writers (see Config.RunDir)", "run_dir", cfg.RunDir)
		}
	}
	if c.store == nil {
		s, err := boltdb.Open(filepath.Join(cfg.DataDir, "local.db"), boltdb.Config{Logger: cfg.Logger})
		if err != nil {
			return nil, fmt.Errorf("cnm: store: %w", err)
		}
		c.store, c.ownStore = s, true
	}
	runRepair, err := c.openRunStore()
	if err != nil {
		return nil, err
	}
	if runRepair != nil {
		c.repaired(*runRepair)
	}
	if c.ipam == nil {
		a, err := ipam.NewDefault(ipam.DefaultConfig{})
		if err != nil {
			return nil, fmt.Errorf("cnm: ipam: %w", err)
		}
		c.ipam = a
	}
	c.ipams = map[string]ipam.Allocator{DefaultIPAM: c.ipam}
	for _, name := range slices.Sorted(maps.Keys(cfg.IPAMDrivers)) {
		if err := c.registerIPAM(name, cfg.IPAMDrivers[name]); err != nil {
			return nil, err
		}
	}
	builtin := map[string]drivers.Driver{"host": host.New(), "null": null.New()}
	if _, replaced := cfg.Drivers["bridge"]; !replaced {
		br, err := bridge.New(bridge.Config{HostNetns: c.machine.Path(), Logger: cfg.Logger, DisableIPTables: cfg.DisableIPTables, Firewall: cfg.Firewall, PortRange: cfg.PortRange})
		if err != nil {
			return nil, fmt.Errorf("cnm: bridge driver: %w", err)
		}
		builtin["bridge"], c.bridge = br, true
	}
	// macvlan works on the host namespace too; with a caller's Machine and no built-in bridge
	// there may be no kernel namespace behind Machine.Path, so it is built in only when the
	// Controller runs on the kernel or the bridge driver proved the namespace real.
	if _, replaced := cfg.Drivers["macvlan"]; !replaced && (cfg.Machine == nil || c.bridge) {
		mv, err := macvlan.New(macvlan.Config{HostNetns: c.machine.Path(), Logger: cfg.Logger})
		if err != nil {
			if br, ok := builtin["bridge"].(drivers.Closer); ok {
				br.Close() // not registered yet: closeResources does not see it
			}
			return nil, fmt.Errorf("cnm: macvlan driver: %w", err)
		}
		builtin["macvlan"] = mv
	}
	for _, name := range slices.Sorted(maps.Keys(builtin)) {
		if _, replaced := cfg.Drivers[name]; replaced {
			continue
		}
		if err := c.reg.Register(name, builtin[name]); err != nil {
			return nil, fmt.Errorf("cnm: %w", err)
		}
	}
	if err := c.startGossip(ctx); err != nil {
		return nil, err
	}
	for _, name := range slices.Sorted(maps.Keys(cfg.Drivers)) {
		if err := c.useGossip(name, cfg.Drivers[name]); err != nil {
			return nil, err
		}
		if err := c.reg.Register(name, cfg.Drivers[name]); err != nil {
			return nil, fmt.Errorf("cnm: register driver: %w", err)
		}
	}
	if err := c.registerOverlay(); err != nil {
		return nil, err
	}
	if err := c.initCluster(ctx); err != nil {
		return nil, err
	}
	if err := c.restore(ctx); err != nil {
		return nil, err
	}
	if c.cluster != nil {
		c.cluster.Start()
	}
	if !cfg.NoPredefinedNetworks {
		if err := c.ensurePredefined(ctx); err != nil {
			return nil, err
		}
	}
	c.startDNS(dnsResolver)
	return c, nil
}

// RegisterDriver adds driver d under name, exactly as the built-in drivers are registered,
// and restores the networks kept in the store that waited for it (see Waiting), with their
// endpoints. The driver stays registered even when a waiting network fails to restore: the
// error then names each such network, which keeps waiting with its records.
func (c *Controller) RegisterDriver(ctx context.Context, name string, d drivers.Driver) error {
	if err := errclass.CheckContext(ctx); err != nil {
		return fmt.Errorf("cnm: register driver: %w", err)
	}
	end, err := c.begin()
	if err != nil {
		return fmt.Errorf("cnm: register driver: %w", err)
	}
	defer end()
	if _, err := c.reg.Get(name); err == nil {
		return fmt.Errorf("cnm: register driver: %w", &errclass.AlreadyExistsError{Kind: "driver", Name: name})
	}
	if err := c.useGossip(name, d); err != nil {
		return err
	}
	if err := c.reg.Register(name, d); err != nil {
		return fmt.Errorf("cnm: register driver: %w", err)
	}
	if err := c.resume(ctx); err != nil {
		return fmt.Errorf("cnm: register driver %s: %w", name, err)
	}
	return nil
}

// DefaultIPAM is the name of the built-in IPAM driver.
const DefaultIPAM = "default"

// RegisterIPAMDriver adds the IPAM driver a under name; networks choose it with
// network.WithIPAMDriver(name). A name registered twice fails with ErrAlreadyExists. Networks
// kept in the store that waited for it are restored, as RegisterDriver does.
func (c *Controller) RegisterIPAMDriver(ctx context.Context, name string, a ipam.Allocator) error {
	if err := errclass.CheckContext(ctx); err != nil {
		return fmt.Errorf("cnm: register ipam driver: %w", err)
	}
	end, err := c.begin()
	if err != nil {
		return fmt.Errorf("cnm: register ipam driver: %w", err)
	}
	defer end()
	if err := c.registerIPAM(name, a); err != nil {
		return err
	}
	if err := c.resume(ctx); err != nil {
		return fmt.Errorf("cnm: register ipam driver %s: %w", name, err)
	}
	return nil
}

func (c *Controller) registerIPAM(name string, a ipam.Allocator) error {
	if err := network.ValidateName("ipam driver", name); err != nil {
		return fmt.Errorf("cnm: register ipam driver: %w", err)
	}
	if a == nil {
		return fmt.Errorf("cnm: register ipam driver: %w", errclass.Invalid("ipam driver", name, "nil allocator"))
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.ipams[name]; ok {
		return fmt.Errorf("cnm: register ipam driver: %w", &errclass.AlreadyExistsError{Kind: "ipam driver", Name: name})
	}
	c.ipams[name] = a
	return nil
}

// IPAMDrivers returns the names of the registered IPAM drivers, sorted.
func (c *Controller) IPAMDrivers() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Sorted(maps.Keys(c.ipams))
}

func (c *Controller) ipamDriver(name string) (ipam.Allocator, error) {
	if name == "" {
		name = DefaultIPAM
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if a, ok := c.ipams[name]; ok {
		return a, nil
	}
	return nil, &errclass.NotFoundError{Kind: "ipam driver", Name: name}
}

// Drivers returns the names of the registered drivers, sorted.
func (c *Controller) Drivers() []string { return c.reg.Names() }

// Repairs returns what New found and fixed while reconciling the store with the kernel, and
// what restoring a waiting network fixed since.
func (c *Controller) Repairs() []drivers.Repair {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.repairs)
}

func (c *Controller) repaired(r drivers.Repair) {
	c.mu.Lock()
	c.repairs = append(c.repairs, r)
	c.mu.Unlock()
	c.log.Warn("repaired", "object", r.Object, "action", r.Action, "reason", r.Reason)
	c.publishRepair(r)
}

// publishRepair publishes a Repaired event for r.
func (c *Controller) publishRepair(r drivers.Repair) {
	c.bus.Publish(events.Event{Kind: events.Repaired, Repair: events.Repair{Object: r.Object, Action: r.Action, Reason: r.Reason}})
}

// Events returns a channel that receives the Controller's events from now on, in the order
// they happened, each with the next number of one Controller-wide sequence: networks,
// endpoints and sandboxes created and deleted, endpoints joined and left, global networks
// adopted or forgotten because of other hosts (Remote), hosts joining and leaving the
// registry, and repairs made at run time. The kinds and their fields are in package events.
//
// An event is published once its operation is committed to the store; a failed or rolled-back
// operation publishes nothing. The events of one object come in the order of its operations,
// and an object's creation before, and its deletion after, the events of what it contains.
// Objects that New restored are not created (nor repaired: Repairs lists what New fixed);
// read the state (Networks, Sandboxes, Hosts) after subscribing to start from it.
//
// Up to Config.EventBuffer events wait for the receiver; past that, newer ones are dropped
// and an events.Dropped event says how many, after which the receiver should read the state
// again. The Controller never waits for a receiver. The channel is closed when ctx is done
// or the Controller is closed (at once if it is already); receive until it is closed, or
// cancel ctx. Events is safe for concurrent use; each call is a subscriber of its own. A nil
// ctx, which Events cannot refuse with an error, gets a closed channel, as a done ctx does.
func (c *Controller) Events(ctx context.Context) <-chan events.Event {
	if ctx == nil {
		ch := make(chan events.Event)
		close(ch)
		return ch
	}
	return c.bus.Subscribe(ctx, c.cfg.EventBuffer)
}

// checkOpen refuses with an error matching ErrUnavailable once Close has begun; the caller
// holds c.mu.
func (c *Controller) checkOpen() error {
	if c.closed {
		return errclass.Closed("controller")
	}
	return nil
}

// begin starts an operation: it fails with an error matching ErrUnavailable once Close has
// begun, and otherwise counts the operation in flight until the caller calls end. Close waits
// for every operation that began. Operations nest (a Connect creates an endpoint and joins
// it): an inner one refused because Close began meanwhile fails its outer one, which rolls
// back as for any other error.
func (c *Controller) begin() (end func(), err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.checkOpen(); err != nil {
		return nil, err
	}
	c.ops.Add(1)
	return c.ops.Done, nil
}

// ensurePredefined creates the bridge, host and none networks if they are missing.
func (c *Controller) ensurePredefined(ctx context.Context) error {
	for _, p := range []struct{ name, driver string }{{NoneNetwork, "null"}, {HostNetwork, "host"}, {DefaultNetwork, "bridge"}} {
		if _, err := c.Network(p.name); err == nil {
			continue
		}
		var opts []network.Option
		if p.name == DefaultNetwork {
			opts = append(opts, c.bridgeOptions(bridge.NetworkOptions{BridgeName: DefaultBridge})...)
			if !c.overlapsHost(DefaultSubnet) {
				opts = append(opts, network.WithSubnet(DefaultSubnet))
			}
		}
		if _, err := c.NewNetwork(ctx, p.name, p.driver, opts...); err != nil {
			return fmt.Errorf("cnm: predefined network: %w", err)
		}
	}
	return nil
}

// bridgeOptions returns the option that gives o to the "bridge" driver when it is the built-in
// one, and none when Config.Drivers replaced it.
func (c *Controller) bridgeOptions(o bridge.NetworkOptions) []network.Option {
	if !c.bridge {
		return nil
	}
	return []network.Option{network.WithDriverOptions(o)}
}

// hostRoutes returns the destinations of the host namespace's routes (default, link-local and
// multicast routes left out): subnets IPAM must not pick.
func (c *Controller) hostRoutes() []netip.Prefix {
	routes, err := c.machine.Routes()
	if err != nil {
		c.log.Warn("list host routes", "err", err)
		return nil
	}
	return slices.DeleteFunc(routes, func(p netip.Prefix) bool {
		return p.Bits() == 0 || p.Addr().IsLinkLocalUnicast() || p.Addr().IsMulticast()
	})
}

// checkHostRoutes refuses an explicit subnet of spec that overlaps a route of the host's (as
// Podman does), unless spec.HostRouteOverlap: the host would send that subnet's traffic
// elsewhere, or the network would hide what the route reaches. The routes to the Controller's
// own networks (a bridge's connected route) are left to IPAM, whose error names the network.
func (c *Controller) checkHostRoutes(e *drivers.Entry, spec network.Spec) error {
	if spec.HostRouteOverlap || e.Caps.NoIPAM || e.Caps.OnLink {
		return nil
	}
	var subs []netip.Prefix
	for _, cfg := range append(slices.Clone(spec.IPv4), spec.IPv6...) {
		if cfg.Subnet.IsValid() {
			subs = append(subs, cfg.Subnet)
		}
	}
	if len(subs) == 0 {
		return nil
	}
	routes := c.hostRoutes()
	c.mu.Lock()
	var own []netip.Prefix
	for _, n := range c.networks {
		for _, cfg := range append(n.Record().IPv4, n.Record().IPv6...) {
			own = append(own, cfg.Subnet)
		}
	}
	for _, w := range c.waiting {
		for _, cfg := range append(slices.Clone(w.rec.IPv4), w.rec.IPv6...) {
			own = append(own, cfg.Subnet)
		}
	}
	c.mu.Unlock()
	for _, sub := range subs {
		for _, r := range routes {
			if !r.Overlaps(sub) || slices.ContainsFunc(own, func(o netip.Prefix) bool { return o.Bits() <= r.Bits() && o.Contains(r.Addr()) }) {
				continue
			}
			return &errclass.ConflictError{Kind: "subnet", Name: sub.String(), Reason: fmt.Sprintf("overlaps the host's route to %s: give network.WithHostRouteOverlap() if that is meant", r)}
		}
	}
	return nil
}

func (c *Controller) overlapsHost(p netip.Prefix) bool {
	for _, r := range c.hostRoutes() {
		if r.Overlaps(p) {
			return true
		}
	}
	return false
}

func (c *Controller) netConfig(e *drivers.Entry, a ipam.Allocator) netobj.Config {
	cfg := netobj.Config{
		Entry: e, Records: netobj.LocalRecords(c.store), RunStore: c.run, IPAM: a, OnDelete: c.dropNetwork, GatewayService: &c.gw,
		Seq: func() uint64 { return c.seq.Add(1) }, Logger: c.log, Publish: c.bus.Publish,
		Begin: c.begin,
	}
	// Scope is the driver's, stated at registration: its networks' records go to the cluster.
	if e.Caps.DataScope == drivers.GlobalScope && c.cluster != nil {
		cfg.Records, cfg.Behind = c.cluster, c.behind
	}
	if !e.Caps.NoIPAM {
		cfg.Exclude = c.hostRoutes()
	}
	return cfg
}

// allocatorFor returns the IPAM driver a network of driver e uses: the one named, else the
// default one, which for a global-scope driver is the global IPAM.
func (c *Controller) allocatorFor(e *drivers.Entry, name string) (ipam.Allocator, error) {
	if e.Caps.DataScope == drivers.GlobalScope {
		if c.cluster == nil {
			return nil, &errclass.NotSupportedError{What: fmt.Sprintf("global-scope driver %s without Config.GlobalStore", e.Name)}
		}
		if name == "" || name == DefaultIPAM {
			return c.cluster.IPAM(), nil
		}
	}
	return c.ipamDriver(name)
}

func (c *Controller) dropNetwork(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n, ok := c.networks[id]; ok {
		delete(c.netNames, n.Name())
		delete(c.networks, id)
	}
}

// driverOptions turns the typed options or string labels of spec into the driver's typed options.
func driverOptions(e *drivers.Entry, spec network.Spec) (drivers.NetworkOptions, error) {
	switch {
	case spec.DriverOptions != nil:
		if e.Parser == nil {
			return nil, errclass.Invalid("driver options", spec.DriverOptions.DriverType(), fmt.Sprintf("driver %s takes no options", e.Name))
		}
		// A round trip through the driver's parser checks the options are of its type and valid.
		parsed, err := e.Parser.ParseNetworkOptions(spec.DriverOptions.Labels())
		if err != nil {
			return nil, err
		}
		if parsed.DriverType() != spec.DriverOptions.DriverType() {
			return nil, errclass.Invalid("driver options", spec.DriverOptions.DriverType(), fmt.Sprintf("options for driver type %s given to driver %s (%s)", spec.DriverOptions.DriverType(), e.Name, parsed.DriverType()))
		}
		return parsed, nil
	case len(spec.DriverLabels) > 0:
		if e.Parser == nil {
			keys := slices.Sorted(maps.Keys(spec.DriverLabels))
			return nil, errclass.Invalid("driver option", keys[0], fmt.Sprintf("driver %s takes no options", e.Name))
		}
		return e.Parser.ParseNetworkOptions(spec.DriverLabels)
	}
	return nil, nil
}

// NewNetwork creates a network named name (unique on the Controller) with the driver registered
// as driverName. Errors: invalid parameter (bad name, subnet, gateway, option; a subnet of
// loopback, multicast, IPv6 link-local or IPv4-mapped addresses), not found (driver), already
// exists (name), conflict (the subnet overlaps another network's, or one of the host's routes
// unless network.WithHostRouteOverlap is given: the error names the route). On error nothing
// is left behind.
func (c *Controller) NewNetwork(ctx context.Context, name, driverName string, opts ...network.Option) (network.Network, error) {
	if err := errclass.CheckContext(ctx); err != nil {
		return nil, fmt.Errorf("cnm: new network: %w", err)
	}
	end, err := c.begin()
	if err != nil {
		return nil, fmt.Errorf("cnm: new network: %w", err)
	}
	defer end()
	if err := network.ValidateName("network", name); err != nil {
		return nil, fmt.Errorf("cnm: new network: %w", err)
	}
	spec, err := network.Apply(opts...)
	if err != nil {
		return nil, fmt.Errorf("cnm: new network %s: %w", name, err)
	}
	e, err := c.reg.Get(driverName)
	if err == nil {
		err = c.checkGossip(e)
	}
	if err != nil {
		return nil, fmt.Errorf("cnm: new network %s: %w", name, err)
	}
	dopts, err := driverOptions(e, spec)
	if err != nil {
		return nil, fmt.Errorf("cnm: new network %s: %w", name, err)
	}
	if err := c.checkHostRoutes(e, spec); err != nil {
		return nil, fmt.Errorf("cnm: new network %s: %w", name, err)
	}
	alloc, err := c.allocatorFor(e, spec.IPAMDriver)
	if err != nil {
		return nil, fmt.Errorf("cnm: new network %s: %w", name, err)
	}
	ncfg := c.netConfig(e, alloc)
	c.mu.Lock()
	if err := c.checkOpen(); err != nil {
		c.mu.Unlock()
		return nil, err
	}
	if _, taken := c.netNames[name]; taken {
		c.mu.Unlock()
		return nil, fmt.Errorf("cnm: new network: %w", &errclass.AlreadyExistsError{Kind: "network", Name: name})
	}
	if w := c.waitingLocked(name); w != nil && w.rec.Name == name {
		c.mu.Unlock()
		return nil, fmt.Errorf("cnm: new network: %w (kept in the store, waiting: %v)", &errclass.AlreadyExistsError{Kind: "network", Name: name}, w.reason)
	}
	c.netNames[name] = ""
	global := ncfg.Records.Scope() == drivers.GlobalScope
	if global {
		// The watch must not adopt the record this create writes: the cluster leaves it
		// alone until Created, which runs once c.networks has it (both under c.mu).
		ncfg.ID = netobj.NewID()
		c.cluster.Creating(ncfg.ID)
	}
	c.mu.Unlock()

	n, err := netobj.Create(ctx, ncfg, name, spec, dopts)
	c.mu.Lock()
	defer c.mu.Unlock()
	if global {
		defer c.cluster.Created(ncfg.ID)
	}
	if err != nil {
		delete(c.netNames, name)
		for id, other := range c.networks {
			if other.Name() == name && other.Global() {
				c.netNames[name] = id // adopted from another host while this create ran
			}
		}
		if other := c.poolOwnerLocked(err); other != "" {
			return nil, fmt.Errorf("cnm: new network %s: its subnet overlaps network %q: %w", name, other, err)
		}
		return nil, fmt.Errorf("cnm: new %w", err)
	}
	c.networks[n.ID()] = n
	c.netNames[name] = n.ID()
	c.bus.Publish(events.Event{Kind: events.NetworkCreated, NetworkID: n.ID(), Network: name})
	return n.Sealed(), nil
}

// poolOwnerLocked returns the name of the network whose pool err says a subnet overlaps, or "".
func (c *Controller) poolOwnerLocked(err error) string {
	oe, ok := errors.AsType[*ipam.OverlapError](err)
	if !ok || oe.Pool == "" {
		return ""
	}
	recs := make([]netobj.Record, 0, len(c.networks)+len(c.waiting))
	for _, n := range c.networks {
		recs = append(recs, n.Record())
	}
	for _, w := range c.waiting {
		recs = append(recs, w.rec)
	}
	for _, r := range recs {
		space := ipam.LocalSpace
		if r.Scope == drivers.GlobalScope {
			space = ipam.GlobalSpace
		}
		for _, cfg := range append(r.IPv4, r.IPv6...) {
			if ipam.MakePoolID(space, cfg.Subnet) == oe.Pool {
				return r.Name
			}
		}
	}
	return ""
}

// Network returns the network with that name, ID, or unique ID prefix. Once Close has begun it
// fails with an error matching ErrUnavailable.
func (c *Controller) Network(nameOrID string) (network.Network, error) {
	if err := c.openNow(); err != nil {
		return nil, fmt.Errorf("cnm: network: %w", err)
	}
	n, err := c.network(nameOrID)
	if err != nil {
		return nil, err
	}
	return n.Sealed(), nil
}

func (c *Controller) network(nameOrID string) (*netobj.Net, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n, err := lookup.ByNameOrID("network", nameOrID, c.netNames, c.networks)
	if errors.Is(err, errclass.ErrNotFound) {
		if w := c.waitingLocked(nameOrID); w != nil {
			return nil, waitingErr(w)
		}
	}
	return n, err
}

// Networks returns every network, sorted by name; none once Close has begun.
func (c *Controller) Networks() []network.Network {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	ns := slices.Collect(maps.Values(c.networks))
	c.mu.Unlock()
	sort.Slice(ns, func(i, j int) bool { return ns[i].Name() < ns[j].Name() })
	out := make([]network.Network, len(ns))
	for i, n := range ns {
		out[i] = n.Sealed()
	}
	return out
}

// DeleteNetwork removes the network with that name or ID. The predefined networks cannot be
// removed; a network with endpoints is refused with an error matching ErrConflict.
func (c *Controller) DeleteNetwork(ctx context.Context, nameOrID string) error {
	if err := errclass.CheckContext(ctx); err != nil {
		return fmt.Errorf("cnm: delete network: %w", err)
	}
	end, err := c.begin()
	if err != nil {
		return fmt.Errorf("cnm: delete network: %w", err)
	}
	defer end()
	n, err := c.network(nameOrID)
	if err != nil {
		return fmt.Errorf("cnm: delete network: %w", err)
	}
	if !c.cfg.NoPredefinedNetworks && slices.Contains([]string{DefaultNetwork, HostNetwork, NoneNetwork}, n.Name()) {
		return &errclass.ConflictError{Kind: "network", Name: n.Name(), Reason: "a predefined network cannot be removed"}
	}
	if err := n.Delete(ctx); err != nil {
		return fmt.Errorf("cnm: delete %w", err)
	}
	return nil
}

// NewSandbox creates a sandbox for the container id: by default a new network namespace with
// loopback only. HostMode and ContainerMode choose the host's namespace or another sandbox's,
// WithNetns a namespace the caller made.
func (c *Controller) NewSandbox(ctx context.Context, id string, opts ...SandboxOption) (sandbox.Sandbox, error) {
	if err := errclass.CheckContext(ctx); err != nil {
		return nil, fmt.Errorf("cnm: new sandbox: %w", err)
	}
	end, err := c.begin()
	if err != nil {
		return nil, fmt.Errorf("cnm: new sandbox: %w", err)
	}
	defer end()
	if err := network.ValidateName("sandbox", id); err != nil {
		return nil, fmt.Errorf("cnm: new sandbox: %w", err)
	}
	var spec SandboxSpec
	for _, o := range opts {
		if o != nil {
			o(&spec)
		}
	}
	c.mu.Lock()
	if err := c.checkOpen(); err != nil {
		c.mu.Unlock()
		return nil, err
	}
	if _, taken := c.sandboxes[id]; taken {
		c.mu.Unlock()
		return nil, fmt.Errorf("cnm: new sandbox: %w", &errclass.AlreadyExistsError{Kind: "sandbox", Name: id})
	}
	if spec.Netns != "" {
		if err := sandbox.ValidateNetns(spec.Netns); err != nil {
			c.mu.Unlock()
			return nil, fmt.Errorf("cnm: new sandbox %s: %w", id, err)
		}
		if spec.Mode != sandbox.ModeNamespace {
			c.mu.Unlock()
			return nil, fmt.Errorf("cnm: new sandbox %s: %w", id, errclass.Invalid("netns", spec.Netns, "a sandbox in mode "+spec.Mode.String()+" has no namespace of its own"))
		}
		for _, other := range c.sandboxes {
			if other != nil && other.rec.Netns == spec.Netns {
				c.mu.Unlock()
				return nil, fmt.Errorf("cnm: new sandbox %s: %w", id, &errclass.ConflictError{Kind: "sandbox", Name: other.rec.ID, Reason: "it uses namespace " + spec.Netns})
			}
		}
	}
	var share *sbox
	if spec.Mode == sandbox.ModeContainer {
		share = c.sandboxes[spec.Share]
		if share == nil || share.deleting {
			c.mu.Unlock()
			return nil, fmt.Errorf("cnm: new sandbox %s: container mode: %w", id, &errclass.NotFoundError{Kind: "sandbox", Name: spec.Share})
		}
		if share.rec.Mode != sandbox.ModeNamespace {
			c.mu.Unlock()
			return nil, fmt.Errorf("cnm: new sandbox %s: %w", id, &errclass.ConflictError{Kind: "sandbox", Name: spec.Share, Reason: "only a sandbox with its own namespace can be shared"})
		}
	}
	c.sandboxes[id] = nil
	c.mu.Unlock()

	rec := sandboxRecord{
		ID: id, Mode: spec.Mode, Share: spec.Share, Netns: spec.Netns, Hostname: spec.Hostname, Domainname: spec.Domainname,
		DNS: spec.DNS, DNSSearch: spec.DNSSearch, DNSOptions: spec.DNSOptions, ExtraHosts: spec.ExtraHosts,
		Created: time.Now().UTC(),
	}
	sb, err := c.createSandbox(ctx, rec, share)
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		delete(c.sandboxes, id)
		return nil, fmt.Errorf("cnm: new sandbox %s: %w", id, err)
	}
	c.sandboxes[id] = sb
	c.bus.Publish(events.Event{Kind: events.SandboxCreated, SandboxID: id})
	return sb.user(c), nil
}

func (c *Controller) sandboxConfig(rec sandboxRecord, share *sbox) sandbox.Config {
	cfg := sandbox.Config{
		ID: rec.ID, Mode: rec.Mode, RunDir: c.cfg.RunDir, Netns: rec.Netns,
		FilesDir: filepath.Join(c.cfg.RunDir, "sandboxes", rec.ID), HostNetns: c.machine.Path(),
		Hostname: rec.Hostname, Domainname: rec.Domainname, DNS: rec.DNS, DNSSearch: rec.DNSSearch,
		DNSOptions: rec.DNSOptions, ExtraHosts: rec.ExtraHosts, Logger: c.log,
		HostResolvConf: c.cfg.HostResolvConf,
	}
	if share != nil {
		cfg.Share = share.ns
	}
	return cfg
}

func (c *Controller) createSandbox(ctx context.Context, rec sandboxRecord, share *sbox) (*sbox, error) {
	b, err := json.Marshal(rec)
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	// The record is committed while the kernel makes the namespace: the fsync overlaps the
	// unshare and the mount. A crash between the two is repaired on restart: a record whose
	// namespace is missing is dropped, a namespace or files without a record are removed.
	rb := context.WithoutCancel(ctx)
	key := sandboxPrefix + rec.ID
	stored := make(chan error, 1)
	go func() {
		_, err := c.store.AtomicPut(rb, key, b, 0)
		stored <- err
	}()
	ns, err := c.machine.New(ctx, c.sandboxConfig(rec, share))
	serr := <-stored
	switch {
	case err != nil && serr == nil:
		return nil, errors.Join(err, c.store.Delete(rb, key))
	case err != nil:
		return nil, errors.Join(err, fmt.Errorf("store: %w", serr))
	case serr != nil:
		return nil, errors.Join(fmt.Errorf("store: %w", serr), ns.Delete(rb))
	}
	return &sbox{ns: ns, rec: rec}, nil
}

// Sandbox returns the sandbox with that ID. Once Close has begun it fails with an error
// matching ErrUnavailable.
func (c *Controller) Sandbox(id string) (sandbox.Sandbox, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.checkOpen(); err != nil {
		return nil, fmt.Errorf("cnm: sandbox: %w", err)
	}
	if sb := c.sandboxes[id]; sb != nil {
		return sb.user(c), nil
	}
	return nil, &errclass.NotFoundError{Kind: "sandbox", Name: id}
}

// Sandboxes returns every sandbox, sorted by ID; none once Close has begun.
func (c *Controller) Sandboxes() []sandbox.Sandbox {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	var out []sandbox.Sandbox
	for _, sb := range c.sandboxes {
		if sb != nil {
			out = append(out, sb.user(c))
		}
	}
	c.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].ID() < out[j].ID() })
	return out
}

// endpointsOf returns the endpoints joined to sandbox id, on every network. It copies no
// record and sorts nothing: with a thousand endpoints it costs microseconds.
func (c *Controller) endpointsOf(id string) []*epobj.Ep {
	c.mu.Lock()
	nets := slices.Collect(maps.Values(c.networks))
	c.mu.Unlock()
	var eps []*epobj.Ep
	for _, n := range nets {
		eps = n.EpsOf(eps, id)
	}
	return eps
}

// DeleteSandbox removes the sandbox id as `docker rm` does: its namespace goes, taking its
// interfaces with it, and the endpoints joined to it are left and deleted, releasing their
// addresses, their records going in one store commit. The kernel tears a namespace down
// asynchronously: the host ends of its veths may stay visible for a short while (about 100 ms)
// after DeleteSandbox returns. A Controller started on the same state in that window tells them
// from a crash's leftovers (their peers are in a namespace that is going) and lets the kernel
// take them: they are not reported in Repairs. A sandbox whose namespace another
// sandbox shares is refused with an error matching ErrConflict. Deleting a missing sandbox
// fails with ErrNotFound.
func (c *Controller) DeleteSandbox(ctx context.Context, id string) error {
	if err := errclass.CheckContext(ctx); err != nil {
		return fmt.Errorf("cnm: delete sandbox: %w", err)
	}
	end, err := c.begin()
	if err != nil {
		return fmt.Errorf("cnm: delete sandbox: %w", err)
	}
	defer end()
	c.mu.Lock()
	sb := c.sandboxes[id]
	if sb == nil {
		c.mu.Unlock()
		return fmt.Errorf("cnm: delete sandbox: %w", &errclass.NotFoundError{Kind: "sandbox", Name: id})
	}
	if sb.deleting {
		c.mu.Unlock()
		return &errclass.ConflictError{Kind: "sandbox", Name: id, Reason: "being deleted"}
	}
	for _, other := range c.sandboxes {
		if other != nil && other.rec.Share == id {
			c.mu.Unlock()
			return &errclass.ConflictError{Kind: "sandbox", Name: id, Reason: fmt.Sprintf("its namespace is shared by sandbox %q", other.rec.ID)}
		}
	}
	sb.deleting = true
	c.mu.Unlock()

	err = c.deleteSandbox(ctx, sb)
	if err == nil {
		c.gw.forget(id)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		sb.deleting = false
		return fmt.Errorf("cnm: delete sandbox %s: %w", id, err)
	}
	delete(c.sandboxes, id)
	c.bus.Publish(events.Event{Kind: events.SandboxDeleted, SandboxID: id})
	return nil
}

func (c *Controller) deleteSandbox(ctx context.Context, sb *sbox) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	eps := c.endpointsOf(sb.rec.ID)
	if err := sb.ns.Delete(ctx); err != nil {
		return err
	}
	// From here on the sandbox is gone from the kernel: finish on a context that cannot be
	// cancelled, and keep going past errors. The records of the sandbox and its local
	// endpoints go in one commit, made while the drivers forget the endpoints (their kernel
	// work, the bridge's conntrack flush, is as long as the commit and independent of it). An
	// endpoint whose driver work fails gets its record back: it is then as it was, and a
	// second DeleteSandbox retries it. A crash between the commit and the end of the drivers'
	// work leaves driver state of endpoints without a record, which the drivers' Reconcile
	// removes on the next start (the bridge's published-port rules; its conntrack entries of
	// the address time out). A global endpoint's record goes after its driver work, as before.
	rb := context.WithoutCancel(ctx)
	type removal struct {
		ep      *epobj.Ep
		key     string
		global  bool
		runtime bool // its record is in the run store
		behind  bool // a global endpoint's own record in the run store (netobj.WriteBehind)
		drive   func(context.Context) (func(), error)
		finish  func()
		err     error
	}
	var (
		errs []error
		rms  []removal
	)
	keys := []string{sandboxPrefix + sb.rec.ID}
	var runKeys []string // records in the run store, deleted in a commit of their own
	for _, ep := range eps {
		key, drive, err := ep.BeginRemove()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if key == "" {
			continue
		}
		r := removal{ep: ep, key: key, global: ep.Scope() == drivers.GlobalScope, drive: drive}
		switch {
		case r.global && c.behind != nil && c.behind.Owns(ep.Store()):
			// Its own record is in the run store: deleted after the global copy, below.
			r.behind = true
		case r.global:
		case c.run != c.store && ep.Store() == c.run:
			r.runtime = true
			runKeys = append(runKeys, key)
		default:
			keys = append(keys, key)
		}
		rms = append(rms, r)
	}
	driven := make(chan struct{})
	if len(rms) == 0 {
		close(driven)
	} else {
		go func() {
			defer close(driven)
			for i := range rms {
				rms[i].finish, rms[i].err = rms[i].drive(rb)
			}
		}()
	}
	// The sandbox's record goes first: a crash before the run store's commit leaves endpoint
	// records without a sandbox record, which the next start deletes with their endpoints.
	serr := c.deleteKeys(rb, keys)
	var rerr error
	if len(runKeys) > 0 {
		rerr = deleteKeys(rb, c.run, runKeys)
	}
	<-driven
	var (
		finish     []func()
		globalKeys []string
		behindKeys []string
	)
	for _, r := range rms {
		if r.err != nil {
			errs = append(errs, r.err)
			if deleted := (r.runtime && rerr == nil) || (!r.runtime && serr == nil); !r.global && deleted {
				if err := r.ep.Rewrite(rb); err != nil {
					errs = append(errs, err)
				}
			}
			continue
		}
		switch {
		case r.behind:
			behindKeys = append(behindKeys, r.key)
		case r.global:
			globalKeys = append(globalKeys, r.key)
		}
		finish = append(finish, r.finish)
	}
	if rerr != nil {
		errs = append(errs, fmt.Errorf("run store: %w", rerr))
	}
	if serr != nil || rerr != nil {
		return errors.Join(append(errs, storeErr(serr))...)
	}
	if len(globalKeys) > 0 {
		if err := deleteKeys(rb, c.cluster.Store(), globalKeys); err != nil {
			errs = append(errs, fmt.Errorf("global store: %w", err))
		}
	}
	if len(behindKeys) > 0 {
		// The global copies after the writes still queued for their networks (none may land
		// once its record is deleted), then the run store's records. A crash in between
		// leaves records whose sandbox has no record: the next start deletes them with
		// their endpoints.
		if err := c.behind.DeleteGlobal(rb, behindKeys); err != nil {
			errs = append(errs, fmt.Errorf("global store: %w", err))
		} else if err := deleteKeys(rb, c.run, behindKeys); err != nil {
			errs = append(errs, fmt.Errorf("run store: %w", err))
		}
	}
	for _, f := range finish {
		f()
	}
	return errors.Join(errs...)
}

// deleteKeys deletes keys of the local store in one transaction when it can batch.
func (c *Controller) deleteKeys(ctx context.Context, keys []string) error {
	return deleteKeys(ctx, c.store, keys)
}

// deleteKeys deletes keys in one transaction when the store can batch, else one by one.
func deleteKeys(ctx context.Context, s kvstore.Store, keys []string) error {
	if b, ok := s.(kvstore.Batcher); ok {
		ops := make([]kvstore.Op, len(keys))
		for i, k := range keys {
			ops[i] = kvstore.Op{Key: k}
		}
		_, err := b.Batch(ctx, ops)
		return err
	}
	var errs []error
	for _, k := range keys {
		errs = append(errs, s.Delete(ctx, k))
	}
	return errors.Join(errs...)
}

// Connect creates an endpoint named after the sandbox on the network and joins it to the
// sandbox (docker network connect). On error nothing is left behind.
func (c *Controller) Connect(ctx context.Context, nameOrID, sandboxID string, opts ...endpoint.Option) (endpoint.Endpoint, error) {
	if err := errclass.CheckContext(ctx); err != nil {
		return nil, fmt.Errorf("cnm: connect: %w", err)
	}
	end, err := c.begin()
	if err != nil {
		return nil, fmt.Errorf("cnm: connect: %w", err)
	}
	defer end()
	n, err := c.network(nameOrID)
	if err != nil {
		return nil, fmt.Errorf("cnm: connect: %w", err)
	}
	sb, err := c.Sandbox(sandboxID)
	if err != nil {
		return nil, fmt.Errorf("cnm: connect: %w", err)
	}
	if err := c.checkNone(n, sb); err != nil {
		return nil, fmt.Errorf("cnm: connect %s to %s: %w", sandboxID, n.Name(), err)
	}
	ep, err := n.CreateEndpointForJoin(ctx, sandboxID, runtimeSandbox(sb), opts...)
	if err != nil {
		return nil, fmt.Errorf("cnm: connect %s to %s: %w", sandboxID, n.Name(), err)
	}
	if c.behind != nil {
		defer c.behind.Kick() // the record's global copy, if Join queued it
	}
	if err := ep.Join(ctx, sb); err != nil {
		return nil, errors.Join(fmt.Errorf("cnm: connect %s to %s: %w", sandboxID, n.Name(), err), ep.Delete(context.WithoutCancel(ctx)))
	}
	return ep.Sealed(), nil
}

// checkNone refuses to mix the none network with others on one sandbox, as Docker does. It
// looks only at the (few) endpoints of isolated-sandbox networks and at the sandbox's own
// interfaces, so its cost does not grow with the number of endpoints.
func (c *Controller) checkNone(n *netobj.Net, sb sandbox.Sandbox) error {
	c.mu.Lock()
	var isolated []*netobj.Net
	for _, nw := range c.networks {
		if e, err := c.reg.Get(nw.Driver()); err == nil && e.Caps.Sandbox == drivers.IsolatedSandbox {
			isolated = append(isolated, nw)
		}
	}
	c.mu.Unlock()
	var inNone string
	for _, nw := range isolated {
		for _, ep := range nw.Eps() {
			if ep.Info().SandboxID == sb.ID() {
				inNone = nw.Name()
			}
		}
	}
	if slices.Contains(isolated, n) {
		if len(sb.Interfaces()) > 0 || (inNone != "" && inNone != n.Name()) {
			return &errclass.ConflictError{Kind: "sandbox", Name: sb.ID(), Reason: "connected to other networks: it cannot also be in none mode"}
		}
		return nil
	}
	if inNone != "" {
		return &errclass.ConflictError{Kind: "sandbox", Name: sb.ID(), Reason: fmt.Sprintf("in none mode (network %s): disconnect it first", inNone)}
	}
	return nil
}

// Disconnect leaves and deletes the endpoint joining the sandbox to the network (docker
// network disconnect). It fails with ErrNotFound when the sandbox is not connected.
func (c *Controller) Disconnect(ctx context.Context, nameOrID, sandboxID string) error {
	if err := errclass.CheckContext(ctx); err != nil {
		return fmt.Errorf("cnm: disconnect: %w", err)
	}
	end, err := c.begin()
	if err != nil {
		return fmt.Errorf("cnm: disconnect: %w", err)
	}
	defer end()
	n, err := c.network(nameOrID)
	if err != nil {
		return fmt.Errorf("cnm: disconnect: %w", err)
	}
	sb, err := c.Sandbox(sandboxID)
	if err != nil {
		return fmt.Errorf("cnm: disconnect: %w", err)
	}
	for _, ep := range n.Eps() {
		if ep.Info().SandboxID != sandboxID {
			continue
		}
		if err := ep.Leave(ctx, sb); err != nil {
			return fmt.Errorf("cnm: disconnect %s from %s: %w", sandboxID, n.Name(), err)
		}
		if err := ep.Delete(ctx); err != nil {
			return fmt.Errorf("cnm: disconnect %s from %s: %w", sandboxID, n.Name(), err)
		}
		return nil
	}
	return fmt.Errorf("cnm: disconnect: %w", &errclass.NotFoundError{Kind: "endpoint", Name: sandboxID + " on network " + n.Name()})
}

// Close releases the Controller: its drivers, store and open handles. Networks, sandboxes and
// their kernel state stay, for the next Controller on the same DataDir. The channels that
// Events returned are closed, and Close waits for the goroutines that fed them. Close is
// idempotent.
//
// From the moment Close begins, every operation that has not begun yet is refused with an
// error matching ErrUnavailable (see the package doc), and Close waits for the operations in
// flight to return before it releases anything. Lookups that hand out objects (Network,
// Sandbox, Network.Endpoint) fail the same way, and the listings (Networks, Sandboxes,
// Network.Endpoints) return none; reports (Drivers, Repairs, Waiting, an Inspect or Info of
// an object held from before) keep answering from memory and touch nothing. That wait has no time limit of its own: each
// operation is bounded by its context (cancel them for a prompt Close), by
// Config.StoreTimeout for the global store, and by its kernel calls, which cannot be
// cancelled; its rollback, if it fails, runs to the end. Calling Close from within an
// operation (a driver's method) deadlocks.
func (c *Controller) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	c.ops.Wait()
	return c.closeResources()
}

// openNow refuses with an error matching ErrUnavailable once Close has begun.
func (c *Controller) openNow() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.checkOpen()
}

func (c *Controller) closeResources() error {
	var errs []error
	if c.behind != nil {
		// Before the cluster stops: the queued copies are written while the store answers.
		wait := c.cfg.StoreTimeout
		if wait <= 0 {
			wait = DefaultStoreTimeout
		}
		errs = append(errs, c.behind.Close(wait))
	}
	if c.cluster != nil {
		c.cluster.Stop()
	}
	c.bus.Close()
	errs = append(errs, c.dns.close())
	c.mu.Lock()
	sbs := slices.Collect(maps.Values(c.sandboxes))
	c.mu.Unlock()
	for _, sb := range sbs {
		if sb != nil {
			errs = append(errs, sb.ns.Close())
		}
	}
	errs = append(errs, c.reg.Close(), c.gossip.close())
	if c.ownStore && c.store != nil {
		errs = append(errs, c.store.Close())
	}
	if c.ownRun && c.run != nil {
		errs = append(errs, c.run.Close())
	}
	if c.kernel != nil {
		errs = append(errs, c.kernel.Close())
	}
	return errors.Join(errs...)
}

func mapsKeys[V any](m map[string]V) func(func(string) bool) { return maps.Keys(m) }

func parseMAC(s string) (net.HardwareAddr, error) {
	if s == "" {
		return nil, nil
	}
	return net.ParseMAC(s)
}
