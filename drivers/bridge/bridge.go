package bridge

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/internal/iptables"
	cnl "github.com/cnmkit/cnm/internal/nl"
	"github.com/cnmkit/cnm/netns"
	"github.com/vishvananda/netlink"
)

var (
	_ drivers.Driver       = (*Driver)(nil)
	_ drivers.OptionParser = (*Driver)(nil)
	_ drivers.Reconciler   = (*Driver)(nil)
	_ drivers.Closer       = (*Driver)(nil)

	_ drivers.HostSideJoiner = (*Driver)(nil)
)

// socketTimeout bounds every netlink request: netlink calls cannot be canceled.
const socketTimeout = 10 * time.Second

// fwTimeout bounds the firewall work that DeleteNetwork finishes after its context ended.
const fwTimeout = 30 * time.Second

// aliasPrefix starts the alias (IFLA_IFALIAS) of every bridge the driver makes; the network ID
// follows.
const aliasPrefix = "cnm:"

// Config configures a [Driver].
type Config struct {
	// HostNetns is the path of the network namespace the bridges and the host ends of the veths
	// live in (a bind mount or /proc/<pid>/ns/net). "" means the namespace of the thread that
	// calls New.
	HostNetns string
	// Logger receives the driver's logs. Nil means none.
	Logger *slog.Logger
	// DisableIPTables reports whether the driver leaves the firewall (iptables or nftables)
	// and the sysctls alone (Docker's --iptables=false): no NAT, isolation or ICC rules, and
	// networks with enable_icc=false are refused. false means the driver writes its rules,
	// which with the iptables backend needs iptables-save and iptables-restore in PATH
	// (checked when a network is created).
	DisableIPTables bool
	// Firewall is the backend that writes the rules: FirewallIPTables, FirewallNftables or
	// FirewallAuto (see their docs and the package doc). "" means FirewallIPTables, for now.
	// FirewallNftables on a kernel without nf_tables fails New with an error matching
	// cnm.ErrUnavailable. With DisableIPTables, no backend writes anything.
	Firewall Firewall
	// PortRange is the range ephemeral host ports of published ports are chosen from. The
	// zero value means 49153-60999; otherwise First must be at least 1 and Last at least First.
	PortRange PortRange
}

// Driver is the bridge driver. Create one with [New] and release it with [Driver.Close]. Its
// methods are safe for concurrent use; operations on different networks and endpoints run in
// parallel, and CreateNetwork and DeleteNetwork of the same network run one at a time.
//
// Lock order: fwMu, then mu; mu is never held across kernel calls.
type Driver struct {
	log  *slog.Logger
	ns   *netns.NS        // the host namespace, for iptables and sysctls
	h    *netlink.Handle  // NETLINK_ROUTE in the host namespace
	raw  cnl.Socket       // the same, for the hand-built Join and Leave messages
	fw   *iptables.Runner // iptables in the host namespace
	fw6  *iptables.Runner // ip6tables in the host namespace
	noFW bool             // Config.DisableIPTables
	fwb  firewall         // the firewall backend: iptablesFirewall or *nftFirewall
	ct   *conntrackSocket // NETLINK_NETFILTER in the host namespace; nil when it cannot be opened
	once sync.Once        // closes ns, h, raw and ct

	portRange PortRange // Config.PortRange with the default applied
	ipt       IPTablesInfo

	fwMu sync.Mutex // serializes the read-modify-write of the host's iptables rules
	// fwReady reports that this driver has converged its base chains and jumps (planBase)
	// once: from then on, a network or endpoint it knows nothing of is created without
	// reading the tables. Guarded by fwMu.
	fwReady bool
	// fw6Ready is fwReady for the IPv6 tables.
	fw6Ready bool

	mu       sync.Mutex // guards following
	networks map[drivers.NetworkID]*network
	names    map[string]drivers.NetworkID        // bridge names held by networks, made or being made
	busy     map[drivers.NetworkID]chan struct{} // closed when the running CreateNetwork or DeleteNetwork ends
	// endpoints are the endpoints created and not deleted, with their published ports.
	endpoints map[drivers.EndpointID]*endpoint
	bound     map[protoPort][]portKey // the host ports reserved by endpoints
	nextPort  map[string]uint16       // by protocol: where the next ephemeral search starts
	epBusy    map[drivers.EndpointID]bool
	// flushing holds, by address, the conntrack flush that a DeleteEndpoint started and that
	// has not finished: closed when it has. A CreateEndpoint of that address waits for it.
	flushing map[netip.Addr]chan struct{}
	flushWG  sync.WaitGroup // the flush goroutines; Close waits for them
}

// network is what the driver remembers of a network it created or adopted. It is immutable
// once stored.
type network struct {
	bridge   string
	index    int
	mtu      int
	gw4, gw6 netip.Addr // the first gateway of each family; zero for none
	internal bool
	subnets4 []netip.Prefix // masked
	subnets6 []netip.Prefix // masked; the network has ip6tables rules when there are some
	noICC    bool           // NetworkOptions.DisableICC
	noMasq   bool           // NetworkOptions.DisableIPMasquerade
	routed   bool           // NetworkOptions.GatewayModeIPv4 == GatewayModeRouted
	// randomFully reports that its MASQUERADE rules get --random-fully (IPTablesInfo).
	randomFully bool
	hostIP      netip.Addr // NetworkOptions.HostBindingIPv4: the default host address of published ports
}

