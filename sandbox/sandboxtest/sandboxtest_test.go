package sandboxtest_test

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/cnmkit/cnm/sandbox"
	"github.com/cnmkit/cnm/sandbox/sandboxtest"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type env struct {
	m      *sandboxtest.Machine
	runDir string
	root   string
}

func newEnv(t *testing.T) env {
	return env{m: sandboxtest.NewMachine(), runDir: t.TempDir(), root: t.TempDir()}
}

func (e env) config(id string) sandbox.Config {
	return sandbox.Config{ID: id, RunDir: e.runDir, FilesDir: filepath.Join(e.root, id), HostResolvConf: filepath.Join(e.root, "none")}
}

func (e env) add(t *testing.T, sb sandbox.Sandbox, name, addr string) {
	t.Helper()
	if err := sb.AddInterface(t.Context(), sandbox.InterfaceConfig{Name: name, InSandbox: true, IPv4: netip.MustParsePrefix(addr)}); err != nil {
		t.Fatal(err)
	}
}

// TestRestart: what a sandbox holds outlives it on the Machine; Open finds it and drops the
// interfaces that vanished or are not as recorded.
func TestRestart(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	sb, err := e.m.New(ctx, e.config("a"))
	if err != nil {
		t.Fatal(err)
	}
	e.add(t, sb, "eth0", "10.0.0.2/24")
	e.add(t, sb, "eth1", "10.1.0.2/24")
	e.add(t, sb, "eth2", "10.2.0.2/24")
	mac := sb.Interfaces()[0].MAC
	if len(mac) != 6 || mac[0]&2 == 0 || mac[0]&1 != 0 {
		t.Errorf("MAC given = %v, want a locally administered unicast one", mac)
	}
	if links, ok := e.m.Links(e.runDir, "a"); !ok || !slices.Equal(links, []string{"eth0", "eth1", "eth2"}) {
		t.Fatalf("Links = %v, %t", links, ok)
	}
	if err := sb.Close(); err != nil {
		t.Fatal(err)
	}
	if !e.m.DeleteLink(e.runDir, "a", "eth1") {
		t.Fatal("DeleteLink(eth1): not there")
	}
	recorded := []sandbox.Interface{
		{Name: "eth0", IPv4: netip.MustParsePrefix("10.0.0.2/24")},
		{Name: "eth1", IPv4: netip.MustParsePrefix("10.1.0.2/24")},
		{Name: "eth2", IPv4: netip.MustParsePrefix("10.2.9.9/24")}, // not what the link holds
	}
	sb, dropped, err := e.m.Open(ctx, e.config("a"), recorded)
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Delete(ctx)
	if !slices.Equal(dropped, []string{"eth1", "eth2"}) {
		t.Errorf("dropped = %v, want [eth1 eth2]", dropped)
	}
	got := sb.Interfaces()
	if len(got) != 1 || got[0].Name != "eth0" || got[0].MAC.String() != mac.String() {
		t.Errorf("Interfaces() = %+v, want eth0 with the MAC it had", got)
	}
	if links, _ := e.m.Links(e.runDir, "a"); !slices.Equal(links, []string{"eth0"}) {
		t.Errorf("Links after Open = %v, want the half-configured eth2 removed", links)
	}
	hosts, err := os.ReadFile(sb.HostsPath())
	if err != nil || !strings.Contains(string(hosts), "10.0.0.2\ta") || strings.Contains(string(hosts), "10.1.0.2") {
		t.Errorf("hosts = %q, %v; want eth0's address only", hosts, err)
	}
}

