package cnm_test

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cnmkit/cnm"
	"github.com/cnmkit/cnm/internal/netns"
	"github.com/cnmkit/cnm/internal/nstest"
	"github.com/cnmkit/cnm/network"
	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
)

// kernelState renders the links of the namespace at path with their addresses, sorted.
func kernelState(t *testing.T, path string) string {
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
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, l := range ls {
		as, err := h.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			t.Fatal(err)
		}
		var addrs []string
		for _, a := range as {
			if !a.IP.IsLinkLocalUnicast() {
				addrs = append(addrs, a.IPNet.String())
			}
		}
		slices.Sort(addrs)
		lines = append(lines, fmt.Sprintf("%s up=%t %v", l.Attrs().Name, l.Attrs().Flags&1 != 0, addrs))
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// TestPrivilegedCallsAfterClose: on the kernel, the calls after Close that used to do real
// work (DeleteNetwork removed the bridge, DeleteSandbox the namespace and its files) are
// refused with ErrUnavailable and leave the host namespace, the sandbox's namespace, its
// files and the store as they were; the next Controller restores them and repairs nothing.
func TestPrivilegedCallsAfterClose(t *testing.T) {
	nstest.Privileged(t)
	ctx := t.Context()
	l := newLab(t)
	c := l.c
	mustNetwork(t, c, "front", network.WithSubnet(netip.MustParsePrefix("10.31.0.0/24")))
	empty := mustNetwork(t, c, "empty", network.WithSubnet(netip.MustParsePrefix("10.32.0.0/24")))
	sb := mustSandbox(t, c, "a")
	ep := mustConnect(t, c, "front", "a")
	files := func() []string {
		var out []string
		filepath.WalkDir(l.dataDir, func(p string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() && !strings.HasSuffix(p, "local.db") {
				b, _ := os.ReadFile(p)
				out = append(out, fmt.Sprintf("%s %q", strings.TrimPrefix(p, l.dataDir), b))
			}
			return nil
		})
		return out
	}
	host, inA := kernelState(t, l.host.Path()), kernelState(t, sb.Key())
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	// The files once Close returned: until then the embedded resolver, which follows the
	// events, may still be rewriting a's resolv.conf for its connect.
	filesBefore := files()
	for _, tc := range []struct {
		name string
		call func() error
	}{
		{"DeleteNetwork", func() error { return c.DeleteNetwork(ctx, "empty") }},
		{"Network.Delete", func() error { return empty.Delete(ctx) }},
		{"DeleteSandbox", func() error { return c.DeleteSandbox(ctx, "a") }},
		{"Disconnect", func() error { return c.Disconnect(ctx, "front", "a") }},
		{"Endpoint.Leave", func() error { return ep.Leave(ctx, sb) }},
		{"Sandbox.RemoveInterface", func() error { return sb.RemoveInterface(ctx, "eth0") }},
		{"NewSandbox", func() error { _, err := c.NewSandbox(ctx, "b"); return err }},
		{"NewNetwork", func() error { _, err := c.NewNetwork(ctx, "late", "bridge"); return err }},
	} {
		if err := tc.call(); !errors.Is(err, cnm.ErrUnavailable) {
			t.Errorf("%s after Close = %v, want ErrUnavailable", tc.name, err)
		}
	}
	if diff := cmp.Diff(host, kernelState(t, l.host.Path())); diff != "" {
		t.Errorf("host namespace changed by calls after Close (-before +after):\n%s", diff)
	}
	if diff := cmp.Diff(inA, kernelState(t, sb.Key())); diff != "" {
		t.Errorf("sandbox a's namespace changed by calls after Close (-before +after):\n%s", diff)
	}
	if diff := cmp.Diff(filesBefore, files()); diff != "" {
		t.Errorf("sandbox files changed by calls after Close (-before +after):\n%s", diff)
	}
	if got := l.namespaces(t); !slices.Equal(got, []string{"a"}) {
		t.Errorf("namespaces after refused calls = %v, want [a]", got)
	}
	c2 := l.open(t)
	if r := repairLines(c2); len(r) > 0 {
		t.Errorf("repairs after refused calls: %v", r)
	}
	if _, err := c2.Network("empty"); err != nil {
		t.Errorf("network empty after restart: %v", err)
	}
	if err := c2.Disconnect(ctx, "front", "a"); err != nil {
		t.Errorf("Disconnect after restart: %v", err)
	}
}

// TestPrivilegedRestartAfterDeleteSandbox: the kernel tears a deleted sandbox's namespace down
// after DeleteSandbox returns, and the host ends of its veths stay visible meanwhile (issue 20,
// item 4). A Controller started in that window must not take them for a crash's leftovers: it
// reports no repair, and the veths are gone all the same.
func TestPrivilegedRestartAfterDeleteSandbox(t *testing.T) {
	nstest.Privileged(t)
	ctx := t.Context()
	l := newLab(t)
	c := l.c
	mustNetwork(t, c, "n1", network.WithSubnet(netip.MustParsePrefix("10.61.0.0/24")))
	seen := 0 // rounds in which a host end outlived DeleteSandbox
	for round := range 8 {
		id := fmt.Sprintf("s%d", round)
		mustSandbox(t, c, id)
		var veths []string
		for range 4 { // several endpoints make the teardown longer, as a real container's would
			nw := mustNetworkOf(t, c, fmt.Sprintf("m%d-%d", round, len(veths)), "bridge")
			ep, err := c.Connect(ctx, nw.Name(), id)
			if err != nil {
				t.Fatal(err)
			}
			veths = append(veths, "veth"+ep.ID()[:11])
		}
		if err := c.DeleteSandbox(ctx, id); err != nil {
			t.Fatal(err)
		}
		left := slices.DeleteFunc(links(t, l.host.Path()), func(s string) bool { return !slices.Contains(veths, s) })
		if len(left) > 0 {
			seen++
		}
		c.Close()
		c = l.open(t)
		for _, r := range c.Repairs() {
			t.Errorf("round %d: restart reported %q (host ends left when it started: %v)", round, r, left)
		}
		if got := slices.DeleteFunc(links(t, l.host.Path()), func(s string) bool { return !slices.Contains(veths, s) }); len(got) > 0 {
			t.Errorf("round %d: host ends %v still there after the restart", round, got)
		}
		for _, nw := range c.Networks() {
			if strings.HasPrefix(nw.Name(), "m") {
				if err := c.DeleteNetwork(ctx, nw.Name()); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	t.Logf("host ends outlived DeleteSandbox in %d of 8 rounds", seen)
	if seen == 0 {
		t.Errorf("no round caught the kernel's teardown in progress: the test did not exercise the window")
	}
}
