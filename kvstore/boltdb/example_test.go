package boltdb_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/cnmkit/cnm/kvstore"
	"github.com/cnmkit/cnm/kvstore/boltdb"
)

func Example() {
	dir, err := os.MkdirTemp("", "boltdb-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	s, err := boltdb.Open(filepath.Join(dir, "cnm.db"), boltdb.Config{})
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()

	// Create a key only if it is absent, then update it with compare-and-swap.
	rev, err := s.AtomicPut(ctx, "cnm/v1/networks/n1", []byte(`{"name":"n1"}`), 0)
	if err != nil {
		log.Fatal(err)
	}
	_, err = s.AtomicPut(ctx, "cnm/v1/networks/n1", []byte(`{"name":"other"}`), 0)
	fmt.Println("create again:", errors.Is(err, kvstore.ErrKeyExists))
	if _, err := s.AtomicPut(ctx, "cnm/v1/networks/n1", []byte(`{"name":"n1","mtu":1450}`), rev); err != nil {
		log.Fatal(err)
	}

	// Two more writes in one transaction.
	if _, err := s.Batch(ctx, []kvstore.Op{
		{Key: "cnm/v1/networks/n2", Value: []byte(`{"name":"n2"}`)},
		{Key: "cnm/v1/endpoints/e1", Value: []byte(`{"network":"n2"}`)},
	}); err != nil {
		log.Fatal(err)
	}

	pairs, err := s.List(ctx, "cnm/v1/networks/")
	if err != nil {
		log.Fatal(err)
	}
	for _, p := range pairs {
		fmt.Printf("%s @%d %s\n", p.Key, p.Revision, p.Value)
	}
	// Output:
	// create again: true
	// cnm/v1/networks/n1 @2 {"name":"n1","mtu":1450}
	// cnm/v1/networks/n2 @3 {"name":"n2"}
}

func ExampleStore_Watch() {
	dir, err := os.MkdirTemp("", "boltdb-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	s, err := boltdb.Open(filepath.Join(dir, "cnm.db"), boltdb.Config{})
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	from, _ := s.Put(ctx, "cnm/v1/networks/n1", []byte("a"))
	_, _ = s.Put(ctx, "cnm/v1/networks/n1", []byte("b"))
	_ = s.Delete(ctx, "cnm/v1/networks/n1")

	// Resume after revision from: the changes that followed it are replayed first.
	events, err := s.Watch(ctx, "cnm/v1/networks/", from)
	if err != nil {
		log.Fatal(err)
	}
	for range 2 {
		ev := <-events
		fmt.Printf("%v %s @%d %q\n", ev.Type, ev.Pair.Key, ev.Pair.Revision, ev.Pair.Value)
	}
	// Output:
	// put cnm/v1/networks/n1 @2 "b"
	// delete cnm/v1/networks/n1 @3 ""
}
