package boltdb_test

import (
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	berrors "go.etcd.io/bbolt/errors"
	"go.uber.org/goleak"

	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/cnmkit/cnm/kvstore"
	"github.com/cnmkit/cnm/kvstore/boltdb"
	"github.com/cnmkit/cnm/kvstore/kvstoretest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// open opens a store in a fresh file and closes it at the end of the test.
func open(t *testing.T, cfg boltdb.Config) *boltdb.Store {
	t.Helper()
	s := openAt(t, filepath.Join(t.TempDir(), "cnm.db"), cfg)
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

// openAt opens the store at path; the caller closes it.
func openAt(t *testing.T, path string, cfg boltdb.Config) *boltdb.Store {
	t.Helper()
	s, err := boltdb.Open(path, cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

// TestContract runs the contract suite. One process holds a bbolt file, so the second handle
// of the lease and lock subtests is the store itself; leases have no minimum TTL, so they
// are short here.
func TestContract(t *testing.T) {
	kvstoretest.RunWith(t, func(t *testing.T) kvstore.Store {
		return openAt(t, filepath.Join(t.TempDir(), "cnm.db"), boltdb.Config{NoSync: true})
	}, kvstoretest.Options{LeaseTTL: 200 * time.Millisecond})
}

func TestRestart(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "cnm.db")
	s := openAt(t, path, boltdb.Config{})
	r1 := mustPut(t, s, "a", "1")
	mustPut(t, s, "b", "2")
	if err := s.Delete(ctx, "b"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	r3 := mustPut(t, s, "c", "3")
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	s = openAt(t, path, boltdb.Config{})
	defer s.Close()
	got, err := s.List(ctx, "")
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	want := []kvstore.KVPair{{Key: "a", Value: []byte("1"), Revision: r1}, {Key: "c", Value: []byte("3"), Revision: r3}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("after reopen List = %v, want %v", got, want)
	}
	// The counter survived: the next write continues after the delete (r3 = 4).
	if rev := mustPut(t, s, "d", "4"); rev != r3+1 {
		t.Errorf("first revision after reopen = %d, want %d", rev, r3+1)
	}
}

// TestWatchAfterRestart resumes a watch from before a restart: the history is gone, so the
// watch gets the current state of keys changed since, in revision order, then live events.
func TestWatchAfterRestart(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "cnm.db")
	s := openAt(t, path, boltdb.Config{NoSync: true})
	mustPut(t, s, "w/old", "0")
	from := mustPut(t, s, "w/z", "1")
	r2 := mustPut(t, s, "w/z", "2") // rewritten: one event with the last value
	mustPut(t, s, "w/gone", "x")
	if err := s.Delete(ctx, "w/gone"); err != nil { // lost in the gap
		t.Fatalf("Delete: %v", err)
	}
	r5 := mustPut(t, s, "w/a", "3") // key order differs from revision order
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	s = openAt(t, path, boltdb.Config{NoSync: true})
	defer s.Close()
	ch, err := s.Watch(ctx, "w/", from)
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	expectEvent(t, ch, kvstore.EventPut, "w/z", "2", r2)
	expectEvent(t, ch, kvstore.EventPut, "w/a", "3", r5)
	r6 := mustPut(t, s, "w/live", "4")
	expectEvent(t, ch, kvstore.EventPut, "w/live", "4", r6)
}

func TestWatchHistoryWindow(t *testing.T) {
	ctx := t.Context()
	s := open(t, boltdb.Config{NoSync: true, WatchHistory: 3})
	var revs []uint64
	for i := range 4 {
		revs = append(revs, mustPut(t, s, fmt.Sprintf("h/%d", i), "v"))
	}
	if err := s.Delete(ctx, "h/3"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	// History holds revisions 3, 4 and 5 (the delete); from 2 on it can replay exactly.
	ch, err := s.Watch(ctx, "h/", revs[1])
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	expectEvent(t, ch, kvstore.EventPut, "h/2", "v", revs[2])
	expectEvent(t, ch, kvstore.EventPut, "h/3", "v", revs[3])
	if ev := recv(t, ch); ev.Type != kvstore.EventDelete || ev.Pair.Key != "h/3" || ev.Pair.Revision != revs[3]+1 {
		t.Errorf("event %v, want delete h/3 at %d", ev, revs[3]+1)
	}

	// From 1, revision 2 has left the history: current state instead, without the delete.
	ch, err = s.Watch(ctx, "h/", revs[0])
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	expectEvent(t, ch, kvstore.EventPut, "h/1", "v", revs[1])
	expectEvent(t, ch, kvstore.EventPut, "h/2", "v", revs[2])
	r := mustPut(t, s, "h/live", "v")
	expectEvent(t, ch, kvstore.EventPut, "h/live", "v", r)
}

func TestWriteThatChangesNothingKeepsRevision(t *testing.T) {
	ctx := t.Context()
	s := open(t, boltdb.Config{NoSync: true})
	r1 := mustPut(t, s, "a", "1")
	if err := s.Delete(ctx, "missing"); err != nil {
		t.Fatalf("Delete(missing): %v", err)
	}
	rev, err := s.Batch(ctx, nil)
	if err != nil || rev != r1 {
		t.Errorf("Batch(nil) = %d, %v; want %d, nil", rev, err, r1)
	}
	rev, err = s.Batch(ctx, []kvstore.Op{{Key: "missing"}})
	if err != nil || rev != r1 {
		t.Errorf("Batch(delete missing) = %d, %v; want %d, nil", rev, err, r1)
	}
	if _, err := s.AtomicPut(ctx, "a", []byte("x"), r1+7); !errors.Is(err, kvstore.ErrKeyModified) {
		t.Fatalf("AtomicPut(wrong revision) error = %v, want ErrKeyModified", err)
	}
	if r2 := mustPut(t, s, "b", "2"); r2 != r1+1 {
		t.Errorf("revision after writes that changed nothing = %d, want %d", r2, r1+1)
	}
}

func TestBatchRejectsBadOps(t *testing.T) {
	ctx := t.Context()
	s := open(t, boltdb.Config{NoSync: true})
	for name, ops := range map[string][]kvstore.Op{
		"duplicate": {{Key: "a", Value: []byte("1")}, {Key: "b", Value: []byte("1")}, {Key: "a"}},
		"empty key": {{Key: "a", Value: []byte("1")}, {Key: "", Value: []byte("1")}},
	} {
		_, err := s.Batch(ctx, ops)
		if !errors.Is(err, errclass.ErrInvalidParameter) {
			t.Errorf("Batch(%s) error = %v, want ErrInvalidParameter", name, err)
		}
		if _, err := s.Get(ctx, "a"); !errors.Is(err, kvstore.ErrKeyNotFound) {
			t.Errorf("Batch(%s) wrote a: Get error = %v", name, err)
		}
	}
}

func TestBatchErrorNamesKey(t *testing.T) {
	ctx := t.Context()
	s := open(t, boltdb.Config{NoSync: true})
	mustPut(t, s, "taken", "1")
	_, err := s.Batch(ctx, []kvstore.Op{{Key: "free", Value: []byte("1")}, {Key: "taken", Value: []byte("2"), Check: true}})
	if !errors.Is(err, kvstore.ErrKeyExists) || !errors.Is(err, errclass.ErrAlreadyExists) {
		t.Fatalf("Batch error = %v, want ErrKeyExists", err)
	}
	if want := `boltdb: batch: op 1 "taken": kvstore: key exists`; err.Error() != want {
		t.Errorf("Batch error = %q, want %q", err, want)
	}
}

func TestEmptyKey(t *testing.T) {
	s := open(t, boltdb.Config{NoSync: true})
	_, err := s.Put(t.Context(), "", []byte("1"))
	if !errors.Is(err, errclass.ErrInvalidParameter) {
		t.Errorf("Put(\"\") error = %v, want ErrInvalidParameter", err)
	}
	if _, err := s.AtomicPut(t.Context(), "", []byte("1"), 0); !errors.Is(err, errclass.ErrInvalidParameter) {
		t.Errorf("AtomicPut(\"\") error = %v, want ErrInvalidParameter", err)
	}
}

func TestOpenLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cnm.db")
	s := openAt(t, path, boltdb.Config{})
	defer s.Close()
	start := time.Now()
	_, err := boltdb.Open(path, boltdb.Config{Timeout: 50 * time.Millisecond})
	if !errors.Is(err, errclass.ErrUnavailable) || !errors.Is(err, berrors.ErrTimeout) {
		t.Fatalf("second Open error = %v, want ErrUnavailable wrapping bbolt's timeout", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("second Open took %v with a 50ms timeout", d)
	}
}

func TestOpenBadConfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cnm.db")
	for _, cfg := range []boltdb.Config{{Timeout: -time.Second}, {WatchHistory: -1}} {
		if _, err := boltdb.Open(path, cfg); !errors.Is(err, errclass.ErrInvalidParameter) {
			t.Errorf("Open(%+v) error = %v, want ErrInvalidParameter", cfg, err)
		}
	}
	if _, err := boltdb.Open(filepath.Join(t.TempDir(), "no", "such", "dir", "cnm.db"), boltdb.Config{}); err == nil {
		t.Errorf("Open in a missing directory succeeded")
	}
}

func TestBucketsIsolated(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "cnm.db")
	a := openAt(t, path, boltdb.Config{Bucket: "a"})
	mustPut(t, a, "k", "in a")
	if err := a.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	b := openAt(t, path, boltdb.Config{Bucket: "b"})
	if _, err := b.Get(ctx, "k"); !errors.Is(err, kvstore.ErrKeyNotFound) {
		t.Errorf("Get(k) in bucket b error = %v, want ErrKeyNotFound", err)
	}
	if rev := mustPut(t, b, "k", "in b"); rev != 1 {
		t.Errorf("first revision in bucket b = %d, want 1", rev)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	a = openAt(t, path, boltdb.Config{Bucket: "a"})
	defer a.Close()
	if got, err := a.Get(ctx, "k"); err != nil || string(got.Value) != "in a" {
		t.Errorf("Get(k) in bucket a = %v, %v; want value \"in a\"", got, err)
	}
}

func TestCloseWithUnreadEvents(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cnm.db")
	s := openAt(t, path, boltdb.Config{NoSync: true})
	ch, err := s.Watch(t.Context(), "", 0)
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	for i := range 10 {
		mustPut(t, s, fmt.Sprint(i), "v")
	}
	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatalf("Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("Close blocked on a watcher that does not read")
	}
	for range ch { // drains at most what was sent before Close, then ends
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close = %v, want nil", err)
	}
}

func TestErrorsNameKey(t *testing.T) {
	s := open(t, boltdb.Config{NoSync: true})
	_, err := s.Get(t.Context(), "cnm/v1/networks/n1")
	if want := `boltdb: get "cnm/v1/networks/n1": kvstore: key not found`; err == nil || err.Error() != want {
		t.Errorf("Get error = %v, want %q", err, want)
	}
	if !errors.Is(err, errclass.ErrNotFound) {
		t.Errorf("Get error %v is not errclass.ErrNotFound", err)
	}
}

func mustPut(t *testing.T, s *boltdb.Store, key, value string) uint64 {
	t.Helper()
	rev, err := s.Put(t.Context(), key, []byte(value))
	if err != nil {
		t.Fatalf("Put(%s): %v", key, err)
	}
	return rev
}

func recv(t *testing.T, ch <-chan kvstore.Event) kvstore.Event {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatalf("watch channel closed, want an event")
		}
		return ev
	case <-time.After(5 * time.Second):
		t.Fatalf("no watch event within 5s")
	}
	panic("unreachable")
}

func expectEvent(t *testing.T, ch <-chan kvstore.Event, typ kvstore.EventType, key, value string, rev uint64) {
	t.Helper()
	ev := recv(t, ch)
	if ev.Type != typ || ev.Pair.Key != key || string(ev.Pair.Value) != value || ev.Pair.Revision != rev {
		t.Fatalf("event = %v %s=%q @%d, want %v %s=%q @%d",
			ev.Type, ev.Pair.Key, ev.Pair.Value, ev.Pair.Revision, typ, key, value, rev)
	}
}
