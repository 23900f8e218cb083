package overlay

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/cnmkit/cnm/internal/wgtun"
)

func TestTunnelAddr(t *testing.T) {
	for vtep, want := range map[string]string{
		"192.0.2.21": "fdc7:6e6d:7767::c000:215",
		"10.0.0.1":   "fdc7:6e6d:7767::a00:1",
	} {
		got := tunnelAddr(netip.MustParseAddr(vtep))
		if got.String() != want || !TunnelPrefix.Contains(got) {
			t.Errorf("tunnelAddr(%s) = %s, want %s in %s", vtep, got, want, TunnelPrefix)
		}
	}
	a, b := tunnelAddr(netip.MustParseAddr("2001:db8::1")), tunnelAddr(netip.MustParseAddr("2001:db8::2"))
	if a == b || !TunnelPrefix.Contains(a) || !TunnelPrefix.Contains(b) {
		t.Errorf("IPv6 VTEPs: %s and %s, want two addresses of %s", a, b, TunnelPrefix)
	}
}

func TestEncryptedMTU(t *testing.T) {
	for _, tc := range []struct {
		under        int
		vtep         string
		network, tun int
	}{
		{1500, "192.0.2.1", 1370, 1440},
		{1500, "2001:db8::1", 1350, 1420},
		{9000, "192.0.2.1", 8870, 8940},
	} {
		n, d := encryptedMTU(tc.under, netip.MustParseAddr(tc.vtep))
		if n != tc.network || d != tc.tun {
			t.Errorf("encryptedMTU(%d, %s) = %d, %d; want %d, %d", tc.under, tc.vtep, n, d, tc.network, tc.tun)
		}
	}
}

func TestTunnelEntry(t *testing.T) {
	k1, err := wgtun.NewPrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	k2, err := wgtun.NewPrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	e := tunnelEntry{Addr: tunnelAddr(netip.MustParseAddr("192.0.2.1")), Endpoint: netip.MustParseAddr("192.0.2.1"),
		Keys: []tunnelKey{{Gen: 3, Public: k1.Public(), Port: 51820}, {Gen: 4, Public: k2.Public(), Port: 51821}}, Sending: 3}
	got, err := decodeTunnel(e.encode())
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(e, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); d != "" {
		t.Fatalf("round trip (-want +got):\n%s", d)
	}
	if got.newest() != 4 {
		t.Errorf("newest = %d, want 4", got.newest())
	}
	if k, ok := got.key(3); !ok || k.Public != k1.Public() {
		t.Errorf("key(3) = %+v, %v", k, ok)
	}
	if _, ok := got.key(5); ok {
		t.Error("key(5) found")
	}
	if _, err := decodeTunnel([]byte(`{"keys":[{"public":"AAAA"}]}`)); err == nil {
		t.Error("a short public key decoded")
	}
}
