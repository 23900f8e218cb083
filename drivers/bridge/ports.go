package bridge

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/internal/iptables"
)

// Default ephemeral host ports, as Docker's (the kernel's ip_local_port_range ends at 60999).
const (
	DefaultPortRangeFirst = 49153
	DefaultPortRangeLast  = 60999
)

// PortRange is a range of host ports, First to Last inclusive.
type PortRange struct {
	First, Last uint16
}

// String returns "First-Last".
func (r PortRange) String() string { return fmt.Sprintf("%d-%d", r.First, r.Last) }

// endpoint is what the driver remembers of an endpoint. It is immutable once stored.
type endpoint struct {
	nid    drivers.NetworkID
	bridge string
	addr   netip.Addr            // IPv4 address; zero for none
	addr6  netip.Addr            // IPv6 address; zero for none
	ports  []drivers.PortBinding // as bound: single ports, HostIP as given (zero: all)
	held   []heldPort            // the host ports reserved and held: one per binding and family
}

// heldPort is a host port an endpoint publishes in one family, reserved in the driver and held
// by a socket in the host namespace.
type heldPort struct {
	portKey
	cport uint16 // the container port
	fd    int    // the socket bound to the port
}

// heldFds returns the sockets of held.
func heldFds(held []heldPort) []int {
	fds := make([]int, len(held))
	for i, h := range held {
		fds[i] = h.fd
	}
	return fds
}

// portKey is a reserved host port. An unspecified (zero) addr holds the port on every address
// of its family.
type portKey struct {
	proto string
	port  uint16
	addr  netip.Addr // zero for all addresses
	v6    bool       // the family: addr.Is6() when addr is valid
}

// conflicts reports whether k and o cannot both be bound.
func (k portKey) conflicts(o portKey) bool {
	return k.proto == o.proto && k.port == o.port && k.v6 == o.v6 && (!k.addr.IsValid() || !o.addr.IsValid() || k.addr == o.addr)
}

// String returns the host address, port and protocol of k: "0.0.0.0:8080/tcp".
func (k portKey) String() string {
	a := k.addr
	if !a.IsValid() {
		a = netip.IPv4Unspecified()
		if k.v6 {
			a = netip.IPv6Unspecified()
		}
	}
	return fmt.Sprintf("%s/%s", netip.AddrPortFrom(a, k.port), k.proto)
}

// PortInUseError reports that a host port to publish is held by a socket the driver does not
// own: a host service listening on it, or any other program that bound it. It matches
// cnm.ErrConflict.
type PortInUseError struct {
	Proto  string     // "tcp" or "udp"
	HostIP netip.Addr // the zero Addr for every address of the family
	V6     bool       // the family, when HostIP is zero
	Port   uint16
	Err    error // what bind(2) returned
}

func (e *PortInUseError) Error() string {
	k := portKey{proto: e.Proto, port: e.Port, addr: e.HostIP, v6: e.V6}
	return fmt.Sprintf("host port %s is in use on the host: %v", k, e.Err)
}

// Is reports whether target is cnm.ErrConflict.
func (e *PortInUseError) Is(target error) bool { return target == drivers.ErrConflict }

// Unwrap returns the error of bind(2).
func (e *PortInUseError) Unwrap() error { return e.Err }

// protoPort indexes the reservations.
type protoPort struct {
	proto string
	port  uint16
}

// wantPort is one binding to reserve: a fixed host port, or a range (first..last) to pick
// one free port from, the same in each of its families.
type wantPort struct {
	b           drivers.PortBinding // single container port, HostPort/HostPortEnd cleared, HostIP as given
	keys        []portKey           // the reservations to make, one per family, without their port
	first, last uint16
}

// wantKeys returns the reservations of want without their ports, in order, for openPortSockets.
func wantKeys(want []wantPort) []portKey {
	var keys []portKey
	for _, w := range want {
		keys = append(keys, w.keys...)
	}
	return keys
}

