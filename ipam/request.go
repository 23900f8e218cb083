package ipam

import (
	"fmt"
	"math/bits"
	"net"
	"net/netip"
	"slices"

	"github.com/cnmkit/cnm/internal/errclass"
)

// This file holds what Default and Global share above the bitmap of a pool: the validation of a
// PoolRequest, first-fit subnet picking, and the checks of an address request.

// poolSpec is a validated [PoolRequest].
type poolSpec struct {
	space  AddressSpace
	fam    int
	subnet netip.Prefix // masked; the zero Prefix asks for an auto-picked subnet
	rng    netip.Prefix // masked, inside subnet, never equal to it; zero when none
	// avoid holds the Exclude and Reserved prefixes of fam, for an auto-pick.
	avoid ivalSet
	// reserved holds the Reserved entries of fam, masked, in the order given.
	reserved []Reservation
}

// parsePoolRequest validates req. An empty Space becomes defSpace. Errors are wrapped as
// RequestPool returns them.
func parsePoolRequest(req PoolRequest, defSpace AddressSpace) (poolSpec, error) {
	spec := poolSpec{space: req.Space}
	if spec.space == "" {
		spec.space = defSpace
	}
	auto := req.Subnet == (netip.Prefix{})
	if auto {
		spec.fam = famV4
		if req.V6 {
			spec.fam = famV6
		}
		if req.Range != (netip.Prefix{}) {
			return poolSpec{}, fmt.Errorf("ipam: request %s pool in space %s: %w", famName(spec.fam), spec.space,
				errclass.Invalid("range", req.Range.String(), "a range needs an explicit subnet"))
		}
	} else {
		subnet, rng := req.Subnet, req.Range
		if err := checkPrefix("subnet", subnet); err != nil {
			return poolSpec{}, fmt.Errorf("ipam: request pool in space %s: %w", spec.space, err)
		}
		if rng != (netip.Prefix{}) {
			if err := checkPrefix("range", rng); err != nil {
				return poolSpec{}, fmt.Errorf("ipam: request pool %s in space %s: %w", subnet, spec.space, err)
			}
			if famOf(rng) != famOf(subnet) || rng.Bits() < subnet.Bits() || !subnet.Contains(rng.Addr()) {
				return poolSpec{}, fmt.Errorf("ipam: request pool %s in space %s: %w", subnet, spec.space,
					errclass.Invalid("range", rng.String(), "not inside subnet "+subnet.String()))
			}
			if rng == subnet {
				rng = netip.Prefix{}
			}
		}
		spec.fam, spec.subnet, spec.rng = famOf(subnet), subnet, rng
	}
	what := func() string {
		if auto {
			return fmt.Sprintf("ipam: request %s pool in space %s", famName(spec.fam), spec.space)
		}
		return fmt.Sprintf("ipam: request pool %s in space %s", spec.subnet, spec.space)
	}
	for i, x := range req.Exclude {
		if !x.IsValid() {
			return poolSpec{}, fmt.Errorf("%s: %w", what(),
				errclass.Invalid(fmt.Sprintf("exclude[%d]", i), x.String(), "not a valid prefix"))
		}
		if auto && famOf(x) == spec.fam {
			spec.avoid.add(bounds(x))
		}
	}
	for i, r := range req.Reserved {
		if !r.Prefix.IsValid() {
			return poolSpec{}, fmt.Errorf("%s: %w", what(),
				errclass.Invalid(fmt.Sprintf("reserved[%d]", i), r.Prefix.String(), "not a valid prefix"))
		}
		if famOf(r.Prefix) != spec.fam {
			continue
		}
		r.Prefix = r.Prefix.Masked()
		spec.reserved = append(spec.reserved, r)
		if auto {
			spec.avoid.add(bounds(r.Prefix))
		}
	}
	return spec, nil
}

// checkPrefix reports an invalid or unmasked prefix as an invalid-parameter error for field.
func checkPrefix(field string, p netip.Prefix) error {
	if !p.IsValid() {
		return errclass.Invalid(field, p.String(), "not a valid prefix")
	}
	if p != p.Masked() {
		return errclass.Invalid(field, p.String(), fmt.Sprintf("host bits set (did you mean %s?)", p.Masked()))
	}
	return nil
}

// reservedOverlap returns the error for the lowest Reserved prefix that the explicit subnet of
// spec overlaps, or nil.
func (spec *poolSpec) reservedOverlap() *OverlapError {
	var best *Reservation
	for i := range spec.reserved {
		r := &spec.reserved[i]
		if !r.Prefix.Overlaps(spec.subnet) {
			continue
		}
		if best == nil || r.Prefix.Addr().Less(best.Prefix.Addr()) ||
			(r.Prefix.Addr() == best.Prefix.Addr() && r.Prefix.Bits() < best.Prefix.Bits()) {
			best = r
		}
	}
	if best == nil {
		return nil
	}
	return &OverlapError{Requested: spec.subnet, With: best.Prefix, Owner: best.Owner}
}

