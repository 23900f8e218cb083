package main

import (
	"testing"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/drivers/driverstest"
	"github.com/cnmkit/cnm/internal/nstest"
	"net/netip"
)

// TestPrivilegedExampleCustomDriver runs the example as its README does and fails if any
// step does: the ptp network through the API, two sandboxes pinging each other, nothing left.
func TestPrivilegedExampleCustomDriver(t *testing.T) {
	nstest.Privileged(t)
	if err := run(false); err != nil {
		t.Fatal(err)
	}
}

// TestPrivilegedPTPConformance runs the driver conformance suite that every driver should
// pass against the example's driver, with real namespaces.
func TestPrivilegedPTPConformance(t *testing.T) {
	nstest.Privileged(t)
	driverstest.Run(t, driverstest.Harness{
		New:  func(t *testing.T) drivers.Driver { return NewPTP(nstest.NewNS(t).Path()) },
		IPv4: []drivers.IPAMData{{Subnet: netip.MustParsePrefix("10.123.0.0/24"), Gateway: netip.MustParseAddr("10.123.0.1")}},
		Sandbox: func(t *testing.T) (string, int) {
			ns := nstest.NewNS(t)
			return ns.Path(), ns.FD()
		},
	})
}
