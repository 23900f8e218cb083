// Package kvstore is the key-value contract that cnm keeps its state in. Backends live in
// sub-packages: kvstore/boltdb (embedded, the default), and later etcd and Consul. The contract
// suite in kvstore/kvstoretest holds every backend to the same semantics.
//
// Keys are slash-separated paths ("cnm/v1/networks/<id>"). Every write gives the key a new
// revision: a number that grows with each write to the store, never reused, so that AtomicPut
// and AtomicDelete can compare-and-swap and Watch can resume.
//
// A Store is safe for concurrent use. Close releases it; calls after Close fail with ErrClosed.
package kvstore

import (
	"context"
	"fmt"
	"time"

	"github.com/cnmkit/cnm/internal/errclass"
)

// Sentinel errors. Each also matches its class (errors.Is(ErrKeyNotFound, cnm.ErrNotFound)).
var (
	// ErrKeyNotFound: the key does not exist.
	ErrKeyNotFound = errclass.Sentinel("kvstore: key not found", errclass.ErrNotFound)
	// ErrKeyExists: a create-only AtomicPut found the key present.
	ErrKeyExists = errclass.Sentinel("kvstore: key exists", errclass.ErrAlreadyExists)
	// ErrKeyModified: the key's revision is not the one the caller gave.
	ErrKeyModified = errclass.Sentinel("kvstore: key modified", errclass.ErrConflict)
	// ErrClosed: the store was closed.
	ErrClosed = errclass.Sentinel("kvstore: store closed", errclass.ErrUnavailable)
	// ErrUnavailable: the store's servers could not be reached, or could not agree (no
	// quorum), within the backend's request timeout. The call may or may not have taken effect
	// when it was a write; the caller reads back before retrying a non-atomic one.
	ErrUnavailable = errclass.Sentinel("kvstore: store unavailable", errclass.ErrUnavailable)
	// ErrLeaseEnded: the lease was revoked or expired; keys can no longer be bound to it.
	ErrLeaseEnded = errclass.Sentinel("kvstore: lease ended", errclass.ErrNotFound)
	// ErrLockLost: the lock's holder lost it (its lease expired) before Unlock.
	ErrLockLost = errclass.Sentinel("kvstore: lock lost", errclass.ErrConflict)
)

// KVPair is a key, its value and the revision of its last write.
type KVPair struct {
	Key      string
	Value    []byte
	Revision uint64
}

// EventType says what happened to a key.
type EventType int

const (
	EventPut EventType = iota + 1
	EventDelete
)

func (t EventType) String() string {
	switch t {
	case EventPut:
		return "put"
	case EventDelete:
		return "delete"
	}
	return "unknown"
}

// Event is one change seen by Watch. For EventDelete, Pair.Value is nil and Pair.Revision is the
// revision of the delete.
type Event struct {
	Type EventType
	Pair KVPair
	// Inferred marks a delete the backend did not see happen but inferred from the key's
	// absence: a key gone without a trace of its delete (Consul: no tombstone; a session's
	// key that Consul removed), or one missing after the store's state went back. Right after
	// a server restarts it can answer before it has replayed its log, so such a key may come
	// back: a watcher that must not act on a false delete checks again later.
	Inferred bool
}

// Store is a key-value store with revisions.
type Store interface {
	// Get returns the key's value and revision, or ErrKeyNotFound.
	Get(ctx context.Context, key string) (KVPair, error)
	// Put writes the key unconditionally and returns the new revision.
	Put(ctx context.Context, key string, value []byte) (uint64, error)
	// AtomicPut writes the key only if its current revision is prevRevision; prevRevision 0
	// means create-only. It returns the new revision, or ErrKeyModified (the key changed or
	// is missing) or ErrKeyExists (create-only and the key is there).
	AtomicPut(ctx context.Context, key string, value []byte, prevRevision uint64) (uint64, error)
	// Delete removes the key. Deleting a missing key returns nil.
	Delete(ctx context.Context, key string) error
	// AtomicDelete removes the key only if its revision is prevRevision; otherwise
	// ErrKeyModified, or ErrKeyNotFound when it is gone.
	AtomicDelete(ctx context.Context, key string, prevRevision uint64) error
	// List returns every key under prefix in key order (an empty slice when none).
	List(ctx context.Context, prefix string) ([]KVPair, error)
	// Watch sends every change to keys under prefix made after revision fromRevision (0: from
	// now on) in revision order, until ctx is done; then the channel is closed. A slow reader
	// does not block writers: the backend buffers events for it.
	Watch(ctx context.Context, prefix string, fromRevision uint64) (<-chan Event, error)
	// Close releases the store and ends its watches.
	Close() error
}

// Batcher is an optional capability: a backend that can apply several writes in one
// transaction (one commit, one fsync). Callers check for it with a type assertion.
type Batcher interface {
	// Batch applies ops atomically: all or none. It returns the revision of the commit.
	Batch(ctx context.Context, ops []Op) (uint64, error)
}

