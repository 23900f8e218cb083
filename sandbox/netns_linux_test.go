package sandbox_test

import (
	"context"
	"errors"
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/cnmkit/cnm/internal/nstest"
	"github.com/cnmkit/cnm/sandbox"
)

// TestPrivilegedCallerNetns: a sandbox on a namespace its caller made (Config.Netns, as a CNI
// runtime gives one) configures interfaces in it; Close and Open adopt them again; Delete
// removes them and leaves the namespace with its own links; a path that is no namespace is
// not found, and one that is not absolute and clean is refused.
func TestPrivilegedCallerNetns(t *testing.T) {
	nstest.Privileged(t)
	e := newEnv(t)
	owned := nstest.NewNS(t) // the runtime's
	cfg := e.config("ext")
	cfg.Netns = owned.Path()
	sb, err := sandbox.New(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if sb.Key() != owned.Path() || !sameNS(t, sb.NetnsFD(), owned.Path()) {
		t.Fatalf("Key() = %q, want the caller's %q", sb.Key(), owned.Path())
	}
	e.vethInto(sb, "vh0", "tmp0", mustMAC("02:42:0a:00:00:02"))
	if err := sb.AddInterface(t.Context(), sandbox.InterfaceConfig{Name: "tmp0", InSandbox: true, MAC: mustMAC("02:42:0a:00:00:02"),
		IPv4: netip.MustParsePrefix("10.0.0.2/24"), Gateway: netip.MustParseAddr("10.0.0.1")}); err != nil {
		t.Fatal(err)
	}
	h := handleIn(t, sb)
	if gw, _ := defaultVia(t, h, 2); gw != netip.MustParseAddr("10.0.0.1") {
		t.Errorf("default route via %v, want 10.0.0.1", gw)
	}

	// A restart: Close, then Open on the same Config adopts the interface.
	ifaces := sb.Interfaces()
	if err := sb.Close(); err != nil {
		t.Fatal(err)
	}
	sb, dropped, err := sandbox.Open(t.Context(), cfg, ifaces)
	if err != nil || len(dropped) != 0 || len(sb.Interfaces()) != 1 {
		t.Fatalf("Open = %v, dropped %v, interfaces %v", err, dropped, sb.Interfaces())
	}
	if err := sb.Delete(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !linkGone(h, "tmp0") {
		t.Error("Delete left tmp0 in the caller's namespace")
	}
	if exists(cfg.FilesDir) {
		t.Error("Delete left the files dir")
	}
	if out, err := nstest.Exec(owned, "ip", "-o", "link", "show", "lo"); err != nil {
		t.Fatalf("the caller's namespace is gone after Delete: %v %s", err, out)
	}

	bad := e.config("bad")
	bad.Netns = filepath.Join(t.TempDir(), "nothing")
	if _, err := sandbox.New(t.Context(), bad); !errors.Is(err, errclass.ErrNotFound) {
		t.Errorf("New on a missing namespace = %v, want not found", err)
	}
	for _, p := range []string{"relative/ns", "/run/netns/../x", "/run/netns/a b", "/"} {
		bad.Netns = p
		if _, err := sandbox.New(t.Context(), bad); !errors.Is(err, errclass.ErrInvalidParameter) {
			t.Errorf("New with Netns %q = %v, want invalid", p, err)
		}
	}
	host := e.config("host")
	host.Mode, host.Netns = sandbox.ModeHost, owned.Path()
	if err := host.Validate(); !errors.Is(err, errclass.ErrInvalidParameter) {
		t.Errorf("ModeHost with Netns = %v, want invalid", err)
	}
}
