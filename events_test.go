package cnm_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/cnmkit/cnm"
	"github.com/cnmkit/cnm/endpoint"
	"github.com/cnmkit/cnm/events"
	"github.com/cnmkit/cnm/internal/nstest"
	"github.com/cnmkit/cnm/network"
)

// nextEvent returns the next event on ch, failing the test if none comes within 10s.
func nextEvent(t *testing.T, ch <-chan events.Event) events.Event {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatal("event channel closed, want an event")
		}
		return ev
	case <-time.After(10 * time.Second):
		t.Fatal("no event within 10s")
	}
	return events.Event{}
}

// evLine renders what a test checks of an event: its kind and the fields its kind sets.
func evLine(ev events.Event) string {
	parts := []string{ev.Kind.String()}
	add := func(name, v string) {
		if v != "" {
			parts = append(parts, name+"="+v)
		}
	}
	add("net", ev.Network)
	add("ep", ev.Endpoint)
	add("sb", ev.SandboxID)
	add("host", ev.Host)
	if ev.IPv4.IsValid() {
		add("ip", ev.IPv4.String())
	}
	if ev.Remote {
		add("remote", "true")
	}
	if ev.Kind == events.Repaired {
		add("repair", ev.Repair.Action+" "+ev.Repair.Object)
	}
	return strings.Join(parts, " ")
}

// TestPrivilegedEvents subscribes to a Controller and goes through the life of a network, its
// endpoints and two sandboxes, through the Controller and directly on the objects, with
// failed operations in between: it checks the exact sequence of events, their numbers and
// IDs, and that failures published nothing.
func TestPrivilegedEvents(t *testing.T) {
	nstest.Privileged(t)
	checkEvents(t, newLab(t).c)
}

// TestEvents is TestPrivilegedEvents on an in-memory machine, with a fake bridge driver.
func TestEvents(t *testing.T) {
	checkEvents(t, newFakeLab(t).c)
}

