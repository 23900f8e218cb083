package network

import (
	"maps"
	"time"
)

// Inspect is a network's state in the shape of `docker network inspect`, so JSON encoding
// and Go templates written for Docker (`{{range .Containers}}{{.IPv4Address}}{{end}}`) work.
type Inspect struct {
	Name       string
	ID         string `json:"Id"`
	Created    time.Time
	Scope      string
	Driver     string
	EnableIPv6 bool
	IPAM       IPAMInspect
	Internal   bool
	Attachable bool
	// Containers maps a joined sandbox's ID to its endpoint on this network.
	Containers map[string]ContainerInspect
	Options    map[string]string
	Labels     map[string]string
}

// IPAMInspect is the IPAM part of Inspect.
type IPAMInspect struct {
	Driver  string
	Options map[string]string
	Config  []IPAMConfigInspect
}

// IPAMConfigInspect is one subnet in Inspect.
type IPAMConfigInspect struct {
	Subnet             string
	IPRange            string            `json:",omitempty"`
	Gateway            string            `json:",omitempty"`
	AuxiliaryAddresses map[string]string `json:",omitempty"`
}

// ContainerInspect is one joined endpoint in Inspect.
type ContainerInspect struct {
	Name        string
	EndpointID  string
	MacAddress  string
	IPv4Address string
	IPv6Address string
}

// Inspect implements Network.
func (n *Net) Inspect() Inspect {
	r := n.Record()
	in := Inspect{
		Name: r.Name, ID: r.ID, Created: r.Created, Scope: r.Scope.String(), Driver: r.Driver,
		EnableIPv6: r.EnableIPv6, Internal: r.Internal, Attachable: r.Attachable,
		IPAM:       IPAMInspect{Driver: "default", Options: map[string]string{}, Config: []IPAMConfigInspect{}},
		Containers: map[string]ContainerInspect{},
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
		ic := IPAMConfigInspect{Subnet: c.Subnet.String()}
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
		ci := ContainerInspect{Name: info.Name, EndpointID: info.ID}
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
