package boltdb_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cnmkit/cnm/kvstore"
	"github.com/cnmkit/cnm/kvstore/boltdb"
)

// expiryBound bounds the wait for a lease of ttl to run out: the reaper wakes at the deadline,
// so a few seconds of slack cover a loaded machine under -race.
func expiryBound(ttl time.Duration) time.Duration { return ttl + 3*time.Second }

// mustGrant grants a lease of ttl.
func mustGrant(t *testing.T, s *boltdb.Store, ttl time.Duration) kvstore.Lease {
	t.Helper()
	l, err := s.Grant(t.Context(), ttl)
	if err != nil {
		t.Fatalf("Grant(%v): %v", ttl, err)
	}
	return l
}

// mustBind writes key through l, create-only.
func mustBind(t *testing.T, l kvstore.Lease, key, value string) uint64 {
	t.Helper()
	rev, err := l.AtomicPut(t.Context(), key, []byte(value), 0)
	if err != nil {
		t.Fatalf("Lease.AtomicPut(%s): %v", key, err)
	}
	return rev
}

// expectGone fails unless Get(key) reports ErrKeyNotFound.
func expectGone(t *testing.T, s *boltdb.Store, key string) {
	t.Helper()
	if _, err := s.Get(t.Context(), key); !errors.Is(err, kvstore.ErrKeyNotFound) {
		t.Errorf("Get(%s) error = %v, want ErrKeyNotFound", key, err)
	}
}

// expectValue fails unless key holds value.
func expectValue(t *testing.T, s *boltdb.Store, key, value string) {
	t.Helper()
	p, err := s.Get(t.Context(), key)
	if err != nil || string(p.Value) != value {
		t.Errorf("Get(%s) = %q, %v; want %q", key, p.Value, err, value)
	}
}

// expectDeletes receives one delete event for each of keys, in any order, within bound.
func expectDeletes(t *testing.T, ch <-chan kvstore.Event, bound time.Duration, keys ...string) {
	t.Helper()
	want := make(map[string]bool)
	for _, k := range keys {
		want[k] = true
	}
	timer := time.NewTimer(bound)
	defer timer.Stop()
	for len(want) > 0 {
		select {
		case ev, ok := <-ch:
			if !ok {
				t.Fatalf("watch closed while waiting for deletes of %v", want)
			}
			if ev.Type != kvstore.EventDelete || !want[ev.Pair.Key] {
				t.Fatalf("event %v %s, want a delete of one of %v", ev.Type, ev.Pair.Key, want)
			}
			delete(want, ev.Pair.Key)
		case <-timer.C:
			t.Fatalf("no delete of %v within %v", want, bound)
		}
	}
}

