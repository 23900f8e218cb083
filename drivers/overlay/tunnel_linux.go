package overlay

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/internal/wgtun"
)

// rotationGrace bounds how long a rotation keeps the older device once this host sends with
// the newer one to every peer, waiting for the peers to say the same: after it the older
// device goes anyway (a peer that never switches has lost this host's older key).
const rotationGrace = time.Minute

// rotationDrain is how long the older device of a rotation keeps running after this host last
// moved a peer's route off it, before this host says it no longer sends with it (and before it
// closes): the time for the packets in its queues to leave and arrive.
const rotationDrain = time.Second

// tunnel is this host's WireGuard tunnel: one device (two during a key rotation) in the host's
// namespace, peered with every host that shares an encrypted network with this one. It exists
// while this host has endpoints on an encrypted network.
//
// Lock order: syncMu before mu. syncMu serializes the programming of the devices and routes
// (netlink and UAPI calls); mu guards the state and is never held across those calls.
type tunnel struct {
	d        *Driver
	g        drivers.Gossip
	local    string
	addr     netip.Addr // this host's tunnel address
	endpoint netip.Addr // this host's underlay address
	tunMTU   int

	syncMu  sync.Mutex // guards following
	devs    []*tunDev  // oldest first; one or two
	routes  map[string]routeState
	since   time.Time               // when the newest device was made
	sending uint64                  // published Sending
	moved   time.Time               // when a peer's route last moved to another device
	nudged  map[wgtun.Key]time.Time // when to nudge a peer of the newest device next

	mu      sync.Mutex // guards following
	nets    map[drivers.NetworkID]*tunNet
	wantGen uint64 // the newest generation of the peers' keys
	step    bool   // a gossip key rotation asks for the next generation
	epoch   uint64 // of the last gossip key rotation seen

	kick   chan struct{}
	cancel context.CancelFunc
	done   chan struct{}
}

type tunDev struct {
	gen  uint64
	slot int
	dev  *wgtun.Device
}

type routeState struct {
	addr netip.Addr
	gen  uint64
}

// tunNet is an encrypted network's tunnel table as this host sees it.
type tunNet struct {
	peers  map[string]tunnelEntry // by owner, others only
	cancel func()
	done   chan struct{}
}

// attachTunnel makes sure this host's tunnel runs and peers with the hosts of encrypted network
// nid, whose gossip group this host has joined, and publishes this host's keys there. It
// returns the tunnel address. The caller holds the network's plane lock.
func (d *Driver) attachTunnel(nid drivers.NetworkID, g drivers.Gossip) (netip.Addr, error) {
	d.tunMu.Lock()
	defer d.tunMu.Unlock()
	t := d.tun
	if t == nil {
		vtep, underMTU, err := d.underlay()
		if err != nil {
			return netip.Addr{}, err
		}
		_, tunMTU := encryptedMTU(underMTU, vtep)
		t = &tunnel{d: d, g: g, local: g.LocalName(), addr: tunnelAddr(vtep), endpoint: vtep, tunMTU: tunMTU,
			routes: map[string]routeState{}, nudged: map[wgtun.Key]time.Time{}, nets: map[drivers.NetworkID]*tunNet{}, kick: make(chan struct{}, 1)}
		// The first device takes the newest generation the network's hosts have, so that it
		// pairs with theirs at once.
		for _, e := range g.Entries(nid, tunnelTable) {
			if te, err := decodeTunnel(e.Value); err == nil && e.Owner != t.local {
				t.wantGen = max(t.wantGen, te.newest())
			}
		}
		if err := t.addDevice(t.wantGen); err != nil {
			return netip.Addr{}, err
		}
		ctx, cancel := context.WithCancel(context.Background())
		t.cancel, t.done = cancel, make(chan struct{})
		keys, stopKeys := g.WatchKeys()
		go t.loop(ctx, keys, stopKeys)
		d.tun = t
	}
	if err := t.attach(nid); err != nil {
		if len(t.netsSnapshot()) == 0 {
			d.tun = nil
			err = errors.Join(err, t.close())
		}
		return netip.Addr{}, err
	}
	return t.addr, nil
}

// detachTunnel withdraws this host's keys from encrypted network nid and forgets its hosts;
// with the last encrypted network the tunnel stops. The caller holds the network's plane lock.
func (d *Driver) detachTunnel(nid drivers.NetworkID) error {
	d.tunMu.Lock()
	defer d.tunMu.Unlock()
	t := d.tun
	if t == nil {
		return nil
	}
	err := t.detach(nid)
	if len(t.netsSnapshot()) == 0 {
		d.tun = nil
		return errors.Join(err, t.close())
	}
	return err
}

