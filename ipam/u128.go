package ipam

import (
	"encoding/binary"
	"math/bits"
	"net/netip"
	"slices"
	"sort"
)

// u128 is an unsigned 128-bit integer: an IPv6 address, or an IPv4 address in lo, or an offset
// into a pool. It is comparable, so it can be a map key.
type u128 struct{ hi, lo uint64 }

var u128Max = u128{^uint64(0), ^uint64(0)}

func (a u128) isZero() bool { return a.hi == 0 && a.lo == 0 }

func (a u128) cmp(b u128) int {
	switch {
	case a.hi < b.hi:
		return -1
	case a.hi > b.hi:
		return 1
	case a.lo < b.lo:
		return -1
	case a.lo > b.lo:
		return 1
	}
	return 0
}

func (a u128) less(b u128) bool { return a.cmp(b) < 0 }

// add returns a+b and whether it overflowed.
func (a u128) add(b u128) (u128, bool) {
	lo, c := bits.Add64(a.lo, b.lo, 0)
	hi, c := bits.Add64(a.hi, b.hi, c)
	return u128{hi, lo}, c != 0
}

// sub returns a-b modulo 2^128.
func (a u128) sub(b u128) u128 {
	lo, br := bits.Sub64(a.lo, b.lo, 0)
	hi, _ := bits.Sub64(a.hi, b.hi, br)
	return u128{hi, lo}
}

// add1 returns a+1 modulo 2^128.
func (a u128) add1() u128 { r, _ := a.add(u128{0, 1}); return r }

// sub1 returns a-1 modulo 2^128.
func (a u128) sub1() u128 { return a.sub(u128{0, 1}) }

func (a u128) and(b u128) u128 { return u128{a.hi & b.hi, a.lo & b.lo} }
func (a u128) or(b u128) u128  { return u128{a.hi | b.hi, a.lo | b.lo} }
func (a u128) not() u128       { return u128{^a.hi, ^a.lo} }

// shr returns a >> n for n < 64.
func (a u128) shr(n uint) u128 {
	if n == 0 {
		return a
	}
	return u128{a.hi >> n, a.lo>>n | a.hi<<(64-n)}
}

// shl returns a << n for n < 64.
func (a u128) shl(n uint) u128 {
	if n == 0 {
		return a
	}
	return u128{a.hi<<n | a.lo>>(64-n), a.lo << n}
}

// lowMask returns a value whose low n bits are set, for n <= 128.
func lowMask(n int) u128 {
	switch {
	case n <= 0:
		return u128{}
	case n < 64:
		return u128{0, 1<<uint(n) - 1}
	case n < 128:
		return u128{1<<uint(n-64) - 1, ^uint64(0)}
	}
	return u128Max
}

// sat64 returns a as a uint64, saturating at math.MaxUint64.
func (a u128) sat64() uint64 {
	if a.hi != 0 {
		return ^uint64(0)
	}
	return a.lo
}

// fromAddr returns the integer value of a: an IPv4 address in the low 32 bits, an IPv6 address
// (including an IPv4-mapped one) over all 128.
func fromAddr(a netip.Addr) u128 {
	if a.Is4() {
		b := a.As4()
		return u128{0, uint64(binary.BigEndian.Uint32(b[:]))}
	}
	b := a.As16()
	return u128{binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])}
}

// toAddr is the inverse of fromAddr for the family given by is4.
func toAddr(v u128, is4 bool) netip.Addr {
	if is4 {
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], uint32(v.lo))
		return netip.AddrFrom4(b)
	}
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], v.hi)
	binary.BigEndian.PutUint64(b[8:], v.lo)
	return netip.AddrFrom16(b)
}

// bounds returns the first and last address of the masked prefix p as integers.
func bounds(p netip.Prefix) (first, last u128) {
	first = fromAddr(p.Masked().Addr())
	return first, first.or(lowMask(p.Addr().BitLen() - p.Bits()))
}

// ival is the closed interval [lo, hi].
type ival struct{ lo, hi u128 }

// ivalSet is a set of integers kept as sorted, disjoint, non-adjacent intervals.
type ivalSet []ival

// search returns the index of the first interval whose end is at or after x.
func (s ivalSet) search(x u128) int {
	return sort.Search(len(s), func(i int) bool { return !s[i].hi.less(x) })
}

// overlap returns the first interval of s that meets [lo, hi], if any.
func (s ivalSet) overlap(lo, hi u128) (ival, bool) {
	if i := s.search(lo); i < len(s) && !hi.less(s[i].lo) {
		return s[i], true
	}
	return ival{}, false
}

// overlapFrom is overlap for a caller whose lo never decreases: it starts at index *i, a few
// steps forward before it falls back to a binary search, and leaves *i at the interval found.
func (s ivalSet) overlapFrom(i *int, lo, hi u128) (ival, bool) {
	j := *i
	for n := 0; j < len(s) && s[j].hi.less(lo); n++ {
		if n == 4 {
			j += s[j:].search(lo)
			break
		}
		j++
	}
	*i = j
	if j < len(s) && !hi.less(s[j].lo) {
		return s[j], true
	}
	return ival{}, false
}

// add adds [lo, hi] to s, merging overlapping and adjacent intervals.
func (s *ivalSet) add(lo, hi u128) {
	from, to := lo, hi
	if !from.isZero() {
		from = from.sub1()
	}
	if to != u128Max {
		to = to.add1()
	}
	i := s.search(from)
	j := i
	for ; j < len(*s) && !to.less((*s)[j].lo); j++ {
		if (*s)[j].lo.less(lo) {
			lo = (*s)[j].lo
		}
		if hi.less((*s)[j].hi) {
			hi = (*s)[j].hi
		}
	}
	*s = slices.Replace(*s, i, j, ival{lo, hi})
}

// remove removes [lo, hi] from s.
func (s *ivalSet) remove(lo, hi u128) {
	i := s.search(lo)
	j := i
	var keep [2]ival
	n := 0
	for ; j < len(*s) && !hi.less((*s)[j].lo); j++ {
		iv := (*s)[j]
		// Only the first and the last interval met can stick out of [lo, hi].
		if iv.lo.less(lo) {
			keep[n] = ival{iv.lo, lo.sub1()}
			n++
		}
		if hi.less(iv.hi) {
			keep[n] = ival{hi.add1(), iv.hi}
			n++
		}
	}
	*s = slices.Replace(*s, i, j, keep[:n]...)
}
