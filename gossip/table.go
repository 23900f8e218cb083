package gossip

import (
	"bytes"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/cnmkit/cnm/internal/errclass"
)

// EventType says what happened to a table entry.
type EventType uint8

// The table event types.
const (
	EntryCreated EventType = iota + 1
	EntryUpdated
	EntryDeleted
)

// String returns the event's name: "create", "update" or "delete".
func (t EventType) String() string {
	switch t {
	case EntryCreated:
		return "create"
	case EntryUpdated:
		return "update"
	case EntryDeleted:
		return "delete"
	}
	return "unknown"
}

// Entry is one entry of a replicated table.
type Entry struct {
	Network NetworkID
	Table   string
	Key     string
	Value   []byte
	Owner   string // the node that wrote it
}

// Event is a change of a table entry, delivered by [Node.Watch]. For EntryDeleted, Value is
// the last value the entry had.
type Event struct {
	Type EventType
	Entry
}

type tableKey struct{ table, key string }

type entry struct {
	owner   string
	ltime   uint64
	value   []byte
	deleted bool      // a tombstone
	hidden  bool      // its owner failed; comes back if the owner does
	reapAt  time.Time // for a tombstone
}

func (e *entry) visible() bool { return !e.deleted && !e.hidden }

// olderThan reports whether a write (ltime, owner) wins over the stored entry e: the later
// Lamport time wins, and on a tie the greater owner name, so every node picks the same winner.
func (e *entry) olderThan(ltime uint64, owner string) bool {
	return ltime > e.ltime || (ltime == e.ltime && owner > e.owner)
}

// network is this node's part in one joined network: its tables and its broadcast queues. The
// queues have their own locks; size is read by them without mu.
type network struct {
	id      NetworkID
	local   *memberlist.TransmitLimitedQueue // events of entries this node owns
	relay   *memberlist.TransmitLimitedQueue // events learnt from peers, sent in leftover space
	size    atomic.Int32                     // nodes in the network, this one included
	inSync  bool                             // a bulk sync with a peer has succeeded
	entries map[tableKey]*entry
	order   []string // the network's peers in a random order, walked round-robin for gossip
	pos     int      // next index in order
}

// nextTargets returns the next k gossip targets among peers. It walks a shuffled list of the
// peers round-robin, reshuffled only when the peers change, rather than drawing k at random
// each round: since every message queued here is sent once per target, its transmissions
// (RetransmitMult·⌈log10(N+1)⌉ of them) go to that many distinct peers, all of them in a small
// network. With random draws a node misses a message now and then (about 0.1% of deliveries
// at N=5, measured), and only the next anti-entropy round repairs it.
func (nw *network) nextTargets(peers []string, k int) []string {
	if len(peers) != len(nw.order) || !sameStrings(peers, nw.order) {
		nw.order = randomPick(peers, len(peers))
		nw.pos = 0
	}
	k = min(k, len(nw.order))
	out := make([]string, 0, k)
	for range k {
		if nw.pos >= len(nw.order) {
			nw.pos = 0
		}
		out = append(out, nw.order[nw.pos])
		nw.pos++
	}
	return out
}

