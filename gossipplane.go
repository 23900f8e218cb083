package cnm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/events"
	"github.com/cnmkit/cnm/gossip"
	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/cnmkit/cnm/kvstore"
)

// gossipPlane is the Controller's gossip node, offered to drivers as drivers.Gossip. It owns
// the goroutines that join the peers and that turn the node's streams into the drivers' types.
type gossipPlane struct {
	node *gossip.Node
	own  bool // started by the Controller (Config.Gossip): closed by it
	log  interface {
		Warn(msg string, args ...any)
		Info(msg string, args ...any)
	}

	ctx    context.Context // ended by close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex // guards following
	closed bool       // no goroutine may start
}

// goStart runs f on a goroutine the plane waits for at close; false (f not run) once closed.
func (p *gossipPlane) goStart(f func()) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.wg.Go(f)
	return true
}

var _ drivers.Gossip = (*gossipPlane)(nil)

// startGossip starts the gossip plane of Config.Gossip (or adopts Config.GossipNode) and joins
// Config.GossipPeers, retrying in the background until one answers. It runs in New.
func (c *Controller) startGossip(ctx context.Context) error {
	cfg := c.cfg
	if cfg.Gossip == nil && cfg.GossipNode == nil {
		if len(cfg.GossipPeers) > 0 {
			return fmt.Errorf("cnm: %w", errclass.Invalid("GossipPeers", cfg.GossipPeers[0], "given without Config.Gossip"))
		}
		return nil
	}
	if cfg.Gossip != nil && cfg.GossipNode != nil {
		return fmt.Errorf("cnm: %w", errclass.Invalid("Gossip", "both Gossip and GossipNode", "give one"))
	}
	p := &gossipPlane{node: cfg.GossipNode, log: c.log}
	if cfg.Gossip != nil {
		gc := *cfg.Gossip
		if gc.NodeName == "" {
			name, err := c.hostname()
			if err != nil {
				return err
			}
			gc.NodeName = name
		}
		if gc.Logger == nil {
			gc.Logger = c.log
		}
		if gc.Store == nil && cfg.GlobalStore != nil {
			if _, ok := cfg.GlobalStore.(kvstore.Locker); ok {
				gc.Store = cfg.GlobalStore
			}
		}
		n, err := gossip.New(gc)
		if err != nil {
			return fmt.Errorf("cnm: %w", err)
		}
		p.node, p.own = n, true
	}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	c.gossip = p
	// Each change of the keyring (a rotation step) is an event of the Controller's.
	keys, stop := p.node.WatchKeys()
	if !p.goStart(func() { p.publishKeys(c, keys, stop) }) {
		stop()
	}
	if len(cfg.GossipPeers) > 0 {
		if _, err := p.node.Join(ctx, cfg.GossipPeers); err != nil {
			c.log.Warn("gossip: join failed; retrying in the background", "peers", cfg.GossipPeers, "err", err)
			p.goStart(func() { p.rejoin(cfg.GossipPeers) })
		}
	}
	return nil
}

// publishKeys publishes an events.KeyRotated for each keyring change until the plane closes.
func (p *gossipPlane) publishKeys(c *Controller, keys <-chan gossip.KeyringStatus, stop func()) {
	defer stop()
	for {
		select {
		case st, ok := <-keys:
			if !ok {
				return
			}
			c.bus.Publish(events.Event{Kind: events.KeyRotated, Key: events.KeyRotation{Epoch: st.Epoch, Phase: st.Phase, Primary: st.Primary}})
		case <-p.ctx.Done():
			return
		}
	}
}