// noSubnetError is the error of an auto-pick that found no free subnet.
func (spec *poolSpec) noSubnetError() error {
	return fmt.Errorf("ipam: request %s pool in space %s: no free subnet in the default pools: %w",
		famName(spec.fam), spec.space, ErrPoolExhausted)
}

// pickSubnet returns the first subnet of the default pools bases (of family fam) that meets
// neither used nor avoid.
//
// A candidate that meets an interval is not followed by its neighbour but by the first candidate
// after the end of that interval, so each step passes at least one interval: a pick takes
// O(k log k) for k intervals, however many candidate subnets the bases hold.
func pickSubnet(bases []DefaultPool, fam int, used, avoid ivalSet) (netip.Prefix, bool) {
	for _, dp := range bases {
		first, last := bounds(dp.Base)
		mask := lowMask(dp.Base.Addr().BitLen() - dp.Size) // host part of a candidate
		var at [2]int                                      // where the last search in used and avoid ended
		for c := first; ; {
			cEnd := c.or(mask)
			var end u128 // the largest end of an interval c meets
			hit := false
			for k, s := range [2]ivalSet{used, avoid} {
				if iv, ok := s.overlapFrom(&at[k], c, cEnd); ok {
					if !hit || end.less(iv.hi) {
						end = iv.hi
					}
					hit = true
				}
			}
			if !hit {
				return netip.PrefixFrom(toAddr(c, fam == famV4), dp.Size), true
			}
			// Candidates are aligned to mask, so the next one after end starts at (end|mask)+1.
			next := end.or(mask)
			if next == u128Max || !next.less(last) {
				break
			}
			c = next.add1()
		}
	}
	return netip.Prefix{}, false
}

// checkBases validates the default pools of cfg and returns them by family, each list a copy,
// with the defaults for empty lists. Field names in errors are "PoolsV4[i].Base" and the like.
func checkBases(v4, v6 []DefaultPool) ([2][]DefaultPool, error) {
	var out [2][]DefaultPool
	for fam, list := range [2][]DefaultPool{v4, v6} {
		field := "PoolsV4"
		if fam == famV6 {
			field = "PoolsV6"
		}
		if len(list) == 0 {
			if fam == famV4 {
				list = DefaultPoolsV4()
			} else {
				list = DefaultPoolsV6()
			}
		}
		for i, dp := range list {
			if err := checkDefaultPool(fam, dp); err != nil {
				err.Field = fmt.Sprintf("%s[%d].%s", field, i, err.Field)
				return out, err
			}
		}
		out[fam] = slices.Clone(list)
	}
	return out, nil
}

// size returns the number of addresses of the subnet that can be allocated, saturating.
func (p *pool) size() uint64 {
	n := p.last // offsets 1..last
	if p.is4 && !n.isZero() {
		n = n.sub1() // less the broadcast address
	}
	return n.sat64()
}

// exhausted returns the error of a dynamic request that found no free address.
func (p *pool) exhausted() *ExhaustedError {
	return &ExhaustedError{Pool: p.id, Range: p.dynPrefix(), Size: p.dynCap.sat64(), InUse: int(p.inRange)}
}

// staticOffset returns the offset of the static request addr, or the error RequestAddress
// returns for it (before the in-use check).
func (p *pool) staticOffset(addr netip.Addr) (u128, error) {
	off, ok := p.offset(addr)
	if !ok {
		return u128{}, fmt.Errorf("ipam: request address %s in pool %s: not in subnet %s: %w",
			addr, p.id, p.subnet, ErrOutOfRange)
	}
	if r := p.reserved(off); r != "" {
		return u128{}, fmt.Errorf("ipam: request address %s in pool %s: the %s address of %s: %w",
			addr, p.id, r, p.subnet, ErrOutOfRange)
	}
	return off, nil
}

// checkMAC validates opts.MAC.
func checkMAC(id PoolID, opts AddressOptions) error {
	if n := len(opts.MAC); n != 0 && n != 6 && n != 8 {
		return fmt.Errorf("ipam: request address in pool %s: %w", id,
			errclass.Invalid("mac", opts.MAC.String(), "must be 6 (EUI-48) or 8 (EUI-64) bytes"))
	}
	return nil
}

// eui64Offset returns the offset of the address derived from mac (a valid, non-empty MAC) in
// the dynamic prefix of an IPv6 pool, or false when the pool is IPv4, its dynamic prefix is
// longer than /64 or it has no dynamic range.
func (p *pool) eui64Offset(mac net.HardwareAddr) (u128, bool) {
	dyn := p.dynPrefix()
	if p.is4 || dyn.Bits() > 64 || p.dynCap.isZero() {
		return u128{}, false
	}
	a := fromAddr(dyn.Addr())
	a.lo = eui64(mac)
	off := a.sub(p.base)
	if !p.inDyn(off) {
		return u128{}, false // the network address of the subnet, when the identifier is 0
	}
	return off, true
}

