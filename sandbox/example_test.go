package sandbox_test

import (
	"context"
	"fmt"
	"log"
	"net/netip"

	"github.com/cnmkit/cnm/sandbox"
)

// Example creates a sandbox, configures an interface that a driver made in it, and deletes
// it. It needs root, so it is compiled but not run.
func Example() {
	ctx := context.Background()
	sb, err := sandbox.New(ctx, sandbox.Config{
		ID:       "c1",
		RunDir:   "/run/cnm",
		FilesDir: "/var/lib/cnm/sandboxes/c1",
		Hostname: "web",
		DNS:      []netip.Addr{netip.MustParseAddr("192.0.2.53")},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer sb.Delete(ctx)

	name, release, err := sb.ReserveName("")
	if err != nil {
		log.Fatal(err)
	}
	defer release()

	// Here a driver creates a veth pair whose peer is made directly in the sandbox, under
	// name: netlink.Veth{PeerName: name, PeerNamespace: netlink.NsFd(sb.NetnsFD())}.

	err = sb.AddInterface(ctx, sandbox.InterfaceConfig{
		Name:      name,
		InSandbox: true,
		IPv4:      netip.MustParsePrefix("10.99.0.2/24"),
		Gateway:   netip.MustParseAddr("10.99.0.1"),
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(sb.Key(), sb.HostsPath(), sb.ResolvConfPath())
}

// ExampleOpen re-opens a sandbox after a restart, with the interfaces recorded before.
func ExampleOpen() {
	ctx := context.Background()
	cfg := sandbox.Config{ID: "c1", RunDir: "/run/cnm", FilesDir: "/var/lib/cnm/sandboxes/c1"}
	saved := []sandbox.Interface{{Name: "eth0", IPv4: netip.MustParsePrefix("10.99.0.2/24")}}
	sb, dropped, err := sandbox.Open(ctx, cfg, saved)
	if err != nil {
		log.Fatal(err)
	}
	defer sb.Close()
	for _, name := range dropped {
		fmt.Println("interface gone while stopped:", name)
	}
}
