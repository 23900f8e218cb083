package gossip

import (
	"fmt"
	"log/slog"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/cnmkit/cnm/kvstore"
)

// Defaults for the zero values of [Config].
const (
	DefaultPort                = 7946
	DefaultRotationInterval    = 12 * time.Hour
	DefaultClusterLabel        = "cnm"
	DefaultAntiEntropyInterval = 30 * time.Second
	DefaultReapInterval        = 30 * time.Minute
	DefaultNodeReapInterval    = 24 * time.Hour
	DefaultReconnectInterval   = time.Second
	DefaultStoreTimeout        = 10 * time.Second
	// DefaultStorePrefixBase is the start of the default Config.StorePrefix, which goes on
	// with the (path-escaped) cluster label.
	DefaultStorePrefixBase = "cnm/v1/gossip/"
)

// Config configures a [Node]. The zero value of every field but NodeName and Keys means a
// documented default; [New] validates the whole struct and names the first bad field.
// Durations default to memberlist's LAN profile (hashicorp/memberlist DefaultLANConfig), which
// suits hosts on one data-center network; tests shorten them.
type Config struct {
	// NodeName is this host's name, unique in the cluster. Required.
	NodeName string

	// BindAddr is the IP address to listen on, TCP and UDP. The zero value means every IPv4
	// address (0.0.0.0).
	BindAddr netip.Addr
	// BindPort is the port to listen on, TCP and UDP. 0 lets the kernel choose a free port;
	// [Node.LocalAddr] reports it. Hosts of a real cluster use a fixed port, usually
	// [DefaultPort].
	BindPort int
	// AdvertiseAddr is the IP address peers reach this node at. The zero value means the bind
	// address or, when that is 0.0.0.0, the first private address of the host.
	AdvertiseAddr netip.Addr
	// AdvertisePort is the port peers reach this node at. 0 means the bound port.
	AdvertisePort int

	// Keys is the initial keyring, primary first: each key 16, 24 or 32 bytes (AES-128, -192
	// or -256 in GCM mode). Every gossip packet and stream is encrypted with the primary and
	// authenticated; the other keys only decrypt. There is no unencrypted mode: Keys is
	// required unless KeyringFile names an existing file or Store holds the cluster's keyring
	// record, whose keys then win (see "Rejoining after an absence" and "Keys in a store" in
	// the package documentation).
	Keys [][]byte
	// KeyringFile is the path of a file, mode 0600, that persists this node's keyring and the
	// rotation schedule, so a restart rejoins with the current keys and keeps the schedule. ""
	// means nothing is persisted locally. The directory must exist.
	KeyringFile string
	// RotationInterval is how often the cluster's key rotates. 0 means
	// [DefaultRotationInterval] (12 hours). A negative value means this node never drives a
	// rotation (it still follows those others drive, and with a Store it does not compete for
	// the rotation lock); give every member the same value. The driver's value sets the time
	// of the next rotation.
	RotationInterval time.Duration

	// Store is the cluster's shared key-value store, or nil. With a store, the member that
	// holds the lock <StorePrefix>/rotation-lock drives the key rotations (instead of the
	// alive member with the lowest name), and the rotation state (the cluster's keys, the
	// rotation's phase and the time of the next one) is kept at <StorePrefix>/keyring, so a
	// node restarted without its KeyringFile, or a new node given only the store, starts with
	// the cluster's current keys. The store must implement [kvstore.Locker]. Give every member
	// the same store, or none. The store then holds the cluster's keys: protect it (TLS,
	// authentication, ACLs on StorePrefix). See "Keys in a store" in the package
	// documentation.
	Store kvstore.Store
	// StorePrefix is the key prefix of the records the node keeps in Store. "" means
	// [DefaultStorePrefixBase] followed by ClusterLabel (path-escaped), such as
	// "cnm/v1/gossip/cnm". A trailing slash is dropped.
	StorePrefix string
	// StoreKEK is the key-encryption key (KEKLen, 32 bytes) that seals the keyring record in
	// Store with XChaCha20-Poly1305, so that reading the store alone reveals no gossip key;
	// StorePassphrase, instead, derives that key with Argon2id (3 passes, 64 MiB, 4 lanes; a
	// random salt kept in the record). Give every member the same one. Nil and "" mean none:
	// the record is written in clear (as before this option) and a warning says so. A
	// member with one reseals a clear record at New. A sealed record read without one, or
	// with another, fails New with an error matching [ErrKEK], never a fallback to the
	// keyring file. The key is copied and never logged. Without Store they must be unset.
	StoreKEK        []byte
	StorePassphrase string
	// StoreTimeout bounds each call to Store. 0 means [DefaultStoreTimeout] (10 s).
	StoreTimeout time.Duration
	// ClusterLabel is sent in clear before every packet and stream and bound into AES-GCM's
	// additional data: a node with another label cannot talk to this one even with the right
	// key. "" means [DefaultClusterLabel]. At most 255 bytes.
	ClusterLabel string

	// GossipInterval is the period of gossip rounds (memberlist's and the table gossip). 0
	// means 200 ms.
	GossipInterval time.Duration
	// GossipNodes is how many peers each gossip round sends to: random ones for memberlist's
	// gossip, the next ones of a shuffled list for the table gossip. 0 means 3.
	GossipNodes int
	// RetransmitMult sets how many times a broadcast is sent: RetransmitMult·⌈log10(N+1)⌉. 0
	// means 4.
	RetransmitMult int
	// ProbeInterval is the failure detector's probe period. 0 means 1 s.
	ProbeInterval time.Duration
	// ProbeTimeout is how long a probe waits for its ack. 0 means 500 ms.
	ProbeTimeout time.Duration
	// SuspicionMult scales how long a suspected node has to refute before it is declared
	// dead: SuspicionMult·max(1, log10 N)·ProbeInterval. 0 means 4.
	SuspicionMult int
	// PushPullInterval is the period of memberlist's own full state exchange with one random
	// member. 0 means 30 s.
	PushPullInterval time.Duration
	// TCPTimeout bounds every TCP exchange (join, push/pull, bulk sync). 0 means 10 s.
	TCPTimeout time.Duration
	// DisableCompression turns off memberlist's LZW compression of packets and streams
	// (before encryption). Compression halves the bytes of table gossip, but memberlist tries
	// it on every packet it sends, pings included, allocating a 64 KB table each time: a node
	// with compression uses 1.2 to 1.6 times the CPU of one without when idle (see
	// BENCHMARKS.md). Nodes with and without compression understand each other. The zero
	// value keeps compression on.
	DisableCompression bool

	// AntiEntropyInterval is the period of the full state exchange cnm adds on top of
	// gossip: each round, a push/pull of membership and network attachments with one random
	// member, and a bulk sync of every joined network's table with one random peer of that
	// network. After Join, and after any change of membership or network attachments, rounds
	// come every half second until 3 s pass without a change, so a join storm or a healed
	// partition converges in seconds. 0 means [DefaultAntiEntropyInterval].
	AntiEntropyInterval time.Duration
	// ReapInterval is how long a deleted entry stays as a tombstone (so a late, older write
	// cannot resurrect it) and how long a node that left is remembered. 0 means
	// [DefaultReapInterval].
	ReapInterval time.Duration
	// NodeReapInterval is how long a failed node is remembered: its entries stay hidden (and
	// come back if it returns with the same incarnation) and it is retried as a peer. 0 means
	// [DefaultNodeReapInterval].
	NodeReapInterval time.Duration
	// ReconnectInterval is the period at which this node tries to rejoin one random failed
	// node, which heals partitions and false failure verdicts. 0 means
	// [DefaultReconnectInterval].
	ReconnectInterval time.Duration

	// Logger receives the node's logs and memberlist's, at matching levels. nil means
	// slog.Default(). Keys are never logged, only their [KeyID].
	Logger *slog.Logger
	// Now is the clock for the rotation schedule, tombstone reaping and the wall-clock floor of
	// the Lamport times entries carry. nil means time.Now.
	Now func() time.Time

	// test hooks, set by the package's own tests only.
	testTransport func(memberlist.NodeAwareTransport) memberlist.NodeAwareTransport
	testAdvance   func(from, to rotationPhase) bool
	testNoRepair  bool // no anti-entropy rounds (first syncs still run)
}

