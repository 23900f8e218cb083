package macvlan

import (
	"errors"
	"strings"
	"testing"

	"github.com/cnmkit/cnm/drivers"
)

func TestParseNetworkOptions(t *testing.T) {
	for _, tc := range []struct {
		labels map[string]string
		want   NetworkOptions
	}{
		{nil, NetworkOptions{}},
		{map[string]string{"parent": "eth0"}, NetworkOptions{Parent: "eth0"}},
		{map[string]string{"parent": "eth0.10", "macvlan_mode": "private"}, NetworkOptions{Parent: "eth0.10", Mode: ModePrivate}},
		{map[string]string{"macvlan_mode": "passthru", "com.docker.network.driver.mtu": "1400"}, NetworkOptions{Mode: ModePassthru, MTU: 1400}},
		{map[string]string{"macvlan_mode": "vepa"}, NetworkOptions{Mode: ModeVEPA}},
		{map[string]string{"macvlan_mode": "bridge"}, NetworkOptions{Mode: ModeBridge}},
	} {
		got, err := ParseNetworkOptions(tc.labels)
		if err != nil || got != tc.want {
			t.Errorf("ParseNetworkOptions(%v) = %+v, %v; want %+v", tc.labels, got, err, tc.want)
			continue
		}
		back, err := ParseNetworkOptions(got.Labels())
		if err != nil || back != got {
			t.Errorf("round trip of %+v = %+v, %v", got, back, err)
		}
	}
}

func TestParseNetworkOptionsRefuses(t *testing.T) {
	for _, tc := range []struct {
		key, value string
	}{
		{"parent", ""},
		{"parent", "lo"},
		{"parent", "a-name-longer-than-15"},
		{"parent", "eth0/1"},
		{"parent", "eth0.0"},
		{"parent", "eth0.4095"},
		{"macvlan_mode", ""},
		{"macvlan_mode", "source"},
		{"macvlan_mode", "Bridge"},
		{"com.docker.network.driver.mtu", "abc"},
		{"com.docker.network.driver.mtu", "67"},
		{"com.docker.network.driver.mtu", "65536"},
		{"com.docker.network.bridge.name", "br0"},
		{"ipvlan_mode", "l2"},
	} {
		_, err := ParseNetworkOptions(map[string]string{tc.key: tc.value})
		var ip *drivers.InvalidParameterError
		if !errors.Is(err, drivers.ErrInvalidParameter) || !errors.As(err, &ip) || ip.Field != tc.key || ip.Value != tc.value {
			t.Errorf("ParseNetworkOptions(%s=%q) = %v, want an *InvalidParameterError naming them", tc.key, tc.value, err)
		}
	}
}

func TestSplitVLAN(t *testing.T) {
	for _, tc := range []struct {
		in   string
		base string
		id   int
	}{
		{"eth0", "eth0", 0},
		{"eth0.10", "eth0", 10},
		{"bond0.4094", "bond0", 4094},
		{"my.nic", "my.nic", 0},
		{"eth0.+1", "eth0.+1", 0},
	} {
		if b, id := splitVLAN(tc.in); b != tc.base || id != tc.id {
			t.Errorf("splitVLAN(%q) = %q, %d; want %q, %d", tc.in, b, id, tc.base, tc.id)
		}
	}
}

func FuzzParseNetworkOptions(f *testing.F) {
	f.Add("parent", "eth0.10", "bridge", "1500")
	f.Add("macvlan_mode", "x", "passthru", "-1")
	f.Fuzz(func(t *testing.T, k, v, mode, mtu string) {
		labels := map[string]string{k: v, "macvlan_mode": mode, "com.docker.network.driver.mtu": mtu}
		o, err := ParseNetworkOptions(labels)
		if err != nil {
			if !errors.Is(err, drivers.ErrInvalidParameter) {
				t.Fatalf("error %v does not match ErrInvalidParameter", err)
			}
			return
		}
		if err := o.validate(); err != nil {
			t.Fatalf("parsed options %+v do not validate: %v", o, err)
		}
		back, err := ParseNetworkOptions(o.Labels())
		if err != nil || back != o {
			t.Fatalf("round trip of %+v = %+v, %v", o, back, err)
		}
		if strings.ContainsAny(o.Parent, "/: ") {
			t.Fatalf("parent %q accepted", o.Parent)
		}
	})
}
