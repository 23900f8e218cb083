package etcd

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cnmkit/cnm/kvstore"
)

// Backoff between two watch streams of one watch, when the previous one died.
const (
	watchMinBackoff = 50 * time.Millisecond
	watchMaxBackoff = 2 * time.Second
)

// Watch sends every change to keys that start with prefix ("" for all the store's keys) made
// after revision fromRevision, in revision order, until ctx is done or the store is closed; then
// the channel is closed. fromRevision 0 means changes from now on: Watch reads the current
// revision first (one linearizable read, which fails with [kvstore.ErrUnavailable] when etcd
// cannot serve it), so every write that ends after Watch returns is seen.
//
// Events queue in memory without bound until the caller receives them, so writers never wait
// for a reader. Each Event's Value belongs to the receiver. Each watch has one goroutine; it
// ends when ctx is done or the store closes, and Close waits for it. A watch survives member
// restarts and leader changes without losing or repeating events; when it has to resume past
// etcd's compacted history it sends the current state instead, and deletions in that gap are
// lost (see the package documentation).
func (s *Store) Watch(ctx context.Context, prefix string, fromRevision uint64) (<-chan kvstore.Event, error) {
	if err := s.begin(ctx); err != nil {
		return nil, fmt.Errorf("etcd: watch %q: %w", prefix, err)
	}
	start := int64(fromRevision)
	if fromRevision == 0 {
		cctx, cancel := s.callCtx(ctx)
		resp, err := s.cli.Get(cctx, s.probeKey(), clientv3.WithCountOnly())
		cancel()
		if err != nil {
			return nil, fmt.Errorf("etcd: watch %q: %w", prefix, s.mapErr(ctx, err, s.reqTimeout))
		}
		start = resp.Header.Revision
	}

	wctx, cancel := context.WithCancel(ctx)
	w := &watcher{
		s:      s,
		ctx:    wctx,
		prefix: prefix,
		key:    s.prefix + prefix,
		out:    make(chan kvstore.Event),
		last:   start,
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		cancel()
		return nil, fmt.Errorf("etcd: watch %q: %w", prefix, kvstore.ErrClosed)
	}
	s.wg.Add(1)
	s.mu.Unlock()
	stop := context.AfterFunc(s.ctx, cancel) // Close ends the watch
	go func() {
		defer s.wg.Done()
		defer cancel()
		defer stop()
		w.run()
	}()
	return w.out, nil
}

// watcher is one Watch call. Its goroutine, run, reads etcd watch streams into queue and feeds
// out from it; all its fields but the constant ones belong to that goroutine.
type watcher struct {
	s      *Store
	ctx    context.Context // the caller's, canceled by Close too
	prefix string          // as the caller gave it
	key    string          // s.prefix + prefix
	out    chan kvstore.Event

	last  int64 // every event up to this revision is in queue or was sent
	queue []kvstore.Event
}

// errCompacted is returned by stream when etcd no longer holds the revision the watch needs.
type errCompacted struct{ compactRevision int64 }

func (e *errCompacted) Error() string {
	return fmt.Sprintf("revision compacted (etcd history starts at %d)", e.compactRevision)
}

// run serves the watch until its ctx ends, then closes out. It opens an etcd watch stream
// from the last revision seen, and opens another, after a backoff, when one dies.
func (w *watcher) run() {
	defer close(w.out)
	backoff := watchMinBackoff
	for {
		progressed, err := w.stream()
		if w.ctx.Err() != nil {
			return
		}
		if progressed {
			backoff = watchMinBackoff
		}
		if compacted, ok := errors.AsType[*errCompacted](err); ok {
			if err := w.resync(compacted.compactRevision); err == nil {
				backoff = watchMinBackoff
				continue
			} else if w.ctx.Err() != nil {
				return
			} else {
				w.s.log.Info("etcd: watch: reading the current state failed; retrying",
					"prefix", w.prefix, "error", err, "retry_in", backoff)
			}
		} else {
			w.s.log.Info("etcd: watch stream ended; resuming",
				"prefix", w.prefix, "after_revision", w.last, "error", err, "retry_in", backoff)
		}
		if !w.pause(backoff) {
			return
		}
		backoff = min(2*backoff, watchMaxBackoff)
	}
}