// New opens the host namespace and netlink sockets in it and returns a driver that keeps them
// until Close. It looks iptables-save and iptables-restore (and ip6tables-save and
// ip6tables-restore) up in PATH, but a missing one is reported only by CreateNetwork (of a
// network with IPv6 subnets, for the ip6tables ones). It does not touch the kernel's state; CreateNetwork rebuilds
// what the driver knows of each network after a restart.
func New(cfg Config) (_ *Driver, err error) {
	pr := cfg.PortRange
	if pr == (PortRange{}) {
		pr = PortRange{DefaultPortRangeFirst, DefaultPortRangeLast}
	}
	if pr.First == 0 || pr.Last < pr.First {
		return nil, fmt.Errorf("bridge: %w", drivers.Invalid("port range", pr.String(), "want first port 1 to 65535 and last port at least first"))
	}
	var ns *netns.NS
	if cfg.HostNetns == "" {
		ns, err = netns.Current()
	} else {
		ns, err = netns.Open(cfg.HostNetns)
	}
	if err != nil {
		return nil, fmt.Errorf("bridge: host namespace: %w", err)
	}
	defer func() {
		if err != nil {
			ns.Close()
		}
	}()
	h, err := newRouteHandle(ns)
	if err != nil {
		return nil, fmt.Errorf("bridge: netlink handle in %s: %w", ns.Path(), err)
	}
	if err := h.SetSocketTimeout(socketTimeout); err != nil {
		h.Close()
		return nil, fmt.Errorf("bridge: netlink socket timeout: %w", err)
	}
	raw, err := cnl.NewSocket(ns.Handle(), socketTimeout)
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("bridge: netlink socket in %s: %w", ns.Path(), err)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ct, err := newConntrackSocket(ns.Handle(), socketTimeout)
	if err != nil { // no conntrack flushing; everything else works
		log.Warn("bridge: no conntrack netlink socket; stale connections of released addresses are not flushed", "err", err)
		ct = nil
	}
	fw := iptables.New(ns)
	d := &Driver{
		ct:        ct,
		portRange: pr,
		endpoints: make(map[drivers.EndpointID]*endpoint),
		bound:     make(map[protoPort][]portKey),
		nextPort:  make(map[string]uint16),
		epBusy:    make(map[drivers.EndpointID]bool),
		flushing:  make(map[netip.Addr]chan struct{}),
		log:       log.With("driver", DriverType),
		ns:        ns,
		h:         h,
		raw:       raw,
		fw:        fw,
		fw6:       iptables.New6(ns),
		noFW:      cfg.DisableIPTables,
		networks:  make(map[drivers.NetworkID]*network),
		names:     make(map[string]drivers.NetworkID),
		busy:      make(map[drivers.NetworkID]chan struct{}),
	}
	if d.fwb, err = newFirewall(d, cfg); err != nil {
		h.Close()
		raw.Close()
		ct.Close()
		return nil, fmt.Errorf("bridge: %w", err)
	}
	if !cfg.DisableIPTables && d.fwb.kind() == FirewallIPTables {
		// Only the iptables backend runs iptables: the nftables one starts no process.
		d.ipt = detectIPTables(context.Background(), ns, fw)
		if d.ipt.OtherBackend != nil {
			log.Warn("bridge: iptables backends mixed", "mode", d.ipt.Mode, "err", d.ipt.OtherBackend)
		}
	}
	return d, nil
}

// Close closes the driver's netlink sockets, the sockets holding published ports (whose rules
// stay, for a restart to take over) and its handle of the host namespace. It leaves the
// kernel's other state alone. It must not be called while another method runs; calling it again
// does nothing.
func (d *Driver) Close() error {
	d.once.Do(func() {
		d.flushWG.Wait() // before the conntrack socket closes
		d.mu.Lock()
		for _, ep := range d.endpoints {
			closePortSockets(heldFds(ep.held))
		}
		d.mu.Unlock()
		d.h.Close()
		d.raw.Close()
		d.ct.Close()
		d.fwb.close()
		d.ns.Close()
	})
	return nil
}

// Capabilities reports a local-scope driver with IPAM whose endpoints join namespace sandboxes.
func (d *Driver) Capabilities() drivers.Capabilities {
	return drivers.Capabilities{DataScope: drivers.LocalScope, Sandbox: drivers.NamespaceSandbox, Ports: true}
}

// ParseNetworkOptions implements [drivers.OptionParser] with the package's
// [ParseNetworkOptions]; the options it returns are a NetworkOptions value.
func (d *Driver) ParseNetworkOptions(labels map[string]string) (drivers.NetworkOptions, error) {
	o, err := ParseNetworkOptions(labels)
	if err != nil {
		return nil, err
	}
	return o, nil
}

