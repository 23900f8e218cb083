// Package kvstoretest is the contract suite for [kvstore.Store] backends. Every backend (bbolt,
// etcd, Consul) runs [Run] or [RunWith] from its own tests, so all of them keep the same
// semantics: errors, revisions, compare-and-swap, listing, watching, batches, leases, locks and
// Close.
//
// The suite needs no privileges. It runs its subtests one after the other, each on a fresh
// store, and keeps every wait short and bounded, so a backend that loses an event fails
// rather than hangs. Run it with -race: some subtests write from several goroutines.
//
// The lease and lock subtests ([kvstore.Leaser], [kvstore.Locker]) also work on a second
// handle on the same data ([Options.Second]): another client of the same servers, so that
// lock exclusion holds across clients and lease expiry is seen by a client that did not hold
// the lease. They wait for a TTL once (see [RunWith]) and otherwise assume nothing about
// time beyond what the contract states, nor about revisions beyond their growing with each
// write.
package kvstoretest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/cnmkit/cnm/kvstore"
)

// eventTimeout bounds every wait for a watch event or for a watch channel to close.
const eventTimeout = 5 * time.Second

// Options tunes [RunWith] for a backend. The zero value runs the suite on one handle with
// 1-second leases.
type Options struct {
	// Second returns another handle on the same data as s: for a networked store, a second
	// client of the same servers (and the same key prefix, if newStore isolates stores by
	// prefix), so that lock exclusion and lease expiry are observed from another client. A
	// store that one process holds alone (bbolt) returns s itself. The lease and lock
	// subtests call it once per subtest; RunWith closes the handle it returns (unless it is
	// s) before the cleanups of that subtest's newStore run. Nil means s itself.
	Second func(t *testing.T, s kvstore.Store) kvstore.Store
	// LeaseTTL is the time to live the lease and lock subtests ask Grant for. The suite
	// bounds its waits by what Lease.TTL reports, so a backend may grant more (Consul rounds
	// up to 10s). Zero means 1s; an embedded store may pass less to run faster.
	LeaseTTL time.Duration
	// NoWatch skips the Watch subtests, for a store that documents it has no Watch (cnm's
	// run store): its Watch must fail with an error matching errclass.ErrNotSupported, and
	// the other subtests leave out what they check with a watch.
	NoWatch bool
}

// Run runs the contract suite with the zero [Options]; see [RunWith].
func Run(t *testing.T, newStore func(t *testing.T) kvstore.Store) {
	t.Helper()
	RunWith(t, newStore, Options{})
}

// RunWith runs the contract suite as subtests of t. newStore must return a fresh, empty,
// open store each time it is called (for a shared server, one isolated by a key prefix of its
// own) and must not close it: RunWith closes every store it gets, through t.Cleanup or, in the
// subtests about Close, explicitly. Cleanups that newStore registers with t.Cleanup run after
// that Close.
//
// The Batch subtest runs only when the store implements [kvstore.Batcher], the Lease
// subtests only when it implements [kvstore.Leaser], the Lock subtests only when it
// implements [kvstore.Locker]; they are skipped otherwise. The lease subtest about expiry
// waits for one lease to run out, about 2×TTL at most (plus a few seconds of slack), and
// checks in the same wait that a lease that is kept alive outlives it and that a store that
// is closed abandons its leases; no other subtest waits for a TTL.
func RunWith(t *testing.T, newStore func(t *testing.T) kvstore.Store, opts Options) {
	t.Helper()
	if opts.LeaseTTL <= 0 {
		opts.LeaseTTL = time.Second
	}
	tests := []struct {
		name string
		fn   func(t *testing.T, s kvstore.Store)
	}{
		{"GetMissing", testGetMissing},
		{"PutGet", testPutGet},
		{"RevisionsGrow", testRevisionsGrow},
		{"AtomicPutCreate", testAtomicPutCreate},
		{"AtomicPutCAS", testAtomicPutCAS},
		{"DeleteMissing", testDeleteMissing},
		{"Delete", testDelete},
		{"AtomicDelete", testAtomicDelete},
		{"List", testList},
		{"WatchPutsAndDeletes", testWatchPutsAndDeletes},
		{"WatchFromRevision", testWatchFromRevision},
		{"WatchSlowReader", testWatchSlowReader},
		{"WatchCancel", testWatchCancel},
		{"CanceledContext", testCanceledContext},
		{"ConcurrentAtomicPut", testConcurrentAtomicPut},
		{"Batch", testBatch},
		{"BatchExists", testBatchExists},
	}
	for _, tt := range tests {
		if opts.NoWatch && strings.HasPrefix(tt.name, "Watch") {
			continue
		}
		t.Run(tt.name, func(t *testing.T) {
			tt.fn(t, openStore(t, newStore))
		})
	}

	// The lease and lock subtests get the options and a second handle on the same data.
	pairTests := []struct {
		name string
		fn   func(t *testing.T, p pair)
	}{
		{"LeaseKeys", testLeaseKeys},
		{"LeaseExpiry", testLeaseExpiry},
		{"LeaseInvalidTTL", testLeaseInvalidTTL},
		{"LockExclusion", testLockExclusion},
		{"LockBlocks", testLockBlocks},
		{"LockCancel", testLockCancel},
		{"LockNamesIndependent", testLockNamesIndependent},
		{"LockUnlockTwice", testLockUnlockTwice},
		{"LockKeysApart", testLockKeysApart},
	}
	for _, tt := range pairTests {
		t.Run(tt.name, func(t *testing.T) {
			closed := false
			s := newStore(t)
			t.Cleanup(func() {
				if closed {
					return
				}
				if err := s.Close(); err != nil {
					t.Errorf("Close: %v", err)
				}
			})
			second := s
			if opts.Second != nil {
				second = opts.Second(t, s)
			}
			p := pair{s: s, second: second, distinct: !sameStore(s, second), ttl: opts.LeaseTTL}
			if p.distinct {
				t.Cleanup(func() {
					if err := second.Close(); err != nil {
						t.Errorf("Close(second): %v", err)
					}
				})
			}
			p.closeFirst = func() error { closed = true; return s.Close() }
			tt.fn(t, p)
		})
	}
	t.Run("Closed", func(t *testing.T) { testClosed(t, newStore(t)) })
}

