package ipam_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/cnmkit/cnm/ipam"
)

var (
	pfx  = netip.MustParsePrefix
	addr = netip.MustParseAddr
)

func newDefault(t testing.TB, cfg ipam.DefaultConfig) *ipam.Default {
	t.Helper()
	d, err := ipam.NewDefault(cfg)
	if err != nil {
		t.Fatalf("NewDefault: %v", err)
	}
	return d
}

func mustPool(t testing.TB, d *ipam.Default, req ipam.PoolRequest) ipam.Pool {
	t.Helper()
	p, err := d.RequestPool(context.Background(), req)
	if err != nil {
		t.Fatalf("RequestPool(%+v): %v", req, err)
	}
	return p
}

func mustAddr(t testing.TB, d *ipam.Default, id ipam.PoolID, a netip.Addr) netip.Addr {
	t.Helper()
	got, err := d.RequestAddress(context.Background(), id, a)
	if err != nil {
		t.Fatalf("RequestAddress(%s, %v): %v", id, a, err)
	}
	return got
}

// wantInvalid checks that err is an invalid-parameter error for field.
func wantInvalid(t *testing.T, err error, field string) {
	t.Helper()
	if !errors.Is(err, errclass.ErrInvalidParameter) {
		t.Fatalf("err = %v, want an invalid parameter error", err)
	}
	var ip *errclass.InvalidParameterError
	if !errors.As(err, &ip) {
		t.Fatalf("err = %v, want an *errclass.InvalidParameterError", err)
	}
	if ip.Field != field {
		t.Errorf("field = %q, want %q (err %v)", ip.Field, field, err)
	}
}

func TestNewDefaultValidation(t *testing.T) {
	tests := []struct {
		name  string
		cfg   ipam.DefaultConfig
		field string
	}{
		{"invalid base", ipam.DefaultConfig{PoolsV4: []ipam.DefaultPool{{Size: 24}}}, "PoolsV4[0].Base"},
		{"v6 base in v4 list", ipam.DefaultConfig{PoolsV4: []ipam.DefaultPool{
			{Base: pfx("10.0.0.0/8"), Size: 24}, {Base: pfx("fd00::/8"), Size: 64}}}, "PoolsV4[1].Base"},
		{"v4 base in v6 list", ipam.DefaultConfig{PoolsV6: []ipam.DefaultPool{{Base: pfx("10.0.0.0/8"), Size: 24}}}, "PoolsV6[0].Base"},
		{"unmasked", ipam.DefaultConfig{PoolsV4: []ipam.DefaultPool{{Base: pfx("10.1.0.0/8"), Size: 24}}}, "PoolsV4[0].Base"},
		{"size below bits", ipam.DefaultConfig{PoolsV4: []ipam.DefaultPool{{Base: pfx("10.0.0.0/16"), Size: 8}}}, "PoolsV4[0].Size"},
		{"size above 32", ipam.DefaultConfig{PoolsV4: []ipam.DefaultPool{{Base: pfx("10.0.0.0/16"), Size: 33}}}, "PoolsV4[0].Size"},
		{"size above 128", ipam.DefaultConfig{PoolsV6: []ipam.DefaultPool{{Base: pfx("fd00::/8"), Size: 129}}}, "PoolsV6[0].Size"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := ipam.NewDefault(tt.cfg)
			if d != nil {
				t.Errorf("NewDefault returned a Default with an error")
			}
			wantInvalid(t, err, tt.field)
		})
	}
	// Edges that are fine.
	for _, cfg := range []ipam.DefaultConfig{
		{PoolsV4: []ipam.DefaultPool{{Base: pfx("10.0.0.0/8"), Size: 8}, {Base: pfx("10.0.0.0/8"), Size: 32}}},
		{PoolsV6: []ipam.DefaultPool{{Base: pfx("::/0"), Size: 128}}},
	} {
		if _, err := ipam.NewDefault(cfg); err != nil {
			t.Errorf("NewDefault(%+v): %v", cfg, err)
		}
	}
}

func TestDefaultPoolsAreCopies(t *testing.T) {
	a := ipam.DefaultPoolsV4()
	a[0].Size = 30
	if got := ipam.DefaultPoolsV4()[0].Size; got != 16 {
		t.Errorf("DefaultPoolsV4 shares its slice: size %d", got)
	}
}

