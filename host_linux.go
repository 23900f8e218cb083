package cnm

// This file holds the controller's Linux-only code; host_other.go has its stubs for other
// systems.

// checkSystem returns nil: cnm runs on Linux.
func checkSystem() error { return nil }
