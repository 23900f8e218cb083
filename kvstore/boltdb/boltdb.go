// Package boltdb is the embedded default backend of [kvstore.Store], kept in one bbolt file
// (go.etcd.io/bbolt) on the local disk.
//
// # Lifecycle
//
// [Open] takes an exclusive file lock, so one process at a time holds a database file; a second
// Open of the same file waits up to [Config.Timeout] and then fails. [Store.Close] ends every
// watch, waits for the goroutines that serve them, and releases the file. Calls after Close fail
// with [kvstore.ErrClosed].
//
// # Writes and revisions
//
// Each write call (Put, AtomicPut, Delete, AtomicDelete) is one bbolt transaction, so one
// commit and one fsync; [Store.Batch] applies all its ops in one transaction too. The store keeps
// a counter that each committing write call advances by one and persists in the same
// transaction, so revisions survive a restart and are never reused. All ops of one Batch share
// the revision of their commit. Writes that change nothing (deleting a missing key, an empty
// batch) commit nothing and do not advance the counter.
//
// On disk, everything lives under the bucket named by [Config.Bucket]: a nested bucket "kv" maps
// each key to its value prefixed with the 8-byte big-endian revision of its last write, and a
// nested bucket "meta" holds the counter under the key "revision".
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
	kvBucketName   = []byte("kv")
	metaBucketName = []byte("meta")
	revisionKey    = []byte("revision")
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
	// NoSync skips the fsync after each commit, so a crash can lose or corrupt recent writes.
	// It is for tests only.
	NoSync bool
	// WatchHistory is how many recent events the store keeps in memory to resume a Watch
	// from a revision. Zero means [DefaultWatchHistory] (10,000); negative is an error.
	WatchHistory int
}

