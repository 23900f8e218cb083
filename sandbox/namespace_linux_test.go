package sandbox_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/cnmkit/cnm/internal/netns"
	"github.com/cnmkit/cnm/internal/nstest"
	"github.com/cnmkit/cnm/sandbox"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/vishvananda/netlink"
)

var (
	pfx = netip.MustParsePrefix
	ip  = netip.MustParseAddr
	// cmpNet compares netip values by ==.
	cmpNet = cmpopts.EquateComparable(netip.Addr{}, netip.Prefix{})
)

const hostsHead = `127.0.0.1	localhost
::1	localhost ip6-localhost ip6-loopback
fe00::0	ip6-localnet
ff00::0	ip6-mcastprefix
ff02::1	ip6-allnodes
ff02::2	ip6-allrouters
`

func TestPrivilegedNewDelete(t *testing.T) {
	nstest.Privileged(t)
	e := newEnv(t)
	cfg := e.config("c1")
	cfg.Hostname, cfg.Domainname = "web", "example.org"
	cfg.ExtraHosts = []sandbox.Host{{Name: "db", Addr: ip("192.0.2.10")}}
	sb := e.newSandbox(cfg)

	if want := filepath.Join(e.runDir, "netns", "c1"); sb.Key() != want {
		t.Errorf("Key() = %q, want %q", sb.Key(), want)
	}
	if !netns.IsMounted(sb.Key()) {
		t.Fatal("namespace not bind-mounted at Key()")
	}
	if !sameNS(t, sb.NetnsFD(), sb.Key()) {
		t.Error("NetnsFD() is not the namespace at Key()")
	}
	if sameNS(t, sb.NetnsFD(), e.host.Path()) {
		t.Error("sandbox namespace is the host's")
	}
	h := handleIn(t, sb)
	links, err := h.LinkList()
	if err != nil || len(links) != 1 || links[0].Attrs().Name != "lo" {
		t.Fatalf("links in sandbox = %v, %v; want only lo", links, err)
	}
	if links[0].Attrs().Flags&net.FlagUp == 0 {
		t.Error("lo is down")
	}
	if got, want := readFile(t, sb.ResolvConfPath()), "nameserver 192.0.2.53\nsearch example.org\n"; got != want {
		t.Errorf("resolv.conf = %q, want %q", got, want)
	}
	if got, want := readFile(t, sb.HostsPath()), hostsHead+"192.0.2.10\tdb\n"; got != want {
		t.Errorf("hosts = %q, want %q", got, want)
	}
	if ids, err := sandbox.ListNamespaces(e.runDir); err != nil || !slicesEqual(ids, []string{"c1"}) {
		t.Errorf("ListNamespaces() = %v, %v; want [c1]", ids, err)
	}

	// The same ID again: refused, the first untouched.
	_, err = sandbox.New(t.Context(), cfg)
	if !errors.Is(err, errclass.ErrAlreadyExists) {
		t.Fatalf("New with a taken ID = %v, want ErrAlreadyExists", err)
	}
	if !netns.IsMounted(sb.Key()) || !exists(sb.HostsPath()) {
		t.Fatal("failed New disturbed the existing sandbox")
	}

	h.Close()
	if err := sb.Delete(t.Context()); err != nil {
		t.Fatalf("Delete() = %v", err)
	}
	if exists(sb.Key()) {
		t.Error("namespace file left after Delete")
	}
	if exists(cfg.FilesDir) {
		t.Error("files dir left after Delete")
	}
	if err := sb.Delete(t.Context()); err != nil {
		t.Errorf("second Delete() = %v, want nil", err)
	}
	if _, _, err := sb.ReserveName(""); !errors.Is(err, errclass.ErrNotFound) {
		t.Errorf("ReserveName after Delete = %v, want ErrNotFound", err)
	}
	if err := sb.AddInterface(t.Context(), sandbox.InterfaceConfig{Name: "eth0", InSandbox: true}); !errors.Is(err, errclass.ErrNotFound) {
		t.Errorf("AddInterface after Delete = %v, want ErrNotFound", err)
	}
	if err := sb.RemoveInterface(t.Context(), "eth0"); err != nil {
		t.Errorf("RemoveInterface after Delete = %v, want nil", err)
	}
}