func sameStrings(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

func (n *Node) newNetwork(nid NetworkID) *network {
	nw := &network{id: nid, entries: map[tableKey]*entry{}}
	nw.size.Store(1)
	numNodes := func() int { return int(nw.size.Load()) }
	nw.local = &memberlist.TransmitLimitedQueue{NumNodes: numNodes, RetransmitMult: n.cfg.RetransmitMult}
	nw.relay = &memberlist.TransmitLimitedQueue{NumNodes: numNodes, RetransmitMult: n.cfg.RetransmitMult}
	return nw
}

// maxRelayFromSync caps relays of what a bulk sync taught: past it, the periodic syncs spread
// the rest (networkdb's maxQueueLenBroadcastOnSync).
const maxRelayFromSync = 500

// udpBudget is the room for cnm's table events in one UDP packet: memberlist's 1400-byte
// buffer less the label header, encryption (version, nonce, tag, padding), CRC and message
// headers, with margin.
func (n *Node) udpBudget() int { return 1400 - 80 - len(n.cfg.ClusterLabel) }

// maxEventSize is the largest encoded table event: one must fit in a packet with the batch
// framing.
func (n *Node) maxEventSize() int { return n.udpBudget() - 8 - batchOverhead }

// JoinNetwork makes the node take part in the tables of network nid: it stores and relays their
// entries, may write to them, and bulk-syncs them with a peer of the network now (or as soon
// as it has one) and periodically. Joining a network already joined does nothing.
func (n *Node) JoinNetwork(nid NetworkID) error {
	if nid == "" {
		return errclass.Invalid("network", "", "empty network ID")
	}
	if n.isClosed() {
		return ErrClosed
	}
	n.mu.Lock()
	if _, ok := n.networks[nid]; ok {
		n.mu.Unlock()
		return nil
	}
	n.networks[nid] = n.newNetwork(nid)
	ev := networkEvent{Node: n.name, Network: nid, LTime: n.clock.next()}
	n.setAttachLocked(&ev)
	n.recountLocked()
	n.mu.Unlock()
	n.queueCluster(networkBroadcastName(&ev), encodeNetworkEvent(&ev))
	n.kick(n.syncKick)
	n.log.Debug("joined network", "network", string(nid))
	return nil
}

// LeaveNetwork stops the node's part in network nid: its own entries disappear from every
// other node, and it forgets the network's tables (its watchers get a delete for each visible
// entry). Leaving a network not joined does nothing.
func (n *Node) LeaveNetwork(nid NetworkID) error {
	if n.isClosed() {
		return ErrClosed
	}
	n.mu.Lock()
	nw, ok := n.networks[nid]
	if !ok {
		n.mu.Unlock()
		return nil
	}
	delete(n.networks, nid)
	for tk, e := range nw.entries {
		if e.visible() {
			n.emitLocked(EntryDeleted, nid, tk, e)
		}
	}
	ev := networkEvent{Node: n.name, Network: nid, LTime: n.clock.next(), Leaving: true}
	n.setAttachLocked(&ev)
	n.mu.Unlock()
	n.queueCluster(networkBroadcastName(&ev), encodeNetworkEvent(&ev))
	return nil
}

// Networks returns the networks this node has joined, sorted.
func (n *Node) Networks() []NetworkID {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make([]NetworkID, 0, len(n.networks))
	for nid := range n.networks {
		out = append(out, nid)
	}
	slices.Sort(out)
	return out
}

// NetworkNodes returns the names of the nodes, this one included if it has joined, that take
// part in network nid as far as this node knows, sorted.
func (n *Node) NetworkNodes(nid NetworkID) []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := n.networkPeersLocked(nid)
	if _, ok := n.networks[nid]; ok {
		out = append(out, n.name)
	}
	slices.Sort(out)
	return out
}

func (n *Node) setAttachLocked(ev *networkEvent) {
	m := n.attach[ev.Node]
	if m == nil {
		m = map[NetworkID]*attachment{}
		n.attach[ev.Node] = m
	}
	m[ev.Network] = &attachment{ltime: ev.LTime, leaving: ev.Leaving, at: n.cfg.Now()}
}

// networkPeersLocked returns the live peers attached to nid.
func (n *Node) networkPeersLocked(nid NetworkID) []string {
	var out []string
	for node, m := range n.attach {
		if node == n.name {
			continue
		}
		if a := m[nid]; a != nil && !a.leaving {
			if p := n.peers[node]; p != nil && !p.failed {
				out = append(out, node)
			}
		}
	}
	return out
}

