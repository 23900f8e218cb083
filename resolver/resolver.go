// Package resolver is cnm's embedded DNS server: the resolver that containers on user-defined
// networks reach at 127.0.0.11:53 (UDP and TCP), as Docker's and Podman's do. It answers A and
// AAAA queries for the names of the sandboxes that share a network with the asker (the
// sandbox's name, its host name, its endpoint's name and the endpoint's network-scoped
// aliases), PTR queries for their addresses, NXDOMAIN for unknown names of the local domain,
// and forwards everything else to the asker's upstream servers.
//
// # Model
//
// One Resolver serves every sandbox of a process. The caller (the cnm Controller, fed by its
// event stream) tells it which endpoints exist, with AddEndpoint and RemoveEndpoint, and hands
// it, per sandbox, a UDP socket and a TCP listener opened inside the sandbox's network namespace
// with Serve; Stop closes them. The Resolver itself knows nothing of namespaces: it reads and
// writes the sockets it is given and, to forward a query, dials through the Dial function of
// the sandbox (which the Controller makes open its socket inside the sandbox's namespace, so
// that forwarded queries take the container's own routes, as Docker's did).
//
// A name is answered to a sandbox only from the networks the sandbox has an endpoint on:
// sandboxes of two networks that share none cannot resolve each other. A name is also found
// qualified with its network's name ("db.new_bridge"). Names are case-insensitive. Local
// answers have a TTL of 600 seconds, as Docker's.
//
// # Bounds and bad input
//
// Each served sandbox has a token bucket (Config.QueryRate): queries past it are dropped
// unread, so that a flood from one sandbox costs the others only the CPU of reading it. At
// most Config.MaxForwards queries are forwarded at once in all, and
// Config.MaxSandboxForwards per sandbox; a query past either bound, an upstream that does not
// answer within Config.Timeout, and a sandbox without upstream get SERVFAIL. A truncated
// answer over UDP is asked again over TCP. A malformed query is answered FORMERR when its
// header can be read and dropped otherwise; a message that is not a query is dropped. No
// input makes the Resolver panic (its packet handling is fuzzed).
//
// # Goroutines and lifecycle
//
// Serve starts, per sandbox, a goroutine reading its UDP socket and one accepting on its TCP
// listener; each TCP connection (at most Config.MaxTCPConns per sandbox) and each forwarded
// UDP query has a goroutine of its own, bounded as above. Stop closes the sandbox's sockets,
// cancels its forwards and waits for all of them; Close does so for every sandbox. All
// methods are safe for concurrent use.
package resolver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/miekg/dns"
)

// Address is where containers reach the embedded resolver, inside their own namespace, as in
// Docker: 127.0.0.11, port 53.
var Address = netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 11}), 53)

// TTL is the time to live of local answers, in seconds.
const TTL = 600

// Defaults of Config's zero fields.
const (
	DefaultTimeout            = 4 * time.Second
	DefaultMaxForwards        = 1024
	DefaultMaxSandboxForwards = 100
	DefaultQueryRate          = 4000
	DefaultMaxTCPConns        = 16
)

// Config configures a Resolver. The zero value is usable.
type Config struct {
	// Logger receives the Resolver's logs (at debug level for per-query trouble). Nil
	// discards them.
	Logger *slog.Logger
	// Timeout bounds a forwarded query, all upstreams and the TCP retry included; past it
	// the asker gets SERVFAIL. Zero means DefaultTimeout.
	Timeout time.Duration
	// MaxForwards bounds the queries being forwarded at once, for all sandboxes; zero means
	// DefaultMaxForwards.
	MaxForwards int
	// MaxSandboxForwards bounds the queries being forwarded at once for one sandbox; zero
	// means DefaultMaxSandboxForwards.
	MaxSandboxForwards int
	// QueryRate is how many queries per second one sandbox may send, in a burst of as many:
	// the rest are dropped. Zero means DefaultQueryRate; negative means no limit.
	QueryRate float64
	// MaxTCPConns bounds the TCP connections one sandbox may hold open; zero means
	// DefaultMaxTCPConns.
	MaxTCPConns int
	// Now is the clock, for the rate limit; nil means time.Now.
	Now func() time.Time
}

// Endpoint is a sandbox's attachment to a network, as the Resolver knows it.
type Endpoint struct {
	ID          string // the endpoint's ID, unique in its network
	NetworkID   string
	NetworkName string
	SandboxID   string // the sandbox it is joined to
	// Names are the names it answers to on its network: the first is the one PTR answers
	// give (qualified with NetworkName), the others (host name, aliases) follow.
	Names []string
	IPv4  netip.Addr // invalid when none
	IPv6  netip.Addr
}