// TestPrivilegedNewFailureLeavesNothing makes New fail after the namespace was mounted.
func TestPrivilegedNewFailureLeavesNothing(t *testing.T) {
	nstest.Privileged(t)
	e := newEnv(t)

	// A directory where the hosts file goes: the last step fails.
	cfg := e.config("c1")
	if err := os.MkdirAll(filepath.Join(cfg.FilesDir, "hosts"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := sandbox.New(t.Context(), cfg); err == nil {
		t.Fatal("New succeeded with a directory in place of the hosts file")
	}
	key := filepath.Join(e.runDir, "netns", "c1")
	if exists(key) {
		t.Error("namespace file left after a failed New")
	}
	if exists(filepath.Join(cfg.FilesDir, "resolv.conf")) {
		t.Error("resolv.conf left after a failed New")
	}
	if !exists(filepath.Join(cfg.FilesDir, "hosts")) {
		t.Error("failed New removed a directory it did not make")
	}

	// A bad host namespace: the files dir New made goes.
	cfg = e.config("c2")
	cfg.HostNetns = e.resolv // not a namespace
	if _, err := sandbox.New(t.Context(), cfg); err == nil {
		t.Fatal("New succeeded with a bad host namespace")
	}
	if exists(filepath.Join(e.root, "files", "c2")) {
		t.Error("files dir left after a failed New")
	}
	if exists(filepath.Join(e.runDir, "netns", "c2")) {
		t.Error("namespace file left after a failed New")
	}

	// A canceled context.
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := sandbox.New(ctx, e.config("c3")); !errors.Is(err, context.Canceled) {
		t.Fatalf("New with a canceled context = %v, want context.Canceled", err)
	}
	if exists(filepath.Join(e.root, "files", "c3")) || exists(filepath.Join(e.runDir, "netns", "c3")) {
		t.Error("canceled New left something behind")
	}
}

func TestPrivilegedAddInterfaceInSandbox(t *testing.T) {
	nstest.Privileged(t)
	e := newEnv(t)
	br := e.bridge("br0", "10.99.0.1/24", "fd00:99::1/64")
	cfg := e.config("c1")
	cfg.Hostname = "web"
	sb := e.newSandbox(cfg)

	name, release, err := sb.ReserveName("")
	if err != nil || name != "eth0" {
		t.Fatalf("ReserveName() = %q, %v; want eth0", name, err)
	}
	defer release()
	mac := mustMAC("02:42:0a:63:00:02")
	e.vethInto(sb, "vh0", name, mac)
	hostEnd, err := e.hnl.LinkByName("vh0")
	if err != nil {
		t.Fatal(err)
	}
	if err := e.hnl.LinkSetMaster(hostEnd, br); err != nil {
		t.Fatal(err)
	}

	ic := sandbox.InterfaceConfig{
		Name:        name,
		InSandbox:   true,
		MAC:         mac,
		IPv4:        pfx("10.99.0.2/24"),
		IPv6:        pfx("fd00:99::2/64"),
		Gateway:     ip("10.99.0.1"),
		GatewayIPv6: ip("fd00:99::1"),
		Routes: []sandbox.Route{
			{Destination: pfx("192.0.2.0/24"), NextHop: ip("10.99.0.1")},
			{Destination: pfx("198.51.100.0/24")},
		},
	}
	if err := sb.AddInterface(t.Context(), ic); err != nil {
		t.Fatalf("AddInterface() = %v", err)
	}

	h := handleIn(t, sb)
	link, err := h.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		t.Error("interface is down")
	}
	if got := link.Attrs().HardwareAddr.String(); got != mac.String() {
		t.Errorf("MAC = %s, want %s", got, mac)
	}
	if diff := cmp.Diff([]netip.Prefix{pfx("10.99.0.2/24")}, addrsOf(t, h, link, netlink.FAMILY_V4), cmpNet); diff != "" {
		t.Errorf("IPv4 addresses (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]netip.Prefix{pfx("fd00:99::2/64")}, addrsOf(t, h, link, netlink.FAMILY_V6), cmpNet); diff != "" {
		t.Errorf("IPv6 addresses (-want +got):\n%s", diff)
	}
	if gw, idx := defaultVia(t, h, netlink.FAMILY_V4); gw != ip("10.99.0.1") || idx != link.Attrs().Index {
		t.Errorf("IPv4 default route via %v dev %d, want via 10.99.0.1 dev %d", gw, idx, link.Attrs().Index)
	}
	if gw, idx := defaultVia(t, h, netlink.FAMILY_V6); gw != ip("fd00:99::1") || idx != link.Attrs().Index {
		t.Errorf("IPv6 default route via %v dev %d, want via fd00:99::1 dev %d", gw, idx, link.Attrs().Index)
	}
	var extra []string
	for _, r := range routes(t, h, netlink.FAMILY_V4) {
		if r.Dst != nil && (r.Dst.String() == "192.0.2.0/24" || r.Dst.String() == "198.51.100.0/24") {
			extra = append(extra, fmt.Sprintf("%s via %v scope %v", r.Dst, r.Gw, r.Scope))
		}
	}
	wantExtra := []string{"192.0.2.0/24 via 10.99.0.1 scope universe", "198.51.100.0/24 via <nil> scope link"}
	if diff := cmp.Diff(wantExtra, extra); diff != "" {
		t.Errorf("extra routes (-want +got):\n%s", diff)
	}

	if out, ok := nstest.Ping(sb.Key(), "10.99.0.1", 2); !ok {
		t.Errorf("ping 10.99.0.1 from the sandbox failed: %s", out)
	}
	// No duplicate address detection: the IPv6 address works at once.
	if out, ok := nstest.Ping(sb.Key(), "fd00:99::1", 2); !ok {
		t.Errorf("ping fd00:99::1 from the sandbox failed: %s", out)
	}

	want := []sandbox.Interface{{
		Name: name, MAC: mac, IPv4: ic.IPv4, IPv6: ic.IPv6, Gateway: ic.Gateway,
		GatewayIPv6: ic.GatewayIPv6, Routes: ic.Routes,
	}}
	if diff := cmp.Diff(want, sb.Interfaces(), cmpNet); diff != "" {
		t.Errorf("Interfaces() (-want +got):\n%s", diff)
	}
	if got, want := readFile(t, sb.HostsPath()), hostsHead+"10.99.0.2\tweb\nfd00:99::2\tweb\n"; got != want {
		t.Errorf("hosts = %q, want %q", got, want)
	}
	// The name is used: the next reservation skips it, and its release is a no-op.
	release()
	if n, rel, _ := sb.ReserveName(""); n != "eth1" {
		t.Errorf("ReserveName() = %q, want eth1", n)
	} else {
		rel()
	}
}

func TestPrivilegedAddInterfaceSrcName(t *testing.T) {
	nstest.Privileged(t)
	e := newEnv(t)
	sb := e.newSandbox(e.config("c1"))

	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "vs0"}, PeerName: "vs0p"}
	if err := e.hnl.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	mac := mustMAC("02:42:0a:63:00:07")
	ic := sandbox.InterfaceConfig{Name: "eth0", SrcName: "vs0p", MAC: mac, IPv4: pfx("10.99.0.7/24"), Gateway: ip("10.99.0.1")}
	if err := sb.AddInterface(t.Context(), ic); err != nil {
		t.Fatalf("AddInterface() = %v", err)
	}
	if !linkGone(e.hnl, "vs0p") {
		t.Error("vs0p still in the host namespace")
	}
	if linkGone(e.hnl, "vs0") {
		t.Error("host end vs0 gone")
	}
	h := handleIn(t, sb)
	link, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatalf("eth0 not in the sandbox: %v", err)
	}
	if link.Attrs().HardwareAddr.String() != mac.String() || link.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("eth0 MAC %s flags %v, want %s and up", link.Attrs().HardwareAddr, link.Attrs().Flags, mac)
	}
	if diff := cmp.Diff([]netip.Prefix{pfx("10.99.0.7/24")}, addrsOf(t, h, link, netlink.FAMILY_V4), cmpNet); diff != "" {
		t.Errorf("addresses (-want +got):\n%s", diff)
	}
	if gw, idx := defaultVia(t, h, netlink.FAMILY_V4); gw != ip("10.99.0.1") || idx != link.Attrs().Index {
		t.Errorf("default route via %v dev %d, want via 10.99.0.1 dev %d", gw, idx, link.Attrs().Index)
	}
}

