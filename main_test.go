package cnm_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the run if any test leaves a goroutine behind (rule 24).
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
