package overlay

import (
	"context"
	"errors"
	"fmt"

	"github.com/cnmkit/cnm/drivers"
)

// Join implements drivers.Driver: with the network's first local endpoint it builds the
// network's kernel state here and joins its gossip group; then it creates the endpoint's
// interface in the sandbox and publishes the endpoint in the gossip table. The sandbox's way
// out is the gateway service's (NeedGateway), unless the network is internal.
func (d *Driver) Join(ctx context.Context, req drivers.JoinRequest) (_ drivers.JoinResult, err error) {
	d.mu.Lock()
	n := d.networks[req.NetworkID]
	var ep *ovEndpoint
	if n != nil {
		ep = n.endpoints[req.EndpointID]
	}
	g := d.gossip
	d.mu.Unlock()
	if n == nil {
		return drivers.JoinResult{}, &drivers.NotFoundError{Kind: "overlay network", Name: string(req.NetworkID)}
	}
	if ep == nil {
		return drivers.JoinResult{}, &drivers.NotFoundError{Kind: "overlay endpoint", Name: string(req.EndpointID)}
	}
	if g == nil {
		return drivers.JoinResult{}, &drivers.NotSupportedError{What: "overlay networks without the gossip plane"}
	}
	n.planeMu.Lock()
	defer n.planeMu.Unlock()
	p, err := d.ensurePlane(n, g, false)
	if err != nil {
		return drivers.JoinResult{}, err
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, d.releasePlane(n, g))
		}
	}()
	mac := req.MAC
	if mac == nil {
		mac = ep.mac
	}
	if err := p.addPort(string(req.EndpointID), req.IfName, mac, req.NetnsFD); err != nil {
		return drivers.JoinResult{}, err
	}
	entry := peerEntry{MAC: mac.String(), IPv4: req.IPv4.Addr(), IPv6: req.IPv6.Addr(), VTEP: p.vtep}
	if err := g.Put(req.NetworkID, peerTable, string(req.EndpointID), entry.encode()); err != nil {
		return drivers.JoinResult{}, errors.Join(fmt.Errorf("overlay: publish endpoint: %w", err), p.delPort(string(req.EndpointID)))
	}
	d.mu.Lock()
	ep.joined = true
	d.mu.Unlock()
	return drivers.JoinResult{InterfaceInSandbox: true, NeedGateway: !n.internal}, nil
}

// RestoreEndpoint implements drivers.EndpointRestorer: after a restart, an endpoint still
// joined here takes back the network's namespace (its interface is in it), publishes itself
// in the gossip table again, and the remote endpoints are programmed afresh from the table.
func (d *Driver) RestoreEndpoint(ctx context.Context, req drivers.JoinRequest) error {
	d.mu.Lock()
	n := d.networks[req.NetworkID]
	var ep *ovEndpoint
	if n != nil {
		ep = n.endpoints[req.EndpointID]
	}
	g := d.gossip
	d.mu.Unlock()
	if n == nil || ep == nil {
		return &drivers.NotFoundError{Kind: "overlay endpoint", Name: string(req.EndpointID)}
	}
	if g == nil {
		return &drivers.NotSupportedError{What: "overlay networks without the gossip plane"}
	}
	n.planeMu.Lock()
	defer n.planeMu.Unlock()
	p, err := d.ensurePlane(n, g, true)
	if err != nil {
		return err
	}
	mac := req.MAC
	if mac == nil {
		mac = ep.mac
	}
	entry := peerEntry{MAC: mac.String(), IPv4: req.IPv4.Addr(), IPv6: req.IPv6.Addr(), VTEP: p.vtep}
	if err := g.Put(req.NetworkID, peerTable, string(req.EndpointID), entry.encode()); err != nil {
		return fmt.Errorf("overlay: publish endpoint: %w", err)
	}
	d.mu.Lock()
	ep.joined = true
	d.mu.Unlock()
	return nil
}

// Leave implements drivers.Driver: the endpoint is withdrawn from the gossip table and its
// interface deleted; with the network's last local endpoint its kernel state here goes and
// this host leaves the network's gossip group.
func (d *Driver) Leave(ctx context.Context, req drivers.LeaveRequest) error {
	d.mu.Lock()
	n := d.networks[req.NetworkID]
	g := d.gossip
	var ep *ovEndpoint
	if n != nil {
		ep = n.endpoints[req.EndpointID]
	}
	d.mu.Unlock()
	if n == nil || ep == nil || g == nil {
		return nil
	}
	n.planeMu.Lock()
	defer n.planeMu.Unlock()
	d.mu.Lock()
	joined := ep.joined
	ep.joined = false
	d.mu.Unlock()
	if !joined {
		return nil
	}
	var errs []error
	if err := g.Delete(req.NetworkID, peerTable, string(req.EndpointID)); err != nil {
		errs = append(errs, fmt.Errorf("overlay: withdraw endpoint: %w", err))
	}
	if p := n.plane; p != nil && !req.SandboxGone {
		errs = append(errs, p.delPort(string(req.EndpointID)))
	}
	errs = append(errs, d.releasePlane(n, g))
	return errors.Join(errs...)
}

