package driverstest_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/drivers/driverstest"
)

// A test of the layers above a driver uses a Fake to see what they asked of it, and to make
// a step fail.
func ExampleFake() {
	ctx := context.Background()
	f := driverstest.NewFake(drivers.Capabilities{NoIPAM: true})
	nid := drivers.NetworkID("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
	eid := drivers.EndpointID("89abcdef0123456789abcdef0123456789abcdef0123456789abcdef01234567")

	_ = f.CreateNetwork(ctx, drivers.CreateNetworkRequest{NetworkID: nid, Name: "n1"})
	_, _ = f.CreateEndpoint(ctx, drivers.CreateEndpointRequest{NetworkID: nid, EndpointID: eid})
	f.FailOn("Join", errors.New("no more veths"))
	_, err := f.Join(ctx, drivers.JoinRequest{NetworkID: nid, EndpointID: eid, SandboxKey: "/run/netns/c1", IfName: "eth0"})
	fmt.Println("join:", err)
	for _, c := range f.Calls() {
		fmt.Println(c)
	}
	// Output:
	// join: no more veths
	// CreateNetwork net=0123456789ab name="n1" internal=false enable_ipv6=false
	// CreateEndpoint net=0123456789ab ep=89abcdef0123 mac=- ipv4=- ipv6=-
	// Join net=0123456789ab ep=89abcdef0123 sandbox=/run/netns/c1 if=eth0 mac=- ipv4=- ipv6=- -> no more veths
}
