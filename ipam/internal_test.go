package ipam

import (
	"math/big"
	"net/netip"
	"slices"
	"testing"

	"go.uber.org/goleak"
	"pgregory.net/rapid"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func (a u128) big() *big.Int {
	b := new(big.Int).SetUint64(a.hi)
	b.Lsh(b, 64)
	return b.Or(b, new(big.Int).SetUint64(a.lo))
}

var two128 = new(big.Int).Lsh(big.NewInt(1), 128)

func genU128(t *rapid.T, label string) u128 {
	// Bias towards the edges, where carries and borrows happen.
	edge := rapid.SampledFrom([]uint64{0, 1, 1<<63 - 1, 1 << 63, ^uint64(0) - 1, ^uint64(0)})
	word := rapid.OneOf(edge, rapid.Uint64())
	return u128{word.Draw(t, label+".hi"), word.Draw(t, label+".lo")}
}

func TestU128(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		a, b := genU128(t, "a"), genU128(t, "b")
		n := rapid.UintRange(0, 63).Draw(t, "n")
		ab, bb := a.big(), b.big()
		sum, ovf := a.add(b)
		wantSum := new(big.Int).Add(ab, bb)
		if wantOvf := wantSum.Cmp(two128) >= 0; ovf != wantOvf {
			t.Fatalf("add overflow = %v, want %v", ovf, wantOvf)
		}
		if sum.big().Cmp(wantSum.Mod(wantSum, two128)) != 0 {
			t.Fatalf("add = %v", sum)
		}
		wantDiff := new(big.Int).Sub(ab, bb)
		if a.sub(b).big().Cmp(wantDiff.Mod(wantDiff, two128)) != 0 {
			t.Fatalf("sub = %v", a.sub(b))
		}
		if got, want := a.cmp(b), ab.Cmp(bb); got != want {
			t.Fatalf("cmp = %d, want %d", got, want)
		}
		wantShr := new(big.Int).Rsh(ab, n)
		if a.shr(n).big().Cmp(wantShr) != 0 {
			t.Fatalf("shr %d = %v", n, a.shr(n))
		}
		wantShl := new(big.Int).Lsh(ab, n)
		if a.shl(n).big().Cmp(wantShl.Mod(wantShl, two128)) != 0 {
			t.Fatalf("shl %d = %v", n, a.shl(n))
		}
		m := rapid.IntRange(0, 128).Draw(t, "m")
		wantMask := new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), uint(m)), big.NewInt(1))
		if lowMask(m).big().Cmp(wantMask) != 0 {
			t.Fatalf("lowMask(%d) = %v", m, lowMask(m))
		}
	})
}

func TestAddrRoundTrip(t *testing.T) {
	for _, s := range []string{"0.0.0.0", "10.1.2.3", "255.255.255.255", "::", "fd00::1", "::ffff:10.1.2.3",
		"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"} {
		a := netip.MustParseAddr(s)
		if got := toAddr(fromAddr(a), a.Is4()); got != a {
			t.Errorf("round trip %s = %s", a, got)
		}
	}
	first, last := bounds(netip.MustParsePrefix("10.1.2.3/16"))
	if toAddr(first, true).String() != "10.1.0.0" || toAddr(last, true).String() != "10.1.255.255" {
		t.Errorf("bounds = %v, %v", first, last)
	}
}

// TestIvalSet checks ivalSet against a set of small integers.
func TestIvalSet(t *testing.T) {
	const universe = 64
	rapid.Check(t, func(t *rapid.T) {
		var s ivalSet
		var model [universe]bool
		genIval := func() (lo, hi uint64) {
			lo = rapid.Uint64Range(0, universe-1).Draw(t, "lo")
			hi = rapid.Uint64Range(lo, universe-1).Draw(t, "hi")
			return lo, hi
		}
		t.Repeat(map[string]func(*rapid.T){
			"add": func(t *rapid.T) {
				lo, hi := genIval()
				s.add(u128{0, lo}, u128{0, hi})
				for i := lo; i <= hi; i++ {
					model[i] = true
				}
			},
			"remove": func(t *rapid.T) {
				lo, hi := genIval()
				s.remove(u128{0, lo}, u128{0, hi})
				for i := lo; i <= hi; i++ {
					model[i] = false
				}
			},
			"overlap": func(t *rapid.T) {
				lo, hi := genIval()
				iv, ok := s.overlap(u128{0, lo}, u128{0, hi})
				want := -1
				for i := lo; i <= hi; i++ {
					if model[i] {
						want = int(i)
						break
					}
				}
				if ok != (want >= 0) {
					t.Fatalf("overlap(%d, %d) = %v, want %v", lo, hi, ok, want >= 0)
				}
				// The interval returned is the one holding the first member in [lo, hi].
				if ok && (iv.lo.lo > uint64(want) || iv.hi.lo < uint64(want)) {
					t.Fatalf("overlap(%d, %d) = %v, which does not hold %d", lo, hi, iv, want)
				}
			},
			"": func(t *rapid.T) {
				var got [universe]bool
				for i, iv := range s {
					if iv.hi.less(iv.lo) {
						t.Fatalf("interval %v reversed", iv)
					}
					if i > 0 && !s[i-1].hi.add1().less(iv.lo) {
						t.Fatalf("intervals %v and %v overlap or touch", s[i-1], iv)
					}
					for j := iv.lo.lo; j <= iv.hi.lo; j++ {
						got[j] = true
					}
				}
				if got != model {
					t.Fatalf("set %v, want %v", s, model)
				}
			},
		})
	})
	// The edges of the 128-bit space.
	var s ivalSet
	s.add(u128Max, u128Max)
	s.add(u128{}, u128{})
	s.add(u128{}, u128Max.sub1())
	if len(s) != 1 || s[0] != (ival{u128{}, u128Max}) {
		t.Errorf("set = %v, want everything", s)
	}
	s.remove(u128{}, u128{})
	s.remove(u128Max, u128Max)
	if len(s) != 1 || s[0] != (ival{u128{0, 1}, u128Max.sub1()}) {
		t.Errorf("set = %v", s)
	}
}

