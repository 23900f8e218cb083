package cnm_test

// The unprivileged tier: the Controller on an in-memory machine (sandbox/sandboxtest), with a
// driverstest.Fake as its "bridge" driver and bbolt in a temporary directory. These tests run
// under a plain `go test ./...` as any user; what they check of the kernel is what the fake
// machine records.

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/cnmkit/cnm"
	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/drivers/driverstest"
	"github.com/cnmkit/cnm/endpoint"
	"github.com/cnmkit/cnm/network"
	"github.com/cnmkit/cnm/resolver"
	"github.com/cnmkit/cnm/sandbox"
	"github.com/cnmkit/cnm/sandbox/sandboxtest"
)

// fakeLab is a Controller on an in-memory machine. The machine and the bridge driver outlive
// the Controller, as the kernel does, so that open can start the next one on the same state.
type fakeLab struct {
	m       *sandboxtest.Machine
	bridge  *driverstest.Fake
	dataDir string
	runDir  string
	c       *cnm.Controller
}

func newFakeLab(t *testing.T) *fakeLab {
	t.Helper()
	l := &fakeLab{m: sandboxtest.NewMachine(), bridge: driverstest.NewFake(drivers.Capabilities{}), dataDir: t.TempDir(), runDir: t.TempDir()}
	l.c = l.open(t, nil)
	return l
}