// ensurePlane builds the network's kernel state and starts programming its peers, if no
// endpoint of this host did yet. The caller holds n.planeMu.
func (d *Driver) ensurePlane(n *ovNetwork, g drivers.Gossip, adopt bool) (*plane, error) {
	if n.plane != nil {
		return n.plane, nil
	}
	var p *plane
	var err error
	if adopt {
		p, err = d.adoptPlane(n)
	}
	if p == nil && err == nil {
		p, err = d.buildPlane(n)
	}
	if err != nil {
		return nil, err
	}
	if err := g.JoinNetwork(n.id); err != nil {
		return nil, errors.Join(fmt.Errorf("overlay: join gossip group: %w", err), p.destroy())
	}
	if n.encrypted {
		if _, err := d.attachTunnel(n.id, g); err != nil {
			return nil, errors.Join(fmt.Errorf("overlay: tunnel: %w", err), g.LeaveNetwork(n.id), p.destroy())
		}
	}
	events, cancel := g.Watch(n.id, peerTable)
	done := make(chan struct{})
	local := g.LocalName()
	go func() {
		defer close(done)
		for ev := range events {
			if ev.Owner == local {
				continue
			}
			e, err := decodePeer(ev.Value)
			if err != nil || !e.VTEP.IsValid() {
				d.log.Warn("overlay: bad peer entry", "network", n.id.Short(), "key", ev.Key, "owner", ev.Owner)
				continue
			}
			if ev.Type == drivers.EntryDeleted {
				err = p.delPeer(e)
			} else {
				err = p.addPeer(e)
			}
			if err != nil {
				d.log.Warn("overlay: program peer", "network", n.id.Short(), "endpoint", ev.Key, "owner", ev.Owner, "err", err)
			}
		}
	}()
	// The watch started first: an entry written meanwhile is programmed twice, which converges.
	for _, e := range g.Entries(n.id, peerTable) {
		if e.Owner == local {
			continue
		}
		if pe, err := decodePeer(e.Value); err == nil && pe.VTEP.IsValid() {
			if err := p.addPeer(pe); err != nil {
				d.log.Warn("overlay: program peer", "network", n.id.Short(), "endpoint", e.Key, "err", err)
			}
		}
	}
	n.plane, n.stopWatch, n.watchDone = p, cancel, done
	return p, nil
}

// releasePlane removes the network's kernel state and leaves its gossip group when no endpoint
// of this host is joined any more. The caller holds n.planeMu.
func (d *Driver) releasePlane(n *ovNetwork, g drivers.Gossip) error {
	d.mu.Lock()
	busy := false
	for _, ep := range n.endpoints {
		busy = busy || ep.joined
	}
	d.mu.Unlock()
	p := n.plane
	if busy || p == nil {
		return nil
	}
	n.plane = nil
	if n.stopWatch != nil {
		n.stopWatch()
		<-n.watchDone
		n.stopWatch = nil
	}
	var terr error
	if n.encrypted {
		terr = d.detachTunnel(n.id)
	}
	return errors.Join(terr, g.LeaveNetwork(n.id), p.destroy())
}

// Close implements drivers.Closer: it stops the peer watches, releases the planes' handles
// (which would keep their namespaces alive) and stops the WireGuard devices of encrypted
// networks, which live in this process. The networks' kernel state stays for the next
// Controller, which adopts it with the endpoints it restores (encrypted traffic stops until
// then).
func (d *Driver) Close() error {
	d.mu.Lock()
	nets := make([]*ovNetwork, 0, len(d.networks))
	for _, n := range d.networks {
		nets = append(nets, n)
	}
	d.mu.Unlock()
	var errs []error
	for _, n := range nets {
		n.planeMu.Lock()
		if n.plane != nil && n.stopWatch != nil {
			n.stopWatch()
			<-n.watchDone
			n.stopWatch = nil
		}
		if n.plane != nil {
			errs = append(errs, n.plane.close())
			n.plane = nil
		}
		n.planeMu.Unlock()
	}
	return errors.Join(append(errs, d.closeTunnel())...)
}
