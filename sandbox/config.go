package sandbox

import (
	"fmt"
	"log/slog"
	"net/netip"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/cnmkit/cnm/internal/errclass"
)

// Host is an extra /etc/hosts entry (`docker run --add-host`).
type Host struct {
	Name string
	Addr netip.Addr
}

// Config describes a sandbox for [New] and [Open]. New and Open validate it and return an
// [errclass.InvalidParameterError] naming the first bad field.
type Config struct {
	// ID names the sandbox (the container's ID or name). Required: 1 to 64 characters of
	// [A-Za-z0-9_.-], the first alphanumeric. It is also the file name of the namespace's
	// bind mount.
	ID string
	// Mode is how the sandbox gets its namespace; the zero value is ModeNamespace.
	Mode Mode
	// RunDir is the run directory. A ModeNamespace sandbox's namespace is bind-mounted at
	// RunDir/netns/<ID>. Required for ModeNamespace, unused otherwise.
	RunDir string
	// Netns, for ModeNamespace, is the path of a network namespace the caller owns (a
	// container runtime's, as a CNI plugin is given it): the sandbox uses it instead of
	// making one, and it is the sandbox's Key. New and Open fail with an error matching
	// cnm.ErrNotFound when it cannot be opened. Delete removes the interfaces the sandbox
	// configured and leaves the namespace (with its loopback and anything else in it) to its
	// owner. It must be an absolute, clean path. Empty (the default): the sandbox makes its
	// own namespace under RunDir. Unused for the other modes, which refuse it.
	Netns string
	// FilesDir is the directory the hosts and resolv.conf files are written to
	// (FilesDir/hosts, FilesDir/resolv.conf). Required; created with mode 0755 when missing.
	// It should be the sandbox's own: Delete removes the two files and then the directory if
	// it is empty.
	FilesDir string
	// HostNetns is the path of the host network namespace. It is a ModeHost sandbox's
	// namespace, and the namespace that InterfaceConfig.SrcName links are moved from.
	// Empty means the namespace of the calling thread at New or Open.
	HostNetns string
	// Share is the sandbox whose namespace a ModeContainer sandbox shares. Required for
	// ModeContainer, and its namespace must still exist; unused otherwise.
	Share Sandbox
	// Hostname is the container's host name for the hosts file; empty means ID.
	// Domainname, when set, adds Hostname.Domainname.
	Hostname   string
	Domainname string
	// DNS, DNSSearch and DNSOptions, when set, are the resolv.conf nameservers, search
	// domains and options. Each one left empty is taken from HostResolvConf, as Docker does.
	// DNSSearch of just "." means no search domains.
	DNS        []netip.Addr
	DNSSearch  []string
	DNSOptions []string
	// ExtraHosts are added to the hosts file after the sandbox's own addresses.
	ExtraHosts []Host
	// HostResolvConf is the host's resolv.conf, read by New and Open for whatever DNS,
	// DNSSearch and DNSOptions leave empty; "" means /etc/resolv.conf. A missing file is
	// read as empty.
	HostResolvConf string
	// Logger receives debug and warning records; nil discards them.
	Logger *slog.Logger
}

// DefaultHostResolvConf is the host resolv.conf read when Config.HostResolvConf is empty.
const DefaultHostResolvConf = "/etc/resolv.conf"

// validID reports whether id is a valid sandbox ID: 1-64 characters of [A-Za-z0-9_.-], the
// first alphanumeric. A valid ID is also a safe file name.
func validID(id string) bool {
	if len(id) == 0 || len(id) > 64 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if i == 0 && !alnum {
			return false
		}
		if !alnum && c != '_' && c != '.' && c != '-' {
			return false
		}
	}
	return true
}

// ValidateID checks a sandbox ID as Config.Validate does: 1 to 64 characters of
// [A-Za-z0-9_.-], the first alphanumeric. It returns an [errclass.InvalidParameterError].
func ValidateID(id string) error { return checkID(id) }

func checkID(id string) error {
	if !validID(id) {
		return errclass.Invalid("sandbox id", id, "want 1-64 characters of [A-Za-z0-9_.-], the first alphanumeric")
	}
	return nil
}

// hasSpace reports whether s holds a space or control character, which would break a line
// of the hosts or resolv.conf file.
func hasSpace(s string) bool {
	return strings.ContainsFunc(s, func(r rune) bool { return r <= ' ' || r == 0x7f })
}

