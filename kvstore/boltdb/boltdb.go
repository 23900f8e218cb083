// Package boltdb is the embedded default backend of [kvstore.Store], kept in one bbolt file
// (go.etcd.io/bbolt) on the local disk.
//
// # Lifecycle
//
// [Open] takes an exclusive file lock, so one process at a time holds a database file; a second
// Open of the same file waits up to [Config.Timeout] and then fails. From Open to Close the
// Store runs one goroutine of its own, which expires abandoned leases, plus one per open watch.
// [Store.Close] ends every watch, abandons the leases and ends the locks still held (see
// "Leases and locks"), waits for its goroutines, and releases the file. Calls after Close fail
// with [kvstore.ErrClosed].
//
// # Writes and revisions
//
// Each write call (Put, AtomicPut, Delete, AtomicDelete, and a lease's AtomicPut) is one bbolt
// transaction, so one commit and one fsync; [Store.Batch] applies all its ops in one
// transaction too, and so does the end of a lease (Revoke or expiry) with the deletes of its
// keys. The store keeps
// a counter that each committing write call advances by one and persists in the same
// transaction, so revisions survive a restart and are never reused. All ops of one Batch share
// the revision of their commit. Writes that change nothing (deleting a missing key, an empty
// batch) commit nothing and do not advance the counter.
//
// On disk, everything lives under the bucket named by [Config.Bucket]: a nested bucket "kv" maps
// each key to its value prefixed with the 8-byte big-endian revision of its last write, a
// nested bucket "meta" holds the counter under the key "revision", and the nested buckets
// "leasekeys" (key → 8-byte lease ID) and "leases" (lease ID → its TTL in nanoseconds, 8 bytes)
// record which keys belong to which lease.
//
// # Watch
//
// Watches are served in process: after each commit the store hands the events to every watcher
// whose prefix matches, in revision order. A watcher queues events without bound and a
// goroutine that belongs to it drains the queue into its channel, so a slow reader never
// blocks a writer (it costs memory instead).
//
// To resume a watch (fromRevision > 0) the store keeps the last [Config.WatchHistory] events in
// memory (10,000 by default). The history starts empty at Open. When fromRevision is older than
// the history, Watch cannot replay every change, so it sends instead the current state: one
// [kvstore.EventPut] for each key under the prefix whose revision is above fromRevision, in
// revision order, then live events. Keys deleted in the gap are not reported in that case, so a
// caller that must see deletions lists the prefix and reconciles after a restart.
//
// # Leases and locks
//
// The Store is a [kvstore.Leaser] and a [kvstore.Locker], in process: one process holds the
// file, so nothing needs to travel to stay alive.
//
// A lease lives in the Store's lease table. The Store renews it implicitly for as long as it
// is open, without writing anything; [kvstore.Lease.Abandon] starts its TTL countdown (there is
// no minimum TTL), and when that runs out a goroutine of the Store deletes the lease's keys in
// one transaction, like Revoke does: watchers see a delete for each, all at the revision of
// that commit. Binding a key (Lease.AtomicPut) writes the key and its binding in the same
// transaction, so it costs no extra commit, and Grant writes nothing. A key belongs to one
// lease at a time: written through another lease it moves there, and written or deleted
// through the Store (Put, AtomicPut, Delete, AtomicDelete, Batch) it leaves its lease, so that
// the lease's end no longer deletes it.
//
// [Store.Close] abandons the leases still open: their Done channels close, their keys stay in
// the file with their bindings. The next Open of the file inherits those leases, and those of
// a process that crashed with the file open, and deletes their keys once their TTL has run
// out, counted from that Open: it cannot tell when their holder stopped, and nobody can renew
// them since the holder lost the file. So a restart sees its predecessor's leased keys for one
// TTL, as it would with etcd or Consul, and can take a key over at once with Lease.AtomicPut
// and the key's revision, or with a plain write.
//
// A lock is a named entry of an in-memory table, which writes no key and needs no lease: it
// cannot outlive its holder, which is the process. [Store.Lock] waits in about first-come
// order and honors ctx. Lost closes only when the Store is closed while the lock is held; the
// Unlock that follows fails with an error matching both [kvstore.ErrLockLost] and
// [kvstore.ErrClosed]. A second Unlock returns nil.
//
// # Concurrency and privileges
//
// A Store is safe for concurrent use. It needs no privileges beyond access to its file.
package boltdb

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

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
	// DefaultBucket is the top-level bucket used when [Config.Bucket] is empty.
	DefaultBucket = "cnm"
	// DefaultTimeout is how long Open waits for the file lock when [Config.Timeout] is zero.
	DefaultTimeout = time.Second
	// DefaultWatchHistory is how many events are kept to resume watches when
	// [Config.WatchHistory] is zero.
	DefaultWatchHistory = 10000
)

