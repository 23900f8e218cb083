package cnm_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"testing"

	"github.com/cnmkit/cnm"
	"github.com/cnmkit/cnm/api"
	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/drivers/driverstest"
	"github.com/cnmkit/cnm/endpoint"
	"github.com/cnmkit/cnm/internal/nstest"
	"github.com/cnmkit/cnm/network"
	"github.com/cnmkit/cnm/sandbox/sandboxtest"
	"github.com/google/go-cmp/cmp"
)

// TestInspectSandbox: a sandbox on two networks shows each in NetworkSettings.Networks with
// its address, prefix length, gateway, MAC, IDs and aliases, and its published ports in
// NetworkSettings.Ports; templates' field names are Docker's.
func TestInspectSandbox(t *testing.T) {
	l := &fakeLab{m: sandboxtest.NewMachine(), bridge: driverstest.NewFake(drivers.Capabilities{}), dataDir: t.TempDir(), runDir: t.TempDir()}
	ports := portsFake{driverstest.NewFake(drivers.Capabilities{Ports: true})}
	c := l.open(t, func(cfg *cnm.Config) { cfg.Drivers["pub"] = ports })
	ctx := t.Context()
	nw, err := c.NewNetwork(ctx, "front", "pub", network.WithSubnet(netip.MustParsePrefix("10.20.0.0/24")))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.NewSandbox(ctx, "web", cnm.WithHostname("webhost")); err != nil {
		t.Fatal(err)
	}
	spec, err := endpoint.ParsePortSpec("127.0.0.1:8080:80")
	if err != nil {
		t.Fatal(err)
	}
	ep, err := c.Connect(ctx, "front", "web", endpoint.WithPorts(spec...), endpoint.WithAliases("www"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Connect(ctx, cnm.DefaultNetwork, "web"); err != nil {
		t.Fatal(err)
	}
	in, err := c.InspectSandbox("web")
	if err != nil {
		t.Fatal(err)
	}
	info := ep.Info()
	want := api.EndpointSettings{
		Aliases: []string{"www"}, NetworkID: nw.ID(), EndpointID: ep.ID(), Gateway: "10.20.0.1",
		IPAddress: info.IPv4.Addr().String(), IPPrefixLen: 24, MacAddress: info.MAC.String(), IfName: info.IfName,
	}
	if diff := cmp.Diff(want, in.NetworkSettings.Networks["front"]); diff != "" {
		t.Errorf("Networks[front] (-want +got):\n%s", diff)
	}
	if _, ok := in.NetworkSettings.Networks[cnm.DefaultNetwork]; !ok || len(in.NetworkSettings.Networks) != 2 {
		t.Errorf("Networks = %v, want front and bridge", in.NetworkSettings.Networks)
	}
	if diff := cmp.Diff(map[string][]api.PortMap{"80/tcp": {{HostIP: "127.0.0.1", HostPort: "8080"}}}, in.NetworkSettings.Ports); diff != "" {
		t.Errorf("Ports (-want +got):\n%s", diff)
	}
	if in.Hostname != "webhost" || in.Mode != "namespace" || in.NetworkSettings.SandboxKey == "" {
		t.Errorf("inspect = %+v: want hostname webhost, mode namespace, a SandboxKey", in)
	}
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	var generic map[string]any
	if err := json.Unmarshal(b, &generic); err != nil {
		t.Fatal(err)
	}
	ns := generic["NetworkSettings"].(map[string]any)["Networks"].(map[string]any)["front"].(map[string]any)
	for _, k := range []string{"IPAddress", "IPPrefixLen", "Gateway", "MacAddress", "EndpointID", "NetworkID", "Aliases"} {
		if _, ok := ns[k]; !ok {
			t.Errorf("JSON of NetworkSettings.Networks.front has no %s: %s", k, b)
		}
	}

	if _, err := c.InspectSandbox("nosuch"); !errors.Is(err, cnm.ErrNotFound) {
		t.Errorf("InspectSandbox(nosuch) = %v, want ErrNotFound", err)
	}
	if _, err := c.NewSandbox(ctx, "side", cnm.ContainerMode("web")); err != nil {
		t.Fatal(err)
	}
	side, err := c.InspectSandbox("side")
	if err != nil {
		t.Fatal(err)
	}
	if side.Mode != "container" || side.Share != "web" || len(side.NetworkSettings.Networks) != 0 {
		t.Errorf("container-mode inspect = %+v, want mode container sharing web, no networks", side)
	}
}

// portsFake is the fake driver that binds published ports as asked (no kernel work).
type portsFake struct{ *driverstest.Fake }

func (f portsFake) CreateEndpoint(ctx context.Context, req drivers.CreateEndpointRequest) (drivers.CreateEndpointResult, error) {
	res, err := f.Fake.CreateEndpoint(ctx, req)
	res.Ports = req.Ports
	return res, err
}

// TestInspectNetworkOptions: a network lists the driver options it was given; a replaced
// bridge driver's default network gets no Docker defaults added.
func TestInspectNetworkOptions(t *testing.T) {
	m := sandboxtest.NewMachine()
	c, err := cnm.New(t.Context(), cnm.Config{DataDir: t.TempDir(), RunDir: t.TempDir(), Machine: m,
		Drivers: map[string]drivers.Driver{"bridge": driverstest.NewFake(drivers.Capabilities{})}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	in, err := c.InspectNetwork(cnm.DefaultNetwork)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := in.Options[cnm.LabelDefaultBridge]; ok {
		t.Errorf("Options = %v: a replaced bridge driver's network has no Docker bridge defaults", in.Options)
	}
	if _, err := c.InspectNetwork("nosuch"); !errors.Is(err, cnm.ErrNotFound) {
		t.Errorf("InspectNetwork(nosuch) = %v, want ErrNotFound", err)
	}
	if got := len(c.InspectNetworks()); got != 3 {
		t.Errorf("InspectNetworks: %d networks, want 3 (bridge, host, none)", got)
	}
}

// TestPrivilegedInspectDefaultBridge: the default bridge network's Options list every bridge
// setting as Docker's does; a user network lists only what it was given.
func TestPrivilegedInspectDefaultBridge(t *testing.T) {
	nstest.Privileged(t)
	l := newLab(t)
	in, err := l.c.InspectNetwork(cnm.DefaultNetwork)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"com.docker.network.bridge.default_bridge":       "true",
		"com.docker.network.bridge.enable_icc":           "true",
		"com.docker.network.bridge.enable_ip_masquerade": "true",
		"com.docker.network.bridge.host_binding_ipv4":    "0.0.0.0",
		"com.docker.network.bridge.name":                 cnm.DefaultBridge,
		"com.docker.network.driver.mtu":                  "1500",
	}
	if diff := cmp.Diff(want, in.Options); diff != "" {
		t.Errorf("default bridge Options (-want +got):\n%s", diff)
	}
	mustNetwork(t, l.c, "quiet", network.WithDriverLabels(map[string]string{"com.docker.network.bridge.enable_icc": "false"}))
	q, err := l.c.InspectNetwork("quiet")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[string]string{"com.docker.network.bridge.enable_icc": "false"}, q.Options); diff != "" {
		t.Errorf("user network Options (-want +got):\n%s", diff)
	}
}
