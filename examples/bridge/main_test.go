package main

import (
	"testing"

	"github.com/cnmkit/cnm/internal/nstest"
)

// TestPrivilegedExampleBridge runs the example as the README does (in its own lab namespace)
// and fails if any step does.
func TestPrivilegedExampleBridge(t *testing.T) {
	nstest.Privileged(t)
	if err := run(false, false); err != nil {
		t.Fatal(err)
	}
}