func TestAutoPickOrder(t *testing.T) {
	ctx := t.Context()
	d := newDefault(t, ipam.DefaultConfig{})
	var got []string
	for range 15 + 16 + 2 {
		p, err := d.RequestPool(ctx, ipam.PoolRequest{})
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, p.Subnet.String())
	}
	var want []string
	for i := 17; i <= 31; i++ {
		want = append(want, fmt.Sprintf("172.%d.0.0/16", i))
	}
	for i := range 16 {
		want = append(want, fmt.Sprintf("192.168.%d.0/20", i*16))
	}
	want = append(want, "10.0.0.0/24", "10.0.1.0/24")
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("auto-picked subnets (-want +got):\n%s", diff)
	}

	for _, want := range []string{"fd00::/64", "fd00:0:0:1::/64"} {
		p, err := d.RequestPool(ctx, ipam.PoolRequest{V6: true})
		if err != nil {
			t.Fatal(err)
		}
		if p.Subnet.String() != want {
			t.Errorf("v6 auto pick = %s, want %s", p.Subnet, want)
		}
	}
}

func TestAutoPickSkipsPoolsAndExcludes(t *testing.T) {
	ctx := t.Context()
	cfg := ipam.DefaultConfig{PoolsV4: []ipam.DefaultPool{
		{Base: pfx("10.0.0.0/16"), Size: 24},
		{Base: pfx("10.9.0.0/24"), Size: 26},
	}}
	d := newDefault(t, cfg)
	// A smaller explicit pool blocks the /24 it is in; a bigger one blocks all /24s inside it.
	mustPool(t, d, ipam.PoolRequest{Subnet: pfx("10.0.0.128/25")})
	mustPool(t, d, ipam.PoolRequest{Subnet: pfx("10.0.4.0/22")})
	// Another space does not matter.
	mustPool(t, d, ipam.PoolRequest{Space: ipam.GlobalSpace, Subnet: pfx("10.0.1.0/24")})

	req := ipam.PoolRequest{Exclude: []netip.Prefix{
		pfx("10.0.1.7/24"),    // host address: masked to 10.0.1.0/24
		pfx("10.0.2.0/23"),    // covers two candidates
		pfx("fd00::/8"),       // other family: ignored
		pfx("192.168.0.0/16"), // outside the bases
	}}
	p := mustPool(t, d, req)
	if want := pfx("10.0.8.0/24"); p.Subnet != want {
		t.Errorf("picked %s, want %s", p.Subnet, want)
	}
	if p.ID != ipam.MakePoolID(ipam.LocalSpace, p.Subnet) || p.Range.IsValid() {
		t.Errorf("pool = %+v", p)
	}
	// The same request again skips the new pool too.
	if p := mustPool(t, d, req); p.Subnet != pfx("10.0.9.0/24") {
		t.Errorf("second pick %s, want 10.0.9.0/24", p.Subnet)
	}
	// Excluding the whole first base moves to the second.
	p = mustPool(t, d, ipam.PoolRequest{Exclude: []netip.Prefix{pfx("10.0.0.0/16")}})
	if want := pfx("10.9.0.0/26"); p.Subnet != want {
		t.Errorf("picked %s, want %s", p.Subnet, want)
	}
	// A released pool is free again, first fit.
	if err := d.ReleasePool(ctx, ipam.MakePoolID(ipam.LocalSpace, pfx("10.0.0.128/25"))); err != nil {
		t.Fatal(err)
	}
	if p := mustPool(t, d, ipam.PoolRequest{}); p.Subnet != pfx("10.0.0.0/24") {
		t.Errorf("pick after release = %s, want 10.0.0.0/24", p.Subnet)
	}

	_, err := d.RequestPool(ctx, ipam.PoolRequest{Exclude: []netip.Prefix{pfx("10.0.0.0/8"), {}}})
	wantInvalid(t, err, "exclude[1]")
}

