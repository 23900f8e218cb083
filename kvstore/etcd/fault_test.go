package etcd_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cnmkit/cnm/internal/storetest"
	"github.com/cnmkit/cnm/kvstore"
	"github.com/cnmkit/cnm/kvstore/etcd"
)

// recoverWithin bounds the wait for a store to work again once its members are back.
const recoverWithin = 15 * time.Second

// model is what a test wrote and expects to read back: key → revision and value.
type model map[string]kvstore.KVPair

// put writes key through s, records it, and returns its revision.
func (m model) put(t *testing.T, s kvstore.Store, key, value string) uint64 {
	t.Helper()
	rev := mustPut(t, s, key, value)
	m[key] = kvstore.KVPair{Key: key, Value: []byte(value), Revision: rev}
	return rev
}

// check lists prefix and compares it with m.
func (m model) check(t *testing.T, s kvstore.Store, prefix string) {
	t.Helper()
	got, err := s.List(t.Context(), prefix)
	if err != nil {
		t.Fatalf("List(%s): %v", prefix, err)
	}
	var want []kvstore.KVPair
	for _, k := range slices.Sorted(maps.Keys(m)) {
		want = append(want, m[k])
	}
	if !slices.EqualFunc(got, want, func(a, b kvstore.KVPair) bool {
		return a.Key == b.Key && string(a.Value) == string(b.Value) && a.Revision == b.Revision
	}) {
		t.Errorf("List(%s) = %v\nwant %v", prefix, got, want)
	}
}

// awaitWorking retries a Put of key until it succeeds, for up to recoverWithin, and returns
// its revision and how long it took. Each try is bounded by the store's RequestTimeout.
func awaitWorking(t *testing.T, s kvstore.Store, m model, key, value string) (uint64, time.Duration) {
	t.Helper()
	start := time.Now()
	for {
		rev, err := s.Put(t.Context(), key, []byte(value))
		if err == nil {
			m[key] = kvstore.KVPair{Key: key, Value: []byte(value), Revision: rev}
			return rev, time.Since(start)
		}
		if !errors.Is(err, kvstore.ErrUnavailable) {
			t.Fatalf("Put(%s) while the store recovers: %v, want success or ErrUnavailable", key, err)
		}
		if time.Since(start) > recoverWithin {
			t.Fatalf("store not working %v after the members came back: %v", recoverWithin, err)
		}
	}
}

// expectUnavailable runs call, which must fail with ErrUnavailable naming what, within bound.
func expectUnavailable(t *testing.T, what string, bound time.Duration, call func(ctx context.Context) error) {
	t.Helper()
	start := time.Now()
	err := call(t.Context())
	took := time.Since(start)
	switch {
	case err == nil:
		t.Errorf("%s succeeded without quorum", what)
	case !errors.Is(err, kvstore.ErrUnavailable):
		t.Errorf("%s: error = %v, want ErrUnavailable", what, err)
	case took > bound:
		t.Errorf("%s failed after %v, want within %v: %v", what, took, bound, err)
	default:
		t.Logf("%s failed after %v: %v", what, took.Round(time.Millisecond), err)
	}
}