var (
	kvBucketName        = []byte("kv")
	metaBucketName      = []byte("meta")
	leasesBucketName    = []byte("leases")
	leaseKeysBucketName = []byte("leasekeys")
	revisionKey         = []byte("revision")
)

// revSize is the length of the big-endian revision that prefixes every stored value.
const revSize = 8

// errNoChange rolls back a write transaction that has nothing to commit.
var errNoChange = errors.New("boltdb: no change")

// Config configures [Open]. The zero value is ready to use.
type Config struct {
	// Bucket is the name of the top-level bbolt bucket that holds the store, so that several
	// stores can share one file (one Open at a time: the lock covers the file). Empty means
	// [DefaultBucket] ("cnm").
	Bucket string
	// Timeout is how long Open waits for the exclusive file lock held by another process or
	// Store. Zero means [DefaultTimeout] (1s); there is no way to wait forever. Negative is
	// an error.
	Timeout time.Duration
	// Logger receives debug and informational messages. Nil discards them.
	Logger *slog.Logger
	// NoSync skips the fsync after each commit: a crash of the machine can lose or corrupt
	// recent writes, while a crash of the process loses nothing committed (the writes are in
	// the page cache, the meta page last). It is for tests, and for data that dies with the
	// machine anyway, on a tmpfs.
	NoSync bool
	// WatchHistory is how many recent events the store keeps in memory to resume a Watch
	// from a revision. Zero means [DefaultWatchHistory] (10,000); negative is an error.
	WatchHistory int
}

// Store is a [kvstore.Store], [kvstore.Batcher], [kvstore.Leaser] and [kvstore.Locker] kept
// in a bbolt file. Create it with [Open]. It is safe for concurrent use.
//
// Lock order: writeMu, then mu, then a watcher's mu.
type Store struct {
	db        *bolt.DB
	path      string
	bucket    []byte
	log       *slog.Logger
	done      chan struct{} // closed by Close, under writeMu and mu
	reapWake  chan struct{} // capacity 1: a pending signal that a lease was abandoned
	wg        sync.WaitGroup
	inherited int // leases left by the previous holder of the file, found at Open

	// writeMu serializes write transactions with the fan-out of their events, so watchers
	// see events in commit order, and lets Watch register against a stable state. It is
	// held across bbolt write transactions (bbolt allows one writer at a time anyway).
	writeMu sync.Mutex
	// bound maps each key bound to a lease to that lease. Guarded by writeMu: it changes
	// only after a write transaction commits.
	bound map[string]*lease
	// txn is the state of the write transaction in progress, reused from one to the next so
	// that a write allocates no more than it did before leases. Guarded by writeMu.
	txn txn

	mu        sync.Mutex // guards following
	history   eventLog
	watchers  map[*watcher]struct{}
	leases    map[uint64]*lease // leases not ended, the inherited ones included
	lastLease uint64            // the highest lease ID given or found on disk
	locks     map[string]*lockEntry
}

