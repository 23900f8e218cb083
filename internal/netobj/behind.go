package netobj

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cnmkit/cnm/internal/epobj"
	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/cnmkit/cnm/kvstore"
)

// WriteBehind keeps the global store's copies of the records of this host's runtime endpoints
// on global networks: those Connect makes for a sandbox's namespace (CreateEndpointForJoin with
// runtime set). Such a record lives first in the run store (Config.RunStore), which Join
// commits in line, as for a local network; it is the host's own truth, which a restart reads.
// Its global copy is what the other hosts read: it refuses the network's deletion
// (Records.BeginDelete lists the endpoints of every host) and names the endpoint's host for the
// reclaim of departed hosts. The copy is written:
//
//   - in line, before Join goes on, by the fenced create (Records.CreateEndpoint), when this
//     host holds no other committed global record on the network: that record then fences the
//     network's deletion on every host;
//   - otherwise behind, by one goroutine, in the order of the writes, once Join has committed
//     the run store's record. The fence is already there: no host can delete the network while
//     a record of this host's endpoints is in the store, and the delete of such a record first
//     waits for every write queued before it. The queued create is fenced all the same, so one
//     that meets a network deleted meanwhile (only possible once the other hosts reclaimed
//     this host's records during a lapse of its registration) writes nothing.
//
// So Connect on a network where the host already has an endpoint does not wait for the global
// store (a fenced transaction costs a round trip and the store's disk flush, more than the
// attach's kernel work); a crash of the process keeps the record in the run store, and the
// next start queues its global copy again (RestoreEndpoint). A write the store does not answer
// is retried, in order, until it does; deletes wait for the writes queued before them and are
// made in line, so that their errors reach the caller as before.
type WriteBehind struct {
	run     kvstore.Store
	global  kvstore.Store
	timeout time.Duration // the longest a delete waits for the queue
	log     *slog.Logger

	mu       sync.Mutex                   // guards following
	held     map[string]map[string]uint64 // network ID -> record key -> revision: committed, not being deleted
	queue    []wbOp
	queued   uint64        // writes queued so far
	finished uint64        // writes finished (written, or given up)
	progress chan struct{} // closed, and replaced, when finished grows
	closed   bool

	kick chan struct{}
	stop chan struct{}
	done chan struct{}
}

// wbTick is how often the writer looks at its queue when nothing wakes it.
const wbTick = 100 * time.Millisecond

type wbOp struct {
	seq    uint64
	n      *Net
	key    string
	b      []byte
	create bool // the fenced create (or the record already there); else an update
}

// NewWriteBehind starts the writer of the global copies of records whose own copy is in run;
// global is the global store; a delete waits at most timeout for the writes queued before
// it. Close stops it.
func NewWriteBehind(run, global kvstore.Store, timeout time.Duration, log *slog.Logger) *WriteBehind {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	w := &WriteBehind{run: run, global: global, timeout: timeout, log: log, held: map[string]map[string]uint64{},
		progress: make(chan struct{}), kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	go w.loop()
	return w
}

// Close waits, for at most wait, until the queued writes are made, then stops the writer.
// Writes left queued are made by the next start, which reads their records from the run store.
func (w *WriteBehind) Close(wait time.Duration) error {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return nil
	}
	w.closed = true
	w.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	err := w.Flush(ctx)
	cancel()
	close(w.stop)
	<-w.done
	if err != nil {
		return fmt.Errorf("global store: writes left for the next start: %w", err)
	}
	return nil
}

// Flush waits until every write queued before the call is made (or given up), for at most
// the writer's timeout.
func (w *WriteBehind) Flush(ctx context.Context) error {
	w.mu.Lock()
	target := w.queued
	w.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, w.timeout)
	defer cancel()
	return w.waitFor(ctx, target)
}

// waitFor waits until the writes up to the target'th are made (or given up).
func (w *WriteBehind) waitFor(ctx context.Context, target uint64) error {
	w.Kick()
	w.mu.Lock()
	for w.finished < target {
		ch := w.progress
		w.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return &errclass.UnavailableError{What: "global store (queued writes)", Err: ctx.Err()}
		case <-w.done:
			return &errclass.UnavailableError{What: "global store (queued writes)", Err: errors.New("writer stopped")}
		}
		w.mu.Lock()
	}
	w.mu.Unlock()
	return nil
}

