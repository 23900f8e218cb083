package sandbox_test

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/cnmkit/cnm/internal/nstest"
	"github.com/cnmkit/cnm/sandbox"
)

// TestPrivilegedMachineKernel checks the real Machine against the contract of testMachine,
// which the in-memory one of package sandboxtest meets too (TestMachineFake).
func TestPrivilegedMachineKernel(t *testing.T) {
	nstest.Privileged(t)
	env := newEnv(t)
	k, err := sandbox.OpenKernel(env.host.Path())
	if err != nil {
		t.Fatalf("OpenKernel: %v", err)
	}
	defer k.Close()
	if k.Path() != env.host.Path() {
		t.Errorf("Path() = %q, want %q", k.Path(), env.host.Path())
	}
	env.bridge("mk0", "10.77.0.1/24")
	routes, err := k.Routes()
	if err != nil {
		t.Fatalf("Routes: %v", err)
	}
	if !slices.Contains(routes, netip.MustParsePrefix("10.77.0.0/24")) {
		t.Errorf("Routes() = %v, want the bridge's 10.77.0.0/24 among them", routes)
	}
	n := 0
	testMachine(t, newMachineEnv(t, k, func(t *testing.T, sb sandbox.Sandbox, name string) {
		n++
		env.vethInto(sb, "mk"+string(rune('0'+n)), name, nil)
	}))
}