// applyNetworkEventLocked applies a peer's network attachment or detachment and reports
// whether it changed anything (and so should be relayed).
func (n *Node) applyNetworkEventLocked(ev *networkEvent) bool {
	if ev.Node == "" || ev.Network == "" {
		return false
	}
	n.clock.witness(ev.LTime)
	if ev.Node == n.name {
		// Someone holds a record of this node newer than its own: a previous incarnation's.
		// Refute it with the truth at a later time.
		mine := n.attach[n.name][ev.Network]
		if mine == nil || ev.LTime > mine.ltime || (ev.LTime == mine.ltime && ev.Leaving != mine.leaving) {
			_, joined := n.networks[ev.Network]
			if mine != nil || !ev.Leaving {
				fix := networkEvent{Node: n.name, Network: ev.Network, LTime: n.clock.next(), Leaving: !joined}
				n.setAttachLocked(&fix)
				n.queueCluster(networkBroadcastName(&fix), encodeNetworkEvent(&fix))
			}
		}
		return false
	}
	if _, ok := n.left[ev.Node]; ok {
		return false
	}
	if p := n.peers[ev.Node]; p != nil && ev.LTime < p.boot {
		return false // from an earlier incarnation
	}
	cur := n.attach[ev.Node][ev.Network]
	if cur != nil && ev.LTime <= cur.ltime {
		return false
	}
	if cur == nil || cur.leaving != ev.Leaving {
		n.noteChange()
	}
	n.setAttachLocked(ev)
	if nw := n.networks[ev.Network]; nw != nil {
		nw.size.Store(int32(len(n.networkPeersLocked(ev.Network)) + 1))
		if ev.Leaving {
			n.dropOwnerEntriesLocked(nw, ev.Node, ^uint64(0))
		} else if !nw.inSync {
			n.kick(n.syncKick)
		}
	}
	return true
}

// validateEntry checks the names of an entry.
func validateEntry(nid NetworkID, table, key string) error {
	switch {
	case nid == "":
		return errclass.Invalid("network", "", "empty network ID")
	case table == "":
		return errclass.Invalid("table", "", "empty table name")
	case key == "":
		return errclass.Invalid("key", "", "empty entry key")
	}
	return nil
}

// CreateEntry creates key in table of network nid with value, owned by this node, and gossips
// it to the network's other nodes. It returns an [errclass.AlreadyExistsError] if the key
// exists (its owner may be another node), [ErrNetworkNotJoined] if the node has not joined
// nid, and an [errclass.InvalidParameterError] for an empty name or an entry too large for one
// UDP packet (about 1.2 kB with its names). value is copied.
func (n *Node) CreateEntry(nid NetworkID, table, key string, value []byte) error {
	return n.write(nid, table, key, value, EntryCreated)
}

// UpdateEntry sets a new value for key, which this node must own. It returns an
// [errclass.NotFoundError] if the key does not exist, an [errclass.ConflictError] if another
// node owns it, and otherwise the errors of CreateEntry.
func (n *Node) UpdateEntry(nid NetworkID, table, key string, value []byte) error {
	return n.write(nid, table, key, value, EntryUpdated)
}

// DeleteEntry deletes key, which this node must own. The delete is kept as a tombstone for
// Config.ReapInterval so that no older write can bring the entry back. Errors are those of
// UpdateEntry.
func (n *Node) DeleteEntry(nid NetworkID, table, key string) error {
	return n.write(nid, table, key, nil, EntryDeleted)
}

