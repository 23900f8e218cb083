// Package drivers is the contract between the cnm Controller and network drivers.
//
// A driver is a Go value that implements [Driver]: seven methods, each taking a context and a
// request struct. Extra abilities are optional interfaces ([OptionParser], [Reconciler],
// [NetworkAllocator], [GossipUser], [Closer]) that the [Registry] discovers once, at registration, with a
// type assertion, or fields of [Capabilities] (Ports). The
// built-in drivers (bridge, host, null, and later macvlan and overlay) use nothing that a
// third-party driver could not: this package's types, typed errors ([NotFoundError], ...,
// [Invalid]) and capabilities, and package netns for namespace handles. A custom driver
// registers with the Controller exactly like them.
//
// # Lifecycle
//
// The Controller calls CreateNetwork once per network and again, with the same request, when it
// restarts (so CreateNetwork must converge: re-creating something identical returns nil). A
// global-scope network's CreateNetwork runs on every host that uses the network, and its
// DeleteNetwork on every host that knows it (with Forget set on all but the deleting host);
// what must exist once per cluster (a VNI) comes from [NetworkAllocator], called exactly once
// per network by the host that creates or deletes it.
// CreateEndpoint reserves an endpoint (its addresses are already allocated by IPAM); Join plumbs
// it into a sandbox's network namespace; Leave undoes Join; DeleteEndpoint and DeleteNetwork
// undo the rest. Deleting something that is already gone returns nil.
//
// A driver is called concurrently for different networks and endpoints, and must be safe for
// concurrent use. The Controller never calls Join and Leave for the same endpoint at once.
package drivers

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"sort"
	"sync"

	"github.com/cnmkit/cnm/internal/errclass"
)

// Error classes for drivers to wrap, the same values as cnm's: a third-party driver returns
// fmt.Errorf("mydriver: network %s: %w", id, drivers.ErrNotFound) and callers of the
// Controller match it with errors.Is(err, cnm.ErrNotFound).
var (
	// ErrNotSupported: an operation or option the driver does not have, or a missing kernel feature.
	ErrNotSupported = errclass.ErrNotSupported
	// ErrNotFound: an unknown network or endpoint.
	ErrNotFound = errclass.ErrNotFound
	// ErrInvalidParameter: a bad option or request field.
	ErrInvalidParameter = errclass.ErrInvalidParameter
	// ErrConflict: the request conflicts with what exists (a name taken by a foreign device).
	ErrConflict = errclass.ErrConflict
	// ErrAlreadyExists: the object exists already.
	ErrAlreadyExists = errclass.ErrAlreadyExists
	// ErrUnavailable: a service the driver needs cannot be used now.
	ErrUnavailable = errclass.ErrUnavailable
)

// Typed errors, for errors.As, the same types the Controller returns: each names the object or
// field it is about and matches its class (ErrNotFound, ...) with errors.Is.
type (
	NotFoundError         = errclass.NotFoundError
	AlreadyExistsError    = errclass.AlreadyExistsError
	InvalidParameterError = errclass.InvalidParameterError
	ConflictError         = errclass.ConflictError
	UnavailableError      = errclass.UnavailableError
	NotSupportedError     = errclass.NotSupportedError
)

// Invalid returns an *InvalidParameterError: field has the bad value, for reason.
func Invalid(field, value, reason string) error { return errclass.Invalid(field, value, reason) }

// LinuxOnly returns the *NotSupportedError of a feature that needs Linux, for a driver's stubs
// on other systems.
func LinuxOnly(what string) error { return errclass.LinuxOnly(what) }

// MTU bounds that CheckMTU enforces.
const (
	MinMTU = 68    // the IPv4 minimum
	MaxMTU = 65535 // the largest a Linux link takes
)

// CheckMTU returns an *InvalidParameterError naming field and value when mtu is outside
// MinMTU..MaxMTU.
func CheckMTU(field, value string, mtu int) error {
	if mtu < MinMTU || mtu > MaxMTU {
		return Invalid(field, value, "want 68 to 65535")
	}
	return nil
}

