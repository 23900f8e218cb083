package cnm_test

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/cnmkit/cnm"
	"github.com/cnmkit/cnm/endpoint"
	"github.com/cnmkit/cnm/internal/epobj"
	"github.com/cnmkit/cnm/kvstore"
	"github.com/cnmkit/cnm/network"
)

// TestDeleteSandboxDriverFails: DeleteSandbox deletes the records while the drivers forget the
// endpoints; when a driver fails, the endpoint's record is written back and the endpoint stays,
// and a second DeleteSandbox, the driver working again, removes it and frees its address.
func TestDeleteSandboxDriverFails(t *testing.T) {
	ctx := t.Context()
	l := newFakeLab(t)
	c := l.c
	n := mustNetwork(t, c, "n1", network.WithSubnet(netip.MustParsePrefix("10.24.0.0/24")))
	mustSandbox(t, c, "box")
	ep := mustConnect(t, c, "n1", "box")
	addr := ep.Info().IPv4.Addr()
	key := epobj.Key(n.ID(), ep.ID())
	st := cnm.RunStoreForTest(c) // Connect's endpoint for a sandbox's namespace

	boom := errors.New("boom")
	l.bridge.FailOn("DeleteEndpoint", boom)
	if err := c.DeleteSandbox(ctx, "box"); !errors.Is(err, boom) {
		t.Fatalf("DeleteSandbox with the driver failing = %v, want boom", err)
	}
	if _, err := st.Get(ctx, key); err != nil {
		t.Fatalf("record of endpoint box after the driver failed: %v, want it written back", err)
	}
	if _, err := n.Endpoint("box"); err != nil {
		t.Fatalf("endpoint box after the driver failed: %v, want it kept", err)
	}

	l.bridge.FailOn("DeleteEndpoint", nil)
	if err := c.DeleteSandbox(ctx, "box"); err != nil {
		t.Fatalf("DeleteSandbox again: %v", err)
	}
	if _, err := st.Get(ctx, key); !errors.Is(err, kvstore.ErrKeyNotFound) {
		t.Fatalf("record of endpoint box after the second DeleteSandbox: %v, want ErrKeyNotFound", err)
	}
	if _, err := n.Endpoint("box"); !errors.Is(err, cnm.ErrNotFound) {
		t.Fatalf("endpoint box after the second DeleteSandbox: %v, want ErrNotFound", err)
	}
	if _, err := c.Sandbox("box"); !errors.Is(err, cnm.ErrNotFound) {
		t.Fatalf("sandbox box after the second DeleteSandbox: %v, want ErrNotFound", err)
	}
	// The address is free again.
	mustSandbox(t, c, "next")
	if _, err := c.Connect(ctx, "n1", "next", endpoint.WithIPv4(addr)); err != nil {
		t.Fatalf("Connect asking for box's address %s: %v", addr, err)
	}
}
