package kvstoretest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cnmkit/cnm/kvstore"
)

// blockedFor is how long a Lock that must wait is watched to check that it does not return.
const blockedFor = 300 * time.Millisecond

// lockers returns the Lockers of p's two handles, or skips the test when s is none.
func lockers(t *testing.T, p pair) (first, second kvstore.Locker) {
	t.Helper()
	first, ok := p.s.(kvstore.Locker)
	if !ok {
		t.Skipf("%T does not implement kvstore.Locker", p.s)
	}
	second, ok = p.second.(kvstore.Locker)
	if !ok {
		t.Fatalf("second handle %T does not implement kvstore.Locker, though %T does", p.second, p.s)
	}
	return first, second
}

// mustLock takes the lock named key within eventTimeout.
func mustLock(t *testing.T, l kvstore.Locker, key string) kvstore.Unlocker {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), eventTimeout)
	defer cancel()
	u, err := l.Lock(ctx, key)
	if err != nil {
		t.Fatalf("Lock(%s): %v", key, err)
	}
	select {
	case <-u.Lost():
		t.Fatalf("Lock(%s): Lost closed on a lock just taken", key)
	default:
	}
	return u
}

// mustUnlock releases u.
func mustUnlock(t *testing.T, u kvstore.Unlocker, key string) {
	t.Helper()
	if err := u.Unlock(t.Context()); err != nil {
		t.Fatalf("Unlock(%s): %v", key, err)
	}
}

// lockResult is what a Lock started in the background returned.
type lockResult struct {
	u   kvstore.Unlocker
	err error
}

// lockAsync calls Lock in a goroutine that the test waits for at its end (releasing the lock
// if it got it late).
func lockAsync(t *testing.T, ctx context.Context, l kvstore.Locker, key string) <-chan lockResult {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	res := make(chan lockResult, 1)
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		u, err := l.Lock(ctx, key)
		res <- lockResult{u, err}
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-ended:
		case <-time.After(eventTimeout):
			t.Errorf("Lock(%s) did not return within %v of its context's end", key, eventTimeout)
			return // leaks the goroutine rather than hang the suite
		}
		select {
		case r := <-res: // nobody took it: release what it got
			if r.err == nil {
				_ = r.u.Unlock(context.Background())
			}
		default:
		}
	})
	return res
}

// expectBlocked fails the test if res delivers within blockedFor.
func expectBlocked(t *testing.T, res <-chan lockResult, why string) {
	t.Helper()
	select {
	case r := <-res:
		if r.err == nil {
			_ = r.u.Unlock(context.Background())
		}
		t.Fatalf("Lock returned (error %v) %s", r.err, why)
	case <-time.After(blockedFor):
	}
}

// awaitLock waits up to eventTimeout for res.
func awaitLock(t *testing.T, res <-chan lockResult, what string) lockResult {
	t.Helper()
	select {
	case r := <-res:
		return r
	case <-time.After(eventTimeout):
		t.Fatalf("%s: Lock did not return within %v", what, eventTimeout)
	}
	panic("unreachable")
}

