package netns_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/cnmkit/cnm/internal/netns"
	"github.com/cnmkit/cnm/internal/nstest"
	"github.com/vishvananda/netlink"
)

func TestPrivilegedNewDoRemove(t *testing.T) {
	nstest.Privileged(t)
	host, err := netns.Current()
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()

	path := filepath.Join(t.TempDir(), "x")
	ns, err := netns.New(path)
	if err != nil {
		t.Fatal(err)
	}
	if !netns.IsMounted(path) {
		t.Fatal("namespace not mounted")
	}
	var inner, outer string
	if err := ns.Do(func() error {
		inner, err = os.Readlink("/proc/thread-self/ns/net")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	outer, _ = os.Readlink("/proc/thread-self/ns/net")
	hostID, _ := os.Readlink(host.Path())
	if inner == hostID || inner == outer {
		t.Fatalf("Do ran in %s, want a new namespace (host %s)", inner, hostID)
	}
	// A fresh namespace holds only lo.
	h, err := netlink.NewHandleAt(ns.Handle())
	if err != nil {
		t.Fatal(err)
	}
	links, err := h.LinkList()
	h.Close()
	if err != nil || len(links) != 1 || links[0].Attrs().Name != "lo" {
		t.Fatalf("links in new namespace = %v, %v; want only lo", links, err)
	}
	ns.Close()
	if err := netns.Remove(path); err != nil {
		t.Fatal(err)
	}
	if netns.IsMounted(path) {
		t.Fatal("still mounted after Remove")
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("file left after Remove: %v", err)
	}
	if err := netns.Remove(path); err != nil {
		t.Fatalf("second Remove = %v, want nil", err)
	}
}

func TestPrivilegedNewExisting(t *testing.T) {
	nstest.Privileged(t)
	path := filepath.Join(t.TempDir(), "x")
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := netns.New(path); err == nil {
		t.Fatal("New on an existing path succeeded")
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("New removed a file it did not create: %v", err)
	}
}

func TestOpenNotNamespace(t *testing.T) {
	f := filepath.Join(t.TempDir(), "plain")
	os.WriteFile(f, nil, 0o644)
	if _, err := netns.Open(f); err == nil {
		t.Fatal("Open of a plain file succeeded")
	}
}
