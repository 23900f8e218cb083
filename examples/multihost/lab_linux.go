package main

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cnmkit/cnm/netns"
	"github.com/vishvananda/netlink"
)

// labHost is one host of the lab: its namespace, its process and what it reported.
type labHost struct {
	name      string
	addr      string // underlay address
	ns        *netns.NS
	cmd       *exec.Cmd
	container string
	ip        string
	sbPath    string
	mac       string
	args      []string
	ready     chan error
}

// runLab builds a cluster of n hosts on this machine and checks it: an underlay bridge with
// etcd in a lab namespace, and n host namespaces on it, each running bin (this program) as one
// host of the cluster; every container must reach every other across the overlay. With crash,
// the last host's process is then killed (SIGKILL): the first host must drop its container's
// entries once gossip finds it dead; restarted, it must be reachable again, with exactly one
// FDB entry for its container on the first host. Everything is removed at the end. The
// machine's own network is not touched.
func runLab(bin string, n int, crash bool, out io.Writer) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("run me as root: the lab creates namespaces, bridges and veths")
	}
	if n < 2 || n > 9 {
		return fmt.Errorf("-lab %d: want 2 to 9 hosts", n)
	}
	etcdBin := os.Getenv("CNM_ETCD_BIN")
	if etcdBin == "" {
		if etcdBin, err = exec.LookPath("etcd"); err != nil {
			return errors.New("the lab needs etcd (Debian: apt-get install etcd-server, or set CNM_ETCD_BIN)")
		}
	}
	dir, err := os.MkdirTemp("", "cnm-multihost-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	step := func(format string, args ...any) { fmt.Fprintf(out, "==> "+format+"\n", args...) }

	lab, err := netns.New(filepath.Join(dir, "ns", "lab"))
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, lab.Close(), netns.Remove(lab.Path())) }()
	lh, err := netlink.NewHandleAt(lab.Handle())
	if err != nil {
		return err
	}
	defer lh.Close()
	if err := lh.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "underlay"}}); err != nil {
		return err
	}
	br, err := lh.LinkByName("underlay")
	if err != nil {
		return err
	}
	if err := addrUp(lh, br, "192.0.2.1/24"); err != nil {
		return err
	}
	step("underlay: bridge in the lab namespace, 192.0.2.0/24 (a documentation range, inside the lab only)")

	etcd := exec.Command("nsenter", "--net="+lab.Path(), "--", etcdBin, "--name", "lab", "--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", "http://192.0.2.1:2379", "--advertise-client-urls", "http://192.0.2.1:2379",
		"--listen-peer-urls", "http://192.0.2.1:2380", "--initial-advertise-peer-urls", "http://192.0.2.1:2380",
		"--initial-cluster", "lab=http://192.0.2.1:2380")
	etcd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := etcd.Start(); err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	defer func() {
		etcd.Process.Kill()
		etcd.Wait()
	}()
	step("etcd on 192.0.2.1:2379 in the lab namespace")

	var k [32]byte
	rand.Read(k[:])
	key := hex.EncodeToString(k[:])
	hosts := make([]*labHost, n)
	for i := range hosts {
		h := &labHost{name: fmt.Sprintf("host-%d", i+1), addr: fmt.Sprintf("192.0.2.%d", 11+i), ready: make(chan error, 1)}
		hosts[i] = h
		if h.ns, err = netns.New(filepath.Join(dir, "ns", h.name)); err != nil {
			return err
		}
		defer func() { err = errors.Join(err, h.ns.Close(), netns.Remove(h.ns.Path())) }()
		if err := plug(lh, lab, h); err != nil {
			return fmt.Errorf("%s: %w", h.name, err)
		}
	}
	defer func() {
		// Stop the hosts, the network's creator last: each removes its container and leaves.
		for i := len(hosts) - 1; i >= 0; i-- {
			if h := hosts[i]; h.cmd != nil && h.cmd.Process != nil {
				h.cmd.Process.Signal(syscall.SIGTERM)
				done := make(chan error, 1)
				go func() { done <- h.cmd.Wait() }()
				select {
				case werr := <-done:
					if werr != nil {
						err = errors.Join(err, fmt.Errorf("%s: %w", h.name, werr))
					}
				case <-time.After(40 * time.Second):
					h.cmd.Process.Kill()
					err = errors.Join(err, fmt.Errorf("%s did not stop in 40s", h.name))
				}
			}
		}
		if err == nil {
			step("all hosts stopped: containers, network and registry entries removed")
		}
	}()
	for i, h := range hosts {
		args := []string{"--net=" + h.ns.Path(), "--", bin, "-name", h.name, "-store", "etcd://192.0.2.1:2379/cnm",
			"-vtep", h.addr, "-key", key, "-data", filepath.Join(dir, h.name, "data"), "-run", filepath.Join(dir, h.name, "run"),
			"-container", "c" + h.name[len("host-"):]}
		if i == 0 {
			args = append(args, "-create")
		} else {
			args = append(args, "-join", hosts[0].addr+":7946")
		}
		if err := start(h, args, out); err != nil {
			return err
		}
		if err := <-h.ready; err != nil {
			return fmt.Errorf("%s: %w", h.name, err)
		}
		step("%s (underlay %s): container %s at %s on the overlay network", h.name, h.addr, h.container, h.ip)
	}
	for _, from := range hosts {
		for _, to := range hosts {
			if from == to {
				continue
			}
			if err := ping(from.sbPath, to.ip); err != nil {
				return fmt.Errorf("%s (on %s) cannot reach %s (on %s): %w", from.container, from.name, to.container, to.name, err)
			}
			step("%s on %s reaches %s on %s", from.container, from.name, to.container, to.name)
		}
	}
	if crash {
		return crashLast(hosts, out)
	}
	return nil
}