func TestAutoPickExhausted(t *testing.T) {
	ctx := t.Context()
	d := newDefault(t, ipam.DefaultConfig{
		PoolsV4: []ipam.DefaultPool{{Base: pfx("10.0.0.0/30"), Size: 31}},
		PoolsV6: []ipam.DefaultPool{{Base: pfx("fd00::/127"), Size: 128}},
	})
	for range 2 {
		mustPool(t, d, ipam.PoolRequest{})
		mustPool(t, d, ipam.PoolRequest{V6: true})
	}
	for _, v6 := range []bool{false, true} {
		_, err := d.RequestPool(ctx, ipam.PoolRequest{V6: v6})
		if !errors.Is(err, ipam.ErrPoolExhausted) || !errors.Is(err, errclass.ErrUnavailable) {
			t.Errorf("v6=%v: err = %v, want ErrPoolExhausted", v6, err)
		}
	}
	// Another space still has room.
	mustPool(t, d, ipam.PoolRequest{Space: ipam.GlobalSpace})
	// An exclusion of everything exhausts too.
	d = newDefault(t, ipam.DefaultConfig{})
	_, err := d.RequestPool(ctx, ipam.PoolRequest{Exclude: []netip.Prefix{pfx("0.0.0.0/0")}})
	if !errors.Is(err, ipam.ErrPoolExhausted) {
		t.Errorf("err = %v, want ErrPoolExhausted", err)
	}
}

// TestAutoPickEndOfAddressSpace checks that skipping past the last candidate of a base that ends at
// the top of the address space stops instead of wrapping.
func TestAutoPickEndOfAddressSpace(t *testing.T) {
	ctx := t.Context()
	d := newDefault(t, ipam.DefaultConfig{
		PoolsV4: []ipam.DefaultPool{{Base: pfx("255.255.255.0/24"), Size: 25}},
		PoolsV6: []ipam.DefaultPool{{Base: pfx("::/0"), Size: 1}},
	})
	for _, want := range []string{"255.255.255.0/25", "255.255.255.128/25"} {
		if p := mustPool(t, d, ipam.PoolRequest{}); p.Subnet.String() != want {
			t.Errorf("picked %s, want %s", p.Subnet, want)
		}
	}
	if _, err := d.RequestPool(ctx, ipam.PoolRequest{}); !errors.Is(err, ipam.ErrPoolExhausted) {
		t.Errorf("err = %v, want ErrPoolExhausted", err)
	}
	p := mustPool(t, d, ipam.PoolRequest{V6: true, Exclude: []netip.Prefix{pfx("::1/128")}})
	if want := pfx("8000::/1"); p.Subnet != want {
		t.Errorf("picked %s, want %s", p.Subnet, want)
	}
	if _, err := d.RequestPool(ctx, ipam.PoolRequest{V6: true, Exclude: []netip.Prefix{pfx("::1/128")}}); !errors.Is(err, ipam.ErrPoolExhausted) {
		t.Errorf("err = %v, want ErrPoolExhausted", err)
	}
}

func TestRequestPoolExplicit(t *testing.T) {
	ctx := t.Context()
	d := newDefault(t, ipam.DefaultConfig{})
	p := mustPool(t, d, ipam.PoolRequest{Subnet: pfx("10.10.0.0/24"), Range: pfx("10.10.0.128/25")})
	want := ipam.Pool{ID: "local/10.10.0.0/24", Subnet: pfx("10.10.0.0/24"), Range: pfx("10.10.0.128/25")}
	if p != want {
		t.Errorf("pool = %+v, want %+v", p, want)
	}
	// A Range equal to the Subnet is no range.
	p = mustPool(t, d, ipam.PoolRequest{Subnet: pfx("10.11.0.0/24"), Range: pfx("10.11.0.0/24")})
	if p.Range.IsValid() {
		t.Errorf("range = %v, want zero", p.Range)
	}
	// V6 is ignored with an explicit subnet.
	if p := mustPool(t, d, ipam.PoolRequest{Subnet: pfx("10.12.0.0/24"), V6: true}); p.Subnet != pfx("10.12.0.0/24") {
		t.Errorf("pool = %+v", p)
	}
	// The same subnet in another space is fine.
	p = mustPool(t, d, ipam.PoolRequest{Space: ipam.GlobalSpace, Subnet: pfx("10.10.0.0/24")})
	if p.ID != "global/10.10.0.0/24" {
		t.Errorf("id = %s", p.ID)
	}
	mustPool(t, d, ipam.PoolRequest{Space: "custom", Subnet: pfx("10.10.0.0/24")})
	mustPool(t, d, ipam.PoolRequest{Subnet: pfx("fd10::/64")})
	_ = ctx
}

