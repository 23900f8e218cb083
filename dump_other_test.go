//go:build !linux

package cnm_test

// dumpInterrupted reports false: netlink dumps are Linux's.
func dumpInterrupted(error) bool { return false }
