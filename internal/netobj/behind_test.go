package netobj

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/internal/epobj"
	"github.com/cnmkit/cnm/internal/runstore"
	"github.com/cnmkit/cnm/kvstore"
	"github.com/cnmkit/cnm/kvstore/boltdb"
)

// gatedRecords is the Records of a global network on store s, whose creates PutEndpoint (the
// writer's) can be held back until release; it counts each kind of create.
type gatedRecords struct {
	s             kvstore.Store
	inLine, queue atomic.Int32
	mu            sync.Mutex
	gate          chan struct{}
	entered       chan string // a held PutEndpoint's key, once it waits
}

func (g *gatedRecords) Scope() drivers.Scope                                { return drivers.GlobalScope }
func (g *gatedRecords) Store() kvstore.Store                                { return g.s }
func (g *gatedRecords) Host() string                                        { return "host-a" }
func (g *gatedRecords) Uncertain(error, ...UncertainKey)                    {}
func (g *gatedRecords) CreateNetwork(context.Context, Record, []byte) error { return nil }
func (g *gatedRecords) BeginDelete(context.Context, Record) (func(context.Context, bool) error, error) {
	return nil, errors.New("not used")
}

func (g *gatedRecords) CreateEndpoint(ctx context.Context, _ Record, key string, b []byte) (uint64, error) {
	g.inLine.Add(1)
	return g.s.AtomicPut(ctx, key, b, 0)
}

func (g *gatedRecords) PutEndpoints(ctx context.Context, rec Record, kvs []kvstore.KVPair) (uint64, error) {
	g.queue.Add(1)
	g.mu.Lock()
	gate := g.gate
	g.mu.Unlock()
	if gate != nil {
		g.entered <- kvs[0].Key
		<-gate
	}
	return LocalRecords(g.s).PutEndpoints(ctx, rec, kvs)
}

func (g *gatedRecords) hold() {
	g.mu.Lock()
	g.gate, g.entered = make(chan struct{}), make(chan string, 8)
	g.mu.Unlock()
}

func (g *gatedRecords) release() {
	g.mu.Lock()
	close(g.gate)
	g.gate = nil
	g.mu.Unlock()
}

