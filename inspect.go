package cnm

import (
	"fmt"
	"maps"
	"strconv"

	"github.com/cnmkit/cnm/api"
	"github.com/cnmkit/cnm/drivers/bridge"
	"github.com/cnmkit/cnm/endpoint"
	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/cnmkit/cnm/network"
)

// LabelDefaultBridge is the option Docker shows on its default bridge network's inspect;
// InspectNetwork shows it on DefaultNetwork. It is not an option a network can be given.
const LabelDefaultBridge = "com.docker.network.bridge.default_bridge"

// SandboxInspect is a sandbox with the network part of `docker container inspect`:
// NetworkSettings.Networks (per network: IPAddress, IPPrefixLen, Gateway, MacAddress,
// EndpointID, NetworkID, Aliases) and NetworkSettings.Ports. It is the wire type of cnmd's
// API (package api), so the JSON a Go program encodes and the one cnmctl prints are the same.
type SandboxInspect = api.SandboxInspect

// InspectNetwork returns the network with that name, ID or unique ID prefix as `docker network
// inspect` shows it: network.Network's Inspect, with Options listing the network's driver
// settings as Docker lists them. For the default bridge network (with the built-in bridge
// driver) that is every setting, defaults included: com.docker.network.bridge.default_bridge,
// .enable_icc, .enable_ip_masquerade, .host_binding_ipv4, .name and
// com.docker.network.driver.mtu; other networks list the options they were given. Errors as
// Network's.
func (c *Controller) InspectNetwork(nameOrID string) (network.Inspect, error) {
	n, err := c.Network(nameOrID)
	if err != nil {
		return network.Inspect{}, err
	}
	return c.inspectNetwork(n), nil
}

func (c *Controller) inspectNetwork(n network.Network) network.Inspect {
	in := n.Inspect()
	if !c.bridge || n.Name() != DefaultNetwork || n.Driver() != "bridge" {
		return in
	}
	o, err := bridge.ParseNetworkOptions(in.Options)
	if err != nil {
		c.log.Warn("inspect: default bridge options", "err", err)
		return in
	}
	mtu := o.MTU
	if mtu == 0 {
		mtu = bridge.DefaultMTU
	}
	host := "0.0.0.0"
	if o.HostBindingIPv4.IsValid() {
		host = o.HostBindingIPv4.String()
	}
	opts := maps.Clone(in.Options)
	maps.Copy(opts, map[string]string{
		LabelDefaultBridge:             "true",
		bridge.LabelEnableICC:          strconv.FormatBool(!o.DisableICC),
		bridge.LabelEnableIPMasquerade: strconv.FormatBool(!o.DisableIPMasquerade),
		bridge.LabelHostBindingIPv4:    host,
		bridge.LabelBridgeName:         o.BridgeName,
		bridge.LabelMTU:                strconv.Itoa(mtu),
	})
	in.Options = opts
	return in
}

// InspectNetworks returns InspectNetwork's view of every network, sorted by name.
func (c *Controller) InspectNetworks() []network.Inspect {
	nets := c.Networks()
	out := make([]network.Inspect, len(nets))
	for i, n := range nets {
		out[i] = c.inspectNetwork(n)
	}
	return out
}

// EndpointSettings returns an endpoint as a sandbox's inspect shows it in
// NetworkSettings.Networks (Docker's shape): its addresses with their prefix lengths,
// gateways, MAC, IDs, aliases and interface name.
func EndpointSettings(ep endpoint.Endpoint) api.EndpointSettings {
	info := ep.Info()
	es := api.EndpointSettings{Aliases: info.Aliases, NetworkID: info.NetworkID, EndpointID: info.ID, IfName: info.IfName}
	if es.Aliases == nil {
		es.Aliases = []string{}
	}
	if info.Gateway.IsValid() {
		es.Gateway = info.Gateway.String()
	}
	if info.IPv4.IsValid() {
		es.IPAddress, es.IPPrefixLen = info.IPv4.Addr().String(), info.IPv4.Bits()
	}
	if info.GatewayIPv6.IsValid() {
		es.IPv6Gateway = info.GatewayIPv6.String()
	}
	if info.IPv6.IsValid() {
		es.GlobalIPv6Address, es.GlobalIPv6PrefixLen = info.IPv6.Addr().String(), info.IPv6.Bits()
	}
	if info.MAC != nil {
		es.MacAddress = info.MAC.String()
	}
	return es
}

// InspectSandbox returns the sandbox id with its networks and published ports, as `docker
// container inspect` shows a container's: NetworkSettings.Networks has an entry per network
// it is joined to, keyed by the network's name, and NetworkSettings.Ports one per published
// container port ("80/tcp"), with where it is bound on the host. A sandbox in container mode
// lists no networks of its own (as Docker shows one); SandboxKey is its shared namespace.
// A missing sandbox fails with an error matching ErrNotFound, and once Close has begun with
// one matching ErrUnavailable.
func (c *Controller) InspectSandbox(id string) (SandboxInspect, error) {
	c.mu.Lock()
	if err := c.checkOpen(); err != nil {
		c.mu.Unlock()
		return SandboxInspect{}, fmt.Errorf("cnm: inspect sandbox: %w", err)
	}
	sb := c.sandboxes[id]
	c.mu.Unlock()
	if sb == nil {
		return SandboxInspect{}, fmt.Errorf("cnm: inspect sandbox: %w", &errclass.NotFoundError{Kind: "sandbox", Name: id})
	}
	rec := sb.rec
	in := SandboxInspect{
		ID: id, Name: id, Created: rec.Created, Mode: rec.Mode.String(), Share: rec.Share, Netns: rec.Netns,
		Hostname: sb.ns.Hostname(), Domainname: rec.Domainname,
		HostsPath: sb.ns.HostsPath(), ResolvConfPath: sb.ns.ResolvConfPath(),
		NetworkSettings: api.NetworkSettings{
			SandboxKey: sb.ns.Key(),
			Ports:      map[string][]api.PortMap{},
			Networks:   map[string]api.EndpointSettings{},
		},
	}
	for _, n := range c.Networks() {
		for _, ep := range n.Endpoints() {
			info := ep.Info()
			if info.SandboxID != id {
				continue
			}
			in.NetworkSettings.Networks[n.Name()] = EndpointSettings(ep)
			for _, p := range info.Ports {
				proto := p.Proto
				if proto == "" {
					proto = "tcp"
				}
				key := fmt.Sprintf("%d/%s", p.ContainerPort, proto)
				hostIP := "0.0.0.0"
				if p.HostIP.IsValid() {
					hostIP = p.HostIP.String()
				}
				in.NetworkSettings.Ports[key] = append(in.NetworkSettings.Ports[key], api.PortMap{HostIP: hostIP, HostPort: strconv.Itoa(int(p.HostPort))})
			}
		}
	}
	return in, nil
}
