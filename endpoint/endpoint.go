// Package endpoint is one attachment of a sandbox to a network: an interface with a MAC
// address, IPv4 and IPv6 addresses, and the gateway its network offers.
//
// An endpoint is created by its network (network.Network.CreateEndpoint), which allocates its
// addresses and asks the driver to reserve it. Join plumbs it into a sandbox, Leave takes it
// out again (keeping its addresses), Delete releases it. This package holds the Endpoint
// interface, its snapshot (Info) and the per-call options (Option, Spec, ParsePortSpec); the
// implementation is internal to the module.
//
// Every method is safe for concurrent use. Join and Leave of one endpoint are serialized; an
// endpoint busy with one refuses the other with an error matching cnm.ErrConflict.
package endpoint

import (
	"context"
	"net"
	"net/netip"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/sandbox"
)

// Endpoint is an attachment point of a network. It has one implementation, internal to
// the module; an orchestrator may wrap it.
type Endpoint interface {
	// ID returns the endpoint's ID (64 hex characters).
	ID() string
	// Name returns the endpoint's name, unique in its network.
	Name() string
	// NetworkID returns the ID of the endpoint's network.
	NetworkID() string
	// Info returns a snapshot of the endpoint's addresses and attachment.
	Info() Info
	// Join connects the endpoint to sb. Joining the sandbox it is joined to already returns
	// nil; joining another fails with an error matching cnm.ErrConflict.
	Join(ctx context.Context, sb sandbox.Sandbox) error
	// Leave disconnects the endpoint from sb; its addresses are kept. Leaving a sandbox it is
	// not joined to returns nil.
	Leave(ctx context.Context, sb sandbox.Sandbox) error
	// Delete releases the endpoint and its addresses. A joined endpoint is refused with an
	// error matching cnm.ErrConflict. Deleting twice returns nil.
	//
	// Join, Leave and Delete refuse a nil ctx with an error matching cnm.ErrInvalidParameter,
	// and, once the Controller is closing or closed, every call with one matching
	// cnm.ErrUnavailable; either way before they change anything.
	Delete(ctx context.Context) error
}

// Info is a snapshot of an endpoint.
type Info struct {
	ID          string
	Name        string
	NetworkID   string
	MAC         net.HardwareAddr
	IPv4        netip.Prefix // zero when none
	IPv6        netip.Prefix
	SandboxID   string // "" when not joined
	IfName      string // interface name in the sandbox, when joined
	Gateway     netip.Addr
	GatewayIPv6 netip.Addr
	// Ports are the published ports as bound (single ports, ephemeral ones chosen).
	Ports []drivers.PortBinding
	// Aliases are the endpoint's extra names on its network.
	Aliases []string
}