// TestSparseMemory checks that chunks exist only for allocated addresses.
func TestSparseMemory(t *testing.T) {
	for _, tc := range []struct {
		subnet string
		n      int
	}{
		{"fd00::/64", 10000},
		{"10.0.0.0/8", 3 * chunkSize},
	} {
		p := newPool(LocalSpace, netip.MustParsePrefix(tc.subnet), netip.Prefix{})
		var offs []u128
		for range tc.n {
			off, ok := p.allocNext()
			if !ok {
				t.Fatal("exhausted")
			}
			offs = append(offs, off)
		}
		// Offsets 1..n: chunk 0 holds 4095 of them.
		if want := (tc.n + chunkSize) / chunkSize; len(p.chunks) != want {
			t.Errorf("%s: %d chunks for %d addresses, want %d", tc.subnet, len(p.chunks), tc.n, want)
		}
		for _, off := range offs {
			p.clear(off)
		}
		// Only the chunk holding next stays, empty.
		if len(p.chunks) != 1 || p.inUse != 0 || p.inRange != 0 {
			t.Errorf("%s: after releasing all: %d chunks, inUse %d, inRange %d", tc.subnet, len(p.chunks), p.inUse, p.inRange)
		}
		checkPool(t, p)
		// Moving on drops it.
		off, _ := p.allocNext()
		for range chunkSize {
			p.clear(off)
			off, _ = p.allocNext()
		}
		if len(p.chunks) != 1 || p.inUse != 1 {
			t.Errorf("%s: after walking a chunk: %d chunks, inUse %d", tc.subnet, len(p.chunks), p.inUse)
		}
		checkPool(t, p)
	}
}

// TestFindFree checks findFree against a linear scan on a few crafted bitmaps.
func TestFindFree(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		p := newPool(LocalSpace, netip.MustParsePrefix("10.0.0.0/18"), netip.Prefix{}) // 4 chunks
		const n = 1 << 14
		var model [n]bool
		runs := rapid.IntRange(0, 8).Draw(t, "runs")
		for range runs {
			lo := rapid.IntRange(0, n-1).Draw(t, "lo")
			hi := rapid.IntRange(lo, min(n-1, lo+rapid.IntRange(0, 2*chunkSize).Draw(t, "len"))).Draw(t, "hi")
			for i := lo; i <= hi; i++ {
				if !model[i] {
					model[i] = true
					p.set(u128{0, uint64(i)})
				}
			}
		}
		from := rapid.IntRange(0, n-1).Draw(t, "from")
		to := rapid.IntRange(from, n-1).Draw(t, "to")
		want := -1
		for i := from; i <= to; i++ {
			if !model[i] {
				want = i
				break
			}
		}
		got, ok := p.findFree(u128{0, uint64(from)}, u128{0, uint64(to)})
		if ok != (want >= 0) || (ok && got.lo != uint64(want)) {
			t.Fatalf("findFree(%d, %d) = %d, %v; want %d", from, to, got.lo, ok, want)
		}
	})
}

