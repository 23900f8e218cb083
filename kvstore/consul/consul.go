// Package consul is the Consul backend of [kvstore.Store]: it keeps the store in the KV store of
// a Consul cluster (github.com/hashicorp/consul/api), reached through one agent's HTTP API.
// Besides [kvstore.Store] it implements [kvstore.Batcher], [kvstore.Leaser] and
// [kvstore.Locker].
//
// # Layout under the prefix
//
// Every key the store writes lives under [Config.Prefix] ("cnm" by default), in four subtrees:
//
//	<Prefix>/_kv/<key>     the value of <key>
//	<Prefix>/_tomb/<key>   the tombstone of <key>'s last delete (see below)
//	<Prefix>/_lock/<name>  the lock named <name> (see Locks)
//	<Prefix>/_meta/...     bookkeeping (the revision below which tombstones were reaped)
//
// Get, List and Watch see only the _kv subtree, so any non-empty key is allowed, including
// keys that begin with "_". Stores with different prefixes share nothing; two stores with the
// same prefix, in one process or many, see the same data.
//
// # Revisions
//
// A key's revision is the ModifyIndex Consul gives its entry: the raft index of the
// transaction that wrote it. Raft indices grow with every write to the cluster (of any key, and
// of sessions and the catalog too), so revisions grow strictly and are never reused, but they
// have gaps and are shared with everything else the cluster stores. Every write goes through
// Consul's transaction API (/v1/txn), which returns the written entries, so Put and AtomicPut
// return the new revision without another read. Writing a value equal to the stored one still
// gives a new revision: each write carries fresh random Flags, since Consul skips a write that
// changes nothing.
//
// Compare-and-swap maps onto the transaction verbs: AtomicPut is "cas" (index 0 is
// create-only), Batch checks with "cas", "check-index", "check-not-exists" and "delete-cas" in
// one all-or-nothing transaction. Consul allows 128 operations per transaction; a delete takes
// two (the delete and its tombstone), so a Batch holds at most 128 puts, or 64 deletes.
//
// # Deletes and tombstones
//
// Consul's KV store keeps no history, but Watch must report deletes, with their revision, also
// to a watch that resumes from an older revision. So each delete is a transaction that removes
// <Prefix>/_kv/<key> (with "delete-cas" on the revision it read, so a concurrent write is never
// lost) and writes <Prefix>/_tomb/<key> in the same commit: the tombstone's ModifyIndex is the
// revision of the delete, and its value holds the revision and value the key had before, so
// that a watcher that missed that last put can still report it. A later put of the key leaves
// the tombstone in place; it is overwritten by the key's next delete.
//
// Delete reads the key first and writes nothing when it is missing (no tombstone, no
// revision), so it costs two round trips. Each store removes, in the background every minute,
// the oldest tombstones beyond [Config.TombstoneLimit] (10,000 by default, like the bbolt
// backend's watch history), and records the highest revision it removed in
// <Prefix>/_meta/tombstone-floor.
//
// # Watch
//
// A watch is a loop of blocking queries (index and wait, one minute at most) on the data keys
// under its own prefix (Consul's index of a prefix counts puts and deletes there, so other
// keys' changes do not wake it), each followed by a read of the tombstones under that prefix;
// together they are a snapshot of the watched keys, which the watch diffs against the previous
// one: a key with a ModifyIndex above the last index seen is a put; a tombstone above
// it is a delete (preceded by the put its value records, when the watch had not seen it); a key
// that vanished without a tombstone (its lease expired: Consul deleted it) is a delete at the
// snapshot's index. Events are sent in revision order; a watcher's queue grows without bound, so
// a slow reader never blocks the loop nor any writer. A change costs each watch whose prefix
// holds the key two reads of that prefix (keys and tombstones): a watch of a small prefix stays
// cheap however large the rest of the store grows.
//
// Consul keeps one version per key, so a key written several times between two snapshots is
// reported once, with its last value (and its last put and delete, when it was deleted too). A
// snapshot follows the previous one within a round trip, so this happens only to keys rewritten
// within milliseconds, or while the agent was unreachable.
//
// A request error (the agent restarts, a timeout, no leader) does not end a watch: it retries
// with backoff (100ms doubling to 5s), first with a non-blocking read, and diffs from the last
// index seen, so no key's change is lost or sent twice across the gap (though several writes
// of one key during the gap coalesce, as above). When the index goes backwards
// (Consul's blocking-query rules: the cluster's state was restored or lost), the watch resyncs:
// it diffs the new snapshot against the last one by content and sends the differences, in the
// new numbering.
//
// Watch from a revision replays, from the current snapshot, the puts above it and the deletes
// whose tombstones are above it. Deletes whose tombstones were reaped, and keys deleted by an
// expired lease, are missing from such a replay (a live watch sees them); Watch logs when
// fromRevision is below the tombstone floor.
//
// # Timeouts and errors
//
// Every request is bounded by [Config.RequestTimeout] (5s by default; a blocking query by its
// wait time plus that). An agent that cannot be reached, that answers with a server error (no
// leader, no quorum) or that does not answer in time makes the call fail with an error that
// wraps [kvstore.ErrUnavailable] and names the agent's address; Open probes the agent for a
// leader the same way. When the caller's ctx ends first, the call returns ctx's error
// (errors.Is(err, context.Canceled)). A certificate that the agent or the client refuses is a
// configuration error, not ErrUnavailable. Error messages name the key.
//
// Reads (Get, List, the reads before deletes, watches) use Consul's default consistency
// mode: the leader answers from its state, which holds every write it has acknowledged, but
// for a while after a server restarts: it answers as leader before it has replayed its log,
// so a read can show the store as it was before writes it acknowledged (after a restart with
// 12,000 writes in its log, about 700 of the reads of its first two seconds did). A write, a
// compare-and-swap included, is applied after the whole log, so it is never wrong that way;
// callers that must not act on a read that went back confirm it with one.
//
// # Leases
//
// [Store.Grant] creates a Consul session with a TTL and the "delete" behavior, and renews it in
// the background every third of its TTL. Consul's minimum TTL is 10s (the agent's
// session_ttl_min), so Grant rounds up to it and [kvstore.Lease.TTL] says what was granted.
// Consul invalidates a session whose TTL ran out without a renewal only after up to twice the
// TTL; then it deletes the keys bound to it. Lease.AtomicPut binds a key with the "lock" verb,
// after a "check-index" (or "check-not-exists", for create-only) on the key, in one
// transaction. The session has no health checks and a lock delay of 1ms, so its keys can be
// written again as soon as it ends. Done closes when the session is gone (revoked, or expired:
// the next renewal finds it gone), when renewals have failed for a whole TTL, a TTL after
// Abandon, or at [Store.Close]. Revoke deletes the lease's keys with tombstones, then destroys
// the session; Abandon stops renewing and leaves the session to expire; Store.Close abandons
// every open lease. A plain write of a key bound to a lease leaves it bound (Consul keeps a
// key's session across writes).
//
// # Locks
//
// [Store.Lock] takes a session of [Config.LockTTL] (15s by default) and acquires
// <Prefix>/_lock/<name> with the "lock" verb; while another session holds it, Lock waits with
// blocking queries on the _lock subtree. Unlock releases the key ("check-session" and delete,
// in one transaction) and destroys the session; a second Unlock does nothing. Lost closes when
// the session ends without Unlock (its renewals failed for a whole TTL, Consul invalidated it,
// or the store was closed). Lock keys are outside the _kv subtree, so neither List nor Watch
// sees them: a lock writes no key of the store's key space at all, and the keys under
// name + "/" stay the caller's.
//
// # Lifecycle and concurrency
//
// A Store is safe for concurrent use. [Store.Close] ends every watch, abandons the open
// leases and locks, waits for the goroutines of the store and closes its idle connections;
// calls after Close fail with [kvstore.ErrClosed].
package consul

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/cnmkit/cnm/kvstore"
)