func TestRequestPoolOverlap(t *testing.T) {
	ctx := t.Context()
	d := newDefault(t, ipam.DefaultConfig{})
	mustPool(t, d, ipam.PoolRequest{Subnet: pfx("10.10.1.0/24")})
	mustPool(t, d, ipam.PoolRequest{Subnet: pfx("10.10.5.0/24")})
	mustPool(t, d, ipam.PoolRequest{Subnet: pfx("fd10::/64")})
	for _, tc := range []struct {
		space  ipam.AddressSpace
		subnet string
		other  ipam.PoolID
	}{
		{"", "10.10.1.0/24", "local/10.10.1.0/24"},
		{ipam.LocalSpace, "10.10.1.0/24", "local/10.10.1.0/24"},
		{"", "10.10.1.64/26", "local/10.10.1.0/24"},
		{"", "10.10.0.0/16", "local/10.10.1.0/24"}, // covers both; names the lowest
		{"", "0.0.0.0/0", "local/10.10.1.0/24"},
		{"", "10.10.5.255/32", "local/10.10.5.0/24"},
		{"", "fd10::1:0/112", "local/fd10::/64"},
	} {
		_, err := d.RequestPool(ctx, ipam.PoolRequest{Space: tc.space, Subnet: pfx(tc.subnet)})
		if !errors.Is(err, ipam.ErrPoolOverlap) || !errors.Is(err, errclass.ErrConflict) {
			t.Errorf("%s: err = %v, want ErrPoolOverlap", tc.subnet, err)
			continue
		}
		if !strings.Contains(err.Error(), string(tc.other)) || !strings.Contains(err.Error(), tc.subnet) {
			t.Errorf("%s: err = %q does not name %s and the subnet", tc.subnet, err, tc.other)
		}
	}
	// Adjacent is fine.
	mustPool(t, d, ipam.PoolRequest{Subnet: pfx("10.10.2.0/23")})
	mustPool(t, d, ipam.PoolRequest{Subnet: pfx("10.10.0.0/24")})
}

func TestRequestPoolInvalid(t *testing.T) {
	d := newDefault(t, ipam.DefaultConfig{})
	for _, tc := range []struct {
		name  string
		req   ipam.PoolRequest
		field string
	}{
		{"host bits", ipam.PoolRequest{Subnet: pfx("10.10.0.1/24")}, "subnet"},
		{"v6 host bits", ipam.PoolRequest{Subnet: pfx("fd00::1/64")}, "subnet"},
		{"bad bits", ipam.PoolRequest{Subnet: netip.PrefixFrom(addr("10.0.0.0"), 33)}, "subnet"},
		{"range host bits", ipam.PoolRequest{Subnet: pfx("10.10.0.0/24"), Range: pfx("10.10.0.129/25")}, "range"},
		{"range outside", ipam.PoolRequest{Subnet: pfx("10.10.0.0/24"), Range: pfx("10.10.1.0/25")}, "range"},
		{"range bigger", ipam.PoolRequest{Subnet: pfx("10.10.0.0/24"), Range: pfx("10.10.0.0/23")}, "range"},
		{"range family", ipam.PoolRequest{Subnet: pfx("10.10.0.0/24"), Range: pfx("::/120")}, "range"},
		{"range mapped", ipam.PoolRequest{Subnet: pfx("10.10.0.0/24"), Range: pfx("::ffff:10.10.0.0/120")}, "range"},
		{"range invalid", ipam.PoolRequest{Subnet: pfx("10.10.0.0/24"), Range: netip.PrefixFrom(addr("10.10.0.0"), -1)}, "range"},
		{"range without subnet", ipam.PoolRequest{Range: pfx("10.10.0.0/25")}, "range"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := d.RequestPool(t.Context(), tc.req)
			wantInvalid(t, err, tc.field)
		})
	}
	_, err := d.RequestPool(t.Context(), ipam.PoolRequest{Subnet: pfx("10.10.0.1/24")})
	if !strings.Contains(err.Error(), "10.10.0.0/24") {
		t.Errorf("err = %q does not suggest the masked subnet", err)
	}
}

