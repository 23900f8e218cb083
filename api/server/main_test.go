package server_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package when a test leaves a goroutine behind: the Server's key watcher,
// an event stream's handler, a connection of the client.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
