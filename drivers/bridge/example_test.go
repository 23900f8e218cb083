package bridge_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net/netip"
	"os"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/drivers/bridge"
)

// This example makes a network and joins an endpoint to a sandbox whose namespace is
// bind-mounted at /run/netns/c1 (made with "ip netns add c1"). It needs CAP_NET_ADMIN and adds
// links to the namespace it runs in, so it is only compiled.
func Example() {
	ctx := context.Background()
	d, err := bridge.New(bridge.Config{}) // the bridges live in this process's namespace
	if err != nil {
		log.Fatal(err)
	}
	defer d.Close()

	nid := drivers.NetworkID("1a2b3c4d5e6f1a2b3c4d5e6f1a2b3c4d5e6f1a2b3c4d5e6f1a2b3c4d5e6f1a2b")
	opts, err := bridge.ParseNetworkOptions(map[string]string{bridge.LabelMTU: "1450"})
	if err != nil {
		log.Fatal(err)
	}
	err = d.CreateNetwork(ctx, drivers.CreateNetworkRequest{
		NetworkID: nid,
		Name:      "backend",
		Options:   opts,
		IPv4: []drivers.IPAMData{{
			Subnet:  netip.MustParsePrefix("10.50.0.0/24"),
			Gateway: netip.MustParseAddr("10.50.0.1"),
		}},
	}) // makes br-1a2b3c4d5e6f, alias cnm:1a2b..., address 10.50.0.1/24, MTU 1450
	if err != nil {
		log.Fatal(err)
	}

	eid := drivers.EndpointID("9f8e7d6c5b4a9f8e7d6c5b4a9f8e7d6c5b4a9f8e7d6c5b4a9f8e7d6c5b4a9f8e")
	addr := netip.MustParsePrefix("10.50.0.2/24")
	ep, err := d.CreateEndpoint(ctx, drivers.CreateEndpointRequest{NetworkID: nid, EndpointID: eid, IPv4: addr})
	if err != nil {
		log.Fatal(err)
	}

	sandbox, err := os.Open("/run/netns/c1")
	if err != nil {
		log.Fatal(err)
	}
	defer sandbox.Close()
	res, err := d.Join(ctx, drivers.JoinRequest{
		NetworkID:  nid,
		EndpointID: eid,
		SandboxKey: sandbox.Name(),
		NetnsFD:    int(sandbox.Fd()),
		IfName:     "eth0",
		MAC:        ep.MAC, // 02:42:0a:32:00:02
		IPv4:       addr,
	}) // makes veth9f8e7d6c5b4 on the bridge, and eth0 in c1
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("default gateway:", res.Gateway)
	// The sandbox now adds 10.50.0.2/24 to eth0, sets it up and routes through res.Gateway.

	if err := d.Leave(ctx, drivers.LeaveRequest{NetworkID: nid, EndpointID: eid, SandboxKey: sandbox.Name(), IfName: "eth0"}); err != nil {
		log.Fatal(err)
	}
	if err := d.DeleteNetwork(ctx, drivers.DeleteNetworkRequest{NetworkID: nid}); err != nil {
		log.Fatal(err)
	}
}

func ExampleParseNetworkOptions() {
	opts, err := bridge.ParseNetworkOptions(map[string]string{
		"com.docker.network.bridge.name":              "docker1",
		"com.docker.network.driver.mtu":               "9000",
		"com.docker.network.bridge.enable_icc":        "false",
		"com.docker.network.bridge.gateway_mode_ipv4": "routed",
	})
	fmt.Println(opts.BridgeName, opts.MTU, opts.DisableICC, opts.GatewayModeIPv4, err)

	_, err = bridge.ParseNetworkOptions(map[string]string{"com.docker.network.driver.mtu": "64"})
	fmt.Println(err)

	_, err = bridge.ParseNetworkOptions(map[string]string{"com.docker.network.bridge.enable_icc": "no"})
	fmt.Println(err)

	_, err = bridge.ParseNetworkOptions(map[string]string{"com.docker.network.bridge.enable_ipv9": "true"})
	fmt.Println(err)
	// Output:
	// docker1 9000 true routed <nil>
	// invalid com.docker.network.driver.mtu "64": want 68 to 65535
	// invalid com.docker.network.bridge.enable_icc "no": not a boolean
	// invalid com.docker.network.bridge.enable_ipv9 "true": unknown bridge network option
}

// This example publishes a port and tells a port a host service holds (refused, with the port
// named) from one another endpoint publishes; it also shows what New found of iptables. It
// needs CAP_NET_ADMIN and a network made as in the package example, so it is only compiled.
func ExamplePortInUseError() {
	ctx := context.Background()
	d, err := bridge.New(bridge.Config{})
	if err != nil {
		log.Fatal(err)
	}
	defer d.Close()
	ipt := d.IPTables()
	fmt.Println("iptables", ipt.Version, ipt.Mode, "random-fully:", ipt.RandomFully)
	if ipt.OtherBackend != nil {
		fmt.Println("warning:", ipt.OtherBackend) // a *bridge.BackendConflictError
	}

	_, err = d.CreateEndpoint(ctx, drivers.CreateEndpointRequest{
		NetworkID:  drivers.NetworkID("1a2b3c4d5e6f1a2b3c4d5e6f1a2b3c4d5e6f1a2b3c4d5e6f1a2b3c4d5e6f1a2b"),
		EndpointID: drivers.EndpointID("0123456789ab0123456789ab0123456789ab0123456789ab0123456789ab0123"),
		IPv4:       netip.MustParsePrefix("10.50.0.3/24"),
		Ports:      []drivers.PortBinding{{Proto: "tcp", HostPort: 8080, ContainerPort: 80}},
	})
	var inUse *bridge.PortInUseError
	switch {
	case errors.As(err, &inUse):
		fmt.Printf("port %d is used by a host service: %v\n", inUse.Port, err)
	case errors.Is(err, drivers.ErrConflict):
		fmt.Println("another endpoint publishes it:", err)
	case err != nil:
		log.Fatal(err)
	}
}