// TestRestartMidWork stops the only member in the middle of work: calls fail with
// ErrUnavailable within the request timeout, and once the member is back a watch opened
// before resumes with exactly the events written after the restart, and the state is intact.
func TestRestartMidWork(t *testing.T) {
	cluster := storetest.StartEtcd(t)
	ctx := t.Context()
	const reqTimeout = time.Second
	s := openClosed(t, cluster.Endpoints(), etcd.Config{RequestTimeout: reqTimeout, DialTimeout: reqTimeout})
	m := model{}

	ch, err := s.Watch(ctx, "rm/", 0)
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	for i := range 5 {
		key := fmt.Sprintf("rm/before/%d", i)
		rev := m.put(t, s, key, "b")
		expect(t, ch, kvstore.EventPut, key, "b", rev)
	}
	if err := s.Delete(ctx, "rm/before/4"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	delete(m, "rm/before/4")
	if ev := recv(t, ch); ev.Type != kvstore.EventDelete || ev.Pair.Key != "rm/before/4" {
		t.Fatalf("event = %v %s, want delete rm/before/4", ev.Type, ev.Pair.Key)
	}

	cluster.Stop(0)
	bound := 3 * time.Second
	expectUnavailable(t, "Put", bound, func(ctx context.Context) error {
		_, err := s.Put(ctx, "rm/during", []byte("x"))
		if err != nil && !strings.Contains(err.Error(), "rm/during") {
			t.Errorf("Put error %q does not name the key", err)
		}
		return err
	})
	expectUnavailable(t, "Get", bound, func(ctx context.Context) error {
		_, err := s.Get(ctx, "rm/before/0")
		return err
	})
	expectUnavailable(t, "AtomicPut", bound, func(ctx context.Context) error {
		_, err := s.AtomicPut(ctx, "rm/before/0", []byte("x"), m["rm/before/0"].Revision)
		return err
	})
	expectUnavailable(t, "List", bound, func(ctx context.Context) error {
		_, err := s.List(ctx, "rm/")
		return err
	})
	expectUnavailable(t, "Watch", bound, func(ctx context.Context) error {
		_, err := s.Watch(ctx, "rm/", 0)
		return err
	})
	expectUnavailable(t, "Grant", bound, func(ctx context.Context) error {
		_, err := s.Grant(ctx, 5*time.Second)
		return err
	})
	expectUnavailable(t, "Lock", bound, func(ctx context.Context) error {
		_, err := s.Lock(ctx, "rm/lock")
		return err
	})
	// The caller's own cancellation stays the caller's.
	cctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	_, err = s.Put(cctx, "rm/during", []byte("x"))
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, kvstore.ErrUnavailable) {
		t.Errorf("Put with the caller's 100ms deadline while etcd is down: error = %v, want context.DeadlineExceeded only", err)
	}

	cluster.Start(0)
	first, took := awaitWorking(t, s, m, "rm/after/0", "a")
	t.Logf("first Put after the restart succeeded %v after the member served", took.Round(time.Millisecond))
	revs := []uint64{first}
	for i := 1; i < 5; i++ {
		revs = append(revs, m.put(t, s, fmt.Sprintf("rm/after/%d", i), "a"))
	}
	// Exactly the writes after the restart, in order, none twice, nothing in between.
	for i, rev := range revs {
		expect(t, ch, kvstore.EventPut, fmt.Sprintf("rm/after/%d", i), "a", rev)
	}
	end := m.put(t, s, "rm/end", "e")
	expect(t, ch, kvstore.EventPut, "rm/end", "e", end)
	m.check(t, s, "rm/")
}

// TestClusterLosesOneMember stops the leader of three members: puts, compare-and-swap and a
// watch go on working with the two left, and nothing is lost when it comes back.
func TestClusterLosesOneMember(t *testing.T) {
	cluster := storetest.StartEtcdCluster(t, 3)
	ctx := t.Context()
	prefix := uniquePrefix(t)
	// The default RequestTimeout (5s) leaves room for an election, should the leader's
	// handover on SIGTERM fail.
	s := openClosed(t, cluster.Endpoints(), etcd.Config{Prefix: prefix})
	m := model{}
	ch, err := s.Watch(ctx, "c1/", 0)
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	rev := m.put(t, s, "c1/counter", "0")
	expect(t, ch, kvstore.EventPut, "c1/counter", "0", rev)

	leader := leaderOf(t, cluster)
	cluster.Stop(leader)
	t.Logf("stopped member %d, the leader", leader)
	for i := 1; i <= 5; i++ {
		v := fmt.Sprint(i)
		rev, err = s.AtomicPut(ctx, "c1/counter", []byte(v), rev)
		if err != nil {
			t.Fatalf("AtomicPut(c1/counter, %s) with one member down: %v", v, err)
		}
		m["c1/counter"] = kvstore.KVPair{Key: "c1/counter", Value: []byte(v), Revision: rev}
		expect(t, ch, kvstore.EventPut, "c1/counter", v, rev)
		key := "c1/down/" + v
		expect(t, ch, kvstore.EventPut, key, "d", m.put(t, s, key, "d"))
	}
	if _, err := s.AtomicPut(ctx, "c1/counter", []byte("stale"), rev-1); !errors.Is(err, kvstore.ErrKeyModified) {
		t.Errorf("stale AtomicPut with one member down: error = %v, want ErrKeyModified", err)
	}
	m.check(t, s, "c1/")

	cluster.Start(leader)
	// Work goes on; the member that came back has everything.
	expect(t, ch, kvstore.EventPut, "c1/back", "b", m.put(t, s, "c1/back", "b"))
	only := openClosed(t, []string{cluster.Endpoint(leader)}, etcd.Config{Prefix: prefix})
	m.check(t, only, "c1/")
}