// checkEvents is the body of TestPrivilegedEvents and TestEvents, on a fresh Controller c
// whose "bridge" driver makes namespace-sandbox endpoints. It closes c.
func checkEvents(t *testing.T, c *cnm.Controller) {
	ctx := t.Context()
	ch := c.Events(ctx)
	subCtx, cancelSub := context.WithCancel(ctx)
	other := c.Events(subCtx)

	nw := mustNetwork(t, c, "evnet", network.WithSubnet(netip.MustParsePrefix("10.31.0.0/24")))
	sb := mustSandbox(t, c, "ev1")
	connected := mustConnect(t, c, "evnet", "ev1")
	connectedIP := connected.Info().IPv4
	if err := c.Disconnect(ctx, "evnet", "ev1"); err != nil {
		t.Fatal(err)
	}

	// Directly on the objects, as an orchestrator may.
	ep, err := nw.CreateEndpoint(ctx, "direct")
	if err != nil {
		t.Fatal(err)
	}
	directIP := ep.Info().IPv4
	if err := ep.Join(ctx, sb); err != nil {
		t.Fatal(err)
	}
	if err := ep.Join(ctx, sb); err != nil { // joined already: nil, and nothing new
		t.Fatal(err)
	}
	if err := ep.Leave(ctx, sb); err != nil {
		t.Fatal(err)
	}
	if err := ep.Leave(ctx, sb); err != nil { // not joined: nil, and nothing new
		t.Fatal(err)
	}
	if err := ep.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if err := ep.Delete(ctx); err != nil { // deleted already
		t.Fatal(err)
	}

	// Failed and rolled-back operations publish nothing.
	hostSB := mustSandbox(t, c, "evhost", cnm.HostMode())
	if _, err := c.Connect(ctx, "evnet", "evhost"); !errors.Is(err, cnm.ErrConflict) {
		t.Fatalf("Connect of a host-mode sandbox to a bridge network: %v, want ErrConflict (its join refused, its endpoint rolled back)", err)
	}
	if _, err := nw.CreateEndpoint(ctx, "bad", endpoint.WithIPv4(netip.MustParseAddr("10.32.0.5"))); !errors.Is(err, cnm.ErrInvalidParameter) {
		t.Fatalf("CreateEndpoint outside the subnet: %v, want ErrInvalidParameter", err)
	}
	if _, err := c.NewSandbox(ctx, "ev1"); !errors.Is(err, cnm.ErrAlreadyExists) {
		t.Fatalf("NewSandbox(ev1) again: %v, want ErrAlreadyExists", err)
	}
	if _, err := c.NewNetwork(ctx, "evnet", "bridge"); !errors.Is(err, cnm.ErrAlreadyExists) {
		t.Fatalf("NewNetwork(evnet) again: %v, want ErrAlreadyExists", err)
	}
	again := mustConnect(t, c, "evnet", "ev1")
	againIP := again.Info().IPv4
	if err := c.DeleteNetwork(ctx, "evnet"); !errors.Is(err, cnm.ErrConflict) {
		t.Fatalf("DeleteNetwork with an endpoint: %v, want ErrConflict", err)
	}
	if err := c.DeleteSandbox(ctx, hostSB.ID()); err != nil {
		t.Fatal(err)
	}
	// Deleting a sandbox leaves and deletes its endpoints first.
	if err := c.DeleteSandbox(ctx, "ev1"); err != nil {
		t.Fatal(err)
	}
	nwID := nw.ID()
	if err := c.DeleteNetwork(ctx, "evnet"); err != nil {
		t.Fatal(err)
	}
	mustSandbox(t, c, "end") // the last event: nothing came between

	want := []string{
		"network.created net=evnet",
		"sandbox.created sb=ev1",
		"endpoint.created net=evnet ep=ev1 ip=" + connectedIP.String(),
		"endpoint.joined net=evnet ep=ev1 sb=ev1 ip=" + connectedIP.String(),
		"endpoint.left net=evnet ep=ev1 sb=ev1 ip=" + connectedIP.String(),
		"endpoint.deleted net=evnet ep=ev1 ip=" + connectedIP.String(),
		"endpoint.created net=evnet ep=direct ip=" + directIP.String(),
		"endpoint.joined net=evnet ep=direct sb=ev1 ip=" + directIP.String(),
		"endpoint.left net=evnet ep=direct sb=ev1 ip=" + directIP.String(),
		"endpoint.deleted net=evnet ep=direct ip=" + directIP.String(),
		"sandbox.created sb=evhost",
		"endpoint.created net=evnet ep=ev1 ip=" + againIP.String(),
		"endpoint.joined net=evnet ep=ev1 sb=ev1 ip=" + againIP.String(),
		"sandbox.deleted sb=evhost",
		"endpoint.left net=evnet ep=ev1 sb=ev1 ip=" + againIP.String(),
		"endpoint.deleted net=evnet ep=ev1 ip=" + againIP.String(),
		"sandbox.deleted sb=ev1",
		"network.deleted net=evnet",
		"sandbox.created sb=end",
	}
	epIDs := map[string]string{} // endpoint name -> ID of the current one
	var first uint64
	for i, w := range want {
		ev := nextEvent(t, ch)
		if got := evLine(ev); got != w {
			t.Fatalf("event %d = %q, want %q", i, got, w)
		}
		if i == 0 {
			first = ev.Seq
		}
		if ev.Seq != first+uint64(i) || ev.Time.IsZero() {
			t.Errorf("event %d (%s): Seq %d, Time %v; want Seq %d and a time", i, ev.Kind, ev.Seq, ev.Time, first+uint64(i))
		}
		if ev.Network != "" && ev.NetworkID != nwID {
			t.Errorf("event %d (%s): NetworkID %s, want %s", i, ev.Kind, ev.NetworkID, nwID)
		}
		switch ev.Kind {
		case events.EndpointCreated:
			epIDs[ev.Endpoint] = ev.EndpointID
		case events.EndpointJoined, events.EndpointLeft, events.EndpointDeleted:
			if ev.EndpointID == "" || ev.EndpointID != epIDs[ev.Endpoint] {
				t.Errorf("event %d (%s): EndpointID %q, want %q as created", i, ev.Kind, ev.EndpointID, epIDs[ev.Endpoint])
			}
		}
	}
	if epIDs["direct"] != ep.ID() || epIDs["ev1"] != again.ID() {
		t.Errorf("endpoint IDs in the events = %v, want direct %s and ev1 %s", epIDs, ep.ID(), again.ID())
	}

	// Every subscriber gets the same events; ending its context closes its channel.
	for i, w := range want[:3] {
		if got := evLine(nextEvent(t, other)); got != w {
			t.Fatalf("second subscriber: event %d = %q, want %q", i, got, w)
		}
	}
	cancelSub()
	drained := 0
	for range other {
		drained++
	}
	if drained > len(want)-3 {
		t.Errorf("second subscriber: %d more events after its context ended, want at most %d", drained, len(want)-3)
	}

	// Close closes the channel; a subscription after Close is closed at once.
	if err := c.DeleteSandbox(ctx, "end"); err != nil {
		t.Fatal(err)
	}
	if got := evLine(nextEvent(t, ch)); got != "sandbox.deleted sb=end" {
		t.Fatalf("event after the last = %q", got)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if ev, ok := <-ch; ok {
		t.Fatalf("after Close: event %s, want the channel closed", evLine(ev))
	}
	if _, ok := <-c.Events(ctx); ok {
		t.Fatal("Events after Close: got an event, want a closed channel")
	}
}

// TestPrivilegedEventsBuffer checks Config.EventBuffer: a receiver that does not read loses
// the newest events and is told how many; one that reads loses none.
func TestPrivilegedEventsBuffer(t *testing.T) {
	nstest.Privileged(t)
	ctx := t.Context()
	l := &lab{host: nstest.NewNS(t), dataDir: t.TempDir(), runDir: t.TempDir()}
	if _, err := cnm.New(ctx, cnm.Config{DataDir: l.dataDir, RunDir: l.runDir, HostNetns: l.host.Path(), EventBuffer: -1}); !errors.Is(err, cnm.ErrInvalidParameter) {
		t.Fatalf("New with EventBuffer -1: %v, want ErrInvalidParameter", err)
	}
	c, err := cnm.New(ctx, cnm.Config{DataDir: l.dataDir, RunDir: l.runDir, HostNetns: l.host.Path(), NoPredefinedNetworks: true, EventBuffer: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	stuck := c.Events(ctx)
	const n = 8
	for i := range n {
		if _, err := c.NewNetwork(ctx, fmt.Sprint("nw", i), "null"); err != nil {
			t.Fatal(err)
		}
	}
	var got, lost uint64
	var last events.Event
	for got+lost < n {
		ev := nextEvent(t, stuck)
		if ev.Kind == events.Dropped {
			lost += ev.Dropped
		} else {
			got++
		}
		last = ev
	}
	// At most the buffer and the event being handed over were kept; the Dropped event came
	// last and carries the number of the last network's event.
	if got > 3 || last.Kind != events.Dropped || last.Seq != n {
		t.Fatalf("a receiver with EventBuffer 2 that read nothing: %d received, %d lost, last %s Seq %d; want at most 3 received and the loss reported last with Seq %d", got, lost, last.Kind, last.Seq, n)
	}
	if err := c.DeleteNetwork(ctx, "nw0"); err != nil {
		t.Fatal(err)
	}
	if ev := nextEvent(t, stuck); ev.Kind != events.NetworkDeleted || ev.Network != "nw0" || ev.Seq != n+1 {
		t.Fatalf("after the loss: %s Seq %d, want network.deleted nw0 Seq %d", evLine(ev), ev.Seq, n+1)
	}
}
