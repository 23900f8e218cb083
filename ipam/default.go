package ipam

import (
	"context"
	"fmt"
	"math/bits"
	"net/netip"
	"sync"

	"github.com/cnmkit/cnm/internal/errclass"
)

// DefaultPool is a base prefix that [Default] splits into subnets of Size bits when a
// [PoolRequest] leaves Subnet zero, like an entry of Docker's default-address-pools: Base
// 172.17.0.0/16 with Size 16 hands out 172.17.0.0/16 itself, Base 10.0.0.0/8 with Size 24 hands
// out 10.0.0.0/24, 10.0.1.0/24, and so on.
type DefaultPool struct {
	// Base is the prefix subnets are carved from. It must be masked (no host bits set) and of
	// the family of the list it is in.
	Base netip.Prefix
	// Size is the prefix length of each subnet handed out, from Base.Bits() to 32 (IPv4) or
	// 128 (IPv6).
	Size int
}

// DefaultConfig configures [Default]. The zero value is ready to use.
type DefaultConfig struct {
	// PoolsV4 are the IPv4 bases auto-picked subnets come from, tried in order. Empty means
	// [DefaultPoolsV4].
	PoolsV4 []DefaultPool
	// PoolsV6 are the IPv6 bases auto-picked subnets come from, tried in order. Empty means
	// [DefaultPoolsV6].
	PoolsV6 []DefaultPool
}

// DefaultPoolsV4 returns the IPv4 default pools used when [DefaultConfig].PoolsV4 is empty:
// Docker's order (172.17.0.0/16, 172.18.0.0/15, 172.20.0.0/14 and 172.24.0.0/13 as /16s,
// 192.168.0.0/16 as /20s), then 10.0.0.0/8 as /24s. The slice is a new copy on each call.
func DefaultPoolsV4() []DefaultPool {
	return []DefaultPool{
		{Base: netip.MustParsePrefix("172.17.0.0/16"), Size: 16},
		{Base: netip.MustParsePrefix("172.18.0.0/15"), Size: 16},
		{Base: netip.MustParsePrefix("172.20.0.0/14"), Size: 16},
		{Base: netip.MustParsePrefix("172.24.0.0/13"), Size: 16},
		{Base: netip.MustParsePrefix("192.168.0.0/16"), Size: 20},
		{Base: netip.MustParsePrefix("10.0.0.0/8"), Size: 24},
	}
}

// DefaultPoolsV6 returns the IPv6 default pools used when [DefaultConfig].PoolsV6 is empty:
// the unique local range fd00::/8 as /64s, so the first auto-picked subnet is fd00::/64, the
// next fd00:0:0:1::/64. These are deterministic, not the random 40-bit Global ID RFC 4193
// recommends, so two hosts pick the same subnets; a deployment that routes between hosts should
// set [DefaultConfig].PoolsV6 to its own fdXX:XXXX:XXXX::/48. The slice is a new copy on each
// call.
func DefaultPoolsV6() []DefaultPool {
	return []DefaultPool{
		{Base: netip.MustParsePrefix("fd00::/8"), Size: 64},
	}
}

// Families, as indexes.
const (
	famV4 = 0
	famV6 = 1
)

func famOf(p netip.Prefix) int {
	if p.Addr().Is4() {
		return famV4
	}
	return famV6
}

func famName(fam int) string {
	if fam == famV4 {
		return "IPv4"
	}
	return "IPv6"
}

