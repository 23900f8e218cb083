package kvstore_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/cnmkit/cnm/kvstore"
)

// hangStore answers nothing until its caller gives up, as a store cut off does.
type hangStore struct{ kvstore.Store }

func (hangStore) Get(ctx context.Context, key string) (kvstore.KVPair, error) {
	<-ctx.Done()
	return kvstore.KVPair{}, ctx.Err()
}

func (hangStore) Batch(ctx context.Context, ops []kvstore.Op) (uint64, error) {
	<-ctx.Done()
	return 0, ctx.Err()
}

func TestBounded(t *testing.T) {
	b := kvstore.Bound(hangStore{}, 20*time.Millisecond)
	start := time.Now()
	if _, err := b.Get(context.Background(), "k"); !errors.Is(err, kvstore.ErrUnavailable) || !errors.Is(err, errclass.ErrUnavailable) {
		t.Fatalf("Get on a store that does not answer = %v, want ErrUnavailable", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("Get took %v, want about the 20ms bound", d)
	}
	if _, err := b.Batch(context.Background(), nil); !errors.Is(err, kvstore.ErrUnavailable) {
		t.Fatalf("Batch = %v, want ErrUnavailable", err)
	}
	// The caller's own deadline is the caller's: not reported as the store's fault.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Millisecond)
	defer cancel()
	if _, err := kvstore.Bound(hangStore{}, time.Minute).Get(ctx, "k"); errors.Is(err, kvstore.ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Get past the caller's deadline = %v, want context.DeadlineExceeded only", err)
	}
	type noBatch struct{ kvstore.Store }
	if _, err := kvstore.Bound(noBatch{}, time.Second).Batch(context.Background(), nil); !errors.Is(err, errclass.ErrNotSupported) {
		t.Fatalf("Batch on a store that cannot batch = %v, want ErrNotSupported", err)
	}
	if b.Unwrap() != (hangStore{}) {
		t.Fatal("Unwrap does not return the bounded store")
	}
}
