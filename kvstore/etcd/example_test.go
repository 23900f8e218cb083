package etcd_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/cnmkit/cnm/kvstore"
	"github.com/cnmkit/cnm/kvstore/etcd"
)

// Open a store on a three-member cluster, under a prefix of its own, and watch it. This
// example needs a running etcd, so it is compiled but not run.
func Example() {
	ctx := context.Background()
	s, err := etcd.Open(ctx, etcd.Config{
		Endpoints:      []string{"http://10.0.0.1:2379", "http://10.0.0.2:2379", "http://10.0.0.3:2379"},
		Prefix:         "cluster-a/",
		RequestTimeout: 3 * time.Second,
	})
	if errors.Is(err, kvstore.ErrUnavailable) {
		log.Fatalf("etcd is down or has no quorum: %v", err)
	}
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()

	// Create-only, then compare-and-swap.
	rev, err := s.AtomicPut(ctx, "cnm/v1/networks/n1", []byte(`{"name":"n1"}`), 0)
	if err != nil {
		log.Fatal(err)
	}
	if _, err := s.AtomicPut(ctx, "cnm/v1/networks/n1", []byte(`{"name":"n1","mtu":1450}`), rev); errors.Is(err, kvstore.ErrKeyModified) {
		fmt.Println("someone else changed n1 first")
	}

	// Follow the networks from the revision read: nothing is missed in between, even when
	// a member restarts meanwhile.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events, err := s.Watch(wctx, "cnm/v1/networks/", rev)
	if err != nil {
		log.Fatal(err)
	}
	for ev := range events {
		fmt.Println(ev.Type, ev.Pair.Key, ev.Pair.Revision)
	}
}

// A member that requires client certificates.
func ExampleLoadTLS() {
	tlsCfg, err := etcd.LoadTLS("/etc/cnm/etcd-ca.pem", "/etc/cnm/etcd-client.pem", "/etc/cnm/etcd-client-key.pem")
	if err != nil {
		log.Fatal(err)
	}
	s, err := etcd.Open(context.Background(), etcd.Config{
		Endpoints: []string{"https://etcd-1.example:2379"},
		TLS:       tlsCfg,
	})
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()
}

// Hold a lock while changing shared state; the lock frees itself LockTTL after its holder
// dies.
func ExampleStore_Lock() {
	ctx := context.Background()
	s, err := etcd.Open(ctx, etcd.Config{Endpoints: []string{"http://127.0.0.1:2379"}, LockTTL: 15 * time.Second})
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()

	lock, err := s.Lock(ctx, "cnm/v1/locks/ipam")
	if err != nil {
		log.Fatal(err)
	}
	select {
	case <-lock.Lost():
		log.Print("lost the lock before finishing: the work must be checked")
	default:
		// ... read, decide, write ...
	}
	if err := lock.Unlock(ctx); errors.Is(err, kvstore.ErrLockLost) {
		log.Print("the lock expired while held")
	}
}