// expandPorts checks the requested bindings of an endpoint of n and returns them one
// container port each, with n's default host address filled in and the families to publish
// in: a binding without a host address (or with n's default, when that is unspecified) is
// published in each family the endpoint has an address of, on the same host port; one with an
// address, in that address's family (0.0.0.0 and :: stand for every address of theirs).
func (d *Driver) expandPorts(n *network, req drivers.CreateEndpointRequest) ([]wantPort, error) {
	if len(req.Ports) == 0 {
		return nil, nil
	}
	switch {
	case n.internal:
		return nil, drivers.Invalid("published ports", req.Ports[0].String(), "an internal network publishes no ports")
	case d.noFW:
		return nil, &drivers.NotSupportedError{What: "published ports with the firewall disabled (Config.DisableIPTables)"}
	case !req.IPv4.IsValid() && !req.IPv6.IsValid():
		return nil, drivers.Invalid("published ports", req.Ports[0].String(), "the endpoint has no address")
	}
	var out []wantPort
	for _, b := range req.Ports {
		if err := b.Validate(); err != nil {
			return nil, err
		}
		if b.Proto == "" {
			b.Proto = "tcp"
		}
		if !b.HostIP.IsValid() && !n.hostIP.IsUnspecified() {
			b.HostIP = n.hostIP
		}
		b.HostIP = b.HostIP.Unmap()
		keyAt := func(v6 bool) portKey {
			k := portKey{proto: b.Proto, addr: b.HostIP, v6: v6}
			if k.addr.IsUnspecified() {
				k.addr = netip.Addr{}
			}
			return k
		}
		var keys []portKey
		switch {
		case !b.HostIP.IsValid():
			if req.IPv4.IsValid() {
				keys = append(keys, keyAt(false))
			}
			if req.IPv6.IsValid() {
				keys = append(keys, keyAt(true))
			}
		case b.HostIP.Is4():
			if !req.IPv4.IsValid() {
				return nil, drivers.Invalid("published ports", b.String(), "the endpoint has no IPv4 address")
			}
			keys = append(keys, keyAt(false))
		case b.HostIP.IsLoopback():
			return nil, &drivers.NotSupportedError{What: "publishing on " + b.HostIP.String() +
				" (IPv6 does not route loopback traffic to a container after DNAT, and the driver starts no proxy)"}
		default:
			if !req.IPv6.IsValid() {
				return nil, drivers.Invalid("published ports", b.String(), "the endpoint has no IPv6 address")
			}
			keys = append(keys, keyAt(true))
		}
		if d.fwb.kind() == FirewallIPTables && slices.ContainsFunc(keys, func(k portKey) bool { return k.v6 }) {
			if err := d.fw6.Check(); err != nil {
				return nil, err
			}
		}
		span := 0
		if b.ContainerPortEnd > b.ContainerPort {
			span = int(b.ContainerPortEnd - b.ContainerPort)
		}
		for i := 0; i <= span; i++ {
			one := b
			one.ContainerPort, one.ContainerPortEnd = b.ContainerPort+uint16(i), 0
			w := wantPort{keys: keys}
			switch {
			case b.HostPort == 0: // ephemeral
				w.first, w.last = d.portRange.First, d.portRange.Last
			case span > 0: // equal ranges, port i to port i
				w.first, w.last = b.HostPort+uint16(i), b.HostPort+uint16(i)
			default:
				w.first, w.last = b.HostPort, max(b.HostPort, b.HostPortEnd)
			}
			one.HostPort, one.HostPortEnd = 0, 0
			w.b = one
			out = append(out, w)
		}
	}
	return out, nil
}