// CheckIfName checks an interface name as the kernel does (dev_valid_name: 1 to 15 bytes, not
// "." or "..", no '/', ':' or white space), and also refuses control characters. It returns an
// *InvalidParameterError naming field.
func CheckIfName(field, name string) error {
	switch {
	case name == "":
		return Invalid(field, name, "empty interface name")
	case len(name) > 15:
		return Invalid(field, name, "interface name longer than 15 bytes")
	case name == "." || name == "..":
		return Invalid(field, name, "not an interface name")
	}
	for i := 0; i < len(name); i++ {
		switch c := name[i]; {
		case c == '/' || c == ':':
			return Invalid(field, name, "interface name with '/' or ':'")
		case c == ' ' || c == 0x7f || c < 0x20:
			return Invalid(field, name, "interface name with white space or a control character")
		}
	}
	return nil
}

// NetworkID identifies a network: 64 lowercase hex characters.
type NetworkID string

// Short returns the first 12 characters of the ID, as docker prints it.
func (id NetworkID) Short() string { return short(string(id)) }

// EndpointID identifies an endpoint: 64 lowercase hex characters.
type EndpointID string

// Short returns the first 12 characters of the ID.
func (id EndpointID) Short() string { return short(string(id)) }

func short(s string) string {
	if len(s) > 12 {
		return s[:12]
	}
	return s
}

// Scope says where a driver's state lives and how far its networks reach.
type Scope int

const (
	// LocalScope: one host; state in the local store.
	LocalScope Scope = iota + 1
	// GlobalScope: all hosts; state in the global store (etcd or Consul).
	GlobalScope
)

// String returns "local" or "global".
func (s Scope) String() string {
	switch s {
	case LocalScope:
		return "local"
	case GlobalScope:
		return "global"
	}
	return fmt.Sprintf("scope(%d)", int(s))
}

// MarshalText encodes the scope as its name.
func (s Scope) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText decodes "local" or "global".
func (s *Scope) UnmarshalText(b []byte) error {
	switch string(b) {
	case "local":
		*s = LocalScope
	case "global":
		*s = GlobalScope
	default:
		return errclass.Invalid("scope", string(b), `want "local" or "global"`)
	}
	return nil
}

// SandboxKind says which sandboxes a driver's endpoints can join.
type SandboxKind int

const (
	// NamespaceSandbox: a sandbox with its own network namespace (the usual case).
	NamespaceSandbox SandboxKind = iota
	// HostSandbox: only a sandbox that is the host's own namespace (the host driver).
	HostSandbox
	// IsolatedSandbox: a namespace with loopback only, joined to no other network (the null
	// driver, "none").
	IsolatedSandbox
)

// String returns "namespace", "host" or "isolated".
func (k SandboxKind) String() string {
	switch k {
	case NamespaceSandbox:
		return "namespace"
	case HostSandbox:
		return "host"
	case IsolatedSandbox:
		return "isolated"
	}
	return fmt.Sprintf("sandboxkind(%d)", int(k))
}

// Capabilities describes a driver.
type Capabilities struct {
	// DataScope is where the driver's networks are stored. Zero means LocalScope.
	DataScope Scope
	// ConnectivityScope is how far its networks reach. Zero means DataScope.
	ConnectivityScope Scope
	// Sandbox is the kind of sandbox its endpoints join.
	Sandbox SandboxKind
	// NoIPAM reports whether the driver's networks take no subnet and its endpoints no address
	// (host, null).
	NoIPAM bool
	// OnLink reports whether the driver's networks are subnets of the host's own links (macvlan:
	// containers on the LAN): their subnets overlap the host's routes by design, so the
	// Controller does not refuse an explicit subnet for overlapping one.
	OnLink bool
	// Ports reports whether the driver publishes ports on the host (CreateEndpointRequest.Ports).
	// The Controller refuses an endpoint with ports on a network of a driver without it, with an
	// error matching ErrNotSupported, before calling the driver.
	Ports bool
	// GatewayPorts reports whether the published ports of the driver's endpoints go through
	// the Controller's gateway network (cnm.GatewayNetwork, Docker's docker_gwbridge) rather
	// than through the driver: its joins ask for a gateway (JoinResult.NeedGateway) on every
	// network that is not internal, and the Controller publishes an endpoint's ports on its
	// sandbox's endpoint on the gateway network (the overlay). Ports is false for such a
	// driver, whose CreateEndpointRequest.Ports is always empty.
	GatewayPorts bool
}

