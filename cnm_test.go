package cnm_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"text/template"
	"time"

	"github.com/cnmkit/cnm"
	"github.com/cnmkit/cnm/endpoint"
	"github.com/cnmkit/cnm/internal/netns"
	"github.com/cnmkit/cnm/internal/nstest"
	"github.com/cnmkit/cnm/ipam"
	"github.com/cnmkit/cnm/network"
	"github.com/cnmkit/cnm/sandbox"
	"github.com/vishvananda/netlink"
)

// lab is a Controller working on a throwaway host namespace.
type lab struct {
	host    *netns.NS
	dataDir string
	runDir  string
	c       *cnm.Controller
}

func newLab(t *testing.T) *lab {
	t.Helper()
	l := &lab{host: nstest.NewNS(t), dataDir: t.TempDir(), runDir: t.TempDir()}
	l.c = l.open(t)
	return l
}

// open starts a Controller on the lab's directories (again, for restart tests).
func (l *lab) open(t *testing.T) *cnm.Controller {
	t.Helper()
	c, err := cnm.New(t.Context(), cnm.Config{DataDir: l.dataDir, RunDir: l.runDir, HostNetns: l.host.Path()})
	if err != nil {
		t.Fatalf("cnm.New: %v", err)
	}
	t.Cleanup(func() {
		// Whatever a test left: remove sandboxes so no namespace stays mounted.
		for _, sb := range c.Sandboxes() {
			c.DeleteSandbox(context.Background(), sb.ID())
		}
		c.Close()
	})
	return c
}

// links returns the names of the links in the namespace, sorted.
func links(t testing.TB, path string) []string {
	t.Helper()
	ns, err := netns.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns.Handle())
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	ls, err := h.LinkList()
	for try := 0; dumpInterrupted(err) && try < 10; try++ {
		ls, err = h.LinkList() // a link changed during the dump (a namespace being torn down)
	}
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range ls {
		names = append(names, l.Attrs().Name)
	}
	sort.Strings(names)
	return names
}

