package ipam_test

import (
	"context"
	"errors"
	"net/netip"
	"slices"

	"testing"

	"pgregory.net/rapid"

	"github.com/cnmkit/cnm/ipam"
)

// lastAddr returns the last address of the masked prefix p.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// addrsOf lists the addresses of the small prefix p.
func addrsOf(p netip.Prefix) []netip.Addr {
	var out []netip.Addr
	for a := p.Addr(); p.Contains(a); a = a.Next() {
		out = append(out, a)
	}
	return out
}

// drawSubPrefix draws a masked prefix inside p with a length from minBits to maxBits.
func drawSubPrefix(t *rapid.T, label string, p netip.Prefix, minBits, maxBits int) netip.Prefix {
	bits := rapid.IntRange(minBits, maxBits).Draw(t, label+".bits")
	host := p.Addr().BitLen() - p.Bits()
	off := rapid.Uint64Range(0, 1<<host-1).Draw(t, label+".offset")
	a := p.Addr()
	b := a.AsSlice()
	for i := len(b) - 1; off != 0 && i >= 0; i-- {
		b[i] |= byte(off)
		off >>= 8
	}
	a, _ = netip.AddrFromSlice(b)
	return netip.PrefixFrom(a, bits).Masked()
}

// TestPropertyAddresses runs random request and release sequences on one small pool against a model:
// no address is handed out twice, dynamic addresses come in order from the one after the last,
// errors are the right ones, and the in-use count is the model's.
func TestPropertyAddresses(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		var subnet netip.Prefix
		other := netip.MustParseAddr("fd00::1")
		if rapid.Bool().Draw(t, "v6") {
			subnet = drawSubPrefix(t, "subnet", netip.MustParsePrefix("fd00::/112"), 121, 128)
			other = netip.MustParseAddr("10.0.0.1")
		} else {
			subnet = drawSubPrefix(t, "subnet", netip.MustParsePrefix("10.0.0.0/16"), 25, 32)
		}
		var rng netip.Prefix
		if rapid.Bool().Draw(t, "withRange") {
			rng = drawSubPrefix(t, "range", subnet, subnet.Bits(), subnet.Addr().BitLen())
		}
		d, err := ipam.NewDefault(ipam.DefaultConfig{})
		if err != nil {
			t.Fatal(err)
		}
		ctx := t.Context()
		pool, err := d.RequestPool(ctx, ipam.PoolRequest{Subnet: subnet, Range: rng})
		if err != nil {
			t.Fatal(err)
		}

		network, last := subnet.Addr(), lastAddr(subnet)
		reserved := func(a netip.Addr) bool { return a == network || (a.Is4() && a == last) }
		var dyn []netip.Addr // the dynamic addresses, in order
		dynPrefix := subnet
		if rng.IsValid() {
			dynPrefix = rng
		}
		for _, a := range addrsOf(dynPrefix) {
			if !reserved(a) {
				dyn = append(dyn, a)
			}
		}
		// Candidates for static requests: the subnet, its neighbours, another family.
		cands := addrsOf(subnet)
		if a := network.Prev(); a.IsValid() {
			cands = append(cands, a)
		}
		if a := last.Next(); a.IsValid() {
			cands = append(cands, a)
		}
		cands = append(cands, other)

		used := map[netip.Addr]bool{}
		next := 0 // index in dyn where the next dynamic search starts

		t.Repeat(map[string]func(*rapid.T){
			"dynamic": func(t *rapid.T) {
				want := -1
				for i := range dyn {
					if j := (next + i) % len(dyn); !used[dyn[j]] {
						want = j
						break
					}
				}
				got, err := d.RequestAddress(ctx, pool.ID, netip.Addr{})
				if want < 0 {
					if !errors.Is(err, ipam.ErrPoolExhausted) {
						t.Fatalf("RequestAddress = %v, %v; want ErrPoolExhausted", got, err)
					}
					return
				}
				if err != nil || got != dyn[want] {
					t.Fatalf("RequestAddress = %v, %v; want %v", got, err, dyn[want])
				}
				used[got] = true
				next = (want + 1) % len(dyn)
			},
			"static": func(t *rapid.T) {
				a := rapid.SampledFrom(cands).Draw(t, "addr")
				var want error
				switch {
				case !subnet.Contains(a), reserved(a):
					want = ipam.ErrOutOfRange
				case used[a]:
					want = ipam.ErrAddressInUse
				}
				got, err := d.RequestAddress(ctx, pool.ID, a)
				if want != nil {
					if !errors.Is(err, want) {
						t.Fatalf("RequestAddress(%v) = %v, %v; want %v", a, got, err, want)
					}
					return
				}
				if err != nil || got != a {
					t.Fatalf("RequestAddress(%v) = %v, %v", a, got, err)
				}
				used[a] = true
			},
			"release": func(t *rapid.T) {
				var a netip.Addr
				if len(used) > 0 && rapid.Bool().Draw(t, "releaseUsed") {
					keys := make([]netip.Addr, 0, len(used))
					for k := range used {
						keys = append(keys, k)
					}
					slices.SortFunc(keys, netip.Addr.Compare)
					a = rapid.SampledFrom(keys).Draw(t, "used")
				} else {
					a = rapid.SampledFrom(addrsOf(subnet)).Draw(t, "any")
				}
				if err := d.ReleaseAddress(ctx, pool.ID, a); err != nil {
					t.Fatalf("ReleaseAddress(%v): %v", a, err)
				}
				delete(used, a)
			},
			"": func(t *rapid.T) {
				if _, n, err := d.Usage(context.Background(), pool.ID); err != nil || n != len(used) {
					t.Fatalf("Usage = %d, %v; want %d", n, err, len(used))
				}
			},
		})
	})
}