// reserveLocked reserves a host port for each of want on behalf of eid, the same port in each
// of its families, and holds each by binding one of socks: unbound sockets opened by
// openPortSockets for wantKeys(want), in that order. It returns the bindings as bound and the
// ports held. A port in reuse (the ports of the endpoint being created again) is held by the
// socket given there instead, and its socket of socks stays unbound. A port another endpoint of
// the driver published is a conflict (an error matching cnm.ErrConflict that names the port),
// and so is one that anyone else holds on the host (a *PortInUseError); an ephemeral pick, or
// one from a range, skips both. When a port is held in one family and not in another, the
// socket already bound to it is replaced by a new one, opened in the host namespace under the
// lock (sockets cannot be unbound); socks is updated in place. On error it reserves nothing,
// and the caller closes socks.
func (d *Driver) reserveLocked(eid drivers.EndpointID, want []wantPort, socks []int, reuse map[portKey]int) ([]drivers.PortBinding, []heldPort, error) {
	var (
		bound []drivers.PortBinding
		held  []heldPort
	)
	undo := func() {
		for _, h := range held {
			d.releaseLocked(h.portKey)
		}
	}
	next := 0 // the first socket of the current want in socks
	for _, w := range want {
		ws := socks[next : next+len(w.keys)]
		next += len(w.keys)
		var (
			found bool
			inUse error // the last bind that found the port held on the host
			fds   = make([]int, len(w.keys))
			port  uint16
		)
		span := int(w.last) - int(w.first) + 1
		start := w.first
		if w.first != w.last {
			// Ephemeral ports and ranges rotate, as the kernel's do, so a port just freed is
			// not handed out again at once.
			if c := d.nextPort[w.b.Proto]; c >= w.first && c <= w.last {
				start = c
			}
		}
	candidates:
		for j := range span {
			port = uint16(int(w.first) + (int(start-w.first)+j)%span)
			for _, k := range w.keys {
				if k.port = port; !d.freeLocked(k) {
					continue candidates
				}
			}
			var fresh []int // indexes of ws bound for this port
			for x, k := range w.keys {
				k.port = port
				if own, ok := reuse[k]; ok {
					fds[x] = own
					continue
				}
				err := bindPortSocket(ws[x], k)
				if err == nil {
					fds[x] = ws[x]
					fresh = append(fresh, x)
					continue
				}
				if !portInUse(err) {
					undo()
					return nil, nil, fmt.Errorf("hold host port %s: %w", k, err)
				}
				inUse = &PortInUseError{Proto: k.proto, HostIP: k.addr, V6: k.v6, Port: k.port, Err: err}
				// Free the port in the families that bound it: replace their sockets.
				for _, y := range fresh {
					closePortSockets(ws[y : y+1])
					ws[y] = -1
					fd, err := openPortSockets(d.ns, w.keys[y:y+1])
					if err != nil {
						undo()
						return nil, nil, err
					}
					ws[y] = fd[0]
				}
				continue candidates
			}
			found = true
			break
		}
		if !found {
			undo()
			k := w.keys[0]
			k.port = w.first
			switch {
			case w.first == w.last && inUse != nil:
				return nil, nil, inUse
			case w.first == w.last:
				return nil, nil, &drivers.ConflictError{Kind: "host port", Name: k.String(),
					Reason: "already published by another endpoint"}
			}
			host := w.b
			host.HostPort, host.HostPortEnd = w.first, w.last
			return nil, nil, &drivers.ConflictError{Kind: "host port range", Name: host.String(), Reason: "no free port in the range"}
		}
		if w.first != w.last {
			d.nextPort[w.b.Proto] = port + 1
		}
		for x, k := range w.keys {
			k.port = port
			pp := protoPort{k.proto, k.port}
			d.bound[pp] = append(d.bound[pp], k)
			held = append(held, heldPort{portKey: k, cport: w.b.ContainerPort, fd: fds[x]})
		}
		b := w.b
		b.HostPort = port
		bound = append(bound, b)
	}
	return bound, held, nil
}

func (d *Driver) freeLocked(k portKey) bool {
	for _, o := range d.bound[protoPort{k.proto, k.port}] {
		if k.conflicts(o) {
			return false
		}
	}
	return true
}

func (d *Driver) releaseLocked(k portKey) {
	pp := protoPort{k.proto, k.port}
	l := d.bound[pp]
	if i := slices.Index(l, k); i >= 0 {
		l = slices.Delete(l, i, i+1)
	}
	if len(l) == 0 {
		delete(d.bound, pp)
	} else {
		d.bound[pp] = l
	}
}

// The chains of published ports.
const (
	ChainPorts = "CNM-PORTS" // filter; second rule of CNM-FORWARD jumps here
	ChainDNAT  = "CNM-DNAT"  // nat; jumped to from PREROUTING and OUTPUT for local addresses
)

// portChains are the shared chains that hold the jumps to the endpoints' own chains, in
// buckets (portBuckets), as networkChains do.
var portChains = []chainRef{
	{tableFilter, ChainPorts},
	{tableNAT, ChainDNAT},
}

// portBuckets returns the bucket chains that hold the jumps to the own chains of the endpoint
// with short ID short, in the order of portChains.
func portBuckets(short string) []chainRef { return inBucket(portChains, bucketOf(short)) }

// endpointChain returns the name of the own chains of endpoint eid, given the first 12
// characters of its ID.
func endpointChain(short string) string { return ChainEndpointPrefix + short }

// endpointTag returns the comment match that marks every rule of endpoint eid: how the driver
// finds them again, after a restart too.
func endpointTag(eid drivers.EndpointID) string {
	return `-m comment --comment "cnm:` + eid.Short() + `"`
}

// ruleEndpoint returns the short endpoint ID in the comment of rule, or "".
func ruleEndpoint(rule string) string {
	const mark = `--comment "cnm:`
	i := strings.Index(rule, mark)
	if i < 0 {
		return ""
	}
	rest := rule[i+len(mark):]
	if j := strings.IndexByte(rest, '"'); j >= 0 {
		return rest[:j]
	}
	return ""
}

