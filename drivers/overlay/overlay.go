// Package overlay is cnm's VXLAN overlay driver: one network across hosts, as Docker's overlay
// networks are. Its scope is global: a network is defined once in the cluster's store and
// usable from every host.
//
// # Control plane
//
// A network's VNI is allocated once per cluster ([drivers.NetworkAllocator]) by the host that
// creates it: the lowest free number of Config.VNIRange (4096–16777215 by default, as Docker),
// claimed with a create-only key in the cluster's store (VNIKeyPrefix + VNI, holding the
// network's ID), kept in the network's record (Docker's label
// com.docker.network.driver.overlay.vxlanid_list), freed by the host that deletes the network,
// swept by the cluster if a crash orphans it.
//
// Which endpoint (IP, MAC) sits behind which host (its VTEP address) travels in the gossip
// plane (drivers.Gossip), in the network's table "endpoints": each host writes the entries of
// its own endpoints and programs the others' into its kernel. A host joins a network's gossip
// group with its first local endpoint and leaves it with its last.
//
// # Data plane
//
// On each host with endpoints on a network, the network lives in a namespace of its own
// (RunDir/ov-<VNI>), as libnetwork does, so that it is isolated from the host's namespace and
// from the other overlay networks: a bridge "br0" for the local endpoints, and a VXLAN device
// for the network's VNI (UDP Config.Port, 4789 by default; learning off, ARP proxy on). The
// VXLAN device is created in the host's namespace, where its UDP socket stays, and moved into
// the network's namespace. Remote endpoints are static entries, never learnt or flooded: an
// FDB entry (MAC → remote VTEP) and a neighbour entry (IP → MAC, which the VXLAN device's ARP
// proxy answers). The namespace is created with the first local endpoint and removed with the
// last. An endpoint is a veth pair: one end on br0, the other created directly in the sandbox.
//
// The network's own namespace costs little in latency, within the noise of the measurements:
// a ping between two containers takes about the same time with the bridge and the VXLAN device
// in it as in the host's namespace (flannel's layout). The VXLAN encapsulation itself is most
// of the overlay's cost (a VXLAN device alone in the container is 1.5 to 2.4 times the
// underlay's round trip on the test VM), the veth and the bridge the rest (BENCHMARKS.md,
// scripts/overlay-rtt-lab.sh).
//
// The MTU is the underlay interface's (the one holding the VTEP address) less the VXLAN
// overhead: 50 bytes over IPv4, 70 over IPv6; an explicit com.docker.network.driver.mtu wins.
// A container reaches the outside through its own host: Join asks for the gateway service
// (drivers.JoinResult.NeedGateway) unless the network is internal.
//
// # Encrypted networks
//
// A network created with the "encrypted" option (Docker's name; Docker puts IPsec ESP under
// the VXLAN packets) carries its VXLAN packets between hosts inside WireGuard, run in
// userspace (golang.zx2c4.com/wireguard on a TUN interface, package internal/wgtun), since the
// kernel may have neither ESP nor WireGuard. Unencrypted networks keep the plain VXLAN path on
// the underlay.
//
//   - One tunnel per host, not per network: a WireGuard device "cnmwg0" (or "cnmwg1", see
//     rotation) in the host's namespace (Config.HostNetns), listening on UDP
//     Config.WireGuardPort (51820 by default) on all addresses, made with this host's first
//     endpoint on any encrypted network and closed with its last.
//   - Each host has a tunnel address, TunnelPrefix (fdc7:6e6d:7767::/64) plus its IPv4 VTEP
//     address (or a hash of an IPv6 one), held by its devices. An encrypted network's VXLAN
//     device uses the tunnel address as its local VTEP, and the peers' FDB entries point at
//     their tunnel addresses, routed (one /128 each) through the device: so its VXLAN packets
//     only ever leave the host inside WireGuard, to the peer's underlay address and WireGuard
//     port, and WireGuard drops any packet from a peer whose source is not that peer's tunnel
//     address. On the underlay an encrypted network shows only UDP to the WireGuard port.
//   - The MTU accounts for both overheads: the device's MTU is the underlay's less
//     WireGuard's 60 bytes (80 over an IPv6 underlay), the network's that less VXLAN over
//     IPv6's 70: 1370 on a 1500-byte underlay. An explicit MTU option still wins.
//   - Keys travel in the gossip plane: each host writes, in the table "tunnel" of every
//     encrypted network it has endpoints on, one entry (key: its gossip name) with its tunnel
//     address, underlay address, and the public key, port and generation of each of its
//     devices. A host programs as peers the union of the entries of the networks it is on, so
//     a host joining or leaving (or failing: the gossip plane withdraws its entries) updates
//     every peer at once, without restarts; a peer whose key changed is replaced in place.
//     Private keys never leave the process and are never stored: a restarted host makes new
//     ones and publishes them.
//
// # Key rotation of the tunnel
//
// The static keys rotate with the gossip keys: each step of a gossip key rotation (see
// drivers.Gossip.WatchKeys) with a newer epoch asks for a new generation, and so does a peer
// that publishes a newer generation than this host's (which is how a late or restarted host
// catches up). A WireGuard device has one private key, and accepts a packet from a peer only
// if the source is in that peer's allowed IPs, which name one peer each; so a key changes
// without a lost packet by an overlap of two devices, as the gossip keys go install, use,
// remove:
//
//  1. install: a second device (the other slot: "cnmwg1", port WireGuardPort+1) with a fresh
//     key, tagged with the new generation and the same tunnel address, is made and published
//     beside the first. Each device peers only with the peers' keys of its generation, so
//     the new devices of two hosts pair as soon as both have published; the new device sends
//     keepalives (which start the handshake) while the rotation runs, and, to a peer with no
//     handshake yet, one more every 1 to 3 seconds (jittered): two hosts that initiate at
//     once each drop the other's answer, and WireGuard would not try again until a packet
//     goes that way. One generation step is taken per gossip rotation, however many epochs
//     went by during the previous one, so all hosts step to the same generation.
//  2. use: each peer's route (its tunnel address) moves from the old device to the new one
//     once a handshake with that peer on the new device has completed, by a route
//     replacement: a packet is either in the old device's queue, which the peer's old
//     device still accepts, or in the new, whose session is already up. Both devices
//     receive throughout.
//  3. remove: a host publishes the oldest generation it still sends with, raised only a
//     second after its last route moved (the time for the older device's queues to drain);
//     the older device closes once every peer's route here is on the newer device, a second
//     has passed since the last move, and every peer says it sends with the newer
//     generation (or a minute after the new device was made, with a warning, for a peer
//     that never switches).
//
// WireGuard's own session rekeying (every two minutes) runs underneath and needs nothing.
//
// # Restart
//
// Close leaves the kernel state in place, but for the WireGuard devices, which live in this
// process: an encrypted network's traffic stops until the next Controller restores its
// endpoints (with new keys). After a restart, each endpoint still joined here is
// restored (drivers.EndpointRestorer): the network's namespace is taken back with the
// endpoints' interfaces, the remote endpoints programmed before are flushed and programmed again
// from the gossip table (so none is there twice, and none that left meanwhile stays), and this
// host's endpoints are published again.
package overlay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strconv"
	"sync"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/kvstore"
)