// TestPrivilegedAddInterfaceInSandboxMAC checks what AddInterface learns of an InSandbox link
// (by ioctl, not netlink): with no MAC given, the link's own is the interface's; with another
// MAC given, the link takes it.
func TestPrivilegedAddInterfaceInSandboxMAC(t *testing.T) {
	nstest.Privileged(t)
	e := newEnv(t)
	sb := e.newSandbox(e.config("c1"))
	h := handleIn(t, sb)

	e.vethInto(sb, "vh0", "eth0", nil)
	if err := sb.AddInterface(t.Context(), sandbox.InterfaceConfig{Name: "eth0", InSandbox: true, IPv4: pfx("10.99.0.2/24")}); err != nil {
		t.Fatalf("AddInterface(eth0) = %v", err)
	}
	e.vethInto(sb, "vh1", "eth1", mustMAC("02:42:0a:62:00:01"))
	want := mustMAC("02:42:0a:62:00:02")
	if err := sb.AddInterface(t.Context(), sandbox.InterfaceConfig{Name: "eth1", InSandbox: true, MAC: want, IPv4: pfx("10.98.0.2/24")}); err != nil {
		t.Fatalf("AddInterface(eth1) = %v", err)
	}
	l0, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	l1, err := h.LinkByName("eth1")
	if err != nil {
		t.Fatal(err)
	}
	if got := l1.Attrs().HardwareAddr.String(); got != want.String() {
		t.Errorf("eth1's MAC = %s, want %s", got, want)
	}
	ifs := sb.Interfaces()
	if len(ifs) != 2 || ifs[0].MAC.String() != l0.Attrs().HardwareAddr.String() || ifs[1].MAC.String() != want.String() {
		t.Errorf("Interfaces() = %+v, want eth0 with MAC %s and eth1 with %s", ifs, l0.Attrs().HardwareAddr, want)
	}
	for _, l := range []netlink.Link{l0, l1} {
		if l.Attrs().Flags&net.FlagUp == 0 {
			t.Errorf("%s is down", l.Attrs().Name)
		}
	}
}

