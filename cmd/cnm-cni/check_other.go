//go:build !linux

package main

// checkKernel fails: network namespaces are Linux only.
func checkKernel(path string, exp expected) error {
	return errorf(codeIOFailure, "check: network namespaces are Linux only (not supported on this system)")
}
