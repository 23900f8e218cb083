package network

import (
	"fmt"
	"maps"
	"net/netip"
	"regexp"
	"slices"
	"strings"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/internal/errclass"
)

// IPAMConfig is one subnet of a network as the user asked for it (docker network create
// --subnet, --ip-range, --gateway, --aux-address). Zero fields are picked by IPAM.
type IPAMConfig struct {
	Subnet       netip.Prefix          `json:"subnet,omitzero"`
	IPRange      netip.Prefix          `json:"ip_range,omitzero"`
	Gateway      netip.Addr            `json:"gateway,omitzero"`
	AuxAddresses map[string]netip.Addr `json:"aux_addresses,omitempty"`
}

// Clone returns a deep copy.
func (c IPAMConfig) Clone() IPAMConfig {
	c.AuxAddresses = maps.Clone(c.AuxAddresses)
	return c
}

// Spec is the per-call configuration of a new network, set by Options.
type Spec struct {
	// IPv4 and IPv6 hold at most one subnet each (more are refused for now). An empty IPv4
	// asks IPAM to pick a subnet from its default pools.
	IPv4 []IPAMConfig
	IPv6 []IPAMConfig
	// EnableIPv6 gives the network an IPv6 subnet too (picked when IPv6 is empty).
	EnableIPv6 bool
	// Internal networks have no route to the outside.
	Internal bool
	// Attachable is recorded and reported (docker network create --attachable).
	Attachable bool
	// Labels are the user's metadata.
	Labels map[string]string
	// DriverOptions are the driver's typed options; DriverLabels the same as string labels
	// (-o key=value), parsed by the driver. At most one of the two.
	DriverOptions drivers.NetworkOptions
	DriverLabels  map[string]string
	// IPAMDriver names the IPAM driver registered with the Controller; "" means "default".
	IPAMDriver string
	// HostRouteOverlap lets an explicit subnet overlap one of the host's routes
	// (WithHostRouteOverlap); by default the Controller refuses such a subnet.
	HostRouteOverlap bool

	errs []error // from options that could not apply
}

// Option sets a field of a Spec. It never fails or panics: problems are reported by
// validation, once all options are applied.
type Option func(*Spec)

// Apply returns the Spec the options make, validated.
func Apply(opts ...Option) (Spec, error) {
	var s Spec
	for _, o := range opts {
		if o != nil {
			o(&s)
		}
	}
	return s, s.validate()
}

func (s *Spec) last(v6 bool) *IPAMConfig {
	l := &s.IPv4
	if v6 {
		l = &s.IPv6
	}
	if len(*l) == 0 {
		return nil
	}
	return &(*l)[len(*l)-1]
}

// unusable lists the address ranges that no subnet of a network may overlap: a bridge given
// such an address, and the routes to it, cannot work.
var unusable = []struct {
	p   netip.Prefix
	why string
}{
	{netip.MustParsePrefix("127.0.0.0/8"), "loopback addresses (127.0.0.0/8)"},
	{netip.MustParsePrefix("224.0.0.0/4"), "multicast addresses (224.0.0.0/4)"},
	{netip.MustParsePrefix("::1/128"), "the IPv6 loopback address (::1)"},
	{netip.MustParsePrefix("fe80::/10"), "IPv6 link-local addresses (fe80::/10)"},
	{netip.MustParsePrefix("ff00::/8"), "IPv6 multicast addresses (ff00::/8)"},
	{netip.MustParsePrefix("::ffff:0:0/96"), "IPv4-mapped IPv6 addresses (::ffff:0:0/96): give the IPv4 prefix"},
}

// checkUsable refuses a prefix (of field, "subnet" or "ip-range") that overlaps an unusable
// range.
func checkUsable(field string, p netip.Prefix) error {
	for _, u := range unusable {
		if u.p.Overlaps(p) {
			return errclass.Invalid(field, p.String(), "overlaps "+u.why)
		}
	}
	return nil
}

// WithSubnet gives the network the subnet p (--subnet). An IPv6 subnet also enables IPv6.
//
// A subnet that overlaps loopback (127.0.0.0/8, ::1), multicast (224.0.0.0/4, ff00::/8),
// IPv6 link-local (fe80::/10) or IPv4-mapped IPv6 (::ffff:0:0/96) addresses is refused with
// an error matching cnm.ErrInvalidParameter naming it. The Controller also refuses a subnet
// that overlaps one of the host's routes, unless WithHostRouteOverlap is given.
func WithSubnet(p netip.Prefix) Option {
	return func(s *Spec) {
		if !p.IsValid() {
			s.errs = append(s.errs, errclass.Invalid("subnet", p.String(), "not a valid prefix"))
			return
		}
		if p.Addr().Is6() {
			s.IPv6 = append(s.IPv6, IPAMConfig{Subnet: p})
			s.EnableIPv6 = true
			return
		}
		s.IPv4 = append(s.IPv4, IPAMConfig{Subnet: p})
	}
}

