package sandbox

import (
	"errors"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestEmbeddedResolvConf(t *testing.T) {
	host := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(host, []byte("nameserver 127.0.0.53\nnameserver 192.0.2.53\nsearch corp.example\noptions ndots:5 edns0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	server := netip.MustParseAddr("127.0.0.11")
	for _, tc := range []struct {
		name    string
		cfg     Config
		want    string
		wantUps []netip.Addr
	}{{
		name: "host's settings, ndots replaced, loopback upstream dropped",
		cfg:  Config{HostResolvConf: host},
		want: "# Names of this sandbox's networks are served by cnm's embedded resolver at 127.0.0.11;\n# it forwards other names to: 192.0.2.53\n" +
			"nameserver 127.0.0.11\nsearch corp.example\noptions ndots:0 edns0\n",
		wantUps: []netip.Addr{netip.MustParseAddr("192.0.2.53")},
	}, {
		name: "the sandbox's own --dns and --dns-option ndots",
		cfg: Config{HostResolvConf: host, DNS: []netip.Addr{netip.MustParseAddr("10.0.0.53")}, DNSSearch: []string{"."},
			DNSOptions: []string{"ndots:2"}},
		want: "# Names of this sandbox's networks are served by cnm's embedded resolver at 127.0.0.11;\n# it forwards other names to: 10.0.0.53\n" +
			"nameserver 127.0.0.11\noptions ndots:2\n",
		wantUps: []netip.Addr{netip.MustParseAddr("10.0.0.53")},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			conf, ups, err := tc.cfg.EmbeddedResolvConf(server)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, string(conf)); diff != "" {
				t.Errorf("resolv.conf (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.wantUps, ups, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
				t.Errorf("upstreams (-want +got):\n%s", diff)
			}
		})
	}
	path := filepath.Join(t.TempDir(), "resolv.conf")
	if err := WriteResolvConf(path, []byte("nameserver 127.0.0.11\n")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("WriteResolvConf of a missing file = %v, want fs.ErrNotExist (never created)", err)
	}
	if err := os.WriteFile(path, []byte("nameserver 192.0.2.53\nsearch a.very.long.example\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := WriteResolvConf(path, []byte("nameserver 127.0.0.11\n")); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); string(b) != "nameserver 127.0.0.11\n" {
		t.Errorf("written: %q", b)
	}
}
