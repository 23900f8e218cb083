package sandbox_test

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/cnmkit/cnm/sandbox"
	"github.com/cnmkit/cnm/sandbox/sandboxtest"
)

// machineEnv is a Machine under test, with directories of the test's own and a way to make a
// link in a sandbox that AddInterface can then take (InSandbox), as a driver does.
type machineEnv struct {
	m      sandbox.Machine
	runDir string
	root   string
	resolv string // the host resolv.conf
	link   func(t *testing.T, sb sandbox.Sandbox, name string)
}

func newMachineEnv(t *testing.T, m sandbox.Machine, link func(*testing.T, sandbox.Sandbox, string)) machineEnv {
	root := t.TempDir()
	resolv := filepath.Join(root, "host-resolv.conf")
	if err := os.WriteFile(resolv, []byte("nameserver 192.0.2.53\nsearch example.org\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return machineEnv{m: m, runDir: t.TempDir(), root: root, resolv: resolv, link: link}
}

func (e machineEnv) config(id string) sandbox.Config {
	return sandbox.Config{ID: id, RunDir: e.runDir, FilesDir: filepath.Join(e.root, "files", id), HostResolvConf: e.resolv}
}

func (e machineEnv) list(t *testing.T) []string {
	t.Helper()
	ids, err := e.m.List(e.runDir)
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

// TestMachineFake checks the in-memory Machine of package sandboxtest against the contract
// that testMachine states; TestPrivilegedMachineKernel checks the real one against the same.
func TestMachineFake(t *testing.T) {
	testMachine(t, newMachineEnv(t, sandboxtest.NewMachine(), func(*testing.T, sandbox.Sandbox, string) {}))
}

// testMachine checks what the Controller relies on of a Machine: sandboxes made, listed,
// re-opened with their interfaces and removed; interface names; modes; files; errors.
func testMachine(t *testing.T, e machineEnv) {
	ctx := t.Context()
	a, err := e.m.New(ctx, e.config("a"))
	if err != nil {
		t.Fatalf("New(a): %v", err)
	}
	if want := filepath.Join(e.runDir, "netns", "a"); a.Key() != want {
		t.Errorf("Key() = %q, want %q", a.Key(), want)
	}
	if got := e.list(t); !slices.Equal(got, []string{"a"}) {
		t.Errorf("List = %v, want [a]", got)
	}
	if _, err := e.m.New(ctx, e.config("a")); !errors.Is(err, errclass.ErrAlreadyExists) {
		t.Errorf("New(a) again = %v, want ErrAlreadyExists", err)
	}
	bad := e.config("a/b")
	if _, err := e.m.New(ctx, bad); !errors.Is(err, errclass.ErrInvalidParameter) {
		t.Errorf("New(a/b) = %v, want ErrInvalidParameter", err)
	}
	if resolv, err := os.ReadFile(a.ResolvConfPath()); err != nil || !strings.Contains(string(resolv), "nameserver 192.0.2.53") {
		t.Errorf("resolv.conf = %q, %v; want the host's nameserver", resolv, err)
	}

	// Names: the lowest free ethN, a wanted one, taken and bad ones.
	name, release, err := a.ReserveName("")
	if err != nil || name != "eth0" {
		t.Fatalf("ReserveName() = %q, %v; want eth0", name, err)
	}
	defer release()
	if _, _, err := a.ReserveName("eth0"); !errors.Is(err, errclass.ErrAlreadyExists) {
		t.Errorf("ReserveName(eth0) while reserved = %v, want ErrAlreadyExists", err)
	}
	if _, _, err := a.ReserveName("a/b"); !errors.Is(err, errclass.ErrInvalidParameter) {
		t.Errorf("ReserveName(a/b) = %v, want ErrInvalidParameter", err)
	}
	mac := net.HardwareAddr{0x02, 0x42, 0xac, 0x11, 0x00, 0x02}
	e.link(t, a, "eth0")
	eth0 := sandbox.InterfaceConfig{
		Name: "eth0", InSandbox: true, MAC: mac,
		IPv4: netip.MustParsePrefix("10.9.0.2/24"), Gateway: netip.MustParseAddr("10.9.0.1"),
	}
	if err := a.AddInterface(ctx, eth0); err != nil {
		t.Fatalf("AddInterface(eth0): %v", err)
	}
	if err := a.AddInterface(ctx, eth0); !errors.Is(err, errclass.ErrAlreadyExists) {
		t.Errorf("AddInterface(eth0) again = %v, want ErrAlreadyExists", err)
	}
	badIf := sandbox.InterfaceConfig{Name: "eth1", InSandbox: true, IPv4: netip.MustParsePrefix("fd00::2/64")}
	if err := a.AddInterface(ctx, badIf); !errors.Is(err, errclass.ErrInvalidParameter) {
		t.Errorf("AddInterface with an IPv6 IPv4 = %v, want ErrInvalidParameter", err)
	}
	if n, rel, err := a.ReserveName(""); err != nil || n != "eth1" {
		t.Errorf("ReserveName() after a refused eth1 = %q, %v; want eth1 free again", n, err)
	} else {
		rel()
	}
	got := a.Interfaces()
	if len(got) != 1 || got[0].Name != "eth0" || got[0].MAC.String() != mac.String() || got[0].IPv4 != eth0.IPv4 || got[0].Gateway != eth0.Gateway {
		t.Fatalf("Interfaces() = %+v, want eth0 as added", got)
	}
	if hosts, err := os.ReadFile(a.HostsPath()); err != nil || !strings.Contains(string(hosts), "10.9.0.2\ta") {
		t.Errorf("hosts = %q, %v; want a line for 10.9.0.2", hosts, err)
	}

	// Host and container modes: no interface of their own.
	hostCfg := e.config("h")
	hostCfg.Mode, hostCfg.RunDir = sandbox.ModeHost, ""
	h, err := e.m.New(ctx, hostCfg)
	if err != nil {
		t.Fatalf("New(h, host mode): %v", err)
	}
	if h.Key() != e.m.Path() {
		t.Errorf("host sandbox Key() = %q, want Path() %q", h.Key(), e.m.Path())
	}
	if _, _, err := h.ReserveName(""); !errors.Is(err, errclass.ErrConflict) {
		t.Errorf("ReserveName in a host sandbox = %v, want ErrConflict", err)
	}
	ctrCfg := e.config("c")
	ctrCfg.Mode, ctrCfg.RunDir, ctrCfg.Share = sandbox.ModeContainer, "", a
	c, err := e.m.New(ctx, ctrCfg)
	if err != nil {
		t.Fatalf("New(c, container mode): %v", err)
	}
	if c.Key() != a.Key() {
		t.Errorf("container sandbox Key() = %q, want a's %q", c.Key(), a.Key())
	}
	if err := c.AddInterface(ctx, eth0); !errors.Is(err, errclass.ErrConflict) {
		t.Errorf("AddInterface in a container sandbox = %v, want ErrConflict", err)
	}
	if _, _, err := e.m.Open(ctx, hostCfg, []sandbox.Interface{{Name: "eth0"}}); !errors.Is(err, errclass.ErrInvalidParameter) {
		t.Errorf("Open of a host sandbox with interfaces = %v, want ErrInvalidParameter", err)
	}
	for _, sb := range []sandbox.Handle{c, h} {
		if err := sb.Delete(ctx); err != nil {
			t.Fatalf("Delete(%s): %v", sb.ID(), err)
		}
	}

	// Close and Open: the interfaces still there are adopted, the others dropped.
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := a.ReserveName(""); !errors.Is(err, errclass.ErrNotFound) {
		t.Errorf("ReserveName after Close = %v, want ErrNotFound", err)
	}
	a, dropped, err := e.m.Open(ctx, e.config("a"), []sandbox.Interface{{Name: "eth0", IPv4: eth0.IPv4, Gateway: eth0.Gateway}, {Name: "eth9"}})
	if err != nil {
		t.Fatalf("Open(a): %v", err)
	}
	if !slices.Equal(dropped, []string{"eth9"}) {
		t.Errorf("Open dropped %v, want [eth9]", dropped)
	}
	if got := a.Interfaces(); len(got) != 1 || got[0].Name != "eth0" || got[0].MAC.String() != mac.String() {
		t.Errorf("Interfaces() after Open = %+v, want eth0 with its MAC", got)
	}
	if _, _, err := e.m.Open(ctx, e.config("nope"), nil); !errors.Is(err, errclass.ErrNotFound) {
		t.Errorf("Open of a sandbox never made = %v, want ErrNotFound", err)
	}
	if err := a.RemoveInterface(ctx, "eth0"); err != nil {
		t.Fatalf("RemoveInterface(eth0): %v", err)
	}
	if err := a.RemoveInterface(ctx, "eth0"); err != nil {
		t.Errorf("RemoveInterface(eth0) again = %v, want nil", err)
	}
	if got := a.Interfaces(); len(got) != 0 {
		t.Errorf("Interfaces() after RemoveInterface = %+v", got)
	}

	// Delete: the namespace and the files go.
	if err := a.Delete(ctx); err != nil {
		t.Fatalf("Delete(a): %v", err)
	}
	if _, _, err := a.ReserveName(""); !errors.Is(err, errclass.ErrNotFound) {
		t.Errorf("ReserveName after Delete = %v, want ErrNotFound", err)
	}
	if got := e.list(t); len(got) != 0 {
		t.Errorf("List after Delete = %v", got)
	}
	if _, err := os.Stat(filepath.Join(e.root, "files", "a")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("files dir of a after Delete: %v, want it gone", err)
	}
	if _, _, err := e.m.Open(ctx, e.config("a"), nil); !errors.Is(err, errclass.ErrNotFound) {
		t.Errorf("Open after Delete = %v, want ErrNotFound", err)
	}

	// Remove: a namespace left without its owner.
	stray, err := e.m.New(ctx, e.config("stray"))
	if err != nil {
		t.Fatal(err)
	}
	if err := stray.Close(); err != nil {
		t.Fatal(err)
	}
	if err := e.m.Remove(e.runDir, "stray"); err != nil {
		t.Fatalf("Remove(stray): %v", err)
	}
	if err := e.m.Remove(e.runDir, "stray"); err != nil {
		t.Errorf("Remove(stray) again = %v, want nil", err)
	}
	if err := e.m.Remove(e.runDir, "../x"); !errors.Is(err, errclass.ErrInvalidParameter) {
		t.Errorf("Remove(../x) = %v, want ErrInvalidParameter", err)
	}
	if got := e.list(t); len(got) != 0 {
		t.Errorf("List after Remove = %v", got)
	}
	if _, _, err := e.m.Open(ctx, e.config("stray"), nil); !errors.Is(err, errclass.ErrNotFound) {
		t.Errorf("Open after Remove = %v, want ErrNotFound", err)
	}
	os.RemoveAll(filepath.Join(e.root, "files", "stray"))
}
