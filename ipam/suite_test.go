package ipam_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/cnmkit/cnm/ipam"
	"github.com/cnmkit/cnm/ipam/ipamkv"
	"github.com/cnmkit/cnm/kvstore/boltdb"
)

// fullAllocator is an allocator with every optional capability, as Default and Global are.
type fullAllocator interface {
	ipam.Allocator
	ipam.OptionsAllocator
	ipam.Reconciler
	ipam.Statuser
}

// newAllocFunc returns a fresh allocator with the given default pools.
type newAllocFunc func(t *testing.T, cfg ipam.DefaultConfig) fullAllocator

// openBolt opens a bbolt store in t.TempDir(), closed by t.Cleanup. noSync is for tests whose
// subject is not durability.
func openBolt(t testing.TB, noSync bool) *boltdb.Store {
	t.Helper()
	s, err := boltdb.Open(filepath.Join(t.TempDir(), "global.db"), boltdb.Config{NoSync: noSync})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	return s
}

func newGlobalOn(t testing.TB, s *boltdb.Store, cfg ipam.GlobalConfig) *ipam.Global {
	t.Helper()
	g, err := ipamkv.NewGlobal(s, cfg)
	if err != nil {
		t.Fatalf("NewGlobal: %v", err)
	}
	return g
}

func TestDefaultSuite(t *testing.T) {
	runAllocatorSuite(t, ipam.LocalSpace, func(t *testing.T, cfg ipam.DefaultConfig) fullAllocator {
		return newDefault(t, cfg)
	})
}

// TestGlobalSuite runs the suite on a Global on bbolt with fsync on.
func TestGlobalSuite(t *testing.T) {
	runAllocatorSuite(t, ipam.GlobalSpace, func(t *testing.T, cfg ipam.DefaultConfig) fullAllocator {
		return newGlobalOn(t, openBolt(t, false), ipam.GlobalConfig{PoolsV4: cfg.PoolsV4, PoolsV6: cfg.PoolsV6})
	})
}

// runAllocatorSuite checks the behaviour Default and Global share. space is what an empty
// PoolRequest.Space means to the allocator.
func runAllocatorSuite(t *testing.T, space ipam.AddressSpace, newAlloc newAllocFunc) {
	s := &suite{space: space, newAlloc: newAlloc}
	for _, tc := range []struct {
		name string
		fn   func(t *testing.T)
	}{
		{"ExplicitPools", s.testExplicitPools},
		{"Overlap", s.testOverlap},
		{"AutoPick", s.testAutoPick},
		{"AutoPickExhausted", s.testAutoPickExhausted},
		{"DynamicSequential", s.testDynamicSequential},
		{"DynamicRange", s.testDynamicRange},
		{"TinySubnets", s.testTinySubnets},
		{"Static", s.testStatic},
		{"Release", s.testRelease},
		{"ReleasePool", s.testReleasePool},
		{"Exhausted", s.testExhausted},
		{"Usage", s.testUsage},
		{"Reconcile", s.testReconcile},
		{"MACOptions", s.testMACOptions},
		{"CanceledContext", s.testCanceledContext},
		{"V6AcrossChunks", s.testV6AcrossChunks},
		{"Concurrent", s.testConcurrent},
	} {
		t.Run(tc.name, tc.fn)
	}
}

type suite struct {
	space    ipam.AddressSpace
	newAlloc newAllocFunc
}

func (s *suite) alloc(t *testing.T) fullAllocator { return s.newAlloc(t, ipam.DefaultConfig{}) }

func (s *suite) id(subnet string) ipam.PoolID { return ipam.MakePoolID(s.space, pfx(subnet)) }

func reqPool(t testing.TB, a ipam.Allocator, req ipam.PoolRequest) ipam.Pool {
	t.Helper()
	p, err := a.RequestPool(context.Background(), req)
	if err != nil {
		t.Fatalf("RequestPool(%+v): %v", req, err)
	}
	return p
}

func reqAddr(t testing.TB, a ipam.Allocator, id ipam.PoolID, want netip.Addr) netip.Addr {
	t.Helper()
	got, err := a.RequestAddress(context.Background(), id, want)
	if err != nil {
		t.Fatalf("RequestAddress(%s, %v): %v", id, want, err)
	}
	return got
}

