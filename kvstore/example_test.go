package kvstore_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/cnmkit/cnm"
	"github.com/cnmkit/cnm/kvstore"
	"github.com/cnmkit/cnm/kvstore/boltdb"
)

// This example uses a Store the way cnm does, on the embedded bbolt backend in a temporary
// directory: a create-only AtomicPut that finds the key present fails with ErrKeyExists, and a
// compare-and-swap with a stale revision fails with ErrKeyModified. Each sentinel also matches
// its cnm error class.
func ExampleStore() {
	dir, err := os.MkdirTemp("", "kvstore-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	var s kvstore.Store
	s, err = boltdb.Open(filepath.Join(dir, "local.db"), boltdb.Config{})
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	const key = "cnm/v1/networks/n1"

	rev, err := s.Put(ctx, key, []byte(`{"name":"n1"}`))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("put at revision", rev)

	// Create-only: revision 0 means "the key must not exist".
	_, err = s.AtomicPut(ctx, key, []byte(`{"name":"other"}`), 0)
	fmt.Println(err, errors.Is(err, kvstore.ErrKeyExists), errors.Is(err, cnm.ErrAlreadyExists))

	// Compare-and-swap: succeeds at the current revision, then that revision is stale.
	newRev, err := s.AtomicPut(ctx, key, []byte(`{"name":"n1","mtu":1450}`), rev)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("updated at revision", newRev)
	_, err = s.AtomicPut(ctx, key, []byte(`{"name":"n1","mtu":9000}`), rev)
	fmt.Println(err, errors.Is(err, kvstore.ErrKeyModified), errors.Is(err, cnm.ErrConflict))

	p, err := s.Get(ctx, key)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s @%d: %s\n", p.Key, p.Revision, p.Value)

	_, err = s.Get(ctx, "cnm/v1/networks/missing")
	fmt.Println(errors.Is(err, kvstore.ErrKeyNotFound), errors.Is(err, cnm.ErrNotFound))
	// Output:
	// put at revision 1
	// boltdb: atomic put "cnm/v1/networks/n1": kvstore: key exists true true
	// updated at revision 2
	// boltdb: atomic put "cnm/v1/networks/n1": kvstore: key modified true true
	// cnm/v1/networks/n1 @2: {"name":"n1","mtu":1450}
	// true true
}