var (
	_ kvstore.Store   = (*Store)(nil)
	_ kvstore.Batcher = (*Store)(nil)
	_ kvstore.Leaser  = (*Store)(nil)
	_ kvstore.Locker  = (*Store)(nil)
)

// Defaults for the zero values of [Config].
const (
	// DefaultPrefix is the key prefix used when [Config.Prefix] is empty.
	DefaultPrefix = "cnm"
	// DefaultRequestTimeout bounds each request when [Config.RequestTimeout] is zero.
	DefaultRequestTimeout = 5 * time.Second
	// DefaultLockTTL is the session TTL of a lock when [Config.LockTTL] is zero.
	DefaultLockTTL = 15 * time.Second
	// DefaultTombstoneLimit is how many tombstones a store keeps when
	// [Config.TombstoneLimit] is zero.
	DefaultTombstoneLimit = 10000
	// MinLeaseTTL is Consul's default minimum session TTL (the agent's session_ttl_min):
	// Grant rounds shorter TTLs up to it.
	MinLeaseTTL = 10 * time.Second
	// MaxLeaseTTL is Consul's maximum session TTL.
	MaxLeaseTTL = 24 * time.Hour
)

const (
	// maxTxnOps is Consul's limit on the operations of one transaction.
	maxTxnOps = 128
	// reapInterval is how often a store reaps tombstones beyond its limit.
	reapInterval = time.Minute
	// watchWait is the wait time of a watch's blocking queries.
	watchWait = time.Minute
	// Bounds of the backoff of a watch after a failed request.
	watchBackoffMin = 100 * time.Millisecond
	watchBackoffMax = 5 * time.Second
	// sessionLockDelay is the lock delay of the store's sessions: as short as Consul allows,
	// so that the keys of an ended lease can be written at once.
	sessionLockDelay = time.Millisecond
)

