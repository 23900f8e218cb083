package macvlan

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
	cnl "github.com/cnmkit/cnm/internal/nl"
	"github.com/cnmkit/cnm/netns"
	"github.com/vishvananda/netlink"
)

var (
	_ drivers.Driver       = (*Driver)(nil)
	_ drivers.OptionParser = (*Driver)(nil)
	_ drivers.Reconciler   = (*Driver)(nil)
	_ drivers.Closer       = (*Driver)(nil)
)

// socketTimeout bounds every netlink request: netlink calls cannot be canceled.
const socketTimeout = 10 * time.Second

// Aliases (IFLA_IFALIAS) of the links the driver makes in the host namespace. Reconcile and
// DeleteNetwork remove only links that carry one of them.
const (
	// aliasInternal + network ID: the veth end that is the parent of a network without one.
	aliasInternal = "cnm-macvlan:"
	// aliasVLAN: an 802.1q sub-interface the driver created because it was missing.
	aliasVLAN = "cnm-macvlan-vlan"
)

// Config configures a [Driver].
type Config struct {
	// HostNetns is the path of the network namespace the parents live in (a bind mount or
	// /proc/<pid>/ns/net). "" means the namespace of the thread that calls New.
	HostNetns string
	// Logger receives the driver's logs. Nil means none.
	Logger *slog.Logger
}

// Driver is the macvlan driver. Create one with [New] and release it with [Driver.Close]. Its
// methods are safe for concurrent use. CreateNetwork and DeleteNetwork run one at a time (they
// check and change what several networks share: parents and their sub-interfaces); endpoints
// and joins run in parallel with everything.
//
// Lock order: netMu, then mu; mu is never held across kernel calls.
type Driver struct {
	log  *slog.Logger
	ns   *netns.NS       // the host namespace
	h    *netlink.Handle // NETLINK_ROUTE in the host namespace
	raw  cnl.Socket      // the same, for the one-message Join
	once sync.Once       // closes ns, h and raw

	netMu sync.Mutex // serializes CreateNetwork, DeleteNetwork and Reconcile

	mu        sync.Mutex // guards following
	networks  map[drivers.NetworkID]*network
	endpoints map[drivers.EndpointID]drivers.NetworkID
}

// network is what the driver remembers of a network it created. It is immutable once stored.
type network struct {
	opts     NetworkOptions // as asked, Mode filled in
	parent   string         // the link the macvlan links sit on
	index    int            // its ifindex in the host namespace
	mtu      int            // of the macvlan links
	made     string         // the link the driver made for the network (a VLAN or a veth end); "" none
	internal bool
	gw4, gw6 netip.Addr // the first gateway of each family; zero for none
	subnets  []netip.Prefix
}

// New opens the host namespace and netlink sockets in it and returns a driver that keeps them
// until Close. It does not touch the kernel's state; CreateNetwork rebuilds what the driver
// knows of each network after a restart.
func New(cfg Config) (_ *Driver, err error) {
	var ns *netns.NS
	if cfg.HostNetns == "" {
		ns, err = netns.Current()
	} else {
		ns, err = netns.Open(cfg.HostNetns)
	}
	if err != nil {
		return nil, fmt.Errorf("macvlan: host namespace: %w", err)
	}
	defer func() {
		if err != nil {
			ns.Close()
		}
	}()
	h, err := newRouteHandle(ns)
	if err != nil {
		return nil, fmt.Errorf("macvlan: netlink handle in %s: %w", ns.Path(), err)
	}
	if err := h.SetSocketTimeout(socketTimeout); err != nil {
		h.Close()
		return nil, fmt.Errorf("macvlan: netlink socket timeout: %w", err)
	}
	raw, err := cnl.NewSocket(ns.Handle(), socketTimeout)
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("macvlan: netlink socket in %s: %w", ns.Path(), err)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Driver{
		log: log.With("driver", DriverType), ns: ns, h: h, raw: raw,
		networks:  make(map[drivers.NetworkID]*network),
		endpoints: make(map[drivers.EndpointID]drivers.NetworkID),
	}, nil
}