// eui64 returns the modified EUI-64 interface identifier of a 6- or 8-byte MAC (RFC 4291
// appendix A): ff:fe in the middle of an EUI-48, and the universal/local bit inverted.
func eui64(mac net.HardwareAddr) uint64 {
	var id [8]byte
	if len(mac) == 6 {
		copy(id[:3], mac[:3])
		id[3], id[4] = 0xff, 0xfe
		copy(id[5:], mac[3:])
	} else {
		copy(id[:], mac)
	}
	id[0] ^= 0x02
	var v uint64
	for _, b := range id {
		v = v<<8 | uint64(b)
	}
	return v
}

// setBits calls f with the offset of every allocated address of p, in ascending order.
func (p *pool) setBits(f func(off u128)) {
	cis := make([]u128, 0, len(p.chunks))
	for ci := range p.chunks {
		cis = append(cis, ci)
	}
	slices.SortFunc(cis, u128.cmp)
	for _, ci := range cis {
		chunkBitsOf(ci, p.chunks[ci], f)
	}
}

// chunkBitsOf calls f with the offset of every bit set in c, the chunk with index ci, in
// ascending order.
func chunkBitsOf(ci u128, c *chunk, f func(off u128)) {
	base := ci.shl(chunkBits)
	for w, word := range c {
		for word != 0 {
			i := bits.TrailingZeros64(word)
			word &= word - 1
			f(u128{base.hi, base.lo | uint64(w<<6|i)})
		}
	}
}

// load replaces the bits of chunk ci with those of c (nil: all free), keeping the counts, the
// set of full chunks and the rule that only the chunk holding next may be empty. p keeps no
// reference to c.
func (p *pool) load(ci u128, c *chunk) {
	old := p.chunkAt(ci)
	if old != nil {
		if *old == fullChunk {
			p.full.remove(ci, ci)
		}
		p.inUse -= popcount(old)
		p.inRange -= uint64(p.dynCount(ci, old))
	}
	if c == nil || *c == (chunk{}) {
		if old == nil {
			return
		}
		*old = chunk{}
		if ci != p.next.shr(chunkBits) {
			p.drop(ci, old)
		}
		return
	}
	if old == nil {
		if p.chunks == nil {
			p.chunks = make(map[u128]*chunk)
		}
		old = p.spare
		if old == nil {
			old = new(chunk)
		}
		p.spare = nil
		p.chunks[ci] = old
		p.lastCI, p.lastC = ci, old
	}
	*old = *c
	if *old == fullChunk {
		p.full.add(ci, ci)
	}
	p.inUse += popcount(old)
	p.inRange += uint64(p.dynCount(ci, old))
}

func popcount(c *chunk) int {
	n := 0
	for _, w := range c {
		n += bits.OnesCount64(w)
	}
	return n
}

// dynCount returns how many bits of c, the chunk with index ci, are dynamic offsets, in
// [lo, hi].
func (p *pool) dynCount(ci u128, c *chunk) int {
	if p.dynCap.isZero() {
		return 0
	}
	first := ci.shl(chunkBits)
	last := first.or(u128{0, chunkSize - 1})
	if last.less(p.lo) || p.hi.less(first) {
		return 0
	}
	b, e := 0, chunkSize-1
	if first.less(p.lo) {
		b = int(p.lo.lo & (chunkSize - 1))
	}
	if p.hi.less(last) {
		e = int(p.hi.lo & (chunkSize - 1))
	}
	n := 0
	for w := b >> 6; w <= e>>6; w++ {
		word := c[w]
		if w == b>>6 {
			word &= ^uint64(0) << uint(b&63)
		}
		if w == e>>6 && e&63 != 63 {
			word &= 1<<uint(e&63+1) - 1
		}
		n += bits.OnesCount64(word)
	}
	return n
}

// setNext moves where the next dynamic search starts to off, in [lo, hi], dropping the chunk
// next leaves if it is empty.
func (p *pool) setNext(off u128) {
	old := p.next.shr(chunkBits)
	p.next = off
	if off.shr(chunkBits) != old {
		if c := p.chunkAt(old); c != nil && *c == (chunk{}) {
			p.drop(old, c)
		}
	}
}

// jump moves where the next dynamic search starts to the first dynamic offset of a chunk chosen
// by r among the chunks the dynamic range spans (or the next 2^64 of them), so that two
// allocators racing for one chunk part ways.
func (p *pool) jump(r uint64) {
	if p.dynCap.isZero() {
		return
	}
	first := p.lo.shr(chunkBits)
	n := p.hi.shr(chunkBits).sub(first) // chunks spanned, less one
	k := r
	if n.hi == 0 && n.lo != ^uint64(0) {
		k = r % (n.lo + 1)
	}
	off, carry := first.add(u128{0, k})
	off = off.shl(chunkBits)
	if carry || off.less(p.lo) || p.hi.less(off) || off.shr(chunkBits).less(first) {
		off = p.lo
	}
	p.setNext(off)
}
