package boltdb

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/cnmkit/cnm/kvstore"
)

// reapRetry is how long the reaper waits before it tries again to end a lease whose
// transaction failed.
const reapRetry = time.Second

// Grant starts a lease of exactly ttl (there is no minimum). The store renews it implicitly
// for as long as it is open: only [kvstore.Lease.Abandon] starts the TTL countdown, and only
// Revoke, that countdown or the next Open after a Close or a crash end it (see the package
// documentation). Grant writes nothing: the lease reaches the file with the first key bound
// to it, in that write's transaction.
//
// ttl <= 0 fails with an error wrapping [errclass.ErrInvalidParameter]; after Close, Grant
// fails with [kvstore.ErrClosed].
func (s *Store) Grant(ctx context.Context, ttl time.Duration) (kvstore.Lease, error) {
	if err := s.begin(ctx); err != nil {
		return nil, fmt.Errorf("boltdb: grant: %w", err)
	}
	if ttl <= 0 {
		return nil, fmt.Errorf("boltdb: grant: %w", errclass.Invalid("ttl", ttl.String(), "must be positive"))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed() {
		return nil, fmt.Errorf("boltdb: grant: %w", kvstore.ErrClosed)
	}
	s.lastLease++
	l := &lease{s: s, id: s.lastLease, ttl: ttl, done: make(chan struct{}), keys: make(map[string]struct{})}
	s.leases[l.id] = l
	return l, nil
}

// lease is a [kvstore.Lease] of a Store: an entry of its lease table, on disk from the first
// key bound to it on.
type lease struct {
	s    *Store
	id   uint64 // unique among the leases in the file
	ttl  time.Duration
	done chan struct{}

	// keys holds the keys bound to the lease. Guarded by s.writeMu.
	keys map[string]struct{}

	// Written with s.writeMu and s.mu held, read with either.
	ended      bool // revoked or expired: its keys are gone
	doneClosed bool

	// deadline is when an abandoned lease runs out; zero while the store renews it.
	// Guarded by s.mu.
	deadline time.Time
}

// AtomicPut writes key bound to the lease, in one transaction with the binding (one commit),
// with the semantics of [Store.AtomicPut]. A key is bound to one lease at a time: writing it
// through another lease moves it there, and writing or deleting it through the Store unbinds
// it. After the lease ended (revoked, or abandoned and run out) it fails with
// [kvstore.ErrLeaseEnded]; after Close, with [kvstore.ErrClosed].
func (l *lease) AtomicPut(ctx context.Context, key string, value []byte, prevRevision uint64) (uint64, error) {
	s := l.s
	if err := s.beginWrite(ctx, key); err != nil {
		return 0, fmt.Errorf("boltdb: lease %d: atomic put %q: %w", l.id, key, err)
	}
	rev, err := s.update(func(w *txn) error {
		if l.over(time.Now()) {
			return kvstore.ErrLeaseEnded
		}
		if err := check(w.get(key), prevRevision); err != nil {
			return err
		}
		return w.put(key, value, l)
	})
	if err != nil {
		return 0, fmt.Errorf("boltdb: lease %d: atomic put %q: %w", l.id, key, err)
	}
	return rev, nil
}

// TTL returns the ttl given to Grant.
func (l *lease) TTL() time.Duration { return l.ttl }

// Done is closed when the lease ends (Revoke, or Abandon and the TTL run out) or the store
// is closed.
func (l *lease) Done() <-chan struct{} { return l.done }

// Revoke deletes the keys bound to the lease in one transaction (watchers see a delete for
// each, all at the revision of that commit) and ends the lease. Revoking an ended lease
// returns nil; after Close, Revoke fails with [kvstore.ErrClosed] and the keys stay for the
// next Open to expire.
func (l *lease) Revoke(ctx context.Context) error {
	if err := l.s.begin(ctx); err != nil {
		return fmt.Errorf("boltdb: revoke lease %d: %w", l.id, err)
	}
	if err := l.s.endLease(l); err != nil {
		return fmt.Errorf("boltdb: revoke lease %d: %w", l.id, err)
	}
	return nil
}

// Abandon starts the TTL countdown: when it runs out, the reaper deletes the lease's keys as
// Revoke would. Abandoning twice, or an ended lease, does nothing.
func (l *lease) Abandon() {
	s := l.s
	s.mu.Lock()
	if l.ended || !l.deadline.IsZero() || s.closed() {
		s.mu.Unlock()
		return
	}
	l.deadline = time.Now().Add(l.ttl)
	s.mu.Unlock()
	select {
	case s.reapWake <- struct{}{}:
	default: // a signal is pending already
	}
}

// over reports whether the lease has ended or run out at now (the reaper may not have
// deleted its keys yet). The caller holds s.writeMu.
func (l *lease) over(now time.Time) bool {
	l.s.mu.Lock()
	defer l.s.mu.Unlock()
	return l.ended || (!l.deadline.IsZero() && !now.Before(l.deadline))
}

// closeDoneLocked closes Done once. The caller holds s.writeMu and s.mu.
func (l *lease) closeDoneLocked() {
	if !l.doneClosed {
		l.doneClosed = true
		close(l.done)
	}
}

// endLease deletes the keys of l in one transaction and ends it; nothing when it has ended.
func (s *Store) endLease(l *lease) error {
	_, err := s.update(func(w *txn) error {
		if l.ended {
			return nil
		}
		return w.end(l)
	})
	return err
}

// reap ends abandoned leases when their TTL runs out. It runs from Open to Close.
func (s *Store) reap() {
	defer s.wg.Done()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		now := time.Now()
		next := time.Time{}
		for _, l := range s.abandoned() {
			if now.Before(l.deadline) {
				if next.IsZero() || l.deadline.Before(next) {
					next = l.deadline
				}
				continue
			}
			err := s.endLease(l.lease)
			switch {
			case errors.Is(err, kvstore.ErrClosed):
				return
			case err != nil:
				s.log.Warn("boltdb: expire lease", "lease", l.id, "err", err)
				if retry := now.Add(reapRetry); next.IsZero() || retry.Before(next) {
					next = retry
				}
			default:
				s.log.Debug("boltdb: lease expired", "lease", l.id, "ttl", l.ttl)
			}
		}
		if !next.IsZero() {
			timer.Reset(time.Until(next))
		}
		select {
		case <-timer.C:
		case <-s.reapWake:
			timer.Stop()
		case <-s.done:
			return
		}
	}
}