func usage(t testing.TB, a ipam.Statuser, id ipam.PoolID) (uint64, int) {
	t.Helper()
	size, n, err := a.Usage(context.Background(), id)
	if err != nil {
		t.Fatalf("Usage(%s): %v", id, err)
	}
	return size, n
}

// drain requests dynamic addresses until the pool is exhausted and returns them.
func drain(t testing.TB, a ipam.Allocator, id ipam.PoolID) []string {
	t.Helper()
	var got []string
	for {
		x, err := a.RequestAddress(context.Background(), id, netip.Addr{})
		if errors.Is(err, ipam.ErrPoolExhausted) {
			return got
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, x.String())
	}
}

func (s *suite) testExplicitPools(t *testing.T) {
	a := s.alloc(t)
	p := reqPool(t, a, ipam.PoolRequest{Subnet: pfx("10.10.0.0/24"), Range: pfx("10.10.0.128/25")})
	want := ipam.Pool{ID: s.id("10.10.0.0/24"), Subnet: pfx("10.10.0.0/24"), Range: pfx("10.10.0.128/25")}
	if p != want {
		t.Errorf("pool = %+v, want %+v", p, want)
	}
	if p := reqPool(t, a, ipam.PoolRequest{Subnet: pfx("10.11.0.0/24"), Range: pfx("10.11.0.0/24")}); p.Range.IsValid() {
		t.Errorf("a range equal to the subnet: range = %v, want zero", p.Range)
	}
	for _, sp := range []ipam.AddressSpace{ipam.LocalSpace, ipam.GlobalSpace, "custom"} {
		if sp == s.space {
			continue
		}
		p := reqPool(t, a, ipam.PoolRequest{Space: sp, Subnet: pfx("10.10.0.0/24")})
		if p.ID != ipam.MakePoolID(sp, pfx("10.10.0.0/24")) {
			t.Errorf("id = %s", p.ID)
		}
	}
	reqPool(t, a, ipam.PoolRequest{Subnet: pfx("fd10::/64")})
	_, err := a.RequestPool(t.Context(), ipam.PoolRequest{Subnet: pfx("10.10.0.1/24")})
	wantInvalid(t, err, "subnet")
	_, err = a.RequestPool(t.Context(), ipam.PoolRequest{Subnet: pfx("10.12.0.0/24"), Range: pfx("10.13.0.0/25")})
	wantInvalid(t, err, "range")
	_, err = a.RequestPool(t.Context(), ipam.PoolRequest{Range: pfx("10.13.0.0/25")})
	wantInvalid(t, err, "range")
	_, err = a.RequestPool(t.Context(), ipam.PoolRequest{Reserved: []ipam.Reservation{{}}})
	wantInvalid(t, err, "reserved[0]")
}

