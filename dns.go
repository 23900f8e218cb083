package cnm

import (
	"context"
	"errors"
	"net/netip"
	"slices"

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
type dnsService struct {
	c      *Controller
	r      *resolver.Resolver
	cancel context.CancelFunc
	done   chan struct{}

	// Owned by run (and by start, before run begins):
	served map[string]*dnsSandbox // sandbox ID -> what serving it holds
	joined map[string]map[string]bool
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

// startDNS starts the embedded resolver unless Config.DisableDNS, or the Controller runs on a
// Machine of the caller's (no namespaces to open sockets in): it subscribes to the events,
// then serves what the state holds now (a restart's sandboxes included), then follows.
func (c *Controller) startDNS() error {
	if c.cfg.DisableDNS || c.kernel == nil {
		return nil
	}
	cfg := c.cfg.DNS
	if cfg.Logger == nil {
		cfg.Logger = c.log
	}
	r, err := resolver.New(cfg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	d := &dnsService{c: c, r: r, cancel: cancel, done: make(chan struct{}), served: map[string]*dnsSandbox{}, joined: map[string]map[string]bool{}}
	ch := c.bus.Subscribe(ctx, 0)
	d.resync()
	c.dns = d
	go d.run(ch)
	return nil
}

// close stops following the events and serving, and waits. Sandboxes keep their resolv.conf:
// the next Controller on the same state serves them again.
func (d *dnsService) close() error {
	if d == nil {
		return nil
	}
	d.cancel()
	<-d.done
	err := d.r.Close()
	for _, s := range d.served {
		err = errors.Join(err, s.closer())
	}
	return err
}

func (d *dnsService) run(ch <-chan events.Event) {
	defer close(d.done)
	for ev := range ch {
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
	d.r.Reset()
	old := d.joined
	d.joined = map[string]map[string]bool{}
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
	c.mu.Unlock()
	if sb == nil {
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
