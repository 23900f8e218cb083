package endpoint

import (
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/cnmkit/cnm/sandbox"
)

// Spec is the per-call configuration of a new endpoint, set by Options.
type Spec struct {
	// IPv4 and IPv6 request static addresses; the zero Addr asks for the next free one.
	IPv4 netip.Addr
	IPv6 netip.Addr
	// MAC requests a MAC address; nil lets the driver choose.
	MAC net.HardwareAddr
	// Ports are the ports to publish (WithPorts, WithPublishAll); nil for none.
	Ports []drivers.PortBinding
	// Aliases are the endpoint's extra names on its network (WithAliases); nil for none.
	Aliases []string
	// IfName is the interface name the endpoint wants in its sandbox (WithIfName); "" lets
	// the sandbox pick the next ethN.
	IfName string
}

// WithIfName asks for the interface name the endpoint gets in the sandbox it joins (Docker's
// com.docker.network.endpoint.ifname): a name taken there fails the join with an error
// matching ErrAlreadyExists.
func WithIfName(name string) Option { return func(s *Spec) { s.IfName = name } }

// Validate checks the fields of s that need no network: ports, aliases, interface name. It
// returns an error matching ErrInvalidParameter naming the first bad value.
func (s Spec) Validate() error {
	for _, p := range s.Ports {
		if err := p.Validate(); err != nil {
			return err
		}
	}
	if err := ValidateAliases(s.Aliases); err != nil {
		return err
	}
	if s.IfName != "" {
		return sandbox.ValidateIfName(s.IfName)
	}
	return nil
}

// WithAliases gives the endpoint extra names on its network (docker network connect --alias):
// the drivers and the embedded DNS see them.
func WithAliases(names ...string) Option {
	names = slices.Clone(names)
	return func(s *Spec) { s.Aliases = append(s.Aliases, names...) }
}

