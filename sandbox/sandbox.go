// Package sandbox is a container's network stack: a network namespace with its interfaces,
// addresses and routes, and the /etc/hosts and /etc/resolv.conf contents the container gets.
//
// A sandbox knows nothing of networks or drivers: endpoints hand it interfaces to configure
// (AddInterface) and take them away (RemoveInterface). Three modes exist, as users know them
// from `docker run --net`:
//   - ModeNamespace: the sandbox's own namespace, bind-mounted under the run directory, with
//     loopback up;
//   - ModeHost: the host's own namespace; nothing is created, no interface can be added;
//   - ModeContainer: the namespace of another sandbox, shared ("container:<id>").
//
// Lifecycle: New creates a sandbox, Open re-opens one after a restart, Delete removes it, and
// Close lets go of it without removing it (for a restart). Every method is safe for
// concurrent use.
//
// A Machine gathers what an owner of sandboxes (the cnm Controller) asks of the machine: the
// host namespace's path and routes, and New, Open, ListNamespaces and RemoveNamespace. Kernel
// is the real one; package sandbox/sandboxtest has one in memory, for tests without root.
//
// The implementation, *Namespace, is Linux only and needs CAP_NET_ADMIN and CAP_SYS_ADMIN. It
// never changes the namespace of the calling thread: it works through netlink handles opened
// in the sandbox's and the host's namespaces (see internal/netns).
// On other systems the package builds, but New, Open, ListNamespaces, RemoveNamespace and
// OpenKernel fail with an error matching cnm.ErrNotSupported.
package sandbox

import (
	"context"
	"fmt"
	"net"
	"net/netip"
)

// Mode is how a sandbox gets its namespace.
type Mode int

const (
	ModeNamespace Mode = iota // its own namespace
	ModeHost                  // the host's namespace
	ModeContainer             // another sandbox's namespace
)

// String returns "namespace", "host" or "container".
func (m Mode) String() string {
	switch m {
	case ModeNamespace:
		return "namespace"
	case ModeHost:
		return "host"
	case ModeContainer:
		return "container"
	}
	return fmt.Sprintf("mode(%d)", int(m))
}

// Route is an extra route through an interface; a zero NextHop makes it on-link.
type Route struct {
	Destination netip.Prefix
	NextHop     netip.Addr
}

// InterfaceConfig describes an interface for AddInterface.
type InterfaceConfig struct {
	// Name is the interface name in the sandbox, as returned by ReserveName.
	Name string
	// InSandbox reports whether the link already exists in the sandbox under Name with its
	// MAC set (a driver created it there). Otherwise SrcName names a link in the host
	// namespace to move in, rename and give MAC.
	InSandbox bool
	SrcName   string
	MAC       net.HardwareAddr
	// IPv4 and IPv6 are the addresses with their subnet's length; zero for none.
	IPv4 netip.Prefix
	IPv6 netip.Prefix
	// Gateway and GatewayIPv6, when valid, make this interface a candidate for the default
	// route. The first interface added with a gateway provides it; when it is removed, the
	// next one (in the order added) takes over.
	Gateway     netip.Addr
	GatewayIPv6 netip.Addr
	Routes      []Route
}

// Interface is an interface configured in a sandbox.
type Interface struct {
	Name        string
	MAC         net.HardwareAddr
	IPv4        netip.Prefix
	IPv6        netip.Prefix
	Gateway     netip.Addr
	GatewayIPv6 netip.Addr
	Routes      []Route
}

// Sandbox is a container's network stack. *Namespace implements it on the kernel, and package
// sandboxtest in memory, with the same contract but for the kernel state; an orchestrator may
// wrap it.
type Sandbox interface {
	// ID returns the sandbox's ID (the container's ID or name, as given to New).
	ID() string
	// Mode returns how the sandbox gets its namespace.
	Mode() Mode
	// Key returns the path of the network namespace (for ModeHost, the host's).
	Key() string
	// NetnsFD returns an open descriptor of the namespace, valid until Delete (or, for
	// *Namespace, Close).
	NetnsFD() int
	// Interfaces returns copies of the configured interfaces in the order they were added.
	Interfaces() []Interface
	// ReserveName reserves the interface name want, or the lowest free name ethN when want is
	// "", and returns it with a function that releases it unless AddInterface used it. A want
	// that is taken fails with an error matching cnm.ErrAlreadyExists, a bad one with
	// cnm.ErrInvalidParameter. ModeHost and ModeContainer sandboxes refuse with an error
	// matching cnm.ErrConflict.
	ReserveName(want string) (name string, release func(), err error)
	// Hostname returns the container's host name (its ID when none was given).
	Hostname() string
	// AddInterface configures an interface: addresses, link up, routes, default route when it
	// provides the gateway; then rewrites the hosts file. On error the link is removed and
	// nothing else is left.
	AddInterface(ctx context.Context, cfg InterfaceConfig) error
	// RemoveInterface deletes the interface from the namespace if it is still there (a veth
	// takes its peer with it), moves the default route to the next interface with a gateway,
	// and rewrites the hosts file. Removing a missing interface returns nil.
	RemoveInterface(ctx context.Context, name string) error
	// HostsPath and ResolvConfPath return the files holding the container's /etc/hosts and
	// /etc/resolv.conf contents.
	HostsPath() string
	ResolvConfPath() string
}