// DriverType is the name of the overlay driver type, and its usual registration name.
const DriverType = "overlay"

// Defaults of Config.
const (
	DefaultPort     = 4789
	DefaultVNIFirst = 4096
	DefaultVNILast  = 1<<24 - 1
)

// Labels the driver reads and writes, as Docker names them.
const (
	LabelVNI       = "com.docker.network.driver.overlay.vxlanid_list"
	LabelMTU       = "com.docker.network.driver.mtu"
	LabelEncrypted = "encrypted"
)

// VNIKeyPrefix + VNI is the key in the cluster's store that claims a VNI for a network.
const VNIKeyPrefix = "cnm/v1/overlay/vni/"

// Config configures the driver.
type Config struct {
	// Store is the cluster's store, where VNIs are claimed. Required.
	Store kvstore.Store
	// VTEP is this host's underlay address, which the other hosts send the VXLAN packets of
	// its endpoints to. The zero Addr means the address of the interface of the default route
	// in the host's namespace (Interface, when set, names the interface instead).
	VTEP      netip.Addr
	Interface string
	// HostNetns is the path of the host's namespace (where the VXLAN sockets live). "" means
	// the caller's.
	HostNetns string
	// RunDir holds the networks' namespaces (RunDir/ov-<VNI>). Required.
	RunDir string
	// Port is the VXLAN UDP port; 0 means DefaultPort.
	Port int
	// VNIFirst and VNILast bound the VNIs; 0 means DefaultVNIFirst and DefaultVNILast.
	VNIFirst, VNILast uint32
	// WireGuardPort is the UDP port of this host's WireGuard device, which carries the
	// encrypted networks' VXLAN traffic; during a key rotation the second device listens on
	// WireGuardPort+1. 0 means DefaultWireGuardPort.
	WireGuardPort int
	// Logger receives the driver's logs; nil discards them.
	Logger *slog.Logger
}

