package kvstoretest

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/cnmkit/cnm/kvstore"
)

// expirySlack is added to 2×TTL to bound the wait for an abandoned lease to end: the time a
// backend may take past the TTL to notice and delete (etcd checks expiries every 500ms; Consul
// invalidates a session up to 2×TTL after its last renewal), plus the watch delivering the
// deletes.
const expirySlack = 10 * time.Second

// leaserOf returns s as a Leaser, or skips the test when it is none.
func leaserOf(t *testing.T, s kvstore.Store) kvstore.Leaser {
	t.Helper()
	l, ok := s.(kvstore.Leaser)
	if !ok {
		t.Skipf("%T does not implement kvstore.Leaser", s)
	}
	return l
}

// secondLeaser returns p.second as a Leaser; the second handle of a Leaser must be one too.
func secondLeaser(t *testing.T, p pair) kvstore.Leaser {
	t.Helper()
	l, ok := p.second.(kvstore.Leaser)
	if !ok {
		t.Fatalf("second handle %T does not implement kvstore.Leaser, though %T does", p.second, p.s)
	}
	return l
}

// grant grants a lease of ttl and checks what was granted.
func grant(t *testing.T, l kvstore.Leaser, ttl time.Duration) kvstore.Lease {
	t.Helper()
	lease, err := l.Grant(t.Context(), ttl)
	if err != nil {
		t.Fatalf("Grant(%v): %v", ttl, err)
	}
	if lease.TTL() < ttl {
		t.Fatalf("Grant(%v) granted TTL %v, want at least what was asked", ttl, lease.TTL())
	}
	select {
	case <-lease.Done():
		t.Fatalf("Done of a new lease is closed")
	default:
	}
	return lease
}

// leasePut binds key to lease with a create-only AtomicPut and returns its revision.
func leasePut(t *testing.T, lease kvstore.Lease, key, value string) uint64 {
	t.Helper()
	rev, err := lease.AtomicPut(t.Context(), key, []byte(value), 0)
	if err != nil {
		t.Fatalf("Lease.AtomicPut(%s, create): %v", key, err)
	}
	return rev
}

// expectDone fails the test unless lease.Done() is closed by deadline.
func expectDone(t *testing.T, what string, lease kvstore.Lease, deadline time.Time) {
	t.Helper()
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	select {
	case <-lease.Done():
	case <-timer.C:
		t.Errorf("Done of the %s lease not closed in time", what)
	}
}