// waitLinks waits until the namespace holds exactly want: a removed namespace's veths are
// deleted by the kernel asynchronously, shortly after the namespace's last reference goes.
func waitLinks(t *testing.T, path string, want ...string) {
	t.Helper()
	sort.Strings(want)
	var got []string
	for range 100 {
		if got = links(t, path); slices.Equal(got, want) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("links in %s = %v, want %v", path, got, want)
}

// namespaces returns the sandbox namespaces mounted under the lab's run dir.
func (l *lab) namespaces(t *testing.T) []string {
	ids, err := sandbox.ListNamespaces(l.runDir)
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

func mustNetwork(t *testing.T, c *cnm.Controller, name string, opts ...network.Option) network.Network {
	t.Helper()
	n, err := c.NewNetwork(t.Context(), name, "bridge", opts...)
	if err != nil {
		t.Fatalf("NewNetwork %s: %v", name, err)
	}
	return n
}

func mustSandbox(t testing.TB, c *cnm.Controller, id string, opts ...cnm.SandboxOption) sandbox.Sandbox {
	t.Helper()
	sb, err := c.NewSandbox(t.Context(), id, opts...)
	if err != nil {
		t.Fatalf("NewSandbox %s: %v", id, err)
	}
	return sb
}

func mustConnect(t testing.TB, c *cnm.Controller, nw, sb string, opts ...endpoint.Option) endpoint.Endpoint {
	t.Helper()
	ep, err := c.Connect(t.Context(), nw, sb, opts...)
	if err != nil {
		t.Fatalf("Connect %s to %s: %v", sb, nw, err)
	}
	return ep
}

func pingOK(t *testing.T, from sandbox.Sandbox, to netip.Addr) {
	t.Helper()
	if out, ok := nstest.Ping(from.Key(), to.String(), 2); !ok {
		t.Fatalf("ping %s -> %s failed, want replies:\n%s", from.ID(), to, out)
	}
}

func pingFails(t *testing.T, from sandbox.Sandbox, to netip.Addr) {
	t.Helper()
	if out, ok := nstest.Ping(from.Key(), to.String(), 1); ok {
		t.Fatalf("ping %s -> %s answered, want no reply:\n%s", from.ID(), to, out)
	}
}

// TestPrivilegedSeed is the seed scenario of the core issue.
func TestPrivilegedSeed(t *testing.T) {
	nstest.Privileged(t)
	ctx := t.Context()
	l := newLab(t)
	c := l.c

	mustNetwork(t, c, "new_bridge", network.WithSubnet(netip.MustParsePrefix("10.10.0.0/24")))
	db := mustSandbox(t, c, "db")
	mustConnect(t, c, "new_bridge", "db")
	web := mustSandbox(t, c, "web")
	webDefault := mustConnect(t, c, cnm.DefaultNetwork, "web")

	// db and web share no network: no way across.
	pingFails(t, db, webDefault.Info().IPv4.Addr())

	// Connect web to new_bridge: two interfaces, two addresses, and db reaches it.
	webNew := mustConnect(t, c, "new_bridge", "web")
	ifs := web.Interfaces()
	if len(ifs) != 2 || ifs[0].Name != "eth0" || ifs[1].Name != "eth1" {
		t.Fatalf("web interfaces = %+v, want eth0 and eth1", ifs)
	}
	if got := links(t, web.Key()); !slices.Equal(got, []string{"eth0", "eth1", "lo"}) {
		t.Fatalf("links in web's namespace = %v", got)
	}
	if a := webNew.Info().IPv4; !netip.MustParsePrefix("10.10.0.0/24").Contains(a.Addr()) || a.Bits() != 24 {
		t.Fatalf("web's new_bridge address = %v, want one in 10.10.0.0/24", a)
	}
	pingOK(t, db, webNew.Info().IPv4.Addr())

	// Disconnect web from the default bridge; inspect shows who is where.
	if err := c.Disconnect(ctx, cnm.DefaultNetwork, "web"); err != nil {
		t.Fatal(err)
	}
	if got := web.Interfaces(); len(got) != 1 || got[0].Name != "eth1" {
		t.Fatalf("web interfaces after disconnect = %+v, want eth1 only", got)
	}
	pingOK(t, db, webNew.Info().IPv4.Addr())
	nb, _ := c.Network("new_bridge")
	in := nb.Inspect()
	if len(in.Containers) != 2 || in.Containers["db"].IPv4Address == "" || in.Containers["web"].IPv4Address != webNew.Info().IPv4.String() {
		t.Fatalf("new_bridge containers = %+v", in.Containers)
	}
	def, _ := c.Network(cnm.DefaultNetwork)
	if got := def.Inspect().Containers; len(got) != 0 {
		t.Fatalf("bridge containers after disconnect = %+v, want none", got)
	}

	// A network with endpoints cannot go.
	err := c.DeleteNetwork(ctx, "new_bridge")
	if !errors.Is(err, cnm.ErrConflict) {
		t.Fatalf("DeleteNetwork with endpoints = %v, want ErrConflict", err)
	}

	brName := "br-" + nb.ID()[:12]
	if got := links(t, l.host.Path()); !slices.Contains(got, brName) {
		t.Fatalf("host links = %v, want %s", got, brName)
	}
	for _, id := range []string{"db", "web"} {
		if err := c.Disconnect(ctx, "new_bridge", id); err != nil {
			t.Fatal(err)
		}
		if err := c.DeleteSandbox(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.DeleteNetwork(ctx, "new_bridge"); err != nil {
		t.Fatal(err)
	}
	waitLinks(t, l.host.Path(), cnm.DefaultBridge, "lo")
	if got := l.namespaces(t); len(got) != 0 {
		t.Fatalf("namespaces left: %v", got)
	}
}

// TestPrivilegedInspectShape checks inspect works with JSON and Docker-style templates.
func TestPrivilegedInspectShape(t *testing.T) {
	nstest.Privileged(t)
	l := newLab(t)
	nw := mustNetwork(t, l.c, "n1", network.WithSubnet(netip.MustParsePrefix("10.20.0.0/24")),
		network.WithGateway(netip.MustParseAddr("10.20.0.254")), network.WithLabels(map[string]string{"team": "a"}),
		network.WithDriverLabels(map[string]string{"com.docker.network.driver.mtu": "1400"}))
	mustSandbox(t, l.c, "a")
	ep := mustConnect(t, l.c, "n1", "a", endpoint.WithIPv4(netip.MustParseAddr("10.20.0.9")))

	var buf bytes.Buffer
	tmpl := template.Must(template.New("").Parse(`{{range .Containers}}{{.IPv4Address}}{{end}} {{(index .IPAM.Config 0).Gateway}} {{.Options}}`))
	if err := tmpl.Execute(&buf, nw.Inspect()); err != nil {
		t.Fatal(err)
	}
	if got, want := buf.String(), "10.20.0.9/24 10.20.0.254 map[com.docker.network.driver.mtu:1400]"; got != want {
		t.Fatalf("template = %q, want %q", got, want)
	}
	b, err := json.Marshal(nw.Inspect())
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	json.Unmarshal(b, &m)
	for _, k := range []string{"Name", "Id", "Created", "Scope", "Driver", "EnableIPv6", "IPAM", "Internal", "Attachable", "Containers", "Options", "Labels"} {
		if _, ok := m[k]; !ok {
			t.Errorf("inspect JSON lacks %q: %s", k, b)
		}
	}
	if m["Scope"] != "local" || m["Driver"] != "bridge" || m["Id"] != nw.ID() {
		t.Errorf("inspect JSON = %s", b)
	}
	if !strings.Contains(string(b), ep.ID()) {
		t.Errorf("inspect JSON lacks the endpoint ID: %s", b)
	}

	// Aux addresses are reserved before IPAM picks the gateway, and reported.
	aux := mustNetwork(t, l.c, "n2", network.WithSubnet(netip.MustParsePrefix("10.21.0.0/24")),
		network.WithAuxAddress("router", netip.MustParseAddr("10.21.0.1")))
	cfg := aux.Inspect().IPAM.Config[0]
	if cfg.Gateway != "10.21.0.2" || cfg.AuxiliaryAddresses["router"] != "10.21.0.1" {
		t.Errorf("aux network IPAM = %+v, want gateway 10.21.0.2 and router 10.21.0.1", cfg)
	}
}

// TestPrivilegedBadInput: every refusal is typed and leaves nothing behind.
func TestPrivilegedBadInput(t *testing.T) {
	nstest.Privileged(t)
	ctx := t.Context()
	l := newLab(t)
	c := l.c
	mustNetwork(t, c, "good", network.WithSubnet(netip.MustParsePrefix("10.30.0.0/24")))
	mustSandbox(t, c, "sb")
	mustConnect(t, c, "good", "sb", endpoint.WithIPv4(netip.MustParseAddr("10.30.0.5")))

	hostBefore := links(t, l.host.Path())
	nsBefore := l.namespaces(t)
	p := netip.MustParsePrefix
	a := netip.MustParseAddr
	cases := []struct {
		name string
		do   func() error
		want error
	}{
		{"empty network name", func() error { _, err := c.NewNetwork(ctx, "", "bridge"); return err }, cnm.ErrInvalidParameter},
		{"long network name", func() error { _, err := c.NewNetwork(ctx, strings.Repeat("x", 65), "bridge"); return err }, cnm.ErrInvalidParameter},
		{"slash in name", func() error { _, err := c.NewNetwork(ctx, "a/b", "bridge"); return err }, cnm.ErrInvalidParameter},
		{"duplicate name", func() error { _, err := c.NewNetwork(ctx, "good", "bridge"); return err }, cnm.ErrAlreadyExists},
		{"unknown driver", func() error { _, err := c.NewNetwork(ctx, "x", "nosuch"); return err }, cnm.ErrNotFound},
		{"host bits in subnet", func() error {
			_, err := c.NewNetwork(ctx, "x", "bridge", network.WithSubnet(p("10.40.0.1/24")))
			return err
		}, cnm.ErrInvalidParameter},
		{"gateway outside subnet", func() error {
			_, err := c.NewNetwork(ctx, "x", "bridge", network.WithSubnet(p("10.40.0.0/24")), network.WithGateway(a("10.41.0.1")))
			return err
		}, cnm.ErrInvalidParameter},
		{"overlapping subnet", func() error {
			_, err := c.NewNetwork(ctx, "x", "bridge", network.WithSubnet(p("10.30.0.0/16")))
			return err
		}, cnm.ErrConflict},
		{"unknown option", func() error {
			_, err := c.NewNetwork(ctx, "x", "bridge", network.WithDriverLabels(map[string]string{"com.docker.network.bogus": "1"}))
			return err
		}, cnm.ErrInvalidParameter},
		{"bad mtu", func() error {
			_, err := c.NewNetwork(ctx, "x", "bridge", network.WithDriverLabels(map[string]string{"com.docker.network.driver.mtu": "12"}))
			return err
		}, cnm.ErrInvalidParameter},
		{"option for a driver without options", func() error {
			_, err := c.NewNetwork(ctx, "x", "null", network.WithDriverLabels(map[string]string{"a": "b"}))
			return err
		}, cnm.ErrInvalidParameter},
		{"empty sandbox id", func() error { _, err := c.NewSandbox(ctx, ""); return err }, cnm.ErrInvalidParameter},
		{"duplicate sandbox", func() error { _, err := c.NewSandbox(ctx, "sb"); return err }, cnm.ErrAlreadyExists},
		{"share a missing sandbox", func() error { _, err := c.NewSandbox(ctx, "x", cnm.ContainerMode("ghost")); return err }, cnm.ErrNotFound},
		{"static ip outside subnet", func() error {
			_, err := c.Connect(ctx, "good", "sb", endpoint.WithIPv4(a("10.99.0.5")))
			return err
		}, cnm.ErrInvalidParameter},
		{"static ip taken", func() error {
			mustSandbox(t, c, "sb2")
			defer c.DeleteSandbox(ctx, "sb2")
			_, err := c.Connect(ctx, "good", "sb2", endpoint.WithIPv4(a("10.30.0.5")))
			return err
		}, cnm.ErrConflict},
		{"endpoint name taken", func() error {
			nw, _ := c.Network("good")
			_, err := nw.CreateEndpoint(ctx, "sb")
			return err
		}, cnm.ErrAlreadyExists},
		{"delete predefined", func() error { return c.DeleteNetwork(ctx, cnm.HostNetwork) }, cnm.ErrConflict},
		{"delete missing network", func() error { return c.DeleteNetwork(ctx, "ghost") }, cnm.ErrNotFound},
		{"host sandbox on bridge", func() error {
			mustSandbox(t, c, "h", cnm.HostMode())
			defer c.DeleteSandbox(ctx, "h")
			_, err := c.Connect(ctx, "good", "h")
			return err
		}, cnm.ErrConflict},
	}
	for _, tc := range cases {
		err := tc.do()
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: err = %v, want %v", tc.name, err, tc.want)
			continue
		}
		t.Logf("%s: %v", tc.name, err)
	}
	// An overlap names the network it overlaps, and carries the typed IPAM error.
	_, err := c.NewNetwork(ctx, "x", "bridge", network.WithSubnet(p("10.30.0.0/16")))
	if oe, ok := errors.AsType[*ipam.OverlapError](err); !ok || !strings.Contains(err.Error(), `network "good"`) || oe.With != p("10.30.0.0/24") {
		t.Errorf("overlap error = %v, want it to name network \"good\" and 10.30.0.0/24", err)
	}
	if got := links(t, l.host.Path()); !slices.Equal(got, hostBefore) {
		t.Errorf("host links after bad input = %v, want %v", got, hostBefore)
	}
	if got := l.namespaces(t); !slices.Equal(got, nsBefore) {
		t.Errorf("namespaces after bad input = %v, want %v", got, nsBefore)
	}
	names := func() []string {
		var s []string
		for _, n := range c.Networks() {
			s = append(s, n.Name())
		}
		return s
	}
	if got := names(); !slices.Equal(got, []string{"bridge", "good", "host", "none"}) {
		t.Errorf("networks after bad input = %v", got)
	}
	// No lease leaked: the next dynamic address is the first after the taken ones, and a
	// network on the refused subnets can be made now.
	mustSandbox(t, c, "sb3")
	for _, addr := range []string{"10.30.0.2", "10.30.0.3"} { // handed out and released by refused calls
		nw, _ := c.Network("good")
		ep, err := nw.CreateEndpoint(ctx, "probe"+addr, endpoint.WithIPv4(a(addr)))
		if err != nil {
			t.Errorf("address %s leaked: %v", addr, err)
			continue
		}
		ep.Delete(ctx)
	}
	mustNetwork(t, c, "x", network.WithSubnet(p("10.40.0.0/24")))
	// Keys in the store: every refused create left none (checked by reopening after close).
	c.Close()
	c2 := l.open(t)
	if got := len(c2.Networks()); got != 5 {
		t.Errorf("networks after restart = %d, want 5", got)
	}
}

// TestPrivilegedModes covers none, host and container modes.
func TestPrivilegedModes(t *testing.T) {
	nstest.Privileged(t)
	ctx := t.Context()
	l := newLab(t)
	c := l.c

	none := mustSandbox(t, c, "none1")
	mustConnect(t, c, cnm.NoneNetwork, "none1")
	if got := links(t, none.Key()); !slices.Equal(got, []string{"lo"}) {
		t.Fatalf("none sandbox links = %v, want lo only", got)
	}
	if _, err := c.Connect(ctx, cnm.DefaultNetwork, "none1"); !errors.Is(err, cnm.ErrConflict) {
		t.Fatalf("bridge network on a none-mode sandbox = %v, want ErrConflict", err)
	}
	h := mustSandbox(t, c, "h1", cnm.HostMode())
	mustConnect(t, c, cnm.HostNetwork, "h1")
	if h.Key() != l.host.Path() {
		t.Fatalf("host sandbox key = %s, want the host namespace %s", h.Key(), l.host.Path())
	}
	if _, err := c.Connect(ctx, cnm.HostNetwork, "none1"); !errors.Is(err, cnm.ErrConflict) {
		t.Fatalf("host network on a namespace sandbox = %v, want ErrConflict", err)
	}

	app := mustSandbox(t, c, "app")
	ep := mustConnect(t, c, cnm.DefaultNetwork, "app")
	side := mustSandbox(t, c, "sidecar", cnm.ContainerMode("app"))
	if side.Key() != app.Key() {
		// The same namespace, seen through the sidecar.
		same, err := sameNS(side.Key(), app.Key())
		if err != nil || !same {
			t.Fatalf("sidecar key %s is not app's namespace %s (%v)", side.Key(), app.Key(), err)
		}
	}
	if got := links(t, side.Key()); !slices.Equal(got, []string{"eth0", "lo"}) {
		t.Fatalf("sidecar sees links %v, want app's eth0 and lo", got)
	}
	if _, err := c.Connect(ctx, cnm.NoneNetwork, "app"); !errors.Is(err, cnm.ErrConflict) {
		t.Fatalf("none network on a bridge-connected sandbox = %v, want ErrConflict", err)
	}
	if _, err := c.Connect(ctx, cnm.DefaultNetwork, "sidecar"); !errors.Is(err, cnm.ErrConflict) {
		t.Fatalf("connect a container-mode sandbox = %v, want ErrConflict", err)
	}
	if err := c.DeleteSandbox(ctx, "app"); !errors.Is(err, cnm.ErrConflict) {
		t.Fatalf("delete a shared sandbox = %v, want ErrConflict", err)
	}
	_ = ep
	for _, id := range []string{"sidecar", "app", "h1", "none1"} {
		if err := c.DeleteSandbox(ctx, id); err != nil {
			t.Fatalf("delete %s: %v", id, err)
		}
	}
	waitLinks(t, l.host.Path(), cnm.DefaultBridge, "lo")
	if got := l.namespaces(t); len(got) != 0 {
		t.Fatalf("namespaces left: %v", got)
	}
}

func sameNS(a, b string) (bool, error) {
	var sa, sb os.FileInfo
	var err error
	if sa, err = os.Stat(a); err != nil {
		return false, err
	}
	if sb, err = os.Stat(b); err != nil {
		return false, err
	}
	return os.SameFile(sa, sb), nil
}

// TestPrivilegedDNSFiles checks the hosts and resolv.conf files a sandbox gets.
func TestPrivilegedDNSFiles(t *testing.T) {
	nstest.Privileged(t)
	l := newLab(t)
	sb := mustSandbox(t, l.c, "web", cnm.WithHostname("webhost"), cnm.WithDNS(netip.MustParseAddr("9.9.9.9")),
		cnm.WithExtraHost("db.local", netip.MustParseAddr("10.1.1.1")))
	ep := mustConnect(t, l.c, cnm.DefaultNetwork, "web")
	hosts, err := os.ReadFile(sb.HostsPath())
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"127.0.0.1\tlocalhost", ep.Info().IPv4.Addr().String() + "\twebhost", "10.1.1.1\tdb.local"} {
		if !strings.Contains(string(hosts), want) {
			t.Errorf("hosts file lacks %q:\n%s", want, hosts)
		}
	}
	rc, err := os.ReadFile(sb.ResolvConfPath())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(rc), "nameserver 9.9.9.9") {
		t.Errorf("resolv.conf lacks the nameserver:\n%s", rc)
	}
	if want := filepath.Join(l.runDir, "sandboxes", "web", "hosts"); sb.HostsPath() != want {
		t.Errorf("hosts file %s, want %s (under RunDir, which lives as long as the namespaces)", sb.HostsPath(), want)
	}
	if err := l.c.DeleteSandbox(t.Context(), "web"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Dir(sb.HostsPath())); !os.IsNotExist(err) {
		t.Errorf("sandbox files left after delete: %v", err)
	}
}

// TestPrivilegedConcurrent: many attaches at once, networks created and deleted at once, and
// attaches racing a network's deletion.
func TestPrivilegedConcurrent(t *testing.T) {
	nstest.Privileged(t)
	ctx := t.Context()
	l := newLab(t)
	c := l.c
	mustNetwork(t, c, "many", network.WithSubnet(netip.MustParsePrefix("10.50.0.0/24")))

	const n = 50
	var wg sync.WaitGroup
	errs := make(chan error, 4*n)
	addrs := make(chan netip.Addr, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("c%02d", i)
			if _, err := c.NewSandbox(ctx, id); err != nil {
				errs <- err
				return
			}
			ep, err := c.Connect(ctx, "many", id)
			if err != nil {
				errs <- err
				return
			}
			addrs <- ep.Info().IPv4.Addr()
		}()
	}
	// Meanwhile, 10 networks created and deleted.
	for i := range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := fmt.Sprintf("tmp%d", i)
			if _, err := c.NewNetwork(ctx, name, "bridge"); err != nil {
				errs <- err
				return
			}
			if err := c.DeleteNetwork(ctx, name); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	close(addrs)
	for err := range errs {
		t.Error(err)
	}
	seen := map[netip.Addr]bool{}
	for a := range addrs {
		if seen[a] {
			t.Errorf("address %v handed out twice", a)
		}
		seen[a] = true
	}
	if len(seen) != n {
		t.Fatalf("%d distinct addresses, want %d", len(seen), n)
	}
	pingOK(t, mustGet(t, c, "c00"), netip.MustParseAddr("10.50.0.1"))

	// Attaches racing the deletion of their network: each either attaches (and the delete
	// is refused) or is refused; every error is typed; nothing leaks.
	mustNetwork(t, c, "doomed", network.WithSubnet(netip.MustParsePrefix("10.51.0.0/24")))
	var mu sync.Mutex
	var joined []string
	var delErr error
	for i := range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("c%02d", i)
			_, err := c.Connect(ctx, "doomed", id)
			switch {
			case err == nil:
				mu.Lock()
				joined = append(joined, id)
				mu.Unlock()
			case errors.Is(err, cnm.ErrConflict), errors.Is(err, cnm.ErrNotFound):
			default:
				t.Errorf("connect racing delete: untyped error %v", err)
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		delErr = c.DeleteNetwork(ctx, "doomed")
	}()
	wg.Wait()
	if delErr == nil && len(joined) > 0 {
		t.Fatalf("network deleted while %v joined it", joined)
	}
	if delErr != nil && !errors.Is(delErr, cnm.ErrConflict) {
		t.Fatalf("delete racing connects: %v, want nil or ErrConflict", delErr)
	}
	for _, id := range joined {
		if err := c.Disconnect(ctx, "doomed", id); err != nil {
			t.Fatal(err)
		}
	}
	if delErr != nil {
		if err := c.DeleteNetwork(ctx, "doomed"); err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		if err := c.DeleteSandbox(ctx, fmt.Sprintf("c%02d", i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.DeleteNetwork(ctx, "many"); err != nil {
		t.Fatal(err)
	}
	waitLinks(t, l.host.Path(), cnm.DefaultBridge, "lo")
	if got := l.namespaces(t); len(got) != 0 {
		t.Fatalf("namespaces left: %v", got)
	}
}

func mustGet(t *testing.T, c *cnm.Controller, id string) sandbox.Sandbox {
	t.Helper()
	sb, err := c.Sandbox(id)
	if err != nil {
		t.Fatal(err)
	}
	return sb
}

// TestPrivilegedDualStack: a network with an IPv6 subnet gives each sandbox both families, and
// both cross the bridge.
func TestPrivilegedDualStack(t *testing.T) {
	nstest.Privileged(t)
	l := newLab(t)
	mustNetwork(t, l.c, "ds", network.WithSubnet(netip.MustParsePrefix("10.80.0.0/24")),
		network.WithSubnet(netip.MustParsePrefix("fd00:80::/64")))
	a := mustSandbox(t, l.c, "a")
	mustConnect(t, l.c, "ds", "a")
	mustSandbox(t, l.c, "b")
	epB := mustConnect(t, l.c, "ds", "b")
	info := epB.Info()
	if !info.IPv6.IsValid() || !netip.MustParsePrefix("fd00:80::/64").Contains(info.IPv6.Addr()) || info.GatewayIPv6 != netip.MustParseAddr("fd00:80::1") {
		t.Fatalf("b's endpoint = %+v, want an address in fd00:80::/64 and gateway fd00:80::1", info)
	}
	pingOK(t, a, info.IPv4.Addr())
	pingOK(t, a, info.IPv6.Addr())
	pingOK(t, a, info.GatewayIPv6)
	nw, _ := l.c.Network("ds")
	if got := nw.Inspect(); !got.EnableIPv6 || len(got.IPAM.Config) != 2 || got.Containers["b"].IPv6Address != info.IPv6.String() {
		t.Fatalf("inspect = %+v", got)
	}
}