// belongsToEndpoint returns the test of the rules of the endpoint with short ID short in the
// shared port chains: the jumps to its chain, and rules tagged with its comment (an older,
// flat layout).
func belongsToEndpoint(short string) func(rule string) bool {
	chain := endpointChain(short)
	return func(r string) bool { return ruleTarget(r) == chain || ruleEndpoint(r) == short }
}

// portRules returns the rules of ep's published ports in the tables of family f, each as
// iptables-save prints it: in its own chain CNM-E-<eid12>, a DNAT per held port of the family
// in the nat table and an ACCEPT per container port in the filter table for traffic forwarded
// into the bridge from elsewhere, each tagged with the endpoint's comment; in the shared
// chains, a jump from CNM-DNAT and one from CNM-PORTS for traffic to the endpoint's address of
// the family. Nil when ep publishes nothing in f.
func portRules(eid drivers.EndpointID, ep *endpoint, f *ipFamily) *fwObject {
	addr, bits := ep.addr, 32
	if f.v6 {
		addr, bits = ep.addr6, 128
	}
	tag := endpointTag(eid)
	o := &fwObject{chain: endpointChain(eid.Short()), own: map[string][]string{}}
	for _, h := range ep.held {
		if h.v6 != f.v6 {
			continue
		}
		dst := ""
		if h.addr.IsValid() {
			dst = fmt.Sprintf("-d %s/%d ", h.addr, bits)
		}
		o.own[tableNAT] = append(o.own[tableNAT], fmt.Sprintf("%s-p %s -m %s --dport %d %s -j DNAT --to-destination %s",
			dst, h.proto, h.proto, h.port, tag, netip.AddrPortFrom(addr, h.cport)))
		a := fmt.Sprintf("-d %s/%d ! -i %s -o %s -p %s -m %s --dport %d %s -j ACCEPT",
			addr, bits, ep.bridge, ep.bridge, h.proto, h.proto, h.cport, tag)
		if !slices.Contains(o.own[tableFilter], a) {
			o.own[tableFilter] = append(o.own[tableFilter], a)
		}
	}
	if len(o.own[tableNAT]) == 0 {
		return nil
	}
	pb := portBuckets(eid.Short())
	o.shared = map[chainRef][]string{
		pb[0]: {fmt.Sprintf("-d %s/%d -j %s", addr, bits, o.chain)},
		pb[1]: {"-j " + o.chain},
	}
	return o
}

// planEndpoint adds to t what brings the rules of the endpoint with short ID short to want
// (nil: none), given the tables now.
func planEndpoint(t *restoreText, tables map[string]*iptables.Table, short string, want *fwObject) {
	planConverge(t, tables, endpointChain(short), want, withBuckets(portChains), belongsToEndpoint(short))
}

// ensurePorts brings the rules of endpoint eid to those of ep (none when ep is nil or has no
// ports), in one iptables-restore transaction per family: IPv4, and IPv6 when ep publishes
// there (or, unless fresh, when ip6tables is there, to remove what may be left).
//
// fresh reports that the driver knew nothing of the endpoint: then, once this process has
// converged a family's base chains, its chains and jumps are created with no iptables-save
// (see fwObject.planCreate), at a cost that does not depend on the number of endpoints, and a
// family it publishes nothing in costs nothing. Otherwise, or when that fails (its chain
// exists: a restart), it converges from one iptables-save, and nothing is written when the
// rules are there already. When fresh and the IPv6 transaction fails, the IPv4 rules just
// written are removed again, so that nothing is half-made.
func (d *Driver) ensurePorts(ctx context.Context, eid drivers.EndpointID, ep *endpoint, fresh bool) error {
	d.fwMu.Lock()
	defer d.fwMu.Unlock()
	var done []*fwObject
	for _, f := range []*ipFamily{ipv4Family, ipv6Family} {
		var want *fwObject
		if ep != nil {
			want = portRules(eid, ep, f)
		}
		if want == nil && (fresh || d.runner(f).Check() != nil) {
			continue
		}
		if err := d.ensurePortsFamily(ctx, f, eid, want, fresh); err != nil {
			if f.v6 {
				err = fmt.Errorf("%s: %w", f.name, err)
			}
			if fresh {
				for _, o := range done { // IPv4's, written just now
					var t restoreText
					o.planDelete(&t, portBuckets(eid.Short()))
					rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), fwTimeout)
					if rerr := d.fw.Restore(rctx, t.String()); rerr != nil {
						err = errors.Join(err, fmt.Errorf("rollback of the IPv4 rules: %w", rerr))
					}
					cancel()
				}
			}
			return err
		}
		if want != nil {
			done = append(done, want)
		}
	}
	return nil
}