// Open opens or creates the bbolt file at path (mode 0600; the directory must exist) and
// returns a Store on it. It fails with an error wrapping [errclass.ErrInvalidParameter] for a
// bad cfg, and with one wrapping [errclass.ErrUnavailable] (and bbolt's timeout error) when
// another process or Store holds the file's lock past cfg.Timeout.
func Open(path string, cfg Config) (*Store, error) {
	if cfg.Bucket == "" {
		cfg.Bucket = DefaultBucket
	}
	if cfg.Timeout < 0 {
		return nil, fmt.Errorf("boltdb: open %q: %w", path,
			errclass.Invalid("Timeout", cfg.Timeout.String(), "must not be negative"))
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.WatchHistory < 0 {
		return nil, fmt.Errorf("boltdb: open %q: %w", path,
			errclass.Invalid("WatchHistory", fmt.Sprint(cfg.WatchHistory), "must not be negative"))
	}
	if cfg.WatchHistory == 0 {
		cfg.WatchHistory = DefaultWatchHistory
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}

	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: cfg.Timeout, NoSync: cfg.NoSync})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("boltdb: open %q: %w", path,
			&errclass.UnavailableError{What: "file lock", Err: err})
	}
	if err != nil {
		return nil, fmt.Errorf("boltdb: open %q: %w", path, err)
	}
	s := &Store{
		db:       db,
		path:     path,
		bucket:   []byte(cfg.Bucket),
		log:      logger,
		done:     make(chan struct{}),
		reapWake: make(chan struct{}, 1),
		bound:    make(map[string]*lease),
		watchers: make(map[*watcher]struct{}),
		leases:   make(map[uint64]*lease),
		locks:    make(map[string]*lockEntry),
	}
	var rev uint64
	err = db.Update(func(tx *bolt.Tx) error {
		root, err := tx.CreateBucketIfNotExists(s.bucket)
		if err != nil {
			return err
		}
		for _, name := range [][]byte{kvBucketName, leasesBucketName, leaseKeysBucketName} {
			if _, err := root.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		meta, err := root.CreateBucketIfNotExists(metaBucketName)
		if err != nil {
			return err
		}
		if rev, err = readRevision(meta); err != nil {
			return err
		}
		return s.inheritLeases(root)
	})
	if err != nil {
		return nil, errors.Join(fmt.Errorf("boltdb: open %q: bucket %q: %w", path, cfg.Bucket, err), db.Close())
	}
	// Events up to the current revision happened before this Open and are not in memory.
	s.history = eventLog{size: cfg.WatchHistory, floor: rev}
	s.wg.Add(1)
	go s.reap()
	s.log.Debug("boltdb: opened", "path", path, "bucket", cfg.Bucket, "revision", rev,
		"inherited_leases", s.inherited)
	return s, nil
}

// Get returns the key's value and revision. It fails with [kvstore.ErrKeyNotFound] when the
// key does not exist. The returned Value belongs to the caller.
func (s *Store) Get(ctx context.Context, key string) (kvstore.KVPair, error) {
	if err := s.begin(ctx); err != nil {
		return kvstore.KVPair{}, fmt.Errorf("boltdb: get %q: %w", key, err)
	}
	var pair kvstore.KVPair
	err := s.db.View(func(tx *bolt.Tx) error {
		v := s.kv(tx).Get([]byte(key))
		if v == nil {
			return kvstore.ErrKeyNotFound
		}
		var err error
		pair, err = decode(key, v)
		return err
	})
	if err != nil {
		return kvstore.KVPair{}, fmt.Errorf("boltdb: get %q: %w", key, mapErr(err))
	}
	return pair, nil
}

