package driverstest_test

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/drivers/driverstest"
	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
)

var ipv4 = []drivers.IPAMData{{
	Subnet:  netip.MustParsePrefix("10.123.0.0/24"),
	Gateway: netip.MustParseAddr("10.123.0.1"),
}}

func TestFakeConformance(t *testing.T) {
	driverstest.Run(t, driverstest.Harness{
		New:     func(t *testing.T) drivers.Driver { return driverstest.NewFake(drivers.Capabilities{}) },
		IPv4:    ipv4,
		Sandbox: func(t *testing.T) (string, int) { return "/run/fake/sandbox", 100 },
	})
}

func TestFakeConformanceNoIPAM(t *testing.T) {
	driverstest.Run(t, driverstest.Harness{
		New: func(t *testing.T) drivers.Driver {
			return driverstest.NewFake(drivers.Capabilities{Sandbox: drivers.IsolatedSandbox, NoIPAM: true})
		},
	})
}

const (
	nid = drivers.NetworkID("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
	eid = drivers.EndpointID("89abcdef0123456789abcdef0123456789abcdef0123456789abcdef01234567")
)

func TestFakeCalls(t *testing.T) {
	ctx := t.Context()
	f := driverstest.NewFake(drivers.Capabilities{})
	addr := netip.MustParsePrefix("10.123.0.2/24")
	boom := errors.New("boom")

	if err := f.CreateNetwork(ctx, drivers.CreateNetworkRequest{NetworkID: nid, Name: "n1", IPv4: ipv4}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.CreateEndpoint(ctx, drivers.CreateEndpointRequest{NetworkID: nid, EndpointID: eid, IPv4: addr}); err != nil {
		t.Fatal(err)
	}
	f.FailOn("Join", boom)
	jreq := drivers.JoinRequest{NetworkID: nid, EndpointID: eid, SandboxKey: "/sb", IfName: "eth0", IPv4: addr}
	if _, err := f.Join(ctx, jreq); !errors.Is(err, boom) {
		t.Fatalf("Join with FailOn: %v, want boom", err)
	}
	f.FailOn("Join", nil)
	res, err := f.Join(ctx, jreq)
	if err != nil {
		t.Fatal(err)
	}
	if want := (drivers.JoinResult{InterfaceInSandbox: true, Gateway: ipv4[0].Gateway}); !cmp.Equal(res, want, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })) {
		t.Errorf("Join = %+v, want %+v", res, want)
	}
	if err := f.DeleteEndpoint(ctx, drivers.DeleteEndpointRequest{NetworkID: nid, EndpointID: eid}); !errors.Is(err, errclass.ErrConflict) {
		t.Errorf("DeleteEndpoint of a joined endpoint: %v, want a conflict", err)
	}
	if err := f.DeleteNetwork(ctx, drivers.DeleteNetworkRequest{NetworkID: nid}); !errors.Is(err, errclass.ErrConflict) {
		t.Errorf("DeleteNetwork with endpoints: %v, want a conflict", err)
	}
	if err := f.Leave(ctx, drivers.LeaveRequest{NetworkID: nid, EndpointID: eid, SandboxKey: "/sb", IfName: "eth0"}); err != nil {
		t.Fatal(err)
	}
	if err := f.CreateNetwork(ctx, drivers.CreateNetworkRequest{NetworkID: nid, Name: "other"}); !errors.Is(err, errclass.ErrConflict) {
		t.Errorf("CreateNetwork with another request: %v, want a conflict", err)
	}

	want := []string{
		"CreateNetwork net=0123456789ab name=\"n1\" ipv4=10.123.0.0/24,gw=10.123.0.1 internal=false enable_ipv6=false",
		"CreateEndpoint net=0123456789ab ep=89abcdef0123 mac=- ipv4=10.123.0.2/24 ipv6=-",
		"Join net=0123456789ab ep=89abcdef0123 sandbox=/sb if=eth0 mac=- ipv4=10.123.0.2/24 ipv6=- -> boom",
		"Join net=0123456789ab ep=89abcdef0123 sandbox=/sb if=eth0 mac=- ipv4=10.123.0.2/24 ipv6=-",
		"DeleteEndpoint net=0123456789ab ep=89abcdef0123 -> endpoint \"" + string(eid) + "\": is joined to a sandbox",
		"DeleteNetwork net=0123456789ab -> network \"" + string(nid) + "\": has endpoints",
		"Leave net=0123456789ab ep=89abcdef0123 sandbox=/sb if=eth0 gone=false",
		"CreateNetwork net=0123456789ab name=\"other\" internal=false enable_ipv6=false -> network \"" + string(nid) + "\": exists with another configuration",
	}
	if diff := cmp.Diff(want, f.Calls()); diff != "" {
		t.Errorf("Calls() mismatch (-want +got):\n%s", diff)
	}
}

func TestFakeUnknown(t *testing.T) {
	ctx := t.Context()
	f := driverstest.NewFake(drivers.Capabilities{})
	if err := f.CreateNetwork(ctx, drivers.CreateNetworkRequest{NetworkID: nid}); err != nil {
		t.Fatal(err)
	}
	_, err := f.Join(ctx, drivers.JoinRequest{NetworkID: nid, EndpointID: eid, IfName: "eth0"})
	if !errors.Is(err, errclass.ErrNotFound) {
		t.Errorf("Join of an endpoint never created: %v, want not found", err)
	}
}

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
