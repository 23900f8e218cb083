package cnm

import (
	"net/netip"
	"slices"
	"time"

	"github.com/cnmkit/cnm/sandbox"
)

// SandboxSpec is the per-call configuration of a new sandbox, set by SandboxOptions.
type SandboxSpec struct {
	Mode       sandbox.Mode
	Share      string // ModeContainer: the ID of the sandbox whose namespace is shared
	Netns      string // ModeNamespace: the path of a caller's namespace (WithNetns); "" to make one
	Hostname   string
	Domainname string
	DNS        []netip.Addr
	DNSSearch  []string
	DNSOptions []string
	ExtraHosts []sandbox.Host
}

// SandboxOption sets a field of a SandboxSpec.
type SandboxOption func(*SandboxSpec)

// HostMode makes the sandbox the host's own network namespace (docker run --net host). Only
// the host network's endpoints can join it.
func HostMode() SandboxOption { return func(s *SandboxSpec) { s.Mode = sandbox.ModeHost } }

// ContainerMode makes the sandbox share the namespace of sandbox id (--net container:<id>).
func ContainerMode(id string) SandboxOption {
	return func(s *SandboxSpec) { s.Mode, s.Share = sandbox.ModeContainer, id }
}

// WithNetns makes the sandbox use the network namespace at path, which its caller owns (a
// container runtime's, as a CNI plugin is given it), instead of making one: endpoints join
// it as they join any sandbox, and DeleteSandbox removes their interfaces from it and leaves
// the namespace. path must be absolute and clean, and not used by another sandbox (an error
// matching ErrConflict); one that is not a network namespace fails with ErrNotFound. After a
// restart the sandbox is restored while the namespace is still at path, and dropped (its
// endpoints deleted) when it is not. It cannot be combined with HostMode or ContainerMode.
func WithNetns(path string) SandboxOption { return func(s *SandboxSpec) { s.Netns = path } }

// WithHostname sets the hostname written to the sandbox's hosts file (default: its ID).
func WithHostname(h string) SandboxOption { return func(s *SandboxSpec) { s.Hostname = h } }

// WithDomainname sets the domain name written to the hosts file.
func WithDomainname(d string) SandboxOption { return func(s *SandboxSpec) { s.Domainname = d } }

// WithDNS sets the nameservers of the sandbox's resolv.conf (--dns).
func WithDNS(servers ...netip.Addr) SandboxOption {
	return func(s *SandboxSpec) { s.DNS = append(s.DNS, servers...) }
}

// WithDNSSearch sets the search domains of resolv.conf (--dns-search).
func WithDNSSearch(domains ...string) SandboxOption {
	return func(s *SandboxSpec) { s.DNSSearch = append(s.DNSSearch, domains...) }
}

// WithDNSOptions sets the options line of resolv.conf (--dns-option).
func WithDNSOptions(opts ...string) SandboxOption {
	return func(s *SandboxSpec) { s.DNSOptions = append(s.DNSOptions, opts...) }
}

// WithExtraHost adds a line to the hosts file (--add-host name:addr).
func WithExtraHost(name string, addr netip.Addr) SandboxOption {
	return func(s *SandboxSpec) { s.ExtraHosts = append(s.ExtraHosts, sandbox.Host{Name: name, Addr: addr}) }
}

// sandboxRecord is a sandbox as kept in the store.
type sandboxRecord struct {
	ID         string         `json:"id"`
	Mode       sandbox.Mode   `json:"mode"`
	Share      string         `json:"share,omitempty"`
	Netns      string         `json:"netns,omitempty"`
	Hostname   string         `json:"hostname,omitempty"`
	Domainname string         `json:"domainname,omitempty"`
	DNS        []netip.Addr   `json:"dns,omitempty"`
	DNSSearch  []string       `json:"dns_search,omitempty"`
	DNSOptions []string       `json:"dns_options,omitempty"`
	ExtraHosts []sandbox.Host `json:"extra_hosts,omitempty"`
	Created    time.Time      `json:"created"`
}

const sandboxPrefix = "cnm/v1/sandboxes/"

func (r sandboxRecord) spec() SandboxSpec {
	return SandboxSpec{
		Mode: r.Mode, Share: r.Share, Netns: r.Netns, Hostname: r.Hostname, Domainname: r.Domainname,
		DNS: slices.Clone(r.DNS), DNSSearch: slices.Clone(r.DNSSearch), DNSOptions: slices.Clone(r.DNSOptions),
		ExtraHosts: slices.Clone(r.ExtraHosts),
	}
}
