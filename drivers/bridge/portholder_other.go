//go:build !linux

package bridge

import (
	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/netns"
)

// This file holds the stubs of portholder_linux.go for other systems. New fails there before
// it reaches them, as the host namespace cannot be opened.

// errPortSocket is what the stubs of this file return.
var errPortSocket = drivers.LinuxOnly("host port sockets in a network namespace")

// openPortSockets fails with an error matching [drivers.ErrNotSupported].
func openPortSockets(ns *netns.NS, keys []portKey) ([]int, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	return nil, errPortSocket
}

// bindPortSocket fails with an error matching [drivers.ErrNotSupported].
func bindPortSocket(fd int, k portKey) error { return errPortSocket }

// portInUse reports false: no port is bound on this system.
func portInUse(err error) bool { return false }

// closePortSockets does nothing: no socket was opened.
func closePortSockets(fds []int) {}
