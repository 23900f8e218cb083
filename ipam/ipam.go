// Package ipam is cnm's IP address management: the Allocator contract the Controller uses,
// Default, the built-in in-memory allocator, and Global, an allocator whose state lives in a
// shared key-value store so that several hosts draw from one address space.
//
// A pool is a subnet handed to one network. Inside it, addresses are requested and released.
// Default keeps its state in memory only: the Controller rebuilds it on start by replaying the
// pools and addresses its stored networks and endpoints hold, so a lease is stored once (in the
// endpoint record) and never leaks. Global keeps its state in a [GlobalStore] with
// compare-and-swap; the package ipam/ipamkv adapts a kvstore.Store to it.
//
// Beyond the required [Allocator] methods, an allocator may have optional capabilities, which
// callers check with a type assertion: [OptionsAllocator] (address options such as a
// MAC-derived IPv6 address), [Reconciler] (free every lease a caller no longer holds) and
// [Statuser] (pool usage). Default and Global have all three.
//
// An Allocator is safe for concurrent use. Default needs no privileges and does no I/O; Global
// does I/O only through its store.
package ipam

import (
	"context"
	"errors"
	"fmt"
	"net"
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
	return PoolID(string(s) + "/" + p.Masked().String())
}

// PoolRequest asks for a pool.
type PoolRequest struct {
	// Space is the address space; "" means the allocator's own: LocalSpace for [Default],
	// GlobalSpace for [Global].
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
	// addresses). An explicit Subnet is not checked against them: an operator who names a
	// subnet may know better than the host's routing table. Prefixes are masked first.
	Exclude []netip.Prefix
	// Reserved lists prefixes, each with the owner to name in errors, that no pool may
	// overlap: an auto-picked subnet avoids them, and an explicit Subnet that overlaps one
	// fails with an [*OverlapError] whose Owner is the reservation's. Use it for what a subnet
	// must never clash with, such as other networks' subnets kept outside this allocator or a
	// host route the operator marks as hard ("host route 10.1.0.0/16 dev eth0"). Prefixes of
	// the other family are ignored; each is masked first.
	Reserved []Reservation
}

// Reservation is a prefix that pools must not overlap, and who holds it.
type Reservation struct {
	Prefix netip.Prefix
	// Owner names the holder in errors, e.g. "network web" or "host route 10.1.0.0/16 dev
	// eth0". Empty means "reserved".
	Owner string
}

// Pool is a pool handed out.
type Pool struct {
	ID     PoolID
	Subnet netip.Prefix // masked
	Range  netip.Prefix // the zero Prefix when dynamic allocation uses the whole subnet
}

// Allocator hands out pools and addresses.
type Allocator interface {
	// RequestPool reserves a pool. It fails with ErrPoolOverlap (an [*OverlapError]) when
	// Subnet overlaps a pool in the same space or a Reserved prefix, with ErrPoolExhausted
	// when no default subnet is free, and with an invalid-parameter error for a bad Subnet,
	// Range, Exclude or Reserved.
	RequestPool(ctx context.Context, req PoolRequest) (Pool, error)
	// ReleasePool frees a pool and every address in it. Releasing an unknown pool returns nil.
	ReleasePool(ctx context.Context, id PoolID) error
	// RequestAddress reserves addr in the pool, or, when addr is the zero Addr, the next free
	// address of the pool's dynamic range. It fails with ErrAddressInUse, ErrOutOfRange,
	// ErrPoolExhausted (an [*ExhaustedError]) or ErrUnknownPool. The network address and
	// (IPv4) broadcast address are never handed out.
	RequestAddress(ctx context.Context, id PoolID, addr netip.Addr) (netip.Addr, error)
	// ReleaseAddress frees addr. Releasing a free address returns nil.
	ReleaseAddress(ctx context.Context, id PoolID, addr netip.Addr) error
}

// AddressOptions are per-request options of [OptionsAllocator.RequestAddressWithOptions]. The
// zero value asks for nothing more than RequestAddress does.
type AddressOptions struct {
	// MAC, if set, asks for the modified EUI-64 address derived from it (RFC 4291 appendix A)
	// when addr is the zero Addr and the pool is IPv6 with a dynamic prefix (its Range, or
	// its subnet) of length 64 or less: the first 64 bits of that prefix followed by the
	// interface identifier of MAC. It is a preference: when that address is taken, or the pool
	// is IPv4 or its dynamic prefix longer than /64, the next free dynamic address is handed
	// out instead. MAC must be 6 (EUI-48) or 8 (EUI-64) bytes long.
	MAC net.HardwareAddr
}