// withDefaults returns a copy of c with defaults filled in, or an error naming the first bad
// field.
func (c Config) withDefaults() (Config, error) {
	if c.NodeName == "" {
		return c, errclass.Invalid("NodeName", "", "required")
	}
	if !c.BindAddr.IsValid() {
		c.BindAddr = netip.IPv4Unspecified()
	}
	c.BindAddr = c.BindAddr.Unmap()
	c.AdvertiseAddr = c.AdvertiseAddr.Unmap()
	for _, a := range []struct {
		name string
		v    netip.Addr
	}{{"BindAddr", c.BindAddr}, {"AdvertiseAddr", c.AdvertiseAddr}} {
		if a.v.Zone() != "" {
			return c, errclass.Invalid(a.name, a.v.String(), "an address with a zone is not supported")
		}
	}
	if c.AdvertiseAddr.IsUnspecified() {
		return c, errclass.Invalid("AdvertiseAddr", c.AdvertiseAddr.String(), "peers cannot reach an unspecified address")
	}
	for _, p := range []struct {
		name string
		v    int
	}{{"BindPort", c.BindPort}, {"AdvertisePort", c.AdvertisePort}} {
		if p.v < 0 || p.v > 65535 {
			return c, errclass.Invalid(p.name, strconv.Itoa(p.v), "not a port number")
		}
	}
	if len(c.Keys) > maxKeys {
		return c, errclass.Invalid("Keys", fmt.Sprintf("%d keys", len(c.Keys)), fmt.Sprintf("at most %d keys", maxKeys))
	}
	for i, k := range c.Keys {
		if err := ValidateKey(k); err != nil {
			return c, &errclass.InvalidParameterError{Field: fmt.Sprintf("Keys[%d]", i), Value: strconv.Itoa(len(k)) + " bytes",
				Reason: "a gossip key is 16, 24 or 32 bytes"}
		}
	}
	if c.ClusterLabel == "" {
		c.ClusterLabel = DefaultClusterLabel
	}
	if len(c.ClusterLabel) > memberlist.LabelMaxSize {
		return c, errclass.Invalid("ClusterLabel", c.ClusterLabel, "longer than 255 bytes")
	}
	lan := memberlist.DefaultLANConfig()
	durations := []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"GossipInterval", &c.GossipInterval, lan.GossipInterval},
		{"ProbeInterval", &c.ProbeInterval, lan.ProbeInterval},
		{"ProbeTimeout", &c.ProbeTimeout, lan.ProbeTimeout},
		{"PushPullInterval", &c.PushPullInterval, lan.PushPullInterval},
		{"TCPTimeout", &c.TCPTimeout, lan.TCPTimeout},
		{"AntiEntropyInterval", &c.AntiEntropyInterval, DefaultAntiEntropyInterval},
		{"ReapInterval", &c.ReapInterval, DefaultReapInterval},
		{"NodeReapInterval", &c.NodeReapInterval, DefaultNodeReapInterval},
		{"ReconnectInterval", &c.ReconnectInterval, DefaultReconnectInterval},
		{"StoreTimeout", &c.StoreTimeout, DefaultStoreTimeout},
	}
	for _, d := range durations {
		if *d.v < 0 {
			return c, errclass.Invalid(d.name, d.v.String(), "negative")
		}
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	if c.ProbeTimeout > c.ProbeInterval {
		return c, errclass.Invalid("ProbeTimeout", c.ProbeTimeout.String(), "longer than ProbeInterval")
	}
	if c.RotationInterval == 0 {
		c.RotationInterval = DefaultRotationInterval
	}
	counts := []struct {
		name string
		v    *int
		def  int
	}{
		{"GossipNodes", &c.GossipNodes, lan.GossipNodes},
		{"RetransmitMult", &c.RetransmitMult, lan.RetransmitMult},
		{"SuspicionMult", &c.SuspicionMult, lan.SuspicionMult},
	}
	for _, n := range counts {
		if *n.v < 0 {
			return c, errclass.Invalid(n.name, strconv.Itoa(*n.v), "negative")
		}
		if *n.v == 0 {
			*n.v = n.def
		}
	}
	if len(c.StoreKEK) != 0 || c.StorePassphrase != "" {
		switch {
		case c.Store == nil:
			return c, errclass.Invalid("StoreKEK", "set", "seals the keyring record in Store, which is unset")
		case len(c.StoreKEK) != 0 && c.StorePassphrase != "":
			return c, errclass.Invalid("StoreKEK", "set", "give StoreKEK or StorePassphrase, not both")
		case c.StoreKEK != nil && len(c.StoreKEK) != KEKLen:
			return c, errclass.Invalid("StoreKEK", strconv.Itoa(len(c.StoreKEK))+" bytes", "want 32 bytes")
		case c.StoreKEK == nil && len(c.StorePassphrase) < 8:
			return c, errclass.Invalid("StorePassphrase", strconv.Itoa(len(c.StorePassphrase))+" characters", "want at least 8")
		}
	}
	if c.Store != nil {
		if _, ok := c.Store.(kvstore.Locker); !ok {
			return c, &errclass.InvalidParameterError{Field: "Store", Value: fmt.Sprintf("%T", c.Store),
				Reason: "does not implement kvstore.Locker: the rotation driver is elected through a store lock",
				Err:    &errclass.NotSupportedError{What: "store locks"}}
		}
		c.StorePrefix = strings.TrimRight(c.StorePrefix, "/")
		if c.StorePrefix == "" {
			c.StorePrefix = DefaultStorePrefixBase + url.PathEscape(c.ClusterLabel)
		}
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c, nil
}