// TestLeaseRebind checks which lease a key belongs to as it is written in other ways.
func TestLeaseRebind(t *testing.T) {
	ctx := t.Context()
	s := open(t, boltdb.Config{NoSync: true})
	a := mustGrant(t, s, time.Hour)
	b := mustGrant(t, s, time.Hour)

	// Written through another lease, a key moves to it.
	r := mustBind(t, a, "moved", "a")
	if _, err := b.AtomicPut(ctx, "moved", []byte("b"), r); err != nil {
		t.Fatalf("Lease.AtomicPut(moved) through b: %v", err)
	}
	// Written or deleted through the Store, a key leaves its lease.
	mustBind(t, a, "put", "a")
	mustPut(t, s, "put", "plain")
	mustBind(t, a, "batched", "a")
	if _, err := s.Batch(ctx, []kvstore.Op{{Key: "batched", Value: []byte("plain")}}); err != nil {
		t.Fatalf("Batch: %v", err)
	}
	mustBind(t, a, "deleted", "a")
	if err := s.Delete(ctx, "deleted"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	mustBind(t, a, "own", "a")

	ch, err := s.Watch(ctx, "", 0)
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	if err := a.Revoke(ctx); err != nil {
		t.Fatalf("Revoke(a): %v", err)
	}
	expectDeletes(t, ch, 5*time.Second, "own")
	r = mustPut(t, s, "marker", "1") // the revoke deleted nothing else
	expectEvent(t, ch, kvstore.EventPut, "marker", "1", r)
	expectValue(t, s, "moved", "b")
	expectValue(t, s, "put", "plain")
	expectValue(t, s, "batched", "plain")
	expectGone(t, s, "deleted")

	if err := b.Revoke(ctx); err != nil {
		t.Fatalf("Revoke(b): %v", err)
	}
	expectDeletes(t, ch, 5*time.Second, "moved")
	expectGone(t, s, "moved")
}

// TestLeaseRevokeOneRevision checks that Revoke deletes all the keys of a lease at the
// revision of one commit, and that revoking a lease without keys commits nothing.
func TestLeaseRevokeOneRevision(t *testing.T) {
	ctx := t.Context()
	s := open(t, boltdb.Config{NoSync: true})
	l := mustGrant(t, s, time.Hour)
	mustBind(t, l, "k/1", "1")
	last := mustBind(t, l, "k/2", "2")
	ch, err := s.Watch(ctx, "k/", 0)
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	if err := l.Revoke(ctx); err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	for _, key := range []string{"k/1", "k/2"} { // in key order
		if ev := recv(t, ch); ev.Type != kvstore.EventDelete || ev.Pair.Key != key || ev.Pair.Revision != last+1 {
			t.Errorf("event %v %s @%d, want delete %s @%d", ev.Type, ev.Pair.Key, ev.Pair.Revision, key, last+1)
		}
	}
	empty := mustGrant(t, s, time.Hour)
	if err := empty.Revoke(ctx); err != nil {
		t.Fatalf("Revoke(no keys): %v", err)
	}
	if r := mustPut(t, s, "next", "1"); r != last+2 {
		t.Errorf("revision after revoking a lease without keys = %d, want %d", r, last+2)
	}
}

// TestLeaseAbandonThenRevoke revokes an abandoned lease before its TTL runs out: its keys go
// at once, and the reaper later finds nothing to do.
func TestLeaseAbandonThenRevoke(t *testing.T) {
	ctx := t.Context()
	s := open(t, boltdb.Config{NoSync: true})
	l := mustGrant(t, s, 100*time.Millisecond)
	mustBind(t, l, "k", "1")
	l.Abandon()
	l.Abandon() // does nothing more
	if err := l.Revoke(ctx); err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	expectGone(t, s, "k")
	select {
	case <-l.Done():
	default:
		t.Errorf("Done not closed after Revoke")
	}
	// A key bound past the deadline, before the reaper ran, is refused too.
	m := mustGrant(t, s, time.Nanosecond)
	m.Abandon()
	time.Sleep(time.Millisecond) // past the deadline, whatever the reaper did
	if _, err := m.AtomicPut(ctx, "late", []byte("1"), 0); !errors.Is(err, kvstore.ErrLeaseEnded) {
		t.Errorf("Lease.AtomicPut past the TTL after Abandon: error = %v, want ErrLeaseEnded", err)
	}
	expectGone(t, s, "late")
}

// TestLeaseCloseAndReopen closes a store with leases open: Close abandons them (Done closes,
// keys stay), and the next Open deletes their keys once their TTL has run out, counted from
// that Open. Keys that left their lease before Close stay; leases granted after the reopen
// keep theirs.
func TestLeaseCloseAndReopen(t *testing.T) {
	const ttl = 300 * time.Millisecond
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "cnm.db")
	s := openAt(t, path, boltdb.Config{})
	l := mustGrant(t, s, ttl)
	mustBind(t, l, "host/a", "1")
	mustBind(t, l, "host/b", "1")
	mustBind(t, l, "host/unbound", "1")
	mustPut(t, s, "host/unbound", "2") // leaves the lease
	long := mustGrant(t, s, time.Hour)
	mustBind(t, long, "host/long", "1")
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case <-l.Done():
	default:
		t.Errorf("Done of an open lease not closed by Close")
	}
	if _, err := l.AtomicPut(ctx, "host/c", []byte("1"), 0); !errors.Is(err, kvstore.ErrClosed) {
		t.Errorf("Lease.AtomicPut after Close: error = %v, want ErrClosed", err)
	}
	if err := l.Revoke(ctx); !errors.Is(err, kvstore.ErrClosed) {
		t.Errorf("Revoke after Close: error = %v, want ErrClosed", err)
	}

	start := time.Now()
	s = openAt(t, path, boltdb.Config{})
	defer s.Close()
	ch, err := s.Watch(ctx, "host/", 0)
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	// The keys survive the reopen, and can be taken over at once by a new lease.
	expectValue(t, s, "host/a", "1")
	expectValue(t, s, "host/b", "1")
	fresh := mustGrant(t, s, time.Hour)
	p, err := s.Get(ctx, "host/b")
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if _, err := fresh.AtomicPut(ctx, "host/b", []byte("2"), p.Revision); err != nil {
		t.Fatalf("take host/b over with a new lease: %v", err)
	}
	if ev := recv(t, ch); ev.Type != kvstore.EventPut || ev.Pair.Key != "host/b" {
		t.Fatalf("event %v %s, want put host/b", ev.Type, ev.Pair.Key)
	}
	mustBind(t, fresh, "host/fresh", "1")
	if ev := recv(t, ch); ev.Type != kvstore.EventPut || ev.Pair.Key != "host/fresh" {
		t.Fatalf("event %v %s, want put host/fresh", ev.Type, ev.Pair.Key)
	}

	// The inherited leases run out; only the keys still bound to them go.
	expectDeletes(t, ch, expiryBound(ttl), "host/a")
	if d := time.Since(start); d < ttl {
		t.Errorf("inherited key deleted %v after Open, before its TTL %v", d, ttl)
	}
	expectValue(t, s, "host/unbound", "2")
	expectValue(t, s, "host/b", "2")
	expectValue(t, s, "host/fresh", "1")
	expectValue(t, s, "host/long", "1") // its hour has not run out
	if err := fresh.Revoke(ctx); err != nil {
		t.Fatalf("Revoke(fresh): %v", err)
	}
	expectDeletes(t, ch, 5*time.Second, "host/b", "host/fresh")
}

