package wgtun

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"go.uber.org/goleak"

	"github.com/cnmkit/cnm/internal/netns"
	"github.com/cnmkit/cnm/internal/nstest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// pair makes two namespaces joined by a veth, 192.0.2.1 and 192.0.2.2.
func pair(t *testing.T) (a, b *netns.NS) {
	t.Helper()
	a, b = nstest.NewNS(t), nstest.NewNS(t)
	ha, err := netlink.NewHandleAt(a.Handle())
	if err != nil {
		t.Fatal(err)
	}
	defer ha.Close()
	hb, err := netlink.NewHandleAt(b.Handle())
	if err != nil {
		t.Fatal(err)
	}
	defer hb.Close()
	if err := ha.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth0", PeerNamespace: netlink.NsFd(b.FD())}); err != nil {
		t.Fatal(err)
	}
	for i, h := range []*netlink.Handle{ha, hb} {
		l, err := h.LinkByName("eth0")
		if err != nil {
			t.Fatal(err)
		}
		if err := h.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(192, 0, 2, byte(i+1)), Mask: net.CIDRMask(24, 32)}}); err != nil {
			t.Fatal(err)
		}
		for _, l := range []netlink.Link{l, &netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: "lo"}}} {
			if err := h.LinkSetUp(l); err != nil {
				t.Fatal(err)
			}
		}
	}
	return a, b
}

func mustKey(t *testing.T) Key {
	t.Helper()
	k, err := NewPrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestPrivilegedTunnel: two devices in two namespaces carry ping between their tunnel
// addresses; a peer configured with another key gets nothing through; Close removes the
// interface and leaves no goroutine (TestMain).
func TestPrivilegedTunnel(t *testing.T) {
	nstest.Privileged(t)
	a, b := pair(t)
	ka, kb := mustKey(t), mustKey(t)
	ta, tb := netip.MustParsePrefix("fd00::1/128"), netip.MustParsePrefix("fd00::2/128")
	da, err := Open(Config{Name: "wgt0", Netns: a.Path(), PrivateKey: ka, Port: 51820, Addr: ta, MTU: 1420})
	if err != nil {
		t.Fatal(err)
	}
	defer da.Close()
	db, err := Open(Config{Name: "wgt0", Netns: b.Path(), PrivateKey: kb, Port: 51820, Addr: tb, MTU: 1420})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := da.SetPeers([]Peer{{PublicKey: kb.Public(), Endpoint: netip.MustParseAddrPort("192.0.2.2:51820"), AllowedIPs: []netip.Prefix{tb}}}); err != nil {
		t.Fatal(err)
	}
	// b knows a wrong key for a first: nothing crosses.
	wrong := mustKey(t)
	if err := db.SetPeers([]Peer{{PublicKey: wrong.Public(), Endpoint: netip.MustParseAddrPort("192.0.2.1:51820"), AllowedIPs: []netip.Prefix{ta}}}); err != nil {
		t.Fatal(err)
	}
	if err := da.Route(tb); err != nil {
		t.Fatal(err)
	}
	if err := db.Route(ta); err != nil {
		t.Fatal(err)
	}
	if out, ok := nstest.Ping(a.Path(), tb.Addr().String(), 2); ok {
		t.Fatalf("ping crossed with a wrong peer key: %s", out)
	}
	if hs, err := da.Handshakes(); err != nil || len(hs) != 0 {
		t.Fatalf("handshakes with a wrong key = %v (%v), want none", hs, err)
	}
	if err := db.SetPeers([]Peer{{PublicKey: ka.Public(), Endpoint: netip.MustParseAddrPort("192.0.2.1:51820"), AllowedIPs: []netip.Prefix{ta}}}); err != nil {
		t.Fatal(err)
	}
	var ok bool
	for deadline := time.Now().Add(10 * time.Second); !ok && time.Now().Before(deadline); {
		_, ok = nstest.Ping(a.Path(), tb.Addr().String(), 1)
	}
	if !ok {
		t.Fatal("a does not reach b through the tunnel")
	}
	hs, err := da.Handshakes()
	if err != nil || hs[kb.Public()].IsZero() {
		t.Fatalf("handshakes = %v (%v), want one with b", hs, err)
	}
	if err := da.Close(); err != nil {
		t.Fatal(err)
	}
	h, err := netlink.NewHandleAt(a.Handle())
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if _, err := h.LinkByName("wgt0"); err == nil {
		t.Fatal("wgt0 is left after Close")
	}
}

func TestKey(t *testing.T) {
	k := mustKey(t)
	p, err := ParseKey(k.Public().String())
	if err != nil || p != k.Public() {
		t.Fatalf("ParseKey(%s) = %v, %v", k.Public(), p, err)
	}
	if _, err := ParseKey("AAAA"); err == nil {
		t.Fatal("a short key parsed")
	}
}