func TestPrivilegedDefaultRouteHandover(t *testing.T) {
	nstest.Privileged(t)
	e := newEnv(t)
	cfg := e.config("c1")
	cfg.Hostname = "web"
	sb := e.newSandbox(cfg)
	h := handleIn(t, sb)

	add := func(name, hostName, v4, gw4, v6, gw6 string) int {
		t.Helper()
		e.vethInto(sb, hostName, name, nil)
		ic := sandbox.InterfaceConfig{Name: name, InSandbox: true, IPv4: pfx(v4), Gateway: ip(gw4), IPv6: pfx(v6), GatewayIPv6: ip(gw6)}
		if err := sb.AddInterface(t.Context(), ic); err != nil {
			t.Fatalf("AddInterface(%s) = %v", name, err)
		}
		l, err := h.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		return l.Attrs().Index
	}
	i0 := add("eth0", "vh0", "10.99.0.2/24", "10.99.0.1", "fd00:99::2/64", "fd00:99::1")
	i1 := add("eth1", "vh1", "10.98.0.2/24", "10.98.0.1", "fd00:98::2/64", "fd00:98::1")

	check := func(family int, wantGW netip.Addr, wantIdx int) {
		t.Helper()
		if gw, idx := defaultVia(t, h, family); gw != wantGW || idx != wantIdx {
			t.Errorf("default route (family %d) via %v dev %d, want via %v dev %d", family, gw, idx, wantGW, wantIdx)
		}
	}
	check(netlink.FAMILY_V4, ip("10.99.0.1"), i0)
	check(netlink.FAMILY_V6, ip("fd00:99::1"), i0)

	if err := sb.RemoveInterface(t.Context(), "eth0"); err != nil {
		t.Fatalf("RemoveInterface(eth0) = %v", err)
	}
	if !linkGone(h, "eth0") {
		t.Error("eth0 still in the sandbox")
	}
	waitGone(t, e.hnl, "vh0")
	check(netlink.FAMILY_V4, ip("10.98.0.1"), i1)
	check(netlink.FAMILY_V6, ip("fd00:98::1"), i1)
	if got, want := readFile(t, sb.HostsPath()), hostsHead+"10.98.0.2\tweb\nfd00:98::2\tweb\n"; got != want {
		t.Errorf("hosts = %q, want %q", got, want)
	}
	if ifs := sb.Interfaces(); len(ifs) != 1 || ifs[0].Name != "eth1" {
		t.Errorf("Interfaces() = %v, want only eth1", ifs)
	}

	for _, name := range []string{"eth0", "nope"} {
		if err := sb.RemoveInterface(t.Context(), name); err != nil {
			t.Errorf("RemoveInterface(%s) of a missing interface = %v, want nil", name, err)
		}
	}
	// The last one goes: no default route is left.
	if err := sb.RemoveInterface(t.Context(), "eth1"); err != nil {
		t.Fatal(err)
	}
	check(netlink.FAMILY_V4, netip.Addr{}, 0)
	check(netlink.FAMILY_V6, netip.Addr{}, 0)

	// An interface whose link vanished is removed without error.
	e.vethInto(sb, "vh2", "eth2", nil)
	if err := sb.AddInterface(t.Context(), sandbox.InterfaceConfig{Name: "eth2", InSandbox: true, IPv4: pfx("10.97.0.2/24"), Gateway: ip("10.97.0.1")}); err != nil {
		t.Fatal(err)
	}
	if err := e.hnl.LinkDel(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: "vh2"}}); err != nil {
		t.Fatal(err)
	}
	waitGone(t, h, "eth2")
	if err := sb.RemoveInterface(t.Context(), "eth2"); err != nil {
		t.Errorf("RemoveInterface of a vanished link = %v, want nil", err)
	}
	if got := sb.Interfaces(); len(got) != 0 {
		t.Errorf("Interfaces() = %v, want none", got)
	}
}

