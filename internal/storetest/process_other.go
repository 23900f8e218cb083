//go:build !linux

package storetest

import "os/exec"

// setDeathSignal does nothing: only Linux kills a child when its parent dies. A test binary
// that dies without its cleanups leaves its servers running there.
func setDeathSignal(*exec.Cmd) {}