// Op is one write in a Batch: a Put when Value is non-nil, else a Delete. When Check is true the
// op applies only if the key's revision is PrevRevision (0: absent), otherwise the whole
// batch fails with ErrKeyModified or ErrKeyExists.
//
// An op with Exists set writes nothing: it requires that the key exist, at any revision, when
// the batch commits, otherwise the whole batch fails with ErrKeyNotFound. Value, Check and
// PrevRevision must then be zero (ErrInvalidParameter). It lets a write depend on another
// record in the same round trip (an endpoint's record on its network's).
type Op struct {
	Key          string
	Value        []byte
	Check        bool
	PrevRevision uint64
	Exists       bool
}

// CheckOps checks what every backend's Batch refuses before it talks to the store: an empty
// key, a key twice, an Exists op that also writes or checks a revision.
func CheckOps(ops []Op) error {
	seen := make(map[string]struct{}, len(ops))
	for i, op := range ops {
		if op.Key == "" {
			return fmt.Errorf("op %d: %w", i, errclass.Invalid("key", "", "must not be empty"))
		}
		if _, dup := seen[op.Key]; dup {
			return fmt.Errorf("op %d: %w", i, errclass.Invalid("key", op.Key, "appears more than once in the batch"))
		}
		seen[op.Key] = struct{}{}
		if op.Exists && (op.Value != nil || op.Check || op.PrevRevision != 0) {
			return fmt.Errorf("op %d: %w", i, errclass.Invalid("key", op.Key, "an Exists op writes nothing and checks no revision"))
		}
	}
	return nil
}

// Leaser is a capability of stores whose keys can carry a time to live: etcd leases, Consul
// sessions, and an in-process equivalent in bbolt. The Controller uses it for the host registry.
// Every backend in this module implements it.
type Leaser interface {
	// Grant starts a lease of about ttl and keeps it alive in the background until Revoke, or
	// until renewals fail for longer than the TTL. A backend may round ttl up to its minimum
	// (Consul: 10s), never down; Lease.TTL says what was granted. ttl <= 0 is
	// ErrInvalidParameter.
	Grant(ctx context.Context, ttl time.Duration) (Lease, error)
}

// Lease ties keys to the liveness of their writer. When the lease ends (Revoke, or its TTL runs
// out without a renewal, as when the writer crashes or loses the store), the store deletes its
// keys, and watchers see EventDelete for each.
type Lease interface {
	// AtomicPut writes key bound to this lease, with the semantics of Store.AtomicPut
	// (prevRevision 0: create-only). After the lease ended: ErrLeaseEnded.
	AtomicPut(ctx context.Context, key string, value []byte, prevRevision uint64) (uint64, error)
	// TTL is the time to live the store granted.
	TTL() time.Duration
	// Done is closed when the lease has ended, when renewals have failed for a whole TTL, when
	// the TTL has run out after Abandon, or when the Store was closed (it renews no more): its
	// keys are gone or may be.
	Done() <-chan struct{}
	// Revoke ends the lease now and deletes its keys. Revoking an ended lease returns nil.
	Revoke(ctx context.Context) error
	// Abandon stops renewing without revoking: the keys stay until the TTL runs out, as after a
	// crash. It is what Store.Close does to the leases still open.
	Abandon()
}

// Locker is a capability of stores that offer a distributed lock (etcd's concurrency mutex,
// Consul's session lock, an in-process lock in bbolt). Every backend in this module implements it.
type Locker interface {
	// Lock blocks until the caller holds the lock named key, or ctx is done (then ctx's error).
	// The lock is held through a lease of the backend's lock TTL: if its holder dies, the lock
	// frees itself when the TTL runs out. The lock owns the keys under key + "/" and writes no
	// key outside them.
	Lock(ctx context.Context, key string) (Unlocker, error)
}

// Unlocker is a held lock.
type Unlocker interface {
	// Unlock releases the lock. After the lock was lost: ErrLockLost. Unlock of a lock
	// already unlocked returns nil and does nothing (it never releases a later holder's lock).
	Unlock(ctx context.Context) error
	// Lost is closed if the lock ends while held without Unlock (its lease expired).
	Lost() <-chan struct{}
}

// CheckCall is what a backend checks before each call, in this order: ctx's error (returned as
// it is), then ErrClosed when closed. Backends share it so that all of them answer a cancelled
// or closed call alike.
func CheckCall(ctx context.Context, closed bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if closed {
		return ErrClosed
	}
	return nil
}

// CheckWrite is CheckCall for a write of key, which must not be empty.
func CheckWrite(ctx context.Context, closed bool, key string) error {
	if err := CheckCall(ctx, closed); err != nil {
		return err
	}
	if key == "" {
		return errclass.Invalid("key", key, "must not be empty")
	}
	return nil
}