// Subtrees under the prefix; see the package documentation.
const (
	kvDir    = "_kv/"
	tombDir  = "_tomb/"
	lockDir  = "_lock/"
	metaDir  = "_meta/"
	floorKey = metaDir + "tombstone-floor"
)

// Config configures [Open]. Only Address is required.
type Config struct {
	// Address is the host:port of the Consul agent's HTTP API, such as "127.0.0.1:8500".
	// Required.
	Address string
	// Prefix is the Consul key under which the store keeps everything (see the package
	// documentation): one or more slash-separated segments of letters, digits, '.', '_' and
	// '-', without a leading or trailing slash. Empty means [DefaultPrefix] ("cnm").
	Prefix string
	// TLS, when not nil, makes the store talk HTTPS to the agent with this configuration (a
	// copy of it): RootCAs to verify the agent, Certificates for a client certificate.
	// Nil means plain HTTP.
	TLS *tls.Config
	// Token is the ACL token sent with every request. Empty means none, unless the
	// environment sets CONSUL_HTTP_TOKEN or CONSUL_HTTP_TOKEN_FILE, which the Consul client
	// reads then, as the consul command does.
	Token string
	// RequestTimeout bounds every request to the agent (blocking queries: their wait time
	// plus this). A call that gets no answer in time fails with [kvstore.ErrUnavailable].
	// Zero means [DefaultRequestTimeout] (5s); negative is an error.
	RequestTimeout time.Duration
	// LockTTL is the session TTL of the locks that [Store.Lock] takes: how long a lock
	// outlives a holder that died (Consul waits up to twice the TTL). Zero means
	// [DefaultLockTTL] (15s); it is rounded up to [MinLeaseTTL]; negative is an error.
	LockTTL time.Duration
	// TombstoneLimit is how many tombstones of deleted keys the store keeps so that a watch
	// can resume from an older revision and still see the deletes; the oldest beyond the
	// limit are reaped every minute. Zero means [DefaultTombstoneLimit] (10,000); negative
	// is an error.
	TombstoneLimit int
	// Logger receives debug and informational messages. Nil discards them.
	Logger *slog.Logger
}

// Store is a [kvstore.Store] kept in Consul's KV store. Create it with [Open]. It is safe for
// concurrent use.
type Store struct {
	client    *api.Client
	transport *http.Transport
	addr      string
	root      string // Prefix + "/"
	timeout   time.Duration
	lockTTL   time.Duration
	tombLimit int
	log       *slog.Logger

	ctx    context.Context // canceled by Close: ends watches, renewals and calls in flight
	cancel context.CancelFunc
	wg     sync.WaitGroup // the goroutines of watches, leases and the reaper

	mu     sync.Mutex // guards following
	closed bool
	leases map[*lease]struct{} // open leases, abandoned by Close
}