// Default is the built-in [Allocator]. It keeps its pools and addresses in memory only.
//
// Auto-picked subnets come from the default pools of [DefaultConfig], first fit: the first
// subnet, in the order of the bases, that overlaps no pool of the same space and no excluded
// prefix. Pools and exclusions are skipped over as whole ranges, so the cost of a pick grows with
// the number of pools, not with the number of candidate subnets.
//
// Dynamic addresses are handed out in order from the one after the last handed out, wrapping at
// the end of the range, so a released address is not reused at once. The allocated addresses of
// a pool are kept in a sparse bitmap of 4096-address chunks that exist only while one of their
// addresses is allocated (and the one the next search starts in), so memory grows with the
// addresses in use, not with the size of the subnet: an IPv6 /64 costs nothing until used, and a
// full IPv4 /8 about 2.2 MiB. A search for a free address skips runs of full chunks in one step,
// so a request takes O(log n) time even in a nearly full pool, and a release O(1) (O(log n) when
// it frees a full chunk).
//
// Releases converge: releasing an unknown pool, or a free address of a known pool, returns nil.
// Releasing an address of an unknown pool is reported with [ErrUnknownPool], as it most likely
// names the wrong pool; a caller cleaning up may ignore it with errors.Is.
//
// Default is safe for concurrent use: one mutex guards all state. It does no I/O; ctx is
// checked once on entry, and a canceled ctx fails the call before it changes anything.
type Default struct {
	bases [2][]DefaultPool // by family; immutable after NewDefault

	mu     sync.Mutex // guards following, and the mutable fields of each pool
	pools  map[PoolID]*pool
	spaces map[AddressSpace]*[2]ivalSet // by family: the union of the subnets of the space's pools
}

var (
	_ Allocator        = (*Default)(nil)
	_ OptionsAllocator = (*Default)(nil)
	_ Reconciler       = (*Default)(nil)
	_ Statuser         = (*Default)(nil)
)

// NewDefault returns a Default with no pools. It fails with an invalid-parameter error
// ([errclass.InvalidParameterError] naming the field, e.g. "PoolsV4[2].Size") when a default pool
// has an invalid, unmasked or wrong-family Base, or a Size outside Base.Bits() to 32 or 128.
func NewDefault(cfg DefaultConfig) (*Default, error) {
	bases, err := checkBases(cfg.PoolsV4, cfg.PoolsV6)
	if err != nil {
		return nil, fmt.Errorf("ipam: new default allocator: %w", err)
	}
	return &Default{
		bases:  bases,
		pools:  make(map[PoolID]*pool),
		spaces: make(map[AddressSpace]*[2]ivalSet),
	}, nil
}

// checkDefaultPool validates dp for family fam; the error's Field is "Base" or "Size".
func checkDefaultPool(fam int, dp DefaultPool) *errclass.InvalidParameterError {
	b := dp.Base
	switch {
	case !b.IsValid():
		return &errclass.InvalidParameterError{Field: "Base", Value: b.String(), Reason: "not a valid prefix"}
	case famOf(b) != fam:
		return &errclass.InvalidParameterError{Field: "Base", Value: b.String(), Reason: "not an " + famName(fam) + " prefix"}
	case b != b.Masked():
		return &errclass.InvalidParameterError{Field: "Base", Value: b.String(),
			Reason: fmt.Sprintf("host bits set (did you mean %s?)", b.Masked())}
	case dp.Size < b.Bits() || dp.Size > b.Addr().BitLen():
		return &errclass.InvalidParameterError{Field: "Size", Value: fmt.Sprint(dp.Size),
			Reason: fmt.Sprintf("must be from %d (the base's prefix length) to %d", b.Bits(), b.Addr().BitLen())}
	}
	return nil
}

// chunkBits is log2 of the number of addresses one bitmap chunk covers.
const (
	chunkBits = 12
	chunkSize = 1 << chunkBits
)

// chunk marks which of chunkSize consecutive offsets are allocated.
type chunk [chunkSize / 64]uint64

var fullChunk = func() (c chunk) {
	for i := range c {
		c[i] = ^uint64(0)
	}
	return c
}()