func TestCanceledContext(t *testing.T) {
	d := newDefault(t, ipam.DefaultConfig{})
	p := mustPool(t, d, ipam.PoolRequest{})
	a := mustAddr(t, d, p.ID, netip.Addr{})
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := d.RequestPool(ctx, ipam.PoolRequest{}); !errors.Is(err, context.Canceled) {
		t.Errorf("RequestPool: %v", err)
	}
	if _, err := d.RequestAddress(ctx, p.ID, netip.Addr{}); !errors.Is(err, context.Canceled) {
		t.Errorf("RequestAddress: %v", err)
	}
	if err := d.ReleaseAddress(ctx, p.ID, a); !errors.Is(err, context.Canceled) {
		t.Errorf("ReleaseAddress: %v", err)
	}
	if err := d.ReleasePool(ctx, p.ID); !errors.Is(err, context.Canceled) {
		t.Errorf("ReleasePool: %v", err)
	}
	// Nothing changed.
	if _, n, err := d.Usage(context.Background(), p.ID); err != nil || n != 1 {
		t.Errorf("Usage = %d, %v; want 1, nil", n, err)
	}
}

func TestDynamicRange(t *testing.T) {
	ctx := t.Context()
	d := newDefault(t, ipam.DefaultConfig{})
	// A range at the top of the subnet never hands out the broadcast address.
	p := mustPool(t, d, ipam.PoolRequest{Subnet: pfx("10.0.0.0/24"), Range: pfx("10.0.0.248/29")})
	var got []string
	for {
		a, err := d.RequestAddress(ctx, p.ID, netip.Addr{})
		if errors.Is(err, ipam.ErrPoolExhausted) {
			if !strings.Contains(err.Error(), "10.0.0.248/29") {
				t.Errorf("err = %q does not name the range", err)
			}
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, a.String())
	}
	want := []string{"10.0.0.248", "10.0.0.249", "10.0.0.250", "10.0.0.251", "10.0.0.252", "10.0.0.253", "10.0.0.254"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("dynamic addresses (-want +got):\n%s", diff)
	}
	// Static addresses may be outside the range, and do not use up the range.
	mustAddr(t, d, p.ID, addr("10.0.0.5"))
	if err := d.ReleaseAddress(ctx, p.ID, addr("10.0.0.250")); err != nil {
		t.Fatal(err)
	}
	if a := mustAddr(t, d, p.ID, netip.Addr{}); a != addr("10.0.0.250") {
		t.Errorf("got %s, want 10.0.0.250", a)
	}

	// A range at the bottom never hands out the network address.
	p = mustPool(t, d, ipam.PoolRequest{Subnet: pfx("10.1.0.0/24"), Range: pfx("10.1.0.0/30")})
	for _, want := range []string{"10.1.0.1", "10.1.0.2", "10.1.0.3"} {
		if a := mustAddr(t, d, p.ID, netip.Addr{}); a.String() != want {
			t.Errorf("got %s, want %s", a, want)
		}
	}
	if _, err := d.RequestAddress(ctx, p.ID, netip.Addr{}); !errors.Is(err, ipam.ErrPoolExhausted) {
		t.Errorf("err = %v, want ErrPoolExhausted", err)
	}
	// A range of just the broadcast address has nothing to hand out.
	p = mustPool(t, d, ipam.PoolRequest{Subnet: pfx("10.2.0.0/24"), Range: pfx("10.2.0.255/32")})
	if _, err := d.RequestAddress(ctx, p.ID, netip.Addr{}); !errors.Is(err, ipam.ErrPoolExhausted) {
		t.Errorf("err = %v, want ErrPoolExhausted", err)
	}
}