// TestWriteBehind: the host's first record on a network is written to the global store in
// line; the next ones are queued and written once the writer is woken; deleting a record waits
// for the creates queued for its network, and a create that was being written when its delete
// began leaves no fence behind (the next record is written in line again).
func TestWriteBehind(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	run, _, err := runstore.Open(filepath.Join(dir, "records.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer run.Close()
	global, err := boltdb.Open(filepath.Join(dir, "global.db"), boltdb.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer global.Close()
	recs := &gatedRecords{s: global}
	n := &Net{cfg: Config{Records: recs}, rec: Record{ID: "n1", Name: "g"}}
	w := NewWriteBehind(run, global, 5*time.Second, nil)
	defer w.Close(time.Second)
	bs := w.store(n)
	key := func(id string) string { return epobj.Key("n1", id) }
	in := func(s kvstore.Store, id string) bool {
		_, err := s.Get(ctx, key(id))
		return err == nil
	}

	// The first record: in line.
	if _, err := bs.AtomicPut(ctx, key("e1"), []byte(`{"id":"e1"}`), 0); err != nil {
		t.Fatal(err)
	}
	if !in(global, "e1") || !in(run, "e1") || recs.inLine.Load() != 1 {
		t.Fatalf("first record: global %v, run %v, in-line creates %d; want both, 1", in(global, "e1"), in(run, "e1"), recs.inLine.Load())
	}

	// The second: queued, written once the writer is woken; held back here, mid-write.
	recs.hold()
	if _, err := bs.AtomicPut(ctx, key("e2"), []byte(`{"id":"e2"}`), 0); err != nil {
		t.Fatal(err)
	}
	if in(global, "e2") || !in(run, "e2") || recs.inLine.Load() != 1 {
		t.Fatalf("second record: global %v, run %v, in-line creates %d; want run only, 1", in(global, "e2"), in(run, "e2"), recs.inLine.Load())
	}
	w.Kick()
	select {
	case k := <-recs.entered:
		if k != key("e2") {
			t.Fatalf("writer writes %s, want e2's", k)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the writer did not start the queued create")
	}

	// Deleting e1 (a fence) and e2 (being written) waits for e2's create.
	deleted := make(chan error, 1)
	go func() { deleted <- w.DeleteGlobal(ctx, []string{key("e1"), key("e2")}) }()
	select {
	case err := <-deleted:
		t.Fatalf("DeleteGlobal returned (%v) before the queued create was written", err)
	case <-time.After(100 * time.Millisecond):
	}
	recs.release()
	if err := <-deleted; err != nil {
		t.Fatalf("DeleteGlobal: %v", err)
	}
	if in(global, "e1") || in(global, "e2") {
		t.Fatalf("after DeleteGlobal: global e1 %v, e2 %v; want neither", in(global, "e1"), in(global, "e2"))
	}
	// No fence is left: the next record is written in line.
	if _, err := bs.AtomicPut(ctx, key("e3"), []byte(`{"id":"e3"}`), 0); err != nil {
		t.Fatal(err)
	}
	if got := recs.inLine.Load(); got != 2 || !in(global, "e3") {
		t.Fatalf("after the deletes: in-line creates %d, e3 in global %v; want 2, true", got, in(global, "e3"))
	}
	// An update follows in order, and a delete through the store removes both copies.
	if _, err := bs.AtomicPut(ctx, key("e3"), []byte(`{"id":"e3","v":2}`), 1); err == nil {
		t.Fatal("update at a stale revision accepted")
	}
	kv, err := run.Get(ctx, key("e3"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bs.AtomicPut(ctx, key("e3"), []byte(`{"id":"e3","v":2}`), kv.Revision); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if g, err := global.Get(ctx, key("e3")); err != nil || string(g.Value) != `{"id":"e3","v":2}` {
		t.Fatalf("global e3 after the update = %q, %v", g.Value, err)
	}
	kv, _ = run.Get(ctx, key("e3"))
	if err := bs.AtomicDelete(ctx, key("e3"), kv.Revision); err != nil {
		t.Fatal(err)
	}
	if in(global, "e3") || in(run, "e3") {
		t.Fatalf("after AtomicDelete: global %v, run %v; want neither", in(global, "e3"), in(run, "e3"))
	}

	// A burst: the creates queued behind a fence go in one transaction; when one of them is
	// there already (an earlier try that landed), they are written one by one.
	n2 := &Net{cfg: Config{Records: recs}, rec: Record{ID: "n2", Name: "g2"}}
	bs2 := w.store(n2)
	key2 := func(id string) string { return epobj.Key("n2", id) }
	for _, id := range []string{"f", "b1", "b2", "b3", "b4", "b5"} {
		if _, err := bs2.AtomicPut(ctx, key2(id), []byte(`{"id":"`+id+`"}`), 0); err != nil {
			t.Fatal(err)
		}
	}
	before := recs.queue.Load()
	w.Kick()
	if err := w.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := recs.queue.Load() - before; got > 2 {
		t.Errorf("five queued creates took %d transactions, want 1 (2 if the writer's tick split them)", got)
	}
	if _, err := global.AtomicPut(ctx, key2("c3"), []byte(`{"id":"c3"}`), 0); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"c1", "c2", "c3", "c4"} {
		if _, err := bs2.AtomicPut(ctx, key2(id), []byte(`{"id":"`+id+`"}`), 0); err != nil {
			t.Fatal(err)
		}
	}
	w.Kick()
	if err := w.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	ids := []string{"f", "b1", "b2", "b3", "b4", "b5", "c1", "c2", "c3", "c4"}
	var keys []string
	for _, id := range ids {
		keys = append(keys, key2(id))
		if _, err := global.Get(ctx, key2(id)); err != nil {
			t.Errorf("%s: not in the global store: %v", id, err)
		}
	}
	if err := w.DeleteGlobal(ctx, keys); err != nil {
		t.Fatal(err)
	}
	if pairs, err := global.List(ctx, epobj.KeyPrefix+"n2/"); err != nil || len(pairs) != 0 {
		t.Errorf("after DeleteGlobal of all: %d records left (%v)", len(pairs), err)
	}
}