func (n *Node) write(nid NetworkID, table, key string, value []byte, op EventType) error {
	if err := validateEntry(nid, table, key); err != nil {
		return err
	}
	if n.isClosed() {
		return ErrClosed
	}
	ev := tableEvent{Deleted: op == EntryDeleted, Owner: n.name, Network: nid, Table: table, Key: key, Value: bytes.Clone(value)}
	if op == EntryDeleted {
		ev.ReapMillis = uint64(n.cfg.ReapInterval.Milliseconds())
	}
	if size := encodedEventSize(&ev) + 10; size > n.maxEventSize() {
		return errclass.Invalid("value", strconv.Itoa(len(value))+" bytes",
			"the entry does not fit in one gossip packet (at most "+strconv.Itoa(n.maxEventSize())+" bytes encoded)")
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	nw := n.networks[nid]
	if nw == nil {
		return ErrNetworkNotJoined
	}
	tk := tableKey{table, key}
	cur := nw.entries[tk]
	exists := cur != nil && cur.visible()
	name := string(nid) + "/" + table + "/" + key
	switch {
	case op == EntryCreated && exists:
		return &errclass.AlreadyExistsError{Kind: "entry", Name: name}
	case op != EntryCreated && !exists:
		return &errclass.NotFoundError{Kind: "entry", Name: name}
	case op != EntryCreated && cur.owner != n.name:
		return &errclass.ConflictError{Kind: "entry", Name: name, Reason: "owned by node " + cur.owner}
	}
	if op == EntryDeleted {
		ev.Value = cur.value
	}
	ev.LTime = n.clock.next()
	n.storeLocked(nw, &ev, cur, false)
	nw.local.QueueBroadcast(n.tableBroadcast(&ev))
	return nil
}

func (n *Node) tableBroadcast(ev *tableEvent) *broadcast {
	return &broadcast{name: ev.Table + "\x00" + ev.Key, msg: encodeTableEvent(ev)}
}

// storeLocked stores ev over cur (which it is newer than) and tells the watchers.
func (n *Node) storeLocked(nw *network, ev *tableEvent, cur *entry, hidden bool) {
	e := &entry{owner: ev.Owner, ltime: ev.LTime, value: ev.Value, deleted: ev.Deleted, hidden: hidden}
	if ev.Deleted {
		reap := time.Duration(ev.ReapMillis) * time.Millisecond
		if reap <= 0 || reap > n.cfg.ReapInterval {
			reap = n.cfg.ReapInterval
		}
		e.reapAt = n.cfg.Now().Add(reap)
		if cur != nil && len(e.value) == 0 {
			e.value = cur.value
		}
	}
	tk := tableKey{ev.Table, ev.Key}
	nw.entries[tk] = e
	was := cur != nil && cur.visible()
	switch {
	case !was && e.visible():
		n.emitLocked(EntryCreated, nw.id, tk, e)
	case was && e.visible():
		n.emitLocked(EntryUpdated, nw.id, tk, e)
	case was && !e.visible():
		n.emitLocked(EntryDeleted, nw.id, tk, e)
	}
}

// applyRemoteLocked applies a table event from a peer, gossiped or bulk-synced, and relays it
// if it changed anything.
func (n *Node) applyRemoteLocked(ev *tableEvent, fromSync bool) {
	if ev.Owner == "" || ev.Table == "" || ev.Key == "" {
		return
	}
	n.clock.witness(ev.LTime)
	nw := n.networks[ev.Network]
	if nw == nil {
		return // not taking part in this network
	}
	tk := tableKey{ev.Table, ev.Key}
	cur := nw.entries[tk]
	if cur != nil && !cur.olderThan(ev.LTime, ev.Owner) {
		return
	}
	if ev.Owner == n.name {
		// A write by this node newer than what it holds: a previous incarnation's. This node
		// is the authority on its own entries: it re-asserts what it holds (its live entry, or
		// a delete) at a later time.
		if ev.Deleted && (cur == nil || !cur.visible()) {
			n.storeLocked(nw, ev, cur, false)
			return
		}
		fix := tableEvent{Deleted: true, LTime: n.clock.next(), Owner: n.name, Network: ev.Network, Table: ev.Table,
			Key: ev.Key, Value: ev.Value, ReapMillis: uint64(n.cfg.ReapInterval.Milliseconds())}
		if cur != nil && cur.owner == n.name && cur.visible() {
			fix.Deleted, fix.Value, fix.ReapMillis = false, cur.value, 0
		}
		n.storeLocked(nw, &fix, cur, false)
		nw.local.QueueBroadcast(n.tableBroadcast(&fix))
		return
	}
	if _, ok := n.left[ev.Owner]; ok {
		return
	}
	hidden := false
	if p := n.peers[ev.Owner]; p != nil {
		if ev.LTime < p.boot {
			return // from an earlier incarnation of the owner
		}
		hidden = p.failed
	}
	n.storeLocked(nw, ev, cur, hidden)
	if fromSync {
		n.stats.eventsFromSync.Add(1)
		if nw.relay.NumQueued() >= maxRelayFromSync {
			return
		}
	} else {
		n.stats.eventsApplied.Add(1)
	}
	if ev.Deleted {
		ev.ReapMillis = uint64(max(0, time.Until(nw.entries[tk].reapAt).Milliseconds()))
	}
	nw.relay.QueueBroadcast(n.tableBroadcast(ev))
}

// dropOwnerEntriesLocked removes from nw the entries of owner written before the Lamport time
// before, telling the watchers of those that were visible.
func (n *Node) dropOwnerEntriesLocked(nw *network, owner string, before uint64) {
	for tk, e := range nw.entries {
		if e.owner == owner && e.ltime < before {
			delete(nw.entries, tk)
			if e.visible() {
				n.emitLocked(EntryDeleted, nw.id, tk, e)
			}
		}
	}
}

// purgeOwnerLocked forgets what owner wrote before the Lamport time before: its entries in every
// network and its network attachments.
func (n *Node) purgeOwnerLocked(owner string, before uint64) {
	for _, nw := range n.networks {
		n.dropOwnerEntriesLocked(nw, owner, before)
	}
	for nid, a := range n.attach[owner] {
		if a.ltime < before {
			delete(n.attach[owner], nid)
		}
	}
	if len(n.attach[owner]) == 0 {
		delete(n.attach, owner)
	}
}

// setHiddenLocked hides (owner failed) or shows again (owner back) owner's entries.
func (n *Node) setHiddenLocked(owner string, hidden bool) {
	for _, nw := range n.networks {
		for tk, e := range nw.entries {
			if e.owner != owner || e.hidden == hidden {
				continue
			}
			was := e.visible()
			e.hidden = hidden
			switch {
			case was && !e.visible():
				n.emitLocked(EntryDeleted, nw.id, tk, e)
			case !was && e.visible():
				n.emitLocked(EntryCreated, nw.id, tk, e)
			}
		}
	}
}

// GetEntry returns the value of key in table of network nid. It returns an
// [errclass.NotFoundError] if there is no such visible entry and [ErrNetworkNotJoined] if the
// node has not joined nid. The value is a copy.
func (n *Node) GetEntry(nid NetworkID, table, key string) (Entry, error) {
	if err := validateEntry(nid, table, key); err != nil {
		return Entry{}, err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	nw := n.networks[nid]
	if nw == nil {
		return Entry{}, ErrNetworkNotJoined
	}
	e := nw.entries[tableKey{table, key}]
	if e == nil || !e.visible() {
		return Entry{}, &errclass.NotFoundError{Kind: "entry", Name: string(nid) + "/" + table + "/" + key}
	}
	return Entry{Network: nid, Table: table, Key: key, Value: bytes.Clone(e.value), Owner: e.owner}, nil
}

// Entries returns the visible entries of table in network nid, sorted by key; every table if
// table is "". It returns nil if the node has not joined nid. The values are copies.
func (n *Node) Entries(nid NetworkID, table string) []Entry {
	n.mu.Lock()
	defer n.mu.Unlock()
	nw := n.networks[nid]
	if nw == nil {
		return nil
	}
	var out []Entry
	for tk, e := range nw.entries {
		if e.visible() && (table == "" || tk.table == table) {
			out = append(out, Entry{Network: nid, Table: tk.table, Key: tk.key, Value: bytes.Clone(e.value), Owner: e.owner})
		}
	}
	slices.SortFunc(out, func(a, b Entry) int {
		if c := strings.Compare(a.Table, b.Table); c != 0 {
			return c
		}
		return strings.Compare(a.Key, b.Key)
	})
	return out
}

type watchFilter struct {
	network NetworkID
	table   string
}

// Watch subscribes to the changes of table in network nid: creates, updates and deletes,
// whether written here or learnt from peers, and the deletes (and re-creates) that follow
// when an entry's owner fails (and comes back) or leaves. "" for nid or table matches every
// network or table. Events are queued without bound and never dropped; the channel is closed
// by cancel or Close. cancel is idempotent.
func (n *Node) Watch(nid NetworkID, table string) (events <-chan Event, cancel func()) {
	s := newStream[Event]()
	n.mu.Lock()
	n.watchers[s] = watchFilter{network: nid, table: table}
	n.mu.Unlock()
	if !n.start(func() { s.run(n.ctx) }) {
		n.mu.Lock()
		delete(n.watchers, s)
		n.mu.Unlock()
		close(s.out)
		return s.out, func() {}
	}
	return s.out, func() {
		n.mu.Lock()
		delete(n.watchers, s)
		n.mu.Unlock()
		s.stop()
	}
}

func (n *Node) emitLocked(t EventType, nid NetworkID, tk tableKey, e *entry) {
	for s, f := range n.watchers {
		if (f.network == "" || f.network == nid) && (f.table == "" || f.table == tk.table) {
			s.push(Event{Type: t, Entry: Entry{Network: nid, Table: tk.table, Key: tk.key, Value: bytes.Clone(e.value), Owner: e.owner}})
		}
	}
}

// gossipLoop sends, every GossipInterval, each joined network's queued table events to a few
// random peers of that network.
func (n *Node) gossipLoop() {
	t := time.NewTicker(n.cfg.GossipInterval)
	defer t.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
			n.gossipTables()
		}
	}
}

