package consul_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/cnmkit/cnm/kvstore"
	"github.com/cnmkit/cnm/kvstore/consul"
)

// Example opens a store on a local Consul agent, writes with compare-and-swap, watches a
// prefix and binds a key to a lease. It needs a running agent, so it has no output to check.
func Example() {
	ctx := context.Background()
	s, err := consul.Open(ctx, consul.Config{
		Address:        "127.0.0.1:8500",
		Prefix:         "cnm",
		RequestTimeout: 2 * time.Second,
	})
	if errors.Is(err, kvstore.ErrUnavailable) {
		log.Fatalf("no Consul agent: %v", err)
	}
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()

	// Watch the networks from now on.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events, err := s.Watch(wctx, "cnm/v1/networks/", 0)
	if err != nil {
		log.Fatal(err)
	}

	// Create a key only if it is absent, then update it with compare-and-swap.
	rev, err := s.AtomicPut(ctx, "cnm/v1/networks/n1", []byte(`{"name":"n1"}`), 0)
	if err != nil {
		log.Fatal(err)
	}
	if _, err := s.AtomicPut(ctx, "cnm/v1/networks/n1", []byte(`{"name":"n1","mtu":1450}`), rev); err != nil {
		log.Fatal(err)
	}
	for range 2 {
		ev := <-events
		fmt.Println(ev.Type, ev.Pair.Key, string(ev.Pair.Value))
	}

	// Register this host for as long as it lives: Consul deletes the key when the lease ends.
	lease, err := s.Grant(ctx, 10*time.Second)
	if err != nil {
		log.Fatal(err)
	}
	defer lease.Revoke(context.WithoutCancel(ctx))
	if _, err := lease.AtomicPut(ctx, "cnm/v1/hosts/h1", []byte(`{"addr":"192.0.2.1"}`), 0); err != nil {
		log.Fatal(err)
	}

	// Serialize a cluster-wide job.
	unlock, err := s.Lock(ctx, "cnm/v1/locks/ipam")
	if err != nil {
		log.Fatal(err)
	}
	defer unlock.Unlock(context.WithoutCancel(ctx))
}
