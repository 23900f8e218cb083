package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/netip"
	"regexp"
	"slices"
	"strings"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/events"
)

// Decode reads one JSON value of at most [MaxBodyBytes] from r into v, refusing unknown
// fields, trailing data and bodies that are too large, with an error of the
// invalid-parameter class that says which.
func Decode(r io.Reader, v any) error {
	body, err := io.ReadAll(io.LimitReader(r, MaxBodyBytes+1))
	if err != nil {
		return Invalid("body", "", "read: "+err.Error())
	}
	if len(body) > MaxBodyBytes {
		return Invalid("body", fmt.Sprintf("more than %d bytes", MaxBodyBytes), "too large")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return Invalid("body", "", "malformed JSON: "+err.Error())
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return Invalid("body", "", "trailing data after the JSON value")
	}
	return nil
}

var nameRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`)

// CheckName checks the name of a network, sandbox, driver or IPAM driver (kind) as cnm does:
// 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit. So a name never
// holds a '/' or is "..", and is safe in a path.
func CheckName(kind, name string) error {
	switch {
	case name == "":
		return Invalid(kind+" name", name, "empty")
	case len(name) > 64:
		return Invalid(kind+" name", name, "longer than 64 characters")
	case !nameRE.MatchString(name):
		return Invalid(kind+" name", name, "want letters, digits, '_', '.' or '-', starting with a letter or digit")
	}
	return nil
}

// ParseKeyValues parses K=V pairs (-o, --label) into a map; field names them in errors. An
// empty key, a pair without '=' or a key given twice is refused.
func ParseKeyValues(field string, pairs []string) (map[string]string, error) {
	if len(pairs) == 0 {
		return nil, nil
	}
	m := make(map[string]string, len(pairs))
	for _, p := range pairs {
		k, v, ok := strings.Cut(p, "=")
		switch {
		case !ok:
			return nil, Invalid(field, p, "want KEY=VALUE")
		case strings.TrimSpace(k) == "":
			return nil, Invalid(field, p, "empty key")
		}
		if _, dup := m[k]; dup {
			return nil, Invalid(field, p, fmt.Sprintf("key %q given twice", k))
		}
		m[k] = v
	}
	return m, nil
}

// ParsePrefix parses a subnet or IP range (field) in CIDR form, "10.1.0.0/24". A prefix with
// host bits set ("10.1.0.1/24") is refused, as Docker refuses it.
func ParsePrefix(field, s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, Invalid(field, s, "not a CIDR prefix (want like 10.1.0.0/24)")
	}
	if p.Addr().Zone() != "" {
		return netip.Prefix{}, Invalid(field, s, "a zone is not allowed")
	}
	if p != p.Masked() {
		return netip.Prefix{}, Invalid(field, s, fmt.Sprintf("host bits set: did you mean %s?", p.Masked()))
	}
	return p, nil
}

// ParseAddr parses an IP address (field), refusing zones.
func ParseAddr(field, s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Addr{}, Invalid(field, s, "not an IP address")
	}
	return a.Unmap(), nil
}

// ParseAuxAddresses parses --aux-address values, "name=addr", into a map.
func ParseAuxAddresses(pairs []string) (map[string]string, error) {
	m, err := ParseKeyValues("aux-address", pairs)
	if err != nil {
		return nil, err
	}
	for k, v := range m {
		if _, err := ParseAddr("aux-address "+k, v); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// ParsePortSpec parses a -p spec, "[hostIP:][hostPort:]containerPort[/proto]" with ranges, as
// docker run does; it is [drivers.ParsePortSpec].
func ParsePortSpec(spec string) ([]PortBinding, error) { return drivers.ParsePortSpec(spec) }

// ParseExpose parses an --expose value, "port[-end][/proto]", into a binding with only the
// container side set.
func ParseExpose(s string) (PortBinding, error) {
	bs, err := drivers.ParsePortSpec(s)
	if err != nil {
		return PortBinding{}, err
	}
	if strings.Contains(strings.SplitN(s, "/", 2)[0], ":") {
		return PortBinding{}, Invalid("expose", s, "want port[-end][/proto], without a host part")
	}
	b := bs[0]
	if len(bs) > 1 {
		b.ContainerPortEnd = bs[len(bs)-1].ContainerPort
	}
	return b, nil
}

// Network modes of [SandboxCreate].Network, as docker run --net knows them.
const (
	ModeNetwork   = "network"   // a network by name or ID (the default "bridge" when empty)
	ModeNone      = "none"      // loopback only
	ModeHost      = "host"      // the host's namespace
	ModeContainer = "container" // another sandbox's namespace
)

// DefaultNetwork is the network a sandbox joins when SandboxCreate.Network is empty.
const DefaultNetwork = "bridge"

// ParseNetworkMode parses --net: "", a network's name or ID, "none", "host" or
// "container:NAME". It returns the mode and the network's or sandbox's name.
func ParseNetworkMode(s string) (mode, name string, err error) {
	switch {
	case s == "":
		return ModeNetwork, DefaultNetwork, nil
	case s == ModeNone || s == ModeHost:
		return s, s, nil
	}
	if other, ok := strings.CutPrefix(s, "container:"); ok {
		if err := CheckName("sandbox", other); err != nil {
			return "", "", err
		}
		return ModeContainer, other, nil
	}
	if err := CheckName("network", s); err != nil {
		return "", "", err
	}
	return ModeNetwork, s, nil
}

// checkLabels refuses empty keys.
func checkLabels(field string, m map[string]string) error {
	for _, k := range slices.Sorted(maps.Keys(m)) {
		if strings.TrimSpace(k) == "" {
			return Invalid(field, k+"="+m[k], "empty key")
		}
	}
	return nil
}

// Subnet is one checked [IPAMConfig]: zero fields were not given.
type Subnet struct {
	Subnet       netip.Prefix
	IPRange      netip.Prefix
	Gateway      netip.Addr
	AuxAddresses map[string]netip.Addr
}

// Parse checks the subnet and returns it typed. A range, gateway or auxiliary address needs
// a subnet, and must lie inside it.
func (c IPAMConfig) Parse() (Subnet, error) {
	var s Subnet
	if c.Subnet == "" {
		if c.IPRange != "" || c.Gateway != "" || len(c.AuxiliaryAddresses) > 0 {
			return s, Invalid("subnet", "", "an ip-range, gateway or aux-address needs a subnet")
		}
		return s, Invalid("subnet", "", "empty")
	}
	var err error
	if s.Subnet, err = ParsePrefix("subnet", c.Subnet); err != nil {
		return s, err
	}
	if c.IPRange != "" {
		if s.IPRange, err = ParsePrefix("ip-range", c.IPRange); err != nil {
			return s, err
		}
		if s.IPRange.Bits() < s.Subnet.Bits() || !s.Subnet.Contains(s.IPRange.Addr()) {
			return s, Invalid("ip-range", c.IPRange, "not inside subnet "+c.Subnet)
		}
	}
	if c.Gateway != "" {
		if s.Gateway, err = ParseAddr("gateway", c.Gateway); err != nil {
			return s, err
		}
		if !s.Subnet.Contains(s.Gateway) {
			return s, Invalid("gateway", c.Gateway, "not inside subnet "+c.Subnet)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(c.AuxiliaryAddresses)) {
		if name == "" {
			return s, Invalid("aux-address", "="+c.AuxiliaryAddresses[name], "empty name")
		}
		a, err := ParseAddr("aux-address "+name, c.AuxiliaryAddresses[name])
		if err != nil {
			return s, err
		}
		if !s.Subnet.Contains(a) {
			return s, Invalid("aux-address "+name, c.AuxiliaryAddresses[name], "not inside subnet "+c.Subnet)
		}
		if s.AuxAddresses == nil {
			s.AuxAddresses = make(map[string]netip.Addr)
		}
		s.AuxAddresses[name] = a
	}
	return s, nil
}

// Check validates the request: the network's name, the driver's and IPAM driver's names,
// each subnet, and the keys of Options and Labels. The values of Options are the driver's to
// check.
func (r NetworkCreate) Check() error {
	_, err := r.Subnets()
	return err
}

// Subnets checks the request (see Check) and returns its subnets, typed.
func (r NetworkCreate) Subnets() ([]Subnet, error) {
	if err := CheckName("network", r.Name); err != nil {
		return nil, err
	}
	if r.Driver != "" {
		if err := CheckName("driver", r.Driver); err != nil {
			return nil, err
		}
	}
	if err := checkLabels("opt", r.Options); err != nil {
		return nil, err
	}
	if err := checkLabels("label", r.Labels); err != nil {
		return nil, err
	}
	if r.IPAM == nil {
		return nil, nil
	}
	if r.IPAM.Driver != "" {
		if err := CheckName("ipam driver", r.IPAM.Driver); err != nil {
			return nil, err
		}
	}
	if len(r.IPAM.Options) > 0 {
		return nil, Invalid("ipam-opt", slices.Sorted(maps.Keys(r.IPAM.Options))[0], "IPAM driver options are not supported")
	}
	var out []Subnet
	for _, c := range r.IPAM.Config {
		s, err := c.Parse()
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

// Addresses checks the request and returns its static addresses (zero when not asked for).
func (r Connect) Addresses() (v4, v6 netip.Addr, err error) {
	if err := CheckName("sandbox", r.Sandbox); err != nil {
		return v4, v6, err
	}
	if r.IPv4Address != "" {
		if v4, err = ParseAddr("ip", r.IPv4Address); err != nil {
			return v4, v6, err
		}
		if !v4.Is4() {
			return v4, v6, Invalid("ip", r.IPv4Address, "not an IPv4 address")
		}
	}
	if r.IPv6Address != "" {
		if v6, err = ParseAddr("ip6", r.IPv6Address); err != nil {
			return v4, v6, err
		}
		if !v6.Is6() {
			return v4, v6, Invalid("ip6", r.IPv6Address, "not an IPv6 address")
		}
	}
	return v4, v6, nil
}

// Check validates the request.
func (r Connect) Check() error {
	_, _, err := r.Addresses()
	return err
}

// Check validates the request.
func (r Disconnect) Check() error { return CheckName("sandbox", r.Sandbox) }

// SandboxSpec is a checked [SandboxCreate], typed.
type SandboxSpec struct {
	Name string
	// Mode is one of ModeNetwork, ModeNone, ModeHost, ModeContainer; Target the network's
	// name (ModeNetwork, ModeNone, ModeHost) or the shared sandbox's (ModeContainer).
	Mode, Target string
	DNS          []netip.Addr
	ExtraHosts   []HostEntry
}

// HostEntry is one --add-host entry.
type HostEntry struct {
	Name string
	Addr netip.Addr
}

// Spec checks the request and returns what needs parsing, typed: the name, the network mode,
// ports, DNS servers and extra hosts. Ports are refused with a mode that has no network of
// its own to publish from (none, host, container:).
func (r SandboxCreate) Spec() (SandboxSpec, error) {
	s := SandboxSpec{Name: r.Name}
	if err := CheckName("sandbox", r.Name); err != nil {
		return s, err
	}
	var err error
	if s.Mode, s.Target, err = ParseNetworkMode(r.Network); err != nil {
		return s, err
	}
	if s.Mode == ModeContainer && s.Target == r.Name {
		return s, Invalid("net", r.Network, "a sandbox cannot share its own namespace")
	}
	for _, b := range append(slices.Clone(r.Ports), r.Expose...) {
		if err := b.Validate(); err != nil {
			return s, err
		}
	}
	if (len(r.Ports) > 0 || r.PublishAll) && s.Mode != ModeNetwork {
		return s, Invalid("publish", r.Network, "ports are published only on a network (not none, host or container:)")
	}
	if r.Netns != "" && (s.Mode == ModeHost || s.Mode == ModeContainer) {
		return s, Invalid("netns", r.Netns, "conflicts with --net "+r.Network)
	}
	if r.IfName != "" && s.Mode != ModeNetwork {
		return s, Invalid("ifname", r.IfName, "an interface name needs a network (not none, host or container:)")
	}
	if len(r.Aliases) > 0 && s.Mode != ModeNetwork {
		return s, Invalid("network-alias", r.Network, "aliases need a network (not none, host or container:)")
	}
	if r.Hostname != "" && (s.Mode == ModeHost || s.Mode == ModeContainer) {
		return s, Invalid("hostname", r.Hostname, "conflicts with --net "+r.Network)
	}
	for _, d := range r.DNS {
		a, err := ParseAddr("dns", d)
		if err != nil {
			return s, err
		}
		s.DNS = append(s.DNS, a)
	}
	for _, h := range r.ExtraHosts {
		name, addr, ok := strings.Cut(h, ":")
		if inner, bracketed := strings.CutPrefix(addr, "["); bracketed {
			addr = strings.TrimSuffix(inner, "]")
		}
		if !ok || name == "" {
			return s, Invalid("add-host", h, "want name:addr")
		}
		a, err := ParseAddr("add-host", addr)
		if err != nil {
			return s, err
		}
		s.ExtraHosts = append(s.ExtraHosts, HostEntry{Name: name, Addr: a})
	}
	return s, nil
}

// EventOf returns the wire form of a Controller event.
func EventOf(ev events.Event) Event {
	out := Event{
		Seq: ev.Seq, Time: ev.Time, Kind: ev.Kind.String(), NetworkID: ev.NetworkID, Network: ev.Network,
		Remote: ev.Remote, EndpointID: ev.EndpointID, Endpoint: ev.Endpoint, SandboxID: ev.SandboxID,
		Host: ev.Host, Dropped: ev.Dropped,
	}
	if ev.IPv4.IsValid() {
		out.IPv4 = ev.IPv4.String()
	}
	if ev.IPv6.IsValid() {
		out.IPv6 = ev.IPv6.String()
	}
	if ev.Repair != (events.Repair{}) {
		out.Repair = &EventRepair{Object: ev.Repair.Object, Action: ev.Repair.Action, Reason: ev.Repair.Reason}
	}
	if ev.Key != (events.KeyRotation{}) {
		out.Key = &EventKey{Epoch: ev.Key.Epoch, Phase: ev.Key.Phase, Primary: ev.Key.Primary}
	}
	return out
}

// ParseHost parses a --host value: "unix:///path/to.sock" or "tcp://host:port". It returns
// the scheme ("unix" or "tcp") and the path or address.
func ParseHost(s string) (scheme, addr string, err error) {
	scheme, addr, ok := strings.Cut(s, "://")
	switch {
	case !ok:
		return "", "", Invalid("host", s, "want unix:///path or tcp://host:port")
	case scheme == "unix":
		if !strings.HasPrefix(addr, "/") {
			return "", "", Invalid("host", s, "a unix socket path must be absolute")
		}
	case scheme == "tcp":
		if _, err := netip.ParseAddrPort(addr); err != nil {
			if h, p, ok := strings.Cut(addr, ":"); !ok || h == "" || p == "" {
				return "", "", Invalid("host", s, "want tcp://host:port")
			}
		}
	default:
		return "", "", Invalid("host", s, "the scheme must be unix or tcp")
	}
	return scheme, addr, nil
}

// DefaultHost is where cnmd listens and cnmctl connects by default.
const DefaultHost = "unix:///run/cnm/cnm.sock"