// Close closes the driver's netlink sockets and its handle of the host namespace. It leaves
// the kernel's state alone. It must not be called while another method runs; calling it again
// does nothing.
func (d *Driver) Close() error {
	d.once.Do(func() {
		d.h.Close()
		d.raw.Close()
		d.ns.Close()
	})
	return nil
}

// Capabilities reports a local-scope driver with IPAM whose endpoints join namespace
// sandboxes, without published ports (a macvlan container is reached at its own address).
func (d *Driver) Capabilities() drivers.Capabilities {
	return drivers.Capabilities{DataScope: drivers.LocalScope, Sandbox: drivers.NamespaceSandbox, OnLink: true}
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

// CreateNetwork checks the network's parent and makes what it needs in the host namespace.
//
//   - With a parent, the parent must exist (else an error matching cnm.ErrNotFound) and be up,
//     and be neither a bridge nor a port of one (nor enslaved to any other master); each of
//     these is refused with an error matching cnm.ErrConflict. A parent named like "eth0.10"
//     that is missing is created as VLAN 10 on eth0 (which must pass the same checks), up,
//     with the alias "cnm-macvlan-vlan"; on a kernel without 802.1q this fails with an error
//     matching cnm.ErrNotSupported that says so, and nothing is left behind.
//   - Without a parent, the network is internal: the driver makes a veth pair
//     "mvp-<first 11 characters of the network ID>" (the parent, with the alias "cnm-macvlan:"
//     and the network ID) and "mvq-..." (its peer, which only gives it carrier), both up.
//
// Two networks on one parent with overlapping subnets, and a passthru network on a parent
// another network uses (or any network on a passthru network's parent), are refused with an
// error matching cnm.ErrConflict before any kernel work. The MTU defaults to the parent's and
// may not exceed it. Bad options fail with cnm.ErrInvalidParameter before any kernel work.
//
// It converges: calling it again with the same request returns nil, and after a restart it
// adopts the sub-interface or veth it made before (found by name and alias). On error, what
// the call made is removed again.
func (d *Driver) CreateNetwork(ctx context.Context, req drivers.CreateNetworkRequest) error {
	nid := req.NetworkID
	n, err := networkConfig(req)
	if err != nil {
		return fmt.Errorf("macvlan: create network %s: %w", nid.Short(), err)
	}
	d.netMu.Lock()
	defer d.netMu.Unlock()
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("macvlan: create network %s: %w", nid.Short(), err)
	}
	d.mu.Lock()
	old := d.networks[nid]
	err = d.checkSharingLocked(nid, n)
	d.mu.Unlock()
	if old != nil {
		if old.opts == n.opts && slices.Equal(old.subnets, n.subnets) && old.internal == n.internal {
			return nil
		}
		return fmt.Errorf("macvlan: create network %s: %w", nid.Short(),
			&drivers.ConflictError{Kind: "network", Name: string(nid), Reason: "exists with other options"})
	}
	if err != nil {
		return fmt.Errorf("macvlan: create network %s: %w", nid.Short(), err)
	}
	if err := d.ensureParent(ctx, nid, n); err != nil {
		return fmt.Errorf("macvlan: create network %s: %w", nid.Short(), err)
	}
	d.mu.Lock()
	d.networks[nid] = n
	d.mu.Unlock()
	d.log.DebugContext(ctx, "created network", "network", nid.Short(), "parent", n.parent, "mode", n.opts.Mode, "mtu", n.mtu)
	return nil
}

