package endpoint_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"net/netip"
	"time"

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

// This example shows an endpoint's record as the store keeps it while the endpoint is joined,
// and the key it is kept under. The record is the endpoint's lease: IPAM and the sandboxes are
// rebuilt from it after a restart.
func ExampleRecord() {
	rec := endpoint.Record{
		ID:        "9f8e7d6c5b4a9f8e7d6c5b4a9f8e7d6c5b4a9f8e7d6c5b4a9f8e7d6c5b4a9f8e",
		Name:      "web",
		NetworkID: "1a2b3c4d5e6f1a2b3c4d5e6f1a2b3c4d5e6f1a2b3c4d5e6f1a2b3c4d5e6f1a2b",
		MAC:       "02:42:0a:14:00:0a",
		IPv4:      netip.MustParsePrefix("10.20.0.10/24"),
		Created:   time.Date(2025, 5, 1, 12, 0, 0, 0, time.UTC),
		SandboxID: "web",
		IfName:    "eth0",
		Gateway:   netip.MustParseAddr("10.20.0.1"),
		JoinSeq:   7,
	}
	fmt.Println(endpoint.Key(rec.NetworkID, rec.ID))
	b, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(string(b))
	// Output:
	// cnm/v1/endpoints/1a2b3c4d5e6f1a2b3c4d5e6f1a2b3c4d5e6f1a2b3c4d5e6f1a2b3c4d5e6f1a2b/9f8e7d6c5b4a9f8e7d6c5b4a9f8e7d6c5b4a9f8e7d6c5b4a9f8e7d6c5b4a9f8e
	// {
	//   "id": "9f8e7d6c5b4a9f8e7d6c5b4a9f8e7d6c5b4a9f8e7d6c5b4a9f8e7d6c5b4a9f8e",
	//   "name": "web",
	//   "network_id": "1a2b3c4d5e6f1a2b3c4d5e6f1a2b3c4d5e6f1a2b3c4d5e6f1a2b3c4d5e6f1a2b",
	//   "mac": "02:42:0a:14:00:0a",
	//   "ipv4": "10.20.0.10/24",
	//   "created": "2025-05-01T12:00:00Z",
	//   "sandbox_id": "web",
	//   "ifname": "eth0",
	//   "gateway": "10.20.0.1",
	//   "join_seq": 7
	// }
}
