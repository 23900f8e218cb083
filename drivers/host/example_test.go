package host_test

import (
	"context"
	"fmt"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/drivers/host"
)

func Example() {
	ctx := context.Background()
	d := host.New()
	nid := drivers.NetworkID("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
	if err := d.CreateNetwork(ctx, drivers.CreateNetworkRequest{NetworkID: nid, Name: "host"}); err != nil {
		fmt.Println(err)
		return
	}
	res, err := d.Join(ctx, drivers.JoinRequest{NetworkID: nid, EndpointID: "89abcdef0123"})
	fmt.Println(res.NoInterface, err)
	// Output: true <nil>
}
