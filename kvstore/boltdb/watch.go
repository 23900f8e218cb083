package boltdb

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"

	bolt "go.etcd.io/bbolt"

	"github.com/cnmkit/cnm/kvstore"
)

// Watch sends every change to keys that start with prefix ("" for all keys) made after
// revision fromRevision, in revision order, until ctx is done or the store is closed; then the
// channel is closed. fromRevision 0 means changes from now on. When fromRevision is older than
// the in-memory history (see the package documentation), Watch first sends the current state
// of the keys changed since fromRevision as puts instead, and deletions in that gap are lost.
//
// Events queue in memory without bound until the caller receives them, so writers never
// wait for a reader. Each Event's Value belongs to the receiver. Each watch has its own
// goroutine that feeds the channel; it ends when ctx is done or the store closes, and Close
// waits for it.
func (s *Store) Watch(ctx context.Context, prefix string, fromRevision uint64) (<-chan kvstore.Event, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("boltdb: watch %q: %w", prefix, err)
	}
	// Holding writeMu keeps commits out between reading the backlog and registering.
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	if s.closed() {
		return nil, fmt.Errorf("boltdb: watch %q: %w", prefix, kvstore.ErrClosed)
	}

	var backlog []kvstore.Event
	if fromRevision > 0 {
		s.mu.Lock()
		floor := s.history.floor
		if fromRevision >= floor {
			backlog = s.history.since(prefix, fromRevision)
		}
		s.mu.Unlock()
		if fromRevision < floor {
			s.log.Info("boltdb: watch revision older than history; sending current state",
				"prefix", prefix, "from", fromRevision, "history_floor", floor)
			var err error
			if backlog, err = s.snapshot(prefix, fromRevision); err != nil {
				return nil, fmt.Errorf("boltdb: watch %q from %d: %w", prefix, fromRevision, mapErr(err))
			}
		}
	}

	w := &watcher{
		s:      s,
		ctx:    ctx,
		prefix: prefix,
		out:    make(chan kvstore.Event),
		wake:   make(chan struct{}, 1),
		queue:  backlog,
	}
	s.mu.Lock()
	s.watchers[w] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	go w.run()
	return w.out, nil
}

// snapshot returns puts for the keys under prefix whose revision is above fromRevision, in
// revision order.
func (s *Store) snapshot(prefix string, fromRevision uint64) ([]kvstore.Event, error) {
	var pairs []kvstore.KVPair
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		pairs, err = s.scan(tx, prefix, fromRevision)
		return err
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(pairs, func(a, b kvstore.KVPair) int {
		return cmp.Or(cmp.Compare(a.Revision, b.Revision), strings.Compare(a.Key, b.Key))
	})
	events := make([]kvstore.Event, len(pairs))
	for i, p := range pairs {
		events[i] = kvstore.Event{Type: kvstore.EventPut, Pair: p}
	}
	return events, nil
}

// publish records committed events in the history and queues them for the watchers. The
// caller holds writeMu, so events arrive in commit order.
func (s *Store) publish(events []kvstore.Event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ev := range events {
		s.history.add(ev)
	}
	for w := range s.watchers {
		w.enqueue(events)
	}
}

// removeWatcher forgets w, so that no more events are queued for it.
func (s *Store) removeWatcher(w *watcher) {
	s.mu.Lock()
	delete(s.watchers, w)
	s.mu.Unlock()
}

// watcher is one Watch call: a queue that publish fills and a goroutine, run, that drains it
// into out.
type watcher struct {
	s      *Store
	ctx    context.Context
	prefix string
	out    chan kvstore.Event
	wake   chan struct{} // capacity 1: a pending signal that queue has grown

	mu    sync.Mutex // guards following
	queue []kvstore.Event
}

// enqueue appends the events under w's prefix to its queue and wakes its goroutine.
func (w *watcher) enqueue(events []kvstore.Event) {
	n := 0
	w.mu.Lock()
	for _, ev := range events {
		if strings.HasPrefix(ev.Pair.Key, w.prefix) {
			w.queue = append(w.queue, ev)
			n++
		}
	}
	w.mu.Unlock()
	if n > 0 {
		select {
		case w.wake <- struct{}{}:
		default: // a signal is pending already
		}
	}
}

// run sends queued events to out until the watch's context is done or the store closes, then
// closes out.
func (w *watcher) run() {
	defer w.s.wg.Done()
	defer close(w.out)
	defer w.s.removeWatcher(w)
	for {
		w.mu.Lock()
		batch := w.queue
		w.queue = nil
		w.mu.Unlock()
		for _, ev := range batch {
			ev.Pair.Value = bytes.Clone(ev.Pair.Value)
			select {
			case w.out <- ev:
			case <-w.ctx.Done():
				return
			case <-w.s.done:
				return
			}
		}
		if len(batch) > 0 {
			continue
		}
		select {
		case <-w.wake:
		case <-w.ctx.Done():
			return
		case <-w.s.done:
			return
		}
	}
}

// eventLog holds the most recent events in a ring, oldest first, to resume watches.
type eventLog struct {
	size  int             // capacity of the ring
	buf   []kvstore.Event // grows up to size, then wraps
	next  int             // index of the oldest event once buf is full
	floor uint64          // events at or below this revision may be missing
}

// add appends ev, dropping the oldest event when the log is full.
func (l *eventLog) add(ev kvstore.Event) {
	if len(l.buf) < l.size {
		l.buf = append(l.buf, ev)
		return
	}
	l.floor = l.buf[l.next].Pair.Revision
	l.buf[l.next] = ev
	l.next = (l.next + 1) % l.size
}

// since returns, oldest first, the events under prefix with a revision above rev. The caller
// checks that rev is at or above floor.
func (l *eventLog) since(prefix string, rev uint64) []kvstore.Event {
	var out []kvstore.Event
	for i := range l.buf {
		ev := l.buf[(l.next+i)%len(l.buf)]
		if ev.Pair.Revision > rev && strings.HasPrefix(ev.Pair.Key, prefix) {
			out = append(out, ev)
		}
	}
	return out
}
