package cnm

import (
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"slices"
	"sync"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/events"
	"github.com/cnmkit/cnm/resolver"
	"github.com/cnmkit/cnm/sandbox"
)

// dnsService wires the embedded DNS resolver (package resolver) to the Controller: it follows
// the event stream, tells the resolver the endpoints of the networks that have DNS, and serves
// every sandbox with an endpoint on one, on sockets opened in the sandbox's namespace, with its
// resolv.conf pointing there. One goroutine (run) does all of it, in event order; Close of the
// Controller ends it and waits.
//
// On global-scope networks, with the gossip plane, each host publishes the names of its own
// endpoints in the network's gossip table dnsTable, and follows the table (one goroutine per
// network with local endpoints, in wg) to resolve the other hosts' endpoints.
type dnsService struct {
	c      *Controller
	r      *resolver.Resolver
	g      drivers.Gossip // nil without the gossip plane
	cancel context.CancelFunc
	done   chan struct{}
	kick   chan struct{}  // capacity 1: read the state again (refresh)
	wg     sync.WaitGroup // the table watches

	// Owned by run (and by start, before run begins):
	served  map[string]*dnsSandbox     // sandbox ID -> what serving it holds
	joined  map[string]map[string]bool // sandbox ID -> network IDs with DNS it has endpoints on
	global  map[string]map[string]bool // global network ID -> its local endpoints (joined)
	watches map[string]*dnsWatch       // global network ID -> its table watch
}

// dnsWatch is the watch of a global network's dnsTable: stop ends it, and done is closed once
// its goroutine has applied its last change.
type dnsWatch struct {
	stop func()
	done chan struct{}
}

// end stops the watch and waits for its goroutine.
func (w *dnsWatch) end() {
	w.stop()
	<-w.done
}

// dnsTable is the gossip table of a global network where each host publishes the names of its
// endpoints (key: endpoint ID, value: a dnsEntry).
const dnsTable = "dns"

// dnsEntry is an endpoint's names as dnsTable carries them.
type dnsEntry struct {
	Names []string   `json:"names"`
	IPv4  netip.Addr `json:"ipv4,omitzero"`
	IPv6  netip.Addr `json:"ipv6,omitzero"`
}

// dnsSandbox is a sandbox being served: the handle on its namespace, for the resolver's
// forwarding sockets, closed once the resolver stopped serving it.
type dnsSandbox struct {
	closer func() error
}

// dnsNetwork reports whether the endpoints of network n (by name, with driver entry e) get
// the embedded resolver: networks whose sandboxes have their own namespace, but the default
// bridge network (as in Docker) and the per-host gateway network.
func (c *Controller) dnsNetwork(name string, e *drivers.Entry) bool {
	if e == nil || e.Caps.Sandbox != drivers.NamespaceSandbox || name == GatewayNetwork {
		return false
	}
	return c.cfg.NoPredefinedNetworks || name != DefaultNetwork
}

// newDNSResolver returns the embedded resolver of cfg, or nil when it is off: with
// Config.DisableDNS, and with a Machine of the caller's (no namespaces to open its sockets
// in). Its errors match ErrInvalidParameter. It starts nothing.
func newDNSResolver(cfg Config) (*resolver.Resolver, error) {
	if cfg.DisableDNS {
		return nil, nil
	}
	rc := cfg.DNS
	if rc.Logger == nil {
		rc.Logger = cfg.Logger
	}
	r, err := resolver.New(rc) // validates Config.DNS, with a Machine too
	if err != nil || cfg.Machine != nil {
		return nil, err
	}
	return r, nil
}

// startDNS starts serving with r, unless r is nil: it subscribes to the events, then serves
// what the state holds now (a restart's sandboxes included), then follows.
func (c *Controller) startDNS(r *resolver.Resolver) {
	if r == nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	d := &dnsService{c: c, r: r, cancel: cancel, done: make(chan struct{}), kick: make(chan struct{}, 1), served: map[string]*dnsSandbox{},
		joined: map[string]map[string]bool{}, global: map[string]map[string]bool{}, watches: map[string]*dnsWatch{}}
	if c.gossip != nil {
		d.g = c.gossip
	}
	ch := c.bus.Subscribe(ctx, 0)
	d.resync()
	c.dns = d
	go d.run(ch)
}

// close stops following the events and serving, and waits. Sandboxes keep their resolv.conf:
// the next Controller on the same state serves them again.
func (d *dnsService) close() error {
	if d == nil {
		return nil
	}
	d.cancel()
	<-d.done
	for _, w := range d.watches {
		w.end()
	}
	d.wg.Wait()
	err := d.r.Close()
	for _, s := range d.served {
		err = errors.Join(err, s.closer())
	}
	return err
}