// checkPool checks the invariants of p's bitmap.
func checkPool(t interface {
	Helper()
	Fatalf(string, ...any)
}, p *pool) {
	t.Helper()
	inUse, inRange := 0, uint64(0)
	for ci, c := range p.chunks {
		if *c == (chunk{}) && ci != p.next.shr(chunkBits) {
			t.Fatalf("empty chunk %v is not next's (%v)", ci, p.next)
		}
		for w, word := range c {
			for b := range 64 {
				if word&(1<<b) == 0 {
					continue
				}
				inUse++
				off := ci.shl(chunkBits).or(u128{0, uint64(w*64 + b)})
				if p.last.less(off) || p.reserved(off) != "" {
					t.Fatalf("offset %v allocated outside the subnet or reserved", off)
				}
				if p.inDyn(off) {
					inRange++
				}
			}
		}
	}
	if inUse != p.inUse || inRange != p.inRange {
		t.Fatalf("counted %d in use, %d in range; pool says %d, %d", inUse, inRange, p.inUse, p.inRange)
	}
	var full ivalSet
	for ci, c := range p.chunks {
		if *c == fullChunk {
			full.add(ci, ci)
		}
	}
	if !slices.Equal(full, p.full) {
		t.Fatalf("full chunks %v, pool says %v", full, p.full)
	}
	if p.lastC != nil && p.chunks[p.lastCI] != p.lastC {
		t.Fatalf("stale chunk cache at %v", p.lastCI)
	}
	if !p.dynCap.isZero() && (p.next.less(p.lo) || p.hi.less(p.next)) {
		t.Fatalf("next %v outside [%v, %v]", p.next, p.lo, p.hi)
	}
}

// TestPoolInvariants runs random operations on a pool spanning a few chunks.
func TestPoolInvariants(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		subnet := netip.MustParsePrefix("10.0.0.0/18")
		var rng netip.Prefix
		if rapid.Bool().Draw(t, "withRange") {
			rng = netip.MustParsePrefix(rapid.SampledFrom([]string{"10.0.0.0/19", "10.0.32.0/19", "10.0.16.0/20", "10.0.63.0/24"}).Draw(t, "range"))
		}
		p := newPool(LocalSpace, subnet, rng)
		held := map[u128]bool{}
		t.Repeat(map[string]func(*rapid.T){
			"allocMany": func(t *rapid.T) {
				for range rapid.IntRange(1, 3*chunkSize).Draw(t, "n") {
					off, ok := p.allocNext()
					if !ok {
						return
					}
					if held[off] {
						t.Fatalf("%v handed out twice", off)
					}
					held[off] = true
				}
			},
			"static": func(t *rapid.T) {
				off := u128{0, rapid.Uint64Range(1, 1<<14-2).Draw(t, "off")}
				if !p.isSet(off) {
					p.set(off)
					held[off] = true
				}
			},
			"releaseSome": func(t *rapid.T) {
				n := rapid.IntRange(1, 3*chunkSize).Draw(t, "n")
				for off := range held {
					if n == 0 {
						break
					}
					p.clear(off)
					delete(held, off)
					n--
				}
			},
			"": func(t *rapid.T) { checkPool(t, p) },
		})
	})
}

// TestLoad checks that load, which a Global uses to replace a cached chunk with what the store
// holds, keeps the counts and invariants of the pool, against allocating bit by bit.
func TestLoad(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		subnet := netip.MustParsePrefix("10.0.0.0/18") // 4 chunks
		var rng netip.Prefix
		if rapid.Bool().Draw(t, "withRange") {
			rng = netip.MustParsePrefix(rapid.SampledFrom([]string{"10.0.0.0/19", "10.0.32.0/19", "10.0.16.0/20", "10.0.63.0/24", "10.0.15.128/25"}).Draw(t, "range"))
		}
		p := newPool(LocalSpace, subnet, rng)
		t.Repeat(map[string]func(*rapid.T){
			"load": func(t *rapid.T) {
				ci := u128{0, rapid.Uint64Range(0, 3).Draw(t, "chunk")}
				var c *chunk
				switch rapid.IntRange(0, 3).Draw(t, "kind") {
				case 0: // nil: all free
				case 1:
					c = new(chunk)
				case 2:
					full := fullChunk
					c = &full
				default:
					c = new(chunk)
					for range rapid.IntRange(1, 64).Draw(t, "bits") {
						i := rapid.IntRange(0, chunkSize-1).Draw(t, "bit")
						c[i>>6] |= 1 << uint(i&63)
					}
				}
				if c != nil {
					// Never the network or broadcast address, as a store written by a Global
					// never holds them.
					if ci == (u128{}) {
						c[0] &^= 1
					}
					if ci == (u128{0, 3}) {
						c[len(c)-1] &^= 1 << 63
					}
				}
				p.load(ci, c)
				var want chunk
				if c != nil {
					want = *c
				}
				got := p.chunkAt(ci)
				if (got == nil && want != (chunk{})) || (got != nil && *got != want) {
					t.Fatalf("chunk %v not loaded", ci)
				}
			},
			"alloc": func(t *rapid.T) { p.allocNext() },
			"jump":  func(t *rapid.T) { p.jump(rapid.Uint64().Draw(t, "r")) },
			"":      func(t *rapid.T) { checkPool(t, p) },
		})
	})
}