// CreateNetwork makes the network's bridge: named after req.Options (by default "br-" and the
// first 12 characters of the network ID), with the options' MTU, the alias "cnm:" and the
// network ID, each subnet's gateway as an address (gateway/subnet length; with an IPv6 one,
// fe80::1/64 too), and up. It writes
// the network's firewall rules (see the package doc: with the iptables backend one
// iptables-restore transaction, and one ip6tables-restore transaction when it has IPv6
// subnets; with the nftables backend one batch, sent while a new bridge's alias, addresses
// and up are set when no sysctl needs turning on), and turns on IP forwarding (of each of its
// families) in the host namespace when the network needs it.
//
// A missing iptables binary (or ip6tables binary, for a network with IPv6 subnets) fails with
// an error matching cnm.ErrUnavailable, and
// enable_icc=false without br_netfilter with one matching cnm.ErrNotSupported, both before
// any kernel work.
//
// It converges: when a bridge of that name with the network's alias exists (a restart), it is
// adopted and brought to the same state, and calling CreateNetwork again with the same request
// returns nil. Any other link of that name, or another network of this driver using the name,
// is a conflict (an error matching cnm.ErrConflict) and nothing is touched. Bad options fail
// with an error matching cnm.ErrInvalidParameter before any kernel work. On error, what the
// call made is removed again.
func (d *Driver) CreateNetwork(ctx context.Context, req drivers.CreateNetworkRequest) error {
	nid := req.NetworkID
	cfg, err := networkConfig(req)
	if err != nil {
		return fmt.Errorf("bridge: create network %s: %w", nid.Short(), err)
	}
	cfg.randomFully = d.ipt.RandomFully
	if err := d.fwb.check(cfg); err != nil {
		return fmt.Errorf("bridge: create network %s: %w", nid.Short(), err)
	}
	unlock, err := d.lockNetwork(ctx, nid)
	if err != nil {
		return fmt.Errorf("bridge: create network %s: %w", nid.Short(), err)
	}
	defer unlock()

	d.mu.Lock()
	old := d.networks[nid]
	owner, held := d.names[cfg.bridge]
	switch {
	case old != nil && old.bridge != cfg.bridge:
		err = &drivers.ConflictError{Kind: "network", Name: string(nid),
			Reason: fmt.Sprintf("exists with bridge %q, not %q", old.bridge, cfg.bridge)}
	case held && owner != nid:
		err = &drivers.ConflictError{Kind: "bridge", Name: cfg.bridge,
			Reason: "bridge name used by network " + owner.Short()}
	default:
		d.names[cfg.bridge] = nid
	}
	d.mu.Unlock()
	if err != nil {
		return fmt.Errorf("bridge: create network %s: %w", nid.Short(), err)
	}

	// A network new to this process whose bridge the kernel has just created: its firewall
	// work (keyed by the bridge's name), when the backend can do it concurrently, runs on a
	// goroutine of this call while the bridge's alias, addresses and up are set, and is
	// waited for below.
	var fwDone chan error
	var onCreate func()
	if old == nil && d.fwb.concurrent(cfg) {
		onCreate = func() {
			fwDone = make(chan error, 1)
			go func() { fwDone <- d.fwb.ensureNetwork(ctx, cfg, true) }()
		}
	}
	index, created, err := d.ensureBridge(ctx, nid, cfg, gatewayAddrs(req), onCreate)
	var fwErr error
	if fwDone != nil {
		fwErr = <-fwDone
	}
	switch {
	case err != nil && fwDone != nil && fwErr == nil:
		// Nothing half-made: the bridge was not made, so its rules go.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), fwTimeout)
		if rerr := d.fwb.removeNetwork(rctx, cfg.bridge, cfg); rerr != nil {
			err = errors.Join(err, fmt.Errorf("rollback: firewall: %w", rerr))
		}
		cancel()
	case err != nil && fwErr != nil:
		err = errors.Join(err, fmt.Errorf("firewall: %w", fwErr))
	case err == nil && fwDone == nil:
		fwErr = d.fwb.ensureNetwork(ctx, cfg, created && old == nil)
	}
	if err == nil && fwErr != nil {
		err = fmt.Errorf("firewall: %w", fwErr)
		if created { // nothing half-made: the transaction wrote nothing
			if derr := d.h.LinkDel(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: cfg.bridge, Index: index}}); derr != nil {
				err = errors.Join(err, fmt.Errorf("rollback: delete bridge %s: %w", cfg.bridge, derr))
			}
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err != nil {
		if old == nil {
			delete(d.names, cfg.bridge)
		}
		return fmt.Errorf("bridge: create network %s: %w", nid.Short(), err)
	}
	cfg.index = index
	d.networks[nid] = cfg
	return nil
}

