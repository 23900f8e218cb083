package sandboxtest_test

import (
	"context"
	"fmt"
	"log"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/cnmkit/cnm/sandbox"
	"github.com/cnmkit/cnm/sandbox/sandboxtest"
)

// Example makes a sandbox on an in-memory Machine, adds an interface, lets go of the sandbox
// and opens it again, as a restarted Controller would. No root is needed.
func Example() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "sandboxtest")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	m := sandboxtest.NewMachine()
	cfg := sandbox.Config{ID: "web", RunDir: filepath.Join(dir, "run"), FilesDir: filepath.Join(dir, "files", "web")}

	sb, err := m.New(ctx, cfg)
	if err != nil {
		log.Fatal(err)
	}
	name, release, err := sb.ReserveName("")
	if err != nil {
		log.Fatal(err)
	}
	defer release()
	eth0 := netip.MustParsePrefix("10.99.0.2/24")
	if err := sb.AddInterface(ctx, sandbox.InterfaceConfig{Name: name, InSandbox: true, IPv4: eth0}); err != nil {
		log.Fatal(err)
	}
	sb.Close()

	sb, dropped, err := m.Open(ctx, cfg, []sandbox.Interface{{Name: "eth0", IPv4: eth0}, {Name: "eth1"}})
	if err != nil {
		log.Fatal(err)
	}
	defer sb.Delete(ctx)
	fmt.Println("namespace:", sb.Key() == filepath.Join(cfg.RunDir, "netns", "web"))
	fmt.Println("interfaces:", len(sb.Interfaces()), sb.Interfaces()[0].Name, sb.Interfaces()[0].IPv4)
	fmt.Println("dropped:", dropped)
	// Output:
	// namespace: true
	// interfaces: 1 eth0 10.99.0.2/24
	// dropped: [eth1]
}
