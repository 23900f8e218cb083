package ipam_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/cnmkit/cnm/ipam"
)

// A network asks for a pool with the subnet left to the allocator, then for a gateway and two
// container addresses.
func Example() {
	ctx := context.Background()
	a, err := ipam.NewDefault(ipam.DefaultConfig{}) // Docker's default pools
	if err != nil {
		panic(err)
	}
	pool, err := a.RequestPool(ctx, ipam.PoolRequest{
		Exclude: []netip.Prefix{netip.MustParsePrefix("172.17.0.1/16")}, // the host's docker0
	})
	if err != nil {
		panic(err)
	}
	fmt.Println(pool.ID)

	gw, _ := a.RequestAddress(ctx, pool.ID, netip.Addr{})
	c1, _ := a.RequestAddress(ctx, pool.ID, netip.Addr{})
	_ = a.ReleaseAddress(ctx, pool.ID, c1)
	c2, _ := a.RequestAddress(ctx, pool.ID, netip.Addr{}) // c1 is not reused at once
	fmt.Println(gw, c1, c2)

	size, inUse, _ := a.Usage(ctx, pool.ID)
	fmt.Println(size, inUse)
	// Output:
	// local/172.18.0.0/16
	// 172.18.0.1 172.18.0.2 172.18.0.3
	// 65534 2
}

// An explicit subnet with a range for dynamic addresses; static addresses may lie outside the
// range. Errors are matched with errors.Is.
func ExampleDefault_RequestPool() {
	ctx := context.Background()
	a, _ := ipam.NewDefault(ipam.DefaultConfig{})
	pool, err := a.RequestPool(ctx, ipam.PoolRequest{
		Subnet: netip.MustParsePrefix("10.10.0.0/24"),
		Range:  netip.MustParsePrefix("10.10.0.128/25"),
	})
	if err != nil {
		panic(err)
	}
	dyn, _ := a.RequestAddress(ctx, pool.ID, netip.Addr{})
	static, _ := a.RequestAddress(ctx, pool.ID, netip.MustParseAddr("10.10.0.2"))
	fmt.Println(dyn, static)

	_, err = a.RequestPool(ctx, ipam.PoolRequest{Subnet: netip.MustParsePrefix("10.10.0.0/16")})
	fmt.Println(errors.Is(err, ipam.ErrPoolOverlap))
	fmt.Println(err)
	if oe, ok := errors.AsType[*ipam.OverlapError](err); ok {
		fmt.Println(oe.With, oe.Pool)
	}

	_, err = a.RequestAddress(ctx, pool.ID, netip.MustParseAddr("10.10.0.2"))
	fmt.Println(errors.Is(err, ipam.ErrAddressInUse))
	// Output:
	// 10.10.0.128 10.10.0.2
	// true
	// ipam: request pool 10.10.0.0/16 in space local: ipam: pool overlaps: 10.10.0.0/16 overlaps 10.10.0.0/24 (pool local/10.10.0.0/24)
	// 10.10.0.0/24 local/10.10.0.0/24
	// true
}

// Reserved prefixes name their owner: an auto-picked subnet avoids them, and an explicit subnet
// that overlaps one fails with an error that says whose it is.
func ExampleReservation() {
	ctx := context.Background()
	a, _ := ipam.NewDefault(ipam.DefaultConfig{
		PoolsV4: []ipam.DefaultPool{{Base: netip.MustParsePrefix("10.0.0.0/8"), Size: 16}},
	})
	hostRoutes := []ipam.Reservation{
		{Prefix: netip.MustParsePrefix("10.0.0.0/16"), Owner: "host route 10.0.0.0/16 dev eth0"},
		{Prefix: netip.MustParsePrefix("10.1.0.0/16"), Owner: "host route 10.1.0.0/16 dev tun0"},
	}
	p, _ := a.RequestPool(ctx, ipam.PoolRequest{Reserved: hostRoutes})
	fmt.Println(p.Subnet)

	_, err := a.RequestPool(ctx, ipam.PoolRequest{Subnet: netip.MustParsePrefix("10.1.2.0/24"), Reserved: hostRoutes})
	if oe, ok := errors.AsType[*ipam.OverlapError](err); ok {
		fmt.Println(oe.Owner)
	}
	fmt.Println(err)
	// Output:
	// 10.2.0.0/16
	// host route 10.1.0.0/16 dev tun0
	// ipam: request pool 10.1.2.0/24 in space local: ipam: pool overlaps: 10.1.2.0/24 overlaps 10.1.0.0/16 (host route 10.1.0.0/16 dev tun0)
}

// A dynamic request that finds the pool full says how full it is.
func ExampleExhaustedError() {
	ctx := context.Background()
	a, _ := ipam.NewDefault(ipam.DefaultConfig{})
	p, _ := a.RequestPool(ctx, ipam.PoolRequest{Subnet: netip.MustParsePrefix("10.0.0.0/30")})
	for {
		_, err := a.RequestAddress(ctx, p.ID, netip.Addr{})
		if ee, ok := errors.AsType[*ipam.ExhaustedError](err); ok {
			fmt.Println(ee.Pool, ee.Size, ee.InUse)
			fmt.Println(errors.Is(err, ipam.ErrPoolExhausted))
			break
		}
	}
	// Output:
	// local/10.0.0.0/30 2 2
	// true
}

// A container's IPv6 address derived from its MAC address, when the pool is a /64.
func ExampleOptionsAllocator() {
	ctx := context.Background()
	var a ipam.Allocator
	a, _ = ipam.NewDefault(ipam.DefaultConfig{})
	p, _ := a.RequestPool(ctx, ipam.PoolRequest{Subnet: netip.MustParsePrefix("fd00:1::/64")})
	if oa, ok := a.(ipam.OptionsAllocator); ok {
		mac, _ := net.ParseMAC("02:42:ac:11:00:02")
		addr, _ := oa.RequestAddressWithOptions(ctx, p.ID, netip.Addr{}, ipam.AddressOptions{MAC: mac})
		fmt.Println(addr)
	}
	// Output:
	// fd00:1::42:acff:fe11:2
}

// Custom default pools, like Docker's default-address-pools setting.
func ExampleNewDefault() {
	ctx := context.Background()
	a, err := ipam.NewDefault(ipam.DefaultConfig{
		PoolsV4: []ipam.DefaultPool{{Base: netip.MustParsePrefix("10.200.0.0/16"), Size: 24}},
		PoolsV6: []ipam.DefaultPool{{Base: netip.MustParsePrefix("fd12:3456:789a::/48"), Size: 64}},
	})
	if err != nil {
		panic(err)
	}
	for _, v6 := range []bool{false, false, true} {
		p, _ := a.RequestPool(ctx, ipam.PoolRequest{V6: v6})
		fmt.Println(p.Subnet)
	}

	_, err = ipam.NewDefault(ipam.DefaultConfig{
		PoolsV4: []ipam.DefaultPool{{Base: netip.MustParsePrefix("10.200.0.0/16"), Size: 8}},
	})
	fmt.Println(err)
	// Output:
	// 10.200.0.0/24
	// 10.200.1.0/24
	// fd12:3456:789a::/64
	// ipam: new default allocator: invalid PoolsV4[0].Size "8": must be from 16 (the base's prefix length) to 32
}
