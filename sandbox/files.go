package sandbox

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"strings"
)

// The files a sandbox writes in Config.FilesDir.
const (
	hostsName  = "hosts"
	resolvName = "resolv.conf"
)

// hostsDefault is the start of every hosts file, as Docker writes it.
const hostsDefault = `127.0.0.1	localhost
::1	localhost ip6-localhost ip6-loopback
fe00::0	ip6-localnet
ff00::0	ip6-mcastprefix
ff02::1	ip6-allnodes
ff02::2	ip6-allrouters
`

// fallbackNameservers are Docker's nameservers for a container whose host has none usable.
var fallbackNameservers = []netip.Addr{netip.MustParseAddr("8.8.8.8"), netip.MustParseAddr("8.8.4.4")}

// hostsFile returns the contents of a sandbox's hosts file: the default entries, then each of
// addrs with the host name (the fully qualified name first when domainname is set), then the
// extra hosts. It is a pure function of its arguments.
func hostsFile(hostname, domainname string, addrs []netip.Addr, extra []Host) []byte {
	var b bytes.Buffer
	b.WriteString(hostsDefault)
	names := hostname
	if domainname != "" {
		names = hostname + "." + domainname + " " + hostname
	}
	for _, a := range addrs {
		fmt.Fprintf(&b, "%s\t%s\n", a, names)
	}
	for _, h := range extra {
		fmt.Fprintf(&b, "%s\t%s\n", h.Addr, h.Name)
	}
	return b.Bytes()
}

// resolvConf is what cnm takes from a resolv.conf file.
type resolvConf struct {
	nameservers []netip.Addr
	search      []string
	options     []string
}

// parseResolvConf reads the nameserver, search (or its obsolete form domain) and options
// lines of a resolv.conf as the resolver does: the last search or domain line wins and options
// accumulate. Comments, unparsable nameservers and other lines are skipped.
func parseResolvConf(data []byte) resolvConf {
	var rc resolvConf
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 || fields[0][0] == '#' || fields[0][0] == ';' {
			continue
		}
		switch fields[0] {
		case "nameserver":
			if a, err := netip.ParseAddr(fields[1]); err == nil {
				rc.nameservers = append(rc.nameservers, a)
			}
		case "search", "domain":
			rc.search = append([]string(nil), fields[1:]...)
		case "options":
			rc.options = append(rc.options, fields[1:]...)
		}
	}
	return rc
}

// dnsSettings are a sandbox's own DNS settings (Config.DNS, DNSSearch and DNSOptions).
type dnsSettings struct {
	nameservers []netip.Addr
	search      []string
	options     []string
}

// resolvConfFile returns the contents of a sandbox's resolv.conf. Each of the settings that
// is set is used as is; the others come from host, the host's resolv.conf read from hostPath,
// with its localhost nameservers (127.0.0.0/8, ::1) dropped, since they are unreachable from
// another namespace. When the host leaves no nameserver, Docker's fallback 8.8.8.8 and
// 8.8.4.4 is used and a comment says so. A search list of just "." means none. It is a pure
// function of its arguments.
func resolvConfFile(own dnsSettings, host []byte, hostPath string) []byte {
	rc := resolvConf{nameservers: own.nameservers, search: own.search, options: own.options}
	var fallback bool
	if len(own.nameservers) == 0 || len(own.search) == 0 || len(own.options) == 0 {
		h := parseResolvConf(host)
		if len(rc.nameservers) == 0 {
			for _, a := range h.nameservers {
				if !a.Unmap().IsLoopback() {
					rc.nameservers = append(rc.nameservers, a)
				}
			}
			if len(rc.nameservers) == 0 {
				rc.nameservers = fallbackNameservers
				fallback = true
			}
		}
		if len(rc.search) == 0 {
			rc.search = h.search
		}
		if len(rc.options) == 0 {
			rc.options = h.options
		}
	}
	if len(rc.search) == 1 && rc.search[0] == "." {
		rc.search = nil
	}

	var b bytes.Buffer
	if fallback {
		fmt.Fprintf(&b, "# No nameserver usable from the sandbox in %s: using the default nameservers.\n", hostPath)
	}
	for _, a := range rc.nameservers {
		fmt.Fprintf(&b, "nameserver %s\n", a)
	}
	if len(rc.search) > 0 {
		fmt.Fprintf(&b, "search %s\n", strings.Join(rc.search, " "))
	}
	if len(rc.options) > 0 {
		fmt.Fprintf(&b, "options %s\n", strings.Join(rc.options, " "))
	}
	return b.Bytes()
}

// resolvConfFor returns the resolv.conf contents for cfg.
func resolvConfFor(cfg *Config) ([]byte, error) {
	hostPath := cfg.HostResolvConf
	if hostPath == "" {
		hostPath = DefaultHostResolvConf
	}
	var host []byte
	if len(cfg.DNS) == 0 || len(cfg.DNSSearch) == 0 || len(cfg.DNSOptions) == 0 {
		var err error
		if host, err = readHostResolvConf(hostPath); err != nil {
			return nil, fmt.Errorf("read host resolv.conf: %w", err)
		}
	}
	own := dnsSettings{nameservers: cfg.DNS, search: cfg.DNSSearch, options: cfg.DNSOptions}
	return resolvConfFile(own, host, hostPath), nil
}

// readHostResolvConf reads the host's resolv.conf; a missing file reads as empty.
func readHostResolvConf(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	return b, err
}

// writeFileInPlace writes data to path, creating it with mode 0644 when missing. An existing
// file is overwritten in place, never replaced by a rename: container runtimes bind-mount
// the hosts and resolv.conf files, and a bind mount keeps showing the inode it was made
// with. The new contents are written before the file is cut to length, so a reader never sees
// an empty file. Callers serialize writes to one path.
func writeFileInPlace(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	_, err = f.WriteAt(data, 0)
	if err == nil {
		err = f.Truncate(int64(len(data)))
	}
	return errors.Join(err, f.Close())
}