// networkConfig checks req and returns the network it asks for, without an ifindex.
func networkConfig(req drivers.CreateNetworkRequest) (*network, error) {
	if err := checkID("network ID", string(req.NetworkID)); err != nil {
		return nil, err
	}
	var o NetworkOptions
	switch opts := req.Options.(type) {
	case nil:
	case NetworkOptions:
		o = opts
	case *NetworkOptions:
		if opts != nil {
			o = *opts
		}
	default:
		return nil, drivers.Invalid("network options", opts.DriverType(), "not bridge options")
	}
	if err := o.validate(); err != nil {
		return nil, err
	}
	n := &network{
		bridge: o.BridgeName, mtu: o.MTU, internal: req.Internal,
		noICC: o.DisableICC, noMasq: o.DisableIPMasquerade, routed: o.GatewayModeIPv4 == GatewayModeRouted,
		hostIP: o.HostBindingIPv4,
	}
	if n.bridge == "" {
		n.bridge = defaultBridgeName(req.NetworkID)
	}
	if n.mtu == 0 {
		n.mtu = DefaultMTU
	}
	for _, s := range req.IPv4 {
		if !s.Subnet.Addr().Is4() || (s.Gateway.IsValid() && (!s.Gateway.Is4() || !s.Subnet.Contains(s.Gateway))) {
			return nil, drivers.Invalid("IPv4 gateway", s.Gateway.String()+" in "+s.Subnet.String(), "want an IPv4 address in an IPv4 subnet")
		}
		if !n.gw4.IsValid() {
			n.gw4 = s.Gateway
		}
		n.subnets4 = append(n.subnets4, s.Subnet.Masked())
	}
	for _, s := range req.IPv6 {
		if !s.Subnet.Addr().Is6() || (s.Gateway.IsValid() && (!s.Gateway.Is6() || !s.Subnet.Contains(s.Gateway))) {
			return nil, drivers.Invalid("IPv6 gateway", s.Gateway.String()+" in "+s.Subnet.String(), "want an IPv6 address in an IPv6 subnet")
		}
		if !n.gw6.IsValid() {
			n.gw6 = s.Gateway
		}
		n.subnets6 = append(n.subnets6, s.Subnet.Masked())
	}
	if len(req.IPv6) > 0 && n.mtu < MinIPv6MTU {
		return nil, drivers.Invalid(LabelMTU, fmt.Sprint(n.mtu), "a network with IPv6 subnets needs at least 1280")
	}
	return n, nil
}

// bridgeLinkLocal is the IPv6 link-local address a bridge with an IPv6 gateway gets, without
// duplicate address detection (see bridgeAddr), next to the one the kernel makes.
var bridgeLinkLocal = netip.MustParsePrefix("fe80::1/64")

// gatewayAddrs returns the bridge addresses of req's gateways and, when one is IPv6,
// bridgeLinkLocal. The kernel sends its neighbour solicitations for forwarded packets (a
// published port's, a reply from outside) from a link-local address, and sends none while
// the one it made is tentative: for about two seconds after the bridge gets its first port,
// IPv6 traffic forwarded to the containers would wait.
func gatewayAddrs(req drivers.CreateNetworkRequest) []netip.Prefix {
	var out []netip.Prefix
	v6 := false
	for _, s := range append(append([]drivers.IPAMData(nil), req.IPv4...), req.IPv6...) {
		if s.Gateway.IsValid() {
			out = append(out, netip.PrefixFrom(s.Gateway, s.Subnet.Bits()))
			v6 = v6 || s.Gateway.Is6()
		}
	}
	if v6 {
		out = append(out, bridgeLinkLocal)
	}
	return out
}