// NetworkOptions is a driver's typed network configuration, such as bridge.NetworkOptions.
type NetworkOptions interface {
	// DriverType returns the name of the driver type the options are for ("bridge"); the
	// Controller refuses options given to a network of another driver.
	DriverType() string
	// Labels returns the options as string labels (com.docker.network.* keys), the form shown
	// by inspect and kept in the store; the driver's ParseNetworkOptions reads them back.
	Labels() map[string]string
}

// IPAMData is one subnet of a network, with its gateway and reserved addresses.
type IPAMData struct {
	Subnet       netip.Prefix          // masked
	Range        netip.Prefix          // zero when the whole subnet is used
	Gateway      netip.Addr            // zero when the network has no gateway
	AuxAddresses map[string]netip.Addr // reserved by name; may be nil
}

// CreateNetworkRequest asks a driver to create (or, on restart, verify) a network.
type CreateNetworkRequest struct {
	NetworkID  NetworkID
	Name       string
	Options    NetworkOptions // nil: driver defaults
	IPv4       []IPAMData     // empty for NoIPAM drivers
	IPv6       []IPAMData
	Internal   bool // no route outside the network
	EnableIPv6 bool
	// Allocation is what the driver's AllocateNetwork returned when the network was created,
	// as kept in the network's record; nil for drivers without a [NetworkAllocator]. Every
	// host gets the same.
	Allocation map[string]string
}

// DeleteNetworkRequest asks a driver to delete a network's state on this host.
type DeleteNetworkRequest struct {
	NetworkID NetworkID
	// Forget reports whether the network goes from this host only: another host deleted the
	// global network (and frees its cluster-wide allocation with FreeNetwork), so the driver
	// removes what it made here and must not touch shared state. False on the host that
	// deletes the network, and for local networks.
	Forget bool
}

// AllocateNetworkRequest asks a [NetworkAllocator] for a new network's cluster-wide values.
type AllocateNetworkRequest struct {
	NetworkID NetworkID
	Name      string
	Options   NetworkOptions // nil: driver defaults
	IPv4      []IPAMData
	IPv6      []IPAMData
}

// FreeNetworkRequest asks a [NetworkAllocator] to free a network's allocation.
type FreeNetworkRequest struct {
	NetworkID NetworkID
	// Allocation is what AllocateNetwork returned; nil when the Controller frees an orphan
	// (an allocation listed by Allocated whose network has no record): the driver finds it by
	// NetworkID.
	Allocation map[string]string
}

// CreateEndpointRequest asks a driver to reserve an endpoint. Addresses come from IPAM; the
// driver must not change them.
type CreateEndpointRequest struct {
	NetworkID  NetworkID
	EndpointID EndpointID
	MAC        net.HardwareAddr // nil: the driver may choose one and return it
	IPv4       netip.Prefix     // address with the subnet's length; zero for none
	IPv6       netip.Prefix
	// Ports are the ports to publish on the host for the endpoint (docker run -p and -P);
	// always empty for a driver whose Capabilities.Ports is false. On a restart the Controller passes the ports as the driver bound them
	// (CreateEndpointResult.Ports), and the driver must bind the same again. The slice is the
	// caller's; the driver must not keep it.
	Ports []PortBinding
}