func (n *Node) gossipTables() {
	type job struct {
		nw    *network
		peers []string
	}
	var jobs []job
	n.mu.Lock()
	for nid, nw := range n.networks {
		if nw.local.NumQueued()+nw.relay.NumQueued() == 0 {
			continue
		}
		if peers := n.networkPeersLocked(nid); len(peers) > 0 {
			jobs = append(jobs, job{nw, nw.nextTargets(peers, n.cfg.GossipNodes)})
		}
	}
	n.mu.Unlock()
	if len(jobs) == 0 {
		return
	}
	alive := n.aliveNodes()
	budget := n.udpBudget()
	for _, j := range jobs {
		for _, name := range j.peers {
			nd := alive[name]
			if nd == nil {
				continue
			}
			msgs := j.nw.local.GetBroadcasts(batchOverhead, budget)
			used := 0
			for _, m := range msgs {
				used += len(m) + batchOverhead
			}
			msgs = append(msgs, j.nw.relay.GetBroadcasts(batchOverhead, budget-used)...)
			if len(msgs) == 0 {
				break
			}
			if err := n.ml.SendBestEffort(nd, encodeBatch(msgs)); err != nil {
				n.log.Debug("table gossip send failed", "peer", nd.Name, "err", err)
			}
		}
	}
}