// Owns says whether s is the store of endpoint records whose global copies w keeps.
func (w *WriteBehind) Owns(s kvstore.Store) bool {
	b, ok := s.(*behindStore)
	return ok && b.w == w
}

// DeleteGlobal deletes the global copies of the records at keys (endpoint records of global
// networks, whose run-store copies the caller deletes), in one transaction. A copy that this
// host holds fences its network: it is deleted once every write queued for that network is
// made (those creates counted on it). A copy still queued is deleted once it is written. A
// key with neither was never written (its create failed: when the store did not answer, its
// cleanup is the Records' Uncertain), and is left alone. It waits at most the writer's
// timeout for the queue.
func (w *WriteBehind) DeleteGlobal(ctx context.Context, keys []string) error {
	w.mu.Lock()
	fences := map[string]bool{}
	want := map[string]bool{}
	var del []string
	for _, k := range keys {
		if m := w.held[keyNetwork(k)]; m != nil {
			if _, ok := m[k]; ok {
				delete(m, k)
				fences[keyNetwork(k)] = true
				want[k] = true
			}
		}
	}
	var target uint64
	for _, op := range w.queue {
		if fences[op.n.ID()] || slices.Contains(keys, op.key) {
			target = op.seq
			want[op.key] = want[op.key] || slices.Contains(keys, op.key)
		}
	}
	for _, k := range keys {
		if want[k] {
			del = append(del, k)
		}
	}
	w.mu.Unlock()
	if len(del) == 0 {
		return nil
	}
	if target > 0 {
		wctx, cancel := context.WithTimeout(ctx, w.timeout)
		err := w.waitFor(wctx, target)
		cancel()
		if err != nil {
			return err
		}
		// A create of one of them that was being written when this call began held it
		// again: it is no fence from now on.
		w.mu.Lock()
		for _, k := range del {
			delete(w.held[keyNetwork(k)], k)
		}
		w.mu.Unlock()
	}
	ops := make([]kvstore.Op, len(del))
	for i, k := range del {
		ops[i] = kvstore.Op{Key: k}
	}
	if b, ok := w.global.(kvstore.Batcher); ok {
		_, err := b.Batch(ctx, ops)
		return err
	}
	var errs []error
	for _, k := range del {
		if err := w.global.Delete(ctx, k); err != nil && !errors.Is(err, kvstore.ErrKeyNotFound) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// keyNetwork returns the network ID in an endpoint record's key.
func keyNetwork(key string) string {
	id, _, _ := strings.Cut(strings.TrimPrefix(key, epobj.KeyPrefix), "/")
	return id
}

// enqueueLocked queues a write and wakes the writer. The caller holds w.mu.
func (w *WriteBehind) enqueueLocked(op wbOp) {
	w.enqueueQuietLocked(op)
	w.Kick()
}

// enqueueQuietLocked queues a write for the writer's next wake-up (Kick, or its tick). The
// caller holds w.mu.
func (w *WriteBehind) enqueueQuietLocked(op wbOp) {
	w.queued++
	op.seq = w.queued
	w.queue = append(w.queue, op)
}

// Kick wakes the writer. Controller.Connect calls it once its Join returns: the copy that Join
// queued is written then, not while the attach's kernel work runs, which it would compete
// with for the CPUs.
func (w *WriteBehind) Kick() {
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

// Requeue queues the fenced create of the global copy of a record read back from the run store
// (a restart, or a network that waited for its driver): it is written unless it is there.
func (w *WriteBehind) Requeue(n *Net, key string, b []byte) {
	w.mu.Lock()
	w.enqueueLocked(wbOp{n: n, key: key, b: b, create: true})
	w.mu.Unlock()
}

// republish writes the global copy of a record again, in line, fenced, after the writes queued
// before it (Net.Reassert: the other hosts reclaimed it while this host's registration lapsed).
func (w *WriteBehind) republish(ctx context.Context, n *Net, key string, b []byte) error {
	if err := w.Flush(ctx); err != nil {
		return err
	}
	rev, err := n.cfg.Records.PutEndpoints(ctx, n.Record(), []kvstore.KVPair{{Key: key, Value: b}})
	if err != nil {
		return err
	}
	w.mu.Lock()
	w.holdLocked(n.ID(), key, rev)
	w.mu.Unlock()
	return nil
}

func (w *WriteBehind) holdLocked(nid, key string, rev uint64) {
	m := w.held[nid]
	if m == nil {
		m = map[string]uint64{}
		w.held[nid] = m
	}
	m[key] = rev
}

// loop makes the queued writes in order. A write the store does not answer is tried again,
// the writes behind it waiting, with a pause that doubles up to a second.
func (w *WriteBehind) loop() {
	defer close(w.done)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-w.stop
		cancel()
	}()
	pause := 50 * time.Millisecond
	tick := time.NewTicker(wbTick)
	defer tick.Stop()
	for {
		select {
		case <-w.stop:
			return
		case <-w.kick:
		case <-tick.C:
		}
		for {
			ops := w.next()
			if len(ops) == 0 {
				break
			}
			err := w.apply(ctx, ops)
			if errors.Is(err, errclass.ErrUnavailable) {
				w.log.Warn("global store: queued write of endpoint records failed; trying again", "records", len(ops), "first", ops[0].key, "err", err)
				select {
				case <-w.stop:
					return
				case <-time.After(pause):
				}
				pause = min(2*pause, time.Second)
				continue
			}
			pause = 50 * time.Millisecond
			if err != nil {
				w.log.Error("global store: queued write of endpoint records given up", "records", len(ops), "first", ops[0].key, "err", err)
			}
			w.mu.Lock()
			w.queue = w.queue[len(ops):]
			w.finished = ops[len(ops)-1].seq
			close(w.progress)
			w.progress = make(chan struct{})
			w.mu.Unlock()
		}
	}
}

// wbBatch is the most creates the writer puts in one transaction (Consul takes 64 operations
// in one, etcd 128 by default).
const wbBatch = 32

// next returns the writes to make next, leaving them queued: the head's, with the creates of
// the same network queued right behind a create (a burst of Connects), for one transaction.
func (w *WriteBehind) next() []wbOp {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.queue) == 0 {
		return nil
	}
	head := w.queue[0]
	n := 1
	for head.create && n < len(w.queue) && n < wbBatch && w.queue[n].create && w.queue[n].n == head.n {
		n++
	}
	return slices.Clone(w.queue[:n])
}

// apply makes queued writes: several creates of one network in one transaction, falling back
// to one at a time when one of them is there already (an earlier try that landed).
func (w *WriteBehind) apply(ctx context.Context, ops []wbOp) error {
	if len(ops) == 1 {
		return w.applyOne(ctx, ops[0])
	}
	kvs := make([]kvstore.KVPair, len(ops))
	for i, op := range ops {
		kvs[i] = kvstore.KVPair{Key: op.key, Value: op.b}
	}
	n := ops[0].n
	rev, err := n.cfg.Records.PutEndpoints(ctx, n.Record(), kvs)
	if errors.Is(err, kvstore.ErrKeyExists) {
		var errs []error
		for _, op := range ops {
			if err := w.applyOne(ctx, op); err != nil {
				if errors.Is(err, errclass.ErrUnavailable) {
					return err // the whole is tried again; those written count as written
				}
				errs = append(errs, err)
			}
		}
		return errors.Join(errs...)
	}
	if err != nil {
		return err
	}
	w.mu.Lock()
	for _, op := range ops {
		w.holdLocked(n.ID(), op.key, rev)
	}
	w.mu.Unlock()
	return nil
}

// applyOne makes one queued write.
func (w *WriteBehind) applyOne(ctx context.Context, op wbOp) error {
	nid := op.n.ID()
	if op.create {
		rev, err := op.n.cfg.Records.PutEndpoints(ctx, op.n.Record(), []kvstore.KVPair{{Key: op.key, Value: op.b}})
		if err != nil {
			return err
		}
		w.mu.Lock()
		w.holdLocked(nid, op.key, rev)
		w.mu.Unlock()
		return nil
	}
	w.mu.Lock()
	rev, ok := w.held[nid][op.key]
	w.mu.Unlock()
	if !ok {
		return nil // its create was given up, or it is being deleted
	}
	rev, err := w.global.AtomicPut(ctx, op.key, op.b, rev)
	if err != nil {
		if errors.Is(err, kvstore.ErrKeyNotFound) {
			// Reclaimed by the other hosts (a lapse of this host's registration): no fence;
			// Reassert puts it back. A record changed by another writer stays held, so that
			// its delete still goes to the store.
			w.mu.Lock()
			delete(w.held[nid], op.key)
			w.mu.Unlock()
		}
		return err
	}
	w.mu.Lock()
	if m := w.held[nid]; m != nil {
		if _, ok := m[op.key]; ok {
			m[op.key] = rev
		}
	}
	w.mu.Unlock()
	return nil
}

// store returns the store of network n's runtime endpoint records: the run store, with the
// global copies kept by w.
func (w *WriteBehind) store(n *Net) *behindStore { return &behindStore{w: w, n: n} }

// behindStore is the kvstore.Store of a global network's runtime endpoint records: reads and
// writes go to the run store; each write's global copy follows (WriteBehind).
type behindStore struct {
	w *WriteBehind
	n *Net
}

var _ kvstore.Store = (*behindStore)(nil)

func (s *behindStore) Get(ctx context.Context, key string) (kvstore.KVPair, error) {
	return s.w.run.Get(ctx, key)
}

func (s *behindStore) List(ctx context.Context, prefix string) ([]kvstore.KVPair, error) {
	return s.w.run.List(ctx, prefix)
}

func (s *behindStore) Watch(ctx context.Context, prefix string, from uint64) (<-chan kvstore.Event, error) {
	return s.w.run.Watch(ctx, prefix, from)
}

// Close does nothing: the run store is the Controller's.
func (s *behindStore) Close() error { return nil }

func (s *behindStore) Put(ctx context.Context, key string, value []byte) (uint64, error) {
	rev, err := s.w.run.Put(ctx, key, value)
	if err == nil {
		s.w.mu.Lock()
		s.w.enqueueLocked(wbOp{n: s.n, key: key, b: value})
		s.w.mu.Unlock()
	}
	return rev, err
}

// AtomicPut writes the run store's record. The global copy of a new record (prev 0) is written
// in line when this host holds no other committed record on the network, else queued; that of
// an update is queued.
func (s *behindStore) AtomicPut(ctx context.Context, key string, value []byte, prev uint64) (uint64, error) {
	rev, err := s.w.run.AtomicPut(ctx, key, value, prev)
	if err != nil {
		return 0, err
	}
	w, nid := s.w, s.n.ID()
	w.mu.Lock()
	if prev == 0 && len(w.held[nid]) > 0 {
		// Written once the join is done (Kick), or at the writer's next tick.
		w.enqueueQuietLocked(wbOp{n: s.n, key: key, b: value, create: true})
		w.mu.Unlock()
		return rev, nil
	}
	if prev != 0 {
		w.enqueueLocked(wbOp{n: s.n, key: key, b: value})
		w.mu.Unlock()
		return rev, nil
	}
	w.mu.Unlock()
	grev, err := s.n.cfg.Records.CreateEndpoint(ctx, s.n.Record(), key, value)
	if err != nil {
		if derr := w.run.Delete(context.WithoutCancel(ctx), key); derr != nil {
			err = errors.Join(err, fmt.Errorf("run store: %w", derr))
		}
		return 0, err
	}
	w.mu.Lock()
	w.holdLocked(nid, key, grev)
	w.mu.Unlock()
	return rev, nil
}

// Delete deletes the global copy (after the writes queued before it), then the run store's.
func (s *behindStore) Delete(ctx context.Context, key string) error {
	if err := s.w.DeleteGlobal(ctx, []string{key}); err != nil && !errors.Is(err, kvstore.ErrKeyNotFound) {
		return err
	}
	return s.w.run.Delete(ctx, key)
}

// AtomicDelete is Delete, the run store's record deleted at prev.
func (s *behindStore) AtomicDelete(ctx context.Context, key string, prev uint64) error {
	if err := s.w.DeleteGlobal(ctx, []string{key}); err != nil && !errors.Is(err, kvstore.ErrKeyNotFound) {
		return err
	}
	return s.w.run.AtomicDelete(ctx, key, prev)
}