// CreateEndpointResult is what a driver reports back from CreateEndpoint.
type CreateEndpointResult struct {
	MAC net.HardwareAddr // the MAC the endpoint uses; nil to keep the requested one
	// Ports are the ports as bound, one single port each (no ranges), with ephemeral host
	// ports chosen: what the endpoint's record keeps and inspect shows. Empty when the request
	// had none.
	Ports []PortBinding
}

// PortBinding is one published port, or a range of them: traffic to HostIP:HostPort on the
// host goes to ContainerPort on the endpoint's address.
type PortBinding struct {
	// Proto is "tcp" or "udp". "" means "tcp".
	Proto string `json:"proto,omitempty"`
	// HostIP is the host address to bind to. The zero Addr means every address of the host
	// (0.0.0.0), or the network's default (bridge's host_binding_ipv4).
	HostIP netip.Addr `json:"host_ip,omitzero"`
	// HostPort is the host port, 1 to 65535. 0 asks the driver for an ephemeral port.
	// HostPortEnd, when larger than HostPort, makes a range: with a container range of the
	// same length, port i maps to port i; with one container port, the driver binds one free
	// port of the range. 0 means no range.
	HostPort    uint16 `json:"host_port,omitempty"`
	HostPortEnd uint16 `json:"host_port_end,omitempty"`
	// ContainerPort is the port in the container, 1 to 65535. ContainerPortEnd, when larger,
	// makes a range; 0 means none.
	ContainerPort    uint16 `json:"container_port"`
	ContainerPortEnd uint16 `json:"container_port_end,omitempty"`
}

// String renders b the way docker run -p takes it: "[hostIP:][hostPort[-end]:]containerPort[-end]/proto".
func (b PortBinding) String() string {
	rng := func(p, end uint16) string {
		if end > p {
			return fmt.Sprintf("%d-%d", p, end)
		}
		return fmt.Sprint(p)
	}
	s := rng(b.ContainerPort, b.ContainerPortEnd) + "/" + b.proto()
	host := ""
	if b.HostPort != 0 {
		host = rng(b.HostPort, b.HostPortEnd)
	}
	switch {
	case b.HostIP.Is6():
		return "[" + b.HostIP.String() + "]:" + host + ":" + s
	case b.HostIP.IsValid():
		return b.HostIP.String() + ":" + host + ":" + s
	case host != "":
		return host + ":" + s
	}
	return s
}

func (b PortBinding) proto() string {
	if b.Proto == "" {
		return "tcp"
	}
	return b.Proto
}

// Validate checks b: a known protocol, a container port, ranges the right way round and, when
// both are ranges, of the same length. It returns an error matching ErrInvalidParameter that
// names b.
func (b PortBinding) Validate() error {
	bad := func(reason string) error { return errclass.Invalid("port binding", b.String(), reason) }
	switch {
	case b.Proto != "" && b.Proto != "tcp" && b.Proto != "udp":
		return errclass.Invalid("port protocol", b.Proto, `want "tcp" or "udp"`)
	case b.ContainerPort == 0:
		return bad("container port 0")
	case b.ContainerPortEnd != 0 && b.ContainerPortEnd < b.ContainerPort:
		return bad("container port range ends before it starts")
	case b.HostPortEnd != 0 && b.HostPortEnd < b.HostPort:
		return bad("host port range ends before it starts")
	case b.HostPortEnd != 0 && b.HostPort == 0:
		return bad("host port range from 0")
	case b.HostIP.IsValid() && (b.HostIP.Zone() != "" || b.HostIP.IsMulticast()):
		return bad("host address not a unicast address")
	}
	if c := b.ContainerPortEnd; c > b.ContainerPort {
		h := max(b.HostPortEnd, b.HostPort)
		if b.HostPort != 0 && h-b.HostPort != c-b.ContainerPort {
			return bad(fmt.Sprintf("host range of %d ports for a container range of %d", h-b.HostPort+1, c-b.ContainerPort+1))
		}
	}
	return nil
}