// NetworkOptions are the overlay driver's network options.
type NetworkOptions struct {
	// MTU overrides the MTU derived from the underlay (its MTU less the VXLAN overhead, and
	// WireGuard's for an encrypted network).
	MTU int
	// Encrypted carries the network's traffic between hosts in this host's WireGuard tunnel
	// (Docker's "encrypted" option).
	Encrypted bool
}

// DriverType returns "overlay".
func (NetworkOptions) DriverType() string { return DriverType }

// Labels returns the options as Docker labels.
func (o NetworkOptions) Labels() map[string]string {
	m := map[string]string{}
	if o.MTU != 0 {
		m[LabelMTU] = strconv.Itoa(o.MTU)
	}
	if o.Encrypted {
		m[LabelEncrypted] = ""
	}
	return m
}

// ParseNetworkOptions parses Docker's overlay labels. "encrypted" takes no value (Docker's
// "encrypted=true" and "encrypted=" are the same); its traffic goes in WireGuard, not ESP.
func ParseNetworkOptions(labels map[string]string) (NetworkOptions, error) {
	var o NetworkOptions
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		v := labels[k]
		switch k {
		case LabelMTU:
			n, err := strconv.Atoi(v)
			if err != nil {
				return o, drivers.Invalid(k, v, "not a number")
			}
			if err := drivers.CheckMTU(k, v, n); err != nil {
				return o, err
			}
			o.MTU = n
		case LabelEncrypted:
			if b, err := strconv.ParseBool(v); v != "" && (err != nil || !b) {
				return o, drivers.Invalid(k, v, `want "" or "true"`)
			}
			o.Encrypted = true
		case LabelVNI:
			return o, drivers.Invalid(k, v, "the VNI is allocated by the cluster")
		default:
			return o, drivers.Invalid("overlay option", k, "unknown option")
		}
	}
	return o, nil
}

// Driver is the overlay driver. Create it with New; it is safe for concurrent use.
type Driver struct {
	cfg  Config
	vnis vniAllocator
	log  *slog.Logger

	mu       sync.Mutex // guards following
	gossip   drivers.Gossip
	networks map[drivers.NetworkID]*ovNetwork

	// tunMu orders the start and stop of the tunnel; held across its devices' creation and
	// close. Lock order: a network's planeMu, then tunMu, then the tunnel's own locks.
	tunMu sync.Mutex
	tun   *tunnel // under tunMu; nil while no encrypted network has endpoints here
}

var (
	_ drivers.Driver           = (*Driver)(nil)
	_ drivers.OptionParser     = (*Driver)(nil)
	_ drivers.NetworkAllocator = (*Driver)(nil)
	_ drivers.GossipUser       = (*Driver)(nil)
	_ drivers.EndpointRestorer = (*Driver)(nil)
	_ drivers.Closer           = (*Driver)(nil)
)

