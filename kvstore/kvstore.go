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
type Op struct {
	Key          string
	Value        []byte
	Check        bool
	PrevRevision uint64
}