// open starts a Controller on the lab's machine and directories; edit, if not nil, changes
// its Config first. Cleanup closes it.
func (l *fakeLab) open(t *testing.T, edit func(*cnm.Config)) *cnm.Controller {
	t.Helper()
	cfg := cnm.Config{
		DataDir: l.dataDir, RunDir: l.runDir, Machine: l.m,
		Drivers: map[string]drivers.Driver{"bridge": l.bridge},
	}
	if edit != nil {
		edit(&cfg)
	}
	c, err := cnm.New(t.Context(), cfg)
	if err != nil {
		t.Fatalf("cnm.New: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// links returns the interfaces the machine holds in sandbox id's namespace.
func (l *fakeLab) links(t *testing.T, id string) []string {
	t.Helper()
	names, ok := l.m.Links(l.runDir, id)
	if !ok {
		t.Fatalf("sandbox %s has no namespace", id)
	}
	return names
}

func ifNames(sb sandbox.Sandbox) []string {
	var out []string
	for _, ifc := range sb.Interfaces() {
		out = append(out, ifc.Name)
	}
	return out
}

func repairLines(c *cnm.Controller) []string {
	var out []string
	for _, r := range c.Repairs() {
		out = append(out, r.Action+" "+r.Object)
	}
	return out
}

func TestNewRefusesHostNetnsWithMachine(t *testing.T) {
	_, err := cnm.New(t.Context(), cnm.Config{DataDir: t.TempDir(), Machine: sandboxtest.NewMachine(), HostNetns: "/run/netns/x"})
	if !errors.Is(err, cnm.ErrInvalidParameter) || !strings.Contains(err.Error(), "HostNetns") {
		t.Fatalf("New with Machine and HostNetns = %v, want ErrInvalidParameter naming HostNetns", err)
	}
}

// TestNames: names of networks and sandboxes are unique, networks are found by name, ID or
// unique ID prefix, and an ambiguous prefix is refused.
func TestNames(t *testing.T) {
	ctx := t.Context()
	l := newFakeLab(t)
	c := l.c
	var names []string
	for _, n := range c.Networks() {
		names = append(names, n.Name())
	}
	if !slices.Equal(names, []string{"bridge", "host", "none"}) {
		t.Fatalf("predefined networks = %v", names)
	}
	if d, _ := c.Network(cnm.DefaultNetwork); d.Driver() != "bridge" || d.Inspect().IPAM.Config[0].Subnet != cnm.DefaultSubnet.String() {
		t.Errorf("default network: driver %s, IPAM %+v; want the replacing bridge driver on %s", d.Driver(), d.Inspect().IPAM, cnm.DefaultSubnet)
	}
	if err := c.DeleteNetwork(ctx, cnm.HostNetwork); !errors.Is(err, cnm.ErrConflict) {
		t.Errorf("DeleteNetwork(host) = %v, want ErrConflict", err)
	}

	n, err := c.NewNetwork(ctx, "front", "bridge", network.WithSubnet(netip.MustParsePrefix("10.20.0.0/24")))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.NewNetwork(ctx, "front", "null"); !errors.Is(err, cnm.ErrAlreadyExists) {
		t.Errorf("NewNetwork(front) again = %v, want ErrAlreadyExists", err)
	}
	if _, err := c.NewNetwork(ctx, "a/b", "null"); !errors.Is(err, cnm.ErrInvalidParameter) {
		t.Errorf("NewNetwork(a/b) = %v, want ErrInvalidParameter", err)
	}
	if _, err := c.NewNetwork(ctx, "x", "nosuch"); !errors.Is(err, cnm.ErrNotFound) {
		t.Errorf("NewNetwork with a missing driver = %v, want ErrNotFound", err)
	}
	if _, err := c.NewNetwork(ctx, "back", "bridge", network.WithSubnet(netip.MustParsePrefix("10.20.0.128/25"))); !errors.Is(err, cnm.ErrConflict) || !strings.Contains(err.Error(), `"front"`) {
		t.Errorf("NewNetwork on front's subnet = %v, want ErrConflict naming front", err)
	}
	for _, key := range []string{"front", n.ID(), n.ID()[:12]} {
		if got, err := c.Network(key); err != nil || got.ID() != n.ID() {
			t.Errorf("Network(%q) = %v, %v; want front", key, got, err)
		}
	}
	if _, err := c.Network("nosuch"); !errors.Is(err, cnm.ErrNotFound) {
		t.Errorf("Network(nosuch) = %v, want ErrNotFound", err)
	}
	// Seventeen networks: two of them share their ID's first hex digit.
	for i := range 13 {
		if _, err := c.NewNetwork(ctx, fmt.Sprint("n", i), "null"); err != nil {
			t.Fatal(err)
		}
	}
	firsts := map[byte]int{}
	for _, nw := range c.Networks() {
		firsts[nw.ID()[0]]++
	}
	for b, count := range firsts {
		_, err := c.Network(string(b))
		switch {
		case count > 1 && !errors.Is(err, cnm.ErrInvalidParameter):
			t.Errorf("Network(%q), a prefix of %d IDs = %v, want ErrInvalidParameter (ambiguous)", b, count, err)
		case count == 1 && err != nil:
			t.Errorf("Network(%q), a prefix of one ID = %v", b, err)
		}
	}

	sb, err := c.NewSandbox(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.NewSandbox(ctx, "web"); !errors.Is(err, cnm.ErrAlreadyExists) {
		t.Errorf("NewSandbox(web) again = %v, want ErrAlreadyExists", err)
	}
	if _, err := c.NewSandbox(ctx, "we/b"); !errors.Is(err, cnm.ErrInvalidParameter) {
		t.Errorf("NewSandbox(we/b) = %v, want ErrInvalidParameter", err)
	}
	if _, err := c.Sandbox("we"); !errors.Is(err, cnm.ErrNotFound) {
		t.Errorf("Sandbox(we) = %v, want ErrNotFound: sandboxes are found by ID only", err)
	}
	if got, err := c.Sandbox("web"); err != nil || got != sb {
		t.Errorf("Sandbox(web) = %v, %v", got, err)
	}
	if _, err := c.NewSandbox(ctx, "api", cnm.ContainerMode("nosuch")); !errors.Is(err, cnm.ErrNotFound) {
		t.Errorf("NewSandbox sharing a missing sandbox = %v, want ErrNotFound", err)
	}
	mustSandbox(t, c, "api")
	var ids []string
	for _, s := range c.Sandboxes() {
		ids = append(ids, s.ID())
	}
	if !slices.Equal(ids, []string{"api", "web"}) {
		t.Errorf("Sandboxes() = %v, want [api web]", ids)
	}
	if got, _ := l.m.List(l.runDir); !slices.Equal(got, []string{"api", "web"}) {
		t.Errorf("namespaces = %v, want [api web]", got)
	}
	if err := c.DeleteSandbox(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.NewSandbox(ctx, "web"); err != nil {
		t.Errorf("NewSandbox(web) after its deletion: %v", err)
	}
}

// TestConnectDisconnect: interfaces are named eth0, eth1, ... in the order connected, the
// lowest free name is reused, and the none, host and container modes refuse what Docker
// refuses.
func TestConnectDisconnect(t *testing.T) {
	ctx := t.Context()
	l := newFakeLab(t)
	c := l.c
	mustNetwork(t, c, "n1", network.WithSubnet(netip.MustParsePrefix("10.21.0.0/24")))
	mustNetwork(t, c, "n2", network.WithSubnet(netip.MustParsePrefix("10.22.0.0/24")))
	a := mustSandbox(t, c, "a")
	e1 := mustConnect(t, c, "n1", "a")
	e2 := mustConnect(t, c, "n2", "a")
	if e1.Info().IfName != "eth0" || e2.Info().IfName != "eth1" {
		t.Fatalf("interfaces %s, %s; want eth0, eth1", e1.Info().IfName, e2.Info().IfName)
	}
	if got := ifNames(a); !slices.Equal(got, []string{"eth0", "eth1"}) {
		t.Fatalf("sandbox interfaces = %v", got)
	}
	if got := l.links(t, "a"); !slices.Equal(got, []string{"eth0", "eth1"}) {
		t.Fatalf("links in a's namespace = %v", got)
	}
	ifc := a.Interfaces()[0]
	if ifc.IPv4 != e1.Info().IPv4 || ifc.Gateway != netip.MustParseAddr("10.21.0.1") {
		t.Errorf("eth0 = %+v, want %v via 10.21.0.1", ifc, e1.Info().IPv4)
	}
	hosts, err := os.ReadFile(a.HostsPath())
	if err != nil || !strings.Contains(string(hosts), e1.Info().IPv4.Addr().String()+"\ta") || !strings.Contains(string(hosts), e2.Info().IPv4.Addr().String()+"\ta") {
		t.Errorf("hosts file = %q, %v; want both addresses", hosts, err)
	}
	if !hasLine(l.bridge.Calls(), "Join", "sandbox="+a.Key(), "if=eth0", "ipv4="+e1.Info().IPv4.String()) {
		t.Errorf("the driver saw no join of eth0 into %s: %q", a.Key(), l.bridge.Calls())
	}
	if _, err := c.Connect(ctx, "n1", "a"); !errors.Is(err, cnm.ErrAlreadyExists) {
		t.Errorf("Connect(n1, a) again = %v, want ErrAlreadyExists", err)
	}
	if _, err := c.Connect(ctx, "n1", "nosuch"); !errors.Is(err, cnm.ErrNotFound) {
		t.Errorf("Connect of a missing sandbox = %v, want ErrNotFound", err)
	}

	if err := c.Disconnect(ctx, "n1", "a"); err != nil {
		t.Fatal(err)
	}
	if err := c.Disconnect(ctx, "n1", "a"); !errors.Is(err, cnm.ErrNotFound) {
		t.Errorf("Disconnect(n1, a) again = %v, want ErrNotFound", err)
	}
	if got := l.links(t, "a"); !slices.Equal(got, []string{"eth1"}) {
		t.Fatalf("links after disconnect = %v, want [eth1]", got)
	}
	if ep := mustConnect(t, c, "n1", "a"); ep.Info().IfName != "eth0" {
		t.Errorf("reconnect got %s, want eth0 again", ep.Info().IfName)
	}
	if ep := mustConnect(t, c, cnm.DefaultNetwork, "a", endpoint.WithIfName("data0")); ep.Info().IfName != "data0" {
		t.Errorf("connect with a wanted name got %s, want data0", ep.Info().IfName)
	}
	if _, err := c.Connect(ctx, cnm.NoneNetwork, "a"); !errors.Is(err, cnm.ErrConflict) {
		t.Errorf("Connect(none) of a connected sandbox = %v, want ErrConflict", err)
	}

	// none mode: loopback only, and nothing else while in it.
	b := mustSandbox(t, c, "b")
	mustConnect(t, c, cnm.NoneNetwork, "b")
	if len(b.Interfaces()) != 0 {
		t.Errorf("none-mode sandbox interfaces = %+v", b.Interfaces())
	}
	if _, err := c.Connect(ctx, "n1", "b"); !errors.Is(err, cnm.ErrConflict) {
		t.Errorf("Connect(n1) of a none-mode sandbox = %v, want ErrConflict", err)
	}
	if err := c.Disconnect(ctx, cnm.NoneNetwork, "b"); err != nil {
		t.Fatal(err)
	}
	mustConnect(t, c, "n1", "b")

	// host mode: only the host network; container mode: no network of its own.
	h := mustSandbox(t, c, "h", cnm.HostMode())
	if h.Key() != sandboxtest.HostPath {
		t.Errorf("host sandbox key = %q, want the machine's host namespace", h.Key())
	}
	if _, err := c.Connect(ctx, "n1", "h"); !errors.Is(err, cnm.ErrConflict) {
		t.Errorf("Connect(n1) of a host-mode sandbox = %v, want ErrConflict", err)
	}
	mustConnect(t, c, cnm.HostNetwork, "h")
	if _, err := c.Connect(ctx, cnm.HostNetwork, "b"); !errors.Is(err, cnm.ErrConflict) {
		t.Errorf("Connect(host) of a namespace sandbox = %v, want ErrConflict", err)
	}
	ct := mustSandbox(t, c, "ct", cnm.ContainerMode("a"))
	if ct.Key() != a.Key() {
		t.Errorf("container sandbox key = %q, want a's %q", ct.Key(), a.Key())
	}
	if _, err := c.Connect(ctx, "n1", "ct"); !errors.Is(err, cnm.ErrConflict) {
		t.Errorf("Connect(n1) of a container-mode sandbox = %v, want ErrConflict", err)
	}
	if err := c.DeleteSandbox(ctx, "a"); !errors.Is(err, cnm.ErrConflict) {
		t.Errorf("DeleteSandbox(a) while ct shares it = %v, want ErrConflict", err)
	}
	for _, id := range []string{"ct", "a", "b", "h"} {
		if err := c.DeleteSandbox(ctx, id); err != nil {
			t.Fatalf("DeleteSandbox(%s): %v", id, err)
		}
	}
	for _, nw := range []string{"n1", "n2"} {
		if err := c.DeleteNetwork(ctx, nw); err != nil {
			t.Errorf("DeleteNetwork(%s) after its sandboxes went: %v", nw, err)
		}
	}
}

// TestDeleteSandbox: deleting a sandbox leaves and deletes its endpoints and removes its
// namespace and files; a network with endpoints cannot be deleted.
func TestDeleteSandbox(t *testing.T) {
	ctx := t.Context()
	l := newFakeLab(t)
	// Names that are not hex: Endpoint(name) also matches ID prefixes.
	c := l.c
	n := mustNetwork(t, c, "n1", network.WithSubnet(netip.MustParsePrefix("10.23.0.0/24")))
	a := mustSandbox(t, c, "box")
	mustConnect(t, c, "n1", "box")
	mustConnect(t, c, cnm.DefaultNetwork, "box")
	if err := c.DeleteNetwork(ctx, "n1"); !errors.Is(err, cnm.ErrConflict) {
		t.Fatalf("DeleteNetwork with an endpoint = %v, want ErrConflict", err)
	}
	idle, err := n.CreateEndpoint(ctx, "idle")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteSandbox(ctx, "box"); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteSandbox(ctx, "box"); !errors.Is(err, cnm.ErrNotFound) {
		t.Errorf("DeleteSandbox(box) again = %v, want ErrNotFound", err)
	}
	if got := n.Inspect().Containers; len(got) != 0 {
		t.Errorf("containers of n1 after the sandbox went = %v", got)
	}
	if _, err := n.Endpoint("box"); !errors.Is(err, cnm.ErrNotFound) {
		t.Errorf("endpoint box after its sandbox went: %v, want ErrNotFound", err)
	}
	if got, _ := l.m.List(l.runDir); len(got) != 0 {
		t.Errorf("namespaces left = %v", got)
	}
	if _, err := os.Stat(filepath.Dir(a.HostsPath())); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("files of box left: %v", err)
	}
	if err := c.DeleteNetwork(ctx, "n1"); !errors.Is(err, cnm.ErrConflict) {
		t.Fatalf("DeleteNetwork with an idle endpoint = %v, want ErrConflict", err)
	}
	if err := idle.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteNetwork(ctx, "n1"); err != nil {
		t.Fatal(err)
	}
	// The addresses came back: the same subnet is free for another network.
	mustNetwork(t, c, "n2", network.WithSubnet(netip.MustParsePrefix("10.23.0.0/24")))
}

// TestRestart: a Controller started on the state another left restores networks, endpoints,
// sandboxes and their interfaces, and repairs what changed meanwhile: a namespace gone takes
// its sandbox's endpoints with it, an interface gone its endpoint, and a namespace without a
// record is removed.
func TestRestart(t *testing.T) {
	ctx := t.Context()
	l := newFakeLab(t)
	c := l.c
	n := mustNetwork(t, c, "n1", network.WithSubnet(netip.MustParsePrefix("10.24.0.0/24")))
	mustSandbox(t, c, "a")
	mustSandbox(t, c, "b")
	mustSandbox(t, c, "gone")
	mustSandbox(t, c, "h", cnm.HostMode())
	mustSandbox(t, c, "ct", cnm.ContainerMode("a"))
	ea := mustConnect(t, c, "n1", "a")
	ea2 := mustConnect(t, c, cnm.DefaultNetwork, "a")
	mustConnect(t, c, "n1", "b")
	eg := mustConnect(t, c, "n1", "gone")
	if _, err := n.CreateEndpoint(ctx, "idle"); err != nil {
		t.Fatal(err)
	}
	before := repairLines(c)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}

	// While no Controller runs: a reboot took one namespace, an interface vanished from
	// another, and a crash left a namespace without a record.
	if err := l.m.Remove(l.runDir, "gone"); err != nil {
		t.Fatal(err)
	}
	if !l.m.DeleteLink(l.runDir, "b", "eth0") {
		t.Fatal("b has no eth0")
	}
	stray, err := l.m.New(ctx, sandbox.Config{ID: "stray", RunDir: l.runDir, FilesDir: filepath.Join(l.runDir, "sandboxes", "stray")})
	if err != nil {
		t.Fatal(err)
	}
	stray.Close()
	// Files of a sandbox made by an older version, which kept them under DataDir.
	if err := os.MkdirAll(filepath.Join(l.dataDir, "sandboxes", "oldstray"), 0o755); err != nil {
		t.Fatal(err)
	}

	c = l.open(t, nil)
	reps := repairLines(c)
	for _, want := range []string{
		"removed endpoint gone",
		"removed record sandbox gone",
		"removed endpoint b",
		"removed netns stray",
		"removed files of sandbox stray",
		"removed files of sandbox oldstray",
	} {
		if !slices.Contains(reps, want) {
			t.Errorf("repairs %q lack %q", reps, want)
		}
	}
	if len(before) != 0 {
		t.Errorf("repairs before the restart: %q", before)
	}
	var ids []string
	for _, sb := range c.Sandboxes() {
		ids = append(ids, sb.ID())
	}
	if !slices.Equal(ids, []string{"a", "b", "ct", "h"}) {
		t.Fatalf("sandboxes after restart = %v, want [a b ct h]", ids)
	}
	if got, _ := l.m.List(l.runDir); !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("namespaces after restart = %v, want [a b]", got)
	}
	a := mustGet(t, c, "a")
	got := a.Interfaces()
	if len(got) != 2 || got[0].Name != "eth0" || got[0].IPv4 != ea.Info().IPv4 || got[1].Name != "eth1" || got[1].IPv4 != ea2.Info().IPv4 {
		t.Fatalf("a's interfaces after restart = %+v, want eth0 %v and eth1 %v", got, ea.Info().IPv4, ea2.Info().IPv4)
	}
	if b := mustGet(t, c, "b"); len(b.Interfaces()) != 0 {
		t.Errorf("b's interfaces = %+v, want none (eth0 vanished)", b.Interfaces())
	}
	nw, err := c.Network("n1")
	if err != nil {
		t.Fatal(err)
	}
	var eps []string
	for _, ep := range nw.Endpoints() {
		eps = append(eps, ep.Name())
	}
	slices.Sort(eps)
	if !slices.Equal(eps, []string{"a", "idle"}) {
		t.Errorf("endpoints of n1 after restart = %v, want [a idle]", eps)
	}
	if in := nw.Inspect(); in.Containers["a"].IPv4Address != ea.Info().IPv4.String() {
		t.Errorf("a on n1 after restart = %+v, want %v", in.Containers["a"], ea.Info().IPv4)
	}
	// The lost endpoint's address is free: asking for it works.
	if _, err := c.Connect(ctx, "n1", "b", endpoint.WithIPv4(eg.Info().IPv4.Addr())); err != nil {
		t.Errorf("Connect(b) on gone's old address %v: %v", eg.Info().IPv4, err)
	}
	if _, err := c.NewSandbox(ctx, "gone"); err != nil {
		t.Errorf("NewSandbox(gone) after its record was dropped: %v", err)
	}
	// Restored sandboxes work: a disconnect removes the restored interface.
	if err := c.Disconnect(ctx, "n1", "a"); err != nil {
		t.Fatal(err)
	}
	if got := l.links(t, "a"); !slices.Equal(got, []string{"eth1"}) {
		t.Errorf("links of a after disconnect = %v, want [eth1]", got)
	}
	if ep := mustConnect(t, c, "n1", "a"); ep.Info().IfName != "eth0" {
		t.Errorf("reconnected a got %s, want eth0", ep.Info().IfName)
	}
}

// TestRestartOpenFails: a sandbox whose namespace cannot be opened for another reason than
// its absence keeps its records for the next start.
func TestRestartOpenFails(t *testing.T) {
	ctx := t.Context()
	l := newFakeLab(t)
	mustNetwork(t, l.c, "n1", network.WithSubnet(netip.MustParsePrefix("10.25.0.0/24")))
	mustSandbox(t, l.c, "a")
	ep := mustConnect(t, l.c, "n1", "a")
	l.c.Close()

	l.m.FailOn("Open", errors.New("EMFILE"))
	c := l.open(t, nil)
	if reps := repairLines(c); !slices.Contains(reps, "not restored sandbox a") {
		t.Errorf("repairs = %q, want sandbox a not restored", reps)
	}
	if _, err := c.Sandbox("a"); !errors.Is(err, cnm.ErrNotFound) {
		t.Errorf("Sandbox(a) = %v, want it left out", err)
	}
	c.Close()

	l.m.FailOn("Open", nil)
	c = l.open(t, nil)
	if len(c.Repairs()) != 0 {
		t.Errorf("repairs on the next start = %q, want none", repairLines(c))
	}
	sb := mustGet(t, c, "a")
	if got := sb.Interfaces(); len(got) != 1 || got[0].IPv4 != ep.Info().IPv4 {
		t.Errorf("a's interfaces = %+v, want eth0 with %v", got, ep.Info().IPv4)
	}
	if err := c.DeleteSandbox(ctx, "a"); err != nil {
		t.Fatal(err)
	}
}

// TestLateDriver: a network whose driver is registered after New waits on the next start,
// with its name, subnet and interfaces held, and RegisterDriver restores it whole.
func TestLateDriver(t *testing.T) {
	ctx := t.Context()
	l := newFakeLab(t)
	c := l.c
	p2p := driverstest.NewFake(drivers.Capabilities{})
	if err := c.RegisterDriver(ctx, "p2p", p2p); err != nil {
		t.Fatal(err)
	}
	if err := c.RegisterDriver(ctx, "p2p", p2p); !errors.Is(err, cnm.ErrAlreadyExists) {
		t.Fatalf("RegisterDriver(p2p) again = %v, want ErrAlreadyExists", err)
	}
	nw, err := c.NewNetwork(ctx, "pp", "p2p", network.WithSubnet(netip.MustParsePrefix("10.70.0.0/24")))
	if err != nil {
		t.Fatal(err)
	}
	mustSandbox(t, c, "a")
	joined := mustConnect(t, c, "pp", "a")
	idle, err := nw.CreateEndpoint(ctx, "idle")
	if err != nil {
		t.Fatal(err)
	}
	c.Close()

	c = l.open(t, nil)
	for _, r := range repairLines(c) {
		if strings.HasPrefix(r, "removed") {
			t.Errorf("repair %q: nothing may be removed for a missing driver", r)
		}
	}
	w := c.Waiting()
	if len(w) != 1 || w[0].Name != "pp" || w[0].Driver != "p2p" || w[0].Endpoints != 2 || !strings.Contains(w[0].Reason, "p2p") {
		t.Fatalf("waiting = %+v, want network pp of driver p2p with its 2 endpoints", w)
	}
	if _, err := c.Network("pp"); !errors.Is(err, cnm.ErrUnavailable) {
		t.Fatalf("Network(pp) while waiting = %v, want ErrUnavailable", err)
	}
	if _, err := c.NewNetwork(ctx, "pp", "bridge"); !errors.Is(err, cnm.ErrAlreadyExists) {
		t.Fatalf("a new network with the waiting one's name = %v, want ErrAlreadyExists", err)
	}
	if _, err := c.NewNetwork(ctx, "steal", "bridge", network.WithSubnet(netip.MustParsePrefix("10.70.0.0/24"))); err == nil || !strings.Contains(err.Error(), `"pp"`) {
		t.Fatalf("a new network on the waiting one's subnet = %v, want an overlap naming pp", err)
	}
	sb := mustGet(t, c, "a")
	if got := ifNames(sb); !slices.Equal(got, []string{"eth0"}) {
		t.Fatalf("a's interfaces while its network waits = %v, want eth0 held", got)
	}
	if ep := mustConnect(t, c, cnm.DefaultNetwork, "a"); ep.Info().IfName != "eth1" {
		t.Fatalf("new attachment of a got %s, want eth1 (eth0 is held)", ep.Info().IfName)
	}

	if err := c.RegisterDriver(ctx, "p2p", p2p); err != nil {
		t.Fatalf("late registration: %v", err)
	}
	if w := c.Waiting(); len(w) != 0 {
		t.Fatalf("waiting after registration = %+v", w)
	}
	if reps := repairLines(c); !slices.Contains(reps, "restored network pp") {
		t.Errorf("repairs = %q, want network pp restored", reps)
	}
	nw, err = c.Network("pp")
	if err != nil {
		t.Fatal(err)
	}
	if got := nw.Inspect().Containers["a"].IPv4Address; got != joined.Info().IPv4.String() {
		t.Fatalf("restored joined endpoint address = %q, want %v", got, joined.Info().IPv4)
	}
	if ep, err := nw.Endpoint("idle"); err != nil || ep.ID() != idle.ID() {
		t.Fatalf("idle endpoint after registration: %v, %v", ep, err)
	}
	if err := c.Disconnect(ctx, "pp", "a"); err != nil {
		t.Fatal(err)
	}
	if got := l.links(t, "a"); !slices.Equal(got, []string{"eth1"}) {
		t.Fatalf("links of a after disconnect = %v, want [eth1]", got)
	}
	c.Close()

	// A start with the driver in Config finds the idle endpoint.
	c = l.open(t, func(cfg *cnm.Config) { cfg.Drivers["p2p"] = p2p })
	if w := c.Waiting(); len(w) != 0 {
		t.Fatalf("waiting with the driver in Config = %+v", w)
	}
	nw, err = c.Network("pp")
	if err != nil {
		t.Fatal(err)
	}
	ep, err := nw.Endpoint("idle")
	if err != nil {
		t.Fatal(err)
	}
	if err := ep.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteSandbox(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteNetwork(ctx, "pp"); err != nil {
		t.Fatal(err)
	}
}

// TestReplaceBuiltinDrivers: a driver in Config.Drivers named like a built-in one replaces it.
func TestReplaceBuiltinDrivers(t *testing.T) {
	ctx := t.Context()
	null := driverstest.NewFake(drivers.Capabilities{Sandbox: drivers.IsolatedSandbox, NoIPAM: true})
	l := &fakeLab{m: sandboxtest.NewMachine(), bridge: driverstest.NewFake(drivers.Capabilities{}), dataDir: t.TempDir(), runDir: t.TempDir()}
	c := l.open(t, func(cfg *cnm.Config) { cfg.Drivers["null"] = null })
	if got := c.Drivers(); !slices.Equal(got, []string{"bridge", "host", "null"}) {
		t.Fatalf("drivers = %v", got)
	}
	mustSandbox(t, c, "a")
	mustConnect(t, c, cnm.NoneNetwork, "a")
	if !hasLine(null.Calls(), "Join", "sandbox_id=a") {
		t.Errorf("the replacing null driver saw no join: %q", null.Calls())
	}
	if !hasLine(l.bridge.Calls(), "CreateNetwork", `name="bridge"`) {
		t.Errorf("the replacing bridge driver did not make the default network: %q", l.bridge.Calls())
	}
	if err := c.DeleteSandbox(ctx, "a"); err != nil {
		t.Fatal(err)
	}
}

// TestSealed checks that what the Controller hands out has the methods of network.Network and
// endpoint.Endpoint and no others: the methods it uses to restore, reclaim and forget networks
// and endpoints (issue 13) are out of an orchestrator's reach, even through an assertion to an
// interface of its own.
func TestSealed(t *testing.T) {
	ctx := t.Context()
	l := newFakeLab(t)
	c := l.c
	nw := mustNetwork(t, c, "n1", network.WithSubnet(netip.MustParsePrefix("10.21.0.0/24")))
	mustSandbox(t, c, "a")
	connected := mustConnect(t, c, "n1", "a")
	created, err := nw.CreateEndpoint(ctx, "spare")
	if err != nil {
		t.Fatal(err)
	}
	looked, err := nw.Endpoint("a")
	if err != nil {
		t.Fatal(err)
	}
	byName, err := c.Network("n1")
	if err != nil {
		t.Fatal(err)
	}
	listed := c.Networks()
	i := slices.IndexFunc(listed, func(n network.Network) bool { return n.Name() == "n1" })
	if byName != nw || i < 0 || listed[i] != nw {
		t.Errorf("Network(n1) and Networks() differ from what NewNetwork returned")
	}
	if looked != connected || nw.Endpoints()[0] != connected {
		t.Errorf("Endpoint(a) and Endpoints()[0] differ from what Connect returned")
	}
	type forgetter interface{ Forget(context.Context) error }
	for name, v := range map[string]any{
		"NewNetwork": nw, "Network": byName, "Networks": listed[i],
		"Connect": connected, "CreateEndpoint": created, "Endpoint": looked, "Endpoints": nw.Endpoints()[1],
	} {
		if _, ok := v.(forgetter); ok {
			t.Errorf("%s returned a value with Forget", name)
		}
		if _, ok := v.(interface{ LeaveGone(context.Context) error }); ok {
			t.Errorf("%s returned a value with LeaveGone", name)
		}
		if m := reflect.TypeOf(v).NumMethod(); m != 7 && m != 9 {
			t.Errorf("%s returned %T with %d methods; want those of the interface only (7 for an endpoint, 9 for a network)", name, v, m)
		}
	}
	if err := created.Delete(ctx); err != nil {
		t.Errorf("Delete through the sealed endpoint: %v", err)
	}
	if err := c.Disconnect(ctx, "n1", "a"); err != nil {
		t.Errorf("Disconnect: %v", err)
	}
}

// TestNewRefusesBadDNSConfig: a negative bound of the embedded resolver is refused by New,
// naming the field, before anything is made.
func TestNewRefusesBadDNSConfig(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	_, err := cnm.New(t.Context(), cnm.Config{DataDir: dir, Machine: sandboxtest.NewMachine(),
		Drivers: map[string]drivers.Driver{"bridge": driverstest.NewFake(drivers.Capabilities{})},
		DNS:     resolver.Config{MaxTCPConns: -1}})
	if !errors.Is(err, cnm.ErrInvalidParameter) || !strings.Contains(err.Error(), "MaxTCPConns") {
		t.Fatalf("New with DNS.MaxTCPConns -1 = %v, want ErrInvalidParameter naming the field", err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("DataDir made by a refused New: %v", err)
	}
}
