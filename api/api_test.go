package api_test

import (
	"errors"
	"net/http"
	"net/netip"
	"strings"
	"testing"

	"github.com/cnmkit/cnm/api"
	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/google/go-cmp/cmp"
)

// TestStatusRoundTrip: each class maps to its status and back to an *api.Error matching the
// same sentinel, and keeps the message.
func TestStatusRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		err    error
		class  error
		status int
	}{
		{&errclass.NotFoundError{Kind: "network", Name: "x"}, errclass.ErrNotFound, http.StatusNotFound},
		{&errclass.AlreadyExistsError{Kind: "network", Name: "x"}, errclass.ErrAlreadyExists, http.StatusConflict},
		{&errclass.ConflictError{Kind: "network", Name: "x", Reason: "in use"}, errclass.ErrConflict, http.StatusConflict},
		{errclass.Invalid("subnet", "x", "bad"), errclass.ErrInvalidParameter, http.StatusBadRequest},
		{&errclass.NotSupportedError{What: "vlan"}, errclass.ErrNotSupported, http.StatusNotImplemented},
		{&errclass.UnavailableError{What: "etcd"}, errclass.ErrUnavailable, http.StatusServiceUnavailable},
	} {
		wrapped := errors.Join(errors.New("context"), tc.err)
		if got := api.Status(wrapped); got != tc.status {
			t.Errorf("Status(%v) = %d, want %d", tc.err, got, tc.status)
		}
		e := api.NewError(wrapped)
		if !errors.Is(e, tc.class) {
			t.Errorf("NewError(%v) = %+v does not match %v", tc.err, e, tc.class)
		}
		for _, other := range []error{errclass.ErrNotFound, errclass.ErrAlreadyExists, errclass.ErrConflict, errclass.ErrInvalidParameter, errclass.ErrNotSupported, errclass.ErrUnavailable} {
			if other != tc.class && errors.Is(e, other) {
				t.Errorf("NewError(%v) also matches %v", tc.err, other)
			}
		}
		if e.Message != wrapped.Error() {
			t.Errorf("message %q, want %q", e.Message, wrapped.Error())
		}
		// Without a class, the status alone classes it (AlreadyExists and Conflict share 409).
		if bare := (&api.Error{Status: tc.status}); tc.class != errclass.ErrAlreadyExists && !errors.Is(bare, tc.class) {
			t.Errorf("status %d alone does not match %v", tc.status, tc.class)
		}
	}
	if got := api.Status(errors.New("boom")); got != http.StatusInternalServerError {
		t.Errorf("Status(unclassed) = %d, want 500", got)
	}
}

// TestDecode: strict decoding refuses what cnmd must refuse, naming why.
func TestDecode(t *testing.T) {
	for _, tc := range []struct{ body, want string }{
		{`{"Name": "x"`, "malformed JSON"},
		{`{"Name": "x", "Bogus": 1}`, `unknown field "Bogus"`},
		{`{"Name": "x"} {"Name": "y"}`, "trailing data"},
		{`{"Name": "` + strings.Repeat("a", api.MaxBodyBytes) + `"}`, "too large"},
		{`[]`, "malformed JSON"},
	} {
		var r api.NetworkCreate
		err := api.Decode(strings.NewReader(tc.body), &r)
		if !errors.Is(err, errclass.ErrInvalidParameter) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Decode(%.40q) = %v, want an invalid parameter saying %q", tc.body, err, tc.want)
		}
	}
	var r api.NetworkCreate
	if err := api.Decode(strings.NewReader(`{"Name":"n","Driver":"bridge","Options":{"com.docker.network.driver.mtu":"1400"}}`), &r); err != nil {
		t.Fatal(err)
	}
	if r.Name != "n" || r.Options["com.docker.network.driver.mtu"] != "1400" {
		t.Errorf("decoded %+v", r)
	}
}

// TestCheckName refuses what could escape a path or is not a cnm name.
func TestCheckName(t *testing.T) {
	for _, bad := range []string{"", "..", ".", "a/b", "../etc", "-x", "a b", strings.Repeat("a", 65), "é"} {
		if err := api.CheckName("network", bad); !errors.Is(err, errclass.ErrInvalidParameter) {
			t.Errorf("CheckName(%q) = %v, want invalid parameter", bad, err)
		}
	}
	for _, good := range []string{"a", "new_bridge", "my.net-1", strings.Repeat("a", 64)} {
		if err := api.CheckName("network", good); err != nil {
			t.Errorf("CheckName(%q) = %v", good, err)
		}
	}
}

