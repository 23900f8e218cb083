package gossip

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/cnmkit/cnm/kvstore"
)

// NetworkID names a network whose tables a node takes part in. It is the controller's network
// ID; the gossip layer only compares it.
type NetworkID string

// Sentinel errors. Each also matches its class in internal/errclass (and so cnm's).
var (
	// ErrClosed is returned by every method of a Node after Close.
	ErrClosed = errclass.Sentinel("gossip: node closed", errclass.ErrUnavailable)
	// ErrNetworkNotJoined is returned by the table methods for a network the node has not
	// joined with JoinNetwork.
	ErrNetworkNotJoined = errclass.Sentinel("gossip: network not joined", errclass.ErrNotFound)
)

// MemberState is what a node knows of a member's health.
type MemberState uint8

// The member states.
const (
	StateAlive  MemberState = iota + 1 // answering probes, or suspected but not yet declared dead
	StateFailed                        // declared dead; its entries are hidden, and it is retried
	StateLeft                          // left gracefully; its entries are gone
)

// String returns the state's name: "alive", "failed" or "left".
func (s MemberState) String() string {
	switch s {
	case StateAlive:
		return "alive"
	case StateFailed:
		return "failed"
	case StateLeft:
		return "left"
	}
	return "state(" + strconv.Itoa(int(s)) + ")"
}

// Member is a node of the cluster as this node sees it.
type Member struct {
	Name  string
	Addr  netip.AddrPort // the address it advertises
	State MemberState
}

// MemberEventType says what happened to a member.
type MemberEventType uint8

// The member event types.
const (
	MemberJoin   MemberEventType = iota + 1 // a member joined, or came back after failing
	MemberUpdate                            // its address or meta data (key set) changed
	MemberLeave                             // it left gracefully
	MemberFail                              // it was declared dead
)

// String returns the event's name: "join", "update", "leave" or "fail".
func (t MemberEventType) String() string {
	switch t {
	case MemberJoin:
		return "join"
	case MemberUpdate:
		return "update"
	case MemberLeave:
		return "leave"
	case MemberFail:
		return "fail"
	}
	return "event(" + strconv.Itoa(int(t)) + ")"
}

// MemberEvent is a change of membership, delivered by [Node.WatchMembers].
type MemberEvent struct {
	Type   MemberEventType
	Member Member
}

// Node is one member of a gossip cluster. Its methods are safe for concurrent use. Create it
// with [New]; it runs goroutines until [Node.Close].
type Node struct {
	cfg   Config
	name  string
	boot  uint64 // Lamport time this incarnation started at; immutable
	log   *slog.Logger
	ml    *memberlist.Memberlist // set once in New, before any goroutine of ours starts
	addr  netip.AddrPort         // advertised address; immutable
	ring  *memberlist.Keyring
	stats counters
	clock hlc

	clusterQ   *memberlist.TransmitLimitedQueue // network and rotation messages, to everyone
	numMembers atomic.Int32                     // alive members, self included, for clusterQ

	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	keyKick  chan struct{}
	syncKick chan struct{}
	burst    chan struct{} // wakes antiEntropyLoop to switch to fast rounds
	changed  atomic.Int64  // Unix nanoseconds of the last membership or attachment change
	respCh   chan syncRequest

	// With Config.Store (all immutable after New): the store's lock and keys, and the
	// campaign for the rotation lock, which Leave and Close end (campCancel).
	store       kvstore.Bounded // Config.Store, each call bounded by StoreTimeout; zero without a store
	locker      kvstore.Locker
	lockKey     string
	ringKey     string
	sealer      *sealer     // nil without Config.StoreKEK or StorePassphrase
	clearRecord atomic.Bool // a record read in clear while a sealer is configured (resealed at New)
	campCtx     context.Context
	campCancel  context.CancelFunc
	leadCh      chan *leadership // campaign → keyLoop: a rotation lock just taken
	resigned    chan struct{}    // closed by keyLoop once it gave the lock up for good

	closeMu sync.Mutex // guards following
	closed  bool

	keyMu     sync.Mutex     // serializes keyring changes and keyring file writes
	rotMu     sync.Mutex     // guards following; never held with mu
	rot       *rotationState // immutable once stored; replaced, never modified
	appliedTo *rotationState // the state last applied to the keyring (keyLoop only)

	// mu guards following. Lock order: memberlist's own node lock (held while it calls the
	// event delegate) → mu → a watcher's lock. Never call memberlist while holding mu.
	mu             sync.Mutex
	networks       map[NetworkID]*network               // joined by this node
	attach         map[string]map[NetworkID]*attachment // node → network → attachment
	peers          map[string]*peer                     // other nodes memberlist told us of
	left           map[string]time.Time                 // nodes that left, until reaped
	syncWith       map[string]bool                      // came back from failure: bulk sync with them
	watchers       map[*stream[Event]]watchFilter       // Watch subscriptions
	memberWatchers map[*stream[MemberEvent]]struct{}    // WatchMembers subscriptions
	keyWatchers    map[*stream[KeyringStatus]]struct{}  // WatchKeys subscriptions
}

