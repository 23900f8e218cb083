package cnm_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the run if any test leaves a goroutine behind (rule 24).
// TestMain checks that no goroutine outlives the tests. memberlist's Shutdown does not wait for a
// probe in flight, which ends within its ProbeInterval (stretched up to 8x by its Lifeguard
// awareness when probes keep failing, as they do once a peer crashed): that goroutine is
// memberlist's own, not ours to stop.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/hashicorp/memberlist.(*Memberlist).probeNode"))
}