// antiEntropyLoop runs the periodic full state exchanges, the first bulk sync of each joined
// network, and the bulk syncs with nodes back from failure. Rounds come every
// AntiEntropyInterval, or every half second (jittered) until fastQuiet has passed since the
// last change of membership or network attachments.
func (n *Node) antiEntropyLoop() {
	period := n.cfg.AntiEntropyInterval
	fast := min(500*time.Millisecond, period)
	fastQuiet := 6 * fast
	jitter := func(d time.Duration) time.Duration { return d/2 + time.Duration(rand.Int64N(int64(d))) }
	timer := time.NewTimer(jitter(period))
	defer timer.Stop()
	isFast := false
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-n.burst:
			if !isFast {
				isFast = true
				timer.Reset(jitter(fast))
			}
		case <-n.syncKick:
			n.initialSyncs()
		case <-timer.C:
			if !n.cfg.testNoRepair {
				n.antiEntropyRound()
			}
			isFast = time.Since(time.Unix(0, n.changed.Load())) < fastQuiet
			if isFast {
				timer.Reset(jitter(fast))
			} else {
				timer.Reset(jitter(period))
			}
		}
	}
}

// initialSyncs bulk-syncs each joined network that has not been synced yet with up to two
// peers, and each network shared with a node back from failure with that node.
func (n *Node) initialSyncs() {
	n.mu.Lock()
	pending := map[NetworkID][]string{}
	for nid, nw := range n.networks {
		if !nw.inSync {
			if peers := n.networkPeersLocked(nid); len(peers) > 0 {
				pending[nid] = randomPick(peers, 2)
			}
		}
	}
	back := map[string][]NetworkID{}
	for name := range n.syncWith {
		for nid := range n.networks {
			if a := n.attach[name][nid]; a != nil && !a.leaving {
				back[name] = append(back[name], nid)
			}
		}
	}
	clear(n.syncWith)
	n.mu.Unlock()
	if len(pending) == 0 && len(back) == 0 {
		return
	}
	alive := n.aliveNodes()
	for nid, peers := range pending {
		ok := false
		for _, p := range peers {
			if nd := alive[p]; nd != nil && n.sendBulkSync(nid, nd, false) == nil {
				ok = true
			}
		}
		if ok {
			n.mu.Lock()
			if nw := n.networks[nid]; nw != nil {
				nw.inSync = true
			}
			n.mu.Unlock()
		}
	}
	for name, nids := range back {
		if nd := alive[name]; nd != nil {
			for _, nid := range nids {
				_ = n.sendBulkSync(nid, nd, false)
			}
		}
	}
}