// New returns an overlay driver. Config.Store and Config.RunDir are required.
func New(cfg Config) (*Driver, error) {
	if cfg.Store == nil {
		return nil, drivers.Invalid("overlay Store", "<nil>", "required: the cluster's store")
	}
	if cfg.RunDir == "" {
		return nil, drivers.Invalid("overlay RunDir", "", "required")
	}
	if cfg.Port == 0 {
		cfg.Port = DefaultPort
	}
	if cfg.Port < 1 || cfg.Port > 65535 {
		return nil, drivers.Invalid("overlay Port", strconv.Itoa(cfg.Port), "want 1 to 65535")
	}
	if cfg.WireGuardPort == 0 {
		cfg.WireGuardPort = DefaultWireGuardPort
	}
	if cfg.WireGuardPort < 1 || cfg.WireGuardPort > 65534 {
		return nil, drivers.Invalid("overlay WireGuardPort", strconv.Itoa(cfg.WireGuardPort), "want 1 to 65534 (the port and the next)")
	}
	if cfg.VNIFirst == 0 {
		cfg.VNIFirst = DefaultVNIFirst
	}
	if cfg.VNILast == 0 {
		cfg.VNILast = DefaultVNILast
	}
	if cfg.VNIFirst > cfg.VNILast || cfg.VNILast > DefaultVNILast {
		return nil, drivers.Invalid("overlay VNI range", fmt.Sprintf("%d-%d", cfg.VNIFirst, cfg.VNILast), "want first <= last <= 16777215")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Driver{
		cfg: cfg, log: cfg.Logger, networks: map[drivers.NetworkID]*ovNetwork{},
		vnis: vniAllocator{store: cfg.Store, first: cfg.VNIFirst, last: cfg.VNILast},
	}, nil
}

// Capabilities implements drivers.Driver: global scope, namespace sandboxes.
func (d *Driver) Capabilities() drivers.Capabilities {
	return drivers.Capabilities{DataScope: drivers.GlobalScope, Sandbox: drivers.NamespaceSandbox, GatewayPorts: true}
}

// ParseNetworkOptions implements drivers.OptionParser.
func (d *Driver) ParseNetworkOptions(labels map[string]string) (drivers.NetworkOptions, error) {
	o, err := ParseNetworkOptions(labels)
	if err != nil {
		return nil, err
	}
	return o, nil
}

// UseGossip implements drivers.GossipUser.
func (d *Driver) UseGossip(g drivers.Gossip) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.gossip = g
	return nil
}

// AllocateNetwork implements drivers.NetworkAllocator: the lowest free VNI of the range.
func (d *Driver) AllocateNetwork(ctx context.Context, req drivers.AllocateNetworkRequest) (map[string]string, error) {
	vni, err := d.vnis.allocate(ctx, req.NetworkID)
	if err != nil {
		return nil, fmt.Errorf("overlay: network %s: %w", req.Name, err)
	}
	return map[string]string{LabelVNI: strconv.FormatUint(uint64(vni), 10)}, nil
}

// FreeNetwork implements drivers.NetworkAllocator.
func (d *Driver) FreeNetwork(ctx context.Context, req drivers.FreeNetworkRequest) error {
	return d.vnis.free(ctx, req.NetworkID, req.Allocation[LabelVNI])
}

// Allocated implements drivers.NetworkAllocator.
func (d *Driver) Allocated(ctx context.Context) ([]drivers.NetworkID, error) {
	return d.vnis.allocated(ctx)
}

// ovNetwork is a network this host knows. Its data plane exists while it has local endpoints.
type ovNetwork struct {
	id        drivers.NetworkID
	vni       uint32
	internal  bool
	encrypted bool
	mtu       int // from the options; 0: derived from the underlay
	subnets   []netip.Prefix

	// planeMu orders the building and removal of the network's kernel state and its ports:
	// held across netlink calls, for this network only.
	planeMu   sync.Mutex
	plane     *plane        // nil while no endpoint is joined here; under planeMu
	stopWatch func()        // ends the peer watch; under planeMu
	watchDone chan struct{} // closed when the peer watch has ended

	// Under Driver.mu:
	endpoints map[drivers.EndpointID]*ovEndpoint
}

// ovEndpoint is an endpoint of this host.
type ovEndpoint struct {
	id     drivers.EndpointID
	mac    net.HardwareAddr
	ipv4   netip.Prefix
	ipv6   netip.Prefix
	joined bool
}

// CreateNetwork implements drivers.Driver: it records the network; its kernel state is made with
// its first local endpoint.
func (d *Driver) CreateNetwork(ctx context.Context, req drivers.CreateNetworkRequest) error {
	v, err := strconv.ParseUint(req.Allocation[LabelVNI], 10, 32)
	if err != nil || v == 0 || v > DefaultVNILast {
		return drivers.Invalid("overlay VNI", req.Allocation[LabelVNI], "not a VNI: the network was not allocated by an overlay driver")
	}
	if err := d.needGossip(); err != nil {
		return err
	}
	n := &ovNetwork{id: req.NetworkID, vni: uint32(v), internal: req.Internal, endpoints: map[drivers.EndpointID]*ovEndpoint{}}
	if o, ok := req.Options.(NetworkOptions); ok {
		n.mtu, n.encrypted = o.MTU, o.Encrypted
	}
	for _, s := range append(slices.Clone(req.IPv4), req.IPv6...) {
		n.subnets = append(n.subnets, s.Subnet)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if old, ok := d.networks[req.NetworkID]; ok {
		if old.vni != n.vni || old.encrypted != n.encrypted {
			return &drivers.ConflictError{Kind: "overlay network", Name: string(req.NetworkID), Reason: fmt.Sprintf("exists with VNI %d (encrypted: %t)", old.vni, old.encrypted)}
		}
		return nil
	}
	d.networks[req.NetworkID] = n
	return nil
}

func (d *Driver) needGossip() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.gossip == nil {
		return &drivers.NotSupportedError{What: "overlay networks without the gossip plane"}
	}
	return nil
}

