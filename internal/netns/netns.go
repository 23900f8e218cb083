// Package netns creates, opens and enters Linux network namespaces. It is the only package in
// cnm that calls runtime.LockOSThread, setns(2) or unshare(2).
//
// A namespace is held as an *NS: an open descriptor plus the path it was opened from. A
// namespace made by New is kept alive by a bind mount at its path and removed by Remove.
// Code that must run inside a namespace passes a function to Do, which runs it on a fresh,
// locked goroutine and restores the thread afterwards; long-lived work should rather use a
// netlink handle made with netlink.NewHandleAt(ns.Handle()).
//
// Everything here needs CAP_SYS_ADMIN (mounts, unshare) and is Linux only. On other systems
// the package builds, but Open, Current, New, Remove and Do fail with an error matching
// errclass.ErrNotSupported (so no *NS can be had there), and IsMounted reports false.
package netns

import (
	"os"

	vnetns "github.com/vishvananda/netns"
)

// NS is an open network namespace. Its methods are safe for concurrent use; Close must be
// called once, when no call is running.
type NS struct {
	path string
	f    *os.File
}

// Path returns the path the namespace was opened from.
func (ns *NS) Path() string { return ns.path }

// FD returns the open descriptor; it stays valid until Close.
func (ns *NS) FD() int { return int(ns.f.Fd()) }

// Handle returns the descriptor as a vishvananda/netns handle, for netlink.NewHandleAt. The
// handle is owned by ns: do not close it.
func (ns *NS) Handle() vnetns.NsHandle { return vnetns.NsHandle(ns.f.Fd()) }

// Close closes the descriptor. It does not remove the namespace's bind mount (see Remove).
func (ns *NS) Close() error {
	if ns == nil || ns.f == nil {
		return nil
	}
	return ns.f.Close()
}
