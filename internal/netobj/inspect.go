package netobj

import (
	"maps"

	"github.com/cnmkit/cnm/network"
)

// Inspect implements Network.
func (n *Net) Inspect() network.Inspect {
	r := n.Record()
	in := network.Inspect{
		Name: r.Name, ID: r.ID, Created: r.Created, Scope: r.Scope.String(), Driver: r.Driver,
		EnableIPv6: r.EnableIPv6, Internal: r.Internal, Attachable: r.Attachable,
		IPAM:       network.IPAMInspect{Driver: "default", Options: map[string]string{}, Config: []network.IPAMConfigInspect{}},
		Containers: map[string]network.ContainerInspect{},
		Options:    maps.Clone(r.Options),
		Labels:     maps.Clone(r.Labels),
	}
	if in.Options == nil {
		in.Options = map[string]string{}
	}
	maps.Copy(in.Options, r.Allocation) // the driver's allocation (a VNI) shows as Docker's does
	if in.Labels == nil {
		in.Labels = map[string]string{}
	}
	switch {
	case n.cfg.Entry.Caps.NoIPAM:
		in.IPAM.Driver = "null"
	case r.IPAMDriver != "":
		in.IPAM.Driver = r.IPAMDriver
	}
	for _, c := range append(r.IPv4, r.IPv6...) {
		ic := network.IPAMConfigInspect{Subnet: c.Subnet.String()}
		if c.IPRange.IsValid() {
			ic.IPRange = c.IPRange.String()
		}
		if c.Gateway.IsValid() {
			ic.Gateway = c.Gateway.String()
		}
		if len(c.AuxAddresses) > 0 {
			ic.AuxiliaryAddresses = make(map[string]string, len(c.AuxAddresses))
			for k, v := range c.AuxAddresses {
				ic.AuxiliaryAddresses[k] = v.String()
			}
		}
		in.IPAM.Config = append(in.IPAM.Config, ic)
	}
	for _, ep := range n.eps() {
		info := ep.Info()
		if info.SandboxID == "" {
			continue
		}
		ci := network.ContainerInspect{Name: info.Name, EndpointID: info.ID}
		if info.MAC != nil {
			ci.MacAddress = info.MAC.String()
		}
		if info.IPv4.IsValid() {
			ci.IPv4Address = info.IPv4.String()
		}
		if info.IPv6.IsValid() {
			ci.IPv6Address = info.IPv6.String()
		}
		in.Containers[info.SandboxID] = ci
	}
	return in
}
