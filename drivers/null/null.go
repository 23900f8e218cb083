// Package null is the "none" network driver: an endpoint of a null network gets no interface,
// so its sandbox keeps only loopback.
//
// The driver does no kernel work and needs no privilege. It remembers, in memory, which
// networks exist, so that CreateEndpoint and Join on a network it was never given fail with an
// error matching cnm.ErrNotFound; the Controller re-creates its networks after a restart, which
// rebuilds that memory. A Driver is safe for concurrent use.
package null

import (
	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/internal/noiface"
)

var _ drivers.Driver = (*Driver)(nil)

// Driver is the null driver: a local-scope driver without IPAM whose endpoints join an
// isolated sandbox (loopback only). Create one with [New].
type Driver struct {
	*noiface.Driver
}

// New returns a null driver.
func New() *Driver {
	return &Driver{noiface.New("null network", drivers.Capabilities{
		DataScope: drivers.LocalScope,
		Sandbox:   drivers.IsolatedSandbox,
		NoIPAM:    true,
	})}
}
