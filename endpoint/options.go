package endpoint

import (
	"net"
	"net/netip"
)

// Spec is the per-call configuration of a new endpoint, set by Options.
type Spec struct {
	// IPv4 and IPv6 request static addresses; the zero Addr asks for the next free one.
	IPv4 netip.Addr
	IPv6 netip.Addr
	// MAC requests a MAC address; nil lets the driver choose.
	MAC net.HardwareAddr
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