// closeTunnel stops the tunnel (Driver.Close): its devices go, and with them the encrypted
// networks' traffic until the next Controller restores their endpoints.
func (d *Driver) closeTunnel() error {
	d.tunMu.Lock()
	defer d.tunMu.Unlock()
	t := d.tun
	d.tun = nil
	if t == nil {
		return nil
	}
	return t.close()
}

func (t *tunnel) netsSnapshot() []drivers.NetworkID {
	t.mu.Lock()
	defer t.mu.Unlock()
	return slices.Collect(maps.Keys(t.nets))
}

// addDevice opens a device of generation gen in the free slot and appends it to t.devs (under
// mu, which it takes for that only). The caller holds syncMu or owns t alone.
func (t *tunnel) addDevice(gen uint64) error {
	slot := 0
	if len(t.devs) > 0 && t.devs[0].slot == 0 {
		slot = 1
	}
	key, err := wgtun.NewPrivateKey()
	if err != nil {
		return err
	}
	port := t.d.cfg.WireGuardPort + slot
	dev, err := wgtun.Open(wgtun.Config{
		Name: "cnmwg" + strconv.Itoa(slot), Netns: t.d.cfg.HostNetns, PrivateKey: key, Port: port,
		Addr: netip.PrefixFrom(t.addr, 128), MTU: t.tunMTU, Logger: t.d.log,
	})
	if err != nil {
		return fmt.Errorf("overlay: tunnel: %w", err)
	}
	t.mu.Lock()
	t.devs = append(t.devs, &tunDev{gen: gen, slot: slot, dev: dev})
	t.mu.Unlock()
	t.since = time.Now()
	if len(t.devs) == 1 {
		t.sending = gen
	}
	t.d.log.Info("overlay: tunnel device up", "device", dev.Name(), "generation", gen, "public_key", dev.PublicKey().String(), "port", port)
	return nil
}

// entry returns this host's tunnel entry. The caller holds syncMu.
func (t *tunnel) entry() tunnelEntry {
	e := tunnelEntry{Addr: t.addr, Endpoint: t.endpoint, Sending: t.sending}
	for _, d := range t.devs {
		e.Keys = append(e.Keys, tunnelKey{Gen: d.gen, Public: d.dev.PublicKey(), Port: d.dev.Port()})
	}
	return e
}

// attach starts watching nid's tunnel table and publishes this host's entry there.
func (t *tunnel) attach(nid drivers.NetworkID) error {
	t.mu.Lock()
	if _, ok := t.nets[nid]; ok {
		t.mu.Unlock()
		return nil
	}
	tn := &tunNet{peers: map[string]tunnelEntry{}, done: make(chan struct{})}
	t.nets[nid] = tn
	t.mu.Unlock()
	events, cancel := t.g.Watch(nid, tunnelTable)
	tn.cancel = cancel
	go func() {
		defer close(tn.done)
		for ev := range events {
			t.learn(tn, nid, ev.Type, ev.TableEntry)
		}
	}()
	for _, e := range t.g.Entries(nid, tunnelTable) {
		t.learn(tn, nid, drivers.EntryCreated, e)
	}
	t.syncMu.Lock()
	e := t.entry()
	t.syncMu.Unlock()
	if err := t.g.Put(nid, tunnelTable, t.local, e.encode()); err != nil {
		return errors.Join(fmt.Errorf("overlay: publish tunnel keys: %w", err), t.detach(nid))
	}
	t.sync()
	return nil
}

// learn records a change of a peer's entry and wakes the loop.
func (t *tunnel) learn(tn *tunNet, nid drivers.NetworkID, typ drivers.TableEventType, e drivers.TableEntry) {
	if e.Owner == t.local {
		return
	}
	te, err := decodeTunnel(e.Value)
	if err != nil || !te.Addr.IsValid() || !te.Endpoint.IsValid() || e.Key != e.Owner {
		t.d.log.Warn("overlay: bad tunnel entry", "network", nid.Short(), "key", e.Key, "owner", e.Owner)
		return
	}
	t.mu.Lock()
	if typ == drivers.EntryDeleted {
		delete(tn.peers, e.Owner)
	} else {
		tn.peers[e.Owner] = te
		t.wantGen = max(t.wantGen, te.newest())
	}
	t.mu.Unlock()
	select {
	case t.kick <- struct{}{}:
	default:
	}
}