// Dialer opens a connection to an upstream server ("udp" or "tcp", "ip:port"), for a sandbox.
type Dialer func(ctx context.Context, network, address string) (net.Conn, error)

// Sandbox is what Serve needs to serve a sandbox.
type Sandbox struct {
	ID string
	// UDP and TCP are the sockets to serve, bound to Address inside the sandbox's namespace.
	// The Resolver owns them from Serve on and closes them in Stop (or at once when Serve
	// fails).
	UDP net.PacketConn
	TCP net.Listener
	// Upstreams are the servers queries for other names are forwarded to, tried in order.
	// None: such queries get SERVFAIL.
	Upstreams []netip.AddrPort
	// Dial opens the connections to upstreams; nil means a net.Dialer of the caller's
	// namespace.
	Dial Dialer
}

// ErrClosed is returned by Serve after Close.
var ErrClosed = errors.New("resolver: closed")

// Resolver is the embedded DNS server. Create it with New and release it with Close.
type Resolver struct {
	cfg Config
	log *slog.Logger
	fwd chan struct{} // semaphore of forwards in flight, all sandboxes

	mu     sync.RWMutex // guards following
	eps    map[epKey]*Endpoint
	nets   map[string]*netTable          // by network ID
	sbNets map[string]map[string]int     // sandbox ID -> network ID -> its endpoints there
	byAddr map[netip.Addr]map[epKey]bool // address -> endpoints with it
	served map[string]*served            // by sandbox ID
	closed bool
}

type epKey struct{ net, id string }

// netTable is the names of one network.
type netTable struct {
	name   string                    // the network's name, lower case
	byName map[string]map[epKey]bool // lower-case name -> endpoints answering to it
}

// New returns a Resolver with no endpoint and no sandbox served. A negative bound or timeout
// fails with an error matching cnm.ErrInvalidParameter that names the field.
func New(cfg Config) (*Resolver, error) {
	for _, f := range []struct {
		name string
		v    int
	}{{"MaxForwards", cfg.MaxForwards}, {"MaxSandboxForwards", cfg.MaxSandboxForwards}, {"MaxTCPConns", cfg.MaxTCPConns}} {
		if f.v < 0 {
			return nil, fmt.Errorf("resolver: %w", errclass.Invalid(f.name, strconv.Itoa(f.v), "must not be negative"))
		}
	}
	if cfg.Timeout < 0 {
		return nil, fmt.Errorf("resolver: %w", errclass.Invalid("Timeout", cfg.Timeout.String(), "must not be negative"))
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.MaxForwards == 0 {
		cfg.MaxForwards = DefaultMaxForwards
	}
	if cfg.MaxSandboxForwards == 0 {
		cfg.MaxSandboxForwards = DefaultMaxSandboxForwards
	}
	if cfg.QueryRate == 0 {
		cfg.QueryRate = DefaultQueryRate
	}
	if cfg.MaxTCPConns == 0 {
		cfg.MaxTCPConns = DefaultMaxTCPConns
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Resolver{
		cfg: cfg, log: cfg.Logger, fwd: make(chan struct{}, cfg.MaxForwards),
		eps: make(map[epKey]*Endpoint), nets: make(map[string]*netTable),
		sbNets: make(map[string]map[string]int), byAddr: make(map[netip.Addr]map[epKey]bool),
		served: make(map[string]*served),
	}, nil
}

// normName returns name in lower case without its trailing dot.
func normName(name string) string { return strings.ToLower(strings.TrimSuffix(name, ".")) }

// AddEndpoint makes ep's names resolvable to the sandboxes of its network, replacing what an
// earlier AddEndpoint of the same network and ID said. Names that are empty are skipped.
func (r *Resolver) AddEndpoint(ep Endpoint) {
	ep.Names = slices.Clone(ep.Names)
	r.mu.Lock()
	defer r.mu.Unlock()
	k := epKey{ep.NetworkID, ep.ID}
	r.removeLocked(k)
	t := r.nets[ep.NetworkID]
	if t == nil {
		t = &netTable{byName: make(map[string]map[epKey]bool)}
		r.nets[ep.NetworkID] = t
	}
	t.name = normName(ep.NetworkName)
	for _, n := range ep.Names {
		if n = normName(n); n == "" {
			continue
		}
		if t.byName[n] == nil {
			t.byName[n] = make(map[epKey]bool)
		}
		t.byName[n][k] = true
	}
	for _, a := range []netip.Addr{ep.IPv4, ep.IPv6} {
		if a.IsValid() {
			a = a.Unmap()
			if r.byAddr[a] == nil {
				r.byAddr[a] = make(map[epKey]bool)
			}
			r.byAddr[a][k] = true
		}
	}
	if ep.SandboxID != "" {
		if r.sbNets[ep.SandboxID] == nil {
			r.sbNets[ep.SandboxID] = make(map[string]int)
		}
		r.sbNets[ep.SandboxID][ep.NetworkID]++
	}
	r.eps[k] = &ep
}

// RemoveEndpoint forgets the endpoint id of network networkID. A missing one is ignored.
func (r *Resolver) RemoveEndpoint(networkID, id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.removeLocked(epKey{networkID, id})
}

// Reset forgets every endpoint (the sandboxes served stay served), for a caller that lost
// track of the state and is about to add it again.
func (r *Resolver) Reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.eps = make(map[epKey]*Endpoint)
	r.nets = make(map[string]*netTable)
	r.sbNets = make(map[string]map[string]int)
	r.byAddr = make(map[netip.Addr]map[epKey]bool)
}

// Endpoints returns the endpoints known, sorted by network ID and endpoint ID.
func (r *Resolver) Endpoints() []Endpoint {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]Endpoint, 0, len(r.eps))
	for _, ep := range r.eps {
		e := *ep
		e.Names = slices.Clone(e.Names)
		out = append(out, e)
	}
	slices.SortFunc(out, func(a, b Endpoint) int {
		return strings.Compare(a.NetworkID+"/"+a.ID, b.NetworkID+"/"+b.ID)
	})
	return out
}

