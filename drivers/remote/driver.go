package remote

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/drivers/remote/wire"
	"github.com/cnmkit/cnm/internal/errclass"
)

var (
	_ drivers.Driver       = (*Driver)(nil)
	_ drivers.OptionParser = (*Driver)(nil)
	_ drivers.Closer       = (*Driver)(nil)
)

// Driver is a cnm network driver that forwards every call to a Docker network plugin. Create
// one with [Open] and register it with the Controller like any driver. It is safe for
// concurrent use; it keeps no state of its own beyond the connection.
type Driver struct {
	c    *client
	caps drivers.Capabilities
}

// Open finds the network plugin of cfg (see [Discover]), activates it (/Plugin.Activate must
// list NetworkDriver) and asks its capabilities. It fails with an error matching
// cnm.ErrNotFound when there is no such plugin, cnm.ErrUnavailable when it does not answer,
// and cnm.ErrNotSupported when it is not a network driver.
func Open(ctx context.Context, cfg Config) (*Driver, error) {
	c, err := dial(ctx, cfg, wire.NetworkDriver)
	if err != nil {
		return nil, fmt.Errorf("remote: open network plugin %s: %w", cfg.Name, err)
	}
	var resp wire.CapabilitiesResponse
	if err := c.call(ctx, wire.NetworkGetCapabilities, nil, &resp); err != nil {
		c.close()
		return nil, fmt.Errorf("remote: open network plugin %s: %w", cfg.Name, err)
	}
	caps := drivers.Capabilities{Sandbox: drivers.NamespaceSandbox}
	if caps.DataScope, err = scope(resp.Scope); err == nil && resp.ConnectivityScope != "" {
		caps.ConnectivityScope, err = scope(resp.ConnectivityScope)
	}
	if err != nil {
		c.close()
		return nil, fmt.Errorf("remote: open network plugin %s: capabilities: %w", cfg.Name, err)
	}
	return &Driver{c: c, caps: caps}, nil
}

func scope(s string) (drivers.Scope, error) {
	switch s {
	case wire.ScopeLocal:
		return drivers.LocalScope, nil
	case wire.ScopeGlobal:
		return drivers.GlobalScope, nil
	}
	return 0, errclass.Invalid("scope", s, `want "local" or "global"`)
}

// Close releases the driver's idle connections to the plugin. The plugin itself keeps running.
func (d *Driver) Close() error {
	d.c.close()
	return nil
}

// Name returns the plugin's name.
func (d *Driver) Name() string { return d.c.name }

// Capabilities reports the plugin's scope; endpoints join namespace sandboxes, addresses come
// from cnm's IPAM, and ports are not published (the protocol passes them only as opaque
// options).
func (d *Driver) Capabilities() drivers.Capabilities { return d.caps }

// Options are a plugin network's driver options (docker network create -o), passed to the
// plugin unchanged in the com.docker.network.generic option.
type Options struct {
	// Driver is the plugin's name.
	Driver string
	// Generic are the options, key to value.
	Generic map[string]string
}

// DriverType returns the plugin's name.
func (o Options) DriverType() string { return o.Driver }

// Labels returns a copy of the options.
func (o Options) Labels() map[string]string { return maps.Clone(o.Generic) }

// ParseNetworkOptions takes any labels: the plugin checks them when the network is created.
func (d *Driver) ParseNetworkOptions(labels map[string]string) (drivers.NetworkOptions, error) {
	return Options{Driver: d.c.name, Generic: maps.Clone(labels)}, nil
}

// CreateNetwork sends /NetworkDriver.CreateNetwork with the subnets, the driver options under
// com.docker.network.generic, and the IPv6 and internal flags, as Docker does.
func (d *Driver) CreateNetwork(ctx context.Context, req drivers.CreateNetworkRequest) error {
	generic := map[string]string{}
	if req.Options != nil {
		maps.Copy(generic, req.Options.Labels())
	}
	w := wire.CreateNetworkRequest{
		NetworkID: string(req.NetworkID),
		Options: map[string]any{
			wire.OptionGeneric:    generic,
			wire.OptionEnableIPv6: req.EnableIPv6,
			wire.OptionInternal:   req.Internal,
		},
		IPv4Data: ipamData(req.IPv4, d.space()),
		IPv6Data: ipamData(req.IPv6, d.space()),
	}
	if err := d.c.call(ctx, wire.NetworkCreateNetwork, w, &wire.Response{}); err != nil {
		return fmt.Errorf("remote: create network %s: %w", req.NetworkID.Short(), err)
	}
	return nil
}