func TestTinySubnets(t *testing.T) {
	ctx := t.Context()
	d := newDefault(t, ipam.DefaultConfig{})
	for _, tc := range []struct {
		subnet string
		want   []string
	}{
		{"10.0.0.0/32", nil},
		{"10.0.0.4/31", nil}, // network and broadcast: the contract leaves nothing (no RFC 3021)
		{"10.0.0.8/30", []string{"10.0.0.9", "10.0.0.10"}},
		{"fd00::/128", nil},
		{"fd00::2/127", []string{"fd00::3"}},
		{"fd00::4/126", []string{"fd00::5", "fd00::6", "fd00::7"}},
	} {
		p := mustPool(t, d, ipam.PoolRequest{Subnet: pfx(tc.subnet)})
		var got []string
		for {
			a, err := d.RequestAddress(ctx, p.ID, netip.Addr{})
			if errors.Is(err, ipam.ErrPoolExhausted) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, a.String())
		}
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("%s (-want +got):\n%s", tc.subnet, diff)
		}
		size, n, err := d.Usage(context.Background(), p.ID)
		if err != nil || size != uint64(len(tc.want)) || n != len(tc.want) {
			t.Errorf("%s: Usage = %d, %d, %v; want %d, %d", tc.subnet, size, n, err, len(tc.want), len(tc.want))
		}
	}
}

// TestWholeAddressSpace checks the arithmetic at the top of the 128-bit space.
func TestWholeAddressSpace(t *testing.T) {
	ctx := t.Context()
	d := newDefault(t, ipam.DefaultConfig{})
	p := mustPool(t, d, ipam.PoolRequest{Subnet: pfx("::/0"), Range: pfx("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffc/126")})
	var got []string
	for range 5 {
		a, err := d.RequestAddress(ctx, p.ID, netip.Addr{})
		if err != nil {
			got = append(got, "exhausted")
			if !errors.Is(err, ipam.ErrPoolExhausted) {
				t.Errorf("err = %v", err)
			}
			continue
		}
		got = append(got, a.String())
	}
	want := []string{"ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffc", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffd",
		"ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "exhausted"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	if err := d.ReleaseAddress(ctx, p.ID, addr("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffd")); err != nil {
		t.Fatal(err)
	}
	if a := mustAddr(t, d, p.ID, netip.Addr{}); a != addr("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffd") {
		t.Errorf("after wrap got %s", a)
	}
	if _, err := d.RequestAddress(ctx, p.ID, addr("::")); !errors.Is(err, ipam.ErrOutOfRange) {
		t.Errorf("network address: err = %v", err)
	}
	if size, _, _ := d.Usage(context.Background(), p.ID); size != math.MaxUint64 {
		t.Errorf("size = %d, want saturated", size)
	}

	p = mustPool(t, d, ipam.PoolRequest{Subnet: pfx("0.0.0.0/0")})
	if a := mustAddr(t, d, p.ID, netip.Addr{}); a != addr("0.0.0.1") {
		t.Errorf("first = %s", a)
	}
	mustAddr(t, d, p.ID, addr("255.255.255.254"))
	if _, err := d.RequestAddress(ctx, p.ID, addr("255.255.255.255")); !errors.Is(err, ipam.ErrOutOfRange) {
		t.Errorf("broadcast: err = %v", err)
	}
	if size, _, _ := d.Usage(context.Background(), p.ID); size != 1<<32-2 {
		t.Errorf("size = %d", size)
	}
}

