package client_test

import (
	"context"
	"errors"
	"fmt"
	"log"

	"github.com/cnmkit/cnm"
	"github.com/cnmkit/cnm/api"
	"github.com/cnmkit/cnm/api/client"
)

// Drive cnmd as cnmctl does: create a network and a sandbox on it, and read its address.
func Example() {
	ctx := context.Background()
	cl, err := client.New(client.Config{Host: "unix:///run/cnm/cnm.sock"})
	if err != nil {
		log.Fatal(err)
	}
	defer cl.Close()
	if _, err := cl.NetworkCreate(ctx, api.NetworkCreate{Name: "new_bridge", IPAM: &api.IPAM{Config: []api.IPAMConfig{{Subnet: "10.10.0.0/24"}}}}); err != nil {
		log.Fatal(err)
	}
	db, err := cl.SandboxCreate(ctx, api.SandboxCreate{Name: "db", Network: "new_bridge"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(db.NetworkSettings.Networks["new_bridge"].IPAddress)
	if err := cl.NetworkRemove(ctx, "new_bridge"); errors.Is(err, cnm.ErrConflict) {
		fmt.Println("in use:", err)
	}
}