// networkConfig checks req and returns the network it asks for, without kernel facts.
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
		return nil, drivers.Invalid("network options", opts.DriverType(), "not macvlan options")
	}
	if err := o.validate(); err != nil {
		return nil, err
	}
	if o.Mode == "" {
		o.Mode = ModeBridge
	}
	n := &network{opts: o, internal: req.Internal || o.Parent == ""}
	for _, s := range req.IPv4 {
		if !s.Subnet.Addr().Is4() || (s.Gateway.IsValid() && (!s.Gateway.Is4() || !s.Subnet.Contains(s.Gateway))) {
			return nil, drivers.Invalid("IPv4 gateway", s.Gateway.String()+" in "+s.Subnet.String(), "want an IPv4 address in an IPv4 subnet")
		}
		if !n.gw4.IsValid() {
			n.gw4 = s.Gateway
		}
		n.subnets = append(n.subnets, s.Subnet.Masked())
	}
	for _, s := range req.IPv6 {
		if !s.Subnet.Addr().Is6() || (s.Gateway.IsValid() && (!s.Gateway.Is6() || !s.Subnet.Contains(s.Gateway))) {
			return nil, drivers.Invalid("IPv6 gateway", s.Gateway.String()+" in "+s.Subnet.String(), "want an IPv6 address in an IPv6 subnet")
		}
		if !n.gw6.IsValid() {
			n.gw6 = s.Gateway
		}
		n.subnets = append(n.subnets, s.Subnet.Masked())
	}
	return n, nil
}

// checkSharingLocked refuses n when it would share its parent with a network that does not
// allow it: passthru on either side, or overlapping subnets.
func (d *Driver) checkSharingLocked(nid drivers.NetworkID, n *network) error {
	if n.opts.Parent == "" {
		return nil // a parent of its own
	}
	for id, o := range d.networks {
		if id == nid || o.opts.Parent != n.opts.Parent {
			continue
		}
		if o.opts.Mode == ModePassthru || n.opts.Mode == ModePassthru {
			return &drivers.ConflictError{Kind: "parent", Name: n.opts.Parent,
				Reason: "passthru mode needs the parent for one network alone; network " + id.Short() + " uses it"}
		}
		for _, a := range n.subnets {
			for _, b := range o.subnets {
				if a.Overlaps(b) {
					return &drivers.ConflictError{Kind: "subnet", Name: a.String(),
						Reason: "overlaps " + b.String() + " of network " + id.Short() + " on the same parent " + n.opts.Parent}
				}
			}
		}
	}
	return nil
}

// ensureParent finds (or makes) n's parent and fills in n.parent, n.index, n.mtu and n.made.
// On error, what it made is removed again.
func (d *Driver) ensureParent(ctx context.Context, nid drivers.NetworkID, n *network) (err error) {
	var link netlink.Link
	if n.opts.Parent == "" {
		link, err = d.ensureInternalParent(ctx, nid, n.opts.MTU)
		if err != nil {
			return err
		}
		n.made = link.Attrs().Name
	} else {
		link, err = d.h.LinkByName(n.opts.Parent)
		if errors.As(err, new(netlink.LinkNotFoundError)) {
			base, vid := splitVLAN(n.opts.Parent)
			if vid == 0 {
				return &drivers.NotFoundError{Kind: "parent interface", Name: n.opts.Parent}
			}
			link, err = d.ensureVLAN(ctx, n.opts.Parent, base, vid)
			if err != nil {
				return err
			}
			n.made = link.Attrs().Name
		} else if err != nil {
			return fmt.Errorf("parent %s: %w", n.opts.Parent, err)
		} else if link.Attrs().Alias == aliasVLAN && link.Type() == "vlan" {
			n.made = link.Attrs().Name // made by this driver before a restart, or for another network
		}
		if err := d.checkParent(link); err != nil {
			if n.made != "" && !d.parentUsed(n.made) {
				err = errors.Join(err, d.deleteMade(n.made))
			}
			return err
		}
	}
	a := link.Attrs()
	n.parent, n.index, n.mtu = a.Name, a.Index, a.MTU
	if n.opts.MTU != 0 {
		if n.opts.MTU > a.MTU {
			err := drivers.Invalid("MTU", fmt.Sprint(n.opts.MTU), fmt.Sprintf("larger than the MTU %d of parent %s", a.MTU, a.Name))
			if n.made != "" && !d.parentUsed(n.made) {
				err = errors.Join(err, d.deleteMade(n.made))
			}
			return err
		}
		n.mtu = n.opts.MTU
	}
	return nil
}

