//go:build !linux

package main

import (
	"fmt"
	"runtime"
)

// execIn needs Linux network namespaces.
func execIn(path string, argv []string) error {
	return fmt.Errorf("exec on %s not supported: network namespaces need Linux", runtime.GOOS)
}
