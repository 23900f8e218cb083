package remote_test

import (
	"context"
	"net/netip"
	"sync"
	"testing"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/drivers/driverstest"
	"github.com/cnmkit/cnm/drivers/remote"
	"github.com/cnmkit/cnm/drivers/remote/server"
)

// driverOnly hides the remote driver's OptionParser from the conformance suite: a plugin
// checks its options itself when a network is created, so the driver takes any labels, while
// the suite wants unknown ones refused at parse time.
type driverOnly struct{ drivers.Driver }

// TestConformance runs the driver contract's suite against remote.Driver talking, over a real
// Unix socket, to cnm's server in front of the fake driver: converging creates and deletes,
// the endpoint lifecycle with Join, and cnm.ErrNotFound for unknown networks, all across the
// protocol's {"Err": "..."} answers.
func TestConformance(t *testing.T) {
	driverstest.Run(t, driverstest.Harness{
		New: func(t *testing.T) drivers.Driver {
			srv, err := server.New(server.Config{Driver: hostSide{driverstest.NewFake(drivers.Capabilities{})}})
			if err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			l, err := server.Listen(dir, "conf")
			if err != nil {
				t.Fatal(err)
			}
			ctx, stop := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			wg.Go(func() { _ = srv.Serve(ctx, l) })
			t.Cleanup(func() { stop(); wg.Wait() })
			d, err := remote.Open(t.Context(), remote.Config{Name: "conf", SocketDirs: []string{dir}, SpecDirs: []string{}})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { d.Close() })
			return driverOnly{d}
		},
		IPv4:    []drivers.IPAMData{{Subnet: netip.MustParsePrefix("10.123.0.0/24"), Gateway: netip.MustParseAddr("10.123.0.1")}},
		Sandbox: func(t *testing.T) (string, int) { return "/run/netns/conformance", -1 },
	})
}