func TestNetworkCreateSubnets(t *testing.T) {
	r := api.NetworkCreate{Name: "n", IPAM: &api.IPAM{Config: []api.IPAMConfig{{
		Subnet: "172.28.0.0/16", IPRange: "172.28.5.0/24", Gateway: "172.28.5.254",
		AuxiliaryAddresses: map[string]string{"host1": "172.28.1.5"},
	}}}}
	got, err := r.Subnets()
	if err != nil {
		t.Fatal(err)
	}
	want := []api.Subnet{{
		Subnet: netip.MustParsePrefix("172.28.0.0/16"), IPRange: netip.MustParsePrefix("172.28.5.0/24"),
		Gateway: netip.MustParseAddr("172.28.5.254"), AuxAddresses: map[string]netip.Addr{"host1": netip.MustParseAddr("172.28.1.5")},
	}}
	if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }), cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("Subnets (-want +got):\n%s", diff)
	}
	for _, tc := range []struct {
		c     api.IPAMConfig
		field string
	}{
		{api.IPAMConfig{Subnet: "10.0.0.1/24"}, "subnet"},
		{api.IPAMConfig{Subnet: "10.0.0.0/33"}, "subnet"},
		{api.IPAMConfig{Gateway: "10.0.0.1"}, "subnet"},
		{api.IPAMConfig{Subnet: "10.0.0.0/24", Gateway: "10.0.1.1"}, "gateway"},
		{api.IPAMConfig{Subnet: "10.0.0.0/24", IPRange: "10.0.0.0/16"}, "ip-range"},
		{api.IPAMConfig{Subnet: "10.0.0.0/24", AuxiliaryAddresses: map[string]string{"a": "nope"}}, "aux-address a"},
	} {
		_, err := api.NetworkCreate{Name: "n", IPAM: &api.IPAM{Config: []api.IPAMConfig{tc.c}}}.Subnets()
		var ie *errclass.InvalidParameterError
		if !errors.As(err, &ie) || ie.Field != tc.field {
			t.Errorf("Subnets(%+v) = %v, want invalid %s", tc.c, err, tc.field)
		}
	}
}

func TestParseKeyValues(t *testing.T) {
	m, err := api.ParseKeyValues("opt", []string{"a=1", "b=", "c=x=y"})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[string]string{"a": "1", "b": "", "c": "x=y"}, m); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	for _, bad := range [][]string{{"a"}, {"=1"}, {"a=1", "a=2"}} {
		if _, err := api.ParseKeyValues("opt", bad); !errors.Is(err, errclass.ErrInvalidParameter) {
			t.Errorf("ParseKeyValues(%q) = %v, want invalid parameter", bad, err)
		}
	}
}

func TestParseNetworkMode(t *testing.T) {
	for in, want := range map[string][2]string{
		"":             {api.ModeNetwork, "bridge"},
		"none":         {api.ModeNone, "none"},
		"host":         {api.ModeHost, "host"},
		"container:db": {api.ModeContainer, "db"},
		"new_bridge":   {api.ModeNetwork, "new_bridge"},
	} {
		mode, name, err := api.ParseNetworkMode(in)
		if err != nil || mode != want[0] || name != want[1] {
			t.Errorf("ParseNetworkMode(%q) = %q, %q, %v; want %q", in, mode, name, err, want)
		}
	}
	for _, bad := range []string{"container:", "container:../x", "a/b"} {
		if _, _, err := api.ParseNetworkMode(bad); !errors.Is(err, errclass.ErrInvalidParameter) {
			t.Errorf("ParseNetworkMode(%q) = %v, want invalid parameter", bad, err)
		}
	}
}

func TestSandboxCreateSpec(t *testing.T) {
	ports, err := api.ParsePortSpec("8080:80")
	if err != nil {
		t.Fatal(err)
	}
	s, err := api.SandboxCreate{Name: "web", Ports: ports, DNS: []string{"10.0.0.53"}, ExtraHosts: []string{"db:10.0.0.2", "v6:[::1]"}}.Spec()
	if err != nil {
		t.Fatal(err)
	}
	if s.Mode != api.ModeNetwork || s.Target != "bridge" || len(s.DNS) != 1 || len(s.ExtraHosts) != 2 || s.ExtraHosts[1].Addr != netip.IPv6Loopback() {
		t.Errorf("Spec = %+v", s)
	}
	for _, bad := range []api.SandboxCreate{
		{Name: "../x"},
		{Name: "web", Network: "none", Ports: ports},
		{Name: "web", Network: "container:web"},
		{Name: "web", DNS: []string{"x"}},
		{Name: "web", ExtraHosts: []string{"nocolon"}},
		{Name: "web", Ports: []api.PortBinding{{ContainerPort: 0}}},
		{Name: "web", Network: "host", Netns: "/run/netns/web"},
		{Name: "web", Network: "container:db", Netns: "/run/netns/web"},
		{Name: "web", Network: "none", IfName: "eth1"},
	} {
		if _, err := bad.Spec(); !errors.Is(err, errclass.ErrInvalidParameter) {
			t.Errorf("Spec(%+v) = %v, want invalid parameter", bad, err)
		}
	}
}

func TestParseHost(t *testing.T) {
	for _, good := range []string{"unix:///run/cnm/cnm.sock", "tcp://127.0.0.1:2376", "tcp://node1:2376", "tcp://[::1]:2376"} {
		if _, _, err := api.ParseHost(good); err != nil {
			t.Errorf("ParseHost(%q) = %v", good, err)
		}
	}
	for _, bad := range []string{"", "/run/cnm.sock", "unix://relative", "http://x:1", "tcp://nohost", "tcp://:1"} {
		if _, _, err := api.ParseHost(bad); !errors.Is(err, errclass.ErrInvalidParameter) {
			t.Errorf("ParseHost(%q) = %v, want invalid parameter", bad, err)
		}
	}
}

func TestParseExpose(t *testing.T) {
	b, err := api.ParseExpose("8000-8002/udp")
	if err != nil {
		t.Fatal(err)
	}
	if b.Proto != "udp" || b.ContainerPort != 8000 || b.ContainerPortEnd != 8002 || b.HostPort != 0 {
		t.Errorf("ParseExpose = %+v", b)
	}
	if _, err := api.ParseExpose("80:80"); !errors.Is(err, errclass.ErrInvalidParameter) {
		t.Errorf("ParseExpose(80:80) = %v, want invalid parameter", err)
	}
}
