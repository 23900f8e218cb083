package network

import (
	"errors"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

var (
	pfx  = netip.MustParsePrefix
	addr = netip.MustParseAddr

	// cmpSpec compares Specs by their exported fields; netip values compare with ==.
	cmpSpec = cmp.Options{
		cmpopts.EquateComparable(netip.Addr{}, netip.Prefix{}),
		cmpopts.IgnoreUnexported(Spec{}),
	}
)

// fakeOptions is a driver's typed options, for the DriverOptions cases.
type fakeOptions struct{ MTU int }

func (fakeOptions) DriverType() string        { return "fake" }
func (fakeOptions) Labels() map[string]string { return nil }

func TestApply(t *testing.T) {
	tests := []struct {
		name string
		opts []Option
		want Spec
	}{
		{name: "none", want: Spec{}},
		{name: "nil option ignored", opts: []Option{nil, WithInternal(), nil}, want: Spec{Internal: true}},
		{
			name: "ipv4 subnet",
			opts: []Option{WithSubnet(pfx("10.10.0.0/24"))},
			want: Spec{IPv4: []IPAMConfig{{Subnet: pfx("10.10.0.0/24")}}},
		},
		{
			name: "ipv4 smallest subnet /30",
			opts: []Option{WithSubnet(pfx("10.10.0.4/30"))},
			want: Spec{IPv4: []IPAMConfig{{Subnet: pfx("10.10.0.4/30")}}},
		},
		{
			name: "ipv4 all fields",
			opts: []Option{
				WithSubnet(pfx("10.10.0.0/24")),
				WithIPRange(pfx("10.10.0.128/25")),
				WithGateway(addr("10.10.0.254")),
				WithAuxAddress("router", addr("10.10.0.2")),
				WithAuxAddress("printer", addr("10.10.0.3")),
			},
			want: Spec{IPv4: []IPAMConfig{{
				Subnet:       pfx("10.10.0.0/24"),
				IPRange:      pfx("10.10.0.128/25"),
				Gateway:      addr("10.10.0.254"),
				AuxAddresses: map[string]netip.Addr{"router": addr("10.10.0.2"), "printer": addr("10.10.0.3")},
			}}},
		},
		{
			name: "ip-range equal to subnet",
			opts: []Option{WithSubnet(pfx("10.10.0.0/24")), WithIPRange(pfx("10.10.0.0/24"))},
			want: Spec{IPv4: []IPAMConfig{{Subnet: pfx("10.10.0.0/24"), IPRange: pfx("10.10.0.0/24")}}},
		},
		{
			name: "ipv6 subnet enables ipv6",
			opts: []Option{WithSubnet(pfx("fd00:1::/64"))},
			want: Spec{IPv6: []IPAMConfig{{Subnet: pfx("fd00:1::/64")}}, EnableIPv6: true},
		},
		{
			name: "ipv6 smallest subnet /126",
			opts: []Option{WithSubnet(pfx("fd00:1::/126"))},
			want: Spec{IPv6: []IPAMConfig{{Subnet: pfx("fd00:1::/126")}}, EnableIPv6: true},
		},
		{
			name: "dual stack: each option goes to the subnet of its family",
			opts: []Option{
				WithSubnet(pfx("10.10.0.0/24")),
				WithSubnet(pfx("fd00:1::/64")),
				WithGateway(addr("10.10.0.1")),
				WithGateway(addr("fd00:1::1")),
				WithIPRange(pfx("fd00:1::100/120")),
				WithAuxAddress("dns", addr("fd00:1::53")),
			},
			want: Spec{
				IPv4: []IPAMConfig{{Subnet: pfx("10.10.0.0/24"), Gateway: addr("10.10.0.1")}},
				IPv6: []IPAMConfig{{
					Subnet: pfx("fd00:1::/64"), Gateway: addr("fd00:1::1"), IPRange: pfx("fd00:1::100/120"),
					AuxAddresses: map[string]netip.Addr{"dns": addr("fd00:1::53")},
				}},
				EnableIPv6: true,
			},
		},
		{
			name: "ipv4-mapped addresses are unmapped",
			opts: []Option{
				WithSubnet(pfx("10.10.0.0/24")),
				WithGateway(addr("::ffff:10.10.0.1")),
				WithAuxAddress("host", addr("::ffff:10.10.0.9")),
			},
			want: Spec{IPv4: []IPAMConfig{{
				Subnet: pfx("10.10.0.0/24"), Gateway: addr("10.10.0.1"),
				AuxAddresses: map[string]netip.Addr{"host": addr("10.10.0.9")},
			}}},
		},
		{
			name: "ipv6 without subnet",
			opts: []Option{WithIPv6()},
			want: Spec{EnableIPv6: true},
		},
		{
			name: "flags",
			opts: []Option{WithInternal(), WithAttachable()},
			want: Spec{Internal: true, Attachable: true},
		},
		{
			name: "labels merge, later wins",
			opts: []Option{
				WithLabels(map[string]string{"a": "1", "b": "2"}),
				WithLabels(map[string]string{"b": "3", "c": "4"}),
			},
			want: Spec{Labels: map[string]string{"a": "1", "b": "3", "c": "4"}},
		},
		{
			name: "driver labels merge, later wins",
			opts: []Option{
				WithDriverLabels(map[string]string{"com.docker.network.driver.mtu": "1400"}),
				WithDriverLabels(map[string]string{"com.docker.network.driver.mtu": "1450", "x": "y"}),
			},
			want: Spec{DriverLabels: map[string]string{"com.docker.network.driver.mtu": "1450", "x": "y"}},
		},
		{
			name: "typed driver options",
			opts: []Option{WithDriverOptions(fakeOptions{MTU: 1400})},
			want: Spec{DriverOptions: fakeOptions{MTU: 1400}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Apply(tt.opts...)
			if err != nil {
				t.Fatalf("Apply: %v", err)
			}
			if diff := cmp.Diff(tt.want, got, cmpSpec); diff != "" {
				t.Errorf("Apply: Spec mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestApplyInvalid(t *testing.T) {
	tests := []struct {
		name  string
		opts  []Option
		field string // the InvalidParameterError's Field
		value string // its Value, when not ""
	}{
		{name: "zero prefix", opts: []Option{WithSubnet(netip.Prefix{})}, field: "subnet"},
		{name: "ipv4 host bits set", opts: []Option{WithSubnet(pfx("10.10.0.1/24"))}, field: "subnet", value: "10.10.0.1/24"},
		{name: "ipv6 host bits set", opts: []Option{WithSubnet(pfx("fd00:1::1/64"))}, field: "subnet", value: "fd00:1::1/64"},
		{name: "ipv4 /31 too small", opts: []Option{WithSubnet(pfx("10.10.0.0/31"))}, field: "subnet", value: "10.10.0.0/31"},
		{name: "ipv4 /32 too small", opts: []Option{WithSubnet(pfx("10.10.0.1/32"))}, field: "subnet"},
		{name: "ipv6 /127 too small", opts: []Option{WithSubnet(pfx("fd00:1::/127"))}, field: "subnet"},
		{name: "two ipv4 subnets", opts: []Option{WithSubnet(pfx("10.10.0.0/24")), WithSubnet(pfx("10.20.0.0/24"))}, field: "subnet"},
		{name: "two ipv6 subnets", opts: []Option{WithSubnet(pfx("fd00:1::/64")), WithSubnet(pfx("fd00:2::/64"))}, field: "subnet"},
		{
			name:  "gateway outside subnet",
			opts:  []Option{WithSubnet(pfx("10.10.0.0/24")), WithGateway(addr("10.10.1.1"))},
			field: "gateway", value: "10.10.1.1",
		},
		{
			name:  "ipv6 gateway outside subnet",
			opts:  []Option{WithSubnet(pfx("fd00:1::/64")), WithGateway(addr("fd00:2::1"))},
			field: "gateway", value: "fd00:2::1",
		},
		{name: "gateway without subnet", opts: []Option{WithGateway(addr("10.10.0.1"))}, field: "gateway", value: "10.10.0.1"},
		{
			name:  "gateway before its subnet",
			opts:  []Option{WithGateway(addr("10.10.0.1")), WithSubnet(pfx("10.10.0.0/24"))},
			field: "gateway",
		},
		{
			name:  "ipv6 gateway with only an ipv4 subnet",
			opts:  []Option{WithSubnet(pfx("10.10.0.0/24")), WithGateway(addr("fd00:1::1"))},
			field: "gateway",
		},
		{
			name:  "zoned gateway",
			opts:  []Option{WithSubnet(pfx("fd00:1::/64")), WithGateway(addr("fd00:1::1%eth0"))},
			field: "gateway",
		},
		{
			name:  "ip-range outside subnet",
			opts:  []Option{WithSubnet(pfx("10.10.0.0/24")), WithIPRange(pfx("10.20.0.0/25"))},
			field: "ip-range", value: "10.20.0.0/25",
		},
		{
			name:  "ip-range larger than subnet",
			opts:  []Option{WithSubnet(pfx("10.10.0.0/24")), WithIPRange(pfx("10.10.0.0/16"))},
			field: "ip-range", value: "10.10.0.0/16",
		},
		{
			name:  "ip-range host bits set",
			opts:  []Option{WithSubnet(pfx("10.10.0.0/24")), WithIPRange(pfx("10.10.0.129/25"))},
			field: "ip-range", value: "10.10.0.129/25",
		},
		{name: "ip-range without subnet", opts: []Option{WithIPRange(pfx("10.10.0.128/25"))}, field: "ip-range"},
		{name: "zero ip-range", opts: []Option{WithSubnet(pfx("10.10.0.0/24")), WithIPRange(netip.Prefix{})}, field: "ip-range"},
		{
			name:  "aux address outside subnet",
			opts:  []Option{WithSubnet(pfx("10.10.0.0/24")), WithAuxAddress("router", addr("10.10.1.2"))},
			field: "aux-address", value: "router=10.10.1.2",
		},
		{
			name: "aux address is the gateway",
			opts: []Option{
				WithSubnet(pfx("10.10.0.0/24")), WithGateway(addr("10.10.0.1")), WithAuxAddress("router", addr("10.10.0.1")),
			},
			field: "aux-address", value: "router=10.10.0.1",
		},
		{name: "aux address without subnet", opts: []Option{WithAuxAddress("router", addr("10.10.0.2"))}, field: "aux-address"},
		{name: "zero aux address", opts: []Option{WithSubnet(pfx("10.10.0.0/24")), WithAuxAddress("router", netip.Addr{})}, field: "aux-address"},
		{
			name: "typed driver options and driver labels",
			opts: []Option{
				WithDriverOptions(fakeOptions{MTU: 1400}),
				WithDriverLabels(map[string]string{"com.docker.network.driver.mtu": "1400"}),
			},
			field: "driver options",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Apply(tt.opts...)
			if !errors.Is(err, errclass.ErrInvalidParameter) {
				t.Fatalf("Apply: got error %v, want one matching ErrInvalidParameter", err)
			}
			var ip *errclass.InvalidParameterError
			if !errors.As(err, &ip) {
				t.Fatalf("Apply: error %v (%T) is not an *InvalidParameterError", err, err)
			}
			if ip.Field != tt.field {
				t.Errorf("Apply: error %q has Field %q, want %q", err, ip.Field, tt.field)
			}
			if tt.value != "" && ip.Value != tt.value {
				t.Errorf("Apply: error %q has Value %q, want %q", err, ip.Value, tt.value)
			}
			if ip.Reason == "" {
				t.Errorf("Apply: error %q has no Reason", err)
			}
		})
	}
}

// TestApplyHostBitsHint checks that a subnet with host bits set is refused with the masked
// prefix suggested.
func TestApplyHostBitsHint(t *testing.T) {
	_, err := Apply(WithSubnet(pfx("10.10.0.1/24")))
	var ip *errclass.InvalidParameterError
	if !errors.As(err, &ip) || ip.Field != "subnet" {
		t.Fatalf("Apply: got %v, want an invalid subnet", err)
	}
	if !strings.Contains(ip.Reason, "10.10.0.0/24") {
		t.Errorf("Apply: reason %q does not suggest 10.10.0.0/24", ip.Reason)
	}
}

// TestApplyCopiesMaps checks that the Spec does not share the maps given to options.
func TestApplyCopiesMaps(t *testing.T) {
	labels := map[string]string{"a": "1"}
	driverLabels := map[string]string{"k": "v"}
	s, err := Apply(WithLabels(labels), WithDriverLabels(driverLabels))
	if err != nil {
		t.Fatal(err)
	}
	labels["a"], labels["b"] = "changed", "added"
	driverLabels["k"] = "changed"
	want := Spec{Labels: map[string]string{"a": "1"}, DriverLabels: map[string]string{"k": "v"}}
	if diff := cmp.Diff(want, s, cmpSpec); diff != "" {
		t.Errorf("Spec changed with the caller's maps (-want +got):\n%s", diff)
	}
}

// TestApplyMappedPrefix checks IPv4-mapped IPv6 prefixes (::ffff:a.b.c.d/n): they are refused
// with an error that names the prefix given, never turned into another prefix or dropped.
func TestApplyMappedPrefix(t *testing.T) {
	for _, tc := range []struct {
		name, field, value string
		opts               []Option
	}{
		{"subnet", "subnet", "::ffff:10.10.0.0/120", []Option{WithSubnet(pfx("::ffff:10.10.0.0/120"))}},
		{"short subnet", "subnet", "::ffff:0.0.0.0/90", []Option{WithSubnet(pfx("::ffff:0.0.0.0/90"))}},
		{"ip-range", "ip-range", "::ffff:10.10.0.128/121", []Option{WithSubnet(pfx("10.10.0.0/24")), WithIPRange(pfx("::ffff:10.10.0.128/121"))}},
	} {
		_, err := Apply(tc.opts...)
		var ip *errclass.InvalidParameterError
		if !errors.As(err, &ip) || ip.Field != tc.field || ip.Value != tc.value || !strings.Contains(err.Error(), "IPv4-mapped") {
			t.Errorf("%s: Apply = %v, want an invalid %s naming %s as IPv4-mapped", tc.name, err, tc.field, tc.value)
		}
	}
}

// TestApplyUnusableSubnets: a subnet that overlaps loopback, multicast, IPv6 link-local (or
// IPv4-mapped) addresses is refused with an error naming it and the range.
func TestApplyUnusableSubnets(t *testing.T) {
	for sub, want := range map[string]string{
		"127.0.0.0/24":  "loopback",
		"127.0.0.0/8":   "loopback",
		"224.1.0.0/24":  "multicast",
		"239.0.0.0/8":   "multicast",
		"fe80::/64":     "link-local",
		"febf:1::/64":   "link-local",
		"ff02::/64":     "multicast",
		"::/64":         "loopback",
		"::ffff:0:0/96": "IPv4-mapped",
	} {
		_, err := Apply(WithSubnet(pfx(sub)))
		var ip *errclass.InvalidParameterError
		if !errors.As(err, &ip) || ip.Field != "subnet" || ip.Value != pfx(sub).String() || !strings.Contains(err.Error(), want) {
			t.Errorf("Apply(WithSubnet(%s)) = %v, want an invalid subnet naming it and %s", sub, err, want)
		}
	}
	for _, sub := range []string{"126.255.255.0/24", "128.0.0.0/24", "223.255.255.0/24", "240.0.0.0/24", "fec0::/64", "fd00::/64", "2001:db8::/64"} {
		if _, err := Apply(WithSubnet(pfx(sub))); err != nil {
			t.Errorf("Apply(WithSubnet(%s)) = %v, want it accepted", sub, err)
		}
	}
}

func TestValidateName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"a", true},
		{"db", true},
		{"new_bridge", true},
		{"My.Net-1", true},
		{"0abc", true},
		{strings.Repeat("a", 64), true},
		{"", false},
		{strings.Repeat("a", 65), false},
		{"a/b", false},
		{"-a", false},
		{".a", false},
		{"_a", false},
		{"a b", false},
		{"café", false},
		{"a\n", false},
	}
	for _, tt := range tests {
		err := ValidateName("network", tt.name)
		if tt.ok {
			if err != nil {
				t.Errorf("ValidateName(%q): %v, want nil", tt.name, err)
			}
			continue
		}
		var ip *errclass.InvalidParameterError
		if !errors.As(err, &ip) || !errors.Is(err, errclass.ErrInvalidParameter) {
			t.Errorf("ValidateName(%q) = %v, want an *InvalidParameterError", tt.name, err)
			continue
		}
		if ip.Field != "network name" || ip.Value != tt.name {
			t.Errorf("ValidateName(%q): Field %q Value %q, want %q and the name", tt.name, ip.Field, ip.Value, "network name")
		}
	}
}

// FuzzApply feeds parsed (or, when they do not parse, zero) prefixes and addresses to the
// options. Apply must never panic; it either refuses the Spec with an *InvalidParameterError
// or returns one that holds the documented invariants.
func FuzzApply(f *testing.F) {
	f.Add("10.10.0.0/24", "10.10.0.1", "10.10.0.128/25", "router", "10.10.0.2", "fd00::/64")
	f.Add("10.10.0.1/24", "10.10.1.1", "10.10.0.129/25", "", "10.10.0.1", "")
	f.Add("10.10.0.0/31", "", "", "a", "", "fd00::1/64")
	f.Add("fd00:1::/64", "fd00:1::1", "fd00:1::100/120", "dns", "fd00:1::53", "fd00:2::/64")
	f.Add("::ffff:10.10.0.0/120", "::ffff:10.10.0.1", "::ffff:10.10.0.128/121", "x", "::ffff:10.10.0.9", "")
	f.Add("0.0.0.0/0", "0.0.0.0", "0.0.0.0/0", "z", "255.255.255.255", "::/0")
	f.Add("fe80::/64", "fe80::1%eth0", "fe80::/65", "ll", "fe80::2%1", "")
	f.Fuzz(func(t *testing.T, subnet, gateway, ipRange, auxName, aux, subnet2 string) {
		sub, _ := netip.ParsePrefix(subnet)
		gw, _ := netip.ParseAddr(gateway)
		rng, _ := netip.ParsePrefix(ipRange)
		auxAddr, _ := netip.ParseAddr(aux)
		opts := []Option{WithSubnet(sub), WithGateway(gw), WithIPRange(rng), WithAuxAddress(auxName, auxAddr)}
		if sub2, err := netip.ParsePrefix(subnet2); err == nil {
			opts = append(opts, WithSubnet(sub2))
		}
		s, err := Apply(opts...)
		if err != nil {
			var ip *errclass.InvalidParameterError
			if !errors.Is(err, errclass.ErrInvalidParameter) || !errors.As(err, &ip) {
				t.Fatalf("Apply: error %v (%T) is not an *InvalidParameterError", err, err)
			}
			if ip.Field == "" || ip.Reason == "" {
				t.Fatalf("Apply: error %q lacks Field or Reason", err)
			}
			// The error names a value the caller gave, as the option carried it (or, for a
			// subnet given twice, a count the caller can see in its own options).
			given := []string{sub.String(), gw.String(), rng.String(), auxName, auxAddr.String()}
			if sub2, err := netip.ParsePrefix(subnet2); err == nil {
				given = append(given, sub2.String())
			}
			// The value is a value given, or a name=value pair with one, or a comma-separated
			// list of those.
			isGiven := func(v string) bool {
				return slices.ContainsFunc(given, func(g string) bool { return g == v || (g != "" && strings.HasSuffix(v, "="+g)) })
			}
			namesGiven := isGiven(ip.Value) || !slices.ContainsFunc(strings.Split(ip.Value, ","), func(part string) bool { return !isGiven(part) })
			if !namesGiven && !isCount(ip.Value) {
				t.Fatalf("Apply: error %q names %q, which is none of the values given %q", err, ip.Value, given)
			}
			return
		}
		if len(s.IPv4) > 1 || len(s.IPv6) > 1 {
			t.Fatalf("Apply: %d IPv4 and %d IPv6 subnets accepted", len(s.IPv4), len(s.IPv6))
		}
		if len(s.IPv6) > 0 && !s.EnableIPv6 {
			t.Fatalf("Apply: IPv6 subnet %v without EnableIPv6", s.IPv6[0].Subnet)
		}
		check := func(c IPAMConfig, v6 bool) {
			t.Helper()
			if !c.Subnet.IsValid() || c.Subnet != c.Subnet.Masked() || c.Subnet.Addr().Is6() != v6 || c.Subnet.Addr().Is4In6() {
				t.Fatalf("Apply: accepted subnet %v in the v6=%t list", c.Subnet, v6)
			}
			if c.Gateway.IsValid() && !c.Subnet.Contains(c.Gateway) {
				t.Fatalf("Apply: accepted gateway %v outside %v", c.Gateway, c.Subnet)
			}
			if c.IPRange.IsValid() && (c.IPRange != c.IPRange.Masked() || c.IPRange.Bits() < c.Subnet.Bits() || !c.Subnet.Contains(c.IPRange.Addr())) {
				t.Fatalf("Apply: accepted ip-range %v for %v", c.IPRange, c.Subnet)
			}
			for name, a := range c.AuxAddresses {
				if !c.Subnet.Contains(a) || a == c.Gateway {
					t.Fatalf("Apply: accepted aux-address %s=%v for %v gateway %v", name, a, c.Subnet, c.Gateway)
				}
			}
		}
		for _, c := range s.IPv4 {
			check(c, false)
		}
		for _, c := range s.IPv6 {
			check(c, true)
		}
	})
}

// TestApplyReservedAddresses: the network and broadcast addresses, /0 subnets, duplicate or
// unnamed aux addresses and a zero gateway are refused before IPAM is asked.
func TestApplyReservedAddresses(t *testing.T) {
	p, a := netip.MustParsePrefix, netip.MustParseAddr
	cases := map[string][]Option{
		"gateway is the network address":   {WithSubnet(p("10.1.0.0/24")), WithGateway(a("10.1.0.0"))},
		"gateway is the broadcast address": {WithSubnet(p("10.1.0.0/24")), WithGateway(a("10.1.0.255"))},
		"aux is the broadcast address":     {WithSubnet(p("10.1.0.0/24")), WithAuxAddress("b", a("10.1.0.255"))},
		"aux given twice":                  {WithSubnet(p("10.1.0.0/24")), WithAuxAddress("x", a("10.1.0.9")), WithAuxAddress("y", a("10.1.0.9"))},
		"aux without a name":               {WithSubnet(p("10.1.0.0/24")), WithAuxAddress("", a("10.1.0.9"))},
		"zero gateway":                     {WithSubnet(p("10.1.0.0/24")), WithGateway(netip.Addr{})},
		"the whole IPv4 space":             {WithSubnet(p("0.0.0.0/0"))},
		"the whole IPv6 space":             {WithSubnet(p("::/0"))},
	}
	for name, opts := range cases {
		if _, err := Apply(opts...); !errors.Is(err, errclass.ErrInvalidParameter) {
			t.Errorf("%s: err = %v, want invalid parameter", name, err)
		}
	}
	// The IPv6 broadcast address does not exist: the last address is a valid gateway there.
	if _, err := Apply(WithSubnet(p("fd00:1::/64")), WithGateway(a("fd00:1::ffff:ffff:ffff:ffff"))); err != nil {
		t.Errorf("last IPv6 address as gateway: %v", err)
	}
}

// isCount reports whether s is a decimal count, as in "2 IPv4 subnets".
func isCount(s string) bool {
	_, err := strconv.Atoi(s)
	return err == nil
}