// testLockExclusion runs read-modify-write cycles without compare-and-swap under one lock,
// from goroutines on both handles: no two may overlap, and no increment may be lost.
func testLockExclusion(t *testing.T, p pair) {
	const (
		workers = 6
		rounds  = 5
		key     = "lx/lock"
		counter = "lx/counter"
	)
	first, second := lockers(t, p)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	var inside atomic.Int32
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		l, s := first, p.s
		if w%2 == 1 {
			l, s = second, p.second
		}
		wg.Go(func() {
			for range rounds {
				if err := increment(ctx, l, s, key, counter, &inside); err != nil {
					errs <- fmt.Errorf("worker %d: %w", w, err)
					cancel()
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got, want := string(mustGet(t, p.second, counter).Value), strconv.Itoa(workers*rounds); got != want {
		t.Errorf("counter = %s after %d×%d locked increments, want %s", got, workers, rounds, want)
	}
}

// increment adds one to the counter under the lock, with a plain Get and Put.
func increment(ctx context.Context, l kvstore.Locker, s kvstore.Store, key, counter string, inside *atomic.Int32) error {
	u, err := l.Lock(ctx, key)
	if err != nil {
		return fmt.Errorf("Lock: %w", err)
	}
	if n := inside.Add(1); n != 1 {
		inside.Add(-1)
		_ = u.Unlock(context.WithoutCancel(ctx))
		return fmt.Errorf("%d holders of the lock at once", n)
	}
	n := 0
	p, err := s.Get(ctx, counter)
	switch {
	case errors.Is(err, kvstore.ErrKeyNotFound):
		err = nil // the first increment
	case err != nil:
		err = fmt.Errorf("Get: %w", err)
	default:
		n, err = strconv.Atoi(string(p.Value))
	}
	if err == nil {
		_, err = s.Put(ctx, counter, []byte(strconv.Itoa(n+1)))
	}
	inside.Add(-1)
	return errors.Join(err, u.Unlock(context.WithoutCancel(ctx)))
}

// testLockBlocks checks that Lock waits while another handle holds the lock and returns
// once it is released.
func testLockBlocks(t *testing.T, p pair) {
	first, second := lockers(t, p)
	u := mustLock(t, first, "lb/lock")
	res := lockAsync(t, t.Context(), second, "lb/lock")
	expectBlocked(t, res, "while the lock was held")
	mustUnlock(t, u, "lb/lock")
	r := awaitLock(t, res, "after Unlock")
	if r.err != nil {
		t.Fatalf("Lock after Unlock: %v", r.err)
	}
	mustUnlock(t, r.u, "lb/lock")
}

// testLockCancel checks that a waiting Lock returns its context's error when the context
// ends, and leaves the lock free for others once the holder releases it.
func testLockCancel(t *testing.T, p pair) {
	first, second := lockers(t, p)
	u := mustLock(t, first, "lc/lock")

	ctx, cancel := context.WithCancel(t.Context())
	res := lockAsync(t, ctx, second, "lc/lock")
	expectBlocked(t, res, "while the lock was held")
	cancel()
	if r := awaitLock(t, res, "after cancel"); !errors.Is(r.err, context.Canceled) {
		if r.err == nil {
			_ = r.u.Unlock(t.Context())
		}
		t.Fatalf("Lock whose context was cancelled: error = %v, want context.Canceled", r.err)
	}

	ctx, cancelTimeout := context.WithTimeout(t.Context(), blockedFor)
	defer cancelTimeout()
	if _, err := second.Lock(ctx, "lc/lock"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Lock past its context's deadline: error = %v, want context.DeadlineExceeded", err)
	}
	ctx, cancel = context.WithCancel(t.Context())
	cancel()
	if _, err := first.Lock(ctx, "lc/lock"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Lock with a cancelled context: error = %v, want context.Canceled", err)
	}

	// The abandoned waits took nothing: once released, both handles get the lock at once.
	mustUnlock(t, u, "lc/lock")
	mustUnlock(t, mustLock(t, second, "lc/lock"), "lc/lock")
	mustUnlock(t, mustLock(t, first, "lc/lock"), "lc/lock")
}

// testLockNamesIndependent checks that locks with other names, even sharing a prefix, do
// not wait for a held one.
func testLockNamesIndependent(t *testing.T, p pair) {
	first, second := lockers(t, p)
	a := mustLock(t, first, "ln/a")
	b := mustLock(t, second, "ln/b")
	ab := mustLock(t, second, "ln/ab")
	mustUnlock(t, ab, "ln/ab")
	mustUnlock(t, b, "ln/b")
	mustUnlock(t, a, "ln/a")
}

// testLockUnlockTwice checks that a second Unlock returns nil and does not release the lock
// that another holder took in the meantime.
func testLockUnlockTwice(t *testing.T, p pair) {
	first, second := lockers(t, p)
	u := mustLock(t, first, "lu/lock")
	mustUnlock(t, u, "lu/lock")
	other := mustLock(t, second, "lu/lock")
	if err := u.Unlock(t.Context()); err != nil {
		t.Errorf("second Unlock = %v, want nil", err)
	}
	res := lockAsync(t, t.Context(), first, "lu/lock")
	expectBlocked(t, res, "after a stale Unlock, while another holder had the lock")
	mustUnlock(t, other, "lu/lock")
	r := awaitLock(t, res, "after Unlock")
	if r.err != nil {
		t.Fatalf("Lock after Unlock: %v", r.err)
	}
	mustUnlock(t, r.u, "lu/lock")
}

// testLockKeysApart checks that a lock writes no key outside key + "/", so that a List of
// the data next to it sees only the data.
func testLockKeysApart(t *testing.T, p pair) {
	ctx := t.Context()
	first, second := lockers(t, p)
	rev := mustPut(t, p.s, "lka/data/1", "d")
	u1 := mustLock(t, first, "lka/lock")
	u2 := lockAsync(t, ctx, second, "lka/lock") // a waiter may write keys too
	expectBlocked(t, u2, "while the lock was held")

	want := []kvstore.KVPair{{Key: "lka/data/1", Value: []byte("d"), Revision: rev}}
	got, err := p.second.List(ctx, "lka/data/")
	if err != nil {
		t.Fatalf("List(lka/data/): %v", err)
	}
	if !slices.EqualFunc(got, want, pairEqual) {
		t.Errorf("List(lka/data/) with the lock held = %s, want %s", fmtPairs(got), fmtPairs(want))
	}
	all, err := p.second.List(ctx, "lka/")
	if err != nil {
		t.Fatalf("List(lka/): %v", err)
	}
	all = slices.DeleteFunc(all, func(kv kvstore.KVPair) bool { return strings.HasPrefix(kv.Key, "lka/lock/") })
	if !slices.EqualFunc(all, want, pairEqual) {
		t.Errorf("List(lka/) without the keys under lka/lock/ = %s, want %s", fmtPairs(all), fmtPairs(want))
	}
	mustUnlock(t, u1, "lka/lock")
	if r := awaitLock(t, u2, "after Unlock"); r.err != nil {
		t.Fatalf("Lock after Unlock: %v", r.err)
	} else {
		mustUnlock(t, r.u, "lka/lock")
	}
}
