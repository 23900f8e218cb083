// Package wgtun runs one userspace WireGuard device (golang.zx2c4.com/wireguard) on a TUN
// interface in a given network namespace: the encrypted tunnel the overlay driver carries the
// VXLAN traffic of encrypted networks in, for kernels without ESP or WireGuard.
//
// # Namespaces and goroutines
//
// The TUN interface is created, addressed and routed in Config.Netns, and the device's UDP
// sockets are opened there (through [netns.NS.Do]); the device's goroutines run in no
// namespace in particular, since they only use those descriptors. Open starts them; Close stops
// them and waits for them, and removes the interface (a TUN interface goes with its descriptor).
//
// # Keys
//
// A [Key] is a Curve25519 key, as WireGuard uses: a device holds one private key for its life.
// Changing keys without losing a packet takes a second device: see the overlay driver's
// package documentation.
package wgtun

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"golang.org/x/crypto/curve25519"

	"github.com/cnmkit/cnm/internal/errclass"
)

// KeyLen is the length of a WireGuard key.
const KeyLen = 32

// Overhead is what WireGuard adds to an inner packet over an IPv4 underlay (IPv4 20, UDP 8,
// WireGuard header 16 and tag 16 bytes); Overhead6 over IPv6.
const (
	Overhead  = 60
	Overhead6 = 80
)

// Key is a Curve25519 private or public key.
type Key [KeyLen]byte

// NewPrivateKey returns a fresh, clamped private key.
func NewPrivateKey() (Key, error) {
	var k Key
	if _, err := rand.Read(k[:]); err != nil {
		return k, fmt.Errorf("wgtun: new key: %w", err)
	}
	k[0] &= 248
	k[31] = (k[31] & 127) | 64
	return k, nil
}

// Public returns the public key of private key k.
func (k Key) Public() Key {
	var p Key
	pub, err := curve25519.X25519(k[:], curve25519.Basepoint)
	if err != nil { // only for a low-order point, which a clamped scalar times the base is not
		panic(err)
	}
	copy(p[:], pub)
	return p
}

// IsZero reports whether k is all zeros (no key).
func (k Key) IsZero() bool { return k == Key{} }

// String returns k in base64, as wg(8) shows public keys. Never log a private key.
func (k Key) String() string { return base64.StdEncoding.EncodeToString(k[:]) }

// hex returns k in hex, as the UAPI wants it.
func (k Key) hex() string { return hex.EncodeToString(k[:]) }

// ParseKey parses a key in base64. The error names the length, never the key.
func ParseKey(s string) (Key, error) {
	var k Key
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(b) != KeyLen {
		return k, errclass.Invalid("wireguard key", fmt.Sprintf("%d characters", len(s)), "want 32 bytes in base64")
	}
	copy(k[:], b)
	return k, nil
}

// MarshalText implements encoding.TextMarshaler (base64).
func (k Key) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (k *Key) UnmarshalText(b []byte) error {
	v, err := ParseKey(string(b))
	if err != nil {
		return err
	}
	*k = v
	return nil
}

// Config configures a device.
type Config struct {
	// Name is the TUN interface's name. Required.
	Name string
	// Netns is the path of the namespace of the interface and the UDP sockets; "" means the
	// caller's.
	Netns string
	// PrivateKey is the device's static key. Required.
	PrivateKey Key
	// Port is the UDP port the device listens on, 1 to 65535. Required.
	Port int
	// Addr is the interface's address, added without duplicate address detection. Optional.
	Addr netip.Prefix
	// MTU is the interface's MTU. Required.
	MTU int
	// Logger receives the device's logs at debug level; nil discards them.
	Logger *slog.Logger
}

// Peer is a peer of a device.
type Peer struct {
	PublicKey Key
	// Endpoint is where the peer's device listens.
	Endpoint netip.AddrPort
	// AllowedIPs are the inner addresses the peer may send from and is sent to.
	AllowedIPs []netip.Prefix
	// Keepalive, when not 0, makes the device send a keepalive that often when idle (and one
	// at once, which starts a handshake).
	Keepalive time.Duration
}