// DeleteEndpointRequest asks a driver to delete an endpoint.
type DeleteEndpointRequest struct {
	NetworkID  NetworkID
	EndpointID EndpointID
}

// JoinRequest asks a driver to connect an endpoint to a sandbox.
type JoinRequest struct {
	NetworkID  NetworkID
	EndpointID EndpointID
	// SandboxID is the sandbox's ID (the container's), Hostname its host name (--hostname,
	// its ID when none was given); Endpoint is the endpoint's name.
	SandboxID string
	Hostname  string
	Endpoint  string
	// Aliases are the endpoint's names on the network (docker network connect --alias),
	// besides the sandbox's; nil for none. The slice is the driver's to keep.
	Aliases []string
	// SandboxKey is the path of the sandbox's network namespace (a bind mount, or /proc/.../ns/net).
	SandboxKey string
	// NetnsFD is an open descriptor of that namespace, valid for the duration of the call: a
	// driver creates the container end of its link directly in it (netlink IFLA_NET_NS_FD).
	NetnsFD int
	// IfName is the interface name the endpoint gets inside the sandbox: the one the endpoint
	// asked for (endpoint.WithIfName), else the next free ethN.
	IfName string
	MAC    net.HardwareAddr
	IPv4   netip.Prefix
	IPv6   netip.Prefix
}

// JoinResult tells the sandbox how to finish plumbing the endpoint.
type JoinResult struct {
	// InterfaceInSandbox reports whether the driver created IfName inside the sandbox itself,
	// with the requested MAC and its MTU set (the fast path). The sandbox then only adds
	// addresses and routes and sets it up.
	InterfaceInSandbox bool
	// SrcName, when InterfaceInSandbox is false and NoInterface is false, names a link in the
	// host namespace that the sandbox moves in, renames to IfName and configures.
	SrcName string
	// NoInterface reports whether there is nothing to plumb (host and null drivers).
	NoInterface bool
	// Gateway and GatewayIPv6 are the default gateways the endpoint offers; zero for none.
	Gateway     netip.Addr
	GatewayIPv6 netip.Addr
	// StaticRoutes are extra routes through the interface.
	StaticRoutes []Route
	// NeedGateway asks the Controller for a way out of the sandbox that the network does not
	// give (an overlay network reaches only its own endpoints): the sandbox is connected to a
	// per-host NAT bridge network (cnm.GatewayNetwork, Docker's docker_gwbridge), which gives
	// it its default route, and disconnected from it with the last endpoint that asked.
	NeedGateway bool
}

// Route is a route the sandbox adds through an endpoint's interface. A zero NextHop makes it
// a connected (on-link) route.
type Route struct {
	Destination netip.Prefix
	NextHop     netip.Addr
}

// LeaveRequest asks a driver to disconnect an endpoint from a sandbox.
type LeaveRequest struct {
	NetworkID  NetworkID
	EndpointID EndpointID
	SandboxKey string
	IfName     string
	// SandboxGone reports whether the sandbox's namespace has been removed already, taking the
	// container end of the link with it: the driver must not wait on deleting links the kernel
	// removes by itself.
	SandboxGone bool
}

// Driver is the interface every network driver implements, the null driver included.
type Driver interface {
	// Capabilities describes the driver. It is called once, at registration.
	Capabilities() Capabilities
	// CreateNetwork creates the network's kernel state, or verifies and adopts it when it
	// exists and matches (restart). A mismatch is an error.
	CreateNetwork(ctx context.Context, req CreateNetworkRequest) error
	// DeleteNetwork removes the network's kernel state. A missing network returns nil.
	DeleteNetwork(ctx context.Context, req DeleteNetworkRequest) error
	// CreateEndpoint reserves an endpoint.
	CreateEndpoint(ctx context.Context, req CreateEndpointRequest) (CreateEndpointResult, error)
	// DeleteEndpoint releases an endpoint. A missing endpoint returns nil.
	DeleteEndpoint(ctx context.Context, req DeleteEndpointRequest) error
	// Join connects an endpoint to a sandbox. On error nothing it made is left behind.
	Join(ctx context.Context, req JoinRequest) (JoinResult, error)
	// Leave disconnects an endpoint from a sandbox. Leaving twice returns nil.
	Leave(ctx context.Context, req LeaveRequest) error
}