// checkParent refuses a parent that is down, a bridge, or enslaved to a master.
func (d *Driver) checkParent(link netlink.Link) error {
	a := link.Attrs()
	switch {
	case link.Type() == "bridge":
		return &drivers.ConflictError{Kind: "parent", Name: a.Name, Reason: "is a bridge; a macvlan parent must be a plain interface"}
	case a.MasterIndex != 0:
		kind := "a master"
		if m, err := d.h.LinkByIndex(a.MasterIndex); err == nil {
			kind = m.Type() + " " + m.Attrs().Name
		}
		return &drivers.ConflictError{Kind: "parent", Name: a.Name, Reason: "is a port of " + kind}
	case a.Flags&net.FlagUp == 0:
		return &drivers.ConflictError{Kind: "parent", Name: a.Name, Reason: "is down"}
	}
	return nil
}

// ensureVLAN creates the 802.1q sub-interface name (VLAN vid on base), up, with the alias
// aliasVLAN. A kernel without 802.1q gives an error matching drivers.ErrNotSupported.
func (d *Driver) ensureVLAN(ctx context.Context, name, base string, vid int) (netlink.Link, error) {
	bl, err := d.h.LinkByName(base)
	if errors.As(err, new(netlink.LinkNotFoundError)) {
		return nil, &drivers.NotFoundError{Kind: "parent interface", Name: base, Err: fmt.Errorf("needed for VLAN %d (%s)", vid, name)}
	}
	if err != nil {
		return nil, fmt.Errorf("parent %s: %w", base, err)
	}
	if err := d.checkParent(bl); err != nil {
		return nil, err
	}
	vl := &netlink.Vlan{LinkAttrs: netlink.LinkAttrs{Name: name, ParentIndex: bl.Attrs().Index}, VlanId: vid}
	if err := d.h.LinkAdd(vl); err != nil {
		if isNoLinkKind(err) {
			return nil, &drivers.NotSupportedError{What: "802.1q VLAN parent " + name,
				Err: fmt.Errorf("the kernel lacks 802.1q (no vlan link type; module 8021q): %w", err)}
		}
		return nil, fmt.Errorf("create VLAN %d on %s: %w", vid, base, err)
	}
	link, err := d.h.LinkByName(name)
	if err == nil {
		err = errors.Join(d.h.LinkSetAlias(link, aliasVLAN), d.h.LinkSetUp(link))
	}
	if err != nil {
		return nil, errors.Join(fmt.Errorf("set up VLAN %s: %w", name, err), d.deleteMade(name))
	}
	d.log.InfoContext(ctx, "created VLAN sub-interface", "link", name, "vlan", vid, "parent", base)
	return d.h.LinkByName(name) // with the up flag
}

// isNoLinkKind reports whether err is the kernel's answer to a link kind it does not have.
func isNoLinkKind(err error) bool {
	return errors.Is(err, syscall.EOPNOTSUPP) || strings.Contains(err.Error(), "nknown device type")
}

