package bridge

import (
	"errors"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/google/go-cmp/cmp"
)

func TestParseNetworkOptions(t *testing.T) {
	for _, tc := range []struct {
		labels map[string]string
		want   NetworkOptions
	}{
		{nil, NetworkOptions{}},
		{map[string]string{}, NetworkOptions{}},
		{map[string]string{LabelBridgeName: "docker1"}, NetworkOptions{BridgeName: "docker1"}},
		{map[string]string{LabelBridgeName: "abcdefghijklmno"}, NetworkOptions{BridgeName: "abcdefghijklmno"}},
		{map[string]string{LabelMTU: "9000"}, NetworkOptions{MTU: 9000}},
		{map[string]string{LabelMTU: "68", LabelBridgeName: "br0"}, NetworkOptions{BridgeName: "br0", MTU: 68}},
		{map[string]string{LabelMTU: "65535"}, NetworkOptions{MTU: 65535}},
		{map[string]string{LabelEnableICC: "false"}, NetworkOptions{DisableICC: true}},
		{map[string]string{LabelEnableICC: "true"}, NetworkOptions{}},
		{map[string]string{LabelEnableICC: "0", LabelEnableIPMasquerade: "f"}, NetworkOptions{DisableICC: true, DisableIPMasquerade: true}},
		{map[string]string{LabelEnableIPMasquerade: "TRUE"}, NetworkOptions{}},
		{map[string]string{LabelHostBindingIPv4: "127.0.0.1"}, NetworkOptions{HostBindingIPv4: netip.MustParseAddr("127.0.0.1")}},
		{map[string]string{LabelHostBindingIPv4: "0.0.0.0"}, NetworkOptions{HostBindingIPv4: netip.IPv4Unspecified()}},
		{map[string]string{LabelGatewayModeIPv4: "nat"}, NetworkOptions{GatewayModeIPv4: GatewayModeNAT}},
		{map[string]string{LabelGatewayModeIPv4: "routed"}, NetworkOptions{GatewayModeIPv4: GatewayModeRouted}},
	} {
		got, err := ParseNetworkOptions(tc.labels)
		if err != nil {
			t.Errorf("ParseNetworkOptions(%v): %v", tc.labels, err)
			continue
		}
		if got != tc.want {
			t.Errorf("ParseNetworkOptions(%v) = %+v, want %+v", tc.labels, got, tc.want)
		}
	}
}

func TestParseNetworkOptionsErrors(t *testing.T) {
	for _, tc := range []struct {
		key, value string
	}{
		{"com.docker.network.bridge.enable_icc_typo", "true"},
		{"com.docker.network.bridge.host_ipv4", "10.0.0.1"},
		{"mtu", "1500"},
		{LabelEnableICC, ""},
		{LabelEnableICC, "yes"},
		{LabelEnableIPMasquerade, "maybe"},
		{LabelHostBindingIPv4, ""},
		{LabelHostBindingIPv4, "::1"},
		{LabelHostBindingIPv4, "::ffff:1.2.3.4"},
		{LabelHostBindingIPv4, "1.2.3"},
		{LabelHostBindingIPv4, "1.2.3.4/24"},
		{LabelGatewayModeIPv4, ""},
		{LabelGatewayModeIPv4, "NAT"},
		{LabelGatewayModeIPv4, "nat-unprotected"},
		{LabelMTU, ""},
		{LabelMTU, "1500.0"},
		{LabelMTU, "0x5dc"},
		{LabelMTU, "67"},
		{LabelMTU, "0"},
		{LabelMTU, "-1"},
		{LabelMTU, "65536"},
		{LabelMTU, "99999999999999999999"},
		{LabelBridgeName, ""},
		{LabelBridgeName, "abcdefghijklmnop"},
		{LabelBridgeName, "a/b"},
		{LabelBridgeName, "a:b"},
		{LabelBridgeName, "a b"},
		{LabelBridgeName, "a\tb"},
		{LabelBridgeName, "a\x00"},
		{LabelBridgeName, "."},
		{LabelBridgeName, ".."},
	} {
		_, err := ParseNetworkOptions(map[string]string{tc.key: tc.value})
		var ipe *errclass.InvalidParameterError
		if !errors.As(err, &ipe) || !errors.Is(err, errclass.ErrInvalidParameter) {
			t.Errorf("ParseNetworkOptions(%q=%q) = %v, want an *InvalidParameterError", tc.key, tc.value, err)
			continue
		}
		if ipe.Field != tc.key || ipe.Value != tc.value {
			t.Errorf("ParseNetworkOptions(%q=%q): error names %q=%q", tc.key, tc.value, ipe.Field, ipe.Value)
		}
	}
}

func TestParseNetworkOptionsFirstBadKey(t *testing.T) {
	_, err := ParseNetworkOptions(map[string]string{"z.unknown": "1", LabelMTU: "1", "a.unknown": "2"})
	var ipe *errclass.InvalidParameterError
	if !errors.As(err, &ipe) || ipe.Field != "a.unknown" {
		t.Fatalf("error %v, want one about the first key in order, a.unknown", err)
	}
}

