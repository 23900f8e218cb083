package cnm_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net/netip"

	"github.com/cnmkit/cnm"
	"github.com/cnmkit/cnm/events"
	"github.com/cnmkit/cnm/network"
)

// This example gives a container a network, as `docker network create` and `docker run --net`
// do: it creates a bridge network with a subnet, a sandbox (the container's network namespace),
// connects the two, prints the network in the shape of `docker network inspect`, and removes
// everything again. It needs root and changes the host's network, so it is compiled but not run.
func Example() {
	ctx := context.Background()
	c, err := cnm.New(ctx, cnm.Config{DataDir: "/var/lib/cnm-example", RunDir: "/run/cnm-example"})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	nw, err := c.NewNetwork(ctx, "backend", "bridge",
		network.WithSubnet(netip.MustParsePrefix("10.10.0.0/24")))
	if err != nil {
		log.Fatal(err)
	}
	db, err := c.NewSandbox(ctx, "db", cnm.WithHostname("db"))
	if err != nil {
		log.Fatal(err)
	}
	ep, err := c.Connect(ctx, "backend", db.ID()) // create an endpoint and join it: eth0 in db
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(ep.Info().IfName, ep.Info().IPv4, "via", ep.Info().Gateway) // eth0 10.10.0.2/24 via 10.10.0.1

	for id, ct := range nw.Inspect().Containers {
		fmt.Println(id, ct.Name, ct.IPv4Address, ct.MacAddress)
	}

	// Cleanup. Deleting the sandbox also leaves and deletes its endpoints; a network that still
	// has endpoints is refused with an error matching cnm.ErrConflict.
	if err := c.DeleteSandbox(ctx, db.ID()); err != nil {
		log.Fatal(err)
	}
	if err := c.DeleteNetwork(ctx, "backend"); err != nil {
		log.Fatal(err)
	}
}

// This example follows the Controller's state as a DNS server or an agent's /events would:
// it reads the state once, then applies each event, and reads the state again when it fell
// behind and lost events. It needs root, so it is compiled but not run.
func ExampleController_Events() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c, err := cnm.New(ctx, cnm.Config{DataDir: "/var/lib/cnm-example", RunDir: "/run/cnm-example"})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	evs := c.Events(ctx)         // subscribe first, then read the state: nothing falls in between
	names := map[string]string{} // sandbox ID -> its address on "backend"
	load := func() {
		clear(names)
		if nw, err := c.Network("backend"); err == nil {
			for _, ep := range nw.Endpoints() {
				if info := ep.Info(); info.SandboxID != "" {
					names[info.SandboxID] = info.IPv4.Addr().String()
				}
			}
		}
	}
	load()
	for ev := range evs { // closed when ctx ends or c closes
		switch ev.Kind {
		case events.EndpointJoined:
			if ev.Network == "backend" {
				names[ev.SandboxID] = ev.IPv4.Addr().String()
			}
		case events.EndpointLeft:
			if ev.Network == "backend" {
				delete(names, ev.SandboxID)
			}
		case events.Dropped:
			log.Printf("fell behind: %d events lost; reading the state again", ev.Dropped)
			load()
		}
		fmt.Println(ev.Seq, ev.Kind, names)
	}
}

// This example shows how a caller branches on an error, whichever layer produced it: errors.Is
// with an error class such as cnm.ErrInvalidParameter, and errors.As with the typed error to
// find the field that was refused. The error comes from network.Apply, which validates the
// options that Controller.NewNetwork takes, so it needs no root.
func ExampleInvalidParameterError() {
	_, err := network.Apply(network.WithSubnet(netip.MustParsePrefix("10.10.0.1/24")))
	err = fmt.Errorf("create network backend: %w", err) // wrapped, as callers do

	fmt.Println(errors.Is(err, cnm.ErrInvalidParameter))
	fmt.Println(errors.Is(err, cnm.ErrNotFound))
	var invalid *cnm.InvalidParameterError
	if errors.As(err, &invalid) {
		fmt.Printf("field %s, value %s: %s\n", invalid.Field, invalid.Value, invalid.Reason)
	}
	fmt.Println(err)
	// Output:
	// true
	// false
	// field subnet, value 10.10.0.1/24: host bits set (did you mean 10.10.0.0/24?)
	// create network backend: invalid subnet "10.10.0.1/24": host bits set (did you mean 10.10.0.0/24?)
}
