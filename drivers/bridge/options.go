package bridge

import (
	"maps"
	"net/netip"
	"slices"
	"strconv"

	"github.com/cnmkit/cnm/drivers"
)

// DriverType is the driver type that [NetworkOptions] are for.
const DriverType = "bridge"

// The labels that [ParseNetworkOptions] reads and [NetworkOptions.Labels] writes; they are
// Docker's.
const (
	LabelBridgeName         = "com.docker.network.bridge.name"                 // NetworkOptions.BridgeName
	LabelMTU                = "com.docker.network.driver.mtu"                  // NetworkOptions.MTU, decimal
	LabelEnableICC          = "com.docker.network.bridge.enable_icc"           // !NetworkOptions.DisableICC, a boolean
	LabelEnableIPMasquerade = "com.docker.network.bridge.enable_ip_masquerade" // !NetworkOptions.DisableIPMasquerade, a boolean
	LabelHostBindingIPv4    = "com.docker.network.bridge.host_binding_ipv4"    // NetworkOptions.HostBindingIPv4
	LabelGatewayModeIPv4    = "com.docker.network.bridge.gateway_mode_ipv4"    // NetworkOptions.GatewayModeIPv4: nat or routed
)

// GatewayMode is how a network's IPv4 traffic leaves the host.
type GatewayMode string

const (
	// GatewayModeNAT masquerades the network's traffic to the host's address on the way out
	// (unless NetworkOptions.DisableIPMasquerade). The zero GatewayMode means it.
	GatewayModeNAT GatewayMode = "nat"
	// GatewayModeRouted routes the network's traffic without NAT: the rest of the network needs a
	// route to the subnet through the host. Connections from outside to the containers are
	// refused except ICMP (until ports are published).
	GatewayModeRouted GatewayMode = "routed"
)

func (m GatewayMode) valid() bool { return m == "" || m == GatewayModeNAT || m == GatewayModeRouted }

// Defaults and limits of [NetworkOptions].
const (
	DefaultMTU = 1500
	MinMTU     = drivers.MinMTU // the IPv4 minimum
	MaxMTU     = drivers.MaxMTU // the largest a bridge or veth takes
	// MinIPv6MTU is the least MTU of a network with IPv6 subnets: below it the kernel turns
	// IPv6 off on the link.
	MinIPv6MTU = 1280
)

var _ drivers.NetworkOptions = NetworkOptions{}

// NetworkOptions is the typed configuration of a bridge network, passed as
// [drivers.CreateNetworkRequest].Options (a value or a pointer). The zero value means the
// defaults.
type NetworkOptions struct {
	// BridgeName is the name of the Linux bridge: a valid interface name (1 to 15 bytes, no
	// '/', ':' or white space). "" means "br-" and the first 12 characters of the network ID.
	BridgeName string
	// MTU is the MTU of the bridge and of every veth of the network, in bytes, 68 to 65535
	// (at least 1280 when the network has IPv6 subnets). 0 means 1500.
	MTU int
	// DisableICC reports whether containers on the network are kept from reaching each other
	// (Docker's enable_icc=false). It needs br_netfilter in the host namespace. false means
	// they reach each other.
	DisableICC bool
	// DisableIPMasquerade reports whether the network's outbound traffic keeps its container
	// source address (Docker's enable_ip_masquerade=false). false means it is masqueraded in
	// GatewayModeNAT.
	DisableIPMasquerade bool
	// HostBindingIPv4 is the default host address that ports published on the network bind
	// to. The zero Addr means all addresses (0.0.0.0). Port publishing is not implemented
	// yet: the value is kept and checked only.
	HostBindingIPv4 netip.Addr
	// GatewayModeIPv4 is how IPv4 traffic leaves the host: "" (nat), GatewayModeNAT or
	// GatewayModeRouted.
	GatewayModeIPv4 GatewayMode
}

// DriverType returns "bridge".
func (o NetworkOptions) DriverType() string { return DriverType }

