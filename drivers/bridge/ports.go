package bridge

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/internal/errclass"
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
	ports  []drivers.PortBinding // as bound: single ports, HostIP as given (zero: all)
	keys   []portKey             // the reservations of ports, in the same order
}

// portKey is a reserved host port. An unspecified (zero) addr holds the port on every address.
type portKey struct {
	proto string
	port  uint16
	addr  netip.Addr // zero for all addresses
}

// conflicts reports whether k and o cannot both be bound.
func (k portKey) conflicts(o portKey) bool {
	return k.proto == o.proto && k.port == o.port && (!k.addr.IsValid() || !o.addr.IsValid() || k.addr == o.addr)
}

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

// expandPorts checks the requested bindings of an endpoint of n and returns them one
// container port each, with n's default host address filled in.
func (d *Driver) expandPorts(n *network, req drivers.CreateEndpointRequest) ([]wantPort, error) {
	if len(req.Ports) == 0 {
		return nil, nil
	}
	switch {
	case n.internal:
		return nil, errclass.Invalid("published ports", req.Ports[0].String(), "an internal network publishes no ports")
	case d.noFW:
		return nil, &errclass.NotSupportedError{What: "published ports with the firewall disabled (Config.DisableIPTables)"}
	case !req.IPv4.IsValid():
		return nil, errclass.Invalid("published ports", req.Ports[0].String(), "the endpoint has no IPv4 address")
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
			return nil, &errclass.NotSupportedError{What: "publishing on IPv6 host address " + b.HostIP.String() + " (no ip6tables rules yet)"}
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

// reserveLocked reserves a host port for each of want on behalf of eid, and returns the
// bindings as bound and their keys. On a conflict, or when a range has no free port, it
// reserves nothing and returns an error matching cnm.ErrConflict that names the port.
func (d *Driver) reserveLocked(eid drivers.EndpointID, want []wantPort) ([]drivers.PortBinding, []portKey, error) {
	var (
		bound []drivers.PortBinding
		keys  []portKey
	)
	undo := func() {
		for _, k := range keys {
			d.releaseLocked(k)
		}
	}
	for _, w := range want {
		k := portKey{proto: w.b.Proto, addr: w.b.HostIP}
		found := false
		span := int(w.last) - int(w.first) + 1
		start := w.first
		if w.first != w.last {
			// Ephemeral ports and ranges rotate, as the kernel's do, so a port just freed is
			// not handed out again at once.
			if c := d.nextPort[w.b.Proto]; c >= w.first && c <= w.last {
				start = c
			}
		}
		for i := range span {
			k.port = uint16(int(w.first) + (int(start-w.first)+i)%span)
			if d.freeLocked(k) {
				found = true
				break
			}
		}
		if !found {
			undo()
			host := w.b
			host.HostPort, host.HostPortEnd = w.first, w.last
			if w.first == w.last {
				host.HostPortEnd = 0
				return nil, nil, &errclass.ConflictError{Kind: "host port", Name: portName(k.proto, k.addr, w.first),
					Reason: "already published by another endpoint"}
			}
			return nil, nil, &errclass.ConflictError{Kind: "host port range", Name: host.String(), Reason: "no free port in the range"}
		}
		if w.first != w.last {
			d.nextPort[w.b.Proto] = k.port + 1
		}
		pp := protoPort{k.proto, k.port}
		d.bound[pp] = append(d.bound[pp], k)
		keys = append(keys, k)
		b := w.b
		b.HostPort = k.port
		bound = append(bound, b)
	}
	return bound, keys, nil
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

func portName(proto string, addr netip.Addr, port uint16) string {
	if !addr.IsValid() {
		return fmt.Sprintf("0.0.0.0:%d/%s", port, proto)
	}
	return fmt.Sprintf("%s/%s", netip.AddrPortFrom(addr, port), proto)
}

// The chains of published ports.
const (
	ChainPorts = "CNM-PORTS" // filter; second rule of CNM-FORWARD jumps here
	ChainDNAT  = "CNM-DNAT"  // nat; jumped to from PREROUTING and OUTPUT for local addresses
)

// portChains are the chains that hold per-endpoint rules.
var portChains = []chainRef{
	{tableFilter, ChainPorts},
	{tableNAT, ChainDNAT},
}

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

// portRules returns the rules of ep's published ports by chain, each as iptables-save prints
// it: a DNAT per binding in CNM-DNAT, and an ACCEPT per container port in CNM-PORTS for
// traffic forwarded into the bridge from elsewhere.
func portRules(eid drivers.EndpointID, ep *endpoint) map[chainRef][]string {
	if len(ep.ports) == 0 {
		return nil
	}
	tag := endpointTag(eid)
	r := make(map[chainRef][]string)
	dnat, accept := chainRef{tableNAT, ChainDNAT}, chainRef{tableFilter, ChainPorts}
	for _, b := range ep.ports {
		dst := ""
		if b.HostIP.IsValid() {
			dst = "-d " + b.HostIP.String() + "/32 "
		}
		r[dnat] = append(r[dnat], fmt.Sprintf("%s-p %s -m %s --dport %d %s -j DNAT --to-destination %s",
			dst, b.Proto, b.Proto, b.HostPort, tag, netip.AddrPortFrom(ep.addr, b.ContainerPort)))
		a := fmt.Sprintf("-d %s/32 ! -i %s -o %s -p %s -m %s --dport %d %s -j ACCEPT",
			ep.addr, ep.bridge, ep.bridge, b.Proto, b.Proto, b.ContainerPort, tag)
		if !slices.Contains(r[accept], a) {
			r[accept] = append(r[accept], a)
		}
	}
	return r
}

// planEndpoint adds to t what brings the rules tagged with eid's short ID to want (nil: none).
func planEndpoint(t *restoreText, tables map[string]*iptables.Table, short string, want map[chainRef][]string) {
	for _, c := range portChains {
		var have []string
		for _, r := range tables[c.table].ChainRules(c.chain) {
			if ruleEndpoint(r) == short {
				have = append(have, r)
			}
		}
		if slices.Equal(have, want[c]) {
			continue
		}
		for _, r := range have {
			t.add(c.table, "-D "+c.chain+" "+r)
		}
		for _, r := range want[c] {
			t.add(c.table, "-A "+c.chain+" "+r)
		}
	}
}

// ensurePorts brings the rules of endpoint eid to those of ep (none when ep has no ports), in
// one iptables-restore transaction after one iptables-save; nothing is written when they are
// there already.
func (d *Driver) ensurePorts(ctx context.Context, eid drivers.EndpointID, ep *endpoint) error {
	d.fwMu.Lock()
	defer d.fwMu.Unlock()
	tables, err := d.fwState(ctx)
	if err != nil {
		return err
	}
	var t restoreText
	var want map[chainRef][]string
	if ep != nil {
		planBase(&t, tables)
		want = portRules(eid, ep)
	}
	planEndpoint(&t, tables, eid.Short(), want)
	return d.fw.Restore(ctx, t.String())
}

// stalePorts removes, in one transaction, the rules in the port chains whose endpoint is not
// one the driver knows or one of live, and returns their short endpoint IDs, sorted.
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
	tables, err := d.fwState(ctx)
	if err != nil {
		return nil, err
	}
	var stale []string
	for _, c := range portChains {
		for _, r := range tables[c.table].ChainRules(c.chain) {
			if id := ruleEndpoint(r); id != "" && !known[id] && !slices.Contains(stale, id) {
				stale = append(stale, id)
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
