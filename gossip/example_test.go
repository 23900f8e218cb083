package gossip_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/cnmkit/cnm/gossip"
	"github.com/cnmkit/cnm/kvstore/boltdb"
)

// Two hosts on loopback form an encrypted cluster, both take part in one overlay network, and
// an endpoint written on one host shows up on the other's watch. A real host binds its own
// address on gossip.DefaultPort, keeps the default (LAN) timings and sets a KeyringFile.
func Example() {
	key := []byte("0123456789abcdef") // a real cluster uses gossip.NewKey
	config := func(name string) gossip.Config {
		return gossip.Config{
			NodeName:       name,
			BindAddr:       netip.MustParseAddr("127.0.0.1"), // port 0: the kernel picks one
			Keys:           [][]byte{key},
			GossipInterval: 50 * time.Millisecond,
			Logger:         slog.New(slog.DiscardHandler),
		}
	}
	a, err := gossip.New(config("host-a"))
	if err != nil {
		log.Fatal(err)
	}
	defer a.Close()
	b, err := gossip.New(config("host-b"))
	if err != nil {
		log.Fatal(err)
	}
	defer b.Close()

	for _, n := range []*gossip.Node{a, b} {
		if err := n.JoinNetwork("overlay-1"); err != nil {
			log.Fatal(err)
		}
	}
	events, cancel := b.Watch("overlay-1", "endpoints")
	defer cancel()

	ctx, stop := context.WithTimeout(context.Background(), 10*time.Second)
	defer stop()
	if _, err := b.Join(ctx, []string{a.LocalAddr().String()}); err != nil {
		log.Fatal(err)
	}
	if err := a.CreateEntry("overlay-1", "endpoints", "10.0.0.2", []byte("02:42:0a:00:00:02")); err != nil {
		log.Fatal(err)
	}
	select {
	case ev := <-events:
		fmt.Println(ev.Type, ev.Key, string(ev.Value), "owned by", ev.Owner)
	case <-ctx.Done():
		log.Fatal("no event")
	}
	fmt.Println(len(b.Members()), "members, primary key", b.KeyringStatus().Primary == gossip.KeyID(key))
	// Output:
	// create 10.0.0.2 02:42:0a:00:00:02 owned by host-a
	// 2 members, primary key true
}

// ValidateKey rejects keys AES-GCM cannot use, naming the length, never the key.
func ExampleValidateKey() {
	fmt.Println(gossip.ValidateKey(make([]byte, 16)))
	fmt.Println(gossip.ValidateKey(make([]byte, 20)))
	// Output:
	// <nil>
	// invalid key "20 bytes": a gossip key is 16, 24 or 32 bytes
}

// With a shared store, the cluster's keyring lives in the store: the first node creates the
// record from its Config.Keys, and a node given nothing but the store starts with the
// cluster's current keys. Here both nodes share one bbolt store, as nodes of one process can;
// the hosts of a real cluster share etcd or Consul (over TLS, with ACLs on the prefix: the
// record holds the keys).
func ExampleConfig_store() {
	dir, err := os.MkdirTemp("", "gossip-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	store, err := boltdb.Open(filepath.Join(dir, "cnm.db"), boltdb.Config{})
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()

	key, err := gossip.NewKey()
	if err != nil {
		log.Fatal(err)
	}
	config := func(name string) gossip.Config {
		return gossip.Config{
			NodeName: name,
			BindAddr: netip.MustParseAddr("127.0.0.1"),
			Store:    store, // the holder of cnm/v1/gossip/cnm/rotation-lock drives rotations
			Logger:   slog.New(slog.DiscardHandler),
		}
	}
	first := config("host-a")
	first.Keys = [][]byte{key} // bootstraps the store's record
	a, err := gossip.New(first)
	if err != nil {
		log.Fatal(err)
	}
	defer a.Close()
	b, err := gossip.New(config("host-b")) // no keys, no keyring file: the store's
	if err != nil {
		log.Fatal(err)
	}
	defer b.Close()
	fmt.Println("same primary key:", b.KeyringStatus().Primary == a.KeyringStatus().Primary)
	// Output:
	// same primary key: true
}

// The keyring record in the store sealed with a key-encryption key: every member is given the
// KEK; a node with another one does not start.
func ExampleConfig_storeKEK() {
	dir, err := os.MkdirTemp("", "gossip-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	store, err := boltdb.Open(filepath.Join(dir, "cnm.db"), boltdb.Config{})
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()
	key, err := gossip.NewKey()
	if err != nil {
		log.Fatal(err)
	}
	kek := make([]byte, gossip.KEKLen) // in practice: from a secret manager, never from the store
	if _, err := rand.Read(kek); err != nil {
		log.Fatal(err)
	}
	config := func(name string, kek []byte) gossip.Config {
		return gossip.Config{NodeName: name, BindAddr: netip.MustParseAddr("127.0.0.1"), Store: store,
			StoreKEK: kek, Logger: slog.New(slog.DiscardHandler)}
	}
	first := config("host-a", kek)
	first.Keys = [][]byte{key} // bootstraps the store's record, sealed
	a, err := gossip.New(first)
	if err != nil {
		log.Fatal(err)
	}
	defer a.Close()
	b, err := gossip.New(config("host-b", kek)) // the store's keys, opened with the KEK
	if err != nil {
		log.Fatal(err)
	}
	defer b.Close()
	fmt.Println("same primary key:", b.KeyringStatus().Primary == a.KeyringStatus().Primary)
	_, err = gossip.New(config("host-c", make([]byte, gossip.KEKLen)))
	fmt.Println("another KEK:", errors.Is(err, gossip.ErrKEK))
	// Output:
	// same primary key: true
	// another KEK: true
}
