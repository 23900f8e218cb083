package sandbox

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"

	"github.com/cnmkit/cnm/internal/netns"
	"github.com/vishvananda/netlink"
)

// Machine is the machine as a sandbox's owner (the cnm Controller) uses it: the host network
// namespace, and the namespaces of the sandboxes. [Kernel] is the real one. Package
// sandbox/sandboxtest has one in memory, which needs no privileges, for tests of code that
// uses cnm.
//
// Its methods are safe for concurrent use.
type Machine interface {
	// Path returns the path of the host network namespace: the one drivers put host-side
	// links in, and the Key of ModeHost sandboxes. New and Open use it for a Config whose
	// HostNetns is empty.
	Path() string
	// Routes returns the destinations of the host namespace's routes, IPv4 and IPv6 (default
	// routes, which have none, are left out): subnets that networks on this host must not use.
	Routes() ([]netip.Prefix, error)
	// New creates a sandbox as [New] does, with its contract and errors.
	New(ctx context.Context, cfg Config) (Handle, error)
	// Open re-opens a sandbox after a restart as [Open] does, with its contract and errors:
	// one whose namespace is gone fails with an error matching cnm.ErrNotFound.
	Open(ctx context.Context, cfg Config, ifaces []Interface) (sb Handle, dropped []string, err error)
	// List returns the IDs of the sandboxes with a namespace under runDir, as
	// [ListNamespaces] does.
	List(runDir string) ([]string, error)
	// Remove removes the namespace of sandbox id under runDir, one that no Handle owns (left
	// by a crash), as [RemoveNamespace] does. A missing one returns nil.
	Remove(runDir, id string) error
}

// Handle is a sandbox its owner can delete or let go of: a [Sandbox] with the Delete and
// Close of [*Namespace], and their contracts.
type Handle interface {
	Sandbox
	// Delete removes the sandbox: its namespace (for ModeNamespace, with every interface in
	// it) and its files. It continues past errors; calling it again retries.
	Delete(ctx context.Context) error
	// Close lets go of the sandbox and leaves it in place, for Open after a restart.
	Close() error
}

var (
	_ Machine = (*Kernel)(nil)
	_ Handle  = (*Namespace)(nil)
)

// Kernel is the real [Machine]: sandboxes are network namespaces ([*Namespace]), and the host
// namespace is one it holds open from [OpenKernel] to Close. It needs Linux, and root
// (CAP_NET_ADMIN and CAP_SYS_ADMIN) for most of what it does.
type Kernel struct {
	ns   *netns.NS
	path string
	nl   *netlink.Handle // in ns, for Routes
}

// OpenKernel opens the host namespace at hostNetns, or the calling thread's when hostNetns is
// "", and a netlink handle in it. Close releases both. On systems other than Linux it fails
// with an error matching cnm.ErrNotSupported.
func OpenKernel(hostNetns string) (_ *Kernel, err error) {
	k := &Kernel{path: hostNetns}
	if hostNetns == "" {
		if k.ns, err = netns.Current(); err != nil {
			return nil, fmt.Errorf("sandbox: host namespace: %w", err)
		}
		// The thread's namespace has no lasting path of its own: the open descriptor names
		// it for as long as k lives.
		k.path = fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), k.ns.FD())
	} else if k.ns, err = netns.Open(hostNetns); err != nil {
		return nil, fmt.Errorf("sandbox: host namespace: %w", err)
	}
	if k.nl, err = netlink.NewHandleAt(k.ns.Handle()); err != nil {
		return nil, errors.Join(fmt.Errorf("sandbox: host netlink: %w", err), k.ns.Close())
	}
	return k, nil
}

// Path returns the host namespace's path: the hostNetns given to OpenKernel, or
// /proc/<pid>/fd/<fd> of the descriptor k holds when that was "" (valid until Close).
func (k *Kernel) Path() string { return k.path }

// New creates a sandbox with [New], its HostNetns defaulting to Path.
func (k *Kernel) New(ctx context.Context, cfg Config) (Handle, error) {
	if cfg.HostNetns == "" {
		cfg.HostNetns = k.path
	}
	ns, err := New(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return ns, nil
}

// Open re-opens a sandbox with [Open], its HostNetns defaulting to Path.
func (k *Kernel) Open(ctx context.Context, cfg Config, ifaces []Interface) (Handle, []string, error) {
	if cfg.HostNetns == "" {
		cfg.HostNetns = k.path
	}
	ns, dropped, err := Open(ctx, cfg, ifaces)
	if err != nil {
		return nil, nil, err
	}
	return ns, dropped, nil
}

// List returns [ListNamespaces](runDir).
func (k *Kernel) List(runDir string) ([]string, error) { return ListNamespaces(runDir) }

// Remove returns [RemoveNamespace](runDir, id).
func (k *Kernel) Remove(runDir, id string) error { return RemoveNamespace(runDir, id) }

// Close releases the host namespace's descriptor and netlink handle. Sandboxes made through
// k are not affected. Close after Close returns nil.
func (k *Kernel) Close() error {
	if k.nl != nil {
		k.nl.Close()
		k.nl = nil
	}
	err := k.ns.Close()
	k.ns = nil
	return err
}