func TestPrivilegedAddInterfaceFailures(t *testing.T) {
	nstest.Privileged(t)
	e := newEnv(t)
	sb := e.newSandbox(e.config("c1"))
	h := handleIn(t, sb)
	hostsBefore := readFile(t, sb.HostsPath())

	// assertClean checks that nothing of a failed add is left.
	assertClean := func(t *testing.T, names ...string) {
		t.Helper()
		for _, n := range names {
			if !linkGone(h, n) {
				t.Errorf("link %s left in the sandbox", n)
			}
		}
		if got := sb.Interfaces(); len(got) != 0 {
			t.Errorf("Interfaces() = %v, want none", got)
		}
		if gw, _ := defaultVia(t, h, netlink.FAMILY_V4); gw.IsValid() {
			t.Errorf("default route via %v left", gw)
		}
		if got := readFile(t, sb.HostsPath()); got != hostsBefore {
			t.Errorf("hosts changed: %q", got)
		}
		n, rel, err := sb.ReserveName("")
		if err != nil || n != "eth0" {
			t.Errorf("ReserveName() = %q, %v; want eth0 free again", n, err)
		} else {
			rel()
		}
	}

	t.Run("bad name", func(t *testing.T) {
		err := sb.AddInterface(t.Context(), sandbox.InterfaceConfig{Name: "bad/name", InSandbox: true})
		if !errors.Is(err, errclass.ErrInvalidParameter) {
			t.Fatalf("AddInterface = %v, want ErrInvalidParameter", err)
		}
		assertClean(t)
	})
	t.Run("bad address", func(t *testing.T) {
		e.vethInto(sb, "vh0", "eth0", nil)
		err := sb.AddInterface(t.Context(), sandbox.InterfaceConfig{Name: "eth0", InSandbox: true, IPv4: pfx("fd00::2/64")})
		if !errors.Is(err, errclass.ErrInvalidParameter) {
			t.Fatalf("AddInterface = %v, want ErrInvalidParameter", err)
		}
		assertClean(t, "eth0")
		waitGone(t, e.hnl, "vh0")
	})
	t.Run("unreachable gateway", func(t *testing.T) {
		e.vethInto(sb, "vh0", "eth0", nil)
		err := sb.AddInterface(t.Context(), sandbox.InterfaceConfig{
			Name: "eth0", InSandbox: true, IPv4: pfx("10.99.0.2/24"), Gateway: ip("192.0.2.1"),
		})
		if err == nil {
			t.Fatal("AddInterface with an off-link gateway succeeded")
		}
		if !strings.Contains(err.Error(), "sandbox c1: add interface eth0: ") {
			t.Errorf("error %q does not name the sandbox and interface", err)
		}
		assertClean(t, "eth0")
		waitGone(t, e.hnl, "vh0")
	})
	t.Run("missing source", func(t *testing.T) {
		err := sb.AddInterface(t.Context(), sandbox.InterfaceConfig{Name: "eth0", SrcName: "nosuch"})
		if _, ok := errors.AsType[netlink.LinkNotFoundError](err); !ok {
			t.Fatalf("AddInterface = %v, want a link not found error", err)
		}
		assertClean(t, "eth0", "nosuch")
	})
	t.Run("missing in sandbox", func(t *testing.T) {
		err := sb.AddInterface(t.Context(), sandbox.InterfaceConfig{Name: "eth0", InSandbox: true})
		if _, ok := errors.AsType[netlink.LinkNotFoundError](err); !ok {
			t.Fatalf("AddInterface = %v, want a link not found error", err)
		}
		if msg := err.Error(); !strings.HasPrefix(msg, "sandbox c1: add interface eth0: find link: ") || !strings.HasSuffix(msg, "not found") {
			t.Errorf("AddInterface = %q, want it to say the link was not found", msg)
		}
		assertClean(t, "eth0")
	})
	t.Run("moved then failed", func(t *testing.T) {
		if err := e.hnl.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "vs0"}, PeerName: "vs0p"}); err != nil {
			t.Fatal(err)
		}
		err := sb.AddInterface(t.Context(), sandbox.InterfaceConfig{
			Name: "eth0", SrcName: "vs0p", IPv4: pfx("10.99.0.2/24"), Gateway: ip("192.0.2.1"),
		})
		if err == nil {
			t.Fatal("AddInterface with an off-link gateway succeeded")
		}
		assertClean(t, "eth0", "vs0p")
		// Deleting the moved end takes the host end with it.
		waitGone(t, e.hnl, "vs0")
		if !linkGone(e.hnl, "vs0p") {
			t.Error("vs0p back in the host namespace")
		}
	})
	t.Run("canceled", func(t *testing.T) {
		e.vethInto(sb, "vh0", "eth0", nil)
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		err := sb.AddInterface(ctx, sandbox.InterfaceConfig{Name: "eth0", InSandbox: true, IPv4: pfx("10.99.0.2/24")})
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("AddInterface = %v, want context.Canceled", err)
		}
		assertClean(t, "eth0")
		waitGone(t, e.hnl, "vh0")
	})
	t.Run("name in use", func(t *testing.T) {
		e.vethInto(sb, "vh0", "eth0", nil)
		ic := sandbox.InterfaceConfig{Name: "eth0", InSandbox: true, IPv4: pfx("10.99.0.2/24"), Gateway: ip("10.99.0.1")}
		if err := sb.AddInterface(t.Context(), ic); err != nil {
			t.Fatal(err)
		}
		if err := sb.AddInterface(t.Context(), ic); !errors.Is(err, errclass.ErrAlreadyExists) {
			t.Fatalf("second AddInterface = %v, want ErrAlreadyExists", err)
		}
		if linkGone(h, "eth0") {
			t.Fatal("a refused add deleted the configured link")
		}
		if gw, _ := defaultVia(t, h, netlink.FAMILY_V4); gw != ip("10.99.0.1") {
			t.Errorf("default route via %v, want 10.99.0.1", gw)
		}
		if err := sb.RemoveInterface(t.Context(), "eth0"); err != nil {
			t.Fatal(err)
		}
		assertClean(t, "eth0")
	})
}