// Open returns a Store on the Consul agent at cfg.Address, after checking that the agent
// answers and knows a leader. It fails with an error wrapping [errclass.ErrInvalidParameter]
// for a bad cfg, and with one wrapping [kvstore.ErrUnavailable] when the agent cannot be
// reached within cfg.RequestTimeout or has no leader; when ctx ends first, with ctx's error.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if err := validate(&cfg); err != nil {
		return nil, fmt.Errorf("consul: open %q: %w", cfg.Address, err)
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	transport := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: cfg.RequestTimeout, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:          100,
		MaxIdleConnsPerHost:   32,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   cfg.RequestTimeout,
		ExpectContinueTimeout: time.Second,
	}
	scheme := "http"
	if cfg.TLS != nil {
		scheme = "https"
		transport.TLSClientConfig = cfg.TLS.Clone()
	}
	client, err := api.NewClient(&api.Config{
		Address:    cfg.Address,
		Scheme:     scheme,
		Token:      cfg.Token,
		HttpClient: &http.Client{Transport: transport},
	})
	if err != nil {
		return nil, fmt.Errorf("consul: open %q: %w", cfg.Address, err)
	}
	sctx, cancel := context.WithCancel(context.Background())
	s := &Store{
		client:    client,
		transport: transport,
		addr:      cfg.Address,
		root:      cfg.Prefix + "/",
		timeout:   cfg.RequestTimeout,
		lockTTL:   cfg.LockTTL,
		tombLimit: cfg.TombstoneLimit,
		log:       logger,
		ctx:       sctx,
		cancel:    cancel,
		leases:    make(map[*lease]struct{}),
	}
	if err := s.probe(ctx); err != nil {
		cancel()
		transport.CloseIdleConnections()
		return nil, fmt.Errorf("consul: open %q: %w", cfg.Address, err)
	}
	s.wg.Add(1)
	go s.reapLoop()
	s.log.Debug("consul: opened", "address", s.addr, "prefix", cfg.Prefix)
	return s, nil
}

// validate checks cfg and fills in its defaults.
func validate(cfg *Config) error {
	if cfg.Address == "" {
		return errclass.Invalid("Address", "", "must be the host:port of a Consul agent's HTTP API")
	}
	host, port, err := net.SplitHostPort(cfg.Address)
	if err != nil || host == "" {
		return &errclass.InvalidParameterError{Field: "Address", Value: cfg.Address, Reason: "must be host:port", Err: err}
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return errclass.Invalid("Address", cfg.Address, "port must be a number from 1 to 65535")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	if err := validPrefix(cfg.Prefix); err != nil {
		return err
	}
	switch {
	case cfg.RequestTimeout < 0:
		return errclass.Invalid("RequestTimeout", cfg.RequestTimeout.String(), "must not be negative")
	case cfg.RequestTimeout == 0:
		cfg.RequestTimeout = DefaultRequestTimeout
	}
	switch {
	case cfg.LockTTL < 0:
		return errclass.Invalid("LockTTL", cfg.LockTTL.String(), "must not be negative")
	case cfg.LockTTL > MaxLeaseTTL:
		return errclass.Invalid("LockTTL", cfg.LockTTL.String(), "must not exceed Consul's maximum session TTL of 24h")
	case cfg.LockTTL == 0:
		cfg.LockTTL = DefaultLockTTL
	}
	cfg.LockTTL = roundTTL(cfg.LockTTL)
	switch {
	case cfg.TombstoneLimit < 0:
		return errclass.Invalid("TombstoneLimit", strconv.Itoa(cfg.TombstoneLimit), "must not be negative")
	case cfg.TombstoneLimit == 0:
		cfg.TombstoneLimit = DefaultTombstoneLimit
	}
	return nil
}

// validPrefix checks that p is a clean Consul key path that is safe in a URL.
func validPrefix(p string) error {
	for seg := range strings.SplitSeq(p, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return errclass.Invalid("Prefix", p, "must be slash-separated names, without empty, \".\" or \"..\" segments or a leading or trailing slash")
		}
		for _, r := range seg {
			ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-'
			if !ok {
				return errclass.Invalid("Prefix", p, fmt.Sprintf("character %q not allowed (letters, digits, '.', '_', '-' and '/')", r))
			}
		}
	}
	return nil
}

// roundTTL rounds ttl up to whole seconds and to at least [MinLeaseTTL].
func roundTTL(ttl time.Duration) time.Duration {
	ttl = (ttl + time.Second - 1).Truncate(time.Second)
	return max(ttl, MinLeaseTTL)
}

// probe checks that the agent answers and knows a leader.
func (s *Store) probe(ctx context.Context) error {
	var leader string
	err := s.call(ctx, func(q *api.QueryOptions) error {
		var err error
		leader, err = s.client.Status().LeaderWithQueryOptions(q)
		return err
	})
	if err != nil {
		return err
	}
	if leader == "" {
		return s.unavailable(errors.New("no cluster leader"))
	}
	return nil
}

