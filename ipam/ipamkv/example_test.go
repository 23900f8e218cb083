package ipamkv_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/cnmkit/cnm/ipam"
	"github.com/cnmkit/cnm/ipam/ipamkv"
	"github.com/cnmkit/cnm/kvstore/boltdb"
)

// Two Globals on one store, as two hosts would be: the second sees the first's pool and
// addresses.
func ExampleNewGlobal() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "ipamkv")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	store, err := boltdb.Open(filepath.Join(dir, "global.db"), boltdb.Config{})
	if err != nil {
		panic(err)
	}
	defer store.Close()

	host1, _ := ipamkv.NewGlobal(store, ipam.GlobalConfig{})
	host2, _ := ipamkv.NewGlobal(store, ipam.GlobalConfig{})

	p1, _ := host1.RequestPool(ctx, ipam.PoolRequest{Subnet: netip.MustParsePrefix("10.20.0.0/24")})
	p2, _ := host2.RequestPool(ctx, ipam.PoolRequest{}) // auto-picked: never 10.20.0.0/24
	a1, _ := host1.RequestAddress(ctx, p1.ID, netip.Addr{})
	_, err = host2.RequestAddress(ctx, p1.ID, a1)
	fmt.Println(p1.ID, p2.ID)
	fmt.Println(a1, err)
	// Output:
	// global/10.20.0.0/24 global/172.17.0.0/16
	// 10.20.0.1 ipam: request address 10.20.0.1 in pool global/10.20.0.0/24: ipam: address in use
}
