package consul

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/cnmkit/cnm/kvstore"
)

// Watch sends every change to keys that start with prefix ("" for all keys) made after
// revision fromRevision, in revision order, until ctx is done or the store is closed; then the
// channel is closed. fromRevision 0 means changes from now on. See the package documentation
// for how a watch follows Consul (blocking queries and tombstones), what a replay from an old
// revision can miss, and how it rides out an unreachable agent.
//
// Watch reads the prefix once before it returns, so it fails, like any call, with
// [kvstore.ErrUnavailable] when the agent cannot be reached. Events queue in memory without
// bound until the caller receives them. Each Event's Value belongs to the receiver. Each watch
// has two goroutines, one that polls Consul and one that feeds the channel; they end when ctx
// is done or the store closes, and Close waits for them.
func (s *Store) Watch(ctx context.Context, prefix string, fromRevision uint64) (<-chan kvstore.Event, error) {
	if err := s.begin(ctx); err != nil {
		return nil, fmt.Errorf("consul: watch %q: %w", prefix, err)
	}
	snap, err := s.snapshot(ctx, prefix, 0)
	if err != nil {
		return nil, fmt.Errorf("consul: watch %q: %w", prefix, err)
	}
	w := &watcher{
		s:      s,
		ctx:    ctx,
		prefix: prefix,
		out:    make(chan kvstore.Event),
		wake:   make(chan struct{}, 1),
		index:  snap.index,
		prev:   snap.data,
	}
	if fromRevision > 0 {
		if fromRevision < snap.floor {
			s.log.Info("consul: watch revision older than the kept tombstones; deletes before them are not replayed",
				"prefix", prefix, "from", fromRevision, "tombstone_floor", snap.floor)
		}
		w.queue = diff(nil, snap, fromRevision, false)
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, fmt.Errorf("consul: watch %q: %w", prefix, kvstore.ErrClosed)
	}
	s.wg.Add(2)
	s.mu.Unlock()
	go w.poll()
	go w.feed()
	return w.out, nil
}

// entry is a key's value and revision in a snapshot.
type entry struct {
	rev   uint64
	value []byte
}

// tombstone is what a snapshot holds of a key's last delete.
type tombstone struct {
	rev       uint64 // revision of the delete
	prevRev   uint64 // revision of the put before it (0: unknown)
	prevValue []byte
}

// snapshot is the state of a prefix at one index.
type snapshot struct {
	index uint64
	data  map[string]entry     // user key → entry, under the watch's prefix
	tombs map[string]tombstone // user key → its tombstone, under the watch's prefix
	floor uint64               // tombstones at or below it may have been reaped
}