// TestClusterLosesTwoMembers stops two of three members: every call fails promptly with
// ErrUnavailable; once they are back, the store works again, the watch resumes without a gap
// or a repeat, and nothing is lost.
//
// A write that failed with ErrUnavailable may still take effect: the member left alone may
// have put it in its log before it knew it had lost its quorum, and commits it when the
// others are back. So the test accepts, for each write of the outage, either outcome, and
// checks that the watch and the state agree on it.
func TestClusterLosesTwoMembers(t *testing.T) {
	cluster := storetest.StartEtcdCluster(t, 3)
	ctx := t.Context()
	const reqTimeout = 2 * time.Second
	logs := &logRecorder{}
	s := openClosed(t, cluster.Endpoints(), etcd.Config{RequestTimeout: reqTimeout, Logger: slog.New(logs)})
	m := model{}
	ch, err := s.Watch(ctx, "c2/", 0)
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	var lastBefore uint64
	for i := range 3 {
		key := fmt.Sprintf("c2/before/%d", i)
		lastBefore = m.put(t, s, key, "b")
		expect(t, ch, kvstore.EventPut, key, "b", lastBefore)
	}

	cluster.Stop(0)
	cluster.Stop(1)
	bound := 2 * reqTimeout
	// What each write of the outage would leave if it took effect (nil: deleted).
	outage := map[string][]byte{}
	expectUnavailable(t, "Put", bound, func(ctx context.Context) error {
		outage["c2/during"] = []byte("x")
		_, err := s.Put(ctx, "c2/during", []byte("x"))
		return err
	})
	expectUnavailable(t, "AtomicPut", bound, func(ctx context.Context) error {
		outage["c2/before/0"] = []byte("x")
		_, err := s.AtomicPut(ctx, "c2/before/0", []byte("x"), m["c2/before/0"].Revision)
		return err
	})
	expectUnavailable(t, "Get", bound, func(ctx context.Context) error {
		_, err := s.Get(ctx, "c2/before/0")
		return err
	})
	expectUnavailable(t, "List", bound, func(ctx context.Context) error {
		_, err := s.List(ctx, "c2/")
		return err
	})
	expectUnavailable(t, "Delete", bound, func(ctx context.Context) error {
		outage["c2/before/1"] = nil
		return s.Delete(ctx, "c2/before/1")
	})
	expectUnavailable(t, "Batch", bound, func(ctx context.Context) error {
		outage["c2/batch"] = []byte("x")
		_, err := s.Batch(ctx, []kvstore.Op{{Key: "c2/batch", Value: []byte("x")}})
		return err
	})
	expectUnavailable(t, "Lock", bound, func(ctx context.Context) error {
		_, err := s.Lock(ctx, "c2/lock")
		return err
	})

	cluster.Start(0)
	cluster.Start(1)
	first, took := awaitWorking(t, s, m, "c2/after/0", "a")
	t.Logf("first Put after the quorum came back succeeded after %v", took.Round(time.Millisecond))
	second := m.put(t, s, "c2/after/1", "a")
	end := m.put(t, s, "c2/end", "e")

	// The watch: each event once, in revision order, after the last one before the outage;
	// the writes after it all there; any other event is a write of the outage.
	var events []kvstore.Event
	for {
		ev := recv(t, ch)
		events = append(events, ev)
		if ev.Pair.Key == "c2/end" {
			break
		}
	}
	prev := lastBefore
	applied := map[string]bool{}
	for _, ev := range events {
		if ev.Pair.Revision <= prev {
			t.Errorf("event %v %s @%d after one at revision %d: repeated or out of order", ev.Type, ev.Pair.Key, ev.Pair.Revision, prev)
		}
		prev = ev.Pair.Revision
		switch ev.Pair.Revision {
		case first, second, end:
			continue
		}
		want, ok := outage[ev.Pair.Key]
		if !ok || (want == nil) != (ev.Type == kvstore.EventDelete) || string(want) != string(ev.Pair.Value) {
			t.Errorf("event %v %s=%q @%d is neither a write after the outage nor one tried during it", ev.Type, ev.Pair.Key, ev.Pair.Value, ev.Pair.Revision)
			continue
		}
		applied[ev.Pair.Key] = true
		if want == nil {
			delete(m, ev.Pair.Key)
		} else {
			m[ev.Pair.Key] = ev.Pair
		}
	}
	if got, want := len(events)-len(applied), 3; got != want {
		t.Errorf("%d events besides the outage's, want the %d writes after it: %v", got, want, events)
	}
	t.Logf("writes of the outage that took effect after all: %v", slices.Sorted(maps.Keys(applied)))
	// The member left alone canceled the watch (no leader); the store opened it again.
	if n := logs.count("etcd: watch stream ended; resuming"); n == 0 {
		t.Errorf("the watch was never resumed by the store, though its member lost its leader")
	} else {
		t.Logf("the store resumed the watch %d times", n)
	}
	// The state: what was written before and after, and the outage's writes that the watch
	// reported, nothing else.
	m.check(t, s, "c2/")
}

// leaderOf returns the index of the cluster's leader.
func leaderOf(t *testing.T, cluster *storetest.EtcdCluster) int {
	t.Helper()
	cli := rawClient(t, cluster.Endpoints())
	for i := range cluster.Len() {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		st, err := cli.Status(ctx, cluster.Endpoint(i))
		cancel()
		if err != nil {
			t.Fatalf("Status(%s): %v", cluster.Endpoint(i), err)
		}
		if st.Leader == st.Header.MemberId {
			return i
		}
	}
	t.Fatal("no member is the leader")
	return -1
}