// Labels returns the options that are set (not zero) as Docker labels; ParseNetworkOptions
// reads them back into the same NetworkOptions. The map is new on every call.
func (o NetworkOptions) Labels() map[string]string {
	m := make(map[string]string, 6)
	if o.BridgeName != "" {
		m[LabelBridgeName] = o.BridgeName
	}
	if o.MTU != 0 {
		m[LabelMTU] = strconv.Itoa(o.MTU)
	}
	if o.DisableICC {
		m[LabelEnableICC] = "false"
	}
	if o.DisableIPMasquerade {
		m[LabelEnableIPMasquerade] = "false"
	}
	if o.HostBindingIPv4.IsValid() {
		m[LabelHostBindingIPv4] = o.HostBindingIPv4.String()
	}
	if o.GatewayModeIPv4 != "" {
		m[LabelGatewayModeIPv4] = string(o.GatewayModeIPv4)
	}
	return m
}

// ParseNetworkOptions parses Docker labels into NetworkOptions. It knows LabelBridgeName,
// LabelMTU, LabelEnableICC and LabelEnableIPMasquerade (booleans as strconv.ParseBool reads
// them: true, false, 1, 0, ...), LabelHostBindingIPv4 (an IPv4 address) and
// LabelGatewayModeIPv4 ("nat" or "routed"). An unknown key, a bad bridge name, an MTU that is
// not a decimal number from 68 to 65535, or any other bad value is refused with an *drivers.InvalidParameterError (matching cnm.ErrInvalidParameter)
// that names the key and the value. When several labels are bad, the error is about the first
// in key order. Nil or empty labels give the zero NetworkOptions (the defaults).
//
// It is the only place where bridge labels are parsed.
func ParseNetworkOptions(labels map[string]string) (NetworkOptions, error) {
	var o NetworkOptions
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		v := labels[k]
		switch k {
		case LabelBridgeName:
			if err := drivers.CheckIfName(k, v); err != nil {
				return NetworkOptions{}, err
			}
			o.BridgeName = v
		case LabelMTU:
			mtu, err := strconv.Atoi(v)
			if err != nil {
				return NetworkOptions{}, &drivers.InvalidParameterError{Field: k, Value: v, Reason: "not a decimal number"}
			}
			if err := drivers.CheckMTU(k, v, mtu); err != nil {
				return NetworkOptions{}, err
			}
			o.MTU = mtu
		case LabelEnableICC, LabelEnableIPMasquerade:
			b, err := strconv.ParseBool(v)
			if err != nil {
				return NetworkOptions{}, drivers.Invalid(k, v, "not a boolean")
			}
			if k == LabelEnableICC {
				o.DisableICC = !b
			} else {
				o.DisableIPMasquerade = !b
			}
		case LabelHostBindingIPv4:
			a, err := netip.ParseAddr(v)
			if err != nil || !a.Is4() {
				return NetworkOptions{}, drivers.Invalid(k, v, "not an IPv4 address")
			}
			o.HostBindingIPv4 = a
		case LabelGatewayModeIPv4:
			m := GatewayMode(v)
			if m == "" || !m.valid() {
				return NetworkOptions{}, drivers.Invalid(k, v, `want "nat" or "routed"`)
			}
			o.GatewayModeIPv4 = m
		default:
			return NetworkOptions{}, drivers.Invalid(k, v, "unknown bridge network option")
		}
	}
	return o, nil
}

// validate checks o as CreateNetwork gets it (the fields may not have come from labels).
func (o NetworkOptions) validate() error {
	if o.BridgeName != "" {
		if err := drivers.CheckIfName("bridge name", o.BridgeName); err != nil {
			return err
		}
	}
	if o.MTU != 0 {
		if err := drivers.CheckMTU("MTU", strconv.Itoa(o.MTU), o.MTU); err != nil {
			return err
		}
	}
	if a := o.HostBindingIPv4; a.IsValid() && !a.Is4() {
		return drivers.Invalid("host binding IPv4", a.String(), "not an IPv4 address")
	}
	if !o.GatewayModeIPv4.valid() {
		return drivers.Invalid("IPv4 gateway mode", string(o.GatewayModeIPv4), `want "nat" or "routed"`)
	}
	return nil
}