// OptionsAllocator is an optional capability of an [Allocator]: address requests with
// [AddressOptions].
type OptionsAllocator interface {
	// RequestAddressWithOptions is RequestAddress with options. A valid addr is a static
	// request and opts are not used. It fails as RequestAddress does, and with an
	// invalid-parameter error for a malformed option (field "mac").
	RequestAddressWithOptions(ctx context.Context, id PoolID, addr netip.Addr, opts AddressOptions) (netip.Addr, error)
}

// Reconciler is an optional capability of an [Allocator]: garbage collection of leases, with the
// semantics of CNI's GC.
type Reconciler interface {
	// Reconcile frees every allocated address of pool id that is not in live and returns the
	// addresses it freed, in ascending order (nil when none). Addresses of live that are not
	// allocated, or not in the pool, are ignored: Reconcile never allocates.
	//
	// Reconcile knows nothing of gateways or auxiliary addresses: the caller includes them in
	// live, or they are freed like any other lease. For a pool shared by several hosts, live
	// must hold the addresses every host still uses. An address requested while Reconcile
	// runs and missing from live may be freed too, so run it while the pool is quiet, e.g. on
	// start before serving requests.
	//
	// It fails with [ErrUnknownPool], ctx's error, or, for an allocator with a store, the
	// store's error; on error some of the non-live leases may have been freed already, and a
	// later call finishes the job.
	Reconcile(ctx context.Context, id PoolID, live []netip.Addr) (freed []netip.Addr, err error)
}

// Statuser is an optional capability of an [Allocator]: pool usage.
type Statuser interface {
	// Usage reports the size of pool id, the number of addresses that can be allocated in its
	// subnet (all but the network address and, for IPv4, the broadcast address; saturating
	// at math.MaxUint64), and how many of them are allocated, statically or dynamically. It
	// fails with [ErrUnknownPool] or ctx's error.
	Usage(ctx context.Context, id PoolID) (size uint64, inUse int, err error)
}

// ExhaustedError reports that a dynamic address request found no free address. It matches
// [ErrPoolExhausted] (and its class) with errors.Is.
type ExhaustedError struct {
	// Pool is the pool asked.
	Pool PoolID
	// Range is the prefix dynamic addresses come from: the pool's Range, or its subnet.
	Range netip.Prefix
	// Size is the number of addresses dynamic allocation may hand out in Range (its
	// network and IPv4 broadcast address left out), saturating at math.MaxUint64.
	Size uint64
	// InUse is how many of those are allocated. It equals Size unless the allocator's view
	// was momentarily out of date (a Global racing with other hosts).
	InUse int
}

func (e *ExhaustedError) Error() string {
	return fmt.Sprintf("%v: %d of %d addresses of %s in use in pool %s", ErrPoolExhausted, e.InUse, e.Size, e.Range, e.Pool)
}

// Is reports whether target is [ErrPoolExhausted] or its class.
func (e *ExhaustedError) Is(target error) bool {
	return target == ErrPoolExhausted || errors.Is(ErrPoolExhausted, target)
}

// OverlapError reports that a requested subnet overlaps a pool or a [Reservation]. It matches
// [ErrPoolOverlap] (and its class) with errors.Is.
type OverlapError struct {
	// Requested is the subnet asked for.
	Requested netip.Prefix
	// With is the prefix it overlaps: the other pool's subnet, or the reserved prefix.
	With netip.Prefix
	// Pool is the other pool, or "" when With is a reservation.
	Pool PoolID
	// Owner names what holds With: the other pool's ID, or the [Reservation]'s Owner.
	Owner string
}

func (e *OverlapError) Error() string {
	owner := e.Owner
	switch {
	case e.Pool != "":
		owner = "pool " + string(e.Pool)
	case owner == "":
		owner = "reserved"
	}
	return fmt.Sprintf("%v: %s overlaps %s (%s)", ErrPoolOverlap, e.Requested, e.With, owner)
}

// Is reports whether target is [ErrPoolOverlap] or its class.
func (e *OverlapError) Is(target error) bool {
	return target == ErrPoolOverlap || errors.Is(ErrPoolOverlap, target)
}
