package main

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/cnmkit/cnm/api"
	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/google/go-cmp/cmp"
)

// TestCreateFlags: each --gateway, --ip-range and --aux-address goes with the --subnet that
// holds it; one that no subnet holds is refused.
func TestCreateFlags(t *testing.T) {
	f := createFlags{
		subnets: []string{"172.28.0.0/16", "fd00:1::/64"}, gateways: []string{"fd00:1::1", "172.28.5.254"},
		ranges: []string{"172.28.5.0/24"}, aux: []string{"host1=172.28.1.5"}, opts: []string{"com.docker.network.driver.mtu=1400"},
		labels: []string{"env=test"}, ipv6: true,
	}
	got, err := f.request("n")
	if err != nil {
		t.Fatal(err)
	}
	want := api.NetworkCreate{Name: "n", EnableIPv6: true, Options: map[string]string{"com.docker.network.driver.mtu": "1400"},
		Labels: map[string]string{"env": "test"}, IPAM: &api.IPAM{Config: []api.IPAMConfig{
			{Subnet: "172.28.0.0/16", IPRange: "172.28.5.0/24", Gateway: "172.28.5.254", AuxiliaryAddresses: map[string]string{"host1": "172.28.1.5"}},
			{Subnet: "fd00:1::/64", Gateway: "fd00:1::1"},
		}}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("request (-want +got):\n%s", diff)
	}
	for _, bad := range []createFlags{
		{gateways: []string{"10.0.0.1"}},
		{subnets: []string{"10.0.0.0/24"}, gateways: []string{"10.1.0.1"}},
		{subnets: []string{"10.0.0.0/24"}, gateways: []string{"10.0.0.1", "10.0.0.2"}},
		{opts: []string{"novalue"}},
	} {
		if _, err := bad.request("n"); !errors.Is(err, errclass.ErrInvalidParameter) {
			t.Errorf("request(%+v) = %v, want invalid parameter", bad, err)
		}
	}
}

func TestNetworkFilter(t *testing.T) {
	n := api.NetworkInspect{Name: "new_bridge", ID: "abcdef", Driver: "bridge", Scope: "local", Labels: map[string]string{"env": "test"}}
	for _, tc := range []struct {
		filters []string
		want    bool
	}{
		{nil, true},
		{[]string{"driver=bridge"}, true},
		{[]string{"driver=macvlan", "driver=bridge"}, true},
		{[]string{"driver=bridge", "name=old"}, false},
		{[]string{"name=new"}, true},
		{[]string{"label=env"}, true},
		{[]string{"label=env=prod"}, false},
		{[]string{"id=abc"}, true},
		{[]string{"type=custom"}, true},
		{[]string{"type=builtin"}, false},
	} {
		f, err := parseNetworkFilters(tc.filters)
		if err != nil {
			t.Fatal(err)
		}
		if got := f.match(n); got != tc.want {
			t.Errorf("filters %v match = %v, want %v", tc.filters, got, tc.want)
		}
	}
	if _, err := parseNetworkFilters([]string{"color=red"}); err == nil {
		t.Error("an unknown filter key was accepted")
	}
}

// TestFormat: docker's template functions and the table header.
func TestFormat(t *testing.T) {
	in := api.SandboxInspect{Name: "web", NetworkSettings: api.NetworkSettings{Networks: map[string]api.EndpointSettings{
		"bridge": {IPAddress: "172.17.0.2", Aliases: []string{"a", "b"}},
	}}}
	for format, want := range map[string]string{
		"{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}":                    "172.17.0.2",
		`{{join (index .NetworkSettings.Networks "bridge").Aliases ","}}`:             "a,b",
		`{{json (index .NetworkSettings.Networks "bridge").Aliases}}`:                 `["a","b"]`,
		"{{upper .Name}} {{title .Name}} {{lower .Name}}":                             "WEB Web web",
		`{{range $k, $v := .NetworkSettings.Networks}}{{$k}}:{{$v.IPAddress}}{{end}}`: "bridge:172.17.0.2",
	} {
		tmpl, _, err := parseFormat(format)
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		if err := printFormatted(&b, tmpl, false, nil, []api.SandboxInspect{in}); err != nil {
			t.Fatal(err)
		}
		if got := strings.TrimSpace(b.String()); got != want {
			t.Errorf("%s = %q, want %q", format, got, want)
		}
	}
	tmpl, table, err := parseFormat(`table {{.Name}}\t{{.Driver}}`)
	if err != nil || !table {
		t.Fatal(table, err)
	}
	var b bytes.Buffer
	if err := printFormatted(&b, tmpl, table, networkHeader, []networkRow{{Name: "bridge", Driver: "bridge"}}); err != nil {
		t.Fatal(err)
	}
	if got := strings.Fields(b.String()); strings.Join(got, " ") != "NAME DRIVER bridge bridge" {
		t.Errorf("table = %q", b.String())
	}
}

// TestCommandLine: help everywhere, shell completion, and a tcp:// host without TLS refused
// before any connection.
func TestCommandLine(t *testing.T) {
	run := func(args ...string) (string, error) {
		cmd := root()
		var out bytes.Buffer
		cmd.SetOut(&out)
		cmd.SetErr(&out)
		cmd.SetArgs(args)
		err := cmd.Execute()
		return out.String(), err
	}
	for _, args := range [][]string{{"--help"}, {"network", "create", "--help"}, {"sandbox", "create", "--help"}, {"exec", "--help"}} {
		if out, err := run(args...); err != nil || !strings.Contains(out, "Usage:") {
			t.Errorf("%v: %v\n%s", args, err, out)
		}
	}
	if out, err := run("completion", "bash"); err != nil || !strings.Contains(out, "bash completion") {
		t.Errorf("completion bash: %v", err)
	}
	if _, err := run("--host", "tcp://127.0.0.1:1", "network", "ls"); err == nil || !strings.Contains(err.Error(), "mutual TLS") {
		t.Errorf("tcp:// without TLS: %v", err)
	}
	if _, err := run("sandbox", "create", "-p", "80/sctp", "x"); err == nil || !strings.Contains(err.Error(), "sctp") {
		t.Errorf("a bad -p: %v", err)
	}
}