// openStore returns a fresh store that is closed when t ends.
func openStore(t *testing.T, newStore func(t *testing.T) kvstore.Store) kvstore.Store {
	t.Helper()
	s := newStore(t)
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

// pair is what the lease and lock subtests work on: a fresh store and a second handle on
// its data (s itself for an embedded store).
type pair struct {
	s, second kvstore.Store
	// distinct reports whether second is another handle than s.
	distinct bool
	// ttl is the TTL to ask Grant for.
	ttl time.Duration
	// closeFirst closes s before the end of the subtest (the subtest's cleanup then does
	// not close it again).
	closeFirst func() error
}

// sameStore reports whether a and b are the same handle. Handles of a type that cannot be
// compared are taken as distinct.
func sameStore(a, b kvstore.Store) (same bool) {
	defer func() {
		if recover() != nil {
			same = false
		}
	}()
	return a == b
}

func testGetMissing(t *testing.T, s kvstore.Store) {
	_, err := s.Get(t.Context(), "missing/key")
	if !errors.Is(err, kvstore.ErrKeyNotFound) {
		t.Fatalf("Get(missing) error = %v, want ErrKeyNotFound", err)
	}
	if !strings.Contains(err.Error(), "missing/key") {
		t.Errorf("Get(missing) error %q does not name the key", err)
	}
}

func testPutGet(t *testing.T, s kvstore.Store) {
	ctx := t.Context()
	value := []byte("v1")
	rev := mustPut(t, s, "k/a", string(value))
	if rev == 0 {
		t.Errorf("Put returned revision 0")
	}
	value[0] = 'X' // the store must have kept its own copy
	got := mustGet(t, s, "k/a")
	want := kvstore.KVPair{Key: "k/a", Value: []byte("v1"), Revision: rev}
	if !pairEqual(got, want) {
		t.Fatalf("Get = %s, want %s", fmtPair(got), fmtPair(want))
	}
	got.Value[0] = 'Y' // nor may it share its copy with the caller
	if again := mustGet(t, s, "k/a"); string(again.Value) != "v1" {
		t.Errorf("Get after modifying a returned value = %q, want %q", again.Value, "v1")
	}

	rev2 := mustPut(t, s, "k/a", "v2")
	if got := mustGet(t, s, "k/a"); string(got.Value) != "v2" || got.Revision != rev2 {
		t.Errorf("Get after overwrite = %s, want value v2 revision %d", fmtPair(got), rev2)
	}

	if _, err := s.Put(ctx, "k/empty", []byte{}); err != nil {
		t.Fatalf("Put(empty value): %v", err)
	}
	if got := mustGet(t, s, "k/empty"); len(got.Value) != 0 {
		t.Errorf("Get(empty value) = %q, want empty", got.Value)
	}
}

func testRevisionsGrow(t *testing.T, s kvstore.Store) {
	ctx := t.Context()
	r1 := mustPut(t, s, "r/a", "1")
	r2 := mustPut(t, s, "r/b", "1")
	r3 := mustPut(t, s, "r/a", "2")
	if err := s.Delete(ctx, "r/b"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	r4 := mustPut(t, s, "r/c", "1")
	revs := []uint64{r1, r2, r3, r4}
	for i := 1; i < len(revs); i++ {
		if revs[i] <= revs[i-1] {
			t.Fatalf("revisions %v do not grow strictly", revs)
		}
	}
	if got := mustGet(t, s, "r/a"); got.Revision != r3 {
		t.Errorf("Get(r/a).Revision = %d, want %d (its last write)", got.Revision, r3)
	}
}

func testAtomicPutCreate(t *testing.T, s kvstore.Store) {
	ctx := t.Context()
	rev, err := s.AtomicPut(ctx, "c/a", []byte("1"), 0)
	if err != nil {
		t.Fatalf("AtomicPut(create): %v", err)
	}
	if got := mustGet(t, s, "c/a"); string(got.Value) != "1" || got.Revision != rev {
		t.Errorf("Get after create = %s, want value 1 revision %d", fmtPair(got), rev)
	}
	_, err = s.AtomicPut(ctx, "c/a", []byte("2"), 0)
	if !errors.Is(err, kvstore.ErrKeyExists) {
		t.Fatalf("second AtomicPut(create) error = %v, want ErrKeyExists", err)
	}
	if !strings.Contains(err.Error(), "c/a") {
		t.Errorf("AtomicPut error %q does not name the key", err)
	}
	if got := mustGet(t, s, "c/a"); string(got.Value) != "1" || got.Revision != rev {
		t.Errorf("failed create changed the key: %s", fmtPair(got))
	}
}

func testAtomicPutCAS(t *testing.T, s kvstore.Store) {
	ctx := t.Context()
	r1 := mustPut(t, s, "cas/a", "1")
	r2, err := s.AtomicPut(ctx, "cas/a", []byte("2"), r1)
	if err != nil {
		t.Fatalf("AtomicPut(current revision): %v", err)
	}
	if r2 <= r1 {
		t.Errorf("AtomicPut revision %d, want above %d", r2, r1)
	}
	_, err = s.AtomicPut(ctx, "cas/a", []byte("stale"), r1)
	if !errors.Is(err, kvstore.ErrKeyModified) {
		t.Fatalf("AtomicPut(stale revision) error = %v, want ErrKeyModified", err)
	}
	if got := mustGet(t, s, "cas/a"); string(got.Value) != "2" || got.Revision != r2 {
		t.Errorf("failed CAS changed the key: %s", fmtPair(got))
	}
	_, err = s.AtomicPut(ctx, "cas/missing", []byte("x"), r2)
	if !errors.Is(err, kvstore.ErrKeyModified) {
		t.Errorf("AtomicPut(missing key, revision %d) error = %v, want ErrKeyModified", r2, err)
	}
	if _, err := s.Get(ctx, "cas/missing"); !errors.Is(err, kvstore.ErrKeyNotFound) {
		t.Errorf("failed CAS created the key: Get error = %v", err)
	}
}

func testDeleteMissing(t *testing.T, s kvstore.Store) {
	if err := s.Delete(t.Context(), "d/missing"); err != nil {
		t.Errorf("Delete(missing) = %v, want nil", err)
	}
	if _, err := s.Get(t.Context(), "d/missing"); !errors.Is(err, kvstore.ErrKeyNotFound) {
		t.Errorf("Get after Delete(missing) error = %v, want ErrKeyNotFound", err)
	}
}

func testDelete(t *testing.T, s kvstore.Store) {
	ctx := t.Context()
	mustPut(t, s, "d/a", "1")
	mustPut(t, s, "d/b", "1")
	if err := s.Delete(ctx, "d/a"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if _, err := s.Get(ctx, "d/a"); !errors.Is(err, kvstore.ErrKeyNotFound) {
		t.Errorf("Get after Delete error = %v, want ErrKeyNotFound", err)
	}
	if got := mustGet(t, s, "d/b"); string(got.Value) != "1" {
		t.Errorf("Delete(d/a) touched d/b: %s", fmtPair(got))
	}
	if err := s.Delete(ctx, "d/a"); err != nil {
		t.Errorf("second Delete = %v, want nil", err)
	}
}

func testAtomicDelete(t *testing.T, s kvstore.Store) {
	ctx := t.Context()
	r1 := mustPut(t, s, "ad/a", "1")
	r2 := mustPut(t, s, "ad/a", "2")
	err := s.AtomicDelete(ctx, "ad/a", r1)
	if !errors.Is(err, kvstore.ErrKeyModified) {
		t.Fatalf("AtomicDelete(stale revision) error = %v, want ErrKeyModified", err)
	}
	if !strings.Contains(err.Error(), "ad/a") {
		t.Errorf("AtomicDelete error %q does not name the key", err)
	}
	if got := mustGet(t, s, "ad/a"); got.Revision != r2 {
		t.Fatalf("failed AtomicDelete changed the key: %s", fmtPair(got))
	}
	if err := s.AtomicDelete(ctx, "ad/a", r2); err != nil {
		t.Fatalf("AtomicDelete(current revision): %v", err)
	}
	if _, err := s.Get(ctx, "ad/a"); !errors.Is(err, kvstore.ErrKeyNotFound) {
		t.Errorf("Get after AtomicDelete error = %v, want ErrKeyNotFound", err)
	}
	if err := s.AtomicDelete(ctx, "ad/a", r2); !errors.Is(err, kvstore.ErrKeyNotFound) {
		t.Errorf("AtomicDelete(gone key) error = %v, want ErrKeyNotFound", err)
	}
}

func testList(t *testing.T, s kvstore.Store) {
	ctx := t.Context()
	revs := map[string]uint64{}
	// Written out of order; List must sort.
	for _, k := range []string{"a/2", "ab", "a/10", "b/1", "a/1", "a"} {
		revs[k] = mustPut(t, s, k, "v-"+k)
	}
	got, err := s.List(ctx, "a/")
	if err != nil {
		t.Fatalf("List(a/): %v", err)
	}
	var want []kvstore.KVPair
	for _, k := range []string{"a/1", "a/10", "a/2"} {
		want = append(want, kvstore.KVPair{Key: k, Value: []byte("v-" + k), Revision: revs[k]})
	}
	if !slices.EqualFunc(got, want, pairEqual) {
		t.Errorf("List(a/) = %s\nwant %s", fmtPairs(got), fmtPairs(want))
	}

	none, err := s.List(ctx, "nothing/")
	if err != nil {
		t.Fatalf("List(nothing/): %v", err)
	}
	if len(none) != 0 {
		t.Errorf("List(nothing/) = %s, want empty", fmtPairs(none))
	}
}

func testWatchPutsAndDeletes(t *testing.T, s kvstore.Store) {
	ctx := t.Context()
	ch, err := s.Watch(ctx, "w/", 0)
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	r1 := mustPut(t, s, "w/a", "1")
	mustPut(t, s, "x/other", "1") // outside the prefix
	mustPut(t, s, "wx", "1")      // outside the prefix, though it starts with "w"
	r2 := mustPut(t, s, "w/b", "2")
	if err := s.Delete(ctx, "w/a"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	r4 := mustPut(t, s, "w/c", "3") // marks the end: nothing may arrive between

	expectEvent(t, ch, kvstore.EventPut, "w/a", "1", r1)
	expectEvent(t, ch, kvstore.EventPut, "w/b", "2", r2)
	del := recv(t, ch)
	if del.Type != kvstore.EventDelete || del.Pair.Key != "w/a" || del.Pair.Value != nil {
		t.Errorf("event = %s, want delete w/a with nil value", fmtEvent(del))
	}
	if del.Pair.Revision <= r2 || del.Pair.Revision >= r4 {
		t.Errorf("delete revision %d, want between %d and %d", del.Pair.Revision, r2, r4)
	}
	expectEvent(t, ch, kvstore.EventPut, "w/c", "3", r4)
}

func testWatchFromRevision(t *testing.T, s kvstore.Store) {
	ctx := t.Context()
	r1 := mustPut(t, s, "wr/a", "1")
	r2 := mustPut(t, s, "wr/b", "2")
	if err := s.Delete(ctx, "wr/a"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	mustPut(t, s, "other/x", "1")
	r4 := mustPut(t, s, "wr/c", "3")

	ch, err := s.Watch(ctx, "wr/", r1)
	if err != nil {
		t.Fatalf("Watch(from %d): %v", r1, err)
	}
	expectEvent(t, ch, kvstore.EventPut, "wr/b", "2", r2)
	del := recv(t, ch)
	if del.Type != kvstore.EventDelete || del.Pair.Key != "wr/a" || del.Pair.Revision <= r2 || del.Pair.Revision >= r4 {
		t.Errorf("event = %s, want delete wr/a between revisions %d and %d", fmtEvent(del), r2, r4)
	}
	expectEvent(t, ch, kvstore.EventPut, "wr/c", "3", r4)
	// After the replay, live changes follow.
	r5 := mustPut(t, s, "wr/d", "4")
	expectEvent(t, ch, kvstore.EventPut, "wr/d", "4", r5)

	// From the last revision there is nothing to replay.
	ch2, err := s.Watch(ctx, "wr/", r5)
	if err != nil {
		t.Fatalf("Watch(from %d): %v", r5, err)
	}
	r6 := mustPut(t, s, "wr/e", "5")
	expectEvent(t, ch2, kvstore.EventPut, "wr/e", "5", r6)
}

func testWatchSlowReader(t *testing.T, s kvstore.Store) {
	const n = 200
	ch, err := s.Watch(t.Context(), "slow/", 0)
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	// Nobody reads while these are written: the writes must not wait for the reader.
	done := make(chan error, 1)
	revs := make([]uint64, n)
	go func() {
		for i := range n {
			rev, err := s.Put(t.Context(), fmt.Sprintf("slow/%03d", i), []byte(strconv.Itoa(i)))
			if err != nil {
				done <- err
				return
			}
			revs[i] = rev
		}
		done <- nil
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Put: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("%d puts did not finish in 15s while a watcher was not reading", n)
	}
	for i := range n {
		expectEvent(t, ch, kvstore.EventPut, fmt.Sprintf("slow/%03d", i), strconv.Itoa(i), revs[i])
	}
}

func testWatchCancel(t *testing.T, s kvstore.Store) {
	ctx, cancel := context.WithCancel(t.Context())
	ch, err := s.Watch(ctx, "wc/", 0)
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	rev := mustPut(t, s, "wc/a", "1")
	expectEvent(t, ch, kvstore.EventPut, "wc/a", "1", rev)
	cancel()
	expectClosed(t, ch)

	// The store goes on working for others.
	rev = mustPut(t, s, "wc/b", "2")
	if got := mustGet(t, s, "wc/b"); got.Revision != rev {
		t.Errorf("Get after a cancelled watch = %s, want revision %d", fmtPair(got), rev)
	}

	if _, err := s.Watch(ctx, "wc/", 0); !errors.Is(err, context.Canceled) {
		t.Errorf("Watch(cancelled ctx) error = %v, want context.Canceled", err)
	}
}

func testCanceledContext(t *testing.T, s kvstore.Store) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := s.Put(ctx, "cc/a", []byte("1")); !errors.Is(err, context.Canceled) {
		t.Errorf("Put(cancelled ctx) error = %v, want context.Canceled", err)
	}
	if _, err := s.Get(t.Context(), "cc/a"); !errors.Is(err, kvstore.ErrKeyNotFound) {
		t.Errorf("Put with a cancelled ctx wrote the key: Get error = %v", err)
	}
	if _, err := s.Get(ctx, "cc/a"); !errors.Is(err, context.Canceled) {
		t.Errorf("Get(cancelled ctx) error = %v, want context.Canceled", err)
	}
}

func testConcurrentAtomicPut(t *testing.T, s kvstore.Store) {
	const (
		workers    = 8
		increments = 25
		maxTries   = 10000 // per worker; bounds a backend that never lets a CAS through
		key        = "counter/n"
	)
	ctx := t.Context()
	if _, err := s.AtomicPut(ctx, key, []byte("0"), 0); err != nil {
		t.Fatalf("AtomicPut(create): %v", err)
	}
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			done, tries := 0, 0
			for done < increments {
				if tries++; tries > maxTries {
					errs <- fmt.Errorf("worker %d: %d increments after %d tries", w, done, maxTries)
					return
				}
				p, err := s.Get(ctx, key)
				if err != nil {
					errs <- fmt.Errorf("worker %d: Get: %w", w, err)
					return
				}
				n, err := strconv.Atoi(string(p.Value))
				if err != nil {
					errs <- fmt.Errorf("worker %d: value %q: %w", w, p.Value, err)
					return
				}
				_, err = s.AtomicPut(ctx, key, []byte(strconv.Itoa(n+1)), p.Revision)
				switch {
				case err == nil:
					done++
				case errors.Is(err, kvstore.ErrKeyModified):
					// lost the race; read again
				default:
					errs <- fmt.Errorf("worker %d: AtomicPut: %w", w, err)
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
	if got, want := string(mustGet(t, s, key).Value), strconv.Itoa(workers*increments); got != want {
		t.Errorf("counter = %s after %d×%d increments, want %s", got, workers, increments, want)
	}
}

func testBatch(t *testing.T, s kvstore.Store) {
	b, ok := s.(kvstore.Batcher)
	if !ok {
		t.Skipf("%T does not implement kvstore.Batcher", s)
	}
	ctx := t.Context()
	rOld := mustPut(t, s, "bt/old", "old")
	rKeep := mustPut(t, s, "bt/keep", "keep")

	ch, err := s.Watch(ctx, "bt/", 0)
	noWatch := errors.Is(err, errclass.ErrNotSupported) // a store without Watch (Options.NoWatch)
	if err != nil && !noWatch {
		t.Fatalf("Watch: %v", err)
	}

	// A failed create-only check applies nothing.
	_, err = b.Batch(ctx, []kvstore.Op{
		{Key: "bt/new", Value: []byte("n")},
		{Key: "bt/keep", Value: []byte("x"), Check: true, PrevRevision: 0},
	})
	if !errors.Is(err, kvstore.ErrKeyExists) {
		t.Fatalf("Batch(create-only on existing key) error = %v, want ErrKeyExists", err)
	}
	// A failed revision check applies nothing either.
	_, err = b.Batch(ctx, []kvstore.Op{
		{Key: "bt/new", Value: []byte("n")},
		{Key: "bt/old"}, // delete
		{Key: "bt/keep", Value: []byte("x"), Check: true, PrevRevision: rOld},
	})
	if !errors.Is(err, kvstore.ErrKeyModified) {
		t.Fatalf("Batch(stale revision) error = %v, want ErrKeyModified", err)
	}
	if _, err := s.Get(ctx, "bt/new"); !errors.Is(err, kvstore.ErrKeyNotFound) {
		t.Errorf("failed Batch wrote bt/new: Get error = %v", err)
	}
	if got := mustGet(t, s, "bt/old"); got.Revision != rOld {
		t.Errorf("failed Batch changed bt/old: %s", fmtPair(got))
	}
	if got := mustGet(t, s, "bt/keep"); got.Revision != rKeep || string(got.Value) != "keep" {
		t.Errorf("failed Batch changed bt/keep: %s", fmtPair(got))
	}

	// A good batch applies everything at the revision of its commit.
	rev, err := b.Batch(ctx, []kvstore.Op{
		{Key: "bt/new", Value: []byte("n"), Check: true},
		{Key: "bt/old"},
		{Key: "bt/keep", Value: []byte("k2"), Check: true, PrevRevision: rKeep},
	})
	if err != nil {
		t.Fatalf("Batch: %v", err)
	}
	if rev <= rKeep {
		t.Errorf("Batch revision %d, want above %d", rev, rKeep)
	}
	for key, value := range map[string]string{"bt/new": "n", "bt/keep": "k2"} {
		if got := mustGet(t, s, key); string(got.Value) != value || got.Revision != rev {
			t.Errorf("Get(%s) = %s, want value %s revision %d", key, fmtPair(got), value, rev)
		}
	}
	if _, err := s.Get(ctx, "bt/old"); !errors.Is(err, kvstore.ErrKeyNotFound) {
		t.Errorf("Batch did not delete bt/old: Get error = %v", err)
	}

	batchAbsentCheck(t, s, b) // keys outside the watched prefix

	if noWatch {
		return
	}
	// The watcher sees the good batch only (in any order within its revision).
	var got []string
	for range 3 {
		ev := recv(t, ch)
		if ev.Pair.Revision != rev {
			t.Errorf("event %s, want revision %d", fmtEvent(ev), rev)
		}
		got = append(got, ev.Type.String()+" "+ev.Pair.Key)
	}
	slices.Sort(got)
	if want := []string{"delete bt/old", "put bt/keep", "put bt/new"}; !slices.Equal(got, want) {
		t.Errorf("batch events = %q, want %q", got, want)
	}
}

// batchAbsentCheck: a checked delete at revision 0 is a check that the key is absent (it
// writes nothing): the batch fails with ErrKeyExists, applying nothing, while the key is there,
// and applies once it is gone. cnm's cluster deletes a departed host's records so, on the
// condition that the host's registry key is absent when the delete commits.
func batchAbsentCheck(t *testing.T, s kvstore.Store, b kvstore.Batcher) {
	ctx := t.Context()
	rRec := mustPut(t, s, "ba/rec", "r")
	mustPut(t, s, "ba/host", "h")
	ops := []kvstore.Op{{Key: "ba/rec", Check: true, PrevRevision: rRec}, {Key: "ba/host", Check: true}}
	if _, err := b.Batch(ctx, ops); !errors.Is(err, kvstore.ErrKeyExists) {
		t.Fatalf("Batch(delete, if ba/host is absent) with ba/host there: error = %v, want ErrKeyExists", err)
	}
	if got := mustGet(t, s, "ba/rec"); got.Revision != rRec {
		t.Errorf("failed Batch changed ba/rec: %s", fmtPair(got))
	}
	if err := s.Delete(ctx, "ba/host"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Batch(ctx, ops); err != nil {
		t.Fatalf("Batch(delete, if ba/host is absent) with ba/host gone: %v", err)
	}
	for _, key := range []string{"ba/rec", "ba/host"} {
		if _, err := s.Get(ctx, key); !errors.Is(err, kvstore.ErrKeyNotFound) {
			t.Errorf("after the Batch, Get(%s) error = %v, want ErrKeyNotFound", key, err)
		}
	}
}

func testClosed(t *testing.T, s kvstore.Store) {
	ctx := t.Context()
	rev := mustPut(t, s, "cl/a", "1")
	ch, err := s.Watch(ctx, "cl/", 0)
	noWatch := errors.Is(err, errclass.ErrNotSupported) // a store without Watch (Options.NoWatch)
	if err != nil && !noWatch {
		t.Fatalf("Watch: %v", err)
	}
	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatalf("Close: %v", err)
		}
	case <-time.After(eventTimeout):
		t.Fatalf("Close did not return within %v with a watch open", eventTimeout)
	}
	if !noWatch {
		expectClosed(t, ch)
	}

	check := func(op string, err error) {
		t.Helper()
		if !errors.Is(err, kvstore.ErrClosed) {
			t.Errorf("%s after Close: error = %v, want ErrClosed", op, err)
		}
	}
	_, err = s.Get(ctx, "cl/a")
	check("Get", err)
	_, err = s.Put(ctx, "cl/a", []byte("2"))
	check("Put", err)
	_, err = s.AtomicPut(ctx, "cl/a", []byte("2"), rev)
	check("AtomicPut", err)
	check("Delete", s.Delete(ctx, "cl/a"))
	check("AtomicDelete", s.AtomicDelete(ctx, "cl/a", rev))
	_, err = s.List(ctx, "cl/")
	check("List", err)
	_, err = s.Watch(ctx, "cl/", 0)
	check("Watch", err)
	if b, ok := s.(kvstore.Batcher); ok {
		_, err = b.Batch(ctx, []kvstore.Op{{Key: "cl/b", Value: []byte("1")}})
		check("Batch", err)
	}
	if l, ok := s.(kvstore.Leaser); ok {
		lease, err := l.Grant(ctx, time.Minute)
		check("Grant", err)
		if lease != nil {
			t.Errorf("Grant after Close returned a lease")
		}
	}
	if l, ok := s.(kvstore.Locker); ok {
		u, err := l.Lock(ctx, "cl/lock")
		check("Lock", err)
		if u != nil {
			t.Errorf("Lock after Close returned a lock")
		}
	}
}

// mustPut writes key and returns its revision.
// testBatchExists checks the Exists op: it writes nothing, lets the batch commit when its key
// exists, and fails the whole batch with ErrKeyNotFound when it does not; an Exists op that
// also writes or checks a revision is refused.
func testBatchExists(t *testing.T, s kvstore.Store) {
	b, ok := s.(kvstore.Batcher)
	if !ok {
		t.Skipf("%T does not implement kvstore.Batcher", s)
	}
	ctx := t.Context()
	rParent := mustPut(t, s, "bx/parent", "p")
	mustPut(t, s, "bx/gone", "g")
	if err := s.Delete(ctx, "bx/gone"); err != nil {
		t.Fatal(err)
	}

	for _, missing := range []string{"bx/never", "bx/gone"} {
		_, err := b.Batch(ctx, []kvstore.Op{
			{Key: "bx/child", Value: []byte("c"), Check: true},
			{Key: missing, Exists: true},
		})
		if !errors.Is(err, kvstore.ErrKeyNotFound) || !strings.Contains(err.Error(), missing) {
			t.Fatalf("Batch(Exists %s) error = %v, want ErrKeyNotFound naming it", missing, err)
		}
		if _, err := s.Get(ctx, "bx/child"); !errors.Is(err, kvstore.ErrKeyNotFound) {
			t.Errorf("a batch whose Exists %s failed wrote bx/child: Get error = %v", missing, err)
		}
	}

	rev, err := b.Batch(ctx, []kvstore.Op{
		{Key: "bx/child", Value: []byte("c"), Check: true},
		{Key: "bx/parent", Exists: true},
	})
	if err != nil {
		t.Fatalf("Batch(Exists on a present key): %v", err)
	}
	if got := mustGet(t, s, "bx/child"); got.Revision != rev || string(got.Value) != "c" {
		t.Errorf("bx/child = %s, want c at the batch's revision %d", fmtPair(got), rev)
	}
	if got := mustGet(t, s, "bx/parent"); got.Revision != rParent || string(got.Value) != "p" {
		t.Errorf("the Exists op changed bx/parent: %s", fmtPair(got))
	}

	for _, op := range []kvstore.Op{
		{Key: "bx/parent", Exists: true, Value: []byte("x")},
		{Key: "bx/parent", Exists: true, Check: true},
		{Key: "bx/parent", Exists: true, PrevRevision: rParent},
	} {
		if _, err := b.Batch(ctx, []kvstore.Op{op}); !errors.Is(err, errclass.ErrInvalidParameter) {
			t.Errorf("Batch(%+v) error = %v, want ErrInvalidParameter", op, err)
		}
	}
}

func mustPut(t *testing.T, s kvstore.Store, key, value string) uint64 {
	t.Helper()
	rev, err := s.Put(t.Context(), key, []byte(value))
	if err != nil {
		t.Fatalf("Put(%s): %v", key, err)
	}
	return rev
}

// mustGet reads key, which must exist.
func mustGet(t *testing.T, s kvstore.Store, key string) kvstore.KVPair {
	t.Helper()
	p, err := s.Get(t.Context(), key)
	if err != nil {
		t.Fatalf("Get(%s): %v", key, err)
	}
	return p
}

// recv returns the next event, failing the test if none comes within eventTimeout or the
// channel closes.
func recv(t *testing.T, ch <-chan kvstore.Event) kvstore.Event {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatalf("watch channel closed, want an event")
		}
		return ev
	case <-time.After(eventTimeout):
		t.Fatalf("no watch event within %v", eventTimeout)
	}
	panic("unreachable")
}

// expectEvent receives the next event and checks it.
func expectEvent(t *testing.T, ch <-chan kvstore.Event, typ kvstore.EventType, key, value string, rev uint64) {
	t.Helper()
	got := recv(t, ch)
	want := kvstore.Event{Type: typ, Pair: kvstore.KVPair{Key: key, Value: []byte(value), Revision: rev}}
	if got.Type != want.Type || !pairEqual(got.Pair, want.Pair) {
		t.Fatalf("event = %s, want %s", fmtEvent(got), fmtEvent(want))
	}
}

// expectClosed drains ch and fails the test unless it closes within eventTimeout.
func expectClosed(t *testing.T, ch <-chan kvstore.Event) {
	t.Helper()
	deadline := time.After(eventTimeout)
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		case <-deadline:
			t.Fatalf("watch channel not closed within %v", eventTimeout)
		}
	}
}

func pairEqual(a, b kvstore.KVPair) bool {
	return a.Key == b.Key && string(a.Value) == string(b.Value) && a.Revision == b.Revision
}

func fmtPair(p kvstore.KVPair) string {
	return fmt.Sprintf("{%s=%q @%d}", p.Key, p.Value, p.Revision)
}

func fmtPairs(ps []kvstore.KVPair) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = fmtPair(p)
	}
	return "[" + strings.Join(s, " ") + "]"
}

func fmtEvent(ev kvstore.Event) string {
	return ev.Type.String() + " " + fmtPair(ev.Pair)
}
