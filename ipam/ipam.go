// Package ipam is cnm's IP address management: the Allocator contract the Controller uses, and
// Default, the built-in allocator.
//
// A pool is a subnet handed to one network. Inside it, addresses are requested and released.
// Default keeps its state in memory only: the Controller rebuilds it on start by replaying the
// pools and addresses its stored networks and endpoints hold, so a lease is stored once (in the
// endpoint record) and never leaks.
//
// An Allocator is safe for concurrent use.
package ipam

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/cnmkit/cnm/internal/errclass"
)

// Sentinel errors callers branch on. Each also matches its class.
var (
	// ErrPoolExhausted: no free address in the pool (or no free subnet in the default pools).
	ErrPoolExhausted = errclass.Sentinel("ipam: pool exhausted", errclass.ErrUnavailable)
	// ErrPoolOverlap: the requested subnet overlaps a pool in use or an excluded prefix.
	ErrPoolOverlap = errclass.Sentinel("ipam: pool overlaps", errclass.ErrConflict)
	// ErrAddressInUse: the requested address is taken.
	ErrAddressInUse = errclass.Sentinel("ipam: address in use", errclass.ErrConflict)
	// ErrOutOfRange: the requested address is not in the pool, or is reserved (network or broadcast).
	ErrOutOfRange = errclass.Sentinel("ipam: address out of range", errclass.ErrInvalidParameter)
	// ErrUnknownPool: no pool with that ID.
	ErrUnknownPool = errclass.Sentinel("ipam: unknown pool", errclass.ErrNotFound)
)

// AddressSpace names a set of pools that must not overlap.
type AddressSpace string

const (
	// LocalSpace holds pools of local-scope networks (one host).
	LocalSpace AddressSpace = "local"
	// GlobalSpace holds pools of global-scope networks (all hosts).
	GlobalSpace AddressSpace = "global"
)

// PoolID identifies a pool: "<space>/<prefix>", e.g. "local/10.10.0.0/24".
type PoolID string

// MakePoolID returns the ID of the pool for prefix p in space s.
func MakePoolID(s AddressSpace, p netip.Prefix) PoolID {
	return PoolID(fmt.Sprintf("%s/%s", s, p.Masked()))
}

// PoolRequest asks for a pool.
type PoolRequest struct {
	// Space is the address space; "" means LocalSpace.
	Space AddressSpace
	// Subnet is the pool wanted. The zero Prefix asks the allocator to pick a free subnet from
	// its default pools for the family given by V6.
	Subnet netip.Prefix
	// Range, if valid, limits dynamic allocation to this sub-prefix of Subnet; static requests
	// may still use the whole subnet.
	Range netip.Prefix
	// V6 selects the family when Subnet is zero.
	V6 bool
	// Exclude lists prefixes an auto-picked subnet must not overlap (the host's routes and
	// addresses). An explicit Subnet is checked against other pools only.
	Exclude []netip.Prefix
}

// Pool is a pool handed out.
type Pool struct {
	ID     PoolID
	Subnet netip.Prefix // masked
	Range  netip.Prefix // the zero Prefix when dynamic allocation uses the whole subnet
}

// Allocator hands out pools and addresses.
type Allocator interface {
	// RequestPool reserves a pool. It fails with ErrPoolOverlap when Subnet overlaps a pool in
	// the same space, with ErrPoolExhausted when no default subnet is free, and with an
	// invalid-parameter error for a bad Subnet or Range.
	RequestPool(ctx context.Context, req PoolRequest) (Pool, error)
	// ReleasePool frees a pool and every address in it. Releasing an unknown pool returns nil.
	ReleasePool(ctx context.Context, id PoolID) error
	// RequestAddress reserves addr in the pool, or, when addr is the zero Addr, the next free
	// address of the pool's dynamic range. It fails with ErrAddressInUse, ErrOutOfRange,
	// ErrPoolExhausted or ErrUnknownPool. The network address and (IPv4) broadcast address are
	// never handed out.
	RequestAddress(ctx context.Context, id PoolID, addr netip.Addr) (netip.Addr, error)
	// ReleaseAddress frees addr. Releasing a free address returns nil.
	ReleaseAddress(ctx context.Context, id PoolID, addr netip.Addr) error
}