// Get returns the key's value and revision. It fails with [kvstore.ErrKeyNotFound] when the
// key does not exist. The returned Value belongs to the caller.
func (s *Store) Get(ctx context.Context, key string) (kvstore.KVPair, error) {
	if err := s.begin(ctx); err != nil {
		return kvstore.KVPair{}, fmt.Errorf("consul: get %q: %w", key, err)
	}
	cur, err := s.read(ctx, []string{key})
	if err != nil {
		return kvstore.KVPair{}, fmt.Errorf("consul: get %q: %w", key, err)
	}
	if cur[0] == nil {
		return kvstore.KVPair{}, fmt.Errorf("consul: get %q: %w", key, kvstore.ErrKeyNotFound)
	}
	return s.pair(cur[0]), nil
}

// Put writes the key unconditionally in one transaction and returns the new revision. The
// store keeps a copy of value. An empty key is an error wrapping
// [errclass.ErrInvalidParameter].
func (s *Store) Put(ctx context.Context, key string, value []byte) (uint64, error) {
	if err := s.beginWrite(ctx, key); err != nil {
		return 0, fmt.Errorf("consul: put %q: %w", key, err)
	}
	resp, err := s.txn(ctx, api.TxnOps{s.setOp(api.KVSet, key, value, 0)})
	if err != nil {
		return 0, fmt.Errorf("consul: put %q: %w", key, err)
	}
	if !resp.ok {
		return 0, fmt.Errorf("consul: put %q: %w", key, resp.failure())
	}
	return resp.index(), nil
}

// AtomicPut writes the key only if its revision is prevRevision, or, when prevRevision is 0,
// only if the key does not exist (Consul's "cas" verb). It returns the new revision, or fails
// with [kvstore.ErrKeyModified] (the key has another revision or is missing) or
// [kvstore.ErrKeyExists] (create-only and the key exists). The store keeps a copy of value.
func (s *Store) AtomicPut(ctx context.Context, key string, value []byte, prevRevision uint64) (uint64, error) {
	if err := s.beginWrite(ctx, key); err != nil {
		return 0, fmt.Errorf("consul: atomic put %q: %w", key, err)
	}
	resp, err := s.txn(ctx, api.TxnOps{s.setOp(api.KVCAS, key, value, prevRevision)})
	if err != nil {
		return 0, fmt.Errorf("consul: atomic put %q: %w", key, err)
	}
	if !resp.ok {
		if !resp.failedCheck() {
			return 0, fmt.Errorf("consul: atomic put %q: %w", key, resp.failure())
		}
		return 0, fmt.Errorf("consul: atomic put %q: %w", key, casError(prevRevision))
	}
	return resp.index(), nil
}

// Delete removes the key, and writes its tombstone, in one transaction. Deleting a missing
// key returns nil and writes nothing. It reads the key first, then deletes it only at the
// revision it read; when a concurrent write changed it meanwhile, it reads and tries again.
func (s *Store) Delete(ctx context.Context, key string) error {
	if err := s.beginWrite(ctx, key); err != nil {
		return fmt.Errorf("consul: delete %q: %w", key, err)
	}
	for {
		cur, err := s.read(ctx, []string{key})
		if err != nil {
			return fmt.Errorf("consul: delete %q: %w", key, err)
		}
		if cur[0] == nil {
			return nil
		}
		resp, err := s.txn(ctx, s.deleteOps(key, cur[0]))
		if err != nil {
			return fmt.Errorf("consul: delete %q: %w", key, err)
		}
		if resp.ok {
			return nil
		}
		if !resp.failedCheck() {
			return fmt.Errorf("consul: delete %q: %w", key, resp.failure())
		}
		s.log.Debug("consul: delete raced with a write; retrying", "key", key)
	}
}