func TestRequestAddressStatic(t *testing.T) {
	ctx := t.Context()
	d := newDefault(t, ipam.DefaultConfig{})
	p4 := mustPool(t, d, ipam.PoolRequest{Subnet: pfx("10.0.0.0/24")})
	p6 := mustPool(t, d, ipam.PoolRequest{Subnet: pfx("fd00::/64")})

	if a := mustAddr(t, d, p4.ID, addr("10.0.0.7")); a != addr("10.0.0.7") {
		t.Errorf("got %s", a)
	}
	// IPv6 has no broadcast address.
	mustAddr(t, d, p6.ID, addr("fd00::ffff:ffff:ffff:ffff"))

	for _, tc := range []struct {
		name string
		id   ipam.PoolID
		addr string
		want error
		msg  []string
	}{
		{"in use", p4.ID, "10.0.0.7", ipam.ErrAddressInUse, []string{"10.0.0.7", string(p4.ID)}},
		{"v6 in use", p6.ID, "fd00::ffff:ffff:ffff:ffff", ipam.ErrAddressInUse, nil},
		{"outside", p4.ID, "10.0.1.1", ipam.ErrOutOfRange, []string{"10.0.1.1", "10.0.0.0/24"}},
		{"family", p4.ID, "fd00::1", ipam.ErrOutOfRange, nil},
		{"mapped", p4.ID, "::ffff:10.0.0.9", ipam.ErrOutOfRange, nil},
		{"zoned", p6.ID, "fd00::9%eth0", ipam.ErrOutOfRange, nil},
		{"network", p4.ID, "10.0.0.0", ipam.ErrOutOfRange, []string{"network"}},
		{"broadcast", p4.ID, "10.0.0.255", ipam.ErrOutOfRange, []string{"broadcast"}},
		{"v6 network", p6.ID, "fd00::", ipam.ErrOutOfRange, nil},
		{"unknown pool", "local/10.9.0.0/24", "10.9.0.1", ipam.ErrUnknownPool, []string{"local/10.9.0.0/24"}},
		{"unknown pool dynamic", "local/10.9.0.0/24", "", ipam.ErrUnknownPool, nil},
	} {
		var a netip.Addr
		if tc.addr != "" {
			a = addr(tc.addr)
		}
		_, err := d.RequestAddress(ctx, tc.id, a)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: err = %v, want %v", tc.name, err, tc.want)
			continue
		}
		for _, m := range tc.msg {
			if !strings.Contains(err.Error(), m) {
				t.Errorf("%s: err %q does not mention %q", tc.name, err, m)
			}
		}
	}
	// The error classes carry through.
	_, err := d.RequestAddress(ctx, p4.ID, addr("10.0.0.7"))
	if !errors.Is(err, errclass.ErrConflict) {
		t.Errorf("in use is not a conflict: %v", err)
	}
	_, err = d.RequestAddress(ctx, p4.ID, addr("10.0.0.0"))
	if !errors.Is(err, errclass.ErrInvalidParameter) {
		t.Errorf("out of range is not invalid parameter: %v", err)
	}
	_, err = d.RequestAddress(ctx, "nope", netip.Addr{})
	if !errors.Is(err, errclass.ErrNotFound) {
		t.Errorf("unknown pool is not not-found: %v", err)
	}
}

func TestReleaseAddress(t *testing.T) {
	ctx := t.Context()
	d := newDefault(t, ipam.DefaultConfig{})
	p := mustPool(t, d, ipam.PoolRequest{Subnet: pfx("10.0.0.0/24")})
	a := mustAddr(t, d, p.ID, netip.Addr{})
	for range 2 { // the second release is of a free address
		if err := d.ReleaseAddress(ctx, p.ID, a); err != nil {
			t.Errorf("ReleaseAddress: %v", err)
		}
	}
	for _, free := range []string{"10.0.0.77", "10.0.0.0", "10.0.0.255"} {
		if err := d.ReleaseAddress(ctx, p.ID, addr(free)); err != nil {
			t.Errorf("ReleaseAddress(%s): %v", free, err)
		}
	}
	if err := d.ReleaseAddress(ctx, p.ID, addr("10.0.1.1")); !errors.Is(err, ipam.ErrOutOfRange) {
		t.Errorf("outside: %v", err)
	}
	if err := d.ReleaseAddress(ctx, "local/10.9.0.0/24", addr("10.9.0.1")); !errors.Is(err, ipam.ErrUnknownPool) {
		t.Errorf("unknown pool: %v", err)
	}
	wantInvalidErr := d.ReleaseAddress(ctx, p.ID, netip.Addr{})
	wantInvalid(t, wantInvalidErr, "addr")
	// Released, the address can be requested statically again.
	mustAddr(t, d, p.ID, a)
	if _, n, _ := d.Usage(context.Background(), p.ID); n != 1 {
		t.Errorf("in use = %d, want 1", n)
	}
}

