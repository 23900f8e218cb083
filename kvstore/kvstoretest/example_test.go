package kvstoretest_test

import (
	"path/filepath"
	"testing"

	"github.com/cnmkit/cnm/kvstore"
	"github.com/cnmkit/cnm/kvstore/boltdb"
	"github.com/cnmkit/cnm/kvstore/kvstoretest"
)

// A backend runs the suite from a test of its own, with a constructor that returns a fresh
// store each time. This is how kvstore/boltdb does it.
func ExampleRun() {
	_ = func(t *testing.T) { // func TestContract(t *testing.T) in the backend's package
		kvstoretest.Run(t, func(t *testing.T) kvstore.Store {
			s, err := boltdb.Open(filepath.Join(t.TempDir(), "cnm.db"), boltdb.Config{NoSync: true})
			if err != nil {
				t.Fatal(err)
			}
			return s // Run closes it
		})
	}
}