func (s *suite) testOverlap(t *testing.T) {
	ctx := t.Context()
	a := s.alloc(t)
	reqPool(t, a, ipam.PoolRequest{Subnet: pfx("10.10.1.0/24")})
	reqPool(t, a, ipam.PoolRequest{Subnet: pfx("10.10.5.0/24")})
	reqPool(t, a, ipam.PoolRequest{Subnet: pfx("fd10::/64")})
	for _, tc := range []struct{ subnet, with string }{
		{"10.10.1.0/24", "10.10.1.0/24"},
		{"10.10.1.64/26", "10.10.1.0/24"},
		{"10.10.0.0/16", "10.10.1.0/24"}, // covers both; names the lowest
		{"0.0.0.0/0", "10.10.1.0/24"},
		{"10.10.5.255/32", "10.10.5.0/24"},
		{"fd10::1:0/112", "fd10::/64"},
	} {
		_, err := a.RequestPool(ctx, ipam.PoolRequest{Subnet: pfx(tc.subnet)})
		if !errors.Is(err, ipam.ErrPoolOverlap) || !errors.Is(err, errclass.ErrConflict) {
			t.Errorf("%s: err = %v, want ErrPoolOverlap", tc.subnet, err)
			continue
		}
		oe, ok := errors.AsType[*ipam.OverlapError](err)
		if !ok {
			t.Errorf("%s: err = %v, want an *OverlapError", tc.subnet, err)
			continue
		}
		want := ipam.OverlapError{Requested: pfx(tc.subnet), With: pfx(tc.with), Pool: s.id(tc.with), Owner: string(s.id(tc.with))}
		if *oe != want {
			t.Errorf("%s: OverlapError = %+v, want %+v", tc.subnet, *oe, want)
		}
		if !strings.Contains(err.Error(), string(s.id(tc.with))) || !strings.Contains(err.Error(), tc.subnet) {
			t.Errorf("%s: err = %q does not name the pool and the subnet", tc.subnet, err)
		}
	}
	// Reservations: an explicit subnet fails naming the lowest one it overlaps; one of the
	// other family, or one it does not overlap, is fine.
	res := []ipam.Reservation{
		{Prefix: pfx("192.168.9.0/24"), Owner: "network web"},
		{Prefix: pfx("192.168.0.1/16"), Owner: "host route 192.168.0.0/16 dev eth0"}, // masked
		{Prefix: pfx("fd20::/64")},
	}
	_, err := a.RequestPool(ctx, ipam.PoolRequest{Subnet: pfx("192.168.9.0/25"), Reserved: res})
	oe, ok := errors.AsType[*ipam.OverlapError](err)
	if !ok || !errors.Is(err, ipam.ErrPoolOverlap) {
		t.Fatalf("err = %v, want an *OverlapError", err)
	}
	want := ipam.OverlapError{Requested: pfx("192.168.9.0/25"), With: pfx("192.168.0.0/16"), Owner: "host route 192.168.0.0/16 dev eth0"}
	if *oe != want {
		t.Errorf("OverlapError = %+v, want %+v", *oe, want)
	}
	if !strings.Contains(err.Error(), "host route 192.168.0.0/16 dev eth0") {
		t.Errorf("err = %q does not name the owner", err)
	}
	_, err = a.RequestPool(ctx, ipam.PoolRequest{Subnet: pfx("fd20::/80"), Reserved: res})
	if oe, ok := errors.AsType[*ipam.OverlapError](err); !ok || oe.Owner != "" || !strings.Contains(err.Error(), "(reserved)") {
		t.Errorf("err = %v, want an unnamed reservation", err)
	}
	reqPool(t, a, ipam.PoolRequest{Subnet: pfx("192.169.0.0/24"), Reserved: res})
	// Exclude does not apply to an explicit subnet.
	reqPool(t, a, ipam.PoolRequest{Subnet: pfx("192.170.0.0/24"), Exclude: []netip.Prefix{pfx("192.170.0.0/16")}})
	// Adjacent pools are fine.
	reqPool(t, a, ipam.PoolRequest{Subnet: pfx("10.10.2.0/23")})
	reqPool(t, a, ipam.PoolRequest{Subnet: pfx("10.10.0.0/24")})
}

func (s *suite) testAutoPick(t *testing.T) {
	a := s.newAlloc(t, ipam.DefaultConfig{
		PoolsV4: []ipam.DefaultPool{{Base: pfx("10.0.0.0/16"), Size: 24}, {Base: pfx("10.1.0.0/16"), Size: 20}},
		PoolsV6: []ipam.DefaultPool{{Base: pfx("fd00::/56"), Size: 64}},
	})
	reqPool(t, a, ipam.PoolRequest{Subnet: pfx("10.0.1.0/24")})
	reqPool(t, a, ipam.PoolRequest{Subnet: pfx("10.0.4.0/22")})
	var got []string
	for _, req := range []ipam.PoolRequest{
		{},
		{}, // skips the explicit 10.0.1.0/24
		{Exclude: []netip.Prefix{pfx("10.0.3.7/24")}},                            // masked: skips 10.0.3.0/24, then 10.0.4.0/22
		{Reserved: []ipam.Reservation{{Prefix: pfx("10.0.3.0/24"), Owner: "x"}}}, // 10.0.3.0/24 again, and .8 is taken
		{Exclude: []netip.Prefix{pfx("10.0.0.0/16")}},                            // the whole first base
		{V6: true},
		{V6: true, Exclude: []netip.Prefix{pfx("fd00:0:0:1::/64"), pfx("10.0.0.0/8")}},
	} {
		got = append(got, reqPool(t, a, req).Subnet.String())
	}
	want := []string{"10.0.0.0/24", "10.0.2.0/24", "10.0.8.0/24", "10.0.9.0/24", "10.1.0.0/20", "fd00::/64", "fd00:0:0:2::/64"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("auto-picked subnets (-want +got):\n%s", diff)
	}
	// Another space has its own subnets.
	if p := reqPool(t, a, ipam.PoolRequest{Space: "other"}); p.Subnet != pfx("10.0.0.0/24") {
		t.Errorf("other space picked %s", p.Subnet)
	}
}

