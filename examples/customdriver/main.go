// Command customdriver plugs a driver of its own into cnm and uses it end to end, through
// cnmd's API: the "bring your own driver" story. The driver (PTP, in driver.go) gives each
// container a routed point-to-point veth, as the CNI ptp plugin does; the program registers
// it with the Controller (cnm.Config.Drivers, exactly as the built-ins are registered), serves
// the API on a unix socket (package api/server, what cnmd serves), and then, as a client
// (package api/client, what cnmctl uses), creates a ptp network and two sandboxes on it that
// ping each other across the host's routing table. It removes everything at the end.
//
// Run it as root:
//
//	go run ./examples/customdriver           # the walk-through, then exit
//	go run ./examples/customdriver -serve    # and keep serving: use cnmctl in another shell
//
// It works inside a throwaway "lab host" namespace of its own: the machine's network is not
// touched.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"time"

	"github.com/cnmkit/cnm"
	"github.com/cnmkit/cnm/api"
	"github.com/cnmkit/cnm/api/client"
	"github.com/cnmkit/cnm/api/server"
	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/netns"
	"github.com/vishvananda/netlink"
)

func main() {
	serve := flag.Bool("serve", false, "after the walk-through, keep serving the API until interrupted")
	flag.Parse()
	if err := run(*serve); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

func step(format string, args ...any) { fmt.Printf("==> "+format+"\n", args...) }

func run(serve bool) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("run me as root: the driver makes veths and routes, cnm namespaces")
	}
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "cnm-customdriver-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	lab := filepath.Join(dir, "labhost")
	host, err := netns.New(lab)
	if err != nil {
		return fmt.Errorf("lab namespace: %w", err)
	}
	defer netns.Remove(lab)
	defer host.Close()
	if err := loUp(host); err != nil {
		return err
	}

	step("register the ptp driver and start the Controller")
	// DisableIPTables: the built-in bridge driver would set the FORWARD policy to DROP, as
	// Docker does, and ptp's traffic is forwarded by the host (see the README for a firewalled
	// host).
	c, err := cnm.New(ctx, cnm.Config{DataDir: filepath.Join(dir, "data"), RunDir: filepath.Join(dir, "run"), HostNetns: lab,
		Drivers: map[string]drivers.Driver{"ptp": NewPTP(lab)}, DisableIPTables: true})
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, c.Close()) }()
	fmt.Println("    drivers:", strings.Join(c.Drivers(), ", "))

	srv, err := server.New(server.Config{Controller: c})
	if err != nil {
		return err
	}
	defer srv.Close()
	sock := filepath.Join(dir, "cnm.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return err
	}
	hs := &http.Server{Handler: srv}
	go hs.Serve(ln)
	defer hs.Shutdown(context.WithoutCancel(ctx))
	cl, err := client.New(client.Config{Host: "unix://" + sock})
	if err != nil {
		return err
	}
	defer cl.Close()
	fmt.Println("    API on unix://" + sock)

	step("cnmctl network create -d ptp --subnet 10.77.0.0/24 routed")
	if _, err := cl.NetworkCreate(ctx, api.NetworkCreate{Name: "routed", Driver: "ptp", IPAM: &api.IPAM{Config: []api.IPAMConfig{{Subnet: "10.77.0.0/24"}}}}); err != nil {
		return err
	}
	addrs := map[string]string{}
	for _, name := range []string{"a", "b"} {
		step("cnmctl sandbox create --net routed %s", name)
		in, err := cl.SandboxCreate(ctx, api.SandboxCreate{Name: name, Network: "routed"})
		if err != nil {
			return err
		}
		es := in.NetworkSettings.Networks["routed"]
		addrs[name] = es.IPAddress
		fmt.Printf("    %s: %s/%d via %s (%s)\n", name, es.IPAddress, es.IPPrefixLen, es.Gateway, es.IfName)
	}
	for _, p := range [][2]string{{"a", "b"}, {"b", "a"}} {
		step("%s pings %s (%s) through the host's routes", p[0], p[1], addrs[p[1]])
		in, err := cl.SandboxInspect(ctx, p[0])
		if err != nil {
			return err
		}
		out, err := exec.Command("nsenter", "--net="+in.NetworkSettings.SandboxKey, "--", "ping", "-n", "-c", "2", "-W", "1", addrs[p[1]]).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s cannot ping %s: %v\n%s", p[0], p[1], err, out)
		}
		fmt.Println("    ok:", lastLine(out))
	}
	routes, err := exec.Command("nsenter", "--net="+lab, "--", "ip", "route").Output()
	if err != nil {
		return err
	}
	fmt.Printf("    the lab host's routes:\n%s", indent(string(routes)))

	if serve {
		step("serving on unix://%s: try CNM_HOST=unix://%s cnmctl network inspect routed (Ctrl-C ends)", sock, sock)
		sig, stop := signal.NotifyContext(ctx, os.Interrupt)
		<-sig.Done()
		stop()
	}

	step("clean up: sandboxes, then the network")
	for _, name := range []string{"a", "b"} {
		if err := cl.SandboxRemove(ctx, name, false); err != nil {
			return err
		}
	}
	if err := cl.NetworkRemove(ctx, "routed"); err != nil {
		return err
	}
	return waitNoPTPLinks(host)
}

func loUp(ns *netns.NS) error {
	h, err := netlink.NewHandleAt(ns.Handle())
	if err != nil {
		return err
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return err
	}
	return h.LinkSetUp(lo)
}

// waitNoPTPLinks checks the driver's host ends are gone (the kernel removes a namespace's
// veths shortly after the namespace).
func waitNoPTPLinks(ns *netns.NS) error {
	h, err := netlink.NewHandleAt(ns.Handle())
	if err != nil {
		return err
	}
	defer h.Close()
	var left []string
	for range 50 {
		links, err := h.LinkList()
		if err != nil {
			return err
		}
		left = left[:0]
		for _, l := range links {
			if strings.HasPrefix(l.Attrs().Name, "ptp") {
				left = append(left, l.Attrs().Name)
			}
		}
		if len(left) == 0 {
			fmt.Println("    nothing left")
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("host ends left behind: %v", left)
}

func lastLine(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[len(lines)-1]
}

func indent(s string) string {
	return "      " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n      ") + "\n"
}