// stream runs one etcd watch stream from w.last+1 until it ends or w.ctx is done, queueing its
// events and feeding out meanwhile. It reports whether it received anything, and why it ended.
func (w *watcher) stream() (progressed bool, err error) {
	// WithRequireLeader: a member cut from its leader ends the stream instead of keeping it
	// silently open, so the next one goes to a member that has a leader.
	sctx, cancel := context.WithCancel(clientv3.WithRequireLeader(w.ctx))
	defer cancel()
	wch := w.s.cli.Watch(sctx, w.key, clientv3.WithPrefix(), clientv3.WithRev(w.last+1),
		clientv3.WithProgressNotify())
	for {
		var (
			out  chan<- kvstore.Event
			head kvstore.Event
		)
		if len(w.queue) > 0 {
			out, head = w.out, w.queue[0]
		}
		select {
		case resp, ok := <-wch:
			if !ok {
				return progressed, errors.New("watch channel closed")
			}
			if resp.CompactRevision != 0 {
				return progressed, &errCompacted{compactRevision: resp.CompactRevision}
			}
			if err := resp.Err(); err != nil {
				return progressed, err
			}
			if resp.Canceled {
				return progressed, errors.New("watch canceled by etcd")
			}
			progressed = true
			if resp.IsProgressNotify() {
				// etcd has sent every event up to this revision.
				w.last = max(w.last, resp.Header.Revision)
				continue
			}
			w.add(resp.Events)
		case out <- head:
			w.pop()
		case <-w.ctx.Done():
			return progressed, w.ctx.Err()
		}
	}
}

// add queues the events of one watch response. etcd sends all the events of one revision in
// one response, so an event at or below w.last was queued from an earlier response (the client
// resumed a stream from before it) and is dropped.
func (w *watcher) add(events []*clientv3.Event) {
	floor := w.last
	for _, ev := range events {
		rev := ev.Kv.ModRevision // for a delete, the revision of the delete
		if rev <= floor {
			continue
		}
		pair := kvstore.KVPair{Key: strings.TrimPrefix(string(ev.Kv.Key), w.s.prefix), Revision: uint64(rev)}
		typ := kvstore.EventDelete
		if ev.Type == mvccpb.PUT {
			typ = kvstore.EventPut
			pair.Value = ev.Kv.Value
			if pair.Value == nil {
				pair.Value = []byte{}
			}
		}
		w.queue = append(w.queue, kvstore.Event{Type: typ, Pair: pair})
		w.last = max(w.last, rev)
	}
}

// resync queues the current state of the keys under the prefix changed after w.last, as puts in
// revision order, and moves w.last to the revision of that read. It is what a watch does when
// etcd has compacted the revisions it needed: deletions since w.last are lost.
func (w *watcher) resync(compactRevision int64) error {
	cctx, cancel := w.s.callCtx(w.ctx)
	resp, err := w.s.cli.Get(cctx, w.key, clientv3.WithPrefix())
	cancel()
	if err != nil {
		return w.s.mapErr(w.ctx, err, w.s.reqTimeout)
	}
	w.s.log.Warn("etcd: watch: revisions compacted; sending the current state, deletions in the gap are lost",
		"prefix", w.prefix, "after_revision", w.last, "compact_revision", compactRevision,
		"current_revision", resp.Header.Revision)
	kvs := slices.Clone(resp.Kvs)
	slices.SortFunc(kvs, func(a, b *mvccpb.KeyValue) int {
		return cmp.Or(cmp.Compare(a.ModRevision, b.ModRevision), strings.Compare(string(a.Key), string(b.Key)))
	})
	for _, kv := range kvs {
		if kv.ModRevision <= w.last {
			continue
		}
		w.queue = append(w.queue, kvstore.Event{Type: kvstore.EventPut, Pair: w.s.pair(kv.Key, kv.Value, kv.ModRevision)})
	}
	w.last = max(w.last, resp.Header.Revision)
	return nil
}

// pause waits for d while feeding out. It reports false when w.ctx ended.
func (w *watcher) pause(d time.Duration) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		var (
			out  chan<- kvstore.Event
			head kvstore.Event
		)
		if len(w.queue) > 0 {
			out, head = w.out, w.queue[0]
		}
		select {
		case <-timer.C:
			return true
		case out <- head:
			w.pop()
		case <-w.ctx.Done():
			return false
		}
	}
}

// pop drops the head of the queue, which was sent.
func (w *watcher) pop() {
	w.queue[0] = kvstore.Event{}
	w.queue = w.queue[1:]
}
