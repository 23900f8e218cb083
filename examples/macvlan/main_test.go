package main

import (
	"testing"

	"github.com/cnmkit/cnm/internal/nstest"
)

// TestPrivilegedExampleMacvlan runs the example as the README does (in its own lab
// namespaces) and fails if any step does.
func TestPrivilegedExampleMacvlan(t *testing.T) {
	nstest.Privileged(t)
	if err := run(false); err != nil {
		t.Fatal(err)
	}
}
