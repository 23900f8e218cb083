//go:build !linux

package sandbox

import "net/netip"

// Routes fails with an error matching cnm.ErrNotSupported. It is not reached: OpenKernel
// fails first on this system.
func (k *Kernel) Routes() ([]netip.Prefix, error) { return nil, errNotSupported }

// OnMemoryFS fails with an error matching cnm.ErrNotSupported.
func OnMemoryFS(dir string) (bool, error) { return false, errNotSupported }