// refresh makes the resolver read the state again, for changes that publish no event (the
// networks a late driver's registration restores). It does not wait. Nil-safe.
func (d *dnsService) refresh() {
	if d == nil {
		return
	}
	select {
	case d.kick <- struct{}{}:
	default:
	}
}

func (d *dnsService) run(ch <-chan events.Event) {
	defer close(d.done)
	for {
		var ev events.Event
		select {
		case e, ok := <-ch:
			if !ok {
				return
			}
			ev = e
		case <-d.kick:
			d.resync()
			continue
		}
		switch ev.Kind {
		case events.EndpointJoined:
			d.joinedEp(ev.NetworkID, ev.EndpointID, ev.SandboxID)
		case events.EndpointLeft:
			d.left(ev.NetworkID, ev.EndpointID, ev.SandboxID)
		case events.SandboxDeleted:
			d.stop(ev.SandboxID, false)
		case events.Dropped:
			d.resync()
		}
	}
}

// resync reads the state again: every joined endpoint of a network with DNS, and the
// sandboxes to serve.
func (d *dnsService) resync() {
	for nid, w := range d.watches {
		w.end() // joinedEp watches again, from the table's entries
		delete(d.watches, nid)
	}
	d.r.Reset()
	old := d.joined
	d.joined = map[string]map[string]bool{}
	d.global = map[string]map[string]bool{}
	for _, n := range d.c.Networks() {
		for _, ep := range n.Endpoints() {
			if sb := ep.Info().SandboxID; sb != "" {
				d.joinedEp(n.ID(), ep.ID(), sb)
			}
		}
	}
	for sb := range old {
		if len(d.joined[sb]) == 0 {
			d.stop(sb, true)
		}
	}
}

// joinedEp adds endpoint epID of network netID, joined to sandbox sbID, to the names, and
// serves the sandbox if it is not served yet.
func (d *dnsService) joinedEp(netID, epID, sbID string) {
	c := d.c
	n, err := c.network(netID)
	if err != nil {
		return
	}
	e, _ := c.reg.Get(n.Driver())
	if !c.dnsNetwork(n.Name(), e) {
		return
	}
	ep, err := n.Endpoint(epID)
	if err != nil {
		return
	}
	info := ep.Info()
	c.mu.Lock()
	sb := c.sandboxes[sbID]
	c.mu.Unlock()
	if sb == nil || info.SandboxID != sbID {
		return // gone or moved since the event: a later event says what became of it
	}
	names := []string{sbID, info.Name, sb.ns.Hostname()}
	names = append(names, info.Aliases...)
	rec := resolver.Endpoint{
		ID: epID, NetworkID: netID, NetworkName: n.Name(), SandboxID: sbID,
		Names: slices.Compact(names), IPv4: info.IPv4.Addr(), IPv6: info.IPv6.Addr(),
	}
	d.r.AddEndpoint(rec)
	if n.Scope() == drivers.GlobalScope && d.g != nil {
		d.publish(n.ID(), n.Name(), epID, rec)
	}
	if d.joined[sbID] == nil {
		d.joined[sbID] = map[string]bool{}
	}
	d.joined[sbID][netID] = true
	if d.served[sbID] == nil && sb.rec.Mode == sandbox.ModeNamespace {
		d.serve(sb)
	}
}

// left removes endpoint epID of network netID from the names, and stops serving sandbox sbID
// when it has no network with DNS left.
func (d *dnsService) left(netID, epID, sbID string) {
	d.r.RemoveEndpoint(netID, epID)
	if eps := d.global[netID]; eps[epID] {
		d.withdraw(netID, epID)
	}
	if m := d.joined[sbID]; m != nil {
		delete(m, netID)
		if len(m) == 0 {
			d.stop(sbID, true)
		}
	}
}

// serve opens the resolver's sockets in sb's namespace, points its resolv.conf at them and
// serves it. Trouble is logged: the sandbox keeps working, with the host's resolvers.
func (d *dnsService) serve(sb *sbox) {
	c := d.c
	cfg := c.sandboxConfig(sb.rec, nil)
	conf, ups, err := cfg.EmbeddedResolvConf(resolver.Address.Addr())
	if err != nil {
		c.log.Warn("dns: resolv.conf", "sandbox", sb.rec.ID, "err", err)
		return
	}
	rs, closer, err := openDNSSockets(sb.ns)
	if err != nil {
		c.log.Warn("dns: serve sandbox", "sandbox", sb.rec.ID, "err", err)
		return
	}
	for _, a := range ups {
		rs.Upstreams = append(rs.Upstreams, netip.AddrPortFrom(a, 53))
	}
	if err := d.r.Serve(rs); err != nil {
		c.log.Warn("dns: serve sandbox", "sandbox", sb.rec.ID, "err", err)
		closer()
		return
	}
	d.served[sb.rec.ID] = &dnsSandbox{closer: closer}
	if err := sandbox.WriteResolvConf(sb.ns.ResolvConfPath(), conf); err != nil {
		c.log.Warn("dns: write resolv.conf", "sandbox", sb.rec.ID, "err", err)
	}
}