// Validate checks c as [New] does and returns an [errclass.InvalidParameterError] for the first
// bad field. It touches nothing: an implementation of [Machine] other than [Kernel] (package
// sandboxtest's) calls it to refuse what the kernel's would.
func (c *Config) Validate() error {
	if err := checkID(c.ID); err != nil {
		return err
	}
	switch c.Mode {
	case ModeNamespace:
		if c.RunDir == "" {
			return errclass.Invalid("run dir", c.RunDir, "required for mode namespace")
		}
		if c.Share != nil {
			return errclass.Invalid("share", c.Share.ID(), "only for mode container")
		}
		if err := ValidateNetns(c.Netns); c.Netns != "" && err != nil {
			return err
		}
	case ModeHost:
		if c.Share != nil {
			return errclass.Invalid("share", c.Share.ID(), "only for mode container")
		}
	case ModeContainer:
		if c.Share == nil {
			return errclass.Invalid("share", "", "required for mode container")
		}
	default:
		return errclass.Invalid("mode", c.Mode.String(), "want namespace, host or container")
	}
	if c.Netns != "" && c.Mode != ModeNamespace {
		return errclass.Invalid("netns", c.Netns, "only for mode namespace")
	}
	if c.FilesDir == "" {
		return errclass.Invalid("files dir", c.FilesDir, "required")
	}
	if filepath.Clean(c.FilesDir) == "/" {
		return errclass.Invalid("files dir", c.FilesDir, "must not be the root directory")
	}
	if hasSpace(c.Hostname) || len(c.Hostname) > 253 {
		return errclass.Invalid("hostname", c.Hostname, "want at most 253 characters without spaces")
	}
	if hasSpace(c.Domainname) || len(c.Domainname) > 253 {
		return errclass.Invalid("domainname", c.Domainname, "want at most 253 characters without spaces")
	}
	for _, a := range c.DNS {
		if !a.IsValid() {
			return errclass.Invalid("dns", a.String(), "not an IP address")
		}
	}
	for _, s := range c.DNSSearch {
		if s == "" || hasSpace(s) {
			return errclass.Invalid("dns search", s, "want a domain without spaces")
		}
	}
	for _, s := range c.DNSOptions {
		if s == "" || hasSpace(s) {
			return errclass.Invalid("dns option", s, "want an option without spaces")
		}
	}
	for _, h := range c.ExtraHosts {
		if h.Name == "" || hasSpace(h.Name) {
			return errclass.Invalid("extra host", h.Name, "want a host name without spaces")
		}
		if !h.Addr.IsValid() {
			return errclass.Invalid("extra host", fmt.Sprintf("%s:%s", h.Name, h.Addr), "not an IP address")
		}
	}
	return nil
}

// ValidateOpen checks c and ifaces as [Open] does: c as Validate does, and ifaces, which a
// sandbox of mode ModeHost or ModeContainer cannot have, for valid names given once each. It
// returns an [errclass.InvalidParameterError] for the first bad field.
func (c *Config) ValidateOpen(ifaces []Interface) error {
	if err := c.Validate(); err != nil {
		return err
	}
	if c.Mode != ModeNamespace && len(ifaces) > 0 {
		return errclass.Invalid("interfaces", ifaces[0].Name, "a sandbox in mode "+c.Mode.String()+" has none")
	}
	for i, ifc := range ifaces {
		if err := validIfname("interface name", ifc.Name); err != nil {
			return err
		}
		if slices.ContainsFunc(ifaces[:i], func(o Interface) bool { return o.Name == ifc.Name }) {
			return errclass.Invalid("interface name", ifc.Name, "given twice")
		}
	}
	return nil
}

// HostsFile returns the hosts file a sandbox of this configuration holds with the interfaces
// ifaces configured: what New writes (with none), and Open, AddInterface and RemoveInterface
// write again.
func (c *Config) HostsFile(ifaces []Interface) []byte {
	hostname := c.Hostname
	if hostname == "" {
		hostname = c.ID
	}
	var addrs []netip.Addr
	for _, ifc := range ifaces {
		if ifc.IPv4.IsValid() {
			addrs = append(addrs, ifc.IPv4.Addr())
		}
		if ifc.IPv6.IsValid() {
			addrs = append(addrs, ifc.IPv6.Addr())
		}
	}
	return hostsFile(hostname, c.Domainname, addrs, c.ExtraHosts)
}

