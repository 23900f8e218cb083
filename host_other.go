//go:build !linux

package cnm

import "github.com/cnmkit/cnm/internal/errclass"

// This file holds the stubs of host_linux.go for other systems.

// checkSystem fails with an error matching [ErrNotSupported]: the Controller needs Linux.
func checkSystem() error { return errclass.LinuxOnly("the Controller") }