type attachment struct {
	ltime   uint64
	leaving bool
	at      time.Time // when this node learnt it; a leave tombstone is reaped ReapInterval later
}

// peer is what this node knows of another. memberlist's own Node values are updated in place
// under its lock, so the node keeps its own copy, taken in the event delegate, and never holds
// on to a *memberlist.Node it returns.
type peer struct {
	node     memberlist.Node // copy, Meta included
	addr     string          // "ip:port", for reconnects
	boot     uint64          // from its meta data; 0 until known
	failed   bool
	failedAt time.Time
	leaving  bool // it announced a graceful leave
}

type syncRequest struct {
	network NetworkID
	sender  string
}

// New creates a node from cfg, binds its TCP and UDP listeners, loads or creates its keyring and
// starts its background work. It does not contact any peer: call [Node.Join]. The returned
// node must be closed with [Node.Close].
//
// New returns an [errclass.InvalidParameterError] naming the field for a bad Config, and an
// error wrapping the cause when the listeners cannot be bound or the keyring file cannot be
// read or written.
func New(cfg Config) (*Node, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("gossip: new node: %w", err)
	}
	n := &Node{
		cfg:            cfg,
		name:           cfg.NodeName,
		log:            cfg.Logger.With("node", cfg.NodeName),
		keyKick:        make(chan struct{}, 1),
		syncKick:       make(chan struct{}, 1),
		burst:          make(chan struct{}, 1),
		respCh:         make(chan syncRequest, 64),
		networks:       map[NetworkID]*network{},
		attach:         map[string]map[NetworkID]*attachment{},
		peers:          map[string]*peer{},
		left:           map[string]time.Time{},
		syncWith:       map[string]bool{},
		watchers:       map[*stream[Event]]watchFilter{},
		memberWatchers: map[*stream[MemberEvent]]struct{}{},
		keyWatchers:    map[*stream[KeyringStatus]]struct{}{},
	}
	n.clock.now = cfg.Now
	n.boot = n.clock.next()
	n.numMembers.Store(1)
	n.ctx, n.cancel = context.WithCancel(context.Background())
	n.campCtx, n.campCancel = context.WithCancel(n.ctx)
	n.leadCh = make(chan *leadership)
	n.resigned = make(chan struct{})
	if cfg.Store != nil {
		n.store = kvstore.Bound(cfg.Store, cfg.StoreTimeout)
		n.locker = cfg.Store.(kvstore.Locker) // checked by withDefaults
		n.lockKey = cfg.StorePrefix + storeLock
		n.ringKey = cfg.StorePrefix + storeKeyring
		n.sealer = newSealer(cfg)
	}

	if err := n.initKeyring(); err != nil {
		n.cancel()
		return nil, err
	}

	mlLog := log.New(&mlLogWriter{log: n.log, c: &n.stats}, "", 0)
	nt, err := newNetTransport(cfg.BindAddr.String(), cfg.BindPort, mlLog)
	if err != nil {
		n.cancel()
		return nil, fmt.Errorf("gossip: new node %q: %w", cfg.NodeName, err)
	}
	bindPort := nt.GetAutoBindPort()
	var transport memberlist.NodeAwareTransport = nt
	if cfg.testTransport != nil {
		transport = cfg.testTransport(nt)
	}

	mc := memberlist.DefaultLANConfig()
	mc.Name = cfg.NodeName
	mc.Transport = transport
	mc.Label = cfg.ClusterLabel
	mc.BindAddr = cfg.BindAddr.String()
	mc.BindPort = bindPort
	if cfg.AdvertiseAddr.IsValid() {
		mc.AdvertiseAddr = cfg.AdvertiseAddr.String()
	}
	mc.AdvertisePort = cfg.AdvertisePort
	if mc.AdvertisePort == 0 {
		mc.AdvertisePort = bindPort
	}
	mc.GossipInterval = cfg.GossipInterval
	mc.GossipNodes = cfg.GossipNodes
	mc.RetransmitMult = cfg.RetransmitMult
	mc.ProbeInterval = cfg.ProbeInterval
	mc.ProbeTimeout = cfg.ProbeTimeout
	mc.SuspicionMult = cfg.SuspicionMult
	mc.PushPullInterval = cfg.PushPullInterval
	mc.TCPTimeout = cfg.TCPTimeout
	mc.GossipToTheDeadTime = max(cfg.PushPullInterval, 10*cfg.ProbeInterval)
	mc.DeadNodeReclaimTime = cfg.ProbeInterval // a restarted host may come back on another address
	mc.Keyring = n.ring
	mc.GossipVerifyIncoming = true
	mc.GossipVerifyOutgoing = true
	mc.Delegate = (*delegate)(n)
	mc.Events = (*eventDelegate)(n)
	mc.Logger = mlLog
	mc.DNSConfigPath = ""
	mc.EnableCompression = !cfg.DisableCompression

	n.clusterQ = &memberlist.TransmitLimitedQueue{
		NumNodes:       func() int { return int(n.numMembers.Load()) },
		RetransmitMult: cfg.RetransmitMult,
	}

	ml, err := memberlist.Create(mc)
	if err != nil {
		n.cancel()
		_ = transport.Shutdown()
		return nil, fmt.Errorf("gossip: new node %q: %w", cfg.NodeName, err)
	}
	n.ml = ml
	n.addr = nodeAddrPort(ml.LocalNode()) // nothing updates our own node yet
	n.start(n.gossipLoop, n.antiEntropyLoop, n.maintenanceLoop, n.keyLoop, n.syncResponder)
	if n.locker != nil && cfg.RotationInterval >= 0 {
		n.start(n.campaign)
	}
	n.kick(n.keyKick)
	n.log.Info("gossip node started", "addr", n.addr.String(), "label", cfg.ClusterLabel,
		"primary_key", KeyID(n.ring.GetPrimaryKey()), "keys", len(n.ring.GetKeys()))
	return n, nil
}

