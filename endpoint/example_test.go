package endpoint_test

import (
	"context"
	"fmt"
	"log"
	"net/netip"

	"github.com/cnmkit/cnm"
	"github.com/cnmkit/cnm/endpoint"
	"github.com/cnmkit/cnm/network"
)

// This example creates an endpoint with a static address on a network, joins it to a sandbox,
// then leaves and deletes it, as `docker network connect --ip` and `disconnect` do in two steps
// each. It needs root and changes the host's network, so it is compiled but not run.
func Example() {
	ctx := context.Background()
	c, err := cnm.New(ctx, cnm.Config{DataDir: "/var/lib/cnm-example", RunDir: "/run/cnm-example"})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	nw, err := c.NewNetwork(ctx, "frontend", "bridge", network.WithSubnet(netip.MustParsePrefix("10.20.0.0/24")))
	if err != nil {
		log.Fatal(err)
	}
	sb, err := c.NewSandbox(ctx, "web")
	if err != nil {
		log.Fatal(err)
	}

	ep, err := nw.CreateEndpoint(ctx, "web", endpoint.WithIPv4(netip.MustParseAddr("10.20.0.10")))
	if err != nil {
		log.Fatal(err) // an address outside 10.20.0.0/24 or taken already is refused here
	}
	if err := ep.Join(ctx, sb); err != nil {
		log.Fatal(err)
	}
	info := ep.Info()
	fmt.Println(info.SandboxID, info.IfName, info.IPv4, info.MAC) // web eth0 10.20.0.10/24 02:42:...

	if err := ep.Leave(ctx, sb); err != nil { // the interface goes; the address is kept
		log.Fatal(err)
	}
	if err := ep.Delete(ctx); err != nil { // the address is released
		log.Fatal(err)
	}
	if err := c.DeleteSandbox(ctx, "web"); err != nil {
		log.Fatal(err)
	}
	if err := c.DeleteNetwork(ctx, "frontend"); err != nil {
		log.Fatal(err)
	}
}
