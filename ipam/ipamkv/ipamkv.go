// Package ipamkv runs an [ipam.Global] on a [kvstore.Store]: it adapts the store to the narrow
// [ipam.GlobalStore] interface that package ipam declares, so that the contract package ipam
// imports no other package of the module.
//
// The adapter holds no state and no goroutines; it does not close the store.
package ipamkv

import (
	"context"

	"github.com/cnmkit/cnm/ipam"
	"github.com/cnmkit/cnm/kvstore"
)

// NewGlobal returns an [ipam.Global] whose state lives in s, as [ipam.NewGlobal] does.
func NewGlobal(s kvstore.Store, cfg ipam.GlobalConfig) (*ipam.Global, error) {
	return ipam.NewGlobal(Adapt(s), cfg)
}

// Adapt returns s as an [ipam.GlobalStore]. kvstore's errors already match the error classes
// GlobalStore asks for, and are passed through unchanged.
func Adapt(s kvstore.Store) ipam.GlobalStore { return store{s} }

type store struct{ s kvstore.Store }

func (a store) Get(ctx context.Context, key string) ([]byte, uint64, error) {
	p, err := a.s.Get(ctx, key)
	return p.Value, p.Revision, err
}

func (a store) AtomicPut(ctx context.Context, key string, value []byte, prev uint64) (uint64, error) {
	return a.s.AtomicPut(ctx, key, value, prev)
}

func (a store) AtomicDelete(ctx context.Context, key string, prev uint64) error {
	return a.s.AtomicDelete(ctx, key, prev)
}

func (a store) List(ctx context.Context, prefix string) ([]ipam.StoreEntry, error) {
	pairs, err := a.s.List(ctx, prefix)
	if err != nil {
		return nil, err
	}
	out := make([]ipam.StoreEntry, len(pairs))
	for i, p := range pairs {
		out[i] = ipam.StoreEntry{Key: p.Key, Value: p.Value, Revision: p.Revision}
	}
	return out, nil
}