// ensurePortsFamily is ensurePorts for the tables of family f, where the endpoint's rules are
// want. Called with fwMu held.
func (d *Driver) ensurePortsFamily(ctx context.Context, f *ipFamily, eid drivers.EndpointID, want *fwObject, fresh bool) error {
	fw, ready := d.runner(f), d.ready(f)
	if fresh && want != nil && *ready {
		var t restoreText
		want.planCreate(&t, portBuckets(eid.Short()))
		err := fw.Restore(ctx, t.String())
		if err == nil || ctx.Err() != nil {
			return err
		}
		d.log.DebugContext(ctx, "firewall: publish failed, converging", "endpoint", eid.Short(), "family", f.name, "err", err)
	}
	tables, err := d.fwState(ctx, f)
	if err != nil {
		return err
	}
	var t restoreText
	if want != nil {
		planBase(&t, tables, f)
	}
	planEndpoint(&t, tables, eid.Short(), want)
	if err := fw.Restore(ctx, t.String()); err != nil {
		return err
	}
	if want != nil {
		*ready = true
	}
	return nil
}

// removePorts deletes the rules and chains of endpoint eid, whose published ports this process
// wrote as ep says, in one transaction per family it publishes in, with no iptables-save
// first; when that fails (the tables are not as written), it converges from one iptables-save
// per family.
func (d *Driver) removePorts(ctx context.Context, eid drivers.EndpointID, ep *endpoint) error {
	d.fwMu.Lock()
	failed := false
	for _, f := range []*ipFamily{ipv4Family, ipv6Family} {
		o := portRules(eid, ep, f)
		if o == nil {
			continue
		}
		var t restoreText
		o.planDelete(&t, portBuckets(eid.Short()))
		err := d.runner(f).Restore(ctx, t.String())
		if err != nil && ctx.Err() != nil {
			d.fwMu.Unlock()
			return err
		}
		if err != nil {
			d.log.DebugContext(ctx, "firewall: unpublish failed, converging", "endpoint", eid.Short(), "family", f.name, "err", err)
			failed = true
		}
	}
	d.fwMu.Unlock()
	if !failed {
		return nil
	}
	return d.ensurePorts(ctx, eid, nil, false)
}

// stalePorts removes, in one transaction per family, the chains CNM-E-<eid12>, and the rules
// in the shared port chains, of endpoints that are not one the driver knows or one of live,
// and returns their short endpoint IDs, sorted. The IPv6 tables are looked at when ip6tables
// is there.
func (d *Driver) stalePorts(ctx context.Context, live []drivers.EndpointID) ([]string, error) {
	if d.noFW || d.fw.Check() != nil {
		return nil, nil
	}
	d.mu.Lock()
	known := make(map[string]bool, len(d.endpoints)+len(live))
	for _, eid := range live {
		known[eid.Short()] = true
	}
	for eid := range d.endpoints {
		known[eid.Short()] = true
	}
	d.mu.Unlock()
	d.fwMu.Lock()
	defer d.fwMu.Unlock()
	return d.staleInFamilies(func(f *ipFamily) ([]string, error) { return d.stalePortsFamily(ctx, f, known) })
}

// stalePortsFamily is stalePorts for the tables of family f.
func (d *Driver) stalePortsFamily(ctx context.Context, f *ipFamily, known map[string]bool) ([]string, error) {
	tables, err := d.fwState(ctx, f)
	if err != nil {
		return nil, err
	}
	var stale []string
	consider := func(id string) {
		if id != "" && !known[id] && !slices.Contains(stale, id) {
			stale = append(stale, id)
		}
	}
	for _, c := range withBuckets(portChains) {
		for _, r := range tables[c.table].ChainRules(c.chain) {
			consider(ruleEndpoint(r))
			if id, ok := strings.CutPrefix(ruleTarget(r), ChainEndpointPrefix); ok {
				consider(id)
			}
		}
	}
	for _, table := range []string{tableFilter, tableNAT} {
		if tables[table] == nil {
			continue
		}
		for c := range tables[table].Chains {
			if id, ok := strings.CutPrefix(c, ChainEndpointPrefix); ok {
				consider(id)
			}
		}
	}
	slices.Sort(stale)
	var t restoreText
	for _, id := range stale {
		planEndpoint(&t, tables, id, nil)
	}
	if err := d.runner(f).Restore(ctx, t.String()); err != nil {
		return nil, err
	}
	return stale, nil
}

// unusedSockets returns the sockets of fds that are not in used.
func unusedSockets(fds, used []int) []int {
	var out []int
	for _, fd := range fds {
		if fd >= 0 && !slices.Contains(used, fd) {
			out = append(out, fd)
		}
	}
	return out
}