// OptionParser is implemented by drivers that take network options.
type OptionParser interface {
	// ParseNetworkOptions parses string labels (com.docker.network.* keys) into the driver's
	// typed options. Unknown keys and bad values are refused with an error naming them that
	// matches cnm.ErrInvalidParameter.
	ParseNetworkOptions(labels map[string]string) (NetworkOptions, error)
}

// Reconciler is implemented by drivers that can find kernel state left behind by a crash.
type Reconciler interface {
	// Reconcile removes (or adopts) what the driver finds in the kernel that it made and that
	// belongs to none of the live networks and endpoints, and reports each repair. It is called once on
	// Controller start, after every live network was re-created with CreateNetwork.
	Reconcile(ctx context.Context, live LiveState) ([]Repair, error)
}

// LiveState lists the live networks and joined endpoints of every driver of the Controller:
// a driver must keep whatever kernel object carries one of these IDs, even if another driver
// (another instance of the same type, say) made it.
type LiveState struct {
	Networks  []NetworkID  // every network the Controller holds
	Endpoints []EndpointID // every endpoint joined to a live sandbox
}

// Repair is one thing a reconciliation fixed.
type Repair struct {
	Object string // "link br-1a2b3c4d5e6f", "netns /run/cnm/netns/db", "address 10.0.0.7"
	Action string // "removed", "adopted", "released", "recreated"
	Reason string // "no network record"
}

// String renders the repair as one line.
func (r Repair) String() string { return fmt.Sprintf("%s %s: %s", r.Action, r.Object, r.Reason) }

// NetworkAllocator is implemented by drivers whose networks hold a value that must be unique
// in the cluster (the overlay's VNI), or in the host for a local driver. The Controller calls
// AllocateNetwork exactly once per network, on the host that creates it, after IPAM and before
// CreateNetwork; it keeps the result in the network's record, where every host's
// CreateNetworkRequest.Allocation finds it, and shows it among the network's options. It calls
// FreeNetwork exactly once, on the host that deletes the network, after DeleteNetwork (and on
// any failed create after AllocateNetwork). A crash can still orphan an allocation: for
// global-scope drivers the Controller's sweep lists Allocated and frees, after a grace period,
// each network ID that has no record.
type NetworkAllocator interface {
	// AllocateNetwork reserves the network's values and returns them as string labels
	// (com.docker.network.driver.* keys). A bad option fails with ErrInvalidParameter, an
	// exhausted range with ErrUnavailable.
	AllocateNetwork(ctx context.Context, req AllocateNetworkRequest) (map[string]string, error)
	// FreeNetwork releases what AllocateNetwork reserved for the network. Freeing what is not
	// allocated returns nil.
	FreeNetwork(ctx context.Context, req FreeNetworkRequest) error
	// Allocated lists the networks that hold an allocation.
	Allocated(ctx context.Context) ([]NetworkID, error)
}

// EndpointRestorer is implemented by drivers that keep state of a joined endpoint outside the
// kernel objects a restart leaves in place (the overlay publishes its endpoints in the gossip
// plane). On start, for each endpoint the Controller restores joined to a sandbox whose
// namespace and interface are still there, it calls RestoreEndpoint after CreateEndpoint, with
// the request Join had: the driver adopts what it made then, and must not create the
// interface again. An error is reported as a repair; the endpoint stays.
type EndpointRestorer interface {
	RestoreEndpoint(ctx context.Context, req JoinRequest) error
}