// pool is a pool handed out. Offsets are relative to the subnet's first address.
type pool struct {
	// Immutable after creation.
	id     PoolID
	space  AddressSpace
	subnet netip.Prefix // masked
	rng    netip.Prefix // zero when the dynamic range is the whole subnet
	is4    bool
	base   u128 // the subnet's first address
	last   u128 // offset of the subnet's last address
	lo, hi u128 // offsets of the first and last dynamic address, reserved ones left out
	dynCap u128 // number of dynamic addresses, hi-lo+1; 0 when there are none (lo, hi unused)

	// Guarded by Default.mu.
	next    u128   // offset the next dynamic search starts at, in [lo, hi]
	inUse   int    // allocated addresses
	inRange uint64 // allocated addresses in [lo, hi]
	// chunks maps offset>>chunkBits to its bitmap; an absent chunk is all free. Only the chunk
	// holding next may be empty, so a request and a release in a row neither add nor drop a
	// chunk; allocNext drops it when next moves on.
	chunks map[u128]*chunk
	full   ivalSet // indexes of the chunks with every offset allocated
	lastCI u128    // index of lastC
	lastC  *chunk  // the chunk chunkAt found last, or nil
	spare  *chunk  // a dropped chunk, zeroed, for set to reuse
}

func newPool(space AddressSpace, subnet, rng netip.Prefix) *pool {
	p := &pool{
		id:     MakePoolID(space, subnet),
		space:  space,
		subnet: subnet,
		rng:    rng,
		is4:    subnet.Addr().Is4(),
	}
	first, last := bounds(subnet)
	p.base, p.last = first, last.sub(first)
	if p.last.isZero() {
		return p // a single address: the network address, never handed out
	}
	lo, hi := u128{}, p.last
	if rng.IsValid() {
		f, l := bounds(rng)
		lo, hi = f.sub(first), l.sub(first)
	}
	if lo.isZero() {
		lo = u128{0, 1} // skip the network address
	}
	if p.is4 && hi == p.last {
		hi = hi.sub1() // skip the broadcast address
	}
	if !hi.less(lo) {
		p.lo, p.hi, p.next = lo, hi, lo
		p.dynCap = hi.sub(lo).add1()
	}
	return p
}

func (p *pool) info() Pool { return Pool{ID: p.id, Subnet: p.subnet, Range: p.rng} }

// dynPrefix returns the prefix dynamic addresses come from.
func (p *pool) dynPrefix() netip.Prefix {
	if p.rng.IsValid() {
		return p.rng
	}
	return p.subnet
}

// offset returns the offset of a in the subnet, or false if a is not in it.
func (p *pool) offset(a netip.Addr) (u128, bool) {
	if !p.subnet.Contains(a) {
		return u128{}, false
	}
	return fromAddr(a).sub(p.base), true
}

func (p *pool) addr(off u128) netip.Addr {
	v, _ := p.base.add(off)
	return toAddr(v, p.is4)
}

// reserved returns what is special about off ("network" or "broadcast"), or "".
func (p *pool) reserved(off u128) string {
	switch {
	case off.isZero():
		return "network"
	case p.is4 && off == p.last:
		return "broadcast"
	}
	return ""
}

func (p *pool) inDyn(off u128) bool {
	return !p.dynCap.isZero() && !off.less(p.lo) && !p.hi.less(off)
}

func split(off u128) (ci u128, w int, mask uint64) {
	i := int(off.lo & (chunkSize - 1))
	return off.shr(chunkBits), i >> 6, 1 << uint(i&63)
}

// chunkAt returns the chunk with index ci, or nil. It remembers the last one found, as one
// request and release after another mostly hit the same chunk.
func (p *pool) chunkAt(ci u128) *chunk {
	if p.lastC != nil && p.lastCI == ci {
		return p.lastC
	}
	c := p.chunks[ci]
	if c != nil {
		p.lastCI, p.lastC = ci, c
	}
	return c
}

// drop removes the empty chunk c with index ci.
func (p *pool) drop(ci u128, c *chunk) {
	delete(p.chunks, ci)
	if p.lastC == c {
		p.lastC = nil
	}
	p.spare = c
}

func (p *pool) isSet(off u128) bool {
	ci, w, m := split(off)
	c := p.chunkAt(ci)
	return c != nil && c[w]&m != 0
}