func TestPrivilegedDelete(t *testing.T) {
	nstest.Privileged(t)
	e := newEnv(t)
	cfg := e.config("c1")
	sb, err := sandbox.New(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	for i, name := range []string{"eth0", "eth1"} {
		e.vethInto(sb, "vh"+name, name, nil)
		ic := sandbox.InterfaceConfig{Name: name, InSandbox: true, IPv4: pfx(fmt.Sprintf("10.9%d.0.2/24", i)), Gateway: ip(fmt.Sprintf("10.9%d.0.1", i))}
		if err := sb.AddInterface(t.Context(), ic); err != nil {
			t.Fatal(err)
		}
	}
	if err := sb.Delete(t.Context()); err != nil {
		t.Fatalf("Delete() = %v", err)
	}
	if netns.IsMounted(sb.Key()) || exists(sb.Key()) {
		t.Error("namespace still mounted after Delete")
	}
	if exists(cfg.FilesDir) {
		t.Error("files dir left after Delete")
	}
	// The kernel deletes the namespace, its veths and their host ends.
	waitGone(t, e.hnl, "vheth0")
	waitGone(t, e.hnl, "vheth1")
	if err := sb.Delete(t.Context()); err != nil {
		t.Errorf("second Delete() = %v, want nil", err)
	}
}

// TestPrivilegedDeleteKeepsForeignFiles checks that Delete removes only its own files.
func TestPrivilegedDeleteKeepsForeignFiles(t *testing.T) {
	nstest.Privileged(t)
	e := newEnv(t)
	cfg := e.config("c1")
	sb, err := sandbox.New(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(cfg.FilesDir, "hostname")
	if err := os.WriteFile(other, []byte("web\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := sb.Delete(t.Context()); err != nil {
		t.Fatalf("Delete() = %v", err)
	}
	if !exists(other) || exists(sb.HostsPath()) || exists(sb.ResolvConfPath()) {
		t.Error("Delete removed a foreign file or left its own")
	}
}

func TestPrivilegedModeHost(t *testing.T) {
	nstest.Privileged(t)
	e := newEnv(t)
	cfg := e.config("h1")
	cfg.Mode, cfg.RunDir = sandbox.ModeHost, ""
	sb := e.newSandbox(cfg)
	if sb.Key() != e.host.Path() {
		t.Errorf("Key() = %q, want the host namespace %q", sb.Key(), e.host.Path())
	}
	if !sameNS(t, sb.NetnsFD(), e.host.Path()) {
		t.Error("NetnsFD() is not the host namespace")
	}
	if _, _, err := sb.ReserveName(""); !errors.Is(err, errclass.ErrConflict) {
		t.Errorf("ReserveName() = %v, want ErrConflict", err)
	}
	if err := sb.AddInterface(t.Context(), sandbox.InterfaceConfig{Name: "eth0", InSandbox: true}); !errors.Is(err, errclass.ErrConflict) {
		t.Errorf("AddInterface() = %v, want ErrConflict", err)
	}
	if ids, _ := sandbox.ListNamespaces(e.runDir); len(ids) != 0 {
		t.Errorf("ListNamespaces() = %v, want none for a host sandbox", ids)
	}
	if err := sb.Delete(t.Context()); err != nil {
		t.Fatal(err)
	}
	if !netns.IsMounted(e.host.Path()) || exists(cfg.FilesDir) {
		t.Error("Delete of a host sandbox removed the host namespace or left its files")
	}

	// Without HostNetns: the calling thread's namespace, named through the descriptor.
	cfg = e.config("h2")
	cfg.Mode, cfg.RunDir, cfg.HostNetns = sandbox.ModeHost, "", ""
	sb2 := e.newSandbox(cfg)
	self, err := os.Readlink("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	if got, err := os.Readlink(sb2.Key()); err != nil || got != self {
		t.Errorf("Key() %q is namespace %q (%v), want the caller's %q", sb2.Key(), got, err, self)
	}
}

func TestPrivilegedModeContainer(t *testing.T) {
	nstest.Privileged(t)
	e := newEnv(t)
	base := e.newSandbox(e.config("base"))
	cfg := e.config("side")
	cfg.Mode, cfg.RunDir, cfg.Share = sandbox.ModeContainer, "", base
	side := e.newSandbox(cfg)

	if side.Key() != base.Key() || !sameNS(t, side.NetnsFD(), base.Key()) {
		t.Errorf("shared sandbox key %q, want %q and the same namespace", side.Key(), base.Key())
	}
	_, _, err := side.ReserveName("")
	if !errors.Is(err, errclass.ErrConflict) || !strings.Contains(err.Error(), `connect "base" instead`) {
		t.Errorf("ReserveName() = %v, want a conflict naming base", err)
	}
	if err := side.AddInterface(t.Context(), sandbox.InterfaceConfig{Name: "eth0", InSandbox: true}); !errors.Is(err, errclass.ErrConflict) {
		t.Errorf("AddInterface() = %v, want ErrConflict", err)
	}
	if err := side.Delete(t.Context()); err != nil {
		t.Fatal(err)
	}
	if !netns.IsMounted(base.Key()) {
		t.Fatal("deleting the sharing sandbox removed the shared namespace")
	}

	if err := base.Delete(t.Context()); err != nil {
		t.Fatal(err)
	}
	cfg = e.config("late")
	cfg.Mode, cfg.RunDir, cfg.Share = sandbox.ModeContainer, "", base
	_, err = sandbox.New(t.Context(), cfg)
	nf, ok := errors.AsType[*errclass.NotFoundError](err)
	if !ok || nf.Name != "base" || !errors.Is(err, errclass.ErrNotFound) {
		t.Fatalf("New sharing a deleted sandbox = %v, want NotFound naming base", err)
	}
	if exists(cfg.FilesDir) {
		t.Error("failed New left its files dir")
	}
}

func TestPrivilegedOpen(t *testing.T) {
	nstest.Privileged(t)
	e := newEnv(t)
	cfg := e.config("c1")
	cfg.Hostname = "web"
	first := e.newSandbox(cfg)
	for i, name := range []string{"eth0", "eth1", "eth2"} {
		e.vethInto(first, "vh"+name, name, nil)
		ic := sandbox.InterfaceConfig{Name: name, InSandbox: true, IPv4: pfx(fmt.Sprintf("10.9%d.0.2/24", i)), Gateway: ip(fmt.Sprintf("10.9%d.0.1", i))}
		if err := first.AddInterface(t.Context(), ic); err != nil {
			t.Fatal(err)
		}
	}
	saved := first.Interfaces()
	// "Restart": the process lets go of the sandbox, and eth0 vanishes meanwhile.
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := first.ReserveName(""); !errors.Is(err, errclass.ErrNotFound) {
		t.Errorf("ReserveName after Close = %v, want ErrNotFound", err)
	}
	if !netns.IsMounted(first.Key()) {
		t.Fatal("Close removed the namespace")
	}
	if err := e.hnl.LinkDel(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: "vheth0"}}); err != nil {
		t.Fatal(err)
	}

	sb, dropped, err := sandbox.Open(t.Context(), cfg, saved)
	if err != nil {
		t.Fatalf("Open() = %v", err)
	}
	t.Cleanup(func() {
		if err := sb.Delete(context.Background()); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	if diff := cmp.Diff([]string{"eth0"}, dropped); diff != "" {
		t.Errorf("dropped (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(saved[1:], sb.Interfaces(), cmpNet); diff != "" {
		t.Errorf("Interfaces() (-want +got):\n%s", diff)
	}
	h := handleIn(t, sb)
	eth1, err := h.LinkByName("eth1")
	if err != nil {
		t.Fatal(err)
	}
	if gw, idx := defaultVia(t, h, netlink.FAMILY_V4); gw != ip("10.91.0.1") || idx != eth1.Attrs().Index {
		t.Errorf("default route via %v dev %d, want via 10.91.0.1 dev %d (taken over from eth0)", gw, idx, eth1.Attrs().Index)
	}
	if got, want := readFile(t, sb.HostsPath()), hostsHead+"10.91.0.2\tweb\n10.92.0.2\tweb\n"; got != want {
		t.Errorf("hosts = %q, want %q", got, want)
	}
	if n, rel, _ := sb.ReserveName(""); n != "eth0" {
		t.Errorf("ReserveName() = %q, want eth0", n)
	} else {
		rel()
	}
	if err := sb.RemoveInterface(t.Context(), "eth1"); err != nil {
		t.Fatal(err)
	}
	if gw, _ := defaultVia(t, h, netlink.FAMILY_V4); gw != ip("10.92.0.1") {
		t.Errorf("default route via %v, want 10.92.0.1", gw)
	}

	// Nothing mounted: not found.
	_, _, err = sandbox.Open(t.Context(), e.config("nope"), nil)
	if !errors.Is(err, errclass.ErrNotFound) {
		t.Errorf("Open of a missing sandbox = %v, want ErrNotFound", err)
	}
}

func TestPrivilegedListRemoveNamespaces(t *testing.T) {
	nstest.Privileged(t)
	e := newEnv(t)
	if ids, err := sandbox.ListNamespaces(filepath.Join(e.runDir, "missing")); err != nil || ids != nil {
		t.Fatalf("ListNamespaces(missing) = %v, %v; want none", ids, err)
	}
	e.newSandbox(e.config("s1"))
	s2 := e.newSandbox(e.config("s2"))
	dir := filepath.Join(e.runDir, "netns")
	if err := os.WriteFile(filepath.Join(dir, "stale"), nil, 0o444); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, ".hidden"), nil, 0o444); err != nil {
		t.Fatal(err)
	}
	ids, err := sandbox.ListNamespaces(e.runDir)
	if diff := cmp.Diff([]string{"s1", "s2", "stale"}, ids); err != nil || diff != "" {
		t.Fatalf("ListNamespaces() err %v, (-want +got):\n%s", err, diff)
	}

	// s2 as a crash leaves it: still mounted, nobody holding it.
	if err := s2.Close(); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"s2", "stale", "stale"} {
		if err := sandbox.RemoveNamespace(e.runDir, id); err != nil {
			t.Errorf("RemoveNamespace(%s) = %v", id, err)
		}
	}
	if exists(filepath.Join(dir, "s2")) || exists(filepath.Join(dir, "stale")) {
		t.Error("RemoveNamespace left a file")
	}
	ids, err = sandbox.ListNamespaces(e.runDir)
	if diff := cmp.Diff([]string{"s1"}, ids); err != nil || diff != "" {
		t.Errorf("ListNamespaces() err %v, (-want +got):\n%s", err, diff)
	}
}

// TestPrivilegedConcurrent adds and removes interfaces from many goroutines; run with -race.
func TestPrivilegedConcurrent(t *testing.T) {
	nstest.Privileged(t)
	e := newEnv(t)
	sb := e.newSandbox(e.config("c1"))
	const n = 8
	var wg sync.WaitGroup
	errc := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			name, release, err := sb.ReserveName("")
			if err != nil {
				errc <- err
				return
			}
			defer release()
			veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: fmt.Sprintf("vh%d", i)}, PeerName: name, PeerNamespace: netlink.NsFd(sb.NetnsFD())}
			if err := e.hnl.LinkAdd(veth); err != nil {
				errc <- err
				return
			}
			ic := sandbox.InterfaceConfig{Name: name, InSandbox: true, IPv4: pfx(fmt.Sprintf("10.80.%d.2/24", i)), Gateway: ip(fmt.Sprintf("10.80.%d.1", i))}
			if err := sb.AddInterface(t.Context(), ic); err != nil {
				errc <- err
				return
			}
			_ = sb.Interfaces()
			if i%2 == 0 {
				if err := sb.RemoveInterface(t.Context(), name); err != nil {
					errc <- err
				}
			}
		})
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	ifs := sb.Interfaces()
	if len(ifs) != n/2 {
		t.Fatalf("Interfaces() = %d, want %d", len(ifs), n/2)
	}
	// Exactly one default route, through a remaining interface and its gateway. Which one
	// depends on the order the adds claimed their names.
	h := handleIn(t, sb)
	var defaults []string
	for _, r := range routes(t, h, netlink.FAMILY_V4) {
		if r.Dst == nil || isZeroPrefix(r.Dst) {
			link, err := h.LinkByIndex(r.LinkIndex)
			if err != nil {
				t.Fatal(err)
			}
			defaults = append(defaults, fmt.Sprintf("via %v dev %s", r.Gw, link.Attrs().Name))
		}
	}
	var candidates []string
	for _, ifc := range ifs {
		candidates = append(candidates, fmt.Sprintf("via %v dev %s", ifc.Gateway, ifc.Name))
	}
	if len(defaults) != 1 || !slices.Contains(candidates, defaults[0]) {
		t.Errorf("default routes %q, want one of %q", defaults, candidates)
	}
	hosts := readFile(t, sb.HostsPath())
	for _, ifc := range ifs {
		if !strings.Contains(hosts, ifc.IPv4.Addr().String()+"\t") {
			t.Errorf("hosts lacks %v:\n%s", ifc.IPv4.Addr(), hosts)
		}
	}
	if strings.Count(hosts, "\n") != strings.Count(hostsHead, "\n")+n/2 {
		t.Errorf("hosts has stale lines:\n%s", hosts)
	}
}

func slicesEqual(a, b []string) bool { return cmp.Equal(a, b) }