// lockNetwork waits until no other CreateNetwork or DeleteNetwork of nid runs, and marks one
// running until unlock is called.
func (d *Driver) lockNetwork(ctx context.Context, nid drivers.NetworkID) (unlock func(), err error) {
	for {
		d.mu.Lock()
		ch, ok := d.busy[nid]
		if !ok {
			ch = make(chan struct{})
			d.busy[nid] = ch
			d.mu.Unlock()
			return func() {
				d.mu.Lock()
				delete(d.busy, nid)
				d.mu.Unlock()
				close(ch)
			}, nil
		}
		d.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// DeleteNetwork removes the network's bridge if it is the driver's (a bridge with the
// network's alias); a missing bridge, or a link of that name that is not the network's, is
// left alone and the call returns nil. After a restart that did not re-create the network, the
// bridge is found by its alias. It removes the rules that name the bridge from the driver's
// chains, in one iptables-restore transaction, at the same time as the bridge: the two are
// independent kernel work (an nf_tables transaction and the link's RTNL teardown cost about the
// same), and a bridge being deleted has no port left whose traffic its rules would decide. The
// chains, the jumps to them and the sysctls stay. If the bridge can not be deleted, the rules of
// a network this process knows are written back, so a live bridge does not stay without them;
// the errors are joined.
func (d *Driver) DeleteNetwork(ctx context.Context, req drivers.DeleteNetworkRequest) error {
	nid := req.NetworkID
	unlock, err := d.lockNetwork(ctx, nid)
	if err != nil {
		return fmt.Errorf("bridge: delete network %s: %w", nid.Short(), err)
	}
	defer unlock()

	d.mu.Lock()
	n := d.networks[nid]
	d.mu.Unlock()
	var link netlink.Link
	if n != nil {
		link, err = d.h.LinkByName(n.bridge)
		if errors.As(err, new(netlink.LinkNotFoundError)) {
			link, err = nil, nil
		}
	} else {
		link, err = d.findByAlias(aliasPrefix + string(nid))
	}
	if err != nil {
		return fmt.Errorf("bridge: delete network %s: %w", nid.Short(), err)
	}
	ours := link != nil && isOurs(link, nid)
	if link != nil && !ours {
		d.log.WarnContext(ctx, "bridge of network is not ours; left alone", "network", nid.Short(), "bridge", link.Attrs().Name)
	}
	br := defaultBridgeName(nid)
	switch {
	case n != nil:
		br = n.bridge
	case ours:
		br = link.Attrs().Name
	}
	var fwErr error
	if link == nil || ours {
		// The network goes: finish the job even if ctx ends now. The rules are removed on a
		// goroutine of this call while the bridge is deleted, and waited for below.
		rb := context.WithoutCancel(ctx)
		fwDone := make(chan error, 1)
		go func() {
			fctx, cancel := context.WithTimeout(rb, fwTimeout)
			defer cancel()
			fwDone <- d.fwb.removeNetwork(fctx, br, n)
		}()
		if ours {
			err = d.h.LinkDel(link)
			if errors.Is(err, syscall.ENODEV) {
				err = nil
			}
		}
		if fwErr = <-fwDone; fwErr != nil {
			fwErr = fmt.Errorf("firewall: %w", fwErr)
		}
		if err != nil && fwErr == nil && n != nil {
			// The bridge stays: so must its rules.
			fctx, cancel := context.WithTimeout(rb, fwTimeout)
			if rerr := d.fwb.ensureNetwork(fctx, n, false); rerr != nil {
				fwErr = fmt.Errorf("put the rules of the bridge that stays back: %w", rerr)
			}
			cancel()
		}
	}
	if err = errors.Join(err, fwErr); err != nil {
		return fmt.Errorf("bridge: delete network %s: %w", nid.Short(), err)
	}
	if ours {
		d.log.DebugContext(ctx, "deleted bridge", "network", nid.Short(), "bridge", link.Attrs().Name)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if n != nil {
		delete(d.names, n.bridge)
	}
	delete(d.networks, nid)
	return nil
}

// findByAlias returns the bridge whose alias is alias, or nil.
func (d *Driver) findByAlias(alias string) (netlink.Link, error) {
	links, err := d.linkList()
	if err != nil {
		return nil, err
	}
	for _, l := range links {
		if l.Type() == "bridge" && l.Attrs().Alias == alias {
			return l, nil
		}
	}
	return nil, nil
}

// isOurs reports whether link is the bridge of network nid.
func isOurs(link netlink.Link, nid drivers.NetworkID) bool {
	return link.Type() == "bridge" && link.Attrs().Alias == aliasPrefix+string(nid)
}

// CreateEndpoint checks the request and publishes the endpoint's ports, if it has some. It
// fails with an error matching cnm.ErrNotFound when the network is unknown. When req.MAC is
// nil, the result's MAC is derived from the IPv4 address as Docker does (02:42 and the four
// bytes of the address), or is random and locally administered when there is no IPv4 address.
//
// Published ports (req.Ports) need the firewall and an address of the endpoint in each family
// they are published in (a binding without a host address is published in every family the
// endpoint has an address of), and are refused on an internal network
// (cnm.ErrInvalidParameter); [::1] is refused with an error matching cnm.ErrNotSupported.
// Each gets a host port, the one asked for or an ephemeral one from [Config].PortRange, held
// by a socket in the host namespace until DeleteEndpoint: a host port already published by
// another endpoint with the same protocol and family, on the same host address or where either
// is unspecified, is a conflict (cnm.ErrConflict), and so is one that anybody else holds on
// the host (a *[PortInUseError] naming it). The host address defaults to the network's
// host_binding_ipv4. Their rules (see the package doc) are written in one iptables-restore
// transaction per family; on any error nothing is reserved, held or written. The result lists
// the ports as bound, one per container port.
//
// An endpoint without published ports costs no iptables work. CreateEndpoint converges: called
// again for the same endpoint (a restart, with the bound ports), it reserves the same ports and
// brings the endpoint's rules to exactly what they should be, without duplicates.
func (d *Driver) CreateEndpoint(ctx context.Context, req drivers.CreateEndpointRequest) (drivers.CreateEndpointResult, error) {
	res, err := d.createEndpoint(ctx, req)
	if err != nil {
		return drivers.CreateEndpointResult{}, fmt.Errorf("bridge: create endpoint %s: %w", req.EndpointID.Short(), err)
	}
	return res, nil
}

func (d *Driver) createEndpoint(ctx context.Context, req drivers.CreateEndpointRequest) (drivers.CreateEndpointResult, error) {
	var res drivers.CreateEndpointResult
	n, err := d.network(req.NetworkID)
	if err != nil {
		return res, err
	}
	if err := checkID("endpoint ID", string(req.EndpointID)); err != nil {
		return res, err
	}
	if req.MAC != nil {
		if err := checkMAC(req.MAC); err != nil {
			return res, err
		}
	} else {
		res.MAC = endpointMAC(req.IPv4.Addr())
	}
	want, err := d.expandPorts(n, req)
	if err != nil {
		return res, err
	}
	eid := req.EndpointID
	ep := &endpoint{nid: req.NetworkID, bridge: n.bridge, addr: req.IPv4.Addr(), addr6: req.IPv6.Addr()}
	// The address's earlier owner may still have its conntrack entries being flushed.
	if err := d.waitFlushed(ctx, ep.addr, ep.addr6); err != nil {
		return res, err
	}

	d.mu.Lock()
	if d.epBusy[eid] {
		d.mu.Unlock()
		return res, &drivers.ConflictError{Kind: "endpoint", Name: string(eid), Reason: "another create or delete of it is in progress"}
	}
	old := d.endpoints[eid]
	if len(want) == 0 && (old == nil || len(old.ports) == 0) {
		d.endpoints[eid] = ep // the common case: no ports, no firewall work
		d.mu.Unlock()
		return res, nil
	}
	d.epBusy[eid] = true
	d.mu.Unlock()
	// One socket per port, opened in the host namespace, to hold it (see portholder_linux.go).
	socks, err := openPortSockets(d.ns, wantKeys(want))
	if err != nil {
		d.mu.Lock()
		delete(d.epBusy, eid)
		d.mu.Unlock()
		return res, err
	}
	d.mu.Lock()
	// Re-creating an endpoint replaces its reservations: its own ports are no conflict, and
	// the sockets holding them go on holding them.
	var reuse map[portKey]int
	if old != nil {
		reuse = make(map[portKey]int, len(old.held))
		for _, h := range old.held {
			d.releaseLocked(h.portKey)
			reuse[h.portKey] = h.fd
		}
	}
	ep.ports, ep.held, err = d.reserveLocked(eid, want, socks, reuse)
	if err != nil {
		if old != nil {
			d.rereserveLocked(old)
		}
		delete(d.epBusy, eid)
		d.mu.Unlock()
		closePortSockets(socks)
		return res, err
	}
	d.mu.Unlock()

	err = d.fwb.ensurePorts(ctx, eid, ep, old == nil)

	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.epBusy, eid)
	if err != nil { // the transaction wrote nothing: put back what was
		for _, h := range ep.held {
			d.releaseLocked(h.portKey)
		}
		if old != nil {
			d.rereserveLocked(old)
		}
		closePortSockets(socks)
		return res, fmt.Errorf("publish ports: %w", err)
	}
	// Close the sockets that hold nothing: the fresh ones a reused socket stood in for, and
	// those of old ports no longer published.
	closePortSockets(unusedSockets(socks, heldFds(ep.held)))
	if old != nil {
		closePortSockets(unusedSockets(heldFds(old.held), heldFds(ep.held)))
	}
	d.endpoints[eid] = ep
	res.Ports = slices.Clone(ep.ports)
	d.log.DebugContext(ctx, "published ports", "endpoint", eid.Short(), "ports", len(ep.ports))
	return res, nil
}

// rereserveLocked puts back the reservations of old, which were released under the same lock
// hold: they cannot conflict.
func (d *Driver) rereserveLocked(old *endpoint) {
	for _, h := range old.held {
		pp := protoPort{h.proto, h.port}
		d.bound[pp] = append(d.bound[pp], h.portKey)
	}
}

// DeleteEndpoint removes the endpoint's published ports, their rules in one iptables-restore
// transaction (none when it has no ports), and frees its host ports. It then starts deleting
// the host's conntrack entries of the endpoint's IPv4 and IPv6 addresses, with filtered netlink
// requests, so that a later owner of the address gets no stale NAT state; a failure there is
// logged only. The flush makes the kernel walk the machine's whole conntrack table, twice per
// address, so it runs after DeleteEndpoint returns, on a goroutine the driver owns: a
// CreateEndpoint of the same address waits for it, and Close waits for all of them.
// A missing endpoint returns nil.
func (d *Driver) DeleteEndpoint(ctx context.Context, req drivers.DeleteEndpointRequest) error {
	eid := req.EndpointID
	d.mu.Lock()
	if d.epBusy[eid] {
		d.mu.Unlock()
		return fmt.Errorf("bridge: delete endpoint %s: %w", eid.Short(), &drivers.ConflictError{Kind: "endpoint", Name: string(eid), Reason: "another create or delete of it is in progress"})
	}
	ep := d.endpoints[eid]
	if ep == nil {
		d.mu.Unlock()
		return nil
	}
	if len(ep.ports) == 0 {
		delete(d.endpoints, eid)
		d.mu.Unlock()
		d.flushLater(ctx, eid, ep.addr, ep.addr6)
		return nil
	}
	d.epBusy[eid] = true
	d.mu.Unlock()

	// The rules go even if ctx ends now: the endpoint is on its way out.
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), fwTimeout)
	err := d.fwb.removePorts(fctx, eid, ep)
	cancel()

	d.mu.Lock()
	delete(d.epBusy, eid)
	if err != nil {
		d.mu.Unlock()
		return fmt.Errorf("bridge: delete endpoint %s: firewall: %w", eid.Short(), err)
	}
	for _, h := range ep.held {
		d.releaseLocked(h.portKey)
	}
	delete(d.endpoints, eid)
	d.mu.Unlock()
	closePortSockets(heldFds(ep.held)) // after the rules: no moment has a DNAT without its socket
	d.flushLater(ctx, eid, ep.addr, ep.addr6)
	return nil
}

