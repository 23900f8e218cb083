package server

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"sort"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/drivers/remote/wire"
)

func (s *Server) capabilities() wire.CapabilitiesResponse {
	caps := s.drv.Capabilities()
	r := wire.CapabilitiesResponse{Scope: wire.ScopeLocal}
	if caps.DataScope == drivers.GlobalScope {
		r.Scope = wire.ScopeGlobal
	}
	switch caps.ConnectivityScope {
	case drivers.GlobalScope:
		r.ConnectivityScope = wire.ScopeGlobal
	case drivers.LocalScope:
		r.ConnectivityScope = wire.ScopeLocal
	}
	return r
}

func (s *Server) createNetwork(ctx context.Context, in wire.CreateNetworkRequest) (any, error) {
	req, err := s.networkRequest(in)
	if err != nil {
		return nil, fmt.Errorf("create network %s: %w", in.NetworkID, err)
	}
	if err := s.drv.CreateNetwork(ctx, req); err != nil {
		return nil, err
	}
	return wire.Response{}, nil
}

// networkRequest turns Docker's CreateNetwork into cnm's.
func (s *Server) networkRequest(in wire.CreateNetworkRequest) (drivers.CreateNetworkRequest, error) {
	req := drivers.CreateNetworkRequest{NetworkID: drivers.NetworkID(in.NetworkID), Name: short(in.NetworkID)}
	if in.NetworkID == "" {
		return req, drivers.Invalid("network ID", "", "empty")
	}
	var err error
	if req.IPv4, err = subnets(in.IPv4Data, false); err != nil {
		return req, err
	}
	if req.IPv6, err = subnets(in.IPv6Data, true); err != nil {
		return req, err
	}
	if req.EnableIPv6, err = flag(in.Options, wire.OptionEnableIPv6); err != nil {
		return req, err
	}
	req.EnableIPv6 = req.EnableIPv6 || len(req.IPv6) > 0
	if req.Internal, err = flag(in.Options, wire.OptionInternal); err != nil {
		return req, err
	}
	labels, err := genericOptions(in.Options[wire.OptionGeneric])
	if err != nil {
		return req, err
	}
	if len(labels) > 0 {
		if s.parser == nil {
			return req, drivers.Invalid("driver options", fmt.Sprint(sortedKeys(labels)), "the driver takes no options")
		}
		if req.Options, err = s.parser.ParseNetworkOptions(labels); err != nil {
			return req, err
		}
	}
	return req, nil
}

func short(id string) string { return drivers.NetworkID(id).Short() }

// flag reads a boolean option, given as a JSON boolean or a string.
func flag(opts map[string]any, key string) (bool, error) {
	switch v := opts[key].(type) {
	case nil:
		return false, nil
	case bool:
		return v, nil
	case string:
		switch v {
		case "true", "1":
			return true, nil
		case "false", "0", "":
			return false, nil
		}
	}
	return false, drivers.Invalid(key, fmt.Sprint(opts[key]), "want a boolean")
}