// DeleteNetwork implements drivers.Driver: the network's kernel state goes (if any endpoint
// is still joined here, which the Controller prevents, its interfaces go with it).
func (d *Driver) DeleteNetwork(ctx context.Context, req drivers.DeleteNetworkRequest) error {
	d.mu.Lock()
	n := d.networks[req.NetworkID]
	delete(d.networks, req.NetworkID)
	g := d.gossip
	d.mu.Unlock()
	if n == nil {
		return nil
	}
	n.planeMu.Lock()
	defer n.planeMu.Unlock()
	p := n.plane
	if p == nil {
		return nil
	}
	n.plane = nil
	if n.stopWatch != nil {
		n.stopWatch()
		<-n.watchDone
	}
	var terr, gerr error
	if n.encrypted {
		terr = d.detachTunnel(n.id)
	}
	if g != nil {
		gerr = g.LeaveNetwork(n.id)
	}
	return errors.Join(terr, gerr, p.destroy())
}

// CreateEndpoint implements drivers.Driver: it chooses the endpoint's MAC (from its IPv4
// address, 02:42:a.b.c.d, as Docker does) when none is given.
func (d *Driver) CreateEndpoint(ctx context.Context, req drivers.CreateEndpointRequest) (drivers.CreateEndpointResult, error) {
	mac := req.MAC
	if mac == nil {
		mac = macFor(req.IPv4.Addr(), req.EndpointID)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	n := d.networks[req.NetworkID]
	if n == nil {
		return drivers.CreateEndpointResult{}, &drivers.NotFoundError{Kind: "overlay network", Name: string(req.NetworkID)}
	}
	if _, ok := n.endpoints[req.EndpointID]; !ok {
		n.endpoints[req.EndpointID] = &ovEndpoint{id: req.EndpointID, mac: mac, ipv4: req.IPv4, ipv6: req.IPv6}
	}
	return drivers.CreateEndpointResult{MAC: mac}, nil
}

// macFor returns Docker's MAC for an IPv4 address, 02:42:a.b.c.d, or one from the endpoint ID.
func macFor(a netip.Addr, id drivers.EndpointID) net.HardwareAddr {
	if a.Is4() {
		b := a.As4()
		return net.HardwareAddr{0x02, 0x42, b[0], b[1], b[2], b[3]}
	}
	mac := net.HardwareAddr{0x02, 0x42, 0, 0, 0, 0}
	for i := 0; i < 4 && 2*i+1 < len(id); i++ {
		v, _ := strconv.ParseUint(string(id[2*i:2*i+2]), 16, 8)
		mac[2+i] = byte(v)
	}
	return mac
}

// DeleteEndpoint implements drivers.Driver.
func (d *Driver) DeleteEndpoint(ctx context.Context, req drivers.DeleteEndpointRequest) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if n := d.networks[req.NetworkID]; n != nil {
		delete(n.endpoints, req.EndpointID)
	}
	return nil
}

// peerEntry is an endpoint as the gossip table carries it.
type peerEntry struct {
	MAC  string     `json:"mac"`
	IPv4 netip.Addr `json:"ipv4,omitzero"`
	IPv6 netip.Addr `json:"ipv6,omitzero"`
	VTEP netip.Addr `json:"vtep"`
}

// peerTable is the gossip table of a network's endpoints.
const peerTable = "endpoints"

func (e peerEntry) encode() []byte {
	b, _ := json.Marshal(e)
	return b
}

func decodePeer(b []byte) (peerEntry, error) {
	var e peerEntry
	err := json.Unmarshal(b, &e)
	return e, err
}

func (d *Driver) nsPath(vni uint32) string {
	return filepath.Join(d.cfg.RunDir, "ov-"+strconv.FormatUint(uint64(vni), 10))
}
