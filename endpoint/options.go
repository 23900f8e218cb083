package endpoint

import (
	"net"
	"net/netip"
	"slices"
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

// ParsePortSpec parses docker run's -p argument; it is [drivers.ParsePortSpec], kept here
// beside [WithPorts], which takes what it returns.
func ParsePortSpec(spec string) ([]drivers.PortBinding, error) { return drivers.ParsePortSpec(spec) }
