package kvstoretest_test

import (
	"path/filepath"
	"testing"
	"time"

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

// A networked backend passes a second client on the same data, so that locks and leases are
// checked across clients. A store that one process holds alone, like bbolt, leaves Second nil
// (the suite then uses the store itself) and may ask for shorter leases.
func ExampleRunWith() {
	_ = func(t *testing.T) {
		kvstoretest.RunWith(t, func(t *testing.T) kvstore.Store {
			s, err := boltdb.Open(filepath.Join(t.TempDir(), "cnm.db"), boltdb.Config{NoSync: true})
			if err != nil {
				t.Fatal(err)
			}
			return s
		}, kvstoretest.Options{
			// A networked backend returns a new client here, on the same servers and key
			// prefix as s; RunWith closes it.
			Second:   func(t *testing.T, s kvstore.Store) kvstore.Store { return s },
			LeaseTTL: 200 * time.Millisecond,
		})
	}
}
