package events_test

import (
	"context"
	"fmt"

	"github.com/cnmkit/cnm/events"
)

// This example subscribes to a Bus, publishes what a Controller publishes when a container is
// connected to a network, and reads it back in sequence. A subscriber that falls more than its
// buffer behind receives a Dropped event instead of the events it lost, and reads the state
// again.
func Example() {
	var bus events.Bus
	defer bus.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := bus.Subscribe(ctx, 16)

	bus.Publish(events.Event{Kind: events.SandboxCreated, SandboxID: "db"})
	bus.Publish(events.Event{Kind: events.EndpointCreated, Network: "backend", Endpoint: "db"})
	bus.Publish(events.Event{Kind: events.EndpointJoined, Network: "backend", Endpoint: "db", SandboxID: "db"})

	for range 3 {
		ev := <-ch
		switch ev.Kind {
		case events.Dropped:
			fmt.Println(ev.Dropped, "events lost: read the state again")
		case events.SandboxCreated:
			fmt.Println(ev.Seq, ev.Kind, ev.SandboxID)
		case events.EndpointJoined:
			fmt.Println(ev.Seq, ev.Kind, ev.Network, ev.Endpoint, "to", ev.SandboxID)
		default:
			fmt.Println(ev.Seq, ev.Kind, ev.Network, ev.Endpoint)
		}
	}
	// Output:
	// 1 sandbox.created db
	// 2 endpoint.created backend db
	// 3 endpoint.joined backend db to db
}