// testLeaseKeys binds keys to a lease, checks that others see them and that Revoke deletes
// exactly them, then checks the ended lease.
func testLeaseKeys(t *testing.T, p pair) {
	ctx := t.Context()
	lease := grant(t, leaserOf(t, p.s), p.ttl)

	rTaken := mustPut(t, p.s, "lk/taken", "x")
	rA := leasePut(t, lease, "lk/a", "1")
	rB := leasePut(t, lease, "lk/b", "2")
	rC := mustPut(t, p.s, "lk/c", "plain")

	// Create-only through a lease follows Store.AtomicPut: it neither overwrites nor binds.
	for _, key := range []string{"lk/taken", "lk/a"} {
		_, err := lease.AtomicPut(ctx, key, []byte("again"), 0)
		if !errors.Is(err, kvstore.ErrKeyExists) {
			t.Fatalf("Lease.AtomicPut(%s, create) on an existing key: error = %v, want ErrKeyExists", key, err)
		}
		if !strings.Contains(err.Error(), key) {
			t.Errorf("Lease.AtomicPut error %q does not name the key", err)
		}
	}
	// So does compare-and-swap: a stale revision fails, the current one writes and binds.
	if _, err := lease.AtomicPut(ctx, "lk/b", []byte("stale"), rA); !errors.Is(err, kvstore.ErrKeyModified) {
		t.Fatalf("Lease.AtomicPut(lk/b, stale revision %d) error = %v, want ErrKeyModified", rA, err)
	}
	rB2, err := lease.AtomicPut(ctx, "lk/b", []byte("2b"), rB)
	if err != nil {
		t.Fatalf("Lease.AtomicPut(lk/b, revision %d): %v", rB, err)
	}
	rC2, err := lease.AtomicPut(ctx, "lk/c", []byte("leased"), rC) // binds a key written before
	if err != nil {
		t.Fatalf("Lease.AtomicPut(lk/c, revision %d): %v", rC, err)
	}
	revs := []uint64{rTaken, rA, rB, rC, rB2, rC2}
	for i := 1; i < len(revs); i++ {
		if revs[i] <= revs[i-1] {
			t.Fatalf("revisions %v of successive writes do not grow strictly", revs)
		}
	}

	// The second handle sees the bound keys like any other.
	if got := mustGet(t, p.second, "lk/a"); !pairEqual(got, kvstore.KVPair{Key: "lk/a", Value: []byte("1"), Revision: rA}) {
		t.Errorf("second handle: Get(lk/a) = %s, want value 1 revision %d", fmtPair(got), rA)
	}
	list, err := p.second.List(ctx, "lk/")
	if err != nil {
		t.Fatalf("second handle: List(lk/): %v", err)
	}
	want := []kvstore.KVPair{
		{Key: "lk/a", Value: []byte("1"), Revision: rA},
		{Key: "lk/b", Value: []byte("2b"), Revision: rB2},
		{Key: "lk/c", Value: []byte("leased"), Revision: rC2},
		{Key: "lk/taken", Value: []byte("x"), Revision: rTaken},
	}
	if !slices.EqualFunc(list, want, pairEqual) {
		t.Errorf("second handle: List(lk/) = %s\nwant %s", fmtPairs(list), fmtPairs(want))
	}

	// Revoke deletes the bound keys, and only those; a watcher sees a delete for each.
	ch, err := p.second.Watch(ctx, "lk/", rC2)
	if err != nil {
		t.Fatalf("second handle: Watch(lk/, %d): %v", rC2, err)
	}
	if err := lease.Revoke(ctx); err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	var deleted []string
	for range 3 {
		ev := recv(t, ch)
		if ev.Type != kvstore.EventDelete || ev.Pair.Revision <= rC2 || ev.Pair.Value != nil {
			t.Errorf("event after Revoke = %s, want a delete above revision %d with nil value", fmtEvent(ev), rC2)
		}
		deleted = append(deleted, ev.Pair.Key)
	}
	slices.Sort(deleted)
	if want := []string{"lk/a", "lk/b", "lk/c"}; !slices.Equal(deleted, want) {
		t.Errorf("keys deleted by Revoke = %q, want %q", deleted, want)
	}
	rEnd := mustPut(t, p.s, "lk/end", "1") // nothing else may come before it
	expectEvent(t, ch, kvstore.EventPut, "lk/end", "1", rEnd)
	for _, key := range []string{"lk/a", "lk/b", "lk/c"} {
		if _, err := p.second.Get(ctx, key); !errors.Is(err, kvstore.ErrKeyNotFound) {
			t.Errorf("second handle: Get(%s) after Revoke error = %v, want ErrKeyNotFound", key, err)
		}
	}
	if got := mustGet(t, p.second, "lk/taken"); !pairEqual(got, kvstore.KVPair{Key: "lk/taken", Value: []byte("x"), Revision: rTaken}) {
		t.Errorf("Revoke touched a key the lease never bound: %s", fmtPair(got))
	}

	// The lease has ended.
	expectDone(t, "revoked", lease, time.Now().Add(eventTimeout))
	_, err = lease.AtomicPut(ctx, "lk/late", []byte("1"), 0)
	if !errors.Is(err, kvstore.ErrLeaseEnded) {
		t.Errorf("Lease.AtomicPut after Revoke error = %v, want ErrLeaseEnded", err)
	}
	if _, err := p.s.Get(ctx, "lk/late"); !errors.Is(err, kvstore.ErrKeyNotFound) {
		t.Errorf("Lease.AtomicPut after Revoke wrote the key: Get error = %v", err)
	}
	if err := lease.Revoke(ctx); err != nil {
		t.Errorf("second Revoke = %v, want nil", err)
	}
}