// snapshot reads the keys under prefix, and their tombstones. With waitIndex > 0 the read of
// the keys is a blocking query: it returns once the index of the keys under prefix is above
// waitIndex (a put or a delete there: Consul's own index of a prefix counts its deletes), or
// after watchWait. Only that subtree is read, so a watch costs nothing when keys elsewhere
// change, and its cost follows the size of its own prefix, not the store's.
//
// The tombstones are read just after, in a second request; those above the keys' index belong
// to changes the next snapshot reports, so they are left out here. The tombstone floor is read
// only by a snapshot that does not block (the first one of a watch, and the one after an error).
func (s *Store) snapshot(ctx context.Context, prefix string, waitIndex uint64) (*snapshot, error) {
	timeout := s.timeout
	if waitIndex > 0 {
		timeout += watchWait + watchWait/16 // Consul adds up to wait/16 of jitter
	}
	cctx, cancel := s.callCtx(ctx, timeout)
	defer cancel()
	q := (&api.QueryOptions{WaitIndex: waitIndex}).WithContext(cctx)
	if waitIndex > 0 {
		q.WaitTime = watchWait
	}
	dataRoot := s.root + kvDir
	pairs, meta, err := s.client.KV().List(dataRoot+prefix, q)
	if err := s.mapErr(ctx, cctx, err); err != nil {
		return nil, err
	}
	snap := &snapshot{index: meta.LastIndex, data: map[string]entry{}, tombs: map[string]tombstone{}}
	for _, p := range pairs {
		if k, ok := strings.CutPrefix(p.Key, dataRoot); ok && strings.HasPrefix(k, prefix) {
			snap.data[k] = entry{rev: p.ModifyIndex, value: p.Value}
		}
	}

	tctx, tcancel := s.callCtx(ctx, s.timeout)
	defer tcancel()
	tombRoot := s.root + tombDir
	tombs, _, err := s.client.KV().List(tombRoot+prefix, (&api.QueryOptions{}).WithContext(tctx))
	if err := s.mapErr(ctx, tctx, err); err != nil {
		return nil, err
	}
	for _, p := range tombs {
		k, ok := strings.CutPrefix(p.Key, tombRoot)
		if !ok || !strings.HasPrefix(k, prefix) || p.ModifyIndex > snap.index {
			continue
		}
		t := tombstone{rev: p.ModifyIndex}
		if prevRev, prevValue, ok := decodeTombstone(p.Value); ok {
			t.prevRev, t.prevValue = prevRev, prevValue
		}
		snap.tombs[k] = t
	}
	if waitIndex == 0 {
		fp, _, err := s.client.KV().Get(s.root+floorKey, (&api.QueryOptions{}).WithContext(tctx))
		if err := s.mapErr(ctx, tctx, err); err != nil {
			return nil, err
		}
		if fp != nil {
			snap.floor, _ = strconv.ParseUint(string(fp.Value), 10, 64)
		}
	}
	return snap, nil
}

// diff returns, in revision order, the events that lead from prev, the keys seen at revision
// last, to snap. With synthesize, a key of prev that is gone without a tombstone above last
// (a lease expired and Consul deleted it) is reported deleted at snap's index; without it
// (a replay, where prev is empty), nothing is.
func diff(prev map[string]entry, snap *snapshot, last uint64, synthesize bool) []kvstore.Event {
	var events []kvstore.Event
	for k, t := range snap.tombs {
		if t.rev <= last {
			continue
		}
		// The put before the delete, unless it was seen already.
		if p, seen := prev[k]; t.prevRev > last && t.prevRev < t.rev && (!seen || p.rev != t.prevRev) {
			events = append(events, putEvent(k, t.prevValue, t.prevRev))
		}
		events = append(events, kvstore.Event{Type: kvstore.EventDelete, Pair: kvstore.KVPair{Key: k, Revision: t.rev}})
	}
	for k, e := range snap.data {
		if e.rev > last {
			events = append(events, putEvent(k, e.value, e.rev))
		}
	}
	if synthesize {
		for k := range prev {
			if _, ok := snap.data[k]; ok {
				continue
			}
			if t, ok := snap.tombs[k]; ok && t.rev > last {
				continue
			}
			events = append(events, kvstore.Event{Type: kvstore.EventDelete, Pair: kvstore.KVPair{Key: k, Revision: snap.index}, Inferred: true})
		}
	}
	sortEvents(events)
	return events
}

// resync returns the events that lead from prev to snap by content, for when the index went
// backwards and revisions cannot be compared: puts of the keys that are new or differ, in
// revision order, then deletes of the keys that are gone, at snap's index.
func resync(prev map[string]entry, snap *snapshot) []kvstore.Event {
	var puts, dels []kvstore.Event
	for k, e := range snap.data {
		if p, ok := prev[k]; !ok || p.rev != e.rev || !bytes.Equal(p.value, e.value) {
			puts = append(puts, putEvent(k, e.value, e.rev))
		}
	}
	for k := range prev {
		if _, ok := snap.data[k]; !ok {
			dels = append(dels, kvstore.Event{Type: kvstore.EventDelete, Pair: kvstore.KVPair{Key: k, Revision: snap.index}, Inferred: true})
		}
	}
	sortEvents(puts)
	sortEvents(dels)
	return append(puts, dels...)
}

