// Package netns gives drivers handles on Linux network namespaces, the same ones the built-in
// drivers use: the host's namespace (Current, or Open of the path the Controller gives a driver
// in its configuration) and a sandbox's (Open of drivers.JoinRequest.SandboxKey). NS.Do runs a
// function inside a namespace on a locked OS thread and restores the thread after, or retires
// it when it cannot; NS.Handle feeds netlink.NewHandleAt for calls into the namespace without
// entering it, which is what long-lived work should use.
//
// Opening a namespace needs no privilege beyond reading its path; entering one (Do) needs
// CAP_SYS_ADMIN. Off Linux every function fails with an error matching drivers.ErrNotSupported.
// A handle must be closed; it is safe for concurrent use.
package netns

import inner "github.com/cnmkit/cnm/internal/netns"

// NS is an open handle on a network namespace.
type NS = inner.NS

// Open opens the namespace at path: a bind mount (/run/netns/x, a sandbox's key) or a
// /proc/<pid>/ns/net file.
func Open(path string) (*NS, error) { return inner.Open(path) }

// Current opens the namespace of the calling OS thread.
func Current() (*NS, error) { return inner.Current() }

// New creates a network namespace and bind-mounts it at path (whose directory is created when
// missing), and returns it open: a driver's own namespace, such as the overlay's per network.
// The path must not exist. On error nothing is left behind.
func New(path string) (*NS, error) { return inner.New(path) }

// Remove unmounts the namespace bind-mounted at path and deletes the file; the namespace ends
// once nothing holds it. A missing path returns nil.
func Remove(path string) error { return inner.Remove(path) }

// IsMounted reports whether path is a live network-namespace bind mount.
func IsMounted(path string) bool { return inner.IsMounted(path) }
