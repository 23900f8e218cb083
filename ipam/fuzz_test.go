package ipam_test

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/cnmkit/cnm/ipam"
)

// parsePrefix parses s without masking it; a bad s gives the zero Prefix.
func parsePrefix(s string) netip.Prefix {
	p, _ := netip.ParsePrefix(s)
	return p
}

// FuzzRequestPool requests a pool with an arbitrary subnet, range and exclusions next to an
// existing pool: it must not panic, a failure must be one of the typed errors, and a pool handed
// out must be sound.
func FuzzRequestPool(f *testing.F) {
	for _, s := range [][4]string{
		{"", "", "", ""},
		{"10.1.0.0/16", "10.1.128.0/17", "", ""},
		{"10.1.0.1/16", "", "", "global"},
		{"10.0.5.0/24", "", "", ""},
		{"10.2.0.0/24", "10.3.0.0/25", "", ""},
		{"", "", "172.16.0.0/12,10.0.0.0/8", ""},
		{"", "", "0.0.0.0/0,bad", ""},
		{"fd00::/64", "fd00::/80", "", ""},
		{"::/0", "", "", ""},
		{"0.0.0.0/0", "255.255.255.255/32", "", "local"},
		{"::ffff:10.0.0.0/104", "", "", ""},
		{"fd00::/129", "", "", ""},
	} {
		f.Add(s[0], s[1], s[2], s[3], false)
		f.Add(s[0], s[1], s[2], s[3], true)
	}
	f.Fuzz(func(t *testing.T, subnet, rng, exclude, space string, v6 bool) {
		ctx := t.Context()
		d, err := ipam.NewDefault(ipam.DefaultConfig{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := d.RequestPool(ctx, ipam.PoolRequest{Subnet: netip.MustParsePrefix("10.0.0.0/16")}); err != nil {
			t.Fatal(err)
		}
		req := ipam.PoolRequest{
			Space:  ipam.AddressSpace(space),
			Subnet: parsePrefix(subnet),
			Range:  parsePrefix(rng),
			V6:     v6,
		}
		if exclude != "" {
			for _, s := range strings.Split(exclude, ",") {
				req.Exclude = append(req.Exclude, parsePrefix(s))
			}
		}
		p, err := d.RequestPool(ctx, req)
		if err != nil {
			var ip *errclass.InvalidParameterError
			switch {
			case errors.As(err, &ip):
			case errors.Is(err, ipam.ErrPoolOverlap), errors.Is(err, ipam.ErrPoolExhausted):
			default:
				t.Fatalf("RequestPool(%+v): untyped error %v", req, err)
			}
			if !strings.HasPrefix(err.Error(), "ipam: ") {
				t.Errorf("error %q lacks the package prefix", err)
			}
			return
		}
		if !p.Subnet.IsValid() || p.Subnet != p.Subnet.Masked() {
			t.Fatalf("subnet %v not valid and masked", p.Subnet)
		}
		if req.Subnet.IsValid() && p.Subnet != req.Subnet {
			t.Fatalf("subnet %v, asked for %v", p.Subnet, req.Subnet)
		}
		s := req.Space
		if s == "" {
			s = ipam.LocalSpace
		}
		if p.ID != ipam.MakePoolID(s, p.Subnet) {
			t.Fatalf("id %s, want %s", p.ID, ipam.MakePoolID(s, p.Subnet))
		}
		if p.Range.IsValid() && (p.Range.Bits() <= p.Subnet.Bits() || !p.Subnet.Contains(p.Range.Addr())) {
			t.Fatalf("range %v not strictly inside %v", p.Range, p.Subnet)
		}
		for _, x := range req.Exclude {
			if x.Addr().Is4() == p.Subnet.Addr().Is4() && !req.Subnet.IsValid() && x.Overlaps(p.Subnet) {
				t.Fatalf("auto-picked %v overlaps excluded %v", p.Subnet, x)
			}
		}
		a, err := d.RequestAddress(ctx, p.ID, netip.Addr{})
		switch {
		case errors.Is(err, ipam.ErrPoolExhausted):
		case err != nil:
			t.Fatalf("RequestAddress: %v", err)
		case !p.Subnet.Contains(a) || a == p.Subnet.Addr() || (p.Range.IsValid() && !p.Range.Contains(a)):
			t.Fatalf("RequestAddress = %v, not a host of %v range %v", a, p.Subnet, p.Range)
		}
		if _, err := d.RequestAddress(ctx, p.ID, p.Subnet.Addr()); !errors.Is(err, ipam.ErrOutOfRange) {
			t.Fatalf("network address: %v", err)
		}
		if err := d.ReleasePool(ctx, p.ID); err != nil {
			t.Fatal(err)
		}
	})
}

// FuzzRequestAddress requests an arbitrary address from a pool of an arbitrary subnet.
func FuzzRequestAddress(f *testing.F) {
	for _, s := range [][2]string{
		{"10.0.0.0/24", "10.0.0.5"}, {"10.0.0.0/24", "10.0.0.255"}, {"10.0.0.0/24", "10.0.1.0"},
		{"fd00::/64", "fd00::1"}, {"fd00::/64", "fd00::1%eth0"}, {"::/0", "::"}, {"10.0.0.0/31", "10.0.0.1"},
		{"10.0.0.0/24", "::ffff:10.0.0.5"}, {"10.0.0.0/24", ""},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, subnet, addr string) {
		ctx := t.Context()
		d, err := ipam.NewDefault(ipam.DefaultConfig{})
		if err != nil {
			t.Fatal(err)
		}
		p, err := d.RequestPool(ctx, ipam.PoolRequest{Subnet: parsePrefix(subnet)})
		if err != nil {
			return
		}
		a, _ := netip.ParseAddr(addr)
		got, err := d.RequestAddress(ctx, p.ID, a)
		switch {
		case err == nil:
			if !p.Subnet.Contains(got) || (a.IsValid() && got != a) {
				t.Fatalf("RequestAddress(%v) = %v in %v", a, got, p.Subnet)
			}
			if _, err := d.RequestAddress(ctx, p.ID, got); !errors.Is(err, ipam.ErrAddressInUse) {
				t.Fatalf("second request of %v: %v", got, err)
			}
			if err := d.ReleaseAddress(ctx, p.ID, got); err != nil {
				t.Fatal(err)
			}
		case errors.Is(err, ipam.ErrOutOfRange), errors.Is(err, ipam.ErrPoolExhausted):
		default:
			t.Fatalf("RequestAddress(%v): untyped error %v", a, err)
		}
		if _, n, err := d.Usage(context.Background(), p.ID); err != nil || n != 0 {
			t.Fatalf("Usage = %d, %v", n, err)
		}
	})
}