func putEvent(key string, value []byte, rev uint64) kvstore.Event {
	if value == nil {
		value = []byte{}
	}
	return kvstore.Event{Type: kvstore.EventPut, Pair: kvstore.KVPair{Key: key, Value: value, Revision: rev}}
}

// sortEvents sorts events by revision, then key (the events of one transaction).
func sortEvents(events []kvstore.Event) {
	slices.SortFunc(events, func(a, b kvstore.Event) int {
		return cmp.Or(cmp.Compare(a.Pair.Revision, b.Pair.Revision), strings.Compare(a.Pair.Key, b.Pair.Key))
	})
}

// watcher is one Watch call: poll fills its queue from Consul, feed drains it into out.
type watcher struct {
	s      *Store
	ctx    context.Context
	prefix string
	out    chan kvstore.Event
	wake   chan struct{} // capacity 1: a pending signal that queue has grown

	// Owned by poll (set by Watch before poll starts).
	index uint64           // the index of the last snapshot
	prev  map[string]entry // the keys under prefix at index

	mu    sync.Mutex // guards following
	queue []kvstore.Event
}

// poll runs blocking queries until the watch's context is done or the store closes, and
// queues the events of each answer. After a failed request it waits (with backoff), then reads
// without blocking, so that it notices at once an index that went backwards.
func (w *watcher) poll() {
	defer w.s.wg.Done()
	var backoff time.Duration
	fresh := false
	for {
		wait := max(w.index, 1) // Consul: an index must be above zero
		if fresh {
			wait = 0
		}
		snap, err := w.s.snapshot(w.ctx, w.prefix, wait)
		if err != nil {
			if w.ctx.Err() != nil || w.s.ctx.Err() != nil {
				return
			}
			backoff = min(max(2*backoff, watchBackoffMin), watchBackoffMax)
			w.s.log.Info("consul: watch request failed; retrying", "prefix", w.prefix, "index", w.index, "backoff", backoff, "err", err)
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-w.ctx.Done():
				t.Stop()
				return
			case <-w.s.ctx.Done():
				t.Stop()
				return
			}
			fresh = true
			continue
		}
		if backoff > 0 {
			w.s.log.Info("consul: watch resumed", "prefix", w.prefix, "index", w.index, "agent_index", snap.index)
		}
		backoff, fresh = 0, false
		var events []kvstore.Event
		switch {
		case snap.index < w.index:
			w.s.log.Warn("consul: index went backwards (state restored or lost); resyncing the watch",
				"prefix", w.prefix, "index", w.index, "agent_index", snap.index)
			events = resync(w.prev, snap)
		case snap.index > w.index:
			events = diff(w.prev, snap, w.index, true)
		}
		w.index, w.prev = snap.index, snap.data
		w.enqueue(events)
	}
}

// enqueue appends events to w's queue and wakes its feeder.
func (w *watcher) enqueue(events []kvstore.Event) {
	if len(events) == 0 {
		return
	}
	w.mu.Lock()
	w.queue = append(w.queue, events...)
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default: // a signal is pending already
	}
}

// feed sends queued events to out until the watch's context is done or the store closes,
// then closes out.
func (w *watcher) feed() {
	defer w.s.wg.Done()
	defer close(w.out)
	for {
		w.mu.Lock()
		batch := w.queue
		w.queue = nil
		w.mu.Unlock()
		for _, ev := range batch {
			ev.Pair.Value = bytes.Clone(ev.Pair.Value) // the snapshot keeps its copy
			select {
			case w.out <- ev:
			case <-w.ctx.Done():
				return
			case <-w.s.ctx.Done():
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
		case <-w.s.ctx.Done():
			return
		}
	}
}
