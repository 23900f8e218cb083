// Package wire holds the JSON messages of Docker's plugin protocol for network drivers
// (/NetworkDriver.*) and IPAM drivers (/IpamDriver.*), and the handshake (/Plugin.Activate),
// as cnm's own Go types. The field names are those of the published protocol (moby's
// libnetwork/drivers/remote/api, libnetwork/ipams/remote/api and pkg/plugins, v28): both
// directions of package [github.com/cnmkit/cnm/drivers/remote] encode and decode them, and
// so do Docker and every existing plugin.
//
// Every request is an HTTP POST of one JSON object to /<Interface>.<Method> (for instance
// /NetworkDriver.CreateNetwork) with the Accept and Content-Type header [MediaType]; the
// answer is one JSON object. Addresses travel as strings: an address with its prefix length
// ("10.0.0.2/24") where the protocol says CIDR, a bare address elsewhere. An error is an
// object with a non-empty Err field (Error for the IPAM driver's successful-status answers),
// usually with a status other than 200.
//
// The package has no behaviour beyond the types and the method names.
package wire

// MediaType is the Content-Type and Accept of the protocol, version 1.2.
const MediaType = "application/vnd.docker.plugins.v1.2+json"

// Interfaces a plugin implements, as listed in [Manifest].Implements.
const (
	NetworkDriver = "NetworkDriver"
	IpamDriver    = "IpamDriver"
)

// Method paths. A request goes to "/" + the constant.
const (
	Activate = "Plugin.Activate"

	NetworkGetCapabilities             = "NetworkDriver.GetCapabilities"
	NetworkCreateNetwork               = "NetworkDriver.CreateNetwork"
	NetworkDeleteNetwork               = "NetworkDriver.DeleteNetwork"
	NetworkAllocateNetwork             = "NetworkDriver.AllocateNetwork"
	NetworkFreeNetwork                 = "NetworkDriver.FreeNetwork"
	NetworkCreateEndpoint              = "NetworkDriver.CreateEndpoint"
	NetworkDeleteEndpoint              = "NetworkDriver.DeleteEndpoint"
	NetworkEndpointOperInfo            = "NetworkDriver.EndpointOperInfo"
	NetworkJoin                        = "NetworkDriver.Join"
	NetworkLeave                       = "NetworkDriver.Leave"
	NetworkDiscoverNew                 = "NetworkDriver.DiscoverNew"
	NetworkDiscoverDelete              = "NetworkDriver.DiscoverDelete"
	NetworkProgramExternalConnectivity = "NetworkDriver.ProgramExternalConnectivity"
	NetworkRevokeExternalConnectivity  = "NetworkDriver.RevokeExternalConnectivity"

	IpamGetCapabilities         = "IpamDriver.GetCapabilities"
	IpamGetDefaultAddressSpaces = "IpamDriver.GetDefaultAddressSpaces"
	IpamRequestPool             = "IpamDriver.RequestPool"
	IpamReleasePool             = "IpamDriver.ReleasePool"
	IpamRequestAddress          = "IpamDriver.RequestAddress"
	IpamReleaseAddress          = "IpamDriver.ReleaseAddress"
)

// Option keys Docker puts in the Options of a CreateNetworkRequest.
const (
	// OptionGeneric holds the driver options (docker network create -o k=v), an object of
	// strings.
	OptionGeneric = "com.docker.network.generic"
	// OptionEnableIPv6 is a boolean: the network has IPv6.
	OptionEnableIPv6 = "com.docker.network.enable_ipv6"
	// OptionInternal is a boolean: the network has no way out.
	OptionInternal = "com.docker.network.internal"
)

// Scopes of [CapabilitiesResponse].
const (
	ScopeLocal  = "local"
	ScopeGlobal = "global"
)

// Route types of [StaticRoute].
const (
	RouteNextHop   = 0 // through NextHop
	RouteConnected = 1 // on-link, no next hop
)

// Response is the error part every network driver answer has.
type Response struct {
	Err string `json:",omitempty"`
}

// Manifest is the answer to /Plugin.Activate.
type Manifest struct {
	Implements []string
}

// CapabilitiesResponse is the answer to /NetworkDriver.GetCapabilities.
type CapabilitiesResponse struct {
	Response
	Scope             string
	ConnectivityScope string `json:",omitempty"`
	GwAllocChecker    bool   `json:",omitempty"`
}

// IPAMData is one subnet of a network: Pool and Gateway and each auxiliary address are
// CIDR strings ("10.0.0.1/24").
type IPAMData struct {
	AddressSpace string
	Pool         string            `json:",omitempty"`
	Gateway      string            `json:",omitempty"`
	AuxAddresses map[string]string `json:",omitempty"`
}

// CreateNetworkRequest is the body of /NetworkDriver.CreateNetwork.
type CreateNetworkRequest struct {
	NetworkID string
	Options   map[string]any
	IPv4Data  []IPAMData
	IPv6Data  []IPAMData
}

// DeleteNetworkRequest is the body of /NetworkDriver.DeleteNetwork.
type DeleteNetworkRequest struct {
	NetworkID string
}

// EndpointInterface is an endpoint's interface: Address and AddressIPv6 are CIDR strings,
// MacAddress is "aa:bb:cc:dd:ee:ff". Empty fields are unset.
type EndpointInterface struct {
	Address     string
	AddressIPv6 string
	MacAddress  string
}

// CreateEndpointRequest is the body of /NetworkDriver.CreateEndpoint.
type CreateEndpointRequest struct {
	NetworkID  string
	EndpointID string
	Interface  *EndpointInterface
	Options    map[string]any
}

