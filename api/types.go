package api

import (
	"time"

	"github.com/cnmkit/cnm/drivers"
)

// Version is the path prefix of every versioned route ("/v1/networks").
const Version = "v1"

// MaxBodyBytes is the largest request body the server reads; a larger one is refused with
// 400 (invalid parameter).
const MaxBodyBytes = 1 << 20

// NetworkCreate is the body of POST /v1/networks: docker network create's flags.
type NetworkCreate struct {
	Name string
	// Driver is the driver's name; "" means "bridge".
	Driver string `json:",omitempty"`
	// IPAM holds the subnets (--subnet, --ip-range, --gateway, --aux-address) and the IPAM
	// driver (--ipam-driver). Nil lets IPAM pick a subnet.
	IPAM       *IPAM `json:",omitempty"`
	EnableIPv6 bool  `json:",omitempty"`
	Internal   bool  `json:",omitempty"`
	Attachable bool  `json:",omitempty"`
	// Options are the driver's options (-o K=V), parsed by the driver (its OptionParser); an
	// unknown key is refused by it.
	Options map[string]string `json:",omitempty"`
	// Labels are the user's metadata (--label K=V).
	Labels map[string]string `json:",omitempty"`
}

// NetworkCreated is the response to POST /v1/networks.
type NetworkCreated struct {
	ID   string `json:"Id"`
	Name string
}

// IPAM is a network's addressing, in requests and in [NetworkInspect].
type IPAM struct {
	// Driver is the IPAM driver's name; "" (in a request) means "default".
	Driver  string
	Options map[string]string
	Config  []IPAMConfig
}

// IPAMConfig is one subnet of a network, written as Docker writes it: CIDR prefixes and
// addresses as text.
type IPAMConfig struct {
	Subnet             string
	IPRange            string            `json:",omitempty"`
	Gateway            string            `json:",omitempty"`
	AuxiliaryAddresses map[string]string `json:",omitempty"`
}

// NetworkInspect is a network as `docker network inspect` shows it (one element of its
// array).
type NetworkInspect struct {
	Name       string
	ID         string `json:"Id"`
	Created    time.Time
	Scope      string
	Driver     string
	EnableIPv6 bool
	IPAM       IPAM
	Internal   bool
	Attachable bool
	// Containers maps each joined sandbox's ID to its endpoint on the network.
	Containers map[string]NetworkContainer
	// Options are the network's driver settings as Docker labels; the default bridge network
	// lists all of them (com.docker.network.bridge.default_bridge, .enable_icc, ...).
	Options map[string]string
	Labels  map[string]string
}

// NetworkContainer is one joined endpoint in [NetworkInspect].
type NetworkContainer struct {
	Name        string
	EndpointID  string
	MacAddress  string
	IPv4Address string // CIDR: "172.17.0.2/16"
	IPv6Address string
}

// Connect is the body of POST /v1/networks/{name}/connect (docker network connect).
type Connect struct {
	Sandbox string
	// IPv4Address and IPv6Address ask for static addresses (--ip, --ip6).
	IPv4Address string   `json:",omitempty"`
	IPv6Address string   `json:",omitempty"`
	Aliases     []string `json:",omitempty"`
	// IfName is the endpoint's interface name in the sandbox (endpoint.WithIfName); "" lets
	// the sandbox pick the next ethN.
	IfName string `json:",omitempty"`
}

// Disconnect is the body of POST /v1/networks/{name}/disconnect.
type Disconnect struct {
	Sandbox string
	// Force makes disconnecting a sandbox that is not connected succeed (docker network
	// disconnect -f).
	Force bool `json:",omitempty"`
}

// PruneReport is the response to POST /v1/networks/prune: the networks removed, by name.
type PruneReport struct {
	NetworksDeleted []string
}

// PortBinding is a published port (a -p spec, parsed by [ParsePortSpec]).
type PortBinding = drivers.PortBinding

