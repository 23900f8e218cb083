package bridge

import (
	"errors"
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
		{"com.docker.network.bridge.enable_icc", "true"},
		{"mtu", "1500"},
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
	f.Add("br0", "1500", "", "")
	f.Add("", "9000", "", "")
	f.Add("a/b", "x", "", "")
	f.Add("abcdefghijklmnop", "65536", "", "")
	f.Add("br0", "1500", "com.docker.network.bridge.enable_icc", "false")
	f.Add(" ", "-0", "k", "")
	f.Fuzz(func(t *testing.T, name, mtu, extraKey, extraValue string) {
		labels := map[string]string{LabelBridgeName: name, LabelMTU: mtu}
		if extraKey != "" {
			labels[extraKey] = extraValue
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
		if extraKey != "" && extraKey != LabelBridgeName && extraKey != LabelMTU {
			t.Fatalf("unknown key %q accepted", extraKey)
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
		back, err := ParseNetworkOptions(o.Labels())
		if err != nil || back != o {
			t.Fatalf("round trip of %+v = %+v, %v", o, back, err)
		}
	})
}
