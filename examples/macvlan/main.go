// Command macvlan runs cnm's macvlan driver on a small lab LAN: two sandboxes whose interfaces
// are macvlan links on the host's eth0 get their own MACs and addresses on the LAN, reach each
// other and the LAN's router directly (no bridge, no NAT), and the router sees them with their
// own MACs; then everything is removed.
//
// Run it as root:
//
//	go run ./examples/macvlan
//
// It works only inside throwaway namespaces of its own (the LAN, its router and the host), so
// the machine's own network is never touched.
package main

import (
	"context"
	"errors"
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
)

func main() {
	verbose := flag.Bool("v", false, "log the controller's work")
	flag.Parse()
	if err := run(*verbose); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

func step(format string, args ...any) { fmt.Printf("==> "+format+"\n", args...) }

const (
	subnet  = "192.168.50.0/24"
	gateway = "192.168.50.1" // the router's address on the LAN
	hostIP  = "192.168.50.2" // the host's own address on its eth0
	ipRange = "192.168.50.64/26"
)

func run(verbose bool) (err error) {
	if os.Geteuid() != 0 {
		return fmt.Errorf("run me as root: the lab needs namespaces, a bridge and veths")
	}
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "cnm-example-macvlan-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	l, err := newLab(dir)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, l.close()) }()
	step("lab: LAN bridge in %s, router %s (eth0 %s), host %s (eth0 %s)", l.lan, l.router, gateway, l.host, hostIP)

	cfg := cnm.Config{DataDir: filepath.Join(dir, "data"), RunDir: filepath.Join(dir, "run"), HostNetns: l.host}
	if verbose {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	c, err := cnm.New(ctx, cfg)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, c.Close()) }()
	step("controller up on the host namespace")

	// As Docker users write it:
	//   docker network create -d macvlan --subnet 192.168.50.0/24 --gateway 192.168.50.1 \
	//     --ip-range 192.168.50.64/26 -o parent=eth0 -o macvlan_mode=bridge lan
	if _, err := c.NewNetwork(ctx, "lan", "macvlan",
		network.WithSubnet(netip.MustParsePrefix(subnet)),
		network.WithGateway(netip.MustParseAddr(gateway)),
		network.WithIPRange(netip.MustParsePrefix(ipRange)),
		network.WithDriverLabels(map[string]string{"parent": "eth0", "macvlan_mode": "bridge"})); err != nil {
		return err
	}
	step("created network lan: macvlan on eth0, bridge mode, subnet %s, gateway %s, addresses from %s", subnet, gateway, ipRange)

	a, err := newAttached(ctx, c, "a")
	if err != nil {
		return err
	}
	b, err := newAttached(ctx, c, "b")
	if err != nil {
		return err
	}
	aIP, bIP := addr(a), addr(b)
	for _, p := range []struct {
		from sandbox.Sandbox
		to   netip.Addr
		what string
	}{
		{a, bIP, "b"}, {b, aIP, "a"},
		{a, netip.MustParseAddr(gateway), "the router"}, {b, netip.MustParseAddr(gateway), "the router"},
	} {
		if out, ok := ping(p.from.Key(), p.to); !ok {
			return fmt.Errorf("ping %s -> %s (%s) failed, want replies:\n%s", p.from.ID(), p.what, p.to, out)
		}
		step("ping %s -> %s %s: ok", p.from.ID(), p.what, p.to)
	}
	neigh, err := l.ip(l.router, "neigh", "show", "dev", "eth0")
	if err != nil {
		return err
	}
	for _, line := range strings.Split(strings.TrimSpace(neigh), "\n") {
		step("router's neighbour: %s", strings.TrimSpace(line))
	}
	// The kernel's rule: a macvlan parent does not deliver frames between itself and its own
	// macvlan links, so the host cannot reach its containers on eth0 (other LAN hosts can).
	if _, ok := ping(l.host, aIP); ok {
		return fmt.Errorf("ping host -> a (%s) answered, want no reply (macvlan parent)", aIP)
	}
	step("ping host -> a %s: no reply, as the kernel does it (a parent cannot reach its own macvlan links)", aIP)

	for _, id := range []string{"a", "b"} {
		if err := c.Disconnect(ctx, "lan", id); err != nil {
			return err
		}
		if err := c.DeleteSandbox(ctx, id); err != nil {
			return err
		}
		step("disconnected and deleted sandbox %s", id)
	}
	if err := c.DeleteNetwork(ctx, "lan"); err != nil {
		return err
	}
	step("deleted network lan")
	left, err := l.ip(l.host, "link", "show", "type", "macvlan")
	if err != nil {
		return err
	}
	if left = strings.TrimSpace(left); left != "" {
		return fmt.Errorf("macvlan links left on the host:\n%s", left)
	}
	step("done")
	return nil
}