// Put writes the key unconditionally in one transaction and returns the new revision. The
// store keeps a copy of value. An empty key is an error wrapping
// [errclass.ErrInvalidParameter].
func (s *Store) Put(ctx context.Context, key string, value []byte) (uint64, error) {
	if err := s.beginWrite(ctx, key); err != nil {
		return 0, fmt.Errorf("boltdb: put %q: %w", key, err)
	}
	rev, err := s.update(func(w *txn) error {
		return w.put(key, value, nil)
	})
	if err != nil {
		return 0, fmt.Errorf("boltdb: put %q: %w", key, err)
	}
	return rev, nil
}

// AtomicPut writes the key only if its revision is prevRevision, or, when prevRevision is 0,
// only if the key does not exist. It returns the new revision, or fails with
// [kvstore.ErrKeyModified] (the key has another revision or is missing) or
// [kvstore.ErrKeyExists] (create-only and the key exists). The store keeps a copy of value.
func (s *Store) AtomicPut(ctx context.Context, key string, value []byte, prevRevision uint64) (uint64, error) {
	if err := s.beginWrite(ctx, key); err != nil {
		return 0, fmt.Errorf("boltdb: atomic put %q: %w", key, err)
	}
	rev, err := s.update(func(w *txn) error {
		if err := check(w.get(key), prevRevision); err != nil {
			return err
		}
		return w.put(key, value, nil)
	})
	if err != nil {
		return 0, fmt.Errorf("boltdb: atomic put %q: %w", key, err)
	}
	return rev, nil
}

// Delete removes the key in one transaction. Deleting a missing key returns nil, commits
// nothing and does not advance the revision.
func (s *Store) Delete(ctx context.Context, key string) error {
	if err := s.beginWrite(ctx, key); err != nil {
		return fmt.Errorf("boltdb: delete %q: %w", key, err)
	}
	_, err := s.update(func(w *txn) error {
		if w.get(key) == nil {
			return nil
		}
		return w.del(key)
	})
	if err != nil {
		return fmt.Errorf("boltdb: delete %q: %w", key, err)
	}
	return nil
}

// AtomicDelete removes the key only if its revision is prevRevision. Otherwise it fails with
// [kvstore.ErrKeyNotFound] when the key is missing, or [kvstore.ErrKeyModified].
func (s *Store) AtomicDelete(ctx context.Context, key string, prevRevision uint64) error {
	if err := s.beginWrite(ctx, key); err != nil {
		return fmt.Errorf("boltdb: atomic delete %q: %w", key, err)
	}
	_, err := s.update(func(w *txn) error {
		cur := w.get(key)
		if cur == nil {
			return kvstore.ErrKeyNotFound
		}
		if err := check(cur, prevRevision); err != nil {
			return err
		}
		return w.del(key)
	})
	if err != nil {
		return fmt.Errorf("boltdb: atomic delete %q: %w", key, err)
	}
	return nil
}

// List returns every key that starts with prefix, in byte order of the keys, from one
// consistent read. It returns an empty, non-nil slice when there are none. The slice and its
// values belong to the caller.
func (s *Store) List(ctx context.Context, prefix string) ([]kvstore.KVPair, error) {
	if err := s.begin(ctx); err != nil {
		return nil, fmt.Errorf("boltdb: list %q: %w", prefix, err)
	}
	pairs := []kvstore.KVPair{}
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		pairs, err = s.scan(tx, prefix, 0)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("boltdb: list %q: %w", prefix, mapErr(err))
	}
	return pairs, nil
}