// Store is a [kvstore.Store] and [kvstore.Batcher] kept in a bbolt file. Create it with
// [Open]. It is safe for concurrent use.
//
// Lock order: writeMu, then mu, then a watcher's mu.
type Store struct {
	db     *bolt.DB
	path   string
	bucket []byte
	log    *slog.Logger
	done   chan struct{} // closed by Close, under writeMu and mu
	wg     sync.WaitGroup

	// writeMu serializes write transactions with the fan-out of their events, so watchers
	// see events in commit order, and lets Watch register against a stable state. It is
	// held across bbolt write transactions (bbolt allows one writer at a time anyway).
	writeMu sync.Mutex

	mu       sync.Mutex // guards following
	history  eventLog
	watchers map[*watcher]struct{}
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
		watchers: make(map[*watcher]struct{}),
	}
	var rev uint64
	err = db.Update(func(tx *bolt.Tx) error {
		root, err := tx.CreateBucketIfNotExists(s.bucket)
		if err != nil {
			return err
		}
		if _, err := root.CreateBucketIfNotExists(kvBucketName); err != nil {
			return err
		}
		meta, err := root.CreateBucketIfNotExists(metaBucketName)
		if err != nil {
			return err
		}
		rev, err = readRevision(meta)
		return err
	})
	if err != nil {
		return nil, errors.Join(fmt.Errorf("boltdb: open %q: bucket %q: %w", path, cfg.Bucket, err), db.Close())
	}
	// Events up to the current revision happened before this Open and are not in memory.
	s.history = eventLog{size: cfg.WatchHistory, floor: rev}
	s.log.Debug("boltdb: opened", "path", path, "bucket", cfg.Bucket, "revision", rev)
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
	rev, err := s.update(func(kv *bolt.Bucket, rev uint64) ([]kvstore.Event, error) {
		ev, err := put(kv, key, value, rev)
		return []kvstore.Event{ev}, err
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
	rev, err := s.update(func(kv *bolt.Bucket, rev uint64) ([]kvstore.Event, error) {
		if err := check(kv.Get([]byte(key)), prevRevision); err != nil {
			return nil, err
		}
		ev, err := put(kv, key, value, rev)
		return []kvstore.Event{ev}, err
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
	_, err := s.update(func(kv *bolt.Bucket, rev uint64) ([]kvstore.Event, error) {
		if kv.Get([]byte(key)) == nil {
			return nil, nil
		}
		ev, err := del(kv, key, rev)
		return []kvstore.Event{ev}, err
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
	_, err := s.update(func(kv *bolt.Bucket, rev uint64) ([]kvstore.Event, error) {
		cur := kv.Get([]byte(key))
		if cur == nil {
			return nil, kvstore.ErrKeyNotFound
		}
		if err := check(cur, prevRevision); err != nil {
			return nil, err
		}
		ev, err := del(kv, key, rev)
		return []kvstore.Event{ev}, err
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
	seen := make(map[string]struct{}, len(ops))
	for i, op := range ops {
		if op.Key == "" {
			return 0, fmt.Errorf("boltdb: batch: op %d: %w", i, errclass.Invalid("key", "", "must not be empty"))
		}
		if _, dup := seen[op.Key]; dup {
			return 0, fmt.Errorf("boltdb: batch: op %d: %w", i, errclass.Invalid("key", op.Key, "appears more than once in the batch"))
		}
		seen[op.Key] = struct{}{}
	}
	rev, err := s.update(func(kv *bolt.Bucket, rev uint64) ([]kvstore.Event, error) {
		for i, op := range ops {
			if !op.Check {
				continue
			}
			if err := check(kv.Get([]byte(op.Key)), op.PrevRevision); err != nil {
				return nil, fmt.Errorf("op %d %q: %w", i, op.Key, err)
			}
		}
		events := make([]kvstore.Event, 0, len(ops))
		for i, op := range ops {
			var ev kvstore.Event
			var err error
			switch {
			case op.Value != nil:
				ev, err = put(kv, op.Key, op.Value, rev)
			case kv.Get([]byte(op.Key)) != nil:
				ev, err = del(kv, op.Key, rev)
			default:
				continue // delete of a missing key
			}
			if err != nil {
				return nil, fmt.Errorf("op %d %q: %w", i, op.Key, err)
			}
			events = append(events, ev)
		}
		return events, nil
	})
	if err != nil {
		return 0, fmt.Errorf("boltdb: batch: %w", err)
	}
	return rev, nil
}

// Close ends every watch (their channels close), waits for the goroutines that serve them,
// and closes the file. Calls after Close fail with [kvstore.ErrClosed]; Close itself is
// idempotent and later calls return nil.
func (s *Store) Close() error {
	s.writeMu.Lock()
	s.mu.Lock()
	if s.closed() {
		s.mu.Unlock()
		s.writeMu.Unlock()
		return nil
	}
	close(s.done)
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
func (s *Store) begin(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if s.closed() {
		return kvstore.ErrClosed
	}
	return nil
}

// beginWrite is begin for a write of key.
func (s *Store) beginWrite(ctx context.Context, key string) error {
	if err := s.begin(ctx); err != nil {
		return err
	}
	if key == "" {
		return errclass.Invalid("key", key, "must not be empty")
	}
	return nil
}

// update runs apply in one write transaction with the next revision, persists the revision
// counter in that transaction and, once committed, hands the events apply returns to the
// watchers. When apply returns no events the transaction is rolled back and update returns
// the current revision.
func (s *Store) update(apply func(kv *bolt.Bucket, rev uint64) ([]kvstore.Event, error)) (uint64, error) {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	if s.closed() {
		return 0, kvstore.ErrClosed
	}
	var (
		rev    uint64
		events []kvstore.Event
	)
	err := s.db.Update(func(tx *bolt.Tx) error {
		root := tx.Bucket(s.bucket)
		meta := root.Bucket(metaBucketName)
		cur, err := readRevision(meta)
		if err != nil {
			return err
		}
		rev = cur + 1
		events, err = apply(root.Bucket(kvBucketName), rev)
		if err != nil {
			return err
		}
		if len(events) == 0 {
			return errNoChange
		}
		return meta.Put(revisionKey, binary.BigEndian.AppendUint64(nil, rev))
	})
	if errors.Is(err, errNoChange) {
		return rev - 1, nil
	}
	if err != nil {
		return 0, mapErr(err)
	}
	s.publish(events)
	return rev, nil
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