// flushLater starts the conntrack flush of addrs on a goroutine and marks each address as
// being flushed until it is done. A flush of an address already being flushed waits for the
// earlier one first, so that they end in order.
func (d *Driver) flushLater(ctx context.Context, eid drivers.EndpointID, addrs ...netip.Addr) {
	if d.ct == nil {
		return
	}
	ctx = context.WithoutCancel(ctx) // for the log only
	done := make(chan struct{})
	var before []chan struct{}
	d.mu.Lock()
	for _, a := range addrs {
		if !a.IsValid() {
			continue
		}
		if prev := d.flushing[a]; prev != nil {
			before = append(before, prev)
		}
		d.flushing[a] = done
	}
	d.mu.Unlock()
	d.flushWG.Add(1)
	go func() {
		defer d.flushWG.Done()
		for _, c := range before {
			<-c
		}
		d.flushConntrack(ctx, eid, addrs...)
		d.mu.Lock()
		for _, a := range addrs {
			if d.flushing[a] == done {
				delete(d.flushing, a)
			}
		}
		d.mu.Unlock()
		close(done)
	}()
}

// waitFlushed waits until no conntrack flush of addrs (zero ones are skipped) is running.
func (d *Driver) waitFlushed(ctx context.Context, addrs ...netip.Addr) error {
	for _, a := range addrs {
		if !a.IsValid() {
			continue
		}
		d.mu.Lock()
		c := d.flushing[a]
		d.mu.Unlock()
		if c == nil {
			continue
		}
		select {
		case <-c:
		case <-ctx.Done():
			return fmt.Errorf("waiting for the conntrack flush of %s: %w", a, ctx.Err())
		}
	}
	return nil
}