// WithHostRouteOverlap lets the network's explicit subnet (WithSubnet) overlap a route of
// the host's, which the Controller otherwise refuses with an error naming the route (as
// Podman does): say so when the overlap is meant, for a subnet the host routes elsewhere that
// the containers are to reach only on this network. Subnets that IPAM picks always avoid the
// host's routes.
func WithHostRouteOverlap() Option { return func(s *Spec) { s.HostRouteOverlap = true } }

// WithGateway sets the gateway of the last subnet given of a's family (--gateway).
func WithGateway(a netip.Addr) Option {
	return func(s *Spec) {
		given := a.String() // errors name the value as given, before Unmap
		a = a.Unmap()
		if !a.IsValid() {
			s.errs = append(s.errs, errclass.Invalid("gateway", given, "not a valid address"))
			return
		}
		c := s.last(a.Is6())
		if c == nil {
			s.errs = append(s.errs, errclass.Invalid("gateway", given, "give a subnet of the same family first"))
			return
		}
		c.Gateway = a
	}
}

// WithIPRange limits dynamic allocation in the last subnet of p's family to p (--ip-range).
func WithIPRange(p netip.Prefix) Option {
	return func(s *Spec) {
		if p.IsValid() && p.Addr().Is4In6() {
			s.errs = append(s.errs, errclass.Invalid("ip-range", p.String(), "an IPv4-mapped IPv6 prefix: give the IPv4 prefix"))
			return
		}
		c := s.last(p.Addr().Is6())
		if c == nil || !p.IsValid() {
			s.errs = append(s.errs, errclass.Invalid("ip-range", p.String(), "give a valid range after a subnet of the same family"))
			return
		}
		c.IPRange = p
	}
}

// WithAuxAddress reserves a for name in the last subnet of a's family (--aux-address).
func WithAuxAddress(name string, a netip.Addr) Option {
	return func(s *Spec) {
		given := name + "=" + a.String() // errors name the value as given, before Unmap
		a = a.Unmap()
		if name == "" || !a.IsValid() {
			s.errs = append(s.errs, errclass.Invalid("aux-address", given, "want a name and a valid address"))
			return
		}
		c := s.last(a.Is6())
		if c == nil {
			s.errs = append(s.errs, errclass.Invalid("aux-address", given, "give a subnet of the same family first"))
			return
		}
		if c.AuxAddresses == nil {
			c.AuxAddresses = make(map[string]netip.Addr)
		}
		c.AuxAddresses[name] = a
	}
}

// WithIPv6 enables IPv6 (--ipv6); without an IPv6 subnet, one is picked.
func WithIPv6() Option { return func(s *Spec) { s.EnableIPv6 = true } }

// WithInternal makes the network internal (--internal).
func WithInternal() Option { return func(s *Spec) { s.Internal = true } }

// WithAttachable marks the network attachable (--attachable).
func WithAttachable() Option { return func(s *Spec) { s.Attachable = true } }

// WithLabels adds metadata labels (--label).
func WithLabels(l map[string]string) Option {
	return func(s *Spec) {
		if s.Labels == nil {
			s.Labels = make(map[string]string, len(l))
		}
		maps.Copy(s.Labels, l)
	}
}

// WithIPAMDriver makes the network take its subnets and addresses from the IPAM driver
// registered under name (--ipam-driver).
func WithIPAMDriver(name string) Option { return func(s *Spec) { s.IPAMDriver = name } }

// WithDriverOptions gives the driver its typed options, such as bridge.NetworkOptions.
func WithDriverOptions(o drivers.NetworkOptions) Option {
	return func(s *Spec) { s.DriverOptions = o }
}

// WithDriverLabels gives the driver options as string labels (-o key=value); the driver
// parses them and refuses unknown keys.
func WithDriverLabels(l map[string]string) Option {
	return func(s *Spec) {
		if s.DriverLabels == nil {
			s.DriverLabels = make(map[string]string, len(l))
		}
		maps.Copy(s.DriverLabels, l)
	}
}

