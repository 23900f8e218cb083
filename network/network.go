// Package network is a set of endpoints that can reach each other, made by one driver and
// addressed by IPAM.
//
// A network is created by the Controller (cnm.Controller.NewNetwork), which checks its name
// and driver, and is used through the Network interface. This package holds that interface,
// the per-call options of a new network (Option, Spec, Apply) and the shape of
// `docker network inspect` (Inspect). The implementation is internal to the module: what the
// Controller needs of a network beyond this interface (restoring, reclaiming and forgetting it
// across hosts) is not part of the API.
package network

import (
	"context"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/endpoint"
)

// Network is a network of endpoints. It has one implementation, internal to the module; an
// orchestrator may wrap it.
type Network interface {
	// ID returns the network's ID (64 hex characters).
	ID() string
	// Name returns the network's name, unique on the Controller.
	Name() string
	// Driver returns the name of the network's driver.
	Driver() string
	// Scope returns the driver's data scope.
	Scope() drivers.Scope
	// CreateEndpoint creates an endpoint named name (unique in the network) and allocates its
	// addresses. Errors: invalid parameter (bad name, a static address outside the subnet),
	// already exists, conflict (the address is taken, the network is being deleted).
	CreateEndpoint(ctx context.Context, name string, opts ...endpoint.Option) (endpoint.Endpoint, error)
	// Endpoints returns the network's endpoints, sorted by name; none once the Controller is
	// closing or closed.
	Endpoints() []endpoint.Endpoint
	// Endpoint returns the endpoint with that name or ID (or unique ID prefix). Once the
	// Controller is closing or closed it fails with an error matching cnm.ErrUnavailable.
	Endpoint(nameOrID string) (endpoint.Endpoint, error)
	// Inspect returns the network's state as `docker network inspect` shows it.
	Inspect() Inspect
	// Delete removes the network. A network with endpoints is refused with an error matching
	// cnm.ErrConflict. Deleting a network that is deleted already returns nil, as deleting an
	// endpoint twice does: deletes converge. (Controller.DeleteNetwork, which looks the
	// network up by name or ID first, fails with cnm.ErrNotFound for it.)
	//
	// CreateEndpoint and Delete refuse a nil ctx with an error matching
	// cnm.ErrInvalidParameter, and, once the Controller is closing or closed, every call
	// with one matching cnm.ErrUnavailable; either way before they change anything.
	Delete(ctx context.Context) error
}
