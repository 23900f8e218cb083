package network_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net/netip"

	"github.com/cnmkit/cnm"
	"github.com/cnmkit/cnm/network"
)

// This example builds the Spec that Controller.NewNetwork would get from
// `docker network create --subnet 10.10.0.0/24 --gateway 10.10.0.254 --ip-range 10.10.0.128/25
// --aux-address router=10.10.0.2 --label env=dev`. Fields left zero are picked by IPAM.
func ExampleApply() {
	spec, err := network.Apply(
		network.WithSubnet(netip.MustParsePrefix("10.10.0.0/24")),
		network.WithGateway(netip.MustParseAddr("10.10.0.254")),
		network.WithIPRange(netip.MustParsePrefix("10.10.0.128/25")),
		network.WithAuxAddress("router", netip.MustParseAddr("10.10.0.2")),
		network.WithLabels(map[string]string{"env": "dev"}),
	)
	if err != nil {
		log.Fatal(err)
	}
	b, err := json.Marshal(spec.IPv4)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("ipv4:", string(b))
	fmt.Println("ipv6:", spec.EnableIPv6, spec.IPv6)
	fmt.Println("labels:", spec.Labels)
	// Output:
	// ipv4: [{"subnet":"10.10.0.0/24","ip_range":"10.10.0.128/25","gateway":"10.10.0.254","aux_addresses":{"router":"10.10.0.2"}}]
	// ipv6: false []
	// labels: map[env:dev]
}

// This example makes a dual-stack network: an IPv6 subnet enables IPv6, and each gateway goes
// to the last subnet of its own family.
func ExampleWithSubnet() {
	spec, err := network.Apply(
		network.WithSubnet(netip.MustParsePrefix("10.10.0.0/24")),
		network.WithSubnet(netip.MustParsePrefix("fd00:10::/64")),
		network.WithGateway(netip.MustParseAddr("fd00:10::1")),
		network.WithGateway(netip.MustParseAddr("10.10.0.1")),
	)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(spec.IPv4[0].Subnet, spec.IPv4[0].Gateway)
	fmt.Println(spec.IPv6[0].Subnet, spec.IPv6[0].Gateway, spec.EnableIPv6)
	// Output:
	// 10.10.0.0/24 10.10.0.1
	// fd00:10::/64 fd00:10::1 true
}

// This example shows that options never fail on their own: Apply validates the Spec once all
// are applied and returns the first problem as an error matching cnm.ErrInvalidParameter, whose
// *cnm.InvalidParameterError names the option.
func ExampleApply_invalid() {
	_, err := network.Apply(
		network.WithSubnet(netip.MustParsePrefix("10.10.0.0/24")),
		network.WithGateway(netip.MustParseAddr("10.20.0.1")),
	)
	fmt.Println(err)
	fmt.Println(errors.Is(err, cnm.ErrInvalidParameter))
	var invalid *cnm.InvalidParameterError
	if errors.As(err, &invalid) {
		fmt.Println("field:", invalid.Field)
	}

	_, err = network.Apply(network.WithSubnet(netip.MustParsePrefix("10.10.0.0/31")))
	fmt.Println(err)
	// Output:
	// invalid gateway "10.20.0.1": not inside subnet 10.10.0.0/24
	// true
	// field: gateway
	// invalid subnet "10.10.0.0/31": too small: an IPv4 subnet needs at least /30
}

// This example checks names the way the Controller does for networks, endpoints and sandboxes.
func ExampleValidateName() {
	for _, name := range []string{"new_bridge", "web.1", "-web", "web/1"} {
		fmt.Printf("%q: %v\n", name, network.ValidateName("network", name))
	}
	// Output:
	// "new_bridge": <nil>
	// "web.1": <nil>
	// "-web": invalid network name "-web": use letters, digits, '_', '.' and '-', starting with a letter or digit
	// "web/1": invalid network name "web/1": use letters, digits, '_', '.' and '-', starting with a letter or digit
}