// start runs each f on a goroutine that Close waits for. It reports false, starting nothing,
// once the node is closed.
func (n *Node) start(fs ...func()) bool {
	n.closeMu.Lock()
	defer n.closeMu.Unlock()
	if n.closed {
		return false
	}
	for _, f := range fs {
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			f()
		}()
	}
	return true
}

func newNetTransport(addr string, port int, logger *log.Logger) (*memberlist.NetTransport, error) {
	// Binding port 0 picks a TCP port and then binds UDP to the same number, which another
	// process may hold: retry a few times, as memberlist itself does.
	tries := 1
	if port == 0 {
		tries = 10
	}
	var err error
	for range tries {
		var nt *memberlist.NetTransport
		nt, err = memberlist.NewNetTransport(&memberlist.NetTransportConfig{BindAddrs: []string{addr}, BindPort: port, Logger: logger})
		if err == nil {
			return nt, nil
		}
		if !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	return nil, err
}

// initKeyring builds the memberlist keyring and the initial rotation state from, in order of
// preference: the keyring file, the store's record, Config.Keys. The rotation state is the
// newer of the file's and the store's; when it is the store's and the file's keys lag behind
// it, the keyring is converged to it before memberlist starts. With a store that has no record
// yet, the node creates it.
func (n *Node) initKeyring() error {
	cfg := n.cfg
	var fileKeys [][]byte
	var fileRot *rotationState
	if cfg.KeyringFile != "" {
		var err error
		fileKeys, fileRot, err = loadKeyringFile(cfg.KeyringFile)
		if err != nil {
			return fmt.Errorf("gossip: new node %q: %w", cfg.NodeName, err)
		}
		if fileKeys != nil {
			n.log.Info("keyring loaded", "file", cfg.KeyringFile, "keys", len(fileKeys), "primary_key", KeyID(fileKeys[0]))
		}
	}
	var storeRot *rotationState
	if cfg.Store != nil {
		var err error
		var rev uint64
		storeRot, rev, err = n.readStore(n.ctx)
		switch {
		case errors.Is(err, ErrKEK):
			// Never a fallback to the keyring file: the operator gave the wrong key, or none.
			return fmt.Errorf("gossip: new node %q: %w", cfg.NodeName, err)
		case err != nil && fileKeys == nil:
			return fmt.Errorf("gossip: new node %q: no keyring file to start from, and cannot %w", cfg.NodeName, err)
		case err != nil:
			n.log.Warn("cannot read the keyring from the store; starting from the keyring file", "err", err)
		case storeRot != nil:
			n.log.Info("keyring loaded from the store", "key", n.ringKey, "epoch", storeRot.Epoch,
				"phase", storeRot.Phase.String(), "primary_key", KeyID(storeRot.wantPrimary()))
			if n.clearRecord.Load() {
				// A record written before the cluster had a key-encryption key: seal it now
				// (if another node writes first, its write is sealed or it is resealed by the
				// next node to start with a key).
				if _, werr := n.writeStore(n.ctx, storeRot, rev); werr != nil {
					n.log.Warn("cannot seal the keyring record kept in clear in the store", "key", n.ringKey, "err", werr)
				} else {
					n.log.Info("keyring record in the store sealed", "key", n.ringKey)
				}
			} else if n.sealer == nil {
				n.log.Warn("the keyring record in the store holds the cluster's keys in clear: set Config.StoreKEK or StorePassphrase to seal it", "key", n.ringKey)
			}
		}
		bootstrap := err == nil && storeRot == nil
		if bootstrap {
			if st := n.pickKeyring(fileKeys, fileRot, nil); st != nil {
				if storeRot, err = n.bootstrapStore(st); err != nil {
					// The rotation driver writes the record once it can.
					n.log.Warn("cannot create the keyring record in the store", "err", err)
				}
			}
		}
	}
	rot := n.pickKeyring(fileKeys, fileRot, storeRot)
	if rot == nil {
		what := "required: gossip is always encrypted"
		if cfg.Store != nil {
			what = "required: gossip is always encrypted, and neither KeyringFile nor the store has keys"
		}
		return fmt.Errorf("gossip: new node %q: %w", cfg.NodeName, errclass.Invalid("Keys", "", what))
	}
	keys := fileKeys
	lags := false // the file's keys lag behind the store's state
	switch {
	case keys != nil && rot == storeRot && (fileRot == nil || storeRot.compare(fileRot) > 0):
		lags = true
	case keys == nil && rot == storeRot:
		keys = stateKeys(storeRot)
	case keys == nil:
		keys = cfg.Keys
	}
	ring, err := memberlist.NewKeyring(keys[1:], keys[0])
	if err != nil {
		return fmt.Errorf("gossip: new node %q: %w", cfg.NodeName, err)
	}
	n.ring = ring
	n.rot = rot
	n.appliedTo = rot // the ring is what the rotation state says; the next change re-applies
	if lags {
		// Catch up before memberlist starts, so the node's first packets already use the
		// cluster's current primary.
		if _, err := n.convergeLocked(rot); err != nil {
			return fmt.Errorf("gossip: new node %q: apply the store's keyring: %w", cfg.NodeName, err)
		}
		n.log.Info("keyring file behind the store: caught up", "epoch", rot.Epoch, "primary_key", KeyID(ring.GetPrimaryKey()))
	}
	if cfg.KeyringFile != "" {
		if err := saveKeyringFile(cfg.KeyringFile, ringKeys(ring), rot); err != nil {
			return fmt.Errorf("gossip: new node %q: %w", cfg.NodeName, err)
		}
	}
	return nil
}

// pickKeyring returns the rotation state a node starts with: the newer of the file's and the
// store's (the store's on a tie), or the initial state of the file's keys or Config.Keys; nil
// when there are no keys at all.
func (n *Node) pickKeyring(fileKeys [][]byte, fileRot, storeRot *rotationState) *rotationState {
	switch {
	case storeRot != nil && (fileRot == nil || storeRot.compare(fileRot) >= 0):
		return storeRot
	case fileRot != nil:
		return fileRot
	}
	keys := fileKeys
	if keys == nil {
		keys = n.cfg.Keys
	}
	if len(keys) == 0 {
		return nil
	}
	interval := n.cfg.RotationInterval
	if interval < 0 {
		interval = DefaultRotationInterval
	}
	return initialRotation(keys, n.cfg.Now().Add(interval))
}

// stateKeys returns the keyring a member holds at st, primary first: the target keys, with
// the primary the phase calls for.
func stateKeys(st *rotationState) [][]byte {
	primary := st.wantPrimary()
	keys := [][]byte{bytes.Clone(primary)}
	for _, k := range st.Keys {
		if !bytes.Equal(k, primary) {
			keys = append(keys, bytes.Clone(k))
		}
	}
	return keys
}

// Name returns the node's name, Config.NodeName.
func (n *Node) Name() string { return n.name }

// LocalAddr returns the address and port this node advertises to its peers.
func (n *Node) LocalAddr() netip.AddrPort { return n.addr }

func nodeAddrPort(nd *memberlist.Node) netip.AddrPort {
	a, _ := netip.AddrFromSlice(nd.Addr)
	return netip.AddrPortFrom(a.Unmap(), nd.Port)
}

func (n *Node) isClosed() bool {
	n.closeMu.Lock()
	defer n.closeMu.Unlock()
	return n.closed
}

// Join contacts the given peers ("host:port" each) and exchanges full state with them: the
// membership, the network attachments and the key rotation state. It returns how many peers
// it reached; an error only if it reached none. Joining peers already in the cluster is
// harmless. After a successful join the node bulk-syncs the tables of the networks it has
// joined and, for a few seconds, runs anti-entropy rounds every half second.
//
// If ctx ends first, Join returns ctx.Err() and the attempt finishes in the background.
func (n *Node) Join(ctx context.Context, peers []string) (int, error) {
	if n.isClosed() {
		return 0, ErrClosed
	}
	if len(peers) == 0 {
		return 0, errclass.Invalid("peers", "", "no peer to join")
	}
	type result struct {
		n   int
		err error
	}
	ch := make(chan result, 1)
	if !n.start(func() {
		c, err := n.ml.Join(peers)
		ch <- result{c, err}
	}) {
		return 0, ErrClosed
	}
	select {
	case r := <-ch:
		if r.err != nil && r.n == 0 {
			return 0, fmt.Errorf("gossip: join %s: %w", strings.Join(peers, ","),
				&errclass.UnavailableError{What: "peers", Err: r.err})
		}
		n.kick(n.syncKick)
		n.noteChange()
		n.kick(n.keyKick)
		return r.n, nil
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// Leave tells the cluster that this node is leaving: its peers drop its entries and network
// attachments at once, instead of after failure detection. It waits until the message has
// been sent to someone or ctx ends (5 s without a deadline). With a Config.Store, the node
// first stops competing for the rotation lock and releases it if it holds it, so another
// member takes the rotations over at once. Call Close afterwards; a node that left cannot
// rejoin.
func (n *Node) Leave(ctx context.Context) error {
	n.closeMu.Lock()
	defer n.closeMu.Unlock()
	if n.closed {
		return ErrClosed
	}
	timeout := 5 * time.Second
	if d, ok := ctx.Deadline(); ok {
		timeout = time.Until(d)
	}
	n.campCancel()
	if n.locker != nil {
		select {
		case <-n.resigned:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	// Announce the leave first and let the announcement go out, so that peers take the dead
	// message memberlist sends next for a leave, not a failure.
	sent := make(chan struct{})
	n.clusterQ.QueueBroadcast(&broadcast{name: "leave", msg: encodeNodeLeave(&nodeLeave{Node: n.name, Boot: n.boot}), done: sent})
	if n.numMembers.Load() > 1 {
		select {
		case <-sent:
		case <-time.After(min(timeout/2, time.Second)):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if err := n.ml.Leave(timeout); err != nil {
		return fmt.Errorf("gossip: leave: %w", err)
	}
	return nil
}

// Close stops the node without a goodbye (peers declare it failed), stops every goroutine it
// started and waits for them, closes the channels of every Watch and WatchMembers
// subscription, and shuts memberlist down (memberlist's own goroutines end shortly after: a
// probe in flight waits out its ProbeInterval). With a Config.Store it releases the rotation
// lock if it holds it (waiting up to StoreTimeout for the store); it does not close the
// store. It is idempotent. For a graceful exit call Leave first.
func (n *Node) Close() error {
	n.closeMu.Lock()
	if n.closed {
		n.closeMu.Unlock()
		return nil
	}
	n.closed = true
	n.closeMu.Unlock()
	n.cancel()
	err := n.ml.Shutdown()
	n.wg.Wait()
	if err != nil {
		return fmt.Errorf("gossip: close: %w", err)
	}
	return nil
}

// Members returns every member this node knows, itself included, sorted by name: the alive
// ones (suspects included) and the failed ones it still remembers.
func (n *Node) Members() []Member {
	out := []Member{{Name: n.name, Addr: n.addr, State: StateAlive}}
	n.mu.Lock()
	for name, p := range n.peers {
		st := StateAlive
		if p.failed {
			st = StateFailed
		}
		out = append(out, Member{Name: name, Addr: nodeAddrPort(&p.node), State: st})
	}
	n.mu.Unlock()
	slices.SortFunc(out, func(a, b Member) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// NumAlive returns how many members, itself included, are alive (or suspected, not yet
// declared dead).
func (n *Node) NumAlive() int { return int(n.numMembers.Load()) }

// WatchMembers subscribes to membership events. Events are queued without bound and never
// dropped; the channel is closed by cancel or Close. cancel is idempotent.
func (n *Node) WatchMembers() (events <-chan MemberEvent, cancel func()) {
	s := newStream[MemberEvent]()
	n.mu.Lock()
	n.memberWatchers[s] = struct{}{}
	n.mu.Unlock()
	if !n.start(func() { s.run(n.ctx) }) {
		n.mu.Lock()
		delete(n.memberWatchers, s)
		n.mu.Unlock()
		close(s.out)
		return s.out, func() {}
	}
	return s.out, func() {
		n.mu.Lock()
		delete(n.memberWatchers, s)
		n.mu.Unlock()
		s.stop()
	}
}

func (n *Node) emitMemberLocked(t MemberEventType, nd *memberlist.Node, st MemberState) {
	n.emitMemberEventLocked(MemberEvent{Type: t, Member: Member{Name: nd.Name, Addr: nodeAddrPort(nd), State: st}})
}

func (n *Node) emitMemberEventLocked(ev MemberEvent) {
	for s := range n.memberWatchers {
		s.push(ev)
	}
}

// Stats returns the node's counters.
func (n *Node) Stats() Stats { return n.stats.snapshot() }

func (n *Node) kick(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// broadcast is a message in a TransmitLimitedQueue. A named broadcast replaces a queued one of
// the same name (a newer write of the same entry, a newer rotation state).
type broadcast struct {
	name string
	msg  []byte
	done chan struct{} // closed when the queue is done with it; optional
}

func (b *broadcast) Invalidates(o memberlist.Broadcast) bool {
	ob, ok := o.(*broadcast)
	return ok && b.name != "" && ob.name == b.name
}
func (b *broadcast) Name() string    { return b.name }
func (b *broadcast) Message() []byte { return b.msg }
func (b *broadcast) Finished() {
	if b.done != nil {
		close(b.done)
	}
}

// delegate is the Node seen as memberlist's Delegate, so those methods stay off Node's API.
type delegate Node

func (d *delegate) NodeMeta(limit int) []byte {
	n := (*Node)(d)
	primary, ids := ringIDs(n.ring)
	b := encodeMeta(&nodeMeta{Boot: n.boot, Primary: primary, Keys: ids})
	if len(b) > limit {
		b = encodeMeta(&nodeMeta{Boot: n.boot, Primary: primary})
	}
	return b
}

func (d *delegate) NotifyMsg(buf []byte) {
	n := (*Node)(d)
	if err := n.handleMsg(buf); err != nil {
		n.stats.malformedMessages.Add(1)
		n.log.Warn("rejected gossip message", "err", err, "len", len(buf))
	}
}

func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte {
	return (*Node)(d).clusterQ.GetBroadcasts(overhead, limit)
}

func (d *delegate) LocalState(join bool) []byte {
	n := (*Node)(d)
	n.rotMu.Lock()
	rot := n.rot
	n.rotMu.Unlock()
	s := clusterState{Rotation: rot}
	n.mu.Lock()
	for node, m := range n.attach {
		for nid, a := range m {
			s.Networks = append(s.Networks, networkEvent{Node: node, Network: nid, LTime: a.ltime, Leaving: a.leaving})
		}
	}
	n.mu.Unlock()
	return encodeClusterState(&s)
}

func (d *delegate) MergeRemoteState(buf []byte, join bool) {
	n := (*Node)(d)
	t, body, err := msgHeader(buf)
	if err == nil && t != msgState {
		err = fmt.Errorf("%w: push/pull state of type %d", errMalformed, t)
	}
	var s *clusterState
	if err == nil {
		s, err = decodeClusterState(body)
	}
	if err != nil {
		n.stats.malformedMessages.Add(1)
		n.log.Warn("rejected push/pull state", "err", err)
		return
	}
	if s.Rotation != nil {
		n.adoptRotation(s.Rotation)
	}
	n.mu.Lock()
	for i := range s.Networks {
		n.applyNetworkEventLocked(&s.Networks[i])
	}
	n.mu.Unlock()
}

func (n *Node) handleMsg(buf []byte) error {
	t, body, err := msgHeader(buf)
	if err != nil {
		return err
	}
	switch t {
	case msgNetwork:
		ev, err := decodeNetworkEvent(body)
		if err != nil {
			return err
		}
		n.mu.Lock()
		changed := n.applyNetworkEventLocked(&ev)
		n.mu.Unlock()
		if changed {
			n.queueCluster(networkBroadcastName(&ev), bytes.Clone(buf))
		}
	case msgNodeLeave:
		l, err := decodeNodeLeave(body)
		if err != nil {
			return err
		}
		n.mu.Lock()
		changed := n.applyNodeLeaveLocked(&l)
		n.mu.Unlock()
		if changed {
			n.queueCluster("leave\x00"+l.Node, bytes.Clone(buf))
		}
	case msgRotation:
		st, err := decodeRotation(body)
		if err != nil {
			return err
		}
		n.adoptRotation(st)
	case msgTableBatch:
		evs, err := decodeBatch(body)
		if err != nil {
			return err
		}
		n.mu.Lock()
		for i := range evs {
			n.applyRemoteLocked(&evs[i], false)
		}
		n.mu.Unlock()
	case msgBulkSync:
		s, err := decodeBulkSync(body)
		if err != nil {
			return err
		}
		n.stats.bulkSyncs.Add(1)
		n.mu.Lock()
		for i := range s.Events {
			if s.Events[i].Network != s.Network {
				continue
			}
			n.applyRemoteLocked(&s.Events[i], true)
		}
		_, joined := n.networks[s.Network]
		n.mu.Unlock()
		if !s.Response && joined {
			select {
			case n.respCh <- syncRequest{network: s.Network, sender: s.Sender}:
			default: // busy; the peer's next round will ask again
			}
		}
	default:
		return fmt.Errorf("%w: unknown type %d", errMalformed, t)
	}
	return nil
}

func (n *Node) queueCluster(name string, msg []byte) {
	n.clusterQ.QueueBroadcast(&broadcast{name: name, msg: msg})
}

func networkBroadcastName(ev *networkEvent) string {
	return "n\x00" + ev.Node + "\x00" + string(ev.Network)
}

// eventDelegate is the Node seen as memberlist's EventDelegate. memberlist calls it with its
// node lock held: it must not call back into memberlist.
type eventDelegate Node

func (d *eventDelegate) NotifyJoin(nd *memberlist.Node) {
	n := (*Node)(d)
	n.mu.Lock()
	defer n.mu.Unlock()
	if nd.Name != n.name {
		n.peerJoinLocked(nd)
	}
	n.emitMemberLocked(MemberJoin, nd, StateAlive)
	n.kick(n.keyKick)
}

func (d *eventDelegate) NotifyLeave(nd *memberlist.Node) {
	n := (*Node)(d)
	n.mu.Lock()
	defer n.mu.Unlock()
	if nd.Name == n.name {
		return
	}
	if p := n.peers[nd.Name]; p != nil && p.leaving {
		n.peerLeftLocked(nd.Name)
		n.emitMemberLocked(MemberLeave, nd, StateLeft)
	} else {
		n.peerFailedLocked(nd.Name)
		n.emitMemberLocked(MemberFail, nd, StateFailed)
	}
	n.kick(n.keyKick)
}

func (d *eventDelegate) NotifyUpdate(nd *memberlist.Node) {
	n := (*Node)(d)
	n.mu.Lock()
	defer n.mu.Unlock()
	if nd.Name != n.name {
		n.peerJoinLocked(nd)
	}
	n.emitMemberLocked(MemberUpdate, nd, StateAlive)
	n.kick(n.keyKick)
}

// peerJoinLocked records that memberlist sees nd alive: a new node, one back from failure, or
// new meta data. A new boot time means a new incarnation: whatever is left of the old one
// (entries and attachments older than the new boot) is dropped; otherwise the entries hidden
// when it failed come back.
func (n *Node) peerJoinLocked(nd *memberlist.Node) {
	delete(n.left, nd.Name)
	p := n.peers[nd.Name]
	if p == nil {
		p = &peer{}
		n.peers[nd.Name] = p
		n.noteChange()
	}
	p.node = *nd
	p.node.Addr = slices.Clone(nd.Addr)
	p.node.Meta = slices.Clone(nd.Meta)
	p.addr = net.JoinHostPort(net.IP(nd.Addr).String(), strconv.Itoa(int(nd.Port)))
	if m, err := decodeMeta(nd.Meta); err == nil && m.Boot != p.boot {
		p.boot = m.Boot
		p.leaving = false
		n.purgeOwnerLocked(nd.Name, m.Boot)
	}
	if p.failed {
		p.failed = false
		n.noteChange()
		n.setHiddenLocked(nd.Name, false)
		n.syncWith[nd.Name] = true
		n.kick(n.syncKick)
	}
	n.recountLocked()
}

// applyNodeLeaveLocked records a peer's announced leave. If memberlist already declared it
// failed (the dead message overtook the announcement), the failure becomes a leave now.
func (n *Node) applyNodeLeaveLocked(l *nodeLeave) bool {
	p := n.peers[l.Node]
	if l.Node == n.name || p == nil || p.leaving || (p.boot != 0 && p.boot != l.Boot) {
		return false
	}
	p.leaving = true
	if p.failed {
		ap, _ := netip.ParseAddrPort(p.addr)
		n.peerLeftLocked(l.Node)
		n.emitMemberEventLocked(MemberEvent{Type: MemberLeave, Member: Member{Name: l.Node, Addr: ap, State: StateLeft}})
	}
	return true
}

func (n *Node) peerFailedLocked(name string) {
	p := n.peers[name]
	if p == nil {
		return
	}
	p.failed = true
	p.failedAt = n.cfg.Now()
	n.noteChange()
	n.setHiddenLocked(name, true)
	n.recountLocked()
}

func (n *Node) peerLeftLocked(name string) {
	n.purgeOwnerLocked(name, ^uint64(0))
	delete(n.peers, name)
	delete(n.syncWith, name)
	n.left[name] = n.cfg.Now()
	n.recountLocked()
}

// noteChange records a change of membership or of network attachments: anti-entropy runs
// fast rounds until a few seconds pass without one, so a join storm converges in seconds, not
// at the next slow round.
func (n *Node) noteChange() {
	n.changed.Store(time.Now().UnixNano())
	n.kick(n.burst)
}

// recountLocked refreshes the member count and each joined network's node count, which size
// the broadcast queues' retransmissions.
func (n *Node) recountLocked() {
	alive := int32(1)
	for _, p := range n.peers {
		if !p.failed {
			alive++
		}
	}
	n.numMembers.Store(alive)
	for nid, nw := range n.networks {
		nw.size.Store(int32(len(n.networkPeersLocked(nid)) + 1))
	}
}

// hlc is a Lamport clock started from, and kept at least at, the wall clock in microseconds.
// Its values are Lamport times (each is above everything this node has seen), and a restarted
// node's clock starts above everything its previous incarnation wrote.
type hlc struct {
	v   atomic.Uint64
	now func() time.Time
}

func (c *hlc) next() uint64 {
	for {
		old := c.v.Load()
		v := max(old+1, uint64(c.now().UnixMicro()))
		if c.v.CompareAndSwap(old, v) {
			return v
		}
	}
}

func (c *hlc) witness(t uint64) {
	for {
		old := c.v.Load()
		if t <= old || c.v.CompareAndSwap(old, t) {
			return
		}
	}
}

// stream is an unbounded queue in front of a channel: producers never block and nothing is
// dropped. Its goroutine ends, closing out, on stop or when ctx ends.
type stream[T any] struct {
	mu   sync.Mutex // guards q
	q    []T
	kick chan struct{}
	out  chan T
	done chan struct{}
	once sync.Once
}

func newStream[T any]() *stream[T] {
	return &stream[T]{kick: make(chan struct{}, 1), out: make(chan T), done: make(chan struct{})}
}

func (s *stream[T]) push(v T) {
	s.mu.Lock()
	s.q = append(s.q, v)
	s.mu.Unlock()
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

func (s *stream[T]) stop() { s.once.Do(func() { close(s.done) }) }

func (s *stream[T]) run(ctx context.Context) {
	defer close(s.out)
	for {
		select {
		case <-s.done:
			return
		case <-ctx.Done():
			return
		case <-s.kick:
		}
		for {
			s.mu.Lock()
			q := s.q
			s.q = nil
			s.mu.Unlock()
			if len(q) == 0 {
				break
			}
			for _, v := range q {
				select {
				case s.out <- v:
				case <-s.done:
					return
				case <-ctx.Done():
					return
				}
			}
		}
	}
}

// randomPick returns up to k elements of s in random order.
func randomPick[T any](s []T, k int) []T {
	s = slices.Clone(s)
	rand.Shuffle(len(s), func(i, j int) { s[i], s[j] = s[j], s[i] })
	return s[:min(k, len(s))]
}

// aliveNodes returns copies of the alive peers' memberlist nodes, by name, for sending to.
func (n *Node) aliveNodes() map[string]*memberlist.Node {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make(map[string]*memberlist.Node, len(n.peers))
	for name, p := range n.peers {
		if !p.failed {
			nd := p.node
			out[name] = &nd
		}
	}
	return out
}