// abandoned returns the leases whose TTL countdown runs, with their deadlines.
func (s *Store) abandoned() []abandonedLease {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []abandonedLease
	for _, l := range s.leases {
		if !l.deadline.IsZero() {
			out = append(out, abandonedLease{lease: l, deadline: l.deadline})
		}
	}
	return out
}

// abandonedLease is a lease with the deadline read under s.mu.
type abandonedLease struct {
	*lease
	deadline time.Time
}

// inheritLeases loads the leases that the previous holder of the file left (it closed or
// crashed without revoking them) from the open transaction of Open, and starts their TTL
// countdown now: nobody can renew them any more. Lease records without keys are dropped.
func (s *Store) inheritLeases(root *bolt.Bucket) error {
	now := time.Now()
	err := root.Bucket(leaseKeysBucketName).ForEach(func(k, v []byte) error {
		if len(v) != 8 {
			return fmt.Errorf("corrupt lease of key %q: %d bytes, want 8", k, len(v))
		}
		id := binary.BigEndian.Uint64(v)
		l := s.leases[id]
		if l == nil {
			l = &lease{s: s, id: id, done: make(chan struct{}), keys: make(map[string]struct{})}
			s.leases[id] = l
			s.lastLease = max(s.lastLease, id)
		}
		l.keys[string(k)] = struct{}{}
		s.bound[string(k)] = l
		return nil
	})
	if err != nil {
		return err
	}
	leases := root.Bucket(leasesBucketName)
	var orphans [][]byte
	err = leases.ForEach(func(k, v []byte) error {
		if len(k) != 8 || len(v) != 8 {
			return fmt.Errorf("corrupt lease record %x: %d bytes, want 8", k, len(v))
		}
		id := binary.BigEndian.Uint64(k)
		s.lastLease = max(s.lastLease, id)
		if l := s.leases[id]; l != nil {
			l.ttl = time.Duration(binary.BigEndian.Uint64(v))
		} else {
			orphans = append(orphans, k)
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, k := range orphans {
		if err := leases.Delete(k); err != nil {
			return err
		}
	}
	for _, l := range s.leases {
		// A key whose lease record is missing (not expected) expires at once: ttl 0.
		l.deadline = now.Add(l.ttl)
	}
	s.inherited = len(s.leases)
	return nil
}
