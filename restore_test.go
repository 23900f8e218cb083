package cnm_test

import (
	"errors"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cnmkit/cnm"
	"github.com/cnmkit/cnm/endpoint"
	"github.com/cnmkit/cnm/internal/netns"
	"github.com/cnmkit/cnm/internal/nstest"
	"github.com/cnmkit/cnm/network"
	"github.com/vishvananda/netlink"
)

func hostHandle(t *testing.T, path string) *netlink.Handle {
	t.Helper()
	ns, err := netns.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	h, err := netlink.NewHandleAt(ns.Handle())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

// TestPrivilegedRestart: a new Controller on the same DataDir restores networks, endpoints and
// sandboxes, repairs what a crash left, and IPAM holds exactly the live leases.
func TestPrivilegedRestart(t *testing.T) {
	nstest.Privileged(t)
	ctx := t.Context()
	l := newLab(t)
	c := l.c
	nw := mustNetwork(t, c, "n1", network.WithSubnet(netip.MustParsePrefix("10.60.0.0/24")))
	a := mustSandbox(t, c, "a")
	epA := mustConnect(t, c, "n1", "a")
	b := mustSandbox(t, c, "b")
	// b's endpoint is made and joined in two calls: it outlives its join (Connect's would be
	// deleted with its interface).
	epB, err := nw.CreateEndpoint(ctx, "b")
	if err != nil {
		t.Fatal(err)
	}
	if err := epB.Join(ctx, b); err != nil {
		t.Fatal(err)
	}
	parked, err := nw.CreateEndpoint(ctx, "parked") // created, never joined: keeps its lease
	if err != nil {
		t.Fatal(err)
	}
	c.Close()

	// What a crash leaves behind.
	h := hostHandle(t, l.host.Path())
	ghostNS, err := netns.New(filepath.Join(l.runDir, "netns", "ghost"))
	if err != nil {
		t.Fatal(err)
	}
	ghostNS.Close()
	ghostBr := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br-0123456789ab", Alias: "cnm:" + strings.Repeat("0123456789abcdef", 4)}}
	if err := h.LinkAdd(ghostBr); err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetAlias(ghostBr, ghostBr.Alias); err != nil { // the kernel ignores an alias at create
		t.Fatal(err)
	}
	br, err := h.LinkByName("br-" + nw.ID()[:12])
	if err != nil {
		t.Fatal(err)
	}
	strayVeth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "vethfeedfacecaf", MasterIndex: br.Attrs().Index}, PeerName: "strayp"}
	if err := h.LinkAdd(strayVeth); err != nil {
		t.Fatal(err)
	}
	foreign := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br-users-own"}}
	if err := h.LinkAdd(foreign); err != nil {
		t.Fatal(err)
	}
	// b's interface vanished (say, someone deleted it).
	bns, err := netns.Open(b.Key())
	if err != nil {
		t.Fatal(err)
	}
	bh, err := netlink.NewHandleAt(bns.Handle())
	if err != nil {
		t.Fatal(err)
	}
	eth, err := bh.LinkByName(epB.Info().IfName)
	if err == nil {
		err = bh.LinkDel(eth)
	}
	bh.Close()
	bns.Close() // a held descriptor would keep b's namespace alive after its deletion
	if err != nil {
		t.Fatal(err)
	}

	c2 := l.open(t)
	var reps []string
	for _, r := range c2.Repairs() {
		reps = append(reps, r.String())
	}
	t.Logf("repairs:\n%s", strings.Join(reps, "\n"))
	for _, want := range []string{"netns ghost", "br-0123456789ab", "vethfeedfacecaf", "interface eth0 of sandbox b"} {
		if !slices.ContainsFunc(reps, func(s string) bool { return strings.Contains(s, want) }) {
			t.Errorf("no repair mentions %q", want)
		}
	}
	got := links(t, l.host.Path())
	for _, gone := range []string{"br-0123456789ab", "vethfeedfacecaf", "strayp"} {
		if slices.Contains(got, gone) {
			t.Errorf("leftover %s still in the host namespace: %v", gone, got)
		}
	}
	if !slices.Contains(got, "br-users-own") {
		t.Errorf("a foreign bridge was removed: %v", got)
	}
	if slices.Contains(l.namespaces(t), "ghost") {
		t.Error("ghost namespace still mounted")
	}

	// Restored state.
	nw2, err := c2.Network("n1")
	if err != nil {
		t.Fatal(err)
	}
	in := nw2.Inspect()
	if in.Containers["a"].IPv4Address != epA.Info().IPv4.String() {
		t.Fatalf("restored a = %+v, want %v", in.Containers["a"], epA.Info().IPv4)
	}
	if _, ok := in.Containers["b"]; ok {
		t.Fatalf("b still reported joined after its interface vanished: %+v", in.Containers)
	}
	a2, err := c2.Sandbox("a")
	if err != nil {
		t.Fatal(err)
	}
	if a2.Key() != a.Key() || len(a2.Interfaces()) != 1 {
		t.Fatalf("restored sandbox a: key %s, interfaces %+v", a2.Key(), a2.Interfaces())
	}
	pingOK(t, a2, netip.MustParseAddr(in.IPAM.Config[0].Gateway))

	// IPAM holds exactly the live leases: a, b (left but not deleted) and parked.
	held := map[netip.Addr]bool{epA.Info().IPv4.Addr(): true, epB.Info().IPv4.Addr(): true, parked.Info().IPv4.Addr(): true}
	mustSandbox(t, c2, "c")
	epC := mustConnect(t, c2, "n1", "c")
	if held[epC.Info().IPv4.Addr()] {
		t.Fatalf("address %v handed out twice after restart", epC.Info().IPv4.Addr())
	}
	// b can join again.
	b2, _ := c2.Sandbox("b")
	epB2, _ := nw2.Endpoint("b")
	if err := epB2.Join(ctx, b2); err != nil {
		t.Fatal(err)
	}
	pingOK(t, a2, epB2.Info().IPv4.Addr())

	// Cleanup, then a third start finds nothing to repair.
	for _, id := range []string{"a", "b", "c"} {
		if err := c2.DeleteSandbox(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	p, _ := nw2.Endpoint("parked")
	if err := p.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	c2.Close()
	waitLinks(t, l.host.Path(), cnm.DefaultBridge, "br-"+nw.ID()[:12], "br-users-own", "lo")
	c3 := l.open(t)
	if r := c3.Repairs(); len(r) != 0 {
		t.Fatalf("third start repaired %v, want nothing", r)
	}
	if err := c3.DeleteNetwork(ctx, "n1"); err != nil {
		t.Fatal(err)
	}
	h.LinkDel(foreign)
	waitLinks(t, l.host.Path(), cnm.DefaultBridge, "lo")
}

// TestPrivilegedRestartLostNamespaces: after a "reboot" every sandbox namespace is gone; the
// sandboxes and their endpoints are dropped, their addresses freed.
func TestPrivilegedRestartLostNamespaces(t *testing.T) {
	nstest.Privileged(t)
	l := newLab(t)
	mustNetwork(t, l.c, "n1", network.WithSubnet(netip.MustParsePrefix("10.61.0.0/24")))
	sb := mustSandbox(t, l.c, "a")
	ep := mustConnect(t, l.c, "n1", "a")
	l.c.Close()
	if err := netns.Remove(sb.Key()); err != nil {
		t.Fatal(err)
	}
	c2 := l.open(t)
	if _, err := c2.Sandbox("a"); !errors.Is(err, cnm.ErrNotFound) {
		t.Fatalf("sandbox a after its namespace vanished: %v, want ErrNotFound", err)
	}
	nw, _ := c2.Network("n1")
	if got := nw.Endpoints(); len(got) != 0 {
		t.Fatalf("endpoints left: %v", got)
	}
	// The lost endpoint's address is free again: it can be asked for by name.
	mustSandbox(t, c2, "b")
	mustConnect(t, c2, "n1", "b", endpoint.WithIPv4(ep.Info().IPv4.Addr()))
	if len(c2.Repairs()) < 2 {
		t.Fatalf("repairs = %v, want the sandbox and its endpoint", c2.Repairs())
	}
}