// ensureInternalParent makes (or adopts) the veth pair whose first end is the parent of the
// internal network nid, both ends up, with MTU mtu (0: 1500).
func (d *Driver) ensureInternalParent(ctx context.Context, nid drivers.NetworkID, mtu int) (netlink.Link, error) {
	name, peer := internalNames(nid)
	alias := aliasInternal + string(nid)
	link, err := d.h.LinkByName(name)
	switch {
	case err == nil && link.Attrs().Alias == alias:
		return link, d.h.LinkSetUp(link) // adopted after a restart
	case err == nil:
		return nil, &drivers.ConflictError{Kind: "interface", Name: name, Reason: "name taken by a foreign " + link.Type() + " device"}
	case !errors.As(err, new(netlink.LinkNotFoundError)):
		return nil, err
	}
	if mtu == 0 {
		mtu = 1500
	}
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: mtu}, PeerName: peer}
	if err := d.h.LinkAdd(veth); err != nil {
		if errors.Is(err, syscall.EEXIST) {
			return nil, &drivers.ConflictError{Kind: "interface", Name: peer, Reason: "name taken by a foreign device"}
		}
		return nil, fmt.Errorf("create veth %s: %w", name, err)
	}
	link, err = d.h.LinkByName(name)
	if err == nil {
		err = d.h.LinkSetAlias(link, alias)
	}
	if err == nil {
		err = d.h.LinkSetUp(link)
	}
	if err == nil {
		var p netlink.Link
		if p, err = d.h.LinkByName(peer); err == nil {
			err = d.h.LinkSetUp(p)
		}
	}
	if err != nil {
		return nil, errors.Join(fmt.Errorf("set up veth %s: %w", name, err), d.deleteMade(name))
	}
	d.log.DebugContext(ctx, "created internal parent", "network", nid.Short(), "link", name)
	return d.h.LinkByName(name)
}

// internalNames returns the names of the veth pair of the internal network nid.
func internalNames(nid drivers.NetworkID) (parent, peer string) {
	s := string(nid)
	if len(s) > 11 {
		s = s[:11]
	}
	return "mvp-" + s, "mvq-" + s
}

// parentUsed reports whether a network the driver holds sits on link name.
func (d *Driver) parentUsed(name string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, n := range d.networks {
		if n.parent == name {
			return true
		}
	}
	return false
}

// deleteMade deletes the link name if it carries one of the driver's aliases (alias exactly,
// when alias is not ""); a missing link is no error.
func (d *Driver) deleteMade(name string) error { return d.deleteMadeAlias(name, "") }

