package macvlan

import (
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/cnmkit/cnm/drivers"
)

// DriverType is the driver type that [NetworkOptions] are for.
const DriverType = "macvlan"

// The labels that [ParseNetworkOptions] reads and [NetworkOptions.Labels] writes; they are
// Docker's (docker network create -d macvlan -o parent=eth0 -o macvlan_mode=bridge).
const (
	LabelParent = "parent"                        // NetworkOptions.Parent
	LabelMode   = "macvlan_mode"                  // NetworkOptions.Mode
	LabelMTU    = "com.docker.network.driver.mtu" // NetworkOptions.MTU, decimal
)

// Mode is a macvlan mode: how the kernel switches between the macvlan links of one parent.
type Mode string

const (
	// ModeBridge lets the macvlan links of one parent reach each other inside the kernel,
	// without the frames leaving the parent. The zero Mode means it.
	ModeBridge Mode = "bridge"
	// ModePrivate keeps the macvlan links of one parent from reaching each other at all, even
	// through a switch that sends the frames back.
	ModePrivate Mode = "private"
	// ModeVEPA sends every frame out of the parent, also those for another macvlan link of the
	// same parent: they reach each other only through a switch that sends frames back out of
	// the port they came in on (hairpin, 802.1Qbg reflective relay).
	ModeVEPA Mode = "vepa"
	// ModePassthru gives the parent to one macvlan link alone: a network in this mode takes
	// its parent for itself and has at most one joined endpoint at a time.
	ModePassthru Mode = "passthru"
)

// kernelMode returns the kernel's MACVLAN_MODE_* value of m.
func (m Mode) kernelMode() uint32 {
	switch m {
	case ModePrivate:
		return 1
	case ModeVEPA:
		return 2
	case ModePassthru:
		return 8
	}
	return 4 // bridge
}

func (m Mode) valid() bool {
	return m == "" || m == ModeBridge || m == ModePrivate || m == ModeVEPA || m == ModePassthru
}

// Limits of [NetworkOptions].
const (
	MinMTU = drivers.MinMTU // the IPv4 minimum
	MaxMTU = drivers.MaxMTU // the largest a macvlan link takes
)

var _ drivers.NetworkOptions = NetworkOptions{}

// NetworkOptions is the typed configuration of a macvlan network, passed as
// [drivers.CreateNetworkRequest].Options (a value or a pointer). The zero value is an internal
// network with no parent, in bridge mode.
type NetworkOptions struct {
	// Parent is the host interface the network's macvlan links sit on, in the host namespace:
	// "eth0", or "eth0.10" for VLAN 10 on eth0 (an 802.1q sub-interface, which the driver
	// creates when it is missing). "" means no parent: an internal network whose containers
	// reach only each other, on a parent the driver makes (see the package doc).
	Parent string
	// Mode is the macvlan mode. "" means ModeBridge.
	Mode Mode
	// MTU is the MTU of the network's macvlan links, in bytes, 68 to 65535 and at most the
	// parent's. 0 means the parent's.
	MTU int
}

// DriverType returns "macvlan".
func (o NetworkOptions) DriverType() string { return DriverType }

// Labels returns the options that are set (not zero) as Docker labels; ParseNetworkOptions
// reads them back into the same NetworkOptions. The map is new on every call.
func (o NetworkOptions) Labels() map[string]string {
	m := make(map[string]string, 3)
	if o.Parent != "" {
		m[LabelParent] = o.Parent
	}
	if o.Mode != "" {
		m[LabelMode] = string(o.Mode)
	}
	if o.MTU != 0 {
		m[LabelMTU] = strconv.Itoa(o.MTU)
	}
	return m
}

// ParseNetworkOptions parses Docker labels into NetworkOptions. It knows LabelParent (an
// interface name, "eth0" or "eth0.10" for a VLAN of 1 to 4094), LabelMode ("bridge",
// "private", "vepa" or "passthru") and LabelMTU (a decimal number from 68 to 65535). An
// unknown key or a bad value is refused with an *drivers.InvalidParameterError (matching
// cnm.ErrInvalidParameter) that names the key and the value; when several labels are bad, the
// error is about the first in key order. Nil or empty labels give the zero NetworkOptions.
//
// It is the only place where macvlan labels are parsed.
func ParseNetworkOptions(labels map[string]string) (NetworkOptions, error) {
	var o NetworkOptions
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		v := labels[k]
		switch k {
		case LabelParent:
			if err := checkParent(k, v); err != nil {
				return NetworkOptions{}, err
			}
			o.Parent = v
		case LabelMode:
			m := Mode(v)
			if m == "" || !m.valid() {
				return NetworkOptions{}, drivers.Invalid(k, v, `want "bridge", "private", "vepa" or "passthru"`)
			}
			o.Mode = m
		case LabelMTU:
			mtu, err := strconv.Atoi(v)
			if err != nil {
				return NetworkOptions{}, drivers.Invalid(k, v, "not a decimal number")
			}
			if err := drivers.CheckMTU(k, v, mtu); err != nil {
				return NetworkOptions{}, err
			}
			o.MTU = mtu
		default:
			return NetworkOptions{}, drivers.Invalid(k, v, "unknown macvlan network option")
		}
	}
	return o, nil
}

// validate checks o as CreateNetwork gets it (the fields may not have come from labels).
func (o NetworkOptions) validate() error {
	if o.Parent != "" {
		if err := checkParent("parent", o.Parent); err != nil {
			return err
		}
	}
	if !o.Mode.valid() {
		return drivers.Invalid("macvlan mode", string(o.Mode), `want "bridge", "private", "vepa" or "passthru"`)
	}
	if o.MTU != 0 {
		if err := drivers.CheckMTU("MTU", strconv.Itoa(o.MTU), o.MTU); err != nil {
			return err
		}
	}
	return nil
}

// splitVLAN splits a parent named like "eth0.10" into "eth0" and 10. Any other name gives
// (name, 0). The name must have passed checkParent.
func splitVLAN(parent string) (string, int) {
	i := strings.LastIndexByte(parent, '.')
	if i <= 0 {
		return parent, 0
	}
	id, err := strconv.Atoi(parent[i+1:])
	if err != nil || parent[i+1] == '+' || parent[i+1] == '-' {
		return parent, 0
	}
	return parent[:i], id
}

// checkParent checks a parent name: an interface name, not "lo", and for a name ending in a
// dot and digits, a VLAN ID from 1 to 4094.
func checkParent(field, name string) error {
	if err := drivers.CheckIfName(field, name); err != nil {
		return err
	}
	if name == "lo" {
		return drivers.Invalid(field, name, "loopback cannot be a macvlan parent")
	}
	if _, id := splitVLAN(name); id != 0 || strings.HasSuffix(name, ".0") {
		if id < 1 || id > 4094 {
			return drivers.Invalid(field, name, "VLAN ID out of 1 to 4094")
		}
	}
	return nil
}