func newAttached(ctx context.Context, c *cnm.Controller, id string) (sandbox.Sandbox, error) {
	sb, err := c.NewSandbox(ctx, id)
	if err != nil {
		return nil, err
	}
	ep, err := c.Connect(ctx, "lan", id)
	if err != nil {
		return nil, err
	}
	info := ep.Info()
	step("sandbox %s on lan: %s %s, MAC %s, gateway %s", id, info.IfName, info.IPv4, info.MAC, info.Gateway)
	return sb, nil
}

func addr(sb sandbox.Sandbox) netip.Addr { return sb.Interfaces()[0].IPv4.Addr() }

// ping pings a from inside the namespace at path.
func ping(path string, a netip.Addr) (string, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "nsenter", "--net="+path, "--", "ping", "-n", "-c", "2", "-W", "1", "-i", "0.2", a.String()).CombinedOutput()
	return string(out), err == nil
}

// lab is the LAN: three namespaces bind-mounted under a directory, the LAN (a bridge "lan"),
// its router and the host, each of the last two with an eth0 on the bridge through a veth.
type lab struct {
	lan, router, host string
	made              []string // namespaces created, to unmount
}

func newLab(dir string) (_ *lab, err error) {
	l := &lab{lan: filepath.Join(dir, "lan"), router: filepath.Join(dir, "router"), host: filepath.Join(dir, "host")}
	defer func() {
		if err != nil {
			err = errors.Join(err, l.close())
		}
	}()
	for _, p := range []string{l.lan, l.router, l.host} {
		if err := os.WriteFile(p, nil, 0o444); err != nil {
			return nil, err
		}
		// `unshare --net=<file>` creates the namespace and keeps it with a bind mount there.
		if out, err := exec.Command("unshare", "--net="+p, "true").CombinedOutput(); err != nil {
			return nil, fmt.Errorf("create namespace %s: %v: %s", p, err, out)
		}
		l.made = append(l.made, p)
		if _, err := l.ip(p, "link", "set", "lo", "up"); err != nil {
			return nil, err
		}
	}
	if _, err := l.ip(l.lan, "link", "add", "lan", "type", "bridge"); err != nil {
		return nil, err
	}
	if _, err := l.ip(l.lan, "link", "set", "lan", "up"); err != nil {
		return nil, err
	}
	for _, n := range []struct{ ns, port, addr string }{
		{l.router, "rtr", gateway + "/24"},
		{l.host, "host", hostIP + "/24"},
	} {
		for _, args := range [][]string{
			{l.lan, "link", "add", n.port, "type", "veth", "peer", "name", n.port + "p"},
			{l.lan, "link", "set", n.port, "master", "lan", "up"},
			{l.lan, "link", "set", n.port + "p", "netns", n.ns},
			{n.ns, "link", "set", n.port + "p", "name", "eth0"},
			{n.ns, "addr", "add", n.addr, "dev", "eth0"},
			{n.ns, "link", "set", "eth0", "up"},
		} {
			if _, err := l.ip(args[0], args[1:]...); err != nil {
				return nil, err
			}
		}
	}
	return l, nil
}

// ip runs ip(8) in the namespace at ns.
func (l *lab) ip(ns string, args ...string) (string, error) {
	out, err := exec.Command("nsenter", append([]string{"--net=" + ns, "--", "ip"}, args...)...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("ip %s in %s: %v: %s", strings.Join(args, " "), ns, err, out)
	}
	return string(out), nil
}

// close unmounts the lab's namespaces: the kernel removes their links with them.
func (l *lab) close() error {
	var errs []error
	for _, p := range l.made {
		if out, err := exec.Command("umount", p).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("umount %s: %v: %s", p, err, out))
		}
	}
	l.made = nil
	return errors.Join(errs...)
}