// AtomicDelete removes the key, and writes its tombstone, only if its revision is
// prevRevision. Otherwise it fails with [kvstore.ErrKeyNotFound] when the key is missing, or
// [kvstore.ErrKeyModified] (or, for prevRevision 0, which only a missing key has,
// [kvstore.ErrKeyExists]).
func (s *Store) AtomicDelete(ctx context.Context, key string, prevRevision uint64) error {
	if err := s.beginWrite(ctx, key); err != nil {
		return fmt.Errorf("consul: atomic delete %q: %w", key, err)
	}
	cur, err := s.read(ctx, []string{key})
	if err != nil {
		return fmt.Errorf("consul: atomic delete %q: %w", key, err)
	}
	switch {
	case cur[0] == nil:
		return fmt.Errorf("consul: atomic delete %q: %w", key, kvstore.ErrKeyNotFound)
	case prevRevision == 0:
		return fmt.Errorf("consul: atomic delete %q: %w", key, kvstore.ErrKeyExists)
	case cur[0].ModifyIndex != prevRevision:
		return fmt.Errorf("consul: atomic delete %q: %w", key, kvstore.ErrKeyModified)
	}
	resp, err := s.txn(ctx, s.deleteOps(key, cur[0]))
	if err != nil {
		return fmt.Errorf("consul: atomic delete %q: %w", key, err)
	}
	if resp.ok {
		return nil
	}
	if !resp.failedCheck() {
		return fmt.Errorf("consul: atomic delete %q: %w", key, resp.failure())
	}
	// Changed or deleted since the read: say which.
	cur, err = s.read(ctx, []string{key})
	if err == nil && cur[0] == nil {
		err = kvstore.ErrKeyNotFound
	} else if err == nil {
		err = kvstore.ErrKeyModified
	}
	return fmt.Errorf("consul: atomic delete %q: %w", key, err)
}

// List returns every key that starts with prefix, in byte order of the keys, from one
// consistent read (a "get-tree" transaction). It returns an empty, non-nil slice when there
// are none. The slice and its values belong to the caller.
func (s *Store) List(ctx context.Context, prefix string) ([]kvstore.KVPair, error) {
	if err := s.begin(ctx); err != nil {
		return nil, fmt.Errorf("consul: list %q: %w", prefix, err)
	}
	resp, err := s.txn(ctx, api.TxnOps{{KV: &api.KVTxnOp{Verb: api.KVGetTree, Key: s.root + kvDir + prefix}}})
	if err != nil {
		return nil, fmt.Errorf("consul: list %q: %w", prefix, err)
	}
	if !resp.ok {
		return nil, fmt.Errorf("consul: list %q: %w", prefix, resp.failure())
	}
	pairs := make([]kvstore.KVPair, 0, len(resp.Results))
	for _, r := range resp.Results {
		if r.KV == nil || !strings.HasPrefix(r.KV.Key, s.root+kvDir+prefix) {
			continue
		}
		pairs = append(pairs, s.pair(r.KV))
	}
	sortPairs(pairs)
	return pairs, nil
}

// Batch applies ops in one Consul transaction: all of them or none. Ops whose Check is set
// are checked in that transaction ("cas", "check-not-exists", "delete-cas"); if one fails,
// Batch fails with [kvstore.ErrKeyModified] or [kvstore.ErrKeyExists], naming the op, and
// writes nothing. Deletes are read first, as by [Store.Delete], and applied only at the
// revision read (a delete of a missing key, only if it is still missing); when a concurrent
// write breaks that, Batch reads and tries again. Every op that changes a key gives it the
// revision of the commit, which Batch returns. A key may appear only once in ops, keys must
// not be empty, and the transaction may hold at most 128 Consul operations (a put takes one, a
// delete two): errors wrapping [errclass.ErrInvalidParameter]. A batch that changes nothing
// (empty, or deletes of missing keys) commits nothing and returns the current index of the
// prefix.
func (s *Store) Batch(ctx context.Context, ops []kvstore.Op) (uint64, error) {
	if err := s.begin(ctx); err != nil {
		return 0, fmt.Errorf("consul: batch: %w", err)
	}
	if err := kvstore.CheckOps(ops); err != nil {
		return 0, fmt.Errorf("consul: batch: %w", err)
	}
	var dels []string // keys of the deletes, read before each attempt
	for _, op := range ops {
		if op.Value == nil && !op.Exists {
			dels = append(dels, op.Key)
		}
	}
	if n := len(ops) + len(dels); n > maxTxnOps {
		return 0, fmt.Errorf("consul: batch: %w", errclass.Invalid("ops", strconv.Itoa(len(ops)),
			fmt.Sprintf("needs %d Consul transaction operations, more than the %d allowed (a put takes one, a delete two)", n, maxTxnOps)))
	}
	for {
		rev, retry, err := s.batchOnce(ctx, ops, dels)
		if err != nil {
			return 0, fmt.Errorf("consul: batch: %w", err)
		}
		if !retry {
			return rev, nil
		}
		s.log.Debug("consul: batch raced with a write; retrying")
	}
}