func (s *Spec) validate() error {
	if len(s.errs) > 0 {
		return s.errs[0]
	}
	if len(s.IPv4) > 1 || len(s.IPv6) > 1 {
		var subs []string
		for _, c := range append(append([]IPAMConfig(nil), s.IPv4...), s.IPv6...) {
			subs = append(subs, c.Subnet.String())
		}
		return errclass.Invalid("subnet", strings.Join(subs, ","), "at most one IPv4 and one IPv6 subnet per network")
	}
	if s.DriverOptions != nil && len(s.DriverLabels) > 0 {
		return errclass.Invalid("driver options", "", "give typed options or labels, not both")
	}
	for _, c := range append(append([]IPAMConfig(nil), s.IPv4...), s.IPv6...) {
		if err := c.validate(); err != nil {
			return err
		}
	}
	return nil
}

// lastAddr returns the last address of p.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := range b {
		bit := i * 8
		switch {
		case bit >= p.Bits():
			b[i] = 0xff
		case bit+8 > p.Bits():
			b[i] |= 0xff >> (p.Bits() - bit)
		}
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

func (c IPAMConfig) validate() error {
	sub := c.Subnet
	if err := checkUsable("subnet", sub); err != nil {
		return err
	}
	if sub != sub.Masked() {
		return errclass.Invalid("subnet", sub.String(), fmt.Sprintf("host bits set (did you mean %s?)", sub.Masked()))
	}
	if sub.Addr().Is4() && sub.Bits() > 30 {
		return errclass.Invalid("subnet", sub.String(), "too small: an IPv4 subnet needs at least /30")
	}
	if sub.Addr().Is6() && sub.Bits() > 126 {
		return errclass.Invalid("subnet", sub.String(), "too small: an IPv6 subnet needs at least /126")
	}
	if sub.Bits() < 8 {
		return errclass.Invalid("subnet", sub.String(), "too large: at most a /8")
	}
	// reserved reports an address that is never handed out: the network address, and for IPv4
	// the broadcast address.
	reserved := func(a netip.Addr) bool {
		if a == sub.Addr() {
			return true
		}
		return a.Is4() && a == lastAddr(sub)
	}
	if c.IPRange.IsValid() {
		if c.IPRange != c.IPRange.Masked() {
			return errclass.Invalid("ip-range", c.IPRange.String(), "host bits set")
		}
		if c.IPRange.Bits() < sub.Bits() || !sub.Contains(c.IPRange.Addr()) {
			return errclass.Invalid("ip-range", c.IPRange.String(), fmt.Sprintf("not inside subnet %s", sub))
		}
	}
	if c.Gateway.IsValid() && !sub.Contains(c.Gateway) {
		return errclass.Invalid("gateway", c.Gateway.String(), fmt.Sprintf("not inside subnet %s", sub))
	}
	if c.Gateway.IsValid() && reserved(c.Gateway) {
		return errclass.Invalid("gateway", c.Gateway.String(), fmt.Sprintf("the network or broadcast address of %s", sub))
	}
	seen := map[netip.Addr]string{}
	for _, name := range slices.Sorted(maps.Keys(c.AuxAddresses)) {
		a := c.AuxAddresses[name]
		switch {
		case !sub.Contains(a):
			return errclass.Invalid("aux-address", name+"="+a.String(), fmt.Sprintf("not inside subnet %s", sub))
		case a == c.Gateway:
			return errclass.Invalid("aux-address", name+"="+a.String(), "is the gateway")
		case reserved(a):
			return errclass.Invalid("aux-address", name+"="+a.String(), fmt.Sprintf("the network or broadcast address of %s", sub))
		case seen[a] != "":
			return errclass.Invalid("aux-address", name+"="+a.String(), "also given as "+seen[a])
		}
		seen[a] = name
	}
	return nil
}

var nameRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`)

// ValidateName checks a network, endpoint or sandbox name: 1 to 64 characters of letters,
// digits, '_', '.', '-', starting with a letter or digit.
func ValidateName(kind, name string) error {
	switch {
	case name == "":
		return errclass.Invalid(kind+" name", name, "empty")
	case len(name) > 64:
		return errclass.Invalid(kind+" name", name, "longer than 64 characters")
	case !nameRE.MatchString(name):
		return errclass.Invalid(kind+" name", name, "use letters, digits, '_', '.' and '-', starting with a letter or digit")
	}
	return nil
}