// detach withdraws this host's entry from nid and forgets nid's peers.
func (t *tunnel) detach(nid drivers.NetworkID) error {
	t.mu.Lock()
	tn := t.nets[nid]
	delete(t.nets, nid)
	t.mu.Unlock()
	if tn == nil {
		return nil
	}
	if tn.cancel != nil {
		tn.cancel()
		<-tn.done
	}
	err := t.g.Delete(nid, tunnelTable, t.local)
	t.sync()
	return err
}

// close stops the loop and the watches and closes the devices.
func (t *tunnel) close() error {
	if t.cancel != nil {
		t.cancel()
		<-t.done
	}
	t.mu.Lock()
	nets := maps.Clone(t.nets)
	t.nets = map[drivers.NetworkID]*tunNet{}
	t.mu.Unlock()
	for _, tn := range nets {
		if tn.cancel != nil {
			tn.cancel()
			<-tn.done
		}
	}
	t.syncMu.Lock()
	defer t.syncMu.Unlock()
	var errs []error
	for _, d := range t.devs {
		errs = append(errs, d.dev.Close())
	}
	t.devs = nil
	return errors.Join(errs...)
}

// loop follows the gossip key rotations and the peers' changes until ctx ends. It checks the
// devices' handshakes often while a rotation runs.
func (t *tunnel) loop(ctx context.Context, keys <-chan drivers.KeyEvent, stopKeys func()) {
	defer close(t.done)
	defer stopKeys()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-keys:
			if !ok {
				keys = nil
				continue
			}
			t.mu.Lock()
			if ev.Epoch > t.epoch {
				t.epoch, t.step = ev.Epoch, true
			}
			t.mu.Unlock()
		case <-t.kick:
		case <-tick.C:
			t.syncMu.Lock()
			idle := len(t.devs) == 1
			t.syncMu.Unlock()
			t.mu.Lock()
			idle = idle && !t.step && t.wantGen <= t.newestLocked()
			t.mu.Unlock()
			if idle {
				continue
			}
		}
		t.sync()
	}
}

// newestLocked returns the newest device's generation; the caller holds mu (devs are read
// under syncMu elsewhere, but gens never change once made and the slice is only appended to or
// trimmed under both locks).
func (t *tunnel) newestLocked() uint64 {
	if len(t.devs) == 0 {
		return 0
	}
	return t.devs[len(t.devs)-1].gen
}

// peers returns every peer of every attached network, by owner (the entry with the newest key
// when two networks disagree for a moment), and the generation wanted: the peers' newest, or
// this host's next when a gossip key rotation asked for one and no rotation is running here
// (a rotation asked for meanwhile waits for the running one to end). The caller holds syncMu.
func (t *tunnel) peers() (map[string]tunnelEntry, uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := map[string]tunnelEntry{}
	for _, tn := range t.nets {
		for o, e := range tn.peers {
			if old, ok := out[o]; !ok || e.newest() > old.newest() || (e.newest() == old.newest() && len(e.Keys) < len(old.Keys)) {
				out[o] = e
			}
		}
	}
	want := t.wantGen
	if t.step && len(t.devs) == 1 {
		// One step per gossip rotation, however many epochs went by: every host goes to the
		// same next generation, which pairs.
		want = max(want, t.newestLocked()+1)
		t.step = false
	}
	return out, want
}

