package sandbox

import (
	"bytes"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestHostsFile(t *testing.T) {
	ip := netip.MustParseAddr
	tests := []struct {
		name       string
		hostname   string
		domainname string
		addrs      []netip.Addr
		extra      []Host
		want       string
	}{
		{
			name:     "no interfaces",
			hostname: "c1",
			want: `127.0.0.1	localhost
::1	localhost ip6-localhost ip6-loopback
fe00::0	ip6-localnet
ff00::0	ip6-mcastprefix
ff02::1	ip6-allnodes
ff02::2	ip6-allrouters
`,
		},
		{
			name:       "addresses, domain and extra hosts",
			hostname:   "web",
			domainname: "example.org",
			addrs:      []netip.Addr{ip("10.99.0.2"), ip("fd00:99::2"), ip("10.98.0.2")},
			extra:      []Host{{Name: "db", Addr: ip("192.0.2.10")}, {Name: "db6", Addr: ip("2001:db8::10")}},
			want: `127.0.0.1	localhost
::1	localhost ip6-localhost ip6-loopback
fe00::0	ip6-localnet
ff00::0	ip6-mcastprefix
ff02::1	ip6-allnodes
ff02::2	ip6-allrouters
10.99.0.2	web.example.org web
fd00:99::2	web.example.org web
10.98.0.2	web.example.org web
192.0.2.10	db
2001:db8::10	db6
`,
		},
		{
			name:     "no domain",
			hostname: "web",
			addrs:    []netip.Addr{ip("10.99.0.2")},
			want: `127.0.0.1	localhost
::1	localhost ip6-localhost ip6-loopback
fe00::0	ip6-localnet
ff00::0	ip6-mcastprefix
ff02::1	ip6-allnodes
ff02::2	ip6-allrouters
10.99.0.2	web
`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := string(hostsFile(tt.hostname, tt.domainname, tt.addrs, tt.extra))
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("hostsFile mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestResolvConfFile(t *testing.T) {
	ip := netip.MustParseAddr
	const hostPath = "/etc/resolv.conf"
	tests := []struct {
		name string
		own  dnsSettings
		host string
		want string
	}{
		{
			name: "host file copied",
			host: "# comment\nnameserver 192.0.2.53\nnameserver 2001:db8::53\nsearch a.example b.example\noptions ndots:2\noptions edns0\nsortlist 10.0.0.0\n",
			want: "nameserver 192.0.2.53\nnameserver 2001:db8::53\nsearch a.example b.example\noptions ndots:2 edns0\n",
		},
		{
			name: "localhost nameservers dropped",
			host: "nameserver 127.0.0.53\nnameserver ::1\nnameserver 192.0.2.53\nnameserver 127.1.2.3\n",
			want: "nameserver 192.0.2.53\n",
		},
		{
			name: "only localhost: fallback",
			host: "nameserver 127.0.0.53\nsearch lan\n",
			want: "# No nameserver usable from the sandbox in /etc/resolv.conf: using the default nameservers.\n" +
				"nameserver 8.8.8.8\nnameserver 8.8.4.4\nsearch lan\n",
		},
		{
			name: "empty host: fallback",
			want: "# No nameserver usable from the sandbox in /etc/resolv.conf: using the default nameservers.\n" +
				"nameserver 8.8.8.8\nnameserver 8.8.4.4\n",
		},
		{
			name: "own settings override each field",
			own:  dnsSettings{nameservers: []netip.Addr{ip("198.51.100.1")}, options: []string{"rotate"}},
			host: "nameserver 192.0.2.53\nsearch lan\noptions ndots:3\n",
			want: "nameserver 198.51.100.1\nsearch lan\noptions rotate\n",
		},
		{
			name: "own localhost nameserver kept",
			own:  dnsSettings{nameservers: []netip.Addr{ip("127.0.0.11")}, search: []string{"x"}, options: []string{"ndots:0"}},
			host: "nameserver 192.0.2.53\n",
			want: "nameserver 127.0.0.11\nsearch x\noptions ndots:0\n",
		},
		{
			name: "search dot means none",
			own:  dnsSettings{search: []string{"."}},
			host: "nameserver 192.0.2.53\nsearch lan\n",
			want: "nameserver 192.0.2.53\n",
		},
		{
			name: "last search or domain wins, bad nameserver skipped",
			host: "search one\ndomain two\nnameserver not-an-ip\nnameserver 192.0.2.1\n; other comment\nnameserver\n",
			want: "nameserver 192.0.2.1\nsearch two\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := string(resolvConfFile(tt.own, []byte(tt.host), hostPath))
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("resolvConfFile mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

// FuzzResolvConfFile checks that any host file gives a well-formed resolv.conf with at least
// one nameserver and no localhost one.
func FuzzResolvConfFile(f *testing.F) {
	f.Add([]byte("nameserver 127.0.0.53\nsearch lan\noptions edns0 trust-ad\n"))
	f.Add([]byte("nameserver ::ffff:127.0.0.1\nnameserver fe80::1%eth0\n"))
	f.Add([]byte("domain\n\n\tnameserver\t192.0.2.1 extra\n"))
	f.Fuzz(func(t *testing.T, host []byte) {
		out := resolvConfFile(dnsSettings{}, host, "/etc/resolv.conf")
		if !bytes.HasSuffix(out, []byte("\n")) {
			t.Fatalf("output does not end in a newline: %q", out)
		}
		var ns int
		for _, line := range strings.Split(strings.TrimSuffix(string(out), "\n"), "\n") {
			fields := strings.Fields(line)
			if len(fields) < 2 {
				t.Fatalf("bad line %q in %q", line, out)
			}
			switch fields[0] {
			case "nameserver":
				ns++
				a, err := netip.ParseAddr(fields[1])
				if err != nil || len(fields) != 2 || a.Unmap().IsLoopback() {
					t.Fatalf("bad nameserver line %q", line)
				}
			case "search", "options", "#":
			default:
				t.Fatalf("unexpected line %q", line)
			}
		}
		if ns == 0 {
			t.Fatalf("no nameserver in %q", out)
		}
	})
}

func TestWriteFileInPlace(t *testing.T) {
	path := filepath.Join(t.TempDir(), "hosts")
	if err := writeFileInPlace(path, []byte("a long first version\n")); err != nil {
		t.Fatal(err)
	}
	before, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := writeFileInPlace(path, []byte("short\n")); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "short\n" {
		t.Errorf("contents = %q, want %q", got, "short\n")
	}
	after, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	// Bind mounts of the file must see the new contents: same inode.
	if !os.SameFile(before, after) {
		t.Error("file replaced, want it rewritten in place")
	}
}