// HostSideJoiner is implemented by drivers that can join an endpoint without entering the
// sandbox's namespace, for a caller that moves the interface in itself: Docker, through the
// plugin protocol's Join (its SrcName and DstPrefix), when cnm serves a driver as a Docker
// plugin. The Controller never calls it; its own sandboxes take Join's fast path.
type HostSideJoiner interface {
	// JoinHostSide is Join with the sandbox end of the link left in the host namespace, named
	// req.IfName (a name unique in the host, chosen by the caller), with req.MAC and the
	// network's MTU, and down. req.SandboxKey and req.NetnsFD are not used. The result has
	// InterfaceInSandbox false and SrcName req.IfName; the caller moves the link into the
	// sandbox, renames it and configures it. Leave undoes it, whether or not the link was
	// moved. On error nothing it made is left behind.
	JoinHostSide(ctx context.Context, req JoinRequest) (JoinResult, error)
}

// Closer is implemented by drivers that hold resources; the Controller calls Close when it closes.
type Closer interface {
	Close() error
}

// Entry is a registered driver with the capabilities found at registration.
type Entry struct {
	Name       string
	Driver     Driver
	Caps       Capabilities
	Parser     OptionParser     // nil when the driver takes no options
	Reconciler Reconciler       // nil when it has none
	Allocator  NetworkAllocator // nil when it has none
	GossipUser GossipUser       // nil when it needs no gossip plane
	Restorer   EndpointRestorer // nil when a restart needs nothing of it for joined endpoints
}

// Registry holds the drivers of one Controller. It is safe for concurrent use.
type Registry struct {
	mu      sync.RWMutex // guards following
	drivers map[string]*Entry
}

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,63}$`)

// Register adds driver d under name. Names are lowercase letters, digits, '.', '_' and '-',
// at most 64 characters. Registering a name twice fails with an error matching
// cnm.ErrAlreadyExists.
func (r *Registry) Register(name string, d Driver) error {
	if !nameRE.MatchString(name) {
		return errclass.Invalid("driver name", name, "want lowercase letters, digits, '.', '_' or '-', at most 64")
	}
	if d == nil {
		return errclass.Invalid("driver", name, "nil driver")
	}
	caps := d.Capabilities()
	if caps.DataScope == 0 {
		caps.DataScope = LocalScope
	}
	if caps.ConnectivityScope == 0 {
		caps.ConnectivityScope = caps.DataScope
	}
	if caps.DataScope != LocalScope && caps.DataScope != GlobalScope {
		return errclass.Invalid("driver data scope", caps.DataScope.String(), "want local or global")
	}
	e := &Entry{Name: name, Driver: d, Caps: caps}
	e.Parser, _ = d.(OptionParser)
	e.Reconciler, _ = d.(Reconciler)
	e.Allocator, _ = d.(NetworkAllocator)
	e.GossipUser, _ = d.(GossipUser)
	e.Restorer, _ = d.(EndpointRestorer)
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.drivers[name]; ok {
		return &errclass.AlreadyExistsError{Kind: "driver", Name: name}
	}
	if r.drivers == nil {
		r.drivers = make(map[string]*Entry)
	}
	r.drivers[name] = e
	return nil
}

// Get returns the driver registered under name, or an error matching cnm.ErrNotFound.
func (r *Registry) Get(name string) (*Entry, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if e, ok := r.drivers[name]; ok {
		return e, nil
	}
	return nil, &errclass.NotFoundError{Kind: "driver", Name: name}
}

// Names returns the registered names, sorted.
func (r *Registry) Names() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	names := make([]string, 0, len(r.drivers))
	for n := range r.drivers {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Close closes every registered driver that implements Closer and joins their errors.
func (r *Registry) Close() error {
	r.mu.RLock()
	defer r.mu.RUnlock()
	var errs []error
	for _, e := range r.drivers {
		if c, ok := e.Driver.(Closer); ok {
			if err := c.Close(); err != nil {
				errs = append(errs, fmt.Errorf("driver %s: close: %w", e.Name, err))
			}
		}
	}
	return errors.Join(errs...)
}