// sync programs the devices and routes from the peers' entries, drives the rotation (a new
// device when a newer generation is wanted; each peer's route moves to it once a handshake
// with that peer succeeded on it; the older device goes once every peer sends with the newer)
// and republishes this host's entry when it changed.
func (t *tunnel) sync() {
	t.syncMu.Lock()
	defer t.syncMu.Unlock()
	if len(t.devs) == 0 {
		return
	}
	peers, want := t.peers()
	before := t.entry()
	newest := t.devs[len(t.devs)-1]
	if want > newest.gen && len(t.devs) == 1 {
		if err := t.addDevice(want); err != nil {
			t.d.log.Error("overlay: tunnel rotation: new device", "generation", want, "err", err)
		} else {
			newest = t.devs[len(t.devs)-1]
		}
	}
	rotating := len(t.devs) > 1
	// Each device peers with the peers' keys of its generation.
	for _, d := range t.devs {
		var ps []wgtun.Peer
		for _, o := range slices.Sorted(maps.Keys(peers)) {
			e := peers[o]
			k, ok := e.key(d.gen)
			if !ok {
				continue
			}
			p := wgtun.Peer{PublicKey: k.Public, Endpoint: netip.AddrPortFrom(e.Endpoint, uint16(k.Port)), AllowedIPs: []netip.Prefix{netip.PrefixFrom(e.Addr, 128)}}
			if rotating && d == newest {
				p.Keepalive = time.Second // starts the handshake at once, and retries it
			}
			ps = append(ps, p)
		}
		if err := d.dev.SetPeers(ps); err != nil {
			t.d.log.Error("overlay: tunnel peers", "device", d.dev.Name(), "err", err)
		}
	}
	// Each peer's route goes through the newest device that shares a generation with the peer
	// and, if an older one does too, has completed a handshake with it.
	hs := make([]map[wgtun.Key]time.Time, len(t.devs))
	for i, d := range t.devs {
		hs[i], _ = d.dev.Handshakes()
	}
	sending := newest.gen
	allNewest := true
	for o, e := range peers {
		var pair []int // the devices that pair with the peer, newest first
		for i := len(t.devs) - 1; i >= 0; i-- {
			if _, ok := e.key(t.devs[i].gen); ok {
				pair = append(pair, i)
			}
		}
		if len(pair) == 0 {
			allNewest = false
			continue
		}
		chosen := t.devs[pair[len(pair)-1]]
		if len(pair) > 1 {
			k, _ := e.key(t.devs[pair[0]].gen)
			if _, ok := hs[pair[0]][k.Public]; ok {
				chosen = t.devs[pair[0]]
			} else if now := time.Now(); now.After(t.nudged[k.Public]) {
				// No handshake yet: the peer's device and this one may have sent their
				// initiations at once and each dropped the other's answer, after which neither
				// tries again until a packet goes that way. A keepalive now and then, at
				// jittered times so that the two sides stop colliding, starts one.
				if err := t.devs[pair[0]].dev.Nudge(k.Public); err != nil {
					t.d.log.Warn("overlay: tunnel nudge", "peer", o, "err", err)
				}
				t.nudged[k.Public] = now.Add(time.Second + rand.N(2*time.Second))
			}
		}
		if r, ok := t.routes[o]; !ok || r.gen != chosen.gen || r.addr != e.Addr {
			if ok && r.addr != e.Addr {
				t.unroute(r)
			}
			if err := chosen.dev.Route(netip.PrefixFrom(e.Addr, 128)); err != nil {
				t.d.log.Error("overlay: tunnel route", "peer", o, "err", err)
				continue
			}
			t.routes[o] = routeState{addr: e.Addr, gen: chosen.gen}
			t.moved = time.Now()
			t.d.log.Debug("overlay: tunnel route", "peer", o, "device", chosen.dev.Name(), "generation", chosen.gen)
		}
		sending = min(sending, chosen.gen)
		if chosen != newest || e.Sending < newest.gen {
			allNewest = false
		}
	}
	for o, r := range t.routes {
		if _, ok := peers[o]; !ok {
			t.unroute(r)
			delete(t.routes, o)
			t.d.log.Debug("overlay: tunnel peer gone", "peer", o)
		}
	}
	// The older device may still hold packets for a peer just moved off it: this host says it
	// is done with it, and closes it, only a while after the last move.
	drained := time.Since(t.moved) >= rotationDrain
	if drained || sending < t.sending {
		t.sending = sending
	}
	if rotating && (allNewest && drained || time.Since(t.since) > rotationGrace) {
		if !allNewest {
			t.d.log.Warn("overlay: tunnel rotation: closing the older device before every peer switched", "generation", t.devs[0].gen)
		}
		old := t.devs[0]
		t.d.log.Debug("overlay: tunnel closing older device", "device", old.dev.Name(), "generation", old.gen, "peers", len(peers))
		t.mu.Lock()
		t.devs = t.devs[1:]
		t.mu.Unlock()
		if err := old.dev.Close(); err != nil {
			t.d.log.Warn("overlay: tunnel rotation: close older device", "err", err)
		}
		clear(t.nudged)
		t.d.log.Info("overlay: tunnel rotation done", "generation", newest.gen)
	}
	after := t.entry()
	if !slices.Equal(before.Keys, after.Keys) || before.Sending != after.Sending {
		t.publish(after)
	}
}

// unroute removes a peer's route from whichever device holds it. The caller holds syncMu.
func (t *tunnel) unroute(r routeState) {
	for _, d := range t.devs {
		if d.gen == r.gen {
			if err := d.dev.Unroute(netip.PrefixFrom(r.addr, 128)); err != nil {
				t.d.log.Warn("overlay: tunnel unroute", "err", err)
			}
		}
	}
}

// publish writes this host's entry to every attached network's tunnel table.
func (t *tunnel) publish(e tunnelEntry) {
	for _, nid := range t.netsSnapshot() {
		if err := t.g.Put(nid, tunnelTable, t.local, e.encode()); err != nil {
			t.d.log.Warn("overlay: publish tunnel keys", "network", nid.Short(), "err", err)
		}
	}
}