func (r *Resolver) removeLocked(k epKey) {
	ep := r.eps[k]
	if ep == nil {
		return
	}
	delete(r.eps, k)
	if t := r.nets[k.net]; t != nil {
		for _, n := range ep.Names {
			n = normName(n)
			delete(t.byName[n], k)
			if len(t.byName[n]) == 0 {
				delete(t.byName, n)
			}
		}
		if len(t.byName) == 0 {
			delete(r.nets, k.net)
		}
	}
	for _, a := range []netip.Addr{ep.IPv4, ep.IPv6} {
		if a.IsValid() {
			a = a.Unmap()
			delete(r.byAddr[a], k)
			if len(r.byAddr[a]) == 0 {
				delete(r.byAddr, a)
			}
		}
	}
	if m := r.sbNets[ep.SandboxID]; m != nil {
		if m[k.net]--; m[k.net] <= 0 {
			delete(m, k.net)
		}
		if len(m) == 0 {
			delete(r.sbNets, ep.SandboxID)
		}
	}
}

// lookup is the local answer to a name query from sandbox sb.
type lookup struct {
	local bool         // the name is of the local domain: answer, do not forward
	found bool         // an endpoint on a network sb is on answers to it
	addrs []netip.Addr // the addresses of those endpoints
}

// lookupName finds name (normalized) for sandbox sb.
func (r *Resolver) lookupName(sb, name string) lookup {
	r.mu.RLock()
	defer r.mu.RUnlock()
	var l lookup
	mine := r.sbNets[sb]
	add := func(t *netTable, n string) {
		for k := range t.byName[n] {
			ep := r.eps[k]
			l.local, l.found = true, true
			for _, a := range []netip.Addr{ep.IPv4, ep.IPv6} {
				if a.IsValid() && !slices.Contains(l.addrs, a.Unmap()) {
					l.addrs = append(l.addrs, a.Unmap())
				}
			}
		}
	}
	for netID := range mine {
		t := r.nets[netID]
		if t == nil {
			continue
		}
		add(t, name)
		if base, ok := strings.CutSuffix(name, "."+t.name); ok && t.name != "" {
			l.local = true // a name of this network's domain: never forwarded
			add(t, base)
		} else if name == t.name {
			l.local = true
		}
	}
	if !strings.Contains(name, ".") && name != "" {
		l.local = true // a single label: a container name, never an upstream's
	}
	slices.SortFunc(l.addrs, func(a, b netip.Addr) int { return a.Compare(b) })
	return l
}

// lookupAddr returns the PTR names of addr for sandbox sb: "name.network" of each endpoint
// with that address on a network sb is on.
func (r *Resolver) lookupAddr(sb string, addr netip.Addr) []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	mine := r.sbNets[sb]
	var out []string
	for k := range r.byAddr[addr.Unmap()] {
		if mine[k.net] == 0 {
			continue
		}
		ep := r.eps[k]
		if len(ep.Names) == 0 {
			continue
		}
		n := normName(ep.Names[0])
		if t := r.nets[k.net]; t != nil && t.name != "" {
			n += "." + t.name
		}
		out = append(out, dns.Fqdn(n))
	}
	slices.Sort(out)
	return out
}