func (d *Driver) deleteMadeAlias(name, alias string) error {
	link, err := d.h.LinkByName(name)
	if errors.As(err, new(netlink.LinkNotFoundError)) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	if !isMade(link) || (alias != "" && link.Attrs().Alias != alias) {
		return nil
	}
	if err := d.h.LinkDel(link); err != nil && !errors.Is(err, syscall.ENODEV) {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}

// isMade reports whether link carries one of the driver's aliases.
func isMade(link netlink.Link) bool {
	a := link.Attrs().Alias
	return (a == aliasVLAN && link.Type() == "vlan") || (strings.HasPrefix(a, aliasInternal) && link.Type() == "veth")
}

// DeleteNetwork forgets the network and removes what the driver made for it: the veth pair
// of a network without a parent, and a VLAN sub-interface it created once no other network
// uses it. Interfaces the driver did not create are never removed. A network it does not know
// returns nil (after a restart, its veth pair is found by name and alias and removed).
func (d *Driver) DeleteNetwork(ctx context.Context, req drivers.DeleteNetworkRequest) error {
	nid := req.NetworkID
	d.netMu.Lock()
	defer d.netMu.Unlock()
	d.mu.Lock()
	n := d.networks[nid]
	delete(d.networks, nid)
	d.mu.Unlock()
	made, alias := "", ""
	switch {
	case n != nil:
		made = n.made
	case checkID("network ID", string(nid)) == nil:
		made, _ = internalNames(nid)
		alias = aliasInternal + string(nid)
	}
	if made == "" || d.parentUsed(made) {
		return nil
	}
	if err := d.deleteMadeAlias(made, alias); err != nil {
		if n != nil {
			d.mu.Lock()
			d.networks[nid] = n
			d.mu.Unlock()
		}
		return fmt.Errorf("macvlan: delete network %s: %w", nid.Short(), err)
	}
	d.log.DebugContext(ctx, "deleted network", "network", nid.Short(), "removed", made)
	return nil
}

// CreateEndpoint checks the request and records the endpoint. It fails with an error matching
// cnm.ErrNotFound when the network is unknown. When req.MAC is nil, the result's MAC is
// derived from the IPv4 address as Docker does (02:42 and the four bytes of the address), or
// is random and locally administered when there is no IPv4 address.
func (d *Driver) CreateEndpoint(ctx context.Context, req drivers.CreateEndpointRequest) (drivers.CreateEndpointResult, error) {
	var res drivers.CreateEndpointResult
	_, err := d.network(req.NetworkID)
	if err == nil {
		err = checkID("endpoint ID", string(req.EndpointID))
	}
	if err == nil && len(req.Ports) > 0 {
		err = &drivers.NotSupportedError{What: "published ports on a macvlan network"}
	}
	if err == nil && req.MAC != nil {
		err = checkMAC(req.MAC)
	}
	if err != nil {
		return res, fmt.Errorf("macvlan: create endpoint %s: %w", req.EndpointID.Short(), err)
	}
	if req.MAC == nil {
		res.MAC = endpointMAC(req.IPv4.Addr())
	}
	d.mu.Lock()
	d.endpoints[req.EndpointID] = req.NetworkID
	d.mu.Unlock()
	return res, nil
}

// DeleteEndpoint forgets the endpoint. A missing endpoint returns nil.
func (d *Driver) DeleteEndpoint(ctx context.Context, req drivers.DeleteEndpointRequest) error {
	d.mu.Lock()
	delete(d.endpoints, req.EndpointID)
	d.mu.Unlock()
	return nil
}

// Join creates the endpoint's macvlan link with one netlink message, directly in the
// sandbox's namespace (req.NetnsFD): named req.IfName, on the network's parent, in the
// network's mode, with req.MAC (when nil, the Docker MAC of req.IPv4) and the network's MTU,
// left down. The kernel makes all of it or nothing.
//
// It fails with an error matching cnm.ErrNotFound when the network is unknown, with one
// matching cnm.ErrConflict when req.IfName exists in the sandbox or a passthru parent is taken
// already. The result reports InterfaceInSandbox and the network's first IPv4 and IPv6
// gateways, none for an internal network.
func (d *Driver) Join(ctx context.Context, req drivers.JoinRequest) (drivers.JoinResult, error) {
	n, err := d.network(req.NetworkID)
	if err == nil {
		err = checkJoin(req)
	}
	if err != nil {
		return drivers.JoinResult{}, fmt.Errorf("macvlan: join endpoint %s: %w", req.EndpointID.Short(), err)
	}
	mac := req.MAC
	if mac == nil {
		mac = endpointMAC(req.IPv4.Addr())
	}
	mode := n.opts.Mode.kernelMode()
	err = d.raw.Exec(cnl.MacvlanRequest(req.IfName, n.index, n.mtu, mode, mac, req.NetnsFD))
	if errors.Is(err, syscall.ENODEV) { // the parent was re-created since CreateNetwork
		var link netlink.Link
		if link, err = d.h.LinkByName(n.parent); err == nil {
			err = d.raw.Exec(cnl.MacvlanRequest(req.IfName, link.Attrs().Index, n.mtu, mode, mac, req.NetnsFD))
		}
	}
	switch {
	case errors.Is(err, syscall.EEXIST):
		err = &drivers.ConflictError{Kind: "interface", Name: req.IfName, Reason: "exists in the sandbox"}
	case errors.Is(err, syscall.EBUSY) && n.opts.Mode == ModePassthru:
		err = &drivers.ConflictError{Kind: "parent", Name: n.parent, Reason: "passthru parent holds another endpoint's link"}
	}
	if err != nil {
		return drivers.JoinResult{}, fmt.Errorf("macvlan: join endpoint %s: create macvlan %s on %s: %w", req.EndpointID.Short(), req.IfName, n.parent, err)
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

// Leave deletes the endpoint's macvlan link req.IfName in the sandbox's namespace, unless
// req.SandboxGone. A link or a namespace that is gone already returns nil; a link of that name
// that is not a macvlan link is left alone.
func (d *Driver) Leave(ctx context.Context, req drivers.LeaveRequest) error {
	if req.SandboxGone || req.SandboxKey == "" {
		return nil
	}
	if err := d.deleteInSandbox(ctx, req.SandboxKey, req.IfName); err != nil {
		return fmt.Errorf("macvlan: leave endpoint %s: %w", req.EndpointID.Short(), err)
	}
	return nil
}

func (d *Driver) deleteInSandbox(ctx context.Context, key, ifName string) error {
	ns, err := netns.Open(key)
	if errors.Is(err, syscall.ENOENT) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("sandbox namespace: %w", err)
	}
	defer ns.Close()
	h, err := newRouteHandle(ns)
	if err != nil {
		return fmt.Errorf("netlink handle in %s: %w", key, err)
	}
	defer h.Close()
	if err := h.SetSocketTimeout(socketTimeout); err != nil {
		return err
	}
	link, err := h.LinkByName(ifName)
	if errors.As(err, new(netlink.LinkNotFoundError)) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("link %s: %w", ifName, err)
	}
	if link.Type() != "macvlan" {
		d.log.WarnContext(ctx, "interface of endpoint is not a macvlan link; left alone", "link", ifName, "type", link.Type())
		return nil
	}
	if err := h.LinkDel(link); err != nil && !errors.Is(err, syscall.ENODEV) {
		return fmt.Errorf("delete macvlan %s: %w", ifName, err)
	}
	return nil
}

// Reconcile removes what a crash left in the host namespace: every veth that is the parent of
// an internal network (alias "cnm-macvlan:" and a network ID) of a network not in
// live.Networks, and every VLAN sub-interface the driver created (alias "cnm-macvlan-vlan")
// that no network of this driver uses. It reports one [drivers.Repair] per link removed, and
// joins the errors of the removals that failed, going on after each. Links without the
// driver's aliases are never touched.
//
// The Controller calls it once, on start, after re-creating the live networks.
func (d *Driver) Reconcile(ctx context.Context, live drivers.LiveState) ([]drivers.Repair, error) {
	d.netMu.Lock()
	defer d.netMu.Unlock()
	links, err := retryDump(d.h.LinkList)
	if err != nil {
		return nil, fmt.Errorf("macvlan: reconcile: list links: %w", err)
	}
	liveNets := make(map[drivers.NetworkID]bool, len(live.Networks))
	for _, id := range live.Networks {
		liveNets[id] = true
	}
	d.mu.Lock()
	for id := range d.networks {
		liveNets[id] = true
	}
	d.mu.Unlock()
	var (
		repairs []drivers.Repair
		errs    []error
	)
	for _, l := range links {
		a := l.Attrs()
		reason := ""
		switch {
		case !isMade(l):
			continue
		case a.Alias == aliasVLAN:
			if d.parentUsed(a.Name) {
				continue
			}
			reason = "VLAN sub-interface no live network uses"
		default:
			if liveNets[drivers.NetworkID(strings.TrimPrefix(a.Alias, aliasInternal))] {
				continue
			}
			reason = "parent of an internal network with no live record"
		}
		if err := ctx.Err(); err != nil {
			errs = append(errs, err)
			break
		}
		if err := d.h.LinkDel(l); err != nil && !errors.Is(err, syscall.ENODEV) {
			errs = append(errs, fmt.Errorf("macvlan: reconcile: delete link %s: %w", a.Name, err))
			continue
		}
		r := drivers.Repair{Object: "link " + a.Name, Action: "removed", Reason: reason}
		d.log.InfoContext(ctx, "reconcile", "repair", r.String())
		repairs = append(repairs, r)
	}
	return repairs, errors.Join(errs...)
}

// network returns the network nid, or an error matching cnm.ErrNotFound.
func (d *Driver) network(nid drivers.NetworkID) (*network, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := d.networks[nid]
	if n == nil {
		return nil, &drivers.NotFoundError{Kind: "macvlan network", Name: string(nid)}
	}
	return n, nil
}

// checkID checks that id has the form cnm gives IDs: 12 to 64 lowercase hex characters.
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