// batchOnce reads the keys that ops delete and tries to commit ops. It reports retry when a
// delete that was not checked by the caller met a concurrent write.
func (s *Store) batchOnce(ctx context.Context, ops []kvstore.Op, dels []string) (rev uint64, retry bool, err error) {
	cur := map[string]*api.KVPair{}
	if len(dels) > 0 {
		got, err := s.read(ctx, dels)
		if err != nil {
			return 0, false, err
		}
		for i, k := range dels {
			cur[k] = got[i]
		}
	}
	var (
		txn     api.TxnOps
		owner   []int  // owner[j]: the index in ops of Consul operation j
		checked []bool // checked[j]: operation j is the caller's check (else ours)
		writes  bool
	)
	add := func(i int, check bool, o ...*api.TxnOp) {
		for _, x := range o {
			txn = append(txn, x)
			owner = append(owner, i)
			checked = append(checked, check)
		}
	}
	for i, op := range ops {
		switch {
		case op.Exists: // "get" fails the transaction when the key is missing
			add(i, true, &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVGet, Key: s.root + kvDir + op.Key}})
		case op.Value != nil && op.Check:
			add(i, true, s.setOp(api.KVCAS, op.Key, op.Value, op.PrevRevision))
			writes = true
		case op.Value != nil:
			add(i, false, s.setOp(api.KVSet, op.Key, op.Value, 0))
			writes = true
		case cur[op.Key] == nil && op.Check && op.PrevRevision != 0:
			return 0, false, fmt.Errorf("op %d %q: %w", i, op.Key, kvstore.ErrKeyModified)
		case cur[op.Key] == nil:
			// Still missing at the commit, or the batch is tried again (or, for the caller's
			// create-only check, fails).
			add(i, op.Check, &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVCheckNotExists, Key: s.root + kvDir + op.Key}})
		case op.Check && op.PrevRevision == 0:
			return 0, false, fmt.Errorf("op %d %q: %w", i, op.Key, kvstore.ErrKeyExists)
		case op.Check && cur[op.Key].ModifyIndex != op.PrevRevision:
			return 0, false, fmt.Errorf("op %d %q: %w", i, op.Key, kvstore.ErrKeyModified)
		default:
			add(i, op.Check, s.deleteOps(op.Key, cur[op.Key])...)
			writes = true
		}
	}
	if !writes {
		// Nothing to write; the checks still say whether the keys are missing.
		if len(txn) > 0 {
			resp, err := s.txn(ctx, txn)
			if err != nil {
				return 0, false, err
			}
			if !resp.ok {
				return s.batchFailure(ops, resp, owner, checked)
			}
		}
		idx, err := s.currentIndex(ctx)
		return idx, false, err
	}
	resp, err := s.txn(ctx, txn)
	if err != nil {
		return 0, false, err
	}
	if !resp.ok {
		return s.batchFailure(ops, resp, owner, checked)
	}
	return resp.index(), false, nil
}

// batchFailure maps a failed batch transaction to the caller's op that failed its check, or
// to a retry when only the store's own checks failed.
func (s *Store) batchFailure(ops []kvstore.Op, resp *txnResult, owner []int, checked []bool) (uint64, bool, error) {
	if !resp.failedCheck() {
		return 0, false, resp.failure()
	}
	for _, e := range resp.Errors {
		if e.OpIndex < 0 || e.OpIndex >= len(owner) || !checked[e.OpIndex] {
			continue
		}
		i := owner[e.OpIndex]
		if ops[i].Exists {
			return 0, false, fmt.Errorf("op %d %q: %w", i, ops[i].Key, kvstore.ErrKeyNotFound)
		}
		return 0, false, fmt.Errorf("op %d %q: %w", i, ops[i].Key, casError(ops[i].PrevRevision))
	}
	return 0, true, nil
}

