package cnm_test

import (
	"errors"
	"slices"
	"testing"

	"github.com/cnmkit/cnm"
	"github.com/cnmkit/cnm/endpoint"
)

// TestSandboxOnCallerNetns: a sandbox on a namespace its caller owns (WithNetns) joins
// networks with the interface names asked for, is restored by a restart, and on delete leaves
// the namespace without its interfaces; a second sandbox on the same path, or WithNetns with
// host or container mode, is refused.
func TestSandboxOnCallerNetns(t *testing.T) {
	l := newFakeLab(t)
	c, ctx := l.c, t.Context()
	const path = "/run/netns/runtime-1"
	if _, err := c.NewNetwork(ctx, "one", "bridge"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.NewSandbox(ctx, "ext", cnm.WithNetns(path)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Connect(ctx, "one", "ext", endpoint.WithIfName("net7")); err != nil {
		t.Fatal(err)
	}
	if links, ok := l.m.LinksAt(path); !ok || !slices.Equal(links, []string{"net7"}) {
		t.Fatalf("links at %s = %v (%v), want [net7]", path, links, ok)
	}
	in, err := c.InspectSandbox("ext")
	if err != nil || in.Netns != path || in.NetworkSettings.SandboxKey != path || in.NetworkSettings.Networks["one"].IfName != "net7" {
		t.Fatalf("InspectSandbox = %+v, %v", in, err)
	}
	if _, err := c.NewSandbox(ctx, "other", cnm.WithNetns(path)); !errors.Is(err, cnm.ErrConflict) {
		t.Errorf("a second sandbox on %s = %v, want ErrConflict", path, err)
	}
	if _, err := c.NewSandbox(ctx, "h", cnm.HostMode(), cnm.WithNetns("/run/netns/h")); !errors.Is(err, cnm.ErrInvalidParameter) {
		t.Errorf("HostMode with WithNetns = %v, want ErrInvalidParameter", err)
	}
	if _, err := c.NewSandbox(ctx, "rel", cnm.WithNetns("netns/x")); !errors.Is(err, cnm.ErrInvalidParameter) {
		t.Errorf("a relative path = %v, want ErrInvalidParameter", err)
	}

	// A restart keeps the sandbox on the caller's namespace, with its interface.
	c.Close()
	c = l.open(t, nil)
	in, err = c.InspectSandbox("ext")
	if err != nil || in.Netns != path || in.NetworkSettings.Networks["one"].IfName != "net7" {
		t.Fatalf("after a restart InspectSandbox = %+v, %v", in, err)
	}
	if err := c.DeleteSandbox(ctx, "ext"); err != nil {
		t.Fatal(err)
	}
	if links, ok := l.m.LinksAt(path); !ok || len(links) != 0 {
		t.Errorf("after DeleteSandbox the caller's namespace is there %v with links %v, want there and empty", ok, links)
	}
}