// genericOptions returns the driver options (docker network create -o) as labels; values that
// are not strings are given in their JSON form.
func genericOptions(v any) (map[string]string, error) {
	if v == nil {
		return nil, nil
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, drivers.Invalid(wire.OptionGeneric, fmt.Sprint(v), "want an object")
	}
	labels := make(map[string]string, len(m))
	for k, x := range m {
		switch x := x.(type) {
		case string:
			labels[k] = x
		default:
			b, err := json.Marshal(x)
			if err != nil {
				return nil, drivers.Invalid(wire.OptionGeneric+"."+k, fmt.Sprint(x), "not a value")
			}
			labels[k] = string(b)
		}
	}
	return labels, nil
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range maps.Keys(m) {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// subnets turns Docker's IPAM data into cnm's.
func subnets(in []wire.IPAMData, v6 bool) ([]drivers.IPAMData, error) {
	var out []drivers.IPAMData
	for _, d := range in {
		p, err := netip.ParsePrefix(d.Pool)
		if err != nil || p.Addr().Is6() != v6 {
			return nil, drivers.Invalid("pool", d.Pool, "want a prefix of the family")
		}
		s := drivers.IPAMData{Subnet: p.Masked()}
		if d.Gateway != "" {
			if s.Gateway, err = cidrAddr("gateway", d.Gateway, p); err != nil {
				return nil, err
			}
		}
		for k, a := range d.AuxAddresses {
			addr, err := cidrAddr("auxiliary address "+k, a, p)
			if err != nil {
				return nil, err
			}
			if s.AuxAddresses == nil {
				s.AuxAddresses = map[string]netip.Addr{}
			}
			s.AuxAddresses[k] = addr
		}
		out = append(out, s)
	}
	return out, nil
}

// cidrAddr reads "10.0.0.1/24" (or a bare address) that must be in subnet.
func cidrAddr(field, s string, subnet netip.Prefix) (netip.Addr, error) {
	a, err := parseAddr(s)
	if err != nil || !subnet.Contains(a) {
		return netip.Addr{}, drivers.Invalid(field, s, "want an address in "+subnet.Masked().String())
	}
	return a, nil
}

// parseAddr reads "10.0.0.1/24" or "10.0.0.1".
func parseAddr(s string) (netip.Addr, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Addr().Unmap(), nil
	}
	a, err := netip.ParseAddr(s)
	return a.Unmap(), err
}

func (s *Server) deleteNetwork(ctx context.Context, in wire.DeleteNetworkRequest) (any, error) {
	if in.NetworkID == "" {
		return nil, fmt.Errorf("delete network: %w", drivers.Invalid("network ID", "", "empty"))
	}
	nid := drivers.NetworkID(in.NetworkID)
	if err := s.drv.DeleteNetwork(ctx, drivers.DeleteNetworkRequest{NetworkID: nid}); err != nil {
		return nil, err
	}
	s.mu.Lock()
	for eid, ep := range s.endpoints {
		if ep.nid == nid {
			delete(s.endpoints, eid)
		}
	}
	s.mu.Unlock()
	return wire.Response{}, nil
}

func (s *Server) createEndpoint(ctx context.Context, in wire.CreateEndpointRequest) (any, error) {
	req, err := endpointRequest(in)
	if err != nil {
		return nil, fmt.Errorf("create endpoint %s: %w", short(in.EndpointID), err)
	}
	res, err := s.drv.CreateEndpoint(ctx, req)
	if err != nil {
		return nil, err
	}
	ep := &endpoint{nid: req.NetworkID, mac: req.MAC, v4: req.IPv4, v6: req.IPv6}
	var out wire.CreateEndpointResponse
	if req.MAC == nil && res.MAC != nil {
		ep.mac = res.MAC
		out.Interface = &wire.EndpointInterface{MacAddress: res.MAC.String()}
	}
	s.mu.Lock()
	s.endpoints[req.EndpointID] = ep
	s.mu.Unlock()
	return out, nil
}

func endpointRequest(in wire.CreateEndpointRequest) (drivers.CreateEndpointRequest, error) {
	req := drivers.CreateEndpointRequest{NetworkID: drivers.NetworkID(in.NetworkID), EndpointID: drivers.EndpointID(in.EndpointID)}
	if in.NetworkID == "" || len(in.EndpointID) < 12 {
		return req, drivers.Invalid("network and endpoint IDs", in.NetworkID+" "+in.EndpointID, "want a network ID and an endpoint ID of 12 characters or more")
	}
	if in.Interface == nil {
		return req, nil
	}
	var err error
	if in.Interface.Address != "" {
		if req.IPv4, err = netip.ParsePrefix(in.Interface.Address); err != nil || !req.IPv4.Addr().Is4() {
			return req, drivers.Invalid("address", in.Interface.Address, "want an IPv4 address with its prefix length")
		}
	}
	if in.Interface.AddressIPv6 != "" {
		if req.IPv6, err = netip.ParsePrefix(in.Interface.AddressIPv6); err != nil || !req.IPv6.Addr().Is6() {
			return req, drivers.Invalid("IPv6 address", in.Interface.AddressIPv6, "want an IPv6 address with its prefix length")
		}
	}
	if in.Interface.MacAddress != "" {
		if req.MAC, err = net.ParseMAC(in.Interface.MacAddress); err != nil || len(req.MAC) != 6 {
			return req, drivers.Invalid("MAC", in.Interface.MacAddress, "want a 6-byte MAC")
		}
	}
	return req, nil
}

func (s *Server) deleteEndpoint(ctx context.Context, in wire.DeleteEndpointRequest) (any, error) {
	eid := drivers.EndpointID(in.EndpointID)
	if err := s.drv.DeleteEndpoint(ctx, drivers.DeleteEndpointRequest{NetworkID: drivers.NetworkID(in.NetworkID), EndpointID: eid}); err != nil {
		return nil, err
	}
	s.mu.Lock()
	delete(s.endpoints, eid)
	s.mu.Unlock()
	return wire.Response{}, nil
}

func (s *Server) endpointInfo(_ context.Context, in wire.EndpointInfoRequest) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ep := s.endpoints[drivers.EndpointID(in.EndpointID)]
	if ep == nil {
		return nil, &drivers.NotFoundError{Kind: "endpoint", Name: in.EndpointID}
	}
	v := map[string]any{}
	if ep.v4.IsValid() {
		v["Address"] = ep.v4.String()
	}
	if ep.v6.IsValid() {
		v["AddressIPv6"] = ep.v6.String()
	}
	if ep.mac != nil {
		v["MacAddress"] = net.HardwareAddr(ep.mac).String()
	}
	if ep.ifName != "" {
		v["SrcName"] = ep.ifName
	}
	return wire.EndpointInfoResponse{Value: v}, nil
}