// testLeaseExpiry waits once for leases to run out. The abandoned lease's key outlives
// Abandon by a while and is gone within about 2×TTL; the kept lease's key is still there
// after that; and, when the second handle is another client, a lease of a store that is
// closed runs out like an abandoned one (Close abandons, it does not revoke), as the second
// handle sees it.
func testLeaseExpiry(t *testing.T, p pair) {
	ctx := t.Context()
	leaser := leaserOf(t, p.s)
	keeper := leaser // grants the leases that are not closed with p.s
	if p.distinct {
		keeper = secondLeaser(t, p)
	}
	abandoned := grant(t, keeper, p.ttl)
	kept := grant(t, keeper, p.ttl)
	ttl := max(abandoned.TTL(), kept.TTL())
	leasePut(t, kept, "le/kept", "k")
	rLast := leasePut(t, abandoned, "le/abandoned", "a")
	gone := []string{"le/abandoned"}
	var closing kvstore.Lease
	if p.distinct {
		closing = grant(t, leaser, p.ttl)
		ttl = max(ttl, closing.TTL())
		rLast = leasePut(t, closing, "le/closed", "c")
		gone = append(gone, "le/closed")
	}
	ch, err := p.second.Watch(ctx, "le/", rLast)
	if err != nil {
		t.Fatalf("second handle: Watch(le/, %d): %v", rLast, err)
	}

	start := time.Now()
	abandoned.Abandon()
	if closing != nil {
		if err := p.closeFirst(); err != nil {
			t.Fatalf("Close: %v", err)
		}
	}
	// Neither Abandon nor Close deletes anything: the keys stay until the TTL runs out.
	for _, key := range gone {
		_, err := p.second.Get(ctx, key)
		switch {
		case err == nil:
		case errors.Is(err, kvstore.ErrKeyNotFound) && time.Since(start) < ttl/2:
			t.Errorf("second handle: %s gone right after its lease was abandoned (TTL %v)", key, ttl)
		case errors.Is(err, kvstore.ErrKeyNotFound):
			t.Logf("second handle: %s gone %v after Abandon, too late to tell Abandon from Revoke", key, time.Since(start))
		default:
			t.Fatalf("second handle: Get(%s): %v", key, err)
		}
	}

	// Each abandoned key is deleted, not before TTL/2 and within 2×TTL plus slack.
	deadline := start.Add(2*ttl + expirySlack)
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	pending := slices.Clone(gone)
	for len(pending) > 0 {
		select {
		case ev, ok := <-ch:
			if !ok {
				t.Fatalf("watch channel closed while waiting for %q to expire", pending)
			}
			if ev.Type != kvstore.EventDelete || !slices.Contains(pending, ev.Pair.Key) {
				t.Fatalf("event %s while waiting for the deletes of %q", fmtEvent(ev), pending)
			}
			if d := time.Since(start); d < ttl/2 {
				t.Errorf("%s deleted %v after Abandon, before TTL/2 (TTL %v)", ev.Pair.Key, d, ttl)
			}
			pending = slices.DeleteFunc(pending, func(k string) bool { return k == ev.Pair.Key })
		case <-timer.C:
			t.Fatalf("%q not deleted within %v of Abandon (TTL %v)", pending, 2*ttl+expirySlack, ttl)
		}
	}
	expired := time.Since(start)
	for _, key := range gone {
		if _, err := p.second.Get(ctx, key); !errors.Is(err, kvstore.ErrKeyNotFound) {
			t.Errorf("second handle: Get(%s) after its delete event: error = %v, want ErrKeyNotFound", key, err)
		}
	}
	expectDone(t, "abandoned", abandoned, deadline)
	if closing != nil {
		expectDone(t, "closed store's", closing, deadline)
	}
	if _, err := abandoned.AtomicPut(ctx, "le/late", []byte("1"), 0); !errors.Is(err, kvstore.ErrLeaseEnded) {
		t.Errorf("Lease.AtomicPut on an expired lease: error = %v, want ErrLeaseEnded", err)
	}

	// Meanwhile the kept lease was renewed: its key is still there past 2×TTL.
	renewed := 2*ttl + ttl/4
	if wait := renewed - time.Since(start); wait > 0 {
		timer.Reset(wait)
		select {
		case ev, ok := <-ch:
			if ok {
				t.Fatalf("event %s while the kept lease should keep its key", fmtEvent(ev))
			}
			t.Fatalf("watch channel closed")
		case <-timer.C:
		}
	}
	if got := mustGet(t, p.second, "le/kept"); string(got.Value) != "k" {
		t.Errorf("second handle: Get(le/kept) = %s, want value k", fmtPair(got))
	}
	select {
	case <-kept.Done():
		t.Errorf("Done of the kept lease closed after %v (TTL %v)", time.Since(start), ttl)
	default:
	}
	t.Logf("TTL %v: abandoned keys gone after %v; kept key there after %v", ttl, expired, time.Since(start))
	if err := kept.Revoke(ctx); err != nil {
		t.Errorf("Revoke(kept): %v", err)
	}
	if _, err := p.second.Get(ctx, "le/kept"); !errors.Is(err, kvstore.ErrKeyNotFound) {
		t.Errorf("second handle: Get(le/kept) after Revoke: error = %v, want ErrKeyNotFound", err)
	}
}

// testLeaseInvalidTTL checks that Grant refuses a TTL that is not positive.
func testLeaseInvalidTTL(t *testing.T, p pair) {
	l := leaserOf(t, p.s)
	for _, ttl := range []time.Duration{0, -time.Second} {
		lease, err := l.Grant(t.Context(), ttl)
		if !errors.Is(err, errclass.ErrInvalidParameter) {
			t.Errorf("Grant(%v) error = %v, want ErrInvalidParameter", ttl, err)
		}
		if lease != nil {
			t.Errorf("Grant(%v) returned a lease with its error", ttl)
			_ = lease.Revoke(context.WithoutCancel(t.Context()))
		}
	}
}
