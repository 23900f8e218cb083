package boltdb_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

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

// A host registers itself with a key bound to a lease: the key lives as long as the lease.
// Here the lease is revoked; a process that stops without revoking loses its keys one TTL
// later (after Abandon, or, for a crash or Close, after the next Open).
func ExampleStore_Grant() {
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

	lease, err := s.Grant(ctx, 15*time.Second)
	if err != nil {
		log.Fatal(err)
	}
	rev, err := lease.AtomicPut(ctx, "cnm/v1/hosts/h1", []byte(`{"addr":"192.0.2.1"}`), 0)
	if err != nil {
		log.Fatal(err)
	}
	events, err := s.Watch(ctx, "cnm/v1/hosts/", rev)
	if err != nil {
		log.Fatal(err)
	}
	if err := lease.Revoke(ctx); err != nil {
		log.Fatal(err)
	}
	ev := <-events
	fmt.Println(ev.Type, ev.Pair.Key)
	_, err = lease.AtomicPut(ctx, "cnm/v1/hosts/h1", []byte(`{}`), 0)
	fmt.Println("after revoke:", errors.Is(err, kvstore.ErrLeaseEnded))
	// Output:
	// delete cnm/v1/hosts/h1
	// after revoke: true
}

// A lock serializes a read-modify-write that compare-and-swap alone would have to retry.
func ExampleStore_Lock() {
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

	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			u, err := s.Lock(ctx, "cnm/v1/locks/counter")
			if err != nil {
				log.Fatal(err)
			}
			defer u.Unlock(ctx)
			n := 0
			if p, err := s.Get(ctx, "cnm/v1/counter"); err == nil {
				n, _ = strconv.Atoi(string(p.Value))
			}
			if _, err := s.Put(ctx, "cnm/v1/counter", []byte(strconv.Itoa(n+1))); err != nil {
				log.Fatal(err)
			}
		})
	}
	wg.Wait()
	p, err := s.Get(ctx, "cnm/v1/counter")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s\n", p.Value)
	// Output: 4
}