// TestLeaseAfterCrash binds a key in a process that exits without Close, as a crash would:
// the next Open finds the binding on disk and deletes the key when the TTL runs out.
func TestLeaseAfterCrash(t *testing.T) {
	const ttl = 200 * time.Millisecond
	path := filepath.Join(t.TempDir(), "cnm.db")
	cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestCrashHelper$", "-test.count=1")
	cmd.Env = append(os.Environ(), "CNM_BOLTDB_CRASH_PATH="+path, "CNM_BOLTDB_CRASH_TTL="+ttl.String())
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "bound crash/key") {
		t.Fatalf("helper process: %v\n%s", err, out)
	}
	start := time.Now()
	s := openAt(t, path, boltdb.Config{})
	defer s.Close()
	ch, err := s.Watch(t.Context(), "crash/", 0)
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	expectValue(t, s, "crash/key", "v")
	expectValue(t, s, "crash/plain", "v")
	expectDeletes(t, ch, expiryBound(ttl), "crash/key")
	if d := time.Since(start); d < ttl {
		t.Errorf("key of the crashed process deleted %v after Open, before its TTL %v", d, ttl)
	}
	expectGone(t, s, "crash/key")
	expectValue(t, s, "crash/plain", "v")
}

// TestCrashHelper is the process that TestLeaseAfterCrash starts: it binds a key and exits
// without closing the store. Run directly, it does nothing.
func TestCrashHelper(t *testing.T) {
	path := os.Getenv("CNM_BOLTDB_CRASH_PATH")
	if path == "" {
		return
	}
	ttl, err := time.ParseDuration(os.Getenv("CNM_BOLTDB_CRASH_TTL"))
	if err != nil {
		t.Fatal(err)
	}
	s, err := boltdb.Open(path, boltdb.Config{})
	if err != nil {
		t.Fatal(err)
	}
	l := mustGrant(t, s, ttl)
	mustBind(t, l, "crash/key", "v")
	mustPut(t, s, "crash/plain", "v")
	fmt.Println("bound crash/key")
	os.Exit(0) // no Close, no Revoke: the file lock goes with the process
}

// TestCloseEndsLocks closes a store with a lock held and a waiter: Lost closes, the waiter
// fails with ErrClosed, and Unlock reports the lock lost.
func TestCloseEndsLocks(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cnm.db")
	s := openAt(t, path, boltdb.Config{NoSync: true})
	u, err := s.Lock(t.Context(), "l")
	if err != nil {
		t.Fatalf("Lock: %v", err)
	}
	waiter := make(chan error, 1)
	go func() {
		_, err := s.Lock(context.Background(), "l")
		waiter <- err
	}()
	select {
	case err := <-waiter:
		t.Fatalf("second Lock returned %v while the lock was held", err)
	case <-time.After(50 * time.Millisecond):
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case err := <-waiter:
		if !errors.Is(err, kvstore.ErrClosed) {
			t.Errorf("waiting Lock after Close: error = %v, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("waiting Lock did not return after Close")
	}
	select {
	case <-u.Lost():
	default:
		t.Errorf("Lost not closed by Close")
	}
	err = u.Unlock(t.Context())
	if !errors.Is(err, kvstore.ErrLockLost) || !errors.Is(err, kvstore.ErrClosed) {
		t.Errorf("Unlock after Close: error = %v, want ErrLockLost and ErrClosed", err)
	}
	if err := u.Unlock(t.Context()); err != nil {
		t.Errorf("second Unlock after Close = %v, want nil", err)
	}
}

func TestLockEmptyKey(t *testing.T) {
	s := open(t, boltdb.Config{NoSync: true})
	if _, err := s.Lock(t.Context(), ""); err == nil {
		t.Errorf("Lock(\"\") succeeded")
	}
}
