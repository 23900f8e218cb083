package sandbox_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/cnmkit/cnm/internal/netns"
	"github.com/cnmkit/cnm/internal/nstest"
	"github.com/cnmkit/cnm/sandbox"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// testEnv is a privileged test's world: a fresh "host" namespace, a netlink handle in it,
// and temporary directories for the run directory, files and the host resolv.conf.
type testEnv struct {
	tb     testing.TB
	host   *netns.NS
	hnl    *netlink.Handle
	runDir string
	root   string
	resolv string
}

const hostResolv = "nameserver 192.0.2.53\nnameserver 127.0.0.53\nsearch example.org\n"

func newEnv(tb testing.TB) *testEnv {
	tb.Helper()
	host := nstest.NewNS(tb)
	hnl, err := netlink.NewHandleAt(host.Handle(), unix.NETLINK_ROUTE)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(hnl.Close)
	root := tb.TempDir()
	resolv := filepath.Join(root, "host-resolv.conf")
	if err := os.WriteFile(resolv, []byte(hostResolv), 0o644); err != nil {
		tb.Fatal(err)
	}
	return &testEnv{tb: tb, host: host, hnl: hnl, runDir: tb.TempDir(), root: root, resolv: resolv}
}

// config returns a Config for a ModeNamespace sandbox id in the test's directories.
func (e *testEnv) config(id string) sandbox.Config {
	return sandbox.Config{
		ID:             id,
		RunDir:         e.runDir,
		FilesDir:       filepath.Join(e.root, "files", id),
		HostNetns:      e.host.Path(),
		HostResolvConf: e.resolv,
	}
}

// newSandbox creates a sandbox that the test's cleanup deletes.
func (e *testEnv) newSandbox(cfg sandbox.Config) *sandbox.Namespace {
	e.tb.Helper()
	sb, err := sandbox.New(e.tb.Context(), cfg)
	if err != nil {
		e.tb.Fatalf("New(%s): %v", cfg.ID, err)
	}
	e.tb.Cleanup(func() {
		if err := sb.Delete(context.Background()); err != nil {
			e.tb.Errorf("cleanup: %v", err)
		}
	})
	return sb
}

// vethInto creates a veth pair: hostName, up, in the host namespace, and its peer
// sbName with mac directly in the sandbox, as a driver does.
func (e *testEnv) vethInto(sb sandbox.Sandbox, hostName, sbName string, mac net.HardwareAddr) {
	e.tb.Helper()
	veth := &netlink.Veth{
		LinkAttrs:        netlink.LinkAttrs{Name: hostName},
		PeerName:         sbName,
		PeerHardwareAddr: mac,
		PeerNamespace:    netlink.NsFd(sb.NetnsFD()),
	}
	if err := e.hnl.LinkAdd(veth); err != nil {
		e.tb.Fatalf("add veth %s/%s: %v", hostName, sbName, err)
	}
	if err := e.hnl.LinkSetUp(veth); err != nil {
		e.tb.Fatalf("veth %s up: %v", hostName, err)
	}
}

// bridge creates an up bridge in the host namespace with the given addresses.
func (e *testEnv) bridge(name string, addrs ...string) *netlink.Bridge {
	e.tb.Helper()
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
	if err := e.hnl.LinkAdd(br); err != nil {
		e.tb.Fatal(err)
	}
	for _, a := range addrs {
		p := netip.MustParsePrefix(a)
		if err := e.hnl.AddrAdd(br, &netlink.Addr{IPNet: ipNet(p), Flags: unix.IFA_F_NODAD}); err != nil {
			e.tb.Fatal(err)
		}
	}
	if err := e.hnl.LinkSetUp(br); err != nil {
		e.tb.Fatal(err)
	}
	return br
}

// handleIn returns a netlink handle in the sandbox's namespace, closed at cleanup.
func handleIn(tb testing.TB, sb sandbox.Sandbox) *netlink.Handle {
	tb.Helper()
	ns, err := netns.Open(sb.Key())
	if err != nil {
		tb.Fatal(err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns.Handle(), unix.NETLINK_ROUTE)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(h.Close)
	return h
}

// linkGone reports whether name is absent from h's namespace.
func linkGone(h *netlink.Handle, name string) bool {
	_, err := h.LinkByName(name)
	_, ok := errors.AsType[netlink.LinkNotFoundError](err)
	return ok
}

// waitGone polls until name is absent from h's namespace: the kernel deletes a namespace's
// links asynchronously.
func waitGone(tb testing.TB, h *netlink.Handle, name string) {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !linkGone(h, name) {
		if time.Now().After(deadline) {
			tb.Fatalf("link %s still there after 10s", name)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// routes lists h's main-table routes of family, retrying interrupted dumps.
func routes(tb testing.TB, h *netlink.Handle, family int) []netlink.Route {
	tb.Helper()
	for range 10 {
		rs, err := h.RouteList(nil, family)
		if errors.Is(err, netlink.ErrDumpInterrupted) {
			continue
		}
		if err != nil {
			tb.Fatal(err)
		}
		return rs
	}
	tb.Fatal("route dump interrupted 10 times")
	return nil
}

// defaultVia returns "<gateway> dev <index>" of h's default route of family, or "" for none.
func defaultVia(tb testing.TB, h *netlink.Handle, family int) (gw netip.Addr, index int) {
	tb.Helper()
	for _, r := range routes(tb, h, family) {
		if r.Dst == nil || isZeroPrefix(r.Dst) {
			a, _ := netip.AddrFromSlice(r.Gw)
			return a.Unmap(), r.LinkIndex
		}
	}
	return netip.Addr{}, 0
}

func isZeroPrefix(n *net.IPNet) bool {
	ones, _ := n.Mask.Size()
	return ones == 0
}

// addrsOf returns the addresses of link in h's namespace, of family, as prefixes.
func addrsOf(tb testing.TB, h *netlink.Handle, link netlink.Link, family int) []netip.Prefix {
	tb.Helper()
	as, err := h.AddrList(link, family)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		tb.Fatal(err)
	}
	var out []netip.Prefix
	for _, a := range as {
		ip, _ := netip.AddrFromSlice(a.IP)
		ones, _ := a.Mask.Size()
		p := netip.PrefixFrom(ip.Unmap(), ones)
		if p.Addr().IsLinkLocalUnicast() {
			continue
		}
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	return out
}

func ipNet(p netip.Prefix) *net.IPNet {
	a := p.Addr()
	return &net.IPNet{IP: net.IP(a.AsSlice()), Mask: net.CIDRMask(p.Bits(), a.BitLen())}
}

// sameNS reports whether the descriptor fd and the path are the same namespace.
func sameNS(tb testing.TB, fd int, path string) bool {
	tb.Helper()
	var a, b unix.Stat_t
	if err := unix.Fstat(fd, &a); err != nil {
		tb.Fatal(err)
	}
	if err := unix.Stat(path, &b); err != nil {
		tb.Fatal(err)
	}
	return a.Dev == b.Dev && a.Ino == b.Ino
}

func readFile(tb testing.TB, path string) string {
	tb.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	return string(b)
}

func mustMAC(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}
