package drivers

// Gossip is the cluster's gossip plane as a driver sees it: replicated tables per network,
// where each host writes entries of its own and sees every host's, and notice of the cluster's
// key rotations. The Controller hands it to drivers that implement [GossipUser]; it is backed
// by the gossip package's encrypted memberlist cluster. Every method is safe for concurrent use.
//
// A host sees a network's tables once it joined the network's gossip group (JoinNetwork),
// typically with its first local endpoint on the network, and leaves it with its last; its own
// entries are withdrawn from the others when it leaves the group, leaves the cluster, or fails.
type Gossip interface {
	// LocalName returns this host's name in the gossip cluster, the Owner of its entries.
	LocalName() string
	// JoinNetwork makes this host a member of the network's gossip group: it receives the
	// network's entries and its own reach the group. Joining twice is one membership.
	JoinNetwork(nid NetworkID) error
	// LeaveNetwork ends this host's membership of the network's gossip group; its entries
	// there are withdrawn. Leaving a group not joined returns nil.
	LeaveNetwork(nid NetworkID) error
	// Put creates or updates this host's entry key in the network's table. It fails with
	// ErrConflict when another host owns key, ErrInvalidParameter for an empty name or a
	// value too large for one packet (about 1 kB), and ErrNotFound (the group) before
	// JoinNetwork. value is copied.
	Put(nid NetworkID, table, key string, value []byte) error
	// Delete removes this host's entry key. A missing entry returns nil.
	Delete(nid NetworkID, table, key string) error
	// Entries returns the table's visible entries, every host's, sorted by key.
	Entries(nid NetworkID, table string) []TableEntry
	// Watch delivers every change of the table, this host's and the others', including the
	// withdrawals of a host that leaves or fails, in the order this host learnt them; none is
	// dropped. The channel closes after cancel, or when the Controller closes. cancel is
	// idempotent.
	Watch(nid NetworkID, table string) (events <-chan TableEvent, cancel func())
	// WatchKeys delivers a notice after each change of this host's gossip keyring (each step
	// of a key rotation), until cancel or the Controller closes.
	WatchKeys() (events <-chan KeyEvent, cancel func())
}

// TableEntry is one entry of a network's replicated table.
type TableEntry struct {
	Key   string
	Value []byte
	Owner string // the host that wrote it
}

// TableEventType says what happened to a table entry.
type TableEventType uint8

// The table event types.
const (
	EntryCreated TableEventType = iota + 1
	EntryUpdated
	EntryDeleted
)

// String returns "create", "update" or "delete".
func (t TableEventType) String() string {
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

// TableEvent is a change of an entry of a network's table. For EntryDeleted, Value is the
// entry's last value.
type TableEvent struct {
	Type    TableEventType
	Network NetworkID
	Table   string
	TableEntry
}

// KeyEvent tells of a change of this host's gossip keyring: a step of the cluster's key
// rotation. It names keys by their fingerprints only, never their material.
type KeyEvent struct {
	// Epoch counts the rotations the cluster has started; Phase is how far the current one
	// got: "install", "use", "remove" or "done".
	Epoch uint64
	Phase string
	// Primary is the fingerprint of the key this host encrypts with; Keys every key it holds.
	Primary string
	Keys    []string
}

// GossipUser is implemented by drivers that need the gossip plane (the overlay learns from it
// which endpoint sits behind which host). The Controller calls UseGossip once, when the driver
// is registered and before any other call but Capabilities, with the Controller's gossip plane
// (Config.Gossip). Without one it does not call it, and refuses the driver's networks with an
// error matching ErrNotSupported that says so.
type GossipUser interface {
	UseGossip(g Gossip) error
}