// ResolvConf returns the resolv.conf file a sandbox of this configuration holds, as New and
// Open write it: DNS, DNSSearch and DNSOptions, and for those left empty the host's, read
// from HostResolvConf.
func (c *Config) ResolvConf() ([]byte, error) { return resolvConfFor(c) }

// ValidateNetns checks the path of a caller-owned namespace ([Config].Netns): absolute,
// clean, without white space or control characters, at most 4096 bytes. It returns an error
// matching cnm.ErrInvalidParameter that names it; it does not look at the file.
func ValidateNetns(p string) error {
	switch {
	case p == "" || len(p) > 4096:
		return errclass.Invalid("netns", p, "want an absolute path of 1 to 4096 bytes")
	case !path.IsAbs(p) || path.Clean(p) != p || p == "/":
		return errclass.Invalid("netns", p, "want an absolute, clean path to a namespace file")
	case hasSpace(p):
		return errclass.Invalid("netns", p, "contains white space or control characters")
	}
	return nil
}

// ValidateIfName checks an interface name: 1 to 15 bytes, not "." or "..", without '/', ':'
// or white space. It returns an error matching cnm.ErrInvalidParameter that names it.
func ValidateIfName(name string) error { return validIfname("interface name", name) }

func validIfname(field, name string) error {
	switch {
	case name == "":
		return errclass.Invalid(field, name, "required")
	case len(name) > 15:
		return errclass.Invalid(field, name, "longer than 15 bytes")
	case name == "." || name == "..":
		return errclass.Invalid(field, name, "not a valid interface name")
	case strings.ContainsAny(name, "/:") || hasSpace(name):
		return errclass.Invalid(field, name, "contains '/', ':' or white space")
	}
	return nil
}

// Validate checks cfg as AddInterface does and returns an [errclass.InvalidParameterError]
// for the first bad field: Name as [ValidateIfName] does, then the others.
func (cfg *InterfaceConfig) Validate() error {
	if err := validIfname("interface name", cfg.Name); err != nil {
		return err
	}
	return validateInterface(cfg)
}

// validateInterface checks the fields of cfg other than Name.
func validateInterface(cfg *InterfaceConfig) error {
	if cfg.InSandbox && cfg.SrcName != "" {
		return errclass.Invalid("source name", cfg.SrcName, "must be empty when the link is in the sandbox")
	}
	if !cfg.InSandbox {
		if err := validIfname("source name", cfg.SrcName); err != nil {
			return err
		}
	}
	if len(cfg.MAC) != 0 && len(cfg.MAC) != 6 {
		return errclass.Invalid("mac", cfg.MAC.String(), "want 6 bytes")
	}
	if cfg.IPv4.IsValid() && !cfg.IPv4.Addr().Is4() {
		return errclass.Invalid("ipv4", cfg.IPv4.String(), "not an IPv4 prefix")
	}
	if cfg.IPv6.IsValid() && !cfg.IPv6.Addr().Is6() {
		return errclass.Invalid("ipv6", cfg.IPv6.String(), "not an IPv6 prefix")
	}
	if cfg.IPv6.IsValid() && cfg.IPv6.Addr().Is4In6() {
		return errclass.Invalid("ipv6", cfg.IPv6.String(), "an IPv4-mapped address")
	}
	if cfg.Gateway.IsValid() && !cfg.Gateway.Is4() {
		return errclass.Invalid("gateway", cfg.Gateway.String(), "not an IPv4 address")
	}
	if cfg.GatewayIPv6.IsValid() && (!cfg.GatewayIPv6.Is6() || cfg.GatewayIPv6.Is4In6()) {
		return errclass.Invalid("ipv6 gateway", cfg.GatewayIPv6.String(), "not an IPv6 address")
	}
	for _, r := range cfg.Routes {
		if !r.Destination.IsValid() {
			return errclass.Invalid("route", r.Destination.String(), "not a prefix")
		}
		if r.NextHop.IsValid() && r.NextHop.Is4() != r.Destination.Addr().Is4() {
			return errclass.Invalid("route", fmt.Sprintf("%s via %s", r.Destination, r.NextHop), "next hop of another family")
		}
	}
	return nil
}

// Clone returns a deep copy of ifc.
func (ifc Interface) Clone() Interface {
	ifc.MAC = append([]byte(nil), ifc.MAC...)
	ifc.Routes = append([]Route(nil), ifc.Routes...)
	return ifc
}
