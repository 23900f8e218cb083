// Package host is the "host" network driver: an endpoint of a host network is the host's own
// network namespace, so there is no interface to plumb and its sandbox must be the host's.
//
// The driver does no kernel work and needs no privilege. It remembers, in memory, which
// networks exist, so that CreateEndpoint and Join on a network it was never given fail with an
// error matching cnm.ErrNotFound; the Controller re-creates its networks after a restart, which
// rebuilds that memory. A Driver is safe for concurrent use.
package host

import (
	"context"
	"sync"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/internal/errclass"
)

var _ drivers.Driver = (*Driver)(nil)

// Driver is the host driver. Create one with [New].
type Driver struct {
	mu       sync.Mutex // guards following
	networks map[drivers.NetworkID]bool
}

// New returns a host driver.
func New() *Driver {
	return &Driver{networks: make(map[drivers.NetworkID]bool)}
}

// Capabilities reports a local-scope driver without IPAM whose endpoints join the host's
// own namespace.
func (d *Driver) Capabilities() drivers.Capabilities {
	return drivers.Capabilities{
		DataScope: drivers.LocalScope,
		Sandbox:   drivers.HostSandbox,
		NoIPAM:    true,
	}
}

// CreateNetwork records the network. Creating it again returns nil.
func (d *Driver) CreateNetwork(ctx context.Context, req drivers.CreateNetworkRequest) error {
	if req.NetworkID == "" {
		return errclass.Invalid("network ID", "", "empty")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.networks[req.NetworkID] = true
	return nil
}

// DeleteNetwork forgets the network. A missing network returns nil.
func (d *Driver) DeleteNetwork(ctx context.Context, req drivers.DeleteNetworkRequest) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.networks, req.NetworkID)
	return nil
}

// CreateEndpoint does nothing. It fails with an error matching cnm.ErrNotFound when the
// network is unknown.
func (d *Driver) CreateEndpoint(ctx context.Context, req drivers.CreateEndpointRequest) (drivers.CreateEndpointResult, error) {
	return drivers.CreateEndpointResult{}, d.known(req.NetworkID)
}

// DeleteEndpoint does nothing and returns nil.
func (d *Driver) DeleteEndpoint(ctx context.Context, req drivers.DeleteEndpointRequest) error {
	return nil
}

// Join returns a result with NoInterface set. It fails with an error matching cnm.ErrNotFound
// when the network is unknown.
func (d *Driver) Join(ctx context.Context, req drivers.JoinRequest) (drivers.JoinResult, error) {
	if err := d.known(req.NetworkID); err != nil {
		return drivers.JoinResult{}, err
	}
	return drivers.JoinResult{NoInterface: true}, nil
}

// Leave does nothing and returns nil.
func (d *Driver) Leave(ctx context.Context, req drivers.LeaveRequest) error { return nil }

func (d *Driver) known(id drivers.NetworkID) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.networks[id] {
		return &errclass.NotFoundError{Kind: "host network", Name: string(id)}
	}
	return nil
}