// SandboxCreate is the body of POST /v1/sandboxes: a container's network part of docker
// run.
type SandboxCreate struct {
	Name string
	// Network is --net: a network's name or ID, "none", "host" or "container:NAME"; "" means
	// the default "bridge" network.
	Network string `json:",omitempty"`
	// Ports are -p's bindings; PublishAll (-P) publishes each port of Expose on an ephemeral
	// host port.
	Ports      []PortBinding `json:",omitempty"`
	PublishAll bool          `json:",omitempty"`
	Expose     []PortBinding `json:",omitempty"`
	Hostname   string        `json:",omitempty"`
	Domainname string        `json:",omitempty"`
	// DNS are nameserver addresses (--dns); DNSSearch and DNSOptions the search domains and
	// options of resolv.conf.
	DNS        []string `json:",omitempty"`
	DNSSearch  []string `json:",omitempty"`
	DNSOptions []string `json:",omitempty"`
	// ExtraHosts are --add-host entries, "name:addr".
	ExtraHosts []string `json:",omitempty"`
	// Aliases are the sandbox's extra names on the network it is created on (--network-alias).
	Aliases []string `json:",omitempty"`
	// Netns is the path of a network namespace the caller owns, which the sandbox uses
	// instead of making one (cnm.WithNetns: a container runtime's, given to a CNI plugin);
	// deleting the sandbox removes its interfaces from it and leaves the namespace. Only with
	// a network (not host or container:).
	Netns string `json:",omitempty"`
	// IfName is the interface name in the sandbox of its endpoint on Network
	// (endpoint.WithIfName); "" means the next ethN. Only with a network.
	IfName string `json:",omitempty"`
}

// SandboxInspect is a sandbox with the network part of `docker container inspect`, so that
// `{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}` works unchanged.
type SandboxInspect struct {
	ID      string `json:"Id"`
	Name    string
	Created time.Time
	// Mode is how the sandbox has its namespace: "namespace" (its own), "host" or
	// "container" (Share's).
	Mode  string
	Share string `json:",omitempty"`
	// Netns is the caller's namespace the sandbox was created on (SandboxCreate.Netns), ""
	// when cnm made the namespace; NetworkSettings.SandboxKey is the same path.
	Netns          string `json:",omitempty"`
	Hostname       string
	Domainname     string `json:",omitempty"`
	HostsPath      string
	ResolvConfPath string
	// NetworkSettings are its networks and published ports.
	NetworkSettings NetworkSettings
}

// NetworkSettings is [SandboxInspect]'s view of the sandbox's networks.
type NetworkSettings struct {
	// SandboxKey is the path of the sandbox's network namespace (what `cnmctl exec` enters).
	SandboxKey string
	// Ports maps "port/proto" (as in the container) to where it is published on the host.
	Ports map[string][]PortMap
	// Networks maps a network's name to the sandbox's endpoint on it.
	Networks map[string]EndpointSettings
}

// PortMap is one host binding of a published port, as Docker writes it.
type PortMap struct {
	HostIP   string `json:"HostIp"`
	HostPort string
}

// EndpointSettings is one network of a sandbox in [NetworkSettings], Docker's shape.
type EndpointSettings struct {
	Aliases             []string
	NetworkID           string
	EndpointID          string
	Gateway             string
	IPAddress           string
	IPPrefixLen         int
	IPv6Gateway         string
	GlobalIPv6Address   string
	GlobalIPv6PrefixLen int
	MacAddress          string
	// IfName is the endpoint's interface in the sandbox ("eth0"), not in Docker's shape.
	IfName string `json:",omitempty"`
}

// Health is the response of GET /health. Status is "ok" when everything the agent uses
// answers, else "degraded" (with status 503); each part says "ok", "none" (not configured)
// or what failed.
type Health struct {
	Status      string
	Store       string
	GlobalStore string
	Gossip      string
	// GossipMembers is how many gossip members are alive, this one included (0 without gossip).
	GossipMembers int `json:",omitempty"`
}

// Event is one line of GET /v1/events: an event of the Controller's stream (package events),
// with its kind as text ("endpoint.joined").
type Event struct {
	Seq        uint64
	Time       time.Time
	Kind       string
	NetworkID  string       `json:",omitempty"`
	Network    string       `json:",omitempty"`
	Remote     bool         `json:",omitempty"`
	EndpointID string       `json:",omitempty"`
	Endpoint   string       `json:",omitempty"`
	IPv4       string       `json:",omitempty"`
	IPv6       string       `json:",omitempty"`
	SandboxID  string       `json:",omitempty"`
	Host       string       `json:",omitempty"`
	Repair     *EventRepair `json:",omitempty"`
	Key        *EventKey    `json:",omitempty"`
	Dropped    uint64       `json:",omitempty"`
}

// EventRepair is what a repaired event reports.
type EventRepair struct{ Object, Action, Reason string }

// EventKey is what a key-rotated event reports: never key material.
type EventKey struct {
	Epoch   uint64
	Phase   string
	Primary string
}
