package cnm_test

import (
	"errors"

	"github.com/vishvananda/netlink"
)

// dumpInterrupted reports whether err says the kernel interrupted a netlink dump (its objects
// changed meanwhile): the dump is to be tried again.
func dumpInterrupted(err error) bool { return errors.Is(err, netlink.ErrDumpInterrupted) }