func (s *suite) testAutoPickExhausted(t *testing.T) {
	ctx := t.Context()
	a := s.newAlloc(t, ipam.DefaultConfig{
		PoolsV4: []ipam.DefaultPool{{Base: pfx("10.0.0.0/30"), Size: 31}},
		PoolsV6: []ipam.DefaultPool{{Base: pfx("fd00::/127"), Size: 128}},
	})
	for range 2 {
		reqPool(t, a, ipam.PoolRequest{})
		reqPool(t, a, ipam.PoolRequest{V6: true})
	}
	for _, v6 := range []bool{false, true} {
		_, err := a.RequestPool(ctx, ipam.PoolRequest{V6: v6})
		if !errors.Is(err, ipam.ErrPoolExhausted) || !errors.Is(err, errclass.ErrUnavailable) {
			t.Errorf("v6=%v: err = %v, want ErrPoolExhausted", v6, err)
		}
	}
	reqPool(t, a, ipam.PoolRequest{Space: "other"})
}

func (s *suite) testDynamicSequential(t *testing.T) {
	ctx := t.Context()
	a := s.alloc(t)
	p := reqPool(t, a, ipam.PoolRequest{Subnet: pfx("10.0.0.0/29")})
	next := func() string {
		t.Helper()
		return reqAddr(t, a, p.ID, netip.Addr{}).String()
	}
	if got := []string{next(), next()}; !cmp.Equal(got, []string{"10.0.0.1", "10.0.0.2"}) {
		t.Errorf("got %v", got)
	}
	if err := a.ReleaseAddress(ctx, p.ID, addr("10.0.0.1")); err != nil {
		t.Fatal(err)
	}
	reqAddr(t, a, p.ID, addr("10.0.0.4"))
	if got := []string{next(), next(), next()}; !cmp.Equal(got, []string{"10.0.0.3", "10.0.0.5", "10.0.0.6"}) {
		t.Errorf("got %v, want .3 .5 .6 (a released address is not reused at once)", got)
	}
	if got := next(); got != "10.0.0.1" {
		t.Errorf("after wrap got %s, want 10.0.0.1", got)
	}
	if err := a.ReleaseAddress(ctx, p.ID, addr("10.0.0.5")); err != nil {
		t.Fatal(err)
	}
	if got := next(); got != "10.0.0.5" {
		t.Errorf("got %s, want the only free address 10.0.0.5", got)
	}
}

func (s *suite) testDynamicRange(t *testing.T) {
	a := s.alloc(t)
	p := reqPool(t, a, ipam.PoolRequest{Subnet: pfx("10.0.0.0/24"), Range: pfx("10.0.0.248/29")})
	want := []string{"10.0.0.248", "10.0.0.249", "10.0.0.250", "10.0.0.251", "10.0.0.252", "10.0.0.253", "10.0.0.254"}
	if diff := cmp.Diff(want, drain(t, a, p.ID)); diff != "" {
		t.Errorf("dynamic addresses (-want +got):\n%s", diff)
	}
	reqAddr(t, a, p.ID, addr("10.0.0.5")) // static: outside the range is fine
	p = reqPool(t, a, ipam.PoolRequest{Subnet: pfx("10.1.0.0/24"), Range: pfx("10.1.0.0/30")})
	if diff := cmp.Diff([]string{"10.1.0.1", "10.1.0.2", "10.1.0.3"}, drain(t, a, p.ID)); diff != "" {
		t.Errorf("range at the bottom (-want +got):\n%s", diff)
	}
}

func (s *suite) testTinySubnets(t *testing.T) {
	a := s.alloc(t)
	for _, tc := range []struct {
		subnet string
		want   []string
	}{
		{"10.0.0.0/32", nil},
		{"10.0.0.4/31", nil},
		{"10.0.0.8/30", []string{"10.0.0.9", "10.0.0.10"}},
		{"fd00::/128", nil},
		{"fd00::2/127", []string{"fd00::3"}},
	} {
		p := reqPool(t, a, ipam.PoolRequest{Subnet: pfx(tc.subnet)})
		if diff := cmp.Diff(tc.want, drain(t, a, p.ID)); diff != "" {
			t.Errorf("%s (-want +got):\n%s", tc.subnet, diff)
		}
		if size, n := usage(t, a, p.ID); size != uint64(len(tc.want)) || n != len(tc.want) {
			t.Errorf("%s: Usage = %d, %d; want %d, %d", tc.subnet, size, n, len(tc.want), len(tc.want))
		}
	}
}

