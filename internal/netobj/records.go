package netobj

import (
	"context"
	"errors"
	"fmt"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/kvstore"
)

// Records is where a network's record and its endpoints' records live, and the rules that come
// with the place. The Controller chooses it by the driver's DataScope, never by guessing from a
// store or a host name: LocalRecords for a local-scope driver; the cluster's (cluster.Cluster)
// for a global-scope driver, where every host shares the records, a name is unique across the
// hosts, and a deletion is fenced against endpoint creation on the other hosts.
type Records interface {
	// Scope returns where the records live: drivers.LocalScope or drivers.GlobalScope.
	Scope() drivers.Scope
	// Store returns the store of the network's and its endpoints' records.
	Store() kvstore.Store
	// Host returns this host's name, stamped on the endpoints it creates; "" for local records.
	Host() string
	// CreateNetwork stores the record (encoded as b) of a new network: create-only, and
	// refused with an error matching cnm.ErrAlreadyExists when the name is taken in the
	// records' scope.
	CreateNetwork(ctx context.Context, rec Record, b []byte) error
	// CreateEndpoint stores b, the first record of a new endpoint of network rec, under key:
	// create-only, and fenced against the network's deletion. It fails with an error matching
	// cnm.ErrConflict when the network is being deleted, or is gone, and then leaves no record
	// behind (or, when the store did not answer, has its owner delete it once it does: see
	// Uncertain). It returns the record's revision.
	CreateEndpoint(ctx context.Context, rec Record, key string, b []byte) (uint64, error)
	// PutEndpoints is CreateEndpoint of the records kvs (their Key and Value) in one
	// transaction, for a writer that retries until it knows the outcome (WriteBehind): a write
	// the store did not answer is not handed to Uncertain. A single record already at its key
	// counts as written (an earlier try that landed): its revision is returned. With several,
	// one already there fails the whole with an error matching kvstore.ErrKeyExists, and the
	// caller writes them one by one.
	PutEndpoints(ctx context.Context, rec Record, kvs []kvstore.KVPair) (uint64, error)
	// BeginDelete starts the deletion of network rec. It fails with an error matching
	// cnm.ErrConflict while any host has endpoints on the network. On success the caller
	// removes the network's driver state and calls finish: with ok true to remove the records,
	// false to give the deletion up.
	BeginDelete(ctx context.Context, rec Record) (finish func(ctx context.Context, ok bool) error, err error)
	// Uncertain is told of a write of keys that failed with err. When err says the store did
	// not answer (cnm.ErrUnavailable) the write may yet take effect: the records' owner deletes
	// the keys once the store answers again. Other errors are ignored.
	Uncertain(err error, keys ...UncertainKey)
}

// LocalRecords returns the Records of local-scope networks: their records in store s, names
// unique in the Controller (which checks them), nothing to fence.
func LocalRecords(s kvstore.Store) Records { return localRecords{s} }

type localRecords struct{ s kvstore.Store }

func (l localRecords) Scope() drivers.Scope           { return drivers.LocalScope }
func (l localRecords) Store() kvstore.Store           { return l.s }
func (l localRecords) Host() string                   { return "" }
func (localRecords) Uncertain(error, ...UncertainKey) {}

func (l localRecords) CreateNetwork(ctx context.Context, rec Record, b []byte) error {
	_, err := l.s.AtomicPut(ctx, Key(rec.ID), b, 0)
	return err
}

func (l localRecords) CreateEndpoint(ctx context.Context, _ Record, key string, b []byte) (uint64, error) {
	return l.s.AtomicPut(ctx, key, b, 0)
}

func (l localRecords) PutEndpoints(ctx context.Context, _ Record, kvs []kvstore.KVPair) (uint64, error) {
	var rev uint64
	for _, kv := range kvs {
		r, err := l.s.AtomicPut(ctx, kv.Key, kv.Value, 0)
		if errors.Is(err, kvstore.ErrKeyExists) && len(kvs) == 1 {
			got, gerr := l.s.Get(ctx, kv.Key)
			if gerr != nil {
				return 0, gerr
			}
			return got.Revision, nil
		}
		if err != nil {
			return 0, err
		}
		rev = r
	}
	return rev, nil
}

func (l localRecords) BeginDelete(ctx context.Context, rec Record) (func(context.Context, bool) error, error) {
	return func(ctx context.Context, ok bool) error {
		if !ok {
			return nil
		}
		if err := l.s.Delete(ctx, Key(rec.ID)); err != nil {
			return fmt.Errorf("store: %w", err)
		}
		return nil
	}, nil
}