// flushConntrack deletes the conntrack entries of addrs (an endpoint's IPv4 and IPv6
// addresses; zero ones are skipped), logging a failure.
func (d *Driver) flushConntrack(ctx context.Context, eid drivers.EndpointID, addrs ...netip.Addr) {
	if d.ct == nil {
		return
	}
	for _, addr := range addrs {
		if !addr.IsValid() {
			continue
		}
		if err := d.ct.flushAddr(addr); err != nil {
			d.log.WarnContext(ctx, "conntrack flush", "endpoint", eid.Short(), "address", addr, "err", err)
		}
	}
}

// Join creates the endpoint's veth pair with one netlink message: the host end
// "veth<first 11 characters of the endpoint ID>" up and enslaved to the bridge, and the other
// end, named req.IfName with req.MAC and the network's MTU, directly in the sandbox's namespace
// (req.NetnsFD), left down. The kernel makes all of it or nothing. A stale host end left by a
// crash is deleted and the create retried once.
//
// It fails with an error matching cnm.ErrNotFound when the network is unknown, and with one
// matching cnm.ErrConflict when req.IfName exists in the sandbox. The result reports
// InterfaceInSandbox and the network's first IPv4 and IPv6 gateways, none for an internal
// network.
func (d *Driver) Join(ctx context.Context, req drivers.JoinRequest) (drivers.JoinResult, error) {
	n, err := d.network(req.NetworkID)
	if err == nil {
		err = checkJoin(req)
	}
	if err != nil {
		return drivers.JoinResult{}, fmt.Errorf("bridge: join endpoint %s: %w", req.EndpointID.Short(), err)
	}
	return d.join(ctx, n, req, req.NetnsFD)
}

// JoinHostSide is [Driver.Join] for a caller that moves the interface into the sandbox
// itself (Docker, when the driver is served as a Docker plugin): the same veth pair, with the
// sandbox end named req.IfName left down in the host namespace (req.NetnsFD and SandboxKey
// are not used). The result has SrcName req.IfName and InterfaceInSandbox false. Leave
// deletes the pair as after Join, whether or not the caller moved that end. It fails as Join
// does; a req.IfName taken in the host namespace is a conflict.
func (d *Driver) JoinHostSide(ctx context.Context, req drivers.JoinRequest) (drivers.JoinResult, error) {
	n, err := d.network(req.NetworkID)
	if err == nil {
		req.NetnsFD = 0
		err = checkJoin(req)
	}
	if err == nil && req.IfName == hostVethName(req.EndpointID) {
		err = drivers.Invalid("interface name", req.IfName, "the name of the host end")
	}
	if err != nil {
		return drivers.JoinResult{}, fmt.Errorf("bridge: join endpoint %s: %w", req.EndpointID.Short(), err)
	}
	res, err := d.join(ctx, n, req, -1)
	if err != nil {
		return res, err
	}
	res.InterfaceInSandbox, res.SrcName = false, req.IfName
	return res, nil
}

// join makes the veth pair of Join, with the sandbox end in the namespace open at netnsFD, or
// in the host namespace when netnsFD is negative.
func (d *Driver) join(ctx context.Context, n *network, req drivers.JoinRequest, netnsFD int) (drivers.JoinResult, error) {
	host := hostVethName(req.EndpointID)
	err := d.raw.Exec(cnl.VethRequest(host, n.index, n.mtu, req.IfName, req.MAC, netnsFD))
	if errors.Is(err, syscall.EEXIST) {
		if err = d.removeStaleVeth(ctx, host, req.IfName); err == nil {
			err = d.raw.Exec(cnl.VethRequest(host, n.index, n.mtu, req.IfName, req.MAC, netnsFD))
			if errors.Is(err, syscall.EEXIST) {
				err = &drivers.ConflictError{Kind: "interface", Name: req.IfName, Reason: "exists in the sandbox"}
			}
		}
	}
	if err != nil {
		return drivers.JoinResult{}, fmt.Errorf("bridge: join endpoint %s: create veth %s: %w", req.EndpointID.Short(), host, err)
	}
	d.mu.Lock()
	ep := d.endpoints[req.EndpointID]
	d.mu.Unlock()
	if ep != nil && len(ep.ports) > 0 {
		// A container reaching its own published port through the host's address gets its
		// packets back through its own bridge port: hairpin mode lets the bridge do that.
		// Only endpoints with published ports pay for this round trip.
		if err := d.h.LinkSetHairpin(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: host}}, true); err != nil {
			err = fmt.Errorf("bridge: join endpoint %s: hairpin mode on %s: %w", req.EndpointID.Short(), host, err)
			if derr := d.raw.Exec(cnl.DelLinkRequest(host)); derr != nil && !errors.Is(derr, syscall.ENODEV) {
				err = errors.Join(err, fmt.Errorf("rollback: delete veth %s: %w", host, derr))
			}
			return drivers.JoinResult{}, err
		}
	}
	res := drivers.JoinResult{InterfaceInSandbox: true}
	if !n.internal {
		res.Gateway, res.GatewayIPv6 = n.gw4, n.gw6
	}
	return res, nil
}