func (s *suite) testStatic(t *testing.T) {
	ctx := t.Context()
	a := s.alloc(t)
	p4 := reqPool(t, a, ipam.PoolRequest{Subnet: pfx("10.0.0.0/24")})
	p6 := reqPool(t, a, ipam.PoolRequest{Subnet: pfx("fd00::/64")})
	reqAddr(t, a, p4.ID, addr("10.0.0.7"))
	reqAddr(t, a, p6.ID, addr("fd00::ffff:ffff:ffff:ffff"))
	for _, tc := range []struct {
		name string
		id   ipam.PoolID
		addr string
		want error
	}{
		{"in use", p4.ID, "10.0.0.7", ipam.ErrAddressInUse},
		{"v6 in use", p6.ID, "fd00::ffff:ffff:ffff:ffff", ipam.ErrAddressInUse},
		{"outside", p4.ID, "10.0.1.1", ipam.ErrOutOfRange},
		{"family", p4.ID, "fd00::1", ipam.ErrOutOfRange},
		{"mapped", p4.ID, "::ffff:10.0.0.9", ipam.ErrOutOfRange},
		{"network", p4.ID, "10.0.0.0", ipam.ErrOutOfRange},
		{"broadcast", p4.ID, "10.0.0.255", ipam.ErrOutOfRange},
		{"v6 network", p6.ID, "fd00::", ipam.ErrOutOfRange},
		{"unknown pool", s.id("10.9.0.0/24"), "10.9.0.1", ipam.ErrUnknownPool},
		{"unknown pool dynamic", s.id("10.9.0.0/24"), "", ipam.ErrUnknownPool},
	} {
		var x netip.Addr
		if tc.addr != "" {
			x = addr(tc.addr)
		}
		if _, err := a.RequestAddress(ctx, tc.id, x); !errors.Is(err, tc.want) {
			t.Errorf("%s: err = %v, want %v", tc.name, err, tc.want)
		} else if !strings.Contains(err.Error(), string(tc.id)) {
			t.Errorf("%s: err %q does not name the pool", tc.name, err)
		}
	}
	if _, n := usage(t, a, p4.ID); n != 1 {
		t.Errorf("in use = %d after failed requests, want 1", n)
	}
}

func (s *suite) testRelease(t *testing.T) {
	ctx := t.Context()
	a := s.alloc(t)
	p := reqPool(t, a, ipam.PoolRequest{Subnet: pfx("10.0.0.0/24")})
	x := reqAddr(t, a, p.ID, netip.Addr{})
	for range 2 {
		if err := a.ReleaseAddress(ctx, p.ID, x); err != nil {
			t.Errorf("ReleaseAddress: %v", err)
		}
	}
	for _, free := range []string{"10.0.0.77", "10.0.0.0", "10.0.0.255"} {
		if err := a.ReleaseAddress(ctx, p.ID, addr(free)); err != nil {
			t.Errorf("ReleaseAddress(%s): %v", free, err)
		}
	}
	if err := a.ReleaseAddress(ctx, p.ID, addr("10.0.1.1")); !errors.Is(err, ipam.ErrOutOfRange) {
		t.Errorf("outside: %v", err)
	}
	if err := a.ReleaseAddress(ctx, s.id("10.9.0.0/24"), addr("10.9.0.1")); !errors.Is(err, ipam.ErrUnknownPool) {
		t.Errorf("unknown pool: %v", err)
	}
	wantInvalid(t, a.ReleaseAddress(ctx, p.ID, netip.Addr{}), "addr")
	reqAddr(t, a, p.ID, x)
	if _, n := usage(t, a, p.ID); n != 1 {
		t.Errorf("in use = %d, want 1", n)
	}
}