// stop stops serving sandbox id, and when restore is set and the sandbox still exists, gives
// its resolv.conf the host's resolvers back.
func (d *dnsService) stop(id string, restore bool) {
	delete(d.joined, id)
	s := d.served[id]
	if s == nil {
		return
	}
	delete(d.served, id)
	d.r.Stop(id)
	if err := s.closer(); err != nil {
		d.c.log.Debug("dns: close namespace", "sandbox", id, "err", err)
	}
	if !restore {
		return
	}
	c := d.c
	c.mu.Lock()
	sb := c.sandboxes[id]
	deleting := sb == nil || sb.deleting // its files are going: writing one would leave it behind
	c.mu.Unlock()
	if deleting {
		return
	}
	cfg := c.sandboxConfig(sb.rec, nil)
	conf, err := cfg.ResolvConf()
	if err == nil {
		err = sandbox.WriteResolvConf(sb.ns.ResolvConfPath(), conf)
	}
	if err != nil {
		c.log.Warn("dns: restore resolv.conf", "sandbox", id, "err", err)
	}
}

// publish puts the names of local endpoint epID of global network nid in the network's gossip
// table, and follows the table if it does not yet. The overlay driver joined the network's
// gossip group with the endpoint's join, before the event: a Put refused for want of the group
// is only logged, as any trouble with the table is (the local names work regardless).
func (d *dnsService) publish(nid, name, epID string, rec resolver.Endpoint) {
	if d.global[nid] == nil {
		d.global[nid] = map[string]bool{}
	}
	d.global[nid][epID] = true
	b, err := json.Marshal(dnsEntry{Names: rec.Names, IPv4: rec.IPv4, IPv6: rec.IPv6})
	if err == nil {
		err = d.g.Put(drivers.NetworkID(nid), dnsTable, epID, b)
	}
	if err != nil {
		d.c.log.Warn("dns: publish names", "network", name, "endpoint", epID, "err", err)
	}
	if d.watches[nid] != nil {
		return
	}
	ch, stop := d.g.Watch(drivers.NetworkID(nid), dnsTable)
	w := &dnsWatch{stop: stop, done: make(chan struct{})}
	d.watches[nid] = w
	for _, e := range d.g.Entries(drivers.NetworkID(nid), dnsTable) {
		d.remote(nid, name, drivers.TableEvent{Type: drivers.EntryCreated, TableEntry: e})
	}
	d.wg.Go(func() {
		defer close(w.done)
		for ev := range ch {
			d.remote(nid, name, ev)
		}
	})
}

// withdraw removes local endpoint epID of global network nid from the network's gossip table,
// and when it was the network's last local endpoint, stops following the table and forgets
// the other hosts' names on it.
func (d *dnsService) withdraw(nid, epID string) {
	if err := d.g.Delete(drivers.NetworkID(nid), dnsTable, epID); err != nil {
		d.c.log.Debug("dns: withdraw names", "network", nid, "endpoint", epID, "err", err)
	}
	delete(d.global[nid], epID)
	if len(d.global[nid]) > 0 {
		return
	}
	delete(d.global, nid)
	if w := d.watches[nid]; w != nil {
		w.end()
		delete(d.watches, nid)
	}
	for _, ep := range d.r.Endpoints() {
		if ep.NetworkID == nid && ep.SandboxID == "" {
			d.r.RemoveEndpoint(nid, ep.ID)
		}
	}
}

// remote applies a change of global network nid's gossip table to the resolver: another
// host's endpoint, which has no local sandbox. This host's own entries are skipped (its events
// feed them).
func (d *dnsService) remote(nid, name string, ev drivers.TableEvent) {
	if ev.Owner == d.g.LocalName() {
		return
	}
	if ev.Type == drivers.EntryDeleted {
		d.r.RemoveEndpoint(nid, ev.Key)
		return
	}
	var e dnsEntry
	if err := json.Unmarshal(ev.Value, &e); err != nil {
		d.c.log.Debug("dns: bad table entry", "network", name, "key", ev.Key, "owner", ev.Owner, "err", err)
		return
	}
	d.r.AddEndpoint(resolver.Endpoint{ID: ev.Key, NetworkID: nid, NetworkName: name, Names: e.Names, IPv4: e.IPv4, IPv6: e.IPv6})
}
