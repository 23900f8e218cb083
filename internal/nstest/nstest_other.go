//go:build !linux

package nstest

import "github.com/cnmkit/cnm/internal/errclass"

// detach fails with an error matching [errclass.ErrNotSupported]: namespace bind mounts need
// Linux (and netns.IsMounted never reports one elsewhere, so it is not reached).
func detach(path string) error { return errclass.LinuxOnly("network namespace bind mounts") }
