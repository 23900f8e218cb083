package remote_test

import (
	"context"
	"errors"
	"fmt"
	"log"

	"github.com/cnmkit/cnm"
	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/drivers/remote"
	"github.com/cnmkit/cnm/network"
)

// Use a Docker network plugin and IPAM plugin with a Controller, as Docker would.
func ExampleOpen() {
	ctx := context.Background()
	c, err := cnm.New(ctx, cnm.Config{DataDir: "/var/lib/cnm"})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	d, err := remote.Open(ctx, remote.Config{Name: "weave"}) // /run/docker/plugins/weave.sock, or a spec file
	if err != nil {
		log.Fatal(err)
	}
	if err := c.RegisterDriver(ctx, "weave", d); err != nil {
		log.Fatal(err)
	}
	a, err := remote.OpenIPAM(ctx, remote.Config{Name: "myipam"})
	if err != nil {
		log.Fatal(err)
	}
	if err := c.RegisterIPAMDriver(ctx, "myipam", a); err != nil {
		log.Fatal(err)
	}
	if _, err := c.NewNetwork(ctx, "w", "weave", network.WithIPAMDriver("myipam")); err != nil {
		log.Fatal(err)
	}
}

// A plugin's error message picks the cnm error class callers match.
func ExamplePluginError() {
	err := fmt.Errorf("create network: %w", &remote.PluginError{Plugin: "weave", Method: "NetworkDriver.CreateNetwork", Status: 500, Msg: "invalid option mtu"})
	fmt.Println(err)
	fmt.Println(errors.Is(err, drivers.ErrInvalidParameter))
	// Output:
	// create network: docker plugin weave: NetworkDriver.CreateNetwork: invalid option mtu
	// true
}