// set marks the free offset off allocated.
func (p *pool) set(off u128) {
	ci, w, m := split(off)
	c := p.chunkAt(ci)
	if c == nil {
		if p.chunks == nil {
			p.chunks = make(map[u128]*chunk)
		}
		c = p.spare
		if c == nil {
			c = new(chunk)
		}
		p.spare = nil
		p.chunks[ci] = c
		p.lastCI, p.lastC = ci, c
	}
	c[w] |= m
	if c[w] == ^uint64(0) && *c == fullChunk {
		p.full.add(ci, ci)
	}
	p.inUse++
	if p.inDyn(off) {
		p.inRange++
	}
}

// clear marks the allocated offset off free, dropping its chunk when it becomes empty unless it
// holds next.
func (p *pool) clear(off u128) {
	ci, w, m := split(off)
	c := p.chunkAt(ci)
	if c[w] == ^uint64(0) && *c == fullChunk {
		p.full.remove(ci, ci)
	}
	c[w] &^= m
	p.inUse--
	if p.inDyn(off) {
		p.inRange--
	}
	if c[w] == 0 && *c == (chunk{}) && ci != p.next.shr(chunkBits) {
		p.drop(ci, c)
	}
}

// findFree returns the first free offset in [from, to]. It skips a run of full chunks in one
// step, and a chunk that is neither full nor the first or last one it looks at has a free
// offset, so it takes O(log n) for n runs of full chunks.
func (p *pool) findFree(from, to u128) (u128, bool) {
	for !to.less(from) {
		ci := from.shr(chunkBits)
		if run, ok := p.full.overlap(ci, ci); ok {
			runEnd := run.hi.shl(chunkBits).or(u128{0, chunkSize - 1}) // last offset in the run
			if !runEnd.less(to) {
				return u128{}, false
			}
			from = runEnd.add1()
			continue
		}
		c := p.chunkAt(ci)
		if c == nil {
			return from, true
		}
		cEnd := from.or(u128{0, chunkSize - 1})
		end := cEnd
		if to.less(end) {
			end = to
		}
		b, e := int(from.lo&(chunkSize-1)), int(end.lo&(chunkSize-1))
		for w := b >> 6; w <= e>>6; w++ {
			free := ^c[w]
			if w == b>>6 {
				free &= ^uint64(0) << uint(b&63)
			}
			if free == 0 {
				continue
			}
			i := w<<6 | bits.TrailingZeros64(free)
			if i > e {
				// Past end in end's own word, so end is to, not the end of the chunk.
				return u128{}, false
			}
			return u128{from.hi, from.lo&^(chunkSize-1) | uint64(i)}, true
		}
		if !cEnd.less(to) {
			return u128{}, false
		}
		from = cEnd.add1()
	}
	return u128{}, false
}

// allocNext allocates the next free dynamic offset, or returns false if there is none.
func (p *pool) allocNext() (u128, bool) {
	if p.dynCap == (u128{0, p.inRange}) {
		return u128{}, false // full, or no dynamic range at all
	}
	start := p.next
	off, ok := p.findFree(start, p.hi)
	if !ok && p.lo.less(start) {
		off, ok = p.findFree(p.lo, start.sub1())
	}
	if !ok {
		return u128{}, false // unreachable while inRange is right
	}
	p.set(off)
	old := p.next.shr(chunkBits)
	if off == p.hi {
		p.next = p.lo
	} else {
		p.next = off.add1()
	}
	if ci := p.next.shr(chunkBits); ci != old {
		if c := p.chunkAt(old); c != nil && *c == (chunk{}) {
			p.drop(old, c)
		}
	}
	return off, true
}

