//go:build !linux

package wgtun

import (
	"net/netip"
	"time"

	"github.com/cnmkit/cnm/internal/errclass"
)

// Device is a userspace WireGuard device; other systems have none.
type Device struct{}

// Open fails: the userspace tunnel runs on Linux only.
func Open(cfg Config) (*Device, error) {
	return nil, errclass.LinuxOnly("userspace WireGuard tunnels")
}

// SetPeers does nothing.
func (d *Device) SetPeers(peers []Peer) error { return nil }

// Handshakes returns nothing.
func (d *Device) Handshakes() (map[Key]time.Time, error) { return nil, nil }

// Nudge does nothing.
func (d *Device) Nudge(pub Key) error { return nil }

// Route does nothing.
func (d *Device) Route(dst netip.Prefix) error { return nil }

// Unroute does nothing.
func (d *Device) Unroute(dst netip.Prefix) error { return nil }

// Close does nothing.
func (d *Device) Close() error { return nil }

// Name returns "".
func (d *Device) Name() string { return "" }

// Port returns 0.
func (d *Device) Port() int { return 0 }

// PublicKey returns the zero key.
func (d *Device) PublicKey() Key { return Key{} }