// TestJump checks that jump lands on a dynamic offset at the start of a chunk, or on lo.
func TestJump(t *testing.T) {
	for _, tc := range []struct{ subnet, rng string }{
		{"10.0.0.0/16", ""}, {"10.0.0.0/16", "10.0.128.0/17"}, {"10.0.0.0/24", ""},
		{"fd00::/64", ""}, {"::/0", ""}, {"fd00::/64", "fd00::8000:0/97"},
	} {
		var rng netip.Prefix
		if tc.rng != "" {
			rng = netip.MustParsePrefix(tc.rng)
		}
		p := newPool(GlobalSpace, netip.MustParsePrefix(tc.subnet), rng)
		for _, r := range []uint64{0, 1, 7, 1 << 40, ^uint64(0)} {
			p.jump(r)
			if !p.inDyn(p.next) || (p.next != p.lo && p.next.lo&(chunkSize-1) != 0) {
				t.Errorf("%s %s: jump(%d) to %v, outside [%v, %v] or not at a chunk start", tc.subnet, tc.rng, r, p.next, p.lo, p.hi)
			}
		}
		checkPool(t, p)
	}
}

// TestChunkCodec checks the stored form of a bitmap chunk and of its key.
func TestChunkCodec(t *testing.T) {
	var c chunk
	c[0], c[63] = 0xdeadbeef, 1<<63
	got, err := decodeChunk(encodeChunk(&c))
	if err != nil || *got != c {
		t.Fatalf("round trip: %v", err)
	}
	if len(encodeChunk(&c)) != 513 {
		t.Errorf("encoded %d bytes, want 513", len(encodeChunk(&c)))
	}
	for _, bad := range [][]byte{nil, {1}, append([]byte{2}, make([]byte, 512)...)} {
		if _, err := decodeChunk(bad); err == nil {
			t.Errorf("decodeChunk(%d bytes) = nil error", len(bad))
		}
	}
	g := &Global{prefix: "p"}
	key := g.chunkKey(0x2a, u128{1, 0xff})
	if key != "p/chunks/000000000000002a/000000000000000100000000000000ff" {
		t.Errorf("key = %q", key)
	}
	if ci, ok := parseChunkIndex(key[len(g.chunkPrefix(0x2a)):]); !ok || ci != (u128{1, 0xff}) {
		t.Errorf("parse = %v, %v", ci, ok)
	}
}

// TestEUI64 checks the interface identifiers of RFC 4291 appendix A.
func TestEUI64(t *testing.T) {
	for _, tc := range []struct {
		mac  []byte
		want uint64
	}{
		{[]byte{0x00, 0x11, 0x22, 0x33, 0x44, 0x55}, 0x021122fffe334455},
		{[]byte{0x02, 0x42, 0xac, 0x11, 0x00, 0x02}, 0x0042acfffe110002},
		{[]byte{0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77}, 0x0211223344556677},
	} {
		if got := eui64(tc.mac); got != tc.want {
			t.Errorf("eui64(% x) = %016x, want %016x", tc.mac, got, tc.want)
		}
	}
}

// FuzzDecodeIndex feeds the parser of the stored pool index arbitrary bytes: it never panics, and
// what it accepts is a list of valid pools that encodes back to an equal list.
func FuzzDecodeIndex(f *testing.F) {
	f.Add([]byte(`{"version":1,"pools":[{"space":"global","subnet":"10.0.0.0/24","range":"10.0.0.128/25","gen":7}]}`))
	f.Add([]byte(`{"version":1,"pools":[{"space":"global","subnet":"fd00::/64","gen":0}]}`))
	f.Add([]byte(`{"version":1,"pools":[{"space":"x","subnet":"10.0.0.1/24","gen":1}]}`))
	f.Add([]byte(`{"version":2}`))
	f.Add([]byte(`{`))
	f.Fuzz(func(t *testing.T, b []byte) {
		idx, err := decodeIndex(b, 1)
		if err != nil {
			return
		}
		for _, r := range idx.recs {
			if !r.Subnet.IsValid() || r.Subnet != r.Subnet.Masked() || r.ID != MakePoolID(r.Space, r.Subnet) {
				t.Fatalf("accepted bad pool %+v", r)
			}
			if r.Range.IsValid() && (!r.Subnet.Contains(r.Range.Addr()) || r.Range.Bits() <= r.Subnet.Bits()) {
				t.Fatalf("accepted bad range %+v", r)
			}
		}
		enc, err := encodeIndex(idx.recs)
		if err != nil {
			t.Fatal(err)
		}
		again, err := decodeIndex(enc, 1)
		if err != nil || !slices.Equal(again.recs, idx.recs) {
			t.Fatalf("re-decode: %v, %+v != %+v", err, again, idx)
		}
	})
}