func TestNetworkOptionsLabels(t *testing.T) {
	for _, tc := range []struct {
		o    NetworkOptions
		want map[string]string
	}{
		{NetworkOptions{}, map[string]string{}},
		{NetworkOptions{BridgeName: "br0"}, map[string]string{LabelBridgeName: "br0"}},
		{NetworkOptions{MTU: 1400}, map[string]string{LabelMTU: "1400"}},
		{NetworkOptions{BridgeName: "br0", MTU: 1400}, map[string]string{LabelBridgeName: "br0", LabelMTU: "1400"}},
		{NetworkOptions{DisableICC: true, DisableIPMasquerade: true}, map[string]string{LabelEnableICC: "false", LabelEnableIPMasquerade: "false"}},
		{NetworkOptions{HostBindingIPv4: netip.MustParseAddr("192.0.2.7"), GatewayModeIPv4: GatewayModeRouted},
			map[string]string{LabelHostBindingIPv4: "192.0.2.7", LabelGatewayModeIPv4: "routed"}},
		{NetworkOptions{GatewayModeIPv4: GatewayModeNAT}, map[string]string{LabelGatewayModeIPv4: "nat"}},
	} {
		if diff := cmp.Diff(tc.want, tc.o.Labels()); diff != "" {
			t.Errorf("%+v.Labels() (-want +got):\n%s", tc.o, diff)
		}
		back, err := ParseNetworkOptions(tc.o.Labels())
		if err != nil || back != tc.o {
			t.Errorf("round trip of %+v = %+v, %v", tc.o, back, err)
		}
	}
	var o drivers.NetworkOptions = NetworkOptions{}
	if o.DriverType() != "bridge" {
		t.Errorf("DriverType() = %q", o.DriverType())
	}
}

// FuzzParseNetworkOptions checks that the parser never panics, that whatever it accepts is
// valid and survives Labels unchanged, and that whatever it refuses is an
// *InvalidParameterError naming one of the given keys and its value.
func FuzzParseNetworkOptions(f *testing.F) {
	f.Add("br0", "1500", "", "", "", "")
	f.Add("", "9000", "true", "false", "", "")
	f.Add("a/b", "x", "yes", "", "1.2.3.4", "nat")
	f.Add("abcdefghijklmnop", "65536", "", "", "::1", "routed")
	f.Add("br0", "1500", "0", "1", "0.0.0.0", "NAT")
	f.Add(" ", "-0", "", "", "", "")
	f.Fuzz(func(t *testing.T, name, mtu, icc, masq, hostIP, gwMode string) {
		labels := map[string]string{LabelBridgeName: name, LabelMTU: mtu}
		for k, v := range map[string]string{LabelEnableICC: icc, LabelEnableIPMasquerade: masq, LabelHostBindingIPv4: hostIP, LabelGatewayModeIPv4: gwMode} {
			if v != "" {
				labels[k] = v
			}
		}
		if len(icc) > 3 && icc[0] == 'k' { // an unknown key now and then
			labels[icc] = masq
		}
		o, err := ParseNetworkOptions(labels)
		if err != nil {
			var ipe *errclass.InvalidParameterError
			if !errors.As(err, &ipe) {
				t.Fatalf("error %v (%T) is not an *InvalidParameterError", err, err)
			}
			if v, ok := labels[ipe.Field]; !ok || v != ipe.Value {
				t.Fatalf("error %v names %q=%q, not one of the labels %q", err, ipe.Field, ipe.Value, labels)
			}
			if o != (NetworkOptions{}) {
				t.Fatalf("options %+v returned with an error", o)
			}
			return
		}
		for k := range labels {
			switch k {
			case LabelBridgeName, LabelMTU, LabelEnableICC, LabelEnableIPMasquerade, LabelHostBindingIPv4, LabelGatewayModeIPv4:
			default:
				t.Fatalf("unknown key %q accepted", k)
			}
		}
		if err := o.validate(); err != nil {
			t.Fatalf("accepted options %+v do not validate: %v", o, err)
		}
		if len(o.BridgeName) > 15 || strings.ContainsAny(o.BridgeName, "/: \t\n") {
			t.Fatalf("accepted bad bridge name %q", o.BridgeName)
		}
		if n, _ := strconv.Atoi(labels[LabelMTU]); n != o.MTU {
			t.Fatalf("MTU %q parsed as %d", labels[LabelMTU], o.MTU)
		}
		if b, err := strconv.ParseBool(icc); icc != "" && (err != nil || b == o.DisableICC) {
			t.Fatalf("enable_icc %q parsed as DisableICC=%v", icc, o.DisableICC)
		}
		if hostIP != "" && (!o.HostBindingIPv4.Is4() || o.HostBindingIPv4.String() != hostIP) {
			t.Fatalf("host binding %q parsed as %v", hostIP, o.HostBindingIPv4)
		}
		if gwMode != "" && gwMode != "nat" && gwMode != "routed" {
			t.Fatalf("gateway mode %q accepted", gwMode)
		}
		back, err := ParseNetworkOptions(o.Labels())
		if err != nil || back != o {
			t.Fatalf("round trip of %+v = %+v, %v", o, back, err)
		}
	})
}