// TestFailOn: an injected failure changes nothing, and is lifted with a nil error.
func TestFailOn(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	boom := errors.New("boom")
	e.m.FailOn("New", boom)
	if _, err := e.m.New(ctx, e.config("a")); !errors.Is(err, boom) {
		t.Fatalf("New with FailOn = %v, want boom", err)
	}
	if ids, _ := e.m.List(e.runDir); len(ids) != 0 {
		t.Fatalf("a failed New left %v", ids)
	}
	if _, err := os.Stat(filepath.Join(e.root, "a")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a failed New left its files dir: %v", err)
	}
	e.m.FailOn("New", nil)
	sb, err := e.m.New(ctx, e.config("a"))
	if err != nil {
		t.Fatal(err)
	}
	e.m.FailOn("AddInterface", boom)
	err = sb.AddInterface(ctx, sandbox.InterfaceConfig{Name: "eth0", InSandbox: true})
	if !errors.Is(err, boom) {
		t.Fatalf("AddInterface with FailOn = %v, want boom", err)
	}
	e.m.FailOn("AddInterface", nil)
	e.add(t, sb, "eth0", "10.0.0.2/24") // the name was freed
	e.m.FailOn("RemoveInterface", boom)
	if err := sb.RemoveInterface(ctx, "eth0"); !errors.Is(err, boom) {
		t.Fatalf("RemoveInterface with FailOn = %v, want boom", err)
	}
	if len(sb.Interfaces()) != 1 {
		t.Fatal("a failed RemoveInterface forgot the interface")
	}
	e.m.FailOn("RemoveInterface", nil)
	e.m.FailOn("Delete", boom)
	if err := sb.Delete(ctx); !errors.Is(err, boom) {
		t.Fatalf("Delete with FailOn = %v, want boom", err)
	}
	e.m.FailOn("Delete", nil)
	notFound := &errclass.NotFoundError{Kind: "sandbox", Name: "a"}
	e.m.FailOn("Open", notFound)
	if _, _, err := e.m.Open(ctx, e.config("a"), nil); !errors.Is(err, errclass.ErrNotFound) {
		t.Fatalf("Open with FailOn(NotFound) = %v", err)
	}
	e.m.FailOn("Open", nil)
	e.m.SetRoutes(netip.MustParsePrefix("192.168.1.0/24"))
	e.m.FailOn("Routes", boom)
	if _, err := e.m.Routes(); !errors.Is(err, boom) {
		t.Fatalf("Routes with FailOn = %v", err)
	}
	e.m.FailOn("Routes", nil)
	if r, err := e.m.Routes(); err != nil || len(r) != 1 {
		t.Fatalf("Routes = %v, %v", r, err)
	}
	if err := sb.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := e.m.Links(e.runDir, "a"); ok {
		t.Fatal("namespace still there after Delete")
	}
}

// TestSharedNamespaceGone: a container-mode sandbox needs the shared namespace to exist.
func TestSharedNamespaceGone(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	a, err := e.m.New(ctx, e.config("a"))
	if err != nil {
		t.Fatal(err)
	}
	if err := e.m.Remove(e.runDir, "a"); err != nil {
		t.Fatal(err)
	}
	cfg := e.config("c")
	cfg.Mode, cfg.Share = sandbox.ModeContainer, a
	if _, err := e.m.New(ctx, cfg); !errors.Is(err, errclass.ErrNotFound) {
		t.Fatalf("New sharing a removed namespace = %v, want ErrNotFound", err)
	}
	// A sandbox whose namespace was removed under it keeps working, as a held namespace does.
	e.add(t, a, "eth0", "10.0.0.2/24")
	if err := a.Delete(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestConcurrentNames: concurrent reservations of one sandbox get distinct names.
func TestConcurrentNames(t *testing.T) {
	e := newEnv(t)
	sb, err := e.m.New(t.Context(), e.config("a"))
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Delete(t.Context())
	var mu sync.Mutex
	seen := map[string]bool{}
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			name, _, err := sb.ReserveName("")
			if err != nil {
				t.Error(err)
				return
			}
			if err := sb.AddInterface(t.Context(), sandbox.InterfaceConfig{Name: name, InSandbox: true}); err != nil {
				t.Error(err)
			}
			mu.Lock()
			defer mu.Unlock()
			if seen[name] {
				t.Errorf("name %s handed out twice", name)
			}
			seen[name] = true
		})
	}
	wg.Wait()
	if n := len(sb.Interfaces()); n != 16 {
		t.Fatalf("%d interfaces, want 16", n)
	}
}
