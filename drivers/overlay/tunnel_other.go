//go:build !linux

package overlay

import (
	"net/netip"

	"github.com/cnmkit/cnm/drivers"
)

// tunnel is this host's WireGuard tunnel; other systems have none.
type tunnel struct{}

func (d *Driver) attachTunnel(drivers.NetworkID, drivers.Gossip) (netip.Addr, error) {
	return netip.Addr{}, errNoKernel
}
func (d *Driver) detachTunnel(drivers.NetworkID) error { return nil }
func (d *Driver) closeTunnel() error                   { return nil }
