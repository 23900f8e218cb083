package network

import (
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
