//go:build !linux

package netns

import (
	"fmt"

	"github.com/cnmkit/cnm/internal/errclass"
)

// errNotSupported is what every function of this file returns: network namespaces are a
// Linux kernel feature.
var errNotSupported = errclass.LinuxOnly("network namespaces")

// Open fails with an error matching [errclass.ErrNotSupported]: network namespaces need Linux.
func Open(path string) (*NS, error) {
	return nil, fmt.Errorf("netns: open %s: %w", path, errNotSupported)
}

// Current fails with an error matching [errclass.ErrNotSupported]: network namespaces need
// Linux.
func Current() (*NS, error) {
	return nil, fmt.Errorf("netns: current: %w", errNotSupported)
}

// Do fails with an error matching [errclass.ErrNotSupported] without calling f: network
// namespaces need Linux. No *NS exists on this system, so it is never reached through one.
func (ns *NS) Do(f func() error) error {
	if ns == nil {
		return fmt.Errorf("netns: enter: %w", errNotSupported)
	}
	return fmt.Errorf("netns: enter %s: %w", ns.path, errNotSupported)
}

// New fails with an error matching [errclass.ErrNotSupported] and creates nothing: network
// namespaces need Linux.
func New(path string) (*NS, error) {
	return nil, fmt.Errorf("netns: create %s: %w", path, errNotSupported)
}

// Remove fails with an error matching [errclass.ErrNotSupported] and removes nothing: network
// namespaces need Linux.
func Remove(path string) error {
	return fmt.Errorf("netns: remove %s: %w", path, errNotSupported)
}

// IsMounted reports false: no path is a network-namespace bind mount on this system.
func IsMounted(path string) bool { return false }