// space is the address space name Docker's default IPAM gives the driver's pools.
func (d *Driver) space() string {
	if d.caps.DataScope == drivers.GlobalScope {
		return "GlobalDefault"
	}
	return "LocalDefault"
}

func ipamData(in []drivers.IPAMData, space string) []wire.IPAMData {
	out := make([]wire.IPAMData, 0, len(in))
	for _, s := range in {
		w := wire.IPAMData{AddressSpace: space, Pool: s.Subnet.String()}
		if s.Gateway.IsValid() {
			w.Gateway = netip.PrefixFrom(s.Gateway, s.Subnet.Bits()).String()
		}
		if len(s.AuxAddresses) > 0 {
			w.AuxAddresses = make(map[string]string, len(s.AuxAddresses))
			for k, a := range s.AuxAddresses {
				w.AuxAddresses[k] = netip.PrefixFrom(a, s.Subnet.Bits()).String()
			}
		}
		out = append(out, w)
	}
	return out
}

// DeleteNetwork sends /NetworkDriver.DeleteNetwork. A plugin that answers that the network is
// not found returns nil. With req.Forget (another host deleted a global network) the plugin
// is told all the same: the protocol has no other way to say it.
func (d *Driver) DeleteNetwork(ctx context.Context, req drivers.DeleteNetworkRequest) error {
	err := d.c.call(ctx, wire.NetworkDeleteNetwork, wire.DeleteNetworkRequest{NetworkID: string(req.NetworkID)}, &wire.Response{})
	if err != nil && !gone(err) {
		return fmt.Errorf("remote: delete network %s: %w", req.NetworkID.Short(), err)
	}
	return nil
}

// CreateEndpoint sends /NetworkDriver.CreateEndpoint with the endpoint's addresses and MAC.
// The plugin may choose a MAC when none was given; a plugin that answers other addresses
// than cnm's IPAM gave, or another MAC than the one requested, is refused with an error
// matching cnm.ErrNotSupported, and the endpoint it made deleted.
func (d *Driver) CreateEndpoint(ctx context.Context, req drivers.CreateEndpointRequest) (drivers.CreateEndpointResult, error) {
	iface := &wire.EndpointInterface{}
	if req.IPv4.IsValid() {
		iface.Address = req.IPv4.String()
	}
	if req.IPv6.IsValid() {
		iface.AddressIPv6 = req.IPv6.String()
	}
	if req.MAC != nil {
		iface.MacAddress = req.MAC.String()
	}
	w := wire.CreateEndpointRequest{NetworkID: string(req.NetworkID), EndpointID: string(req.EndpointID), Interface: iface, Options: map[string]any{}}
	var resp wire.CreateEndpointResponse
	if err := d.c.call(ctx, wire.NetworkCreateEndpoint, w, &resp); err != nil {
		return drivers.CreateEndpointResult{}, fmt.Errorf("remote: create endpoint %s: %w", req.EndpointID.Short(), err)
	}
	res, err := endpointResult(req, resp.Interface)
	if err != nil {
		err = fmt.Errorf("remote: create endpoint %s: %w", req.EndpointID.Short(), err)
		derr := d.DeleteEndpoint(context.WithoutCancel(ctx), drivers.DeleteEndpointRequest{NetworkID: req.NetworkID, EndpointID: req.EndpointID})
		if derr != nil {
			err = errors.Join(err, fmt.Errorf("rollback: %w", derr))
		}
		return drivers.CreateEndpointResult{}, err
	}
	return res, nil
}

