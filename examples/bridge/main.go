// Command bridge is cnm's main example: a bridge network with two sandboxes that ping each
// other, and a second network whose sandbox they cannot reach; then everything is removed.
//
// Run it as root:
//
//	go run ./examples/bridge
//
// By default it works inside a throwaway "lab host" namespace of its own, so the machine's own
// network is never touched; -host uses the caller's namespace as the host instead.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/cnmkit/cnm"
	"github.com/cnmkit/cnm/network"
	"github.com/cnmkit/cnm/sandbox"
	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
)

func main() {
	useHost := flag.Bool("host", false, "use the caller's network namespace as the host (default: a throwaway lab namespace)")
	verbose := flag.Bool("v", false, "log the controller's work")
	flag.Parse()
	if err := run(*useHost, *verbose); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

func step(format string, args ...any) { fmt.Printf("==> "+format+"\n", args...) }

func run(useHost, verbose bool) (err error) {
	if os.Geteuid() != 0 {
		return fmt.Errorf("run me as root: cnm creates namespaces, bridges and veths")
	}
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "cnm-example-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	cfg := cnm.Config{DataDir: filepath.Join(dir, "data"), RunDir: filepath.Join(dir, "run")}
	if verbose {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	if !useHost {
		path, cleanup, err := labHost(dir)
		if err != nil {
			return err
		}
		defer cleanup()
		cfg.HostNetns = path
		step("lab host namespace %s (the machine's own network is not touched)", path)
	}

	c, err := cnm.New(ctx, cfg)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := c.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	def, _ := c.Network(cnm.DefaultNetwork)
	step("controller up: predefined networks %s", names(c.Networks()))
	step("default network %q: subnet %s", def.Name(), def.Inspect().IPAM.Config[0].Subnet)

	nw, err := c.NewNetwork(ctx, "new_bridge", "bridge", network.WithSubnet(netip.MustParsePrefix("10.10.0.0/24")))
	if err != nil {
		return err
	}
	step("created network new_bridge (%s, bridge br-%s)", nw.Inspect().IPAM.Config[0].Subnet, nw.ID()[:12])

	db, err := newAttached(ctx, c, "db", "new_bridge")
	if err != nil {
		return err
	}
	web, err := newAttached(ctx, c, "web", "new_bridge")
	if err != nil {
		return err
	}
	other, err := newAttached(ctx, c, "other", cnm.DefaultNetwork)
	if err != nil {
		return err
	}
	webIP := addr(web)
	otherIP := addr(other)

	if out, ok := ping(db, webIP); !ok {
		return fmt.Errorf("ping db -> web (%s) failed, want success:\n%s", webIP, out)
	}
	step("ping db -> web %s: ok (same network)", webIP)
	if _, ok := ping(db, otherIP); ok {
		return fmt.Errorf("ping db -> other (%s) succeeded, want failure: networks must be isolated", otherIP)
	}
	step("ping db -> other %s: no reply, as it should be (different network)", otherIP)

	in := nw.Inspect()
	for sb, ct := range in.Containers {
		step("inspect new_bridge: %s -> %s %s", sb, ct.IPv4Address, ct.MacAddress)
	}
	if err := c.DeleteNetwork(ctx, "new_bridge"); err != nil {
		step("delete new_bridge while db and web are attached: refused (%v)", err)
	} else {
		return fmt.Errorf("deleting a network with endpoints succeeded, want a conflict")
	}

	for _, id := range []string{"db", "web", "other"} {
		if err := c.DeleteSandbox(ctx, id); err != nil {
			return err
		}
		step("deleted sandbox %s (its namespace took its interface with it)", id)
	}
	if err := c.DeleteNetwork(ctx, "new_bridge"); err != nil {
		return err
	}
	step("deleted network new_bridge")
	step("done")
	return nil
}

func newAttached(ctx context.Context, c *cnm.Controller, id, net string) (sandbox.Sandbox, error) {
	sb, err := c.NewSandbox(ctx, id)
	if err != nil {
		return nil, err
	}
	ep, err := c.Connect(ctx, net, id)
	if err != nil {
		return nil, err
	}
	info := ep.Info()
	step("sandbox %s on %s: %s %s, MAC %s (hosts file %s)", id, net, info.IfName, info.IPv4, info.MAC, sb.HostsPath())
	return sb, nil
}

func addr(sb sandbox.Sandbox) netip.Addr {
	ifs := sb.Interfaces()
	return ifs[0].IPv4.Addr()
}

func names(nws []network.Network) string {
	var s []string
	for _, n := range nws {
		s = append(s, n.Name()+"("+n.Driver()+")")
	}
	return strings.Join(s, " ")
}

// ping pings a from inside sb's namespace.
func ping(sb sandbox.Sandbox, a netip.Addr) (string, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "nsenter", "--net="+sb.Key(), "--", "ping", "-n", "-c", "2", "-W", "1", "-i", "0.2", a.String()).CombinedOutput()
	return string(out), err == nil
}

// labHost creates a namespace to act as the host, bind-mounted under dir, and returns its path.
func labHost(dir string) (string, func(), error) {
	path := filepath.Join(dir, "labhost")
	// `unshare --net=<file>` creates the namespace and keeps it with a bind mount at path.
	if err := os.WriteFile(path, nil, 0o444); err != nil {
		return "", nil, err
	}
	if out, err := exec.Command("unshare", "--net="+path, "true").CombinedOutput(); err != nil {
		os.Remove(path)
		return "", nil, fmt.Errorf("create lab namespace: %v: %s", err, out)
	}
	cleanup := func() {
		exec.Command("umount", path).Run()
		os.Remove(path)
	}
	h, err := vnetns.GetFromPath(path)
	if err != nil {
		cleanup()
		return "", nil, err
	}
	defer h.Close()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		cleanup()
		return "", nil, err
	}
	defer nl.Close()
	lo, err := nl.LinkByName("lo")
	if err == nil {
		err = nl.LinkSetUp(lo)
	}
	if err != nil {
		cleanup()
		return "", nil, err
	}
	return path, cleanup, nil
}