func (s *suite) testReleasePool(t *testing.T) {
	ctx := t.Context()
	a := s.alloc(t)
	if err := a.ReleasePool(ctx, s.id("10.0.0.0/24")); err != nil {
		t.Errorf("release unknown pool: %v", err)
	}
	p := reqPool(t, a, ipam.PoolRequest{Subnet: pfx("10.0.0.0/24")})
	reqAddr(t, a, p.ID, addr("10.0.0.9"))
	reqAddr(t, a, p.ID, netip.Addr{})
	for range 2 {
		if err := a.ReleasePool(ctx, p.ID); err != nil {
			t.Fatalf("ReleasePool: %v", err)
		}
	}
	if _, _, err := a.Usage(ctx, p.ID); !errors.Is(err, ipam.ErrUnknownPool) {
		t.Errorf("Usage after release: %v", err)
	}
	if _, err := a.RequestAddress(ctx, p.ID, netip.Addr{}); !errors.Is(err, ipam.ErrUnknownPool) {
		t.Errorf("RequestAddress after release: %v", err)
	}
	if _, err := a.Reconcile(ctx, p.ID, nil); !errors.Is(err, ipam.ErrUnknownPool) {
		t.Errorf("Reconcile after release: %v", err)
	}
	// The same subnet again starts empty.
	p = reqPool(t, a, ipam.PoolRequest{Subnet: pfx("10.0.0.0/24")})
	reqAddr(t, a, p.ID, addr("10.0.0.9"))
	if x := reqAddr(t, a, p.ID, netip.Addr{}); x != addr("10.0.0.1") {
		t.Errorf("first dynamic = %s, want 10.0.0.1", x)
	}
	if _, n := usage(t, a, p.ID); n != 2 {
		t.Errorf("in use = %d, want 2", n)
	}
}

func (s *suite) testExhausted(t *testing.T) {
	ctx := t.Context()
	a := s.alloc(t)
	p := reqPool(t, a, ipam.PoolRequest{Subnet: pfx("10.0.0.0/24"), Range: pfx("10.0.0.248/29")})
	reqAddr(t, a, p.ID, addr("10.0.0.5")) // static, outside the range: not counted
	drain(t, a, p.ID)
	_, err := a.RequestAddress(ctx, p.ID, netip.Addr{})
	ee, ok := errors.AsType[*ipam.ExhaustedError](err)
	if !ok || !errors.Is(err, ipam.ErrPoolExhausted) || !errors.Is(err, errclass.ErrUnavailable) {
		t.Fatalf("err = %v, want an *ExhaustedError", err)
	}
	want := ipam.ExhaustedError{Pool: p.ID, Range: pfx("10.0.0.248/29"), Size: 7, InUse: 7}
	if *ee != want {
		t.Errorf("ExhaustedError = %+v, want %+v", *ee, want)
	}
	for _, m := range []string{string(p.ID), "10.0.0.248/29", "7 of 7"} {
		if !strings.Contains(err.Error(), m) {
			t.Errorf("err %q does not mention %q", err, m)
		}
	}
	// A whole IPv4 /30 and an IPv6 /126.
	for _, tc := range []struct {
		subnet string
		size   uint64
	}{{"10.1.0.0/30", 2}, {"fd00::/126", 3}} {
		p := reqPool(t, a, ipam.PoolRequest{Subnet: pfx(tc.subnet)})
		drain(t, a, p.ID)
		_, err := a.RequestAddress(ctx, p.ID, netip.Addr{})
		if ee, ok := errors.AsType[*ipam.ExhaustedError](err); !ok || ee.Size != tc.size || ee.InUse != int(tc.size) || ee.Range != pfx(tc.subnet) {
			t.Errorf("%s: err = %#v", tc.subnet, err)
		}
	}
}

func (s *suite) testUsage(t *testing.T) {
	a := s.alloc(t)
	for _, tc := range []struct {
		subnet string
		size   uint64
	}{
		{"10.0.0.0/24", 254},
		{"11.0.0.0/8", 1<<24 - 2},
		{"fd00::/120", 255},
		{"fd01::/64", math.MaxUint64},
		{"fd03::/48", math.MaxUint64},
	} {
		p := reqPool(t, a, ipam.PoolRequest{Subnet: pfx(tc.subnet)})
		reqAddr(t, a, p.ID, netip.Addr{})
		reqAddr(t, a, p.ID, p.Subnet.Addr().Next().Next().Next())
		if size, n := usage(t, a, p.ID); size != tc.size || n != 2 {
			t.Errorf("%s: Usage = %d, %d; want %d, 2", tc.subnet, size, n, tc.size)
		}
	}
	if _, _, err := a.Usage(t.Context(), s.id("12.0.0.0/8")); !errors.Is(err, ipam.ErrUnknownPool) {
		t.Errorf("Usage of unknown pool: %v", err)
	}
}