// crashLast kills the last host's process, waits for the first host to drop its container,
// restarts it and checks it is reachable again with one FDB entry on the first host.
func crashLast(hosts []*labHost, out io.Writer) error {
	first, last := hosts[0], hosts[len(hosts)-1]
	// The lab's network is the cluster's first: its VNI is the range's first, 4096.
	fdb := func() (string, error) {
		path := filepath.Join(argAfter(first.args, "-run"), "overlay", "ov-4096")
		b, err := exec.Command("nsenter", "--net="+path, "--", "bridge", "fdb", "show", "dev", "vx-4096").CombinedOutput()
		return string(b), err
	}
	last.cmd.Process.Kill()
	last.cmd.Wait()
	fmt.Fprintf(out, "==> %s killed (SIGKILL)\n", last.name)
	t0 := time.Now()
	for {
		f, err := fdb()
		if err != nil {
			return fmt.Errorf("fdb on %s: %w: %s", first.name, err, f)
		}
		if !strings.Contains(f, last.mac) {
			break
		}
		if time.Since(t0) > 60*time.Second {
			return fmt.Errorf("%s still has %s's container after 60s", first.name, last.name)
		}
		time.Sleep(200 * time.Millisecond)
	}
	fmt.Fprintf(out, "==> %s dropped %s's container %v after the kill\n", first.name, last.name, time.Since(t0).Round(100*time.Millisecond))
	if err := start(last, last.args, out); err != nil {
		return err
	}
	if err := <-last.ready; err != nil {
		return fmt.Errorf("%s restarted: %w", last.name, err)
	}
	if err := ping(first.sbPath, last.ip); err != nil {
		return fmt.Errorf("%s cannot reach %s after its restart: %w", first.container, last.container, err)
	}
	if err := ping(last.sbPath, first.ip); err != nil {
		return fmt.Errorf("%s cannot reach %s after its restart: %w", last.container, first.container, err)
	}
	f, err := fdb()
	if err != nil {
		return err
	}
	if got := strings.Count(f, last.mac); got != 1 {
		return fmt.Errorf("%s holds %d FDB entries for %s after its restart, want 1:\n%s", first.name, got, last.container, f)
	}
	fmt.Fprintf(out, "==> %s restarted: %s reaches %s again, one FDB entry for it on %s\n", last.name, first.container, last.container, first.name)
	return nil
}

// argAfter returns the argument after flag in args.
func argAfter(args []string, flag string) string {
	for i, a := range args {
		if a == flag && i+1 < len(args) {
			return args[i+1]
		}
	}
	return ""
}

// addrUp gives link the address and sets it and the namespace's loopback up.
func addrUp(h *netlink.Handle, link netlink.Link, cidr string) error {
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		return err
	}
	if err := h.AddrAdd(link, a); err != nil {
		return err
	}
	if err := h.LinkSetUp(link); err != nil {
		return err
	}
	return h.LinkSetUp(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: "lo"}})
}

// plug gives host h an eth0 on the underlay bridge, with its address.
func plug(lh *netlink.Handle, lab *netns.NS, h *labHost) error {
	hh, err := netlink.NewHandleAt(h.ns.Handle())
	if err != nil {
		return err
	}
	defer hh.Close()
	peer := "ul-" + h.name
	if err := hh.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: peer, PeerNamespace: netlink.NsFd(lab.FD())}); err != nil {
		return err
	}
	eth0, err := hh.LinkByName("eth0")
	if err != nil {
		return err
	}
	if err := addrUp(hh, eth0, h.addr+"/24"); err != nil {
		return err
	}
	// A default route on the underlay, as a VM has: the host's way out (NAT) points at it.
	if err := hh.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: net.ParseIP("192.0.2.1")}); err != nil {
		return err
	}
	p, err := lh.LinkByName(peer)
	if err != nil {
		return err
	}
	br, err := lh.LinkByName("underlay")
	if err != nil {
		return err
	}
	if err := lh.LinkSetMaster(p, br); err != nil {
		return err
	}
	return lh.LinkSetUp(p)
}

// start runs a host's process and reads its READY line; its other output goes to out.
func start(h *labHost, args []string, out io.Writer) error {
	h.args, h.ready = args, make(chan error, 1)
	h.cmd = exec.Command("nsenter", args...)
	h.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := h.cmd.StdoutPipe()
	if err != nil {
		return err
	}
	h.cmd.Stderr = prefixWriter{h.name, out}
	if err := h.cmd.Start(); err != nil {
		return err
	}
	var once sync.Once
	report := func(err error) { once.Do(func() { h.ready <- err }) }
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) == 5 && f[0] == "READY" {
				h.container, h.ip, h.sbPath, h.mac = f[1], f[2], f[3], f[4]
				report(nil)
				continue
			}
			fmt.Fprintf(out, "    %s: %s\n", h.name, sc.Text())
		}
		report(errors.New("exited before it was ready"))
	}()
	go func() {
		time.Sleep(60 * time.Second)
		report(errors.New("not ready in 60s"))
	}()
	return nil
}

// ping pings ip once from the namespace at path, trying for up to 10 seconds.
func ping(path, ip string) error {
	var out []byte
	var err error
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		out, err = exec.Command("nsenter", "--net="+path, "--", "ping", "-n", "-q", "-c", "1", "-W", "1", ip).CombinedOutput()
		if err == nil {
			return nil
		}
	}
	return fmt.Errorf("%w: %s", err, strings.TrimSpace(string(out)))
}

type prefixWriter struct {
	name string
	out  io.Writer
}

func (w prefixWriter) Write(b []byte) (int, error) {
	for _, l := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		fmt.Fprintf(w.out, "    %s: %s\n", w.name, l)
	}
	return len(b), nil
}