// endpointResult checks what a plugin answered to CreateEndpoint against the request.
func endpointResult(req drivers.CreateEndpointRequest, got *wire.EndpointInterface) (drivers.CreateEndpointResult, error) {
	var res drivers.CreateEndpointResult
	if got == nil {
		return res, nil
	}
	if got.MacAddress != "" {
		mac, err := net.ParseMAC(got.MacAddress)
		switch {
		case err != nil || len(mac) != 6:
			return res, &errclass.InvalidParameterError{Field: "plugin's MAC", Value: got.MacAddress, Reason: "not a 6-byte MAC", Err: err}
		case req.MAC != nil && mac.String() != req.MAC.String():
			return res, &errclass.NotSupportedError{What: "a plugin changing the requested MAC " + req.MAC.String() + " to " + got.MacAddress}
		case req.MAC == nil:
			res.MAC = mac
		}
	}
	for _, a := range []struct {
		got  string
		want netip.Prefix
	}{{got.Address, req.IPv4}, {got.AddressIPv6, req.IPv6}} {
		if a.got == "" {
			continue
		}
		p, err := netip.ParsePrefix(a.got)
		if err != nil {
			return res, &errclass.InvalidParameterError{Field: "plugin's address", Value: a.got, Reason: "not an address with a prefix length", Err: err}
		}
		if p != a.want {
			return res, &errclass.NotSupportedError{What: fmt.Sprintf("a plugin choosing address %s (cnm's IPAM gave %v)", p, a.want)}
		}
	}
	return res, nil
}

// DeleteEndpoint sends /NetworkDriver.DeleteEndpoint. A plugin that answers that the endpoint
// is not found returns nil.
func (d *Driver) DeleteEndpoint(ctx context.Context, req drivers.DeleteEndpointRequest) error {
	err := d.c.call(ctx, wire.NetworkDeleteEndpoint, wire.DeleteEndpointRequest{NetworkID: string(req.NetworkID), EndpointID: string(req.EndpointID)}, &wire.Response{})
	if err != nil && !gone(err) {
		return fmt.Errorf("remote: delete endpoint %s: %w", req.EndpointID.Short(), err)
	}
	return nil
}

// Join sends /NetworkDriver.Join with the sandbox's namespace path, and then, when the plugin
// gives the endpoint a gateway, /NetworkDriver.ProgramExternalConnectivity (a plugin without
// it is fine). The interface the plugin names (SrcName) is a link in the host namespace that
// the sandbox moves in and renames to req.IfName: the plugin's DstPrefix is not used, since
// cnm names interfaces itself. A plugin that names no interface gives an endpoint without
// one. On error, Leave is sent.
func (d *Driver) Join(ctx context.Context, req drivers.JoinRequest) (_ drivers.JoinResult, err error) {
	fail := func(err error) error { return fmt.Errorf("remote: join endpoint %s: %w", req.EndpointID.Short(), err) }
	w := wire.JoinRequest{NetworkID: string(req.NetworkID), EndpointID: string(req.EndpointID), SandboxKey: req.SandboxKey, Options: map[string]any{}}
	var resp wire.JoinResponse
	if err := d.c.call(ctx, wire.NetworkJoin, w, &resp); err != nil {
		return drivers.JoinResult{}, fail(err)
	}
	defer func() {
		if err != nil {
			if lerr := d.leave(context.WithoutCancel(ctx), req.NetworkID, req.EndpointID); lerr != nil {
				err = errors.Join(err, fmt.Errorf("rollback: %w", lerr))
			}
		}
	}()
	res, err := joinResult(resp)
	if err != nil {
		return drivers.JoinResult{}, fail(err)
	}
	if res.Gateway.IsValid() || res.GatewayIPv6.IsValid() {
		pr := wire.ExternalConnectivityRequest{NetworkID: w.NetworkID, EndpointID: w.EndpointID, Options: map[string]any{}}
		if err := d.c.call(ctx, wire.NetworkProgramExternalConnectivity, pr, &wire.Response{}); err != nil && !notImplemented(err) {
			return drivers.JoinResult{}, fail(err)
		}
	}
	return res, nil
}

func joinResult(resp wire.JoinResponse) (drivers.JoinResult, error) {
	var res drivers.JoinResult
	if resp.InterfaceName == nil || resp.InterfaceName.SrcName == "" {
		res.NoInterface = true
	} else {
		if err := drivers.CheckIfName("plugin's interface name", resp.InterfaceName.SrcName); err != nil {
			return res, err
		}
		res.SrcName = resp.InterfaceName.SrcName
	}
	var err error
	if res.Gateway, err = gateway("gateway", resp.Gateway, false); err != nil {
		return res, err
	}
	if res.GatewayIPv6, err = gateway("IPv6 gateway", resp.GatewayIPv6, true); err != nil {
		return res, err
	}
	for _, r := range resp.StaticRoutes {
		dst, err := netip.ParsePrefix(r.Destination)
		if err != nil {
			return res, &errclass.InvalidParameterError{Field: "plugin's route destination", Value: r.Destination, Reason: "not a prefix", Err: err}
		}
		route := drivers.Route{Destination: dst.Masked()}
		switch r.RouteType {
		case wire.RouteConnected:
		case wire.RouteNextHop:
			if route.NextHop, err = netip.ParseAddr(r.NextHop); err != nil {
				return res, &errclass.InvalidParameterError{Field: "plugin's route next hop", Value: r.NextHop, Reason: "not an address", Err: err}
			}
			route.NextHop = route.NextHop.Unmap()
		default:
			return res, errclass.Invalid("plugin's route type", fmt.Sprint(r.RouteType), "want 0 (next hop) or 1 (connected)")
		}
		res.StaticRoutes = append(res.StaticRoutes, route)
	}
	return res, nil
}

