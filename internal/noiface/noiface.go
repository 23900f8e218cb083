// Package noiface is the shared body of the drivers whose endpoints get no interface: host
// (the sandbox is the host's own namespace) and null (the sandbox keeps only loopback). It
// does no kernel work. It remembers, in memory, which networks exist, so that CreateEndpoint and
// Join on a network it was never given fail with an error matching cnm.ErrNotFound; the
// Controller re-creates its networks after a restart, which rebuilds that memory.
package noiface

import (
	"context"
	"sync"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/internal/errclass"
)

// Driver implements drivers.Driver for drivers without interfaces. It is safe for concurrent use.
type Driver struct {
	kind string // "host network", "null network": names the object in errors
	caps drivers.Capabilities

	mu       sync.Mutex // guards following
	networks map[drivers.NetworkID]bool
}

var _ drivers.Driver = (*Driver)(nil)

// New returns a driver reporting caps whose networks are called kind in errors.
func New(kind string, caps drivers.Capabilities) *Driver {
	return &Driver{kind: kind, caps: caps, networks: make(map[drivers.NetworkID]bool)}
}

// Capabilities returns the capabilities given to New.
func (d *Driver) Capabilities() drivers.Capabilities { return d.caps }

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
		return &errclass.NotFoundError{Kind: d.kind, Name: string(id)}
	}
	return nil
}