// TestPropertyPools runs random pool requests and releases against a brute-force model of first-fit
// picking, with overlapping bases, excluded prefixes and two spaces.
func TestPropertyPools(t *testing.T) {
	bases := [2][]ipam.DefaultPool{
		{
			{Base: netip.MustParsePrefix("10.0.0.0/22"), Size: 26},
			{Base: netip.MustParsePrefix("10.0.8.0/24"), Size: 28},
			{Base: netip.MustParsePrefix("10.0.0.0/20"), Size: 24},
		},
		{
			{Base: netip.MustParsePrefix("fd00::/120"), Size: 124},
			{Base: netip.MustParsePrefix("fd00::/116"), Size: 120},
		},
	}
	universe := [2]netip.Prefix{netip.MustParsePrefix("10.0.0.0/19"), netip.MustParsePrefix("fd00::/115")}
	spaces := []ipam.AddressSpace{ipam.LocalSpace, ipam.GlobalSpace}

	rapid.Check(t, func(t *rapid.T) {
		d, err := ipam.NewDefault(ipam.DefaultConfig{PoolsV4: bases[0], PoolsV6: bases[1]})
		if err != nil {
			t.Fatal(err)
		}
		ctx := t.Context()
		model := map[ipam.AddressSpace][]netip.Prefix{}
		overlapsAny := func(p netip.Prefix, list []netip.Prefix) bool {
			return slices.ContainsFunc(list, p.Overlaps)
		}
		drawPrefix := func(t *rapid.T, label string, fam int) netip.Prefix {
			u := universe[fam]
			return drawSubPrefix(t, label, u, u.Bits()+1, u.Addr().BitLen()-2)
		}

		t.Repeat(map[string]func(*rapid.T){
			"auto": func(t *rapid.T) {
				space := rapid.SampledFrom(spaces).Draw(t, "space")
				fam := rapid.IntRange(0, 1).Draw(t, "fam")
				var excl []netip.Prefix
				for range rapid.IntRange(0, 3).Draw(t, "nExclude") {
					excl = append(excl, drawPrefix(t, "exclude", rapid.IntRange(0, 1).Draw(t, "exclFam")))
				}
				var want netip.Prefix
			search:
				for _, dp := range bases[fam] {
					step := netip.PrefixFrom(dp.Base.Addr(), dp.Size)
					for c := step; dp.Base.Contains(c.Addr()); c = netip.PrefixFrom(lastAddr(c).Next(), dp.Size) {
						if !overlapsAny(c, model[space]) && !overlapsAny(c, excl) {
							want = c
							break search
						}
					}
				}
				got, err := d.RequestPool(ctx, ipam.PoolRequest{Space: space, V6: fam == 1, Exclude: excl})
				if !want.IsValid() {
					if !errors.Is(err, ipam.ErrPoolExhausted) {
						t.Fatalf("RequestPool = %v, %v; want ErrPoolExhausted", got, err)
					}
					return
				}
				if err != nil || got.Subnet != want || got.ID != ipam.MakePoolID(space, want) {
					t.Fatalf("RequestPool = %+v, %v; want %v", got, err, want)
				}
				model[space] = append(model[space], want)
			},
			"explicit": func(t *rapid.T) {
				space := rapid.SampledFrom(spaces).Draw(t, "space")
				p := drawPrefix(t, "subnet", rapid.IntRange(0, 1).Draw(t, "fam"))
				got, err := d.RequestPool(ctx, ipam.PoolRequest{Space: space, Subnet: p})
				if overlapsAny(p, model[space]) {
					if !errors.Is(err, ipam.ErrPoolOverlap) {
						t.Fatalf("RequestPool(%v) = %v, %v; want ErrPoolOverlap", p, got, err)
					}
					return
				}
				if err != nil || got.Subnet != p {
					t.Fatalf("RequestPool(%v) = %+v, %v", p, got, err)
				}
				model[space] = append(model[space], p)
			},
			"release": func(t *rapid.T) {
				space := rapid.SampledFrom(spaces).Draw(t, "space")
				if len(model[space]) == 0 {
					t.Skip("no pool")
				}
				i := rapid.IntRange(0, len(model[space])-1).Draw(t, "pool")
				if err := d.ReleasePool(ctx, ipam.MakePoolID(space, model[space][i])); err != nil {
					t.Fatal(err)
				}
				model[space] = slices.Delete(model[space], i, i+1)
			},
			"": func(t *rapid.T) {
				for space, list := range model {
					for _, p := range list {
						if _, _, err := d.Usage(context.Background(), ipam.MakePoolID(space, p)); err != nil {
							t.Fatalf("pool %s/%s lost: %v", space, p, err)
						}
					}
				}
			},
		})
	})
}