// currentIndex returns the index of the store's prefix: at least the revision of its last
// write.
func (s *Store) currentIndex(ctx context.Context) (uint64, error) {
	var idx uint64
	err := s.call(ctx, func(q *api.QueryOptions) error {
		// With a separator, only the subtrees come back; the index is the prefix's.
		_, meta, err := s.client.KV().Keys(s.root, "/", q)
		if err == nil {
			idx = meta.LastIndex
		}
		return err
	})
	return idx, err
}

// Close ends every watch (their channels close), abandons the open leases and locks (their
// sessions expire after their TTL; their Done and Lost channels close now), waits for the goroutines of the store and closes its idle
// connections. Calls after Close fail with [kvstore.ErrClosed]; Close itself is idempotent and
// later calls return nil.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	leases := make([]*lease, 0, len(s.leases))
	for l := range s.leases {
		leases = append(leases, l)
	}
	s.mu.Unlock()

	for _, l := range leases {
		// Abandoned: its session expires after its TTL. It renews no more, so Done (and a
		// lock's Lost) close now.
		l.end("store closed")
	}
	s.cancel()
	s.wg.Wait()
	s.transport.CloseIdleConnections()
	s.log.Debug("consul: closed", "address", s.addr, "prefix", strings.TrimSuffix(s.root, "/"))
	return nil
}

// isClosed reports whether Close has started.
func (s *Store) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// begin checks ctx and that the store is open, before a call starts.
func (s *Store) begin(ctx context.Context) error { return kvstore.CheckCall(ctx, s.isClosed()) }

// beginWrite is begin for a write of key.
func (s *Store) beginWrite(ctx context.Context, key string) error {
	return kvstore.CheckWrite(ctx, s.isClosed(), key)
}

// setOp is a "set" or "cas" (or "lock") of key to value, with fresh Flags so that Consul
// commits it even when the value is the one stored.
func (s *Store) setOp(verb api.KVOp, key string, value []byte, index uint64) *api.TxnOp {
	if value == nil {
		value = []byte{}
	}
	return &api.TxnOp{KV: &api.KVTxnOp{
		Verb:  verb,
		Key:   s.root + kvDir + key,
		Value: value,
		Flags: rand.Uint64(),
		Index: index,
	}}
}

// deleteOps deletes key at the revision of cur, its current entry, and writes its tombstone.
func (s *Store) deleteOps(key string, cur *api.KVPair) api.TxnOps {
	return api.TxnOps{
		{KV: &api.KVTxnOp{Verb: api.KVDeleteCAS, Key: s.root + kvDir + key, Index: cur.ModifyIndex}},
		{KV: &api.KVTxnOp{
			Verb:  api.KVSet,
			Key:   s.root + tombDir + key,
			Value: encodeTombstone(cur.ModifyIndex, cur.Value),
			Flags: rand.Uint64(),
		}},
	}
}

// read returns the current entries of keys (nil for a missing key), in one or more read
// transactions of "get-or-empty".
func (s *Store) read(ctx context.Context, keys []string) ([]*api.KVPair, error) {
	out := make([]*api.KVPair, 0, len(keys))
	for len(keys) > 0 {
		n := min(len(keys), maxTxnOps)
		txn := make(api.TxnOps, n)
		for i, k := range keys[:n] {
			txn[i] = &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVGetOrEmpty, Key: s.root + kvDir + k}}
		}
		resp, err := s.txn(ctx, txn)
		if err != nil {
			return nil, err
		}
		if !resp.ok {
			return nil, resp.failure()
		}
		if len(resp.Results) != n {
			return nil, fmt.Errorf("consul read transaction: %d results for %d keys", len(resp.Results), n)
		}
		for _, r := range resp.Results {
			if r.KV == nil || r.KV.ModifyIndex == 0 {
				out = append(out, nil) // get-or-empty of a missing key
				continue
			}
			out = append(out, r.KV)
		}
		keys = keys[n:]
	}
	return out, nil
}

// pair converts an entry of the _kv subtree. Its Value is the caller's: the decoder made it
// for this answer.
func (s *Store) pair(e *api.KVPair) kvstore.KVPair {
	v := e.Value
	if v == nil {
		v = []byte{}
	}
	return kvstore.KVPair{Key: strings.TrimPrefix(e.Key, s.root+kvDir), Value: v, Revision: e.ModifyIndex}
}

// casError is the error of a failed check against prevRevision.
func casError(prevRevision uint64) error {
	if prevRevision == 0 {
		return kvstore.ErrKeyExists
	}
	return kvstore.ErrKeyModified
}
