//go:build !linux

package bridge

import (
	"net/netip"
	"time"

	"github.com/cnmkit/cnm/drivers"
	vnetns "github.com/vishvananda/netns"
)

// conntrackSocket stands for a NETLINK_NETFILTER socket, which only Linux has. No value of
// it is made on this system.
type conntrackSocket struct{}

// errConntrack is what the stubs of this file return.
var errConntrack = drivers.LinuxOnly("conntrack")

// newConntrackSocket fails with an error matching [drivers.ErrNotSupported].
func newConntrackSocket(ns vnetns.NsHandle, timeout time.Duration) (*conntrackSocket, error) {
	return nil, errConntrack
}

// Close does nothing: no socket was opened.
func (c *conntrackSocket) Close() {}

// flushAddr fails with an error matching [drivers.ErrNotSupported].
func (c *conntrackSocket) flushAddr(a netip.Addr) error { return errConntrack }