func checkJoin(req drivers.JoinRequest) error {
	if err := checkID("endpoint ID", string(req.EndpointID)); err != nil {
		return err
	}
	if err := drivers.CheckIfName("interface name", req.IfName); err != nil {
		return err
	}
	if req.NetnsFD < 0 {
		return drivers.Invalid("netns fd", fmt.Sprint(req.NetnsFD), "not an open descriptor")
	}
	if req.MAC != nil {
		return checkMAC(req.MAC)
	}
	return nil
}

// removeStaleVeth deletes the host link name after an EEXIST, if it is a veth. When there is
// no such link, the name that exists is ifName, in the sandbox.
func (d *Driver) removeStaleVeth(ctx context.Context, name, ifName string) error {
	link, err := d.h.LinkByName(name)
	switch {
	case errors.As(err, new(netlink.LinkNotFoundError)):
		return &drivers.ConflictError{Kind: "interface", Name: ifName, Reason: "exists in the sandbox"}
	case err != nil:
		return err
	case link.Type() != "veth":
		return &drivers.ConflictError{Kind: "interface", Name: name, Reason: "host interface name taken by a foreign " + link.Type() + " device"}
	}
	d.log.WarnContext(ctx, "removing stale veth", "link", name)
	if err := d.h.LinkDel(link); err != nil && !errors.Is(err, syscall.ENODEV) {
		return fmt.Errorf("delete stale veth: %w", err)
	}
	return nil
}

// Leave deletes the host end of the endpoint's veth pair, which takes the sandbox end with it,
// unless req.SandboxGone. A veth that is gone already (the sandbox usually deletes its end
// first) returns nil.
func (d *Driver) Leave(ctx context.Context, req drivers.LeaveRequest) error {
	if req.SandboxGone {
		return nil
	}
	if err := checkID("endpoint ID", string(req.EndpointID)); err != nil {
		return fmt.Errorf("bridge: leave endpoint %s: %w", req.EndpointID.Short(), err)
	}
	host := hostVethName(req.EndpointID)
	if err := d.raw.Exec(cnl.DelLinkRequest(host)); err != nil && !errors.Is(err, syscall.ENODEV) {
		return fmt.Errorf("bridge: leave endpoint %s: delete veth %s: %w", req.EndpointID.Short(), host, err)
	}
	return nil
}

// network returns the network nid, or an error matching cnm.ErrNotFound.
func (d *Driver) network(nid drivers.NetworkID) (*network, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := d.networks[nid]
	if n == nil {
		return nil, &drivers.NotFoundError{Kind: "bridge network", Name: string(nid)}
	}
	return n, nil
}

// linkList lists the host namespace's links, retrying a dump the kernel interrupted.
func (d *Driver) linkList() ([]netlink.Link, error) {
	return retryDump(d.h.LinkList)
}

// defaultBridgeName returns "br-" and the first 12 characters of the network ID.
func defaultBridgeName(nid drivers.NetworkID) string { return "br-" + nid.Short() }

// hostVethName returns "veth" and the first 11 characters of the endpoint ID: 15 bytes, the
// longest interface name.
func hostVethName(eid drivers.EndpointID) string {
	s := string(eid)
	if len(s) > 11 {
		s = s[:11]
	}
	return "veth" + s
}

// isHostVethName reports whether name has the form of hostVethName.
func isHostVethName(name string) bool {
	return len(name) == 15 && strings.HasPrefix(name, "veth") && isHex(name[4:])
}

// checkID checks that id has the form cnm gives IDs: 12 to 64 lowercase hex characters (the
// bridge and veth names use the first 12 and 11).
func checkID(field, id string) error {
	if len(id) < 12 || len(id) > 64 || !isHex(id) {
		return drivers.Invalid(field, id, "want 12 to 64 lowercase hex characters")
	}
	return nil
}

func isHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

func checkMAC(mac net.HardwareAddr) error {
	if len(mac) != 6 || mac[0]&1 != 0 || [6]byte(mac) == [6]byte{} {
		return drivers.Invalid("MAC", mac.String(), "want a 6-byte unicast address")
	}
	return nil
}

// endpointMAC returns Docker's MAC for an endpoint with IPv4 address a: 02:42 followed by the
// four bytes of a. Without an IPv4 address, it returns a random locally administered unicast
// MAC.
func endpointMAC(a netip.Addr) net.HardwareAddr {
	mac := make(net.HardwareAddr, 6)
	if a.Is4() {
		mac[0], mac[1] = 0x02, 0x42
		b := a.As4()
		copy(mac[2:], b[:])
		return mac
	}
	rand.Read(mac) // never fails (crypto/rand docs)
	mac[0] = mac[0]&^0x01 | 0x02
	return mac
}
