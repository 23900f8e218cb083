package kvstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cnmkit/cnm/internal/errclass"
)

// Bounded is a Store whose every call but Watch is bounded by a timeout: a store that does not
// answer in time fails the call with an error matching ErrUnavailable (and cnm.ErrUnavailable)
// instead of hanging it. A caller's own deadline or cancellation is reported as it is. It
// implements Batcher, refusing a batch with an error matching ErrNotSupported when the store
// it bounds cannot batch. Close does nothing: the bounded store's owner closes it. Leases and
// locks wait by design: use Unwrap for them.
type Bounded struct {
	s Store
	d time.Duration
}

var (
	_ Store   = Bounded{}
	_ Batcher = Bounded{}
)

// Bound returns s with each call bounded by d (d <= 0: s as it is, in a Bounded).
func Bound(s Store, d time.Duration) Bounded { return Bounded{s: s, d: d} }

// Unwrap returns the store that b bounds.
func (b Bounded) Unwrap() Store { return b.s }

// Timeout returns the bound of each call.
func (b Bounded) Timeout() time.Duration { return b.d }

func (b Bounded) ctx(parent context.Context) (context.Context, context.CancelFunc) {
	if b.d <= 0 {
		return parent, func() {}
	}
	return context.WithTimeout(parent, b.d)
}

// Unavailable turns the expiry of a bound (ctx, derived from parent) into an error matching
// ErrUnavailable; any other err is returned as it is.
func Unavailable(ctx, parent context.Context, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.DeadlineExceeded) && parent.Err() == nil && ctx.Err() != nil {
		return fmt.Errorf("%w: no answer in time: %v", ErrUnavailable, err)
	}
	return err
}

// Get implements Store.
func (b Bounded) Get(ctx context.Context, key string) (KVPair, error) {
	bctx, cancel := b.ctx(ctx)
	defer cancel()
	kv, err := b.s.Get(bctx, key)
	return kv, Unavailable(bctx, ctx, err)
}

// Put implements Store.
func (b Bounded) Put(ctx context.Context, key string, value []byte) (uint64, error) {
	bctx, cancel := b.ctx(ctx)
	defer cancel()
	rev, err := b.s.Put(bctx, key, value)
	return rev, Unavailable(bctx, ctx, err)
}

// AtomicPut implements Store.
func (b Bounded) AtomicPut(ctx context.Context, key string, value []byte, prev uint64) (uint64, error) {
	bctx, cancel := b.ctx(ctx)
	defer cancel()
	rev, err := b.s.AtomicPut(bctx, key, value, prev)
	return rev, Unavailable(bctx, ctx, err)
}

// Delete implements Store.
func (b Bounded) Delete(ctx context.Context, key string) error {
	bctx, cancel := b.ctx(ctx)
	defer cancel()
	return Unavailable(bctx, ctx, b.s.Delete(bctx, key))
}

// AtomicDelete implements Store.
func (b Bounded) AtomicDelete(ctx context.Context, key string, prev uint64) error {
	bctx, cancel := b.ctx(ctx)
	defer cancel()
	return Unavailable(bctx, ctx, b.s.AtomicDelete(bctx, key, prev))
}

// List implements Store.
func (b Bounded) List(ctx context.Context, prefix string) ([]KVPair, error) {
	bctx, cancel := b.ctx(ctx)
	defer cancel()
	kvs, err := b.s.List(bctx, prefix)
	return kvs, Unavailable(bctx, ctx, err)
}

// Batch implements Batcher.
func (b Bounded) Batch(ctx context.Context, ops []Op) (uint64, error) {
	bs, ok := b.s.(Batcher)
	if !ok {
		return 0, &errclass.NotSupportedError{What: "a store without transactions (kvstore.Batcher)"}
	}
	bctx, cancel := b.ctx(ctx)
	defer cancel()
	rev, err := bs.Batch(bctx, ops)
	return rev, Unavailable(bctx, ctx, err)
}

// Watch implements Store; it is not bounded (a watch lasts until ctx ends).
func (b Bounded) Watch(ctx context.Context, prefix string, from uint64) (<-chan Event, error) {
	return b.s.Watch(ctx, prefix, from)
}

// Close does nothing: Bounded does not own the store it bounds.
func (b Bounded) Close() error { return nil }