func (s *suite) testReconcile(t *testing.T) {
	ctx := t.Context()
	a := s.alloc(t)
	// A /19 spans two bitmap chunks.
	p := reqPool(t, a, ipam.PoolRequest{Subnet: pfx("10.0.0.0/19")})
	gw := reqAddr(t, a, p.ID, addr("10.0.0.1"))
	for _, x := range []string{"10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.15.255", "10.0.16.0", "10.0.16.1", "10.0.31.254"} {
		reqAddr(t, a, p.ID, addr(x))
	}
	live := []netip.Addr{gw, addr("10.0.0.3"), addr("10.0.16.0"),
		addr("10.0.0.77"),                 // live but not allocated: stays free
		addr("10.9.9.9"), addr("fd00::1"), // not in the pool: ignored
	}
	freed, err := a.Reconcile(ctx, p.ID, live)
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Addr{addr("10.0.0.2"), addr("10.0.0.4"), addr("10.0.15.255"), addr("10.0.16.1"), addr("10.0.31.254")}
	if diff := cmp.Diff(want, freed, cmp.Comparer(func(x, y netip.Addr) bool { return x == y })); diff != "" {
		t.Errorf("freed (-want +got):\n%s", diff)
	}
	if _, n := usage(t, a, p.ID); n != 3 {
		t.Errorf("in use = %d, want 3 (the live ones)", n)
	}
	for _, x := range want {
		reqAddr(t, a, p.ID, x) // free again
	}
	if _, err := a.RequestAddress(ctx, p.ID, addr("10.0.0.3")); !errors.Is(err, ipam.ErrAddressInUse) {
		t.Errorf("live address: %v, want in use", err)
	}
	// Everything live: nothing freed. Nothing live: everything freed.
	if freed, err := a.Reconcile(ctx, p.ID, append(want, gw, addr("10.0.0.3"), addr("10.0.16.0"))); err != nil || len(freed) != 0 {
		t.Errorf("Reconcile(all live) = %v, %v", freed, err)
	}
	freed, err = a.Reconcile(ctx, p.ID, nil)
	if err != nil || len(freed) != 8 {
		t.Errorf("Reconcile(nil) = %v, %v; want 8 freed", freed, err)
	}
	if !slices.IsSortedFunc(freed, netip.Addr.Compare) {
		t.Errorf("freed not sorted: %v", freed)
	}
	if _, n := usage(t, a, p.ID); n != 0 {
		t.Errorf("in use = %d, want 0", n)
	}
	if _, err := a.Reconcile(ctx, s.id("10.9.0.0/24"), nil); !errors.Is(err, ipam.ErrUnknownPool) {
		t.Errorf("unknown pool: %v", err)
	}
}

func (s *suite) testMACOptions(t *testing.T) {
	ctx := t.Context()
	a := s.alloc(t)
	mac, _ := net.ParseMAC("02:42:ac:11:00:02")
	eui, _ := net.ParseMAC("00:11:22:ff:fe:33:44:55")
	opts := ipam.AddressOptions{MAC: mac}
	p64 := reqPool(t, a, ipam.PoolRequest{Subnet: pfx("fd00:1::/64")})
	p48 := reqPool(t, a, ipam.PoolRequest{Subnet: pfx("fd00:2::/48"), Range: pfx("fd00:2:0:5::/64")})
	p80 := reqPool(t, a, ipam.PoolRequest{Subnet: pfx("fd00:3::/80")})
	p4 := reqPool(t, a, ipam.PoolRequest{Subnet: pfx("10.0.0.0/24")})
	for _, tc := range []struct {
		name string
		id   ipam.PoolID
		mac  net.HardwareAddr
		want string
	}{
		{"derived", p64.ID, mac, "fd00:1::42:acff:fe11:2"},
		{"taken: next dynamic", p64.ID, mac, "fd00:1::1"},
		{"EUI-64", p64.ID, eui, "fd00:1::211:22ff:fe33:4455"},
		{"in the range's /64", p48.ID, mac, "fd00:2:0:5:42:acff:fe11:2"},
		{"longer than /64", p80.ID, mac, "fd00:3::1"},
		{"IPv4", p4.ID, mac, "10.0.0.1"},
		{"no MAC", p64.ID, nil, "fd00:1::2"},
	} {
		got, err := a.RequestAddressWithOptions(ctx, tc.id, netip.Addr{}, ipam.AddressOptions{MAC: tc.mac})
		if err != nil || got != addr(tc.want) {
			t.Errorf("%s: got %v, %v; want %s", tc.name, got, err, tc.want)
		}
	}
	// A static address wins over the MAC.
	if got, err := a.RequestAddressWithOptions(ctx, p64.ID, addr("fd00:1::99"), opts); err != nil || got != addr("fd00:1::99") {
		t.Errorf("static: %v, %v", got, err)
	}
	_, err := a.RequestAddressWithOptions(ctx, p64.ID, netip.Addr{}, ipam.AddressOptions{MAC: net.HardwareAddr{1, 2, 3}})
	wantInvalid(t, err, "mac")
	if _, err := a.RequestAddressWithOptions(ctx, s.id("fd09::/64"), netip.Addr{}, opts); !errors.Is(err, ipam.ErrUnknownPool) {
		t.Errorf("unknown pool: %v", err)
	}
}

