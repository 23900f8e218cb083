package drivers

import (
	"net/netip"
	"strconv"
	"strings"

	"github.com/cnmkit/cnm/internal/errclass"
)

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
func ParsePortSpec(spec string) ([]PortBinding, error) {
	bad := func(reason string) error { return errclass.Invalid("port spec", spec, reason) }
	rest, proto, hasProto := strings.Cut(spec, "/")
	b := PortBinding{Proto: "tcp"}
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
		return []PortBinding{b}, nil
	}
	var out []PortBinding
	for i := 0; i <= int(b.ContainerPortEnd-b.ContainerPort); i++ {
		one := PortBinding{Proto: b.Proto, HostIP: b.HostIP, ContainerPort: b.ContainerPort + uint16(i)}
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