// hostIfName is the name of the link a Join leaves in the host namespace for the caller.
func hostIfName(eid drivers.EndpointID) string { return "cnm" + string(eid)[:12] }

func (s *Server) join(ctx context.Context, in wire.JoinRequest) (any, error) {
	eid := drivers.EndpointID(in.EndpointID)
	s.mu.Lock()
	ep := s.endpoints[eid]
	var cp endpoint
	if ep != nil {
		cp = *ep
	}
	s.mu.Unlock()
	if ep == nil || string(cp.nid) != in.NetworkID {
		return nil, fmt.Errorf("join: %w", &drivers.NotFoundError{Kind: "endpoint", Name: in.EndpointID + " of network " + in.NetworkID})
	}
	if s.joiner == nil {
		return nil, fmt.Errorf("join endpoint %s: %w", eid.Short(), &drivers.NotSupportedError{What: "a join for a caller that moves the interface itself (drivers.HostSideJoiner)"})
	}
	name := hostIfName(eid)
	res, err := s.joiner.JoinHostSide(ctx, drivers.JoinRequest{
		NetworkID: cp.nid, EndpointID: eid, SandboxKey: in.SandboxKey, NetnsFD: -1,
		IfName: name, MAC: cp.mac, IPv4: cp.v4, IPv6: cp.v6,
	})
	if err != nil {
		return nil, err
	}
	out := wire.JoinResponse{}
	if !res.NoInterface {
		out.InterfaceName = &wire.InterfaceName{SrcName: res.SrcName, DstPrefix: s.prefix}
	}
	if res.Gateway.IsValid() {
		out.Gateway = res.Gateway.String()
	}
	if res.GatewayIPv6.IsValid() {
		out.GatewayIPv6 = res.GatewayIPv6.String()
	}
	for _, r := range res.StaticRoutes {
		w := wire.StaticRoute{Destination: r.Destination.String(), RouteType: wire.RouteConnected}
		if r.NextHop.IsValid() {
			w.RouteType, w.NextHop = wire.RouteNextHop, r.NextHop.String()
		}
		out.StaticRoutes = append(out.StaticRoutes, w)
	}
	s.mu.Lock()
	if ep := s.endpoints[eid]; ep != nil {
		ep.ifName = res.SrcName
	}
	s.mu.Unlock()
	return out, nil
}

func (s *Server) leave(ctx context.Context, in wire.LeaveRequest) (any, error) {
	eid := drivers.EndpointID(in.EndpointID)
	s.mu.Lock()
	var name string
	if ep := s.endpoints[eid]; ep != nil {
		name = ep.ifName
	}
	s.mu.Unlock()
	if err := s.drv.Leave(ctx, drivers.LeaveRequest{NetworkID: drivers.NetworkID(in.NetworkID), EndpointID: eid, IfName: name}); err != nil {
		return nil, err
	}
	s.mu.Lock()
	if ep := s.endpoints[eid]; ep != nil {
		ep.ifName = ""
	}
	s.mu.Unlock()
	return wire.Response{}, nil
}