// CreateEndpointResponse is the answer to /NetworkDriver.CreateEndpoint: Interface holds only
// what the driver chose itself (fields the request left empty), or is nil.
type CreateEndpointResponse struct {
	Response
	Interface *EndpointInterface `json:",omitempty"`
}

// DeleteEndpointRequest is the body of /NetworkDriver.DeleteEndpoint.
type DeleteEndpointRequest struct {
	NetworkID  string
	EndpointID string
}

// EndpointInfoRequest is the body of /NetworkDriver.EndpointOperInfo.
type EndpointInfoRequest struct {
	NetworkID  string
	EndpointID string
}

// EndpointInfoResponse is the answer to /NetworkDriver.EndpointOperInfo.
type EndpointInfoResponse struct {
	Response
	Value map[string]any
}

// JoinRequest is the body of /NetworkDriver.Join. SandboxKey is the path of the sandbox's
// network namespace.
type JoinRequest struct {
	NetworkID  string
	EndpointID string
	SandboxKey string
	Options    map[string]any
}

// InterfaceName names the interface a Join made in the host namespace (SrcName), which the
// caller moves into the sandbox and renames to DstPrefix followed by the next free number.
// DstName is not used by Docker's client.
type InterfaceName struct {
	SrcName   string
	DstName   string `json:",omitempty"`
	DstPrefix string
}

// StaticRoute is a route the sandbox adds: Destination is a CIDR string, RouteType is
// [RouteNextHop] or [RouteConnected], NextHop a bare address.
type StaticRoute struct {
	Destination string
	RouteType   int
	NextHop     string `json:",omitempty"`
}

// JoinResponse is the answer to /NetworkDriver.Join. Gateway and GatewayIPv6 are bare
// addresses; empty for none.
type JoinResponse struct {
	Response
	InterfaceName         *InterfaceName `json:",omitempty"`
	Gateway               string         `json:",omitempty"`
	GatewayIPv6           string         `json:",omitempty"`
	StaticRoutes          []StaticRoute  `json:",omitempty"`
	DisableGatewayService bool           `json:",omitempty"`
}

// LeaveRequest is the body of /NetworkDriver.Leave.
type LeaveRequest struct {
	NetworkID  string
	EndpointID string
}

// ExternalConnectivityRequest is the body of /NetworkDriver.ProgramExternalConnectivity and
// (without Options) /NetworkDriver.RevokeExternalConnectivity.
type ExternalConnectivityRequest struct {
	NetworkID  string
	EndpointID string
	Options    map[string]any `json:",omitempty"`
}

// DiscoveryNotification is the body of /NetworkDriver.DiscoverNew and .DiscoverDelete.
// DiscoveryType 1 is a node (DiscoveryData {"Address": ..., "BindAddress": ..., "Self": bool}).
type DiscoveryNotification struct {
	DiscoveryType int
	DiscoveryData any
}

// IPAM messages. Their answers carry an error in Error, not Err, when the status is 200; a
// status other than 200 carries it in Err as everywhere else.

// IPAMResponse is the error part of every IPAM driver answer.
type IPAMResponse struct {
	Error string `json:",omitempty"`
}

// IPAMCapabilitiesResponse is the answer to /IpamDriver.GetCapabilities.
type IPAMCapabilitiesResponse struct {
	IPAMResponse
	RequiresMACAddress    bool
	RequiresRequestReplay bool
}

// AddressSpacesResponse is the answer to /IpamDriver.GetDefaultAddressSpaces.
type AddressSpacesResponse struct {
	IPAMResponse
	LocalDefaultAddressSpace  string
	GlobalDefaultAddressSpace string
}

// RequestPoolRequest is the body of /IpamDriver.RequestPool: Pool and SubPool are CIDR
// strings, empty to let the driver choose (V6 then picks the family).
type RequestPoolRequest struct {
	AddressSpace string
	Pool         string
	SubPool      string
	Options      map[string]string
	V6           bool
}

// RequestPoolResponse is the answer to /IpamDriver.RequestPool; Pool is a CIDR string.
type RequestPoolResponse struct {
	IPAMResponse
	PoolID string
	Pool   string
	Data   map[string]string
}

// ReleasePoolRequest is the body of /IpamDriver.ReleasePool.
type ReleasePoolRequest struct {
	PoolID string
}

// RequestAddressRequest is the body of /IpamDriver.RequestAddress: Address is a bare address,
// empty for any.
type RequestAddressRequest struct {
	PoolID  string
	Address string
	Options map[string]string
}

// RequestAddressResponse is the answer to /IpamDriver.RequestAddress; Address is a CIDR
// string with the pool's prefix length.
type RequestAddressResponse struct {
	IPAMResponse
	Address string
	Data    map[string]string
}

// ReleaseAddressRequest is the body of /IpamDriver.ReleaseAddress: Address is a bare address.
type ReleaseAddressRequest struct {
	PoolID  string
	Address string
}

// Option keys of RequestAddressRequest.Options that Docker sends.
const (
	// OptionRequestAddressType, with the value [RequestAddressTypeGateway], marks the request
	// of a network's gateway address.
	OptionRequestAddressType  = "RequestAddressType"
	RequestAddressTypeGateway = "com.docker.network.gateway"
)

// ErrorResponse is the body of an answer with a status other than 200 and of an unknown
// method (status 404).
type ErrorResponse struct {
	Err string
}

// ErrMsg returns the error the answer carries, "" for none.
func (r Response) ErrMsg() string { return r.Err }

// ErrMsg returns the error the answer carries, "" for none.
func (r IPAMResponse) ErrMsg() string { return r.Error }