// RequestPool implements [Allocator]. With an explicit Subnet, the Subnet (and Range, if set)
// must be valid and masked, and the Range inside the Subnet; a Range equal to the Subnet is
// returned as the zero Prefix. A zero Subnet picks the first subnet of the default pools of the
// family V6 selects that overlaps no pool of the space and none of req.Exclude and req.Reserved
// (prefixes of the other family are ignored; each is masked first, so an interface address
// 10.1.2.3/16 excludes 10.1.0.0/16, and a default route 0.0.0.0/0 excludes everything); a Range
// then is an error. An empty Space means [LocalSpace].
//
// Errors: ctx's error; an [*OverlapError] naming the lowest pool, or else the lowest
// reservation, that an explicit Subnet overlaps; [ErrPoolExhausted]; an
// [errclass.InvalidParameterError] for "subnet", "range", "exclude[i]" or "reserved[i]".
func (d *Default) RequestPool(ctx context.Context, req PoolRequest) (Pool, error) {
	if err := ctx.Err(); err != nil {
		return Pool{}, fmt.Errorf("ipam: request pool: %w", err)
	}
	spec, err := parsePoolRequest(req, LocalSpace)
	if err != nil {
		return Pool{}, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	var used ivalSet
	if s := d.spaces[spec.space]; s != nil {
		used = s[spec.fam]
	}
	if !spec.subnet.IsValid() {
		subnet, ok := pickSubnet(d.bases[spec.fam], spec.fam, used, spec.avoid)
		if !ok {
			return Pool{}, spec.noSubnetError()
		}
		return d.addLocked(newPool(spec.space, subnet, netip.Prefix{})), nil
	}
	if _, hit := used.overlap(bounds(spec.subnet)); hit {
		other := d.overlappedLocked(spec.space, spec.subnet)
		return Pool{}, fmt.Errorf("ipam: request pool %s in space %s: %w", spec.subnet, spec.space,
			&OverlapError{Requested: spec.subnet, With: other.subnet, Pool: other.id, Owner: string(other.id)})
	}
	if oe := spec.reservedOverlap(); oe != nil {
		return Pool{}, fmt.Errorf("ipam: request pool %s in space %s: %w", spec.subnet, spec.space, oe)
	}
	return d.addLocked(newPool(spec.space, spec.subnet, spec.rng)), nil
}

// addLocked records p and returns what RequestPool returns for it.
func (d *Default) addLocked(p *pool) Pool {
	s := d.spaces[p.space]
	if s == nil {
		s = new([2]ivalSet)
		d.spaces[p.space] = s
	}
	first, last := bounds(p.subnet)
	s[famOf(p.subnet)].add(first, last)
	d.pools[p.id] = p
	return p.info()
}

// overlappedLocked returns the lowest pool of space that overlaps subnet; one exists. It runs
// only on the error path, so a scan of all pools is fine.
func (d *Default) overlappedLocked(space AddressSpace, subnet netip.Prefix) *pool {
	var best *pool
	for _, p := range d.pools {
		if p.space != space || !p.subnet.Overlaps(subnet) {
			continue
		}
		if best == nil || p.base.less(best.base) {
			best = p
		}
	}
	return best
}

// ReleasePool implements [Allocator]: it frees the pool and every address in it. Releasing an
// unknown pool returns nil. It fails only with ctx's error.
func (d *Default) ReleasePool(ctx context.Context, id PoolID) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("ipam: release pool %s: %w", id, err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	p := d.pools[id]
	if p == nil {
		return nil
	}
	delete(d.pools, id)
	s := d.spaces[p.space]
	first, last := bounds(p.subnet)
	s[famOf(p.subnet)].remove(first, last)
	if len(s[famV4]) == 0 && len(s[famV6]) == 0 {
		delete(d.spaces, p.space)
	}
	return nil
}

// RequestAddress implements [Allocator]. A static addr may be anywhere in the subnet, also
// outside the pool's Range; a dynamic one comes from Range, or the subnet when Range is zero,
// starting after the last dynamic address handed out and wrapping around.
//
// Errors: ctx's error; [ErrUnknownPool]; [ErrOutOfRange] when addr is not in the subnet (an
// IPv4-mapped address does not match an IPv4 subnet) or is its network or broadcast address;
// [ErrAddressInUse]; an [*ExhaustedError] when no dynamic address is free.
func (d *Default) RequestAddress(ctx context.Context, id PoolID, addr netip.Addr) (netip.Addr, error) {
	return d.RequestAddressWithOptions(ctx, id, addr, AddressOptions{})
}

// RequestAddressWithOptions implements [OptionsAllocator]: RequestAddress, preferring the
// EUI-64 address of opts.MAC for a dynamic request in an IPv6 pool (see [AddressOptions]). A
// preferred address is handed out like a static one: it does not move where the next dynamic
// search starts.
func (d *Default) RequestAddressWithOptions(ctx context.Context, id PoolID, addr netip.Addr, opts AddressOptions) (netip.Addr, error) {
	if err := ctx.Err(); err != nil {
		return netip.Addr{}, fmt.Errorf("ipam: request address in pool %s: %w", id, err)
	}
	if err := checkMAC(id, opts); err != nil {
		return netip.Addr{}, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	p := d.pools[id]
	if p == nil {
		return netip.Addr{}, fmt.Errorf("ipam: request address in pool %s: %w", id, ErrUnknownPool)
	}
	if !addr.IsValid() {
		if len(opts.MAC) != 0 {
			if off, ok := p.eui64Offset(opts.MAC); ok && !p.isSet(off) {
				p.set(off)
				return p.addr(off), nil
			}
		}
		off, ok := p.allocNext()
		if !ok {
			return netip.Addr{}, fmt.Errorf("ipam: request address in pool %s: %w", id, p.exhausted())
		}
		return p.addr(off), nil
	}
	off, err := p.staticOffset(addr)
	if err != nil {
		return netip.Addr{}, err
	}
	if p.isSet(off) {
		return netip.Addr{}, fmt.Errorf("ipam: request address %s in pool %s: %w", addr, id, ErrAddressInUse)
	}
	p.set(off)
	return addr, nil
}

// ReleaseAddress implements [Allocator]. Releasing a free address of the subnet, including its
// network and broadcast address, returns nil.
//
// Errors: ctx's error; an [errclass.InvalidParameterError] for the zero addr; [ErrUnknownPool];
// [ErrOutOfRange] when addr is not in the subnet.
func (d *Default) ReleaseAddress(ctx context.Context, id PoolID, addr netip.Addr) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("ipam: release address %s in pool %s: %w", addr, id, err)
	}
	if !addr.IsValid() {
		return fmt.Errorf("ipam: release address in pool %s: %w", id,
			errclass.Invalid("addr", addr.String(), "no address given"))
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	p := d.pools[id]
	if p == nil {
		return fmt.Errorf("ipam: release address %s in pool %s: %w", addr, id, ErrUnknownPool)
	}
	off, ok := p.offset(addr)
	if !ok {
		return fmt.Errorf("ipam: release address %s in pool %s: not in subnet %s: %w",
			addr, id, p.subnet, ErrOutOfRange)
	}
	if p.isSet(off) {
		p.clear(off)
	}
	return nil
}

// Reconcile implements [Reconciler]: it frees every allocated address of pool id not in live
// and returns them in ascending order. It takes O(n + k) for n allocated addresses and k live
// ones. Errors: ctx's error; [ErrUnknownPool].
func (d *Default) Reconcile(ctx context.Context, id PoolID, live []netip.Addr) ([]netip.Addr, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("ipam: reconcile pool %s: %w", id, err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	p := d.pools[id]
	if p == nil {
		return nil, fmt.Errorf("ipam: reconcile pool %s: %w", id, ErrUnknownPool)
	}
	keep := make(map[u128]struct{}, len(live))
	for _, a := range live {
		if off, ok := p.offset(a); ok {
			keep[off] = struct{}{}
		}
	}
	var drop []u128
	p.setBits(func(off u128) {
		if _, ok := keep[off]; !ok {
			drop = append(drop, off)
		}
	})
	var freed []netip.Addr
	for _, off := range drop {
		p.clear(off)
		freed = append(freed, p.addr(off))
	}
	return freed, nil
}

// Usage implements [Statuser]. Errors: ctx's error; [ErrUnknownPool].
func (d *Default) Usage(ctx context.Context, id PoolID) (size uint64, inUse int, err error) {
	if err := ctx.Err(); err != nil {
		return 0, 0, fmt.Errorf("ipam: usage of pool %s: %w", id, err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	p := d.pools[id]
	if p == nil {
		return 0, 0, fmt.Errorf("ipam: usage of pool %s: %w", id, ErrUnknownPool)
	}
	return p.size(), p.inUse, nil
}