// rejoin tries the peers until one answers or the plane closes.
func (p *gossipPlane) rejoin(peers []string) {
	for attempt := 0; ; attempt++ {
		t := time.NewTimer(min(time.Second<<min(attempt, 4), 15*time.Second))
		select {
		case <-p.ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(p.ctx, 10*time.Second)
		_, err := p.node.Join(ctx, peers)
		cancel()
		if err == nil {
			p.log.Info("gossip: joined", "peers", peers)
			return
		}
		if errors.Is(err, gossip.ErrClosed) {
			return
		}
	}
}

// close stops the plane's goroutines and, when the Controller started the node, closes it:
// peers see this host fail, not leave, so its entries come back if it returns in time.
func (p *gossipPlane) close() error {
	if p == nil {
		return nil
	}
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.cancel()
	var err error
	if p.own {
		err = p.node.Close()
	}
	p.wg.Wait()
	return err
}

// GossipNode returns the Controller's gossip node (Config.Gossip's, or Config.GossipNode), or
// nil without one: its members, keyring status and statistics.
func (c *Controller) GossipNode() *gossip.Node {
	if c.gossip == nil {
		return nil
	}
	return c.gossip.node
}

// hostname is this host's name: Config.Hostname, else the machine's.
func (c *Controller) hostname() (string, error) {
	if c.cfg.Hostname != "" {
		return c.cfg.Hostname, nil
	}
	h, err := os.Hostname()
	if err != nil {
		return "", fmt.Errorf("cnm: hostname: %w", err)
	}
	return h, nil
}

// useGossip gives the gossip plane to a driver that needs it. Without a plane it does nothing:
// the driver's networks are refused (checkGossip).
func (c *Controller) useGossip(name string, d drivers.Driver) error {
	gu, ok := d.(drivers.GossipUser)
	if !ok || c.gossip == nil {
		return nil
	}
	if err := gu.UseGossip(c.gossip); err != nil {
		return fmt.Errorf("cnm: driver %s: use gossip: %w", name, err)
	}
	return nil
}

// checkGossip refuses a network of a driver that needs the gossip plane when there is none.
func (c *Controller) checkGossip(e *drivers.Entry) error {
	if e.GossipUser != nil && c.gossip == nil {
		return &errclass.NotSupportedError{What: fmt.Sprintf("driver %s without the gossip plane", e.Name), Err: errors.New("it needs one: set Config.Gossip")}
	}
	return nil
}

// LocalName implements drivers.Gossip.
func (p *gossipPlane) LocalName() string { return p.node.Name() }

// JoinNetwork implements drivers.Gossip.
func (p *gossipPlane) JoinNetwork(nid drivers.NetworkID) error {
	return p.node.JoinNetwork(gossip.NetworkID(nid))
}

// LeaveNetwork implements drivers.Gossip.
func (p *gossipPlane) LeaveNetwork(nid drivers.NetworkID) error {
	return p.node.LeaveNetwork(gossip.NetworkID(nid))
}

// Put implements drivers.Gossip: an update of this host's entry, or its creation.
func (p *gossipPlane) Put(nid drivers.NetworkID, table, key string, value []byte) error {
	g := gossip.NetworkID(nid)
	for range 3 {
		err := p.node.UpdateEntry(g, table, key, value)
		if !errors.Is(err, errclass.ErrNotFound) || errors.Is(err, gossip.ErrNetworkNotJoined) {
			return err
		}
		err = p.node.CreateEntry(g, table, key, value)
		if !errors.Is(err, errclass.ErrAlreadyExists) {
			return err
		}
		// Created meanwhile (by this host, or another that then owns it): try again.
	}
	return p.node.UpdateEntry(g, table, key, value)
}

// Delete implements drivers.Gossip.
func (p *gossipPlane) Delete(nid drivers.NetworkID, table, key string) error {
	err := p.node.DeleteEntry(gossip.NetworkID(nid), table, key)
	if errors.Is(err, errclass.ErrNotFound) && !errors.Is(err, gossip.ErrNetworkNotJoined) {
		return nil
	}
	return err
}

// Entries implements drivers.Gossip.
func (p *gossipPlane) Entries(nid drivers.NetworkID, table string) []drivers.TableEntry {
	es := p.node.Entries(gossip.NetworkID(nid), table)
	out := make([]drivers.TableEntry, len(es))
	for i, e := range es {
		out[i] = drivers.TableEntry{Key: e.Key, Value: e.Value, Owner: e.Owner}
	}
	return out
}

// Watch implements drivers.Gossip.
func (p *gossipPlane) Watch(nid drivers.NetworkID, table string) (<-chan drivers.TableEvent, func()) {
	in, stop := p.node.Watch(gossip.NetworkID(nid), table)
	return relay(p, in, stop, func(ev gossip.Event) drivers.TableEvent {
		return drivers.TableEvent{
			Type: drivers.TableEventType(ev.Type), Network: drivers.NetworkID(ev.Network), Table: ev.Table,
			TableEntry: drivers.TableEntry{Key: ev.Key, Value: ev.Value, Owner: ev.Owner},
		}
	})
}

// WatchKeys implements drivers.Gossip.
func (p *gossipPlane) WatchKeys() (<-chan drivers.KeyEvent, func()) {
	in, stop := p.node.WatchKeys()
	return relay(p, in, stop, keyEvent)
}

func keyEvent(st gossip.KeyringStatus) drivers.KeyEvent {
	return drivers.KeyEvent{Epoch: st.Epoch, Phase: st.Phase, Primary: st.Primary, Keys: st.Keys}
}

// relay converts the values of in into out on a goroutine of the plane's, which ends when in
// closes, cancel is called or the plane closes. The gossip node queues without bound, so a
// slow reader never holds the node up.
func relay[A, B any](p *gossipPlane, in <-chan A, stop func(), conv func(A) B) (<-chan B, func()) {
	out := make(chan B)
	done := make(chan struct{})
	var once sync.Once
	cancel := func() {
		once.Do(func() {
			close(done)
			stop()
		})
	}
	started := p.goStart(func() {
		defer close(out)
		defer stop()
		for {
			var v A
			var ok bool
			select {
			case v, ok = <-in:
			case <-done:
				return
			case <-p.ctx.Done():
				return
			}
			if !ok {
				return
			}
			select {
			case out <- conv(v):
			case <-done:
				return
			case <-p.ctx.Done():
				return
			}
		}
	})
	if !started {
		stop()
		close(out)
	}
	return out, cancel
}