func (s *suite) testCanceledContext(t *testing.T) {
	a := s.alloc(t)
	p := reqPool(t, a, ipam.PoolRequest{})
	x := reqAddr(t, a, p.ID, netip.Addr{})
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := a.RequestPool(ctx, ipam.PoolRequest{}); !errors.Is(err, context.Canceled) {
		t.Errorf("RequestPool: %v", err)
	}
	if _, err := a.RequestAddress(ctx, p.ID, netip.Addr{}); !errors.Is(err, context.Canceled) {
		t.Errorf("RequestAddress: %v", err)
	}
	if _, err := a.RequestAddressWithOptions(ctx, p.ID, netip.Addr{}, ipam.AddressOptions{}); !errors.Is(err, context.Canceled) {
		t.Errorf("RequestAddressWithOptions: %v", err)
	}
	if err := a.ReleaseAddress(ctx, p.ID, x); !errors.Is(err, context.Canceled) {
		t.Errorf("ReleaseAddress: %v", err)
	}
	if _, err := a.Reconcile(ctx, p.ID, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("Reconcile: %v", err)
	}
	if _, _, err := a.Usage(ctx, p.ID); !errors.Is(err, context.Canceled) {
		t.Errorf("Usage: %v", err)
	}
	if err := a.ReleasePool(ctx, p.ID); !errors.Is(err, context.Canceled) {
		t.Errorf("ReleasePool: %v", err)
	}
	if _, n := usage(t, a, p.ID); n != 1 {
		t.Errorf("in use = %d; want 1: nothing changed", n)
	}
}

// testV6AcrossChunks allocates past the first 4096-address bitmap chunk of a /64.
func (s *suite) testV6AcrossChunks(t *testing.T) {
	a := s.alloc(t)
	p := reqPool(t, a, ipam.PoolRequest{Subnet: pfx("fd00::/64")})
	want := p.Subnet.Addr()
	const n = 4200
	for range n {
		want = want.Next()
		if x := reqAddr(t, a, p.ID, netip.Addr{}); x != want {
			t.Fatalf("got %s, want %s", x, want)
		}
	}
	reqAddr(t, a, p.ID, addr("fd00::ffff:0:0:1"))
	if x := reqAddr(t, a, p.ID, netip.Addr{}); x != want.Next() {
		t.Errorf("got %s, want %s", x, want.Next())
	}
	if _, got := usage(t, a, p.ID); got != n+2 {
		t.Errorf("in use = %d, want %d", got, n+2)
	}
}

func (s *suite) testConcurrent(t *testing.T) {
	ctx := t.Context()
	a := s.alloc(t)
	p := reqPool(t, a, ipam.PoolRequest{Subnet: pfx("10.0.0.0/20")})
	const workers, each = 8, 50
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		seen = map[netip.Addr]bool{}
		errs []error
	)
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				x, err := a.RequestAddress(ctx, p.ID, netip.Addr{})
				mu.Lock()
				if err == nil && seen[x] {
					err = fmt.Errorf("%s handed out twice", x)
				}
				seen[x] = true
				if err != nil {
					errs = append(errs, err)
				}
				mu.Unlock()
				if err != nil {
					return
				}
				if i%10 == 0 {
					q, err := a.RequestPool(ctx, ipam.PoolRequest{Space: ipam.AddressSpace(fmt.Sprint("w", w))})
					if err == nil {
						err = a.ReleasePool(ctx, q.ID)
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
	if _, n := usage(t, a, p.ID); n != workers*each || len(seen) != workers*each {
		t.Errorf("in use %d, seen %d, want %d", n, len(seen), workers*each)
	}
}
