package overlay

import (
	"crypto/sha256"
	"encoding/json"
	"net/netip"

	"github.com/cnmkit/cnm/internal/wgtun"
)

// DefaultWireGuardPort is the UDP port of this host's WireGuard device; the second device of
// a key rotation listens on the next port.
const DefaultWireGuardPort = 51820

// TunnelPrefix holds the hosts' tunnel addresses: the VTEP addresses of encrypted networks,
// which exist only inside the WireGuard devices. A host with an IPv4 underlay address a.b.c.d
// has TunnelPrefix + a.b.c.d (the last 32 bits); with an IPv6 one, the last 64 bits are a hash
// of it.
var TunnelPrefix = netip.MustParsePrefix("fdc7:6e6d:7767::/64")

// tunnelTable is the gossip table, in each encrypted network, of the hosts' WireGuard keys.
const tunnelTable = "tunnel"

// vxlanOverhead6 is the VXLAN overhead over IPv6: what the VXLAN device of an encrypted network
// adds to each frame inside the tunnel (IPv6 40, UDP 8, VXLAN 8, Ethernet 14).
const vxlanOverhead6 = 70

// tunnelAddr returns the tunnel address of the host whose underlay address is vtep.
func tunnelAddr(vtep netip.Addr) netip.Addr {
	b := TunnelPrefix.Addr().As16()
	if vtep.Is4() {
		v := vtep.As4()
		copy(b[12:], v[:])
	} else {
		v := vtep.As16()
		sum := sha256.Sum256(v[:])
		copy(b[8:], sum[:8])
	}
	return netip.AddrFrom16(b)
}

// encryptedMTU returns the MTU of an encrypted network's interfaces, and the MTU of the
// WireGuard devices, for an underlay MTU and address: the underlay's MTU less WireGuard's
// overhead (60 bytes over IPv4, 80 over IPv6) is the devices'; less VXLAN's over IPv6 (70)
// the network's.
func encryptedMTU(underMTU int, vtep netip.Addr) (network, tun int) {
	tun = underMTU - wgtun.Overhead
	if vtep.Is6() {
		tun = underMTU - wgtun.Overhead6
	}
	return tun - vxlanOverhead6, tun
}

// tunnelKey is one of a host's WireGuard devices as its tunnel entry shows it: the generation
// (the gossip key rotation epoch it was made for), its public key and its UDP port.
type tunnelKey struct {
	Gen    uint64    `json:"gen"`
	Public wgtun.Key `json:"public"`
	Port   int       `json:"port"`
}

// tunnelEntry is a host's entry in the tunnel table of each encrypted network it has
// endpoints on.
type tunnelEntry struct {
	// Addr is the host's tunnel address; Endpoint its underlay address, where its devices
	// listen.
	Addr     netip.Addr `json:"addr"`
	Endpoint netip.Addr `json:"endpoint"`
	// Keys are the host's devices, oldest first (two during a rotation).
	Keys []tunnelKey `json:"keys"`
	// Sending is the lowest generation the host still sends with to any peer: a host closes
	// its older device once every peer sends with a newer one.
	Sending uint64 `json:"sending"`
}

func (e tunnelEntry) encode() []byte {
	b, _ := json.Marshal(e)
	return b
}

func decodeTunnel(b []byte) (tunnelEntry, error) {
	var e tunnelEntry
	err := json.Unmarshal(b, &e)
	return e, err
}

// key returns the entry's key of generation gen.
func (e tunnelEntry) key(gen uint64) (tunnelKey, bool) {
	for _, k := range e.Keys {
		if k.Gen == gen {
			return k, true
		}
	}
	return tunnelKey{}, false
}

// newest returns the entry's newest generation.
func (e tunnelEntry) newest() uint64 {
	var g uint64
	for _, k := range e.Keys {
		g = max(g, k.Gen)
	}
	return g
}
