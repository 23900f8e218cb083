//go:build !linux

package overlay

import (
	"net"
	"net/netip"

	"github.com/cnmkit/cnm/drivers"
)

// plane is a network's kernel state on this host; other systems have none.
type plane struct {
	vtep netip.Addr
}

var errNoKernel = drivers.LinuxOnly("overlay networks (VXLAN)")

func (d *Driver) buildPlane(n *ovNetwork) (*plane, error)            { return nil, errNoKernel }
func (p *plane) destroy() error                                      { return nil }
func (p *plane) close() error                                        { return nil }
func (p *plane) addPort(string, string, net.HardwareAddr, int) error { return errNoKernel }
func (p *plane) delPort(string) error                                { return nil }
func (p *plane) addPeer(peerEntry) error                             { return errNoKernel }
func (p *plane) delPeer(peerEntry) error                             { return nil }

func (d *Driver) adoptPlane(n *ovNetwork) (*plane, error) { return nil, errNoKernel }
