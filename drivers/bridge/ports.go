package bridge

import (
	"context"
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
	keys   []portKey             // the reservations of ports, in the same order
	socks  []int                 // the sockets holding keys in the host namespace, in the same order
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
// one free port from.
type wantPort struct {
	b           drivers.PortBinding // single container port, HostPort/HostPortEnd as asked
	first, last uint16
}

// key returns w's reservation without its port.
func (w wantPort) key() portKey {
	return portKey{proto: w.b.Proto, addr: w.b.HostIP, v6: w.b.HostIP.Is6()}
}

// wantKeys returns the reservations of want without their ports, for openPortSockets.
func wantKeys(want []wantPort) []portKey {
	keys := make([]portKey, len(want))
	for i, w := range want {
		keys[i] = w.key()
	}
	return keys
}

// expandPorts checks the requested bindings of an endpoint of n and returns them one
// container port each, with n's default host address filled in.
func (d *Driver) expandPorts(n *network, req drivers.CreateEndpointRequest) ([]wantPort, error) {
	if len(req.Ports) == 0 {
		return nil, nil
	}
	switch {
	case n.internal:
		return nil, drivers.Invalid("published ports", req.Ports[0].String(), "an internal network publishes no ports")
	case d.noFW:
		return nil, &drivers.NotSupportedError{What: "published ports with the firewall disabled (Config.DisableIPTables)"}
	case !req.IPv4.IsValid():
		return nil, drivers.Invalid("published ports", req.Ports[0].String(), "the endpoint has no IPv4 address")
	}
	var out []wantPort
	for _, b := range req.Ports {
		if err := b.Validate(); err != nil {
			return nil, err
		}
		if b.Proto == "" {
			b.Proto = "tcp"
		}
		if !b.HostIP.IsValid() {
			b.HostIP = n.hostIP
		}
		if b.HostIP.Is6() && !b.HostIP.Is4In6() {
			return nil, &drivers.NotSupportedError{What: "publishing on IPv6 host address " + b.HostIP.String() + " (ports are published on IPv4 host addresses only)"}
		}
		b.HostIP = b.HostIP.Unmap()
		if b.HostIP.IsUnspecified() {
			b.HostIP = netip.Addr{}
		}
		span := 0
		if b.ContainerPortEnd > b.ContainerPort {
			span = int(b.ContainerPortEnd - b.ContainerPort)
		}
		for i := 0; i <= span; i++ {
			one := b
			one.ContainerPort, one.ContainerPortEnd = b.ContainerPort+uint16(i), 0
			w := wantPort{b: one}
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

// reserveLocked reserves a host port for each of want on behalf of eid, and holds it by
// binding socks[i], an unbound socket opened for want[i] in the host namespace; it returns the
// bindings as bound, their keys and the sockets holding them. A port in reuse (the ports of the
// endpoint being created again) is held by the socket given there instead, and socks[i] stays
// unbound. A port another endpoint of the driver published is a conflict (an error matching
// cnm.ErrConflict that names the port), and so is one that anyone else holds on the host (a
// *PortInUseError); an ephemeral pick, or one from a range, skips both. On error it reserves
// nothing, and the caller closes socks.
func (d *Driver) reserveLocked(eid drivers.EndpointID, want []wantPort, socks []int, reuse map[portKey]int) ([]drivers.PortBinding, []portKey, []int, error) {
	var (
		bound []drivers.PortBinding
		keys  []portKey
		fds   []int
	)
	undo := func() {
		for _, k := range keys {
			d.releaseLocked(k)
		}
	}
	for i, w := range want {
		k := w.key()
		found, fd := false, -1
		var inUse error // the last bind that found the port held on the host
		span := int(w.last) - int(w.first) + 1
		start := w.first
		if w.first != w.last {
			// Ephemeral ports and ranges rotate, as the kernel's do, so a port just freed is
			// not handed out again at once.
			if c := d.nextPort[w.b.Proto]; c >= w.first && c <= w.last {
				start = c
			}
		}
		for j := range span {
			k.port = uint16(int(w.first) + (int(start-w.first)+j)%span)
			if !d.freeLocked(k) {
				continue
			}
			if own, ok := reuse[k]; ok {
				found, fd = true, own
				break
			}
			err := bindPortSocket(socks[i], k)
			if err == nil {
				found, fd = true, socks[i]
				break
			}
			if !portInUse(err) {
				undo()
				return nil, nil, nil, fmt.Errorf("hold host port %s: %w", k, err)
			}
			inUse = &PortInUseError{Proto: k.proto, HostIP: k.addr, V6: k.v6, Port: k.port, Err: err}
		}
		if !found {
			undo()
			host := w.b
			host.HostPort, host.HostPortEnd = w.first, w.last
			switch {
			case w.first == w.last && inUse != nil:
				return nil, nil, nil, inUse
			case w.first == w.last:
				return nil, nil, nil, &drivers.ConflictError{Kind: "host port", Name: k.String(),
					Reason: "already published by another endpoint"}
			}
			return nil, nil, nil, &drivers.ConflictError{Kind: "host port range", Name: host.String(), Reason: "no free port in the range"}
		}
		if w.first != w.last {
			d.nextPort[w.b.Proto] = k.port + 1
		}
		pp := protoPort{k.proto, k.port}
		d.bound[pp] = append(d.bound[pp], k)
		keys = append(keys, k)
		fds = append(fds, fd)
		b := w.b
		b.HostPort = k.port
		bound = append(bound, b)
	}
	return bound, keys, fds, nil
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

// portChains are the shared chains that hold the jumps to the endpoints' own chains.
var portChains = []chainRef{
	{tableFilter, ChainPorts},
	{tableNAT, ChainDNAT},
}

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

// portRules returns the rules of ep's published ports, each as iptables-save prints it: in its
// own chain CNM-E-<eid12>, a DNAT per binding in the nat table and an ACCEPT per container
// port in the filter table for traffic forwarded into the bridge from elsewhere, each tagged
// with the endpoint's comment; in the shared chains, a jump from CNM-DNAT and one from
// CNM-PORTS for traffic to the endpoint's address. Nil when ep publishes nothing.
func portRules(eid drivers.EndpointID, ep *endpoint) *fwObject {
	if len(ep.ports) == 0 {
		return nil
	}
	tag := endpointTag(eid)
	o := &fwObject{chain: endpointChain(eid.Short()), own: map[string][]string{}}
	for _, b := range ep.ports {
		dst := ""
		if b.HostIP.IsValid() {
			dst = "-d " + b.HostIP.String() + "/32 "
		}
		o.own[tableNAT] = append(o.own[tableNAT], fmt.Sprintf("%s-p %s -m %s --dport %d %s -j DNAT --to-destination %s",
			dst, b.Proto, b.Proto, b.HostPort, tag, netip.AddrPortFrom(ep.addr, b.ContainerPort)))
		a := fmt.Sprintf("-d %s/32 ! -i %s -o %s -p %s -m %s --dport %d %s -j ACCEPT",
			ep.addr, ep.bridge, ep.bridge, b.Proto, b.Proto, b.ContainerPort, tag)
		if !slices.Contains(o.own[tableFilter], a) {
			o.own[tableFilter] = append(o.own[tableFilter], a)
		}
	}
	o.shared = map[chainRef][]string{
		{tableFilter, ChainPorts}: {fmt.Sprintf("-d %s/32 -j %s", ep.addr, o.chain)},
		{tableNAT, ChainDNAT}:     {"-j " + o.chain},
	}
	return o
}

// planEndpoint adds to t what brings the rules of the endpoint with short ID short to want
// (nil: none), given the tables now.
func planEndpoint(t *restoreText, tables map[string]*iptables.Table, short string, want *fwObject) {
	planConverge(t, tables, endpointChain(short), want, portChains, belongsToEndpoint(short))
}

// ensurePorts brings the rules of endpoint eid to those of ep (none when ep is nil or has no
// ports), in one iptables-restore transaction.
//
// fresh reports that the driver knew nothing of the endpoint: then, once this process has
// converged the base chains, its chains and jumps are created with no iptables-save (see
// fwObject.planCreate), at a cost that does not depend on the number of endpoints. Otherwise,
// or when that fails (its chain exists: a restart), it converges from one iptables-save, and
// nothing is written when the rules are there already.
func (d *Driver) ensurePorts(ctx context.Context, eid drivers.EndpointID, ep *endpoint, fresh bool) error {
	d.fwMu.Lock()
	defer d.fwMu.Unlock()
	var want *fwObject
	if ep != nil {
		want = portRules(eid, ep)
	}
	if fresh && want != nil && d.fwReady {
		var t restoreText
		want.planCreate(&t, portChains)
		err := d.fw.Restore(ctx, t.String())
		if err == nil || ctx.Err() != nil {
			return err
		}
		d.log.DebugContext(ctx, "firewall: publish failed, converging", "endpoint", eid.Short(), "err", err)
	}
	tables, err := d.fwState(ctx, ipv4Family)
	if err != nil {
		return err
	}
	var t restoreText
	if want != nil {
		planBase(&t, tables, ipv4Family)
	}
	planEndpoint(&t, tables, eid.Short(), want)
	if err := d.fw.Restore(ctx, t.String()); err != nil {
		return err
	}
	if want != nil {
		d.fwReady = true
	}
	return nil
}

// removePorts deletes the rules and chains of endpoint eid, whose published ports this process
// wrote as ep says, in one transaction with no iptables-save first; when that fails (the
// tables are not as written), it converges from one iptables-save.
func (d *Driver) removePorts(ctx context.Context, eid drivers.EndpointID, ep *endpoint) error {
	if o := portRules(eid, ep); o != nil {
		d.fwMu.Lock()
		var t restoreText
		o.planDelete(&t, portChains)
		err := d.fw.Restore(ctx, t.String())
		d.fwMu.Unlock()
		if err == nil || ctx.Err() != nil {
			return err
		}
		d.log.DebugContext(ctx, "firewall: unpublish failed, converging", "endpoint", eid.Short(), "err", err)
	}
	return d.ensurePorts(ctx, eid, nil, false)
}

// stalePorts removes, in one transaction, the chains CNM-E-<eid12>, and the rules in the
// shared port chains, of endpoints that are not one the driver knows or one of live, and
// returns their short endpoint IDs, sorted.
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
	tables, err := d.fwState(ctx, ipv4Family)
	if err != nil {
		return nil, err
	}
	var stale []string
	consider := func(id string) {
		if id != "" && !known[id] && !slices.Contains(stale, id) {
			stale = append(stale, id)
		}
	}
	for _, c := range portChains {
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
	return stale, d.fw.Restore(ctx, t.String())
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
