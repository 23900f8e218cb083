package etcd_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/cnmkit/cnm/internal/storetest"
	"github.com/cnmkit/cnm/kvstore"
	"github.com/cnmkit/cnm/kvstore/etcd"
)

// TestLockLost takes a lock and a lease, then keeps etcd away for longer than their TTL:
// Lost and Done close, Unlock says ErrLockLost, the lease refuses new keys, and once etcd is
// back another client gets the lock.
func TestLockLost(t *testing.T) {
	cluster := storetest.StartEtcd(t)
	ctx := t.Context()
	cfg := etcd.Config{Prefix: uniquePrefix(t), RequestTimeout: time.Second, LockTTL: 2 * time.Second}
	s := openClosed(t, cluster.Endpoints(), cfg)

	u, err := s.Lock(ctx, "ll/lock")
	if err != nil {
		t.Fatalf("Lock: %v", err)
	}
	lease, err := s.Grant(ctx, 2*time.Second)
	if err != nil {
		t.Fatalf("Grant: %v", err)
	}
	ttl := lease.TTL()
	if _, err := lease.AtomicPut(ctx, "ll/leased", []byte("1"), 0); err != nil {
		t.Fatalf("Lease.AtomicPut: %v", err)
	}

	cluster.Stop(0)
	start := time.Now()
	// The client gives up a keep-alive a TTL after its last renewal, and checks every second.
	bound := ttl + 2*time.Second
	for what, ch := range map[string]<-chan struct{}{"Lost": u.Lost(), "Done": lease.Done()} {
		select {
		case <-ch:
			t.Logf("%s closed %v after etcd went away (TTL %v)", what, time.Since(start).Round(time.Millisecond), ttl)
		case <-time.After(bound - time.Since(start)):
			t.Fatalf("%s not closed within %v of etcd going away (TTL %v)", what, bound, ttl)
		}
	}

	cluster.Start(0)
	if err := u.Unlock(ctx); !errors.Is(err, kvstore.ErrLockLost) {
		t.Errorf("Unlock of a lost lock: error = %v, want ErrLockLost", err)
	}
	if _, err := lease.AtomicPut(ctx, "ll/late", []byte("1"), 0); !errors.Is(err, kvstore.ErrLeaseEnded) {
		t.Errorf("Lease.AtomicPut on a lease that ended: error = %v, want ErrLeaseEnded", err)
	}
	if err := lease.Revoke(ctx); err != nil {
		t.Errorf("Revoke of an ended lease = %v, want nil", err)
	}

	// Another client takes the lock: Unlock revoked what etcd still had, and the TTL bounds
	// the rest.
	other := openClosed(t, cluster.Endpoints(), cfg)
	lctx, cancel := context.WithTimeout(ctx, ttl+5*time.Second)
	defer cancel()
	u2, err := other.Lock(lctx, "ll/lock")
	if err != nil {
		t.Fatalf("Lock by another client after the loss: %v", err)
	}
	if err := u2.Unlock(ctx); err != nil {
		t.Errorf("Unlock: %v", err)
	}
	if _, err := other.Get(ctx, "ll/leased"); !errors.Is(err, kvstore.ErrKeyNotFound) {
		t.Errorf("Get(ll/leased) after its lease ended: error = %v, want ErrKeyNotFound", err)
	}
}

// TestCloseAbandonsLock checks that Close leaves a held lock to its TTL: Lost closes at Close,
// and another client gets the lock once the TTL has run out, not before.
func TestCloseAbandonsLock(t *testing.T) {
	cluster := storetest.StartEtcd(t)
	ctx := t.Context()
	cfg := etcd.Config{Prefix: uniquePrefix(t), LockTTL: 2 * time.Second}
	s := openStore(t, cluster.Endpoints(), cfg)
	u, err := s.Lock(ctx, "ca/lock")
	if err != nil {
		t.Fatalf("Lock: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	closed := time.Now()
	select {
	case <-u.Lost():
	default:
		t.Error("Lost not closed by Close")
	}
	if err := u.Unlock(ctx); !errors.Is(err, kvstore.ErrClosed) {
		t.Errorf("Unlock after Close: error = %v, want ErrClosed", err)
	}

	other := openClosed(t, cluster.Endpoints(), cfg)
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	u2, err := other.Lock(lctx, "ca/lock")
	if err != nil {
		t.Fatalf("Lock after the holder closed its store: %v", err)
	}
	waited := time.Since(closed)
	if waited < time.Second {
		t.Errorf("another client got the lock %v after Close, before the TTL (2s) could run out", waited)
	}
	t.Logf("another client got the lock %v after Close (lock TTL 2s)", waited.Round(time.Millisecond))
	if err := u2.Unlock(ctx); err != nil {
		t.Errorf("Unlock: %v", err)
	}
}