func gateway(field, s string, v6 bool) (netip.Addr, error) {
	if s == "" {
		return netip.Addr{}, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, &errclass.InvalidParameterError{Field: "plugin's " + field, Value: s, Reason: "not an address", Err: err}
	}
	if a = a.Unmap(); a.Is6() != v6 {
		return netip.Addr{}, errclass.Invalid("plugin's "+field, s, "wrong address family")
	}
	return a, nil
}

// Leave sends /NetworkDriver.RevokeExternalConnectivity (a plugin without it is fine) and
// /NetworkDriver.Leave. A plugin that answers that the endpoint is not found returns nil.
func (d *Driver) Leave(ctx context.Context, req drivers.LeaveRequest) error {
	rr := wire.ExternalConnectivityRequest{NetworkID: string(req.NetworkID), EndpointID: string(req.EndpointID)}
	rerr := d.c.call(ctx, wire.NetworkRevokeExternalConnectivity, rr, &wire.Response{})
	if rerr != nil && (notImplemented(rerr) || gone(rerr)) {
		rerr = nil
	}
	err := d.leave(ctx, req.NetworkID, req.EndpointID)
	if err = errors.Join(rerr, err); err != nil {
		return fmt.Errorf("remote: leave endpoint %s: %w", req.EndpointID.Short(), err)
	}
	return nil
}

func (d *Driver) leave(ctx context.Context, nid drivers.NetworkID, eid drivers.EndpointID) error {
	err := d.c.call(ctx, wire.NetworkLeave, wire.LeaveRequest{NetworkID: string(nid), EndpointID: string(eid)}, &wire.Response{})
	if err != nil && gone(err) {
		return nil
	}
	return err
}

// EndpointOperInfo sends /NetworkDriver.EndpointOperInfo and returns the plugin's answer: free
// form data about the endpoint, what docker network inspect shows.
func (d *Driver) EndpointOperInfo(ctx context.Context, nid drivers.NetworkID, eid drivers.EndpointID) (map[string]any, error) {
	var resp wire.EndpointInfoResponse
	if err := d.c.call(ctx, wire.NetworkEndpointOperInfo, wire.EndpointInfoRequest{NetworkID: string(nid), EndpointID: string(eid)}, &resp); err != nil {
		return nil, fmt.Errorf("remote: endpoint %s info: %w", eid.Short(), err)
	}
	return resp.Value, nil
}

// Node is a cluster member, as the discovery notifications describe it.
type Node struct {
	Address     string // the node's advertised address
	BindAddress string // the address it listens on
	Self        bool   // reports whether the node is this host
}

// DiscoverNew tells the plugin that node joined the cluster (/NetworkDriver.DiscoverNew). A
// plugin without the method is fine.
func (d *Driver) DiscoverNew(ctx context.Context, node Node) error {
	return d.discover(ctx, wire.NetworkDiscoverNew, node)
}

// DiscoverDelete tells the plugin that node left the cluster (/NetworkDriver.DiscoverDelete).
// A plugin without the method is fine.
func (d *Driver) DiscoverDelete(ctx context.Context, node Node) error {
	return d.discover(ctx, wire.NetworkDiscoverDelete, node)
}

func (d *Driver) discover(ctx context.Context, method string, node Node) error {
	n := wire.DiscoveryNotification{DiscoveryType: 1, DiscoveryData: node}
	if err := d.c.call(ctx, method, n, &wire.Response{}); err != nil && !notImplemented(err) {
		return fmt.Errorf("remote: %s %s: %w", method, node.Address, err)
	}
	return nil
}