// ValidateAliases checks aliases: each a DNS name of at most 253 characters (letters, digits,
// '-', '_' and '.'), none twice. It returns an error matching ErrInvalidParameter naming the
// first bad one.
func ValidateAliases(aliases []string) error {
	seen := make(map[string]bool, len(aliases))
	for _, a := range aliases {
		switch {
		case a == "" || len(a) > 253:
			return errclass.Invalid("alias", a, "want 1 to 253 characters")
		case strings.IndexFunc(a, func(r rune) bool {
			return !(r == '-' || r == '_' || r == '.' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z')
		}) >= 0:
			return errclass.Invalid("alias", a, "use letters, digits, '-', '_' and '.'")
		case seen[strings.ToLower(a)]:
			return errclass.Invalid("alias", a, "given twice")
		}
		seen[strings.ToLower(a)] = true
	}
	return nil
}

// Option sets a field of a Spec. Options never fail: the network validates the Spec once
// after all are applied.
type Option func(*Spec)

// WithIPv4 requests the static IPv4 address a (docker network connect --ip).
func WithIPv4(a netip.Addr) Option { return func(s *Spec) { s.IPv4 = a } }

// WithIPv6 requests the static IPv6 address a (--ip6).
func WithIPv6(a netip.Addr) Option { return func(s *Spec) { s.IPv6 = a } }

// WithMAC requests the MAC address mac (--mac-address).
func WithMAC(mac net.HardwareAddr) Option {
	return func(s *Spec) { s.MAC = append(net.HardwareAddr(nil), mac...) }
}

// WithPorts publishes ports of the endpoint on the host (docker run -p); see
// [ParsePortSpec] for the text form. The bound ports, ephemeral ones chosen, are in
// [Info].Ports. A driver that publishes no ports refuses the endpoint.
func WithPorts(ports ...drivers.PortBinding) Option {
	ports = slices.Clone(ports)
	return func(s *Spec) { s.Ports = append(s.Ports, ports...) }
}

// WithPublishAll publishes each exposed container port on an ephemeral host port (docker run
// -P): only Proto and ContainerPort (and ContainerPortEnd) of each are used.
func WithPublishAll(exposed ...drivers.PortBinding) Option {
	var ports []drivers.PortBinding
	for _, e := range exposed {
		ports = append(ports, drivers.PortBinding{Proto: e.Proto, ContainerPort: e.ContainerPort, ContainerPortEnd: e.ContainerPortEnd})
	}
	return func(s *Spec) { s.Ports = append(s.Ports, ports...) }
}

// ParsePortSpec parses docker run's -p argument: "[hostIP:][hostPort:]containerPort[/proto]",
// where each port may be a range "first-last", hostPort may be empty ("127.0.0.1::80", an
// ephemeral port on that address), an IPv6 hostIP is written in brackets ("[::1]:80:80"), and
// proto is "tcp" (the default) or "udp". Equal ranges ("8000-8009:80-89") are expanded to one
// binding per port; a host range with one container port ("8000-8009:80") is kept as one
// binding, for which the driver binds one free port of the range.
//
// Bad input (a port that is 0, not a decimal number or above 65535, an unknown protocol, a bad
// address, ranges of different lengths) is refused with an *errclass.InvalidParameterError
// (matching cnm.ErrInvalidParameter) whose Value is the part of spec as typed that is wrong
// (the port "-1", the protocol "sctp"), or spec itself, never empty unless spec is.
func ParsePortSpec(spec string) ([]drivers.PortBinding, error) {
	bad := func(reason string) error { return errclass.Invalid("port spec", spec, reason) }
	rest, proto, hasProto := strings.Cut(spec, "/")
	b := drivers.PortBinding{Proto: "tcp"}
	if hasProto {
		switch p := strings.ToLower(proto); {
		case p == "tcp" || p == "udp":
			b.Proto = p
		case p == "":
			return nil, bad(`empty protocol: want "tcp" or "udp"`)
		default:
			return nil, errclass.Invalid("port protocol", proto, `want "tcp" or "udp"`)
		}
	}
	var ip, host, ctr string
	if strings.HasPrefix(rest, "[") { // [v6]:hostPort:containerPort
		end := strings.Index(rest, "]:")
		if end < 0 {
			return nil, bad("unclosed '[' around an IPv6 address")
		}
		ip = rest[1:end]
		var ok bool
		if host, ctr, ok = strings.Cut(rest[end+2:], ":"); !ok {
			return nil, bad("want [hostIP]:hostPort:containerPort")
		}
		if ip == "" {
			return nil, bad("empty host address")
		}
	} else {
		f := strings.Split(rest, ":")
		switch len(f) {
		case 1:
			ctr = f[0]
		case 2:
			host, ctr = f[0], f[1]
		case 3:
			ip, host, ctr = f[0], f[1], f[2]
			if ip == "" {
				return nil, bad("empty host address")
			}
		default:
			return nil, bad("want [hostIP:][hostPort:]containerPort[/proto]")
		}
	}
	if ip != "" {
		a, err := netip.ParseAddr(ip)
		if err != nil || a.Zone() != "" {
			return nil, errclass.Invalid("host address", ip, "not an IP address")
		}
		b.HostIP = a.Unmap()
	}
	if ctr == "" {
		return nil, bad("no container port")
	}
	var err error
	if b.ContainerPort, b.ContainerPortEnd, err = parsePortRange(ctr); err != nil {
		return nil, err
	}
	if host != "" {
		if b.HostPort, b.HostPortEnd, err = parsePortRange(host); err != nil {
			return nil, err
		}
	}
	if err := b.Validate(); err != nil {
		// Validate names the binding as rendered ("/tcp" added, zeros dropped): name the
		// spec as typed, with Validate's error as the cause.
		return nil, &errclass.InvalidParameterError{Field: "port spec", Value: spec, Reason: "not a valid binding", Err: err}
	}
	// Equal ranges: one binding per port.
	if b.ContainerPortEnd == 0 || (b.HostPort != 0 && b.HostPortEnd == 0) {
		return []drivers.PortBinding{b}, nil
	}
	var out []drivers.PortBinding
	for i := 0; i <= int(b.ContainerPortEnd-b.ContainerPort); i++ {
		one := drivers.PortBinding{Proto: b.Proto, HostIP: b.HostIP, ContainerPort: b.ContainerPort + uint16(i)}
		if b.HostPort != 0 {
			one.HostPort = b.HostPort + uint16(i)
		}
		out = append(out, one)
	}
	return out, nil
}

// parsePortRange parses "port" or "first-last", each 1 to 65535; end is 0 for one port. Its
// errors name the port as typed, or s when that part is empty ("-1", "80-").
func parsePortRange(s string) (port, end uint16, err error) {
	first, last, isRange := strings.Cut(s, "-")
	if isRange && (first == "" || last == "") {
		return 0, 0, errclass.Invalid("port range", s, "want first-last, each 1 to 65535")
	}
	p, err := parsePort(first)
	if err != nil || !isRange {
		return p, 0, err
	}
	e, err := parsePort(last)
	if err != nil {
		return 0, 0, err
	}
	if e < p {
		return 0, 0, errclass.Invalid("port range", s, "ends before it starts")
	}
	if e == p {
		e = 0
	}
	return p, e, nil
}

func parsePort(s string) (uint16, error) {
	n, err := strconv.ParseUint(s, 10, 32)
	switch {
	case err != nil || s == "" || s[0] == '+':
		return 0, errclass.Invalid("port", s, "not a decimal number")
	case n == 0 || n > 65535:
		return 0, errclass.Invalid("port", s, "want 1 to 65535")
	}
	return uint16(n), nil
}