func TestReleasePool(t *testing.T) {
	ctx := t.Context()
	d := newDefault(t, ipam.DefaultConfig{})
	if err := d.ReleasePool(ctx, "local/10.0.0.0/24"); err != nil {
		t.Errorf("release unknown pool: %v", err)
	}
	p := mustPool(t, d, ipam.PoolRequest{Subnet: pfx("10.0.0.0/24")})
	mustAddr(t, d, p.ID, addr("10.0.0.9"))
	mustAddr(t, d, p.ID, netip.Addr{})
	for range 2 {
		if err := d.ReleasePool(ctx, p.ID); err != nil {
			t.Fatalf("ReleasePool: %v", err)
		}
	}
	if _, _, err := d.Usage(context.Background(), p.ID); !errors.Is(err, ipam.ErrUnknownPool) {
		t.Errorf("Usage after release: %v", err)
	}
	if _, err := d.RequestAddress(ctx, p.ID, netip.Addr{}); !errors.Is(err, ipam.ErrUnknownPool) {
		t.Errorf("RequestAddress after release: %v", err)
	}
	// The subnet is free again, with all its addresses.
	p = mustPool(t, d, ipam.PoolRequest{Subnet: pfx("10.0.0.0/25")})
	mustAddr(t, d, p.ID, addr("10.0.0.9"))
	if a := mustAddr(t, d, p.ID, netip.Addr{}); a != addr("10.0.0.1") {
		t.Errorf("first dynamic = %s, want 10.0.0.1", a)
	}
}

func TestUsage(t *testing.T) {
	d := newDefault(t, ipam.DefaultConfig{})
	for _, tc := range []struct {
		subnet string
		size   uint64
	}{
		{"10.0.0.0/24", 254},
		{"11.0.0.0/8", 1<<24 - 2},
		{"fd00::/120", 255},
		{"fd01::/64", math.MaxUint64},
		{"fd02::/63", math.MaxUint64},
		{"fd03::/48", math.MaxUint64},
	} {
		p := mustPool(t, d, ipam.PoolRequest{Subnet: pfx(tc.subnet).Masked()})
		mustAddr(t, d, p.ID, netip.Addr{})
		mustAddr(t, d, p.ID, p.Subnet.Addr().Next().Next().Next())
		size, n, err := d.Usage(context.Background(), p.ID)
		if err != nil || size != tc.size || n != 2 {
			t.Errorf("%s: Usage = %d, %d, %v; want %d, 2, nil", tc.subnet, size, n, err, tc.size)
		}
	}
}

// TestV6Large allocates many addresses from an IPv6 /64 and a /48.
func TestV6Large(t *testing.T) {
	d := newDefault(t, ipam.DefaultConfig{})
	for _, s := range []string{"fd00::/64", "fd01::/48"} {
		p := mustPool(t, d, ipam.PoolRequest{Subnet: pfx(s)})
		want := pfx(s).Addr()
		for range 10000 {
			want = want.Next()
			if a := mustAddr(t, d, p.ID, netip.Addr{}); a != want {
				t.Fatalf("got %s, want %s", a, want)
			}
		}
		// A static address far away, then the sequence goes on.
		far := addr("fd00::ffff:0:0:1")
		if s == "fd01::/48" {
			far = addr("fd01:0:0:ffff::1")
		}
		mustAddr(t, d, p.ID, far)
		if a := mustAddr(t, d, p.ID, netip.Addr{}); a != want.Next() {
			t.Errorf("got %s, want %s", a, want.Next())
		}
		if _, n, _ := d.Usage(context.Background(), p.ID); n != 10002 {
			t.Errorf("in use = %d", n)
		}
	}
}

func TestConcurrent(t *testing.T) {
	ctx := t.Context()
	d := newDefault(t, ipam.DefaultConfig{})
	p := mustPool(t, d, ipam.PoolRequest{Subnet: pfx("10.0.0.0/20")})
	const workers, each = 8, 200
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		seen = map[netip.Addr]bool{}
		errs []error
	)
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				a, err := d.RequestAddress(ctx, p.ID, netip.Addr{})
				if err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
					return
				}
				mu.Lock()
				if seen[a] {
					errs = append(errs, fmt.Errorf("%s handed out twice", a))
				}
				seen[a] = true
				mu.Unlock()
				if i%3 == 0 {
					// Pools come and go alongside.
					q, err := d.RequestPool(ctx, ipam.PoolRequest{Space: ipam.AddressSpace(fmt.Sprint("w", w))})
					if err == nil {
						err = d.ReleasePool(ctx, q.ID)
					}
					if err != nil {
						mu.Lock()
						errs = append(errs, err)
						mu.Unlock()
					}
				}
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	if _, n, _ := d.Usage(context.Background(), p.ID); n != workers*each || len(seen) != workers*each {
		t.Errorf("in use %d, seen %d, want %d", n, len(seen), workers*each)
	}
}