// Batch applies ops in one transaction: all of them or none. Ops whose Check is set are all
// checked against the state before the batch; if one fails, Batch fails with
// [kvstore.ErrKeyModified] or [kvstore.ErrKeyExists], naming the op, and writes nothing.
// Every op that changes a key gives it the revision of the commit, which Batch returns. A
// key may appear only once in ops, and keys must not be empty (errors wrapping
// [errclass.ErrInvalidParameter]). A batch that changes nothing (empty, or deletes of missing
// keys) commits nothing and returns the current revision.
func (s *Store) Batch(ctx context.Context, ops []kvstore.Op) (uint64, error) {
	if err := s.begin(ctx); err != nil {
		return 0, fmt.Errorf("boltdb: batch: %w", err)
	}
	if err := kvstore.CheckOps(ops); err != nil {
		return 0, fmt.Errorf("boltdb: batch: %w", err)
	}
	rev, err := s.update(func(w *txn) error {
		for i, op := range ops {
			if op.Exists && w.get(op.Key) == nil {
				return fmt.Errorf("op %d %q: %w", i, op.Key, kvstore.ErrKeyNotFound)
			}
			if !op.Check {
				continue
			}
			if err := check(w.get(op.Key), op.PrevRevision); err != nil {
				return fmt.Errorf("op %d %q: %w", i, op.Key, err)
			}
		}
		w.events = make([]kvstore.Event, 0, len(ops))
		for i, op := range ops {
			var err error
			switch {
			case op.Exists:
				continue
			case op.Value != nil:
				err = w.put(op.Key, op.Value, nil)
			case w.get(op.Key) != nil:
				err = w.del(op.Key)
			default:
				continue // delete of a missing key
			}
			if err != nil {
				return fmt.Errorf("op %d %q: %w", i, op.Key, err)
			}
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("boltdb: batch: %w", err)
	}
	return rev, nil
}

// Close ends every watch (their channels close), abandons the leases still open (their keys
// stay in the file, and the next Open deletes them once their TTL has run out; their Done
// channels close now), ends the locks still held (their Lost channels close), waits for the
// goroutines that serve watches and expire leases, and closes the file. Calls after Close
// fail with [kvstore.ErrClosed]; Close itself is idempotent and later calls return nil.
func (s *Store) Close() error {
	s.writeMu.Lock()
	s.mu.Lock()
	if s.closed() {
		s.mu.Unlock()
		s.writeMu.Unlock()
		return nil
	}
	close(s.done)
	for _, l := range s.leases {
		l.closeDoneLocked()
	}
	for _, e := range s.locks {
		if e.holder != nil {
			close(e.holder.lost)
		}
	}
	s.mu.Unlock()
	s.writeMu.Unlock()

	s.wg.Wait()
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("boltdb: close %q: %w", s.path, err)
	}
	s.log.Debug("boltdb: closed", "path", s.path)
	return nil
}

// closed reports whether Close has started.
func (s *Store) closed() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// begin checks ctx and that the store is open, before a call starts.
func (s *Store) begin(ctx context.Context) error { return kvstore.CheckCall(ctx, s.closed()) }

// beginWrite is begin for a write of key.
func (s *Store) beginWrite(ctx context.Context, key string) error {
	return kvstore.CheckWrite(ctx, s.closed(), key)
}

// update runs apply in one write transaction with the next revision, persists the revision
// counter in that transaction and, once committed, applies the lease bindings that changed to
// the in-memory tables and hands the events to the watchers. When apply writes no events the
// revision does not advance, and when it writes nothing at all the transaction is rolled back;
// update then returns the current revision.
func (s *Store) update(apply func(w *txn) error) (uint64, error) {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	if s.closed() {
		return 0, kvstore.ErrClosed
	}
	w := &s.txn
	defer w.reset()
	err := s.db.Update(func(tx *bolt.Tx) error {
		w.reset()
		root := tx.Bucket(s.bucket)
		meta := root.Bucket(metaBucketName)
		cur, err := readRevision(meta)
		if err != nil {
			return err
		}
		w.s, w.root, w.kv, w.rev = s, root, root.Bucket(kvBucketName), cur+1
		if err := apply(w); err != nil {
			return err
		}
		switch {
		case len(w.events) > 0:
			return meta.Put(revisionKey, binary.BigEndian.AppendUint64(nil, w.rev))
		case w.dirty:
			return nil // lease bookkeeping only: no revision
		}
		return errNoChange
	})
	if err != nil && !errors.Is(err, errNoChange) {
		return 0, mapErr(err)
	}
	s.settle(w)
	if len(w.events) == 0 {
		return w.rev - 1, nil
	}
	s.publish(w.events)
	return w.rev, nil
}

// txn is one write transaction of update. Writes go through it so that the events and the
// lease bindings follow each change to a key.
type txn struct {
	s      *Store
	root   *bolt.Bucket
	kv     *bolt.Bucket
	rev    uint64          // the revision of this commit
	events []kvstore.Event // the changes to keys, for the watchers
	dirty  bool            // lease bookkeeping was written (events aside)
	binds  []binding       // applied to Store.bound once committed
	ends   []*lease        // leases ended by this commit
}

// reset clears w for the next transaction, keeping the capacity of its slices but no
// reference to a bucket, an event or a lease.
func (w *txn) reset() {
	clear(w.binds)
	clear(w.ends)
	*w = txn{binds: w.binds[:0], ends: w.ends[:0]}
}

// binding is a change of the lease a key is bound to; lease nil unbinds the key.
type binding struct {
	key   string
	lease *lease
}

// get returns the stored value of key (revision prefix included), or nil.
func (w *txn) get(key string) []byte {
	return w.kv.Get([]byte(key))
}

// put writes key at the commit's revision. l non-nil binds key to l; l nil unbinds key from
// the lease it was bound to, if any (a write that does not come through the lease takes the
// key over).
func (w *txn) put(key string, value []byte, l *lease) error {
	ev, err := put(w.kv, key, value, w.rev)
	if err != nil {
		return err
	}
	w.events = append(w.events, ev)
	if l != nil {
		return w.bind(key, l)
	}
	return w.unbind(key)
}

// del deletes key, which exists, at the commit's revision and unbinds it.
func (w *txn) del(key string) error {
	ev, err := del(w.kv, key, w.rev)
	if err != nil {
		return err
	}
	w.events = append(w.events, ev)
	return w.unbind(key)
}

// bind records on disk that key belongs to l, with l's TTL.
func (w *txn) bind(key string, l *lease) error {
	id := binary.BigEndian.AppendUint64(nil, l.id)
	if err := w.root.Bucket(leaseKeysBucketName).Put([]byte(key), id); err != nil {
		return err
	}
	leases := w.root.Bucket(leasesBucketName)
	if leases.Get(id) == nil {
		if err := leases.Put(id, binary.BigEndian.AppendUint64(nil, uint64(l.ttl))); err != nil {
			return err
		}
	}
	w.binds = append(w.binds, binding{key: key, lease: l})
	return nil
}

// unbind forgets on disk the lease of key, if it has one. Keys without a lease, which are most,
// cost one map lookup.
func (w *txn) unbind(key string) error {
	if w.s.bound[key] == nil {
		return nil
	}
	if err := w.root.Bucket(leaseKeysBucketName).Delete([]byte(key)); err != nil {
		return err
	}
	w.dirty = true
	w.binds = append(w.binds, binding{key: key})
	return nil
}

// end deletes the keys bound to l and its record, and marks l ended once committed.
func (w *txn) end(l *lease) error {
	for _, key := range slices.Sorted(maps.Keys(l.keys)) {
		var err error
		if w.get(key) != nil {
			err = w.del(key)
		} else { // not expected: the binding of a deleted key goes with it
			err = w.unbind(key)
		}
		if err != nil {
			return fmt.Errorf("key %q: %w", key, err)
		}
	}
	leases := w.root.Bucket(leasesBucketName)
	id := binary.BigEndian.AppendUint64(nil, l.id)
	if leases.Get(id) != nil {
		if err := leases.Delete(id); err != nil {
			return err
		}
		w.dirty = true
	}
	w.ends = append(w.ends, l)
	return nil
}

// settle applies to the in-memory lease tables what w committed. The caller holds writeMu.
func (s *Store) settle(w *txn) {
	for _, b := range w.binds {
		if old := s.bound[b.key]; old != nil {
			delete(old.keys, b.key)
		}
		if b.lease == nil {
			delete(s.bound, b.key)
			continue
		}
		s.bound[b.key] = b.lease
		b.lease.keys[b.key] = struct{}{}
	}
	if len(w.ends) == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range w.ends {
		l.ended = true
		delete(s.leases, l.id)
		l.closeDoneLocked()
	}
}

// kv returns the bucket of keys in tx.
func (s *Store) kv(tx *bolt.Tx) *bolt.Bucket {
	return tx.Bucket(s.bucket).Bucket(kvBucketName)
}

// scan returns, in key order, the pairs under prefix whose revision is above minRev.
func (s *Store) scan(tx *bolt.Tx, prefix string, minRev uint64) ([]kvstore.KVPair, error) {
	pairs := []kvstore.KVPair{}
	p := []byte(prefix)
	c := s.kv(tx).Cursor()
	for k, v := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
		pair, err := decode(string(k), v)
		if err != nil {
			return nil, err
		}
		if pair.Revision > minRev {
			pairs = append(pairs, pair)
		}
	}
	return pairs, nil
}

