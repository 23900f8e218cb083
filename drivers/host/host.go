// Package host is the "host" network driver: an endpoint of a host network is the host's own
// network namespace, so there is no interface to plumb and its sandbox must be the host's.
//
// The driver does no kernel work and needs no privilege. It remembers, in memory, which
// networks exist, so that CreateEndpoint and Join on a network it was never given fail with an
// error matching cnm.ErrNotFound; the Controller re-creates its networks after a restart, which
// rebuilds that memory. A Driver is safe for concurrent use.
package host

import (
	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/internal/noiface"
)

var _ drivers.Driver = (*Driver)(nil)

// Driver is the host driver: a local-scope driver without IPAM whose endpoints join the
// host's own namespace. Create one with [New].
type Driver struct {
	*noiface.Driver
}

// New returns a host driver.
func New() *Driver {
	return &Driver{noiface.New("host network", drivers.Capabilities{
		DataScope: drivers.LocalScope,
		Sandbox:   drivers.HostSandbox,
		NoIPAM:    true,
	})}
}