// antiEntropyRound pushes and pulls the membership, attachments and rotation state with one
// random member and bulk-syncs every joined network with one random peer of it.
func (n *Node) antiEntropyRound() {
	alive := n.aliveNodes()
	if len(alive) == 0 {
		return
	}
	names := make([]string, 0, len(alive))
	for name := range alive {
		names = append(names, name)
	}
	if pick := randomPick(names, 1); len(pick) == 1 {
		if _, err := n.ml.Join([]string{alive[pick[0]].Address()}); err != nil {
			n.log.Debug("anti-entropy push/pull failed", "peer", pick[0], "err", err)
		}
	}
	n.mu.Lock()
	targets := map[NetworkID]string{}
	for nid := range n.networks {
		if p := randomPick(n.networkPeersLocked(nid), 1); len(p) == 1 {
			targets[nid] = p[0]
		}
	}
	n.mu.Unlock()
	for nid, name := range targets {
		if nd := alive[name]; nd != nil {
			if err := n.sendBulkSync(nid, nd, false); err == nil {
				n.mu.Lock()
				if nw := n.networks[nid]; nw != nil {
					nw.inSync = true
				}
				n.mu.Unlock()
			}
		}
	}
}

// sendBulkSync sends every entry of network nid this node holds (tombstones included, hidden
// ones not) to peer over TCP.
func (n *Node) sendBulkSync(nid NetworkID, peer *memberlist.Node, response bool) error {
	n.mu.Lock()
	nw := n.networks[nid]
	if nw == nil {
		n.mu.Unlock()
		return ErrNetworkNotJoined
	}
	s := bulkSync{Network: nid, Sender: n.name, Response: response}
	now := n.cfg.Now()
	for tk, e := range nw.entries {
		if e.hidden {
			continue
		}
		ev := tableEvent{Deleted: e.deleted, LTime: e.ltime, Owner: e.owner, Network: nid, Table: tk.table, Key: tk.key, Value: e.value}
		if e.deleted {
			ev.ReapMillis = uint64(max(0, e.reapAt.Sub(now).Milliseconds()))
		}
		s.Events = append(s.Events, ev)
	}
	n.mu.Unlock()
	if err := n.ml.SendReliable(peer, encodeBulkSync(&s)); err != nil {
		n.log.Debug("bulk sync failed", "network", string(nid), "peer", peer.Name, "err", err)
		return err
	}
	return nil
}

// syncResponder answers the bulk syncs peers send with this node's own entries.
func (n *Node) syncResponder() {
	for {
		select {
		case <-n.ctx.Done():
			return
		case req := <-n.respCh:
			if nd := n.aliveNodes()[req.sender]; nd != nil {
				_ = n.sendBulkSync(req.network, nd, true)
			}
		}
	}
}

// maintenanceLoop tries, every ReconnectInterval, to rejoin one random failed node, and reaps
// tombstones and forgotten nodes.
func (n *Node) maintenanceLoop() {
	t := time.NewTicker(n.cfg.ReconnectInterval)
	defer t.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
			n.reconnect()
			n.reap()
		}
	}
}

func (n *Node) reconnect() {
	n.mu.Lock()
	var addrs []string
	for _, p := range n.peers {
		if p.failed && p.addr != "" {
			addrs = append(addrs, p.addr)
		}
	}
	n.mu.Unlock()
	if pick := randomPick(addrs, 1); len(pick) == 1 {
		if _, err := n.ml.Join(pick); err == nil {
			n.log.Debug("reconnected to failed node", "addr", pick[0])
		}
	}
}

func (n *Node) reap() {
	now := n.cfg.Now()
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, nw := range n.networks {
		for tk, e := range nw.entries {
			if e.deleted && !now.Before(e.reapAt) {
				delete(nw.entries, tk)
			}
		}
	}
	for name, p := range n.peers {
		if p.failed && now.Sub(p.failedAt) >= n.cfg.NodeReapInterval {
			n.purgeOwnerLocked(name, ^uint64(0))
			delete(n.peers, name)
		}
	}
	for name, at := range n.left {
		if now.Sub(at) >= n.cfg.ReapInterval {
			delete(n.left, name)
		}
	}
	for node, m := range n.attach {
		_, known := n.peers[node]
		known = known || node == n.name
		for nid, a := range m {
			// A leave is kept as a tombstone for ReapInterval; so is the attachment of a node
			// memberlist does not know (one that left, or a stale record pushed by a peer).
			if (a.leaving || !known) && now.Sub(a.at) >= n.cfg.ReapInterval {
				delete(m, nid)
			}
		}
		if len(m) == 0 {
			delete(n.attach, node)
		}
	}
}
