package drivers_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"sync"

	"github.com/cnmkit/cnm"
	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/drivers/host"
	"github.com/cnmkit/cnm/drivers/null"
)

// ledger is a third-party driver: it keeps its networks and endpoints in memory and gives its
// endpoints no interface, so it needs no privileges. A real driver does the same seven things
// to the kernel. It is safe for concurrent use, and every mutation converges.
type ledger struct {
	mu        sync.Mutex // guards following
	networks  map[drivers.NetworkID]string
	endpoints map[drivers.EndpointID]drivers.NetworkID
}

var _ drivers.Driver = (*ledger)(nil)

func newLedger() *ledger {
	return &ledger{networks: make(map[drivers.NetworkID]string), endpoints: make(map[drivers.EndpointID]drivers.NetworkID)}
}

func (d *ledger) Capabilities() drivers.Capabilities {
	return drivers.Capabilities{DataScope: drivers.GlobalScope, Sandbox: drivers.NamespaceSandbox}
}

func (d *ledger) CreateNetwork(ctx context.Context, req drivers.CreateNetworkRequest) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.networks[req.NetworkID] = req.Name
	return nil
}

func (d *ledger) DeleteNetwork(ctx context.Context, req drivers.DeleteNetworkRequest) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.networks, req.NetworkID)
	return nil
}

func (d *ledger) CreateEndpoint(ctx context.Context, req drivers.CreateEndpointRequest) (drivers.CreateEndpointResult, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.networks[req.NetworkID]; !ok {
		return drivers.CreateEndpointResult{}, fmt.Errorf("ledger: create endpoint %s: network %s: %w",
			req.EndpointID.Short(), req.NetworkID.Short(), cnm.ErrNotFound)
	}
	d.endpoints[req.EndpointID] = req.NetworkID
	return drivers.CreateEndpointResult{}, nil
}

func (d *ledger) DeleteEndpoint(ctx context.Context, req drivers.DeleteEndpointRequest) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.endpoints, req.EndpointID)
	return nil
}

func (d *ledger) Join(ctx context.Context, req drivers.JoinRequest) (drivers.JoinResult, error) {
	return drivers.JoinResult{NoInterface: true}, nil
}

func (d *ledger) Leave(ctx context.Context, req drivers.LeaveRequest) error { return nil }

// This example registers a third-party driver next to two built-in ones. The Registry treats
// them all alike: it reads each driver's capabilities once, filling in defaults, and discovers
// optional interfaces with a type assertion. A Controller registers drivers the same way, from
// cnm.Config.Drivers or Controller.RegisterDriver.
func ExampleRegistry() {
	var reg drivers.Registry
	for name, d := range map[string]drivers.Driver{"ledger": newLedger(), "host": host.New(), "null": null.New()} {
		if err := reg.Register(name, d); err != nil {
			log.Fatal(err)
		}
	}
	fmt.Println(reg.Names())
	for _, name := range reg.Names() {
		e, err := reg.Get(name)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("%s: data scope %v, connectivity scope %v, no IPAM %t, takes options %t\n",
			e.Name, e.Caps.DataScope, e.Caps.ConnectivityScope, e.Caps.NoIPAM, e.Parser != nil)
	}

	// Names are unique, and errors match the Controller's error classes.
	err := reg.Register("ledger", newLedger())
	fmt.Println(err, errors.Is(err, cnm.ErrAlreadyExists))

	// The Controller then calls the driver with request structs.
	ctx := context.Background()
	e, _ := reg.Get("ledger")
	nid := drivers.NetworkID("1a2b3c4d5e6f1a2b3c4d5e6f1a2b3c4d5e6f1a2b3c4d5e6f1a2b3c4d5e6f1a2b")
	eid := drivers.EndpointID("9f8e7d6c5b4a9f8e7d6c5b4a9f8e7d6c5b4a9f8e7d6c5b4a9f8e7d6c5b4a9f8e")
	_, err = e.Driver.CreateEndpoint(ctx, drivers.CreateEndpointRequest{NetworkID: nid, EndpointID: eid})
	fmt.Println(err, errors.Is(err, cnm.ErrNotFound))
	if err := e.Driver.CreateNetwork(ctx, drivers.CreateNetworkRequest{NetworkID: nid, Name: "ledger-net"}); err != nil {
		log.Fatal(err)
	}
	if _, err := e.Driver.CreateEndpoint(ctx, drivers.CreateEndpointRequest{NetworkID: nid, EndpointID: eid}); err != nil {
		log.Fatal(err)
	}
	res, err := e.Driver.Join(ctx, drivers.JoinRequest{NetworkID: nid, EndpointID: eid, IfName: "eth0"})
	fmt.Println("join: no interface to plumb:", res.NoInterface, err)
	// Output:
	// [host ledger null]
	// host: data scope local, connectivity scope local, no IPAM true, takes options false
	// ledger: data scope global, connectivity scope global, no IPAM false, takes options false
	// null: data scope local, connectivity scope local, no IPAM true, takes options false
	// driver "ledger" already exists true
	// ledger: create endpoint 9f8e7d6c5b4a: network 1a2b3c4d5e6f: not found true
	// join: no interface to plumb: true <nil>
}
