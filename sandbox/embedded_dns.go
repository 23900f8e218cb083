package sandbox

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
)

// EmbeddedResolvConf returns the resolv.conf of a sandbox of this configuration whose names
// are served by an embedded DNS resolver at server (127.0.0.11 in cnm), as Docker writes it for
// a container on a user-defined network: the only nameserver is server, the search domains are
// those ResolvConf would write, and the options are those too with "ndots:0" added unless the
// sandbox's own DNSOptions set ndots (the host's ndots is replaced). It also returns the
// servers the resolver forwards other names to: the nameservers ResolvConf would write (DNS,
// else the host's that are reachable from the sandbox, else Docker's fallback).
func (c *Config) EmbeddedResolvConf(server netip.Addr) (conf []byte, upstreams []netip.Addr, err error) {
	plain, err := resolvConfFor(c)
	if err != nil {
		return nil, nil, err
	}
	rc := parseResolvConf(plain)
	opts := []string{}
	ownNdots := false
	for _, o := range c.DNSOptions {
		ownNdots = ownNdots || strings.HasPrefix(o, "ndots:")
	}
	for _, o := range rc.options {
		if !ownNdots && strings.HasPrefix(o, "ndots:") {
			continue
		}
		opts = append(opts, o)
	}
	if !ownNdots {
		opts = append([]string{"ndots:0"}, opts...)
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "# Names of this sandbox's networks are served by cnm's embedded resolver at %s;\n# it forwards other names to: %s\n", server, joinAddrs(rc.nameservers))
	fmt.Fprintf(&b, "nameserver %s\n", server)
	if len(rc.search) > 0 {
		fmt.Fprintf(&b, "search %s\n", strings.Join(rc.search, " "))
	}
	fmt.Fprintf(&b, "options %s\n", strings.Join(opts, " "))
	return b.Bytes(), rc.nameservers, nil
}

func joinAddrs(as []netip.Addr) string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, " ")
}

// WriteResolvConf overwrites the resolv.conf file at path (a sandbox's ResolvConfPath) with
// data, in place, as New and Open write it: a bind mount of the file keeps showing it. It
// never creates the file: a missing one (its sandbox deleted meanwhile) fails with an error
// matching fs.ErrNotExist, and one removed while it writes stays removed. The caller
// serializes writes to one path; New and Open are the only writers in this package.
func WriteResolvConf(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteAt(data, 0)
	if err == nil {
		err = f.Truncate(int64(len(data)))
	}
	return errors.Join(err, f.Close())
}