// put stores value under key with revision rev and returns the event.
func put(kv *bolt.Bucket, key string, value []byte, rev uint64) (kvstore.Event, error) {
	enc := make([]byte, revSize+len(value))
	binary.BigEndian.PutUint64(enc, rev)
	copy(enc[revSize:], value)
	if err := kv.Put([]byte(key), enc); err != nil {
		return kvstore.Event{}, err
	}
	// enc is never modified again; watchers get copies of it.
	return kvstore.Event{
		Type: kvstore.EventPut,
		Pair: kvstore.KVPair{Key: key, Value: enc[revSize:], Revision: rev},
	}, nil
}

// del removes key, which exists, at revision rev and returns the event.
func del(kv *bolt.Bucket, key string, rev uint64) (kvstore.Event, error) {
	if err := kv.Delete([]byte(key)); err != nil {
		return kvstore.Event{}, err
	}
	return kvstore.Event{Type: kvstore.EventDelete, Pair: kvstore.KVPair{Key: key, Revision: rev}}, nil
}

// check compares the stored value cur (nil when missing) with the revision a caller expects
// (0: missing).
func check(cur []byte, prevRevision uint64) error {
	switch {
	case prevRevision == 0 && cur != nil:
		return kvstore.ErrKeyExists
	case prevRevision == 0:
		return nil
	case cur == nil || len(cur) < revSize || binary.BigEndian.Uint64(cur) != prevRevision:
		return kvstore.ErrKeyModified
	}
	return nil
}

// decode copies a stored value out of bbolt's memory, which is valid only in its transaction.
func decode(key string, v []byte) (kvstore.KVPair, error) {
	if len(v) < revSize {
		return kvstore.KVPair{}, fmt.Errorf("corrupt value of %q: %d bytes, want at least %d", key, len(v), revSize)
	}
	value := make([]byte, len(v)-revSize)
	copy(value, v[revSize:])
	return kvstore.KVPair{Key: key, Value: value, Revision: binary.BigEndian.Uint64(v)}, nil
}

// readRevision returns the revision counter stored in meta (0 when none).
func readRevision(meta *bolt.Bucket) (uint64, error) {
	v := meta.Get(revisionKey)
	switch len(v) {
	case 0:
		return 0, nil
	case revSize:
		return binary.BigEndian.Uint64(v), nil
	}
	return 0, fmt.Errorf("corrupt revision counter: %d bytes, want %d", len(v), revSize)
}

// mapErr turns bbolt's "database not open", which a call racing with Close can meet, into
// [kvstore.ErrClosed].
func mapErr(err error) error {
	if errors.Is(err, berrors.ErrDatabaseNotOpen) {
		return kvstore.ErrClosed
	}
	return err
}
