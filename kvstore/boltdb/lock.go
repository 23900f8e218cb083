package boltdb

import (
	"context"
	"fmt"

	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/cnmkit/cnm/kvstore"
)

// Lock takes the in-process lock named key, waiting until its holder releases it, ctx is
// done (then it fails with ctx's error, and the wait left nothing taken) or the store is
// closed ([kvstore.ErrClosed]). Waiters get the lock in about the order they asked for it.
// The lock lives in memory only and writes no key: one process holds the file, so a lock
// cannot outlive its holder. Its Lost channel closes only when the store is closed while the
// lock is held. An empty key is an error wrapping [errclass.ErrInvalidParameter].
func (s *Store) Lock(ctx context.Context, key string) (kvstore.Unlocker, error) {
	if err := s.begin(ctx); err != nil {
		return nil, fmt.Errorf("boltdb: lock %q: %w", key, err)
	}
	if key == "" {
		return nil, fmt.Errorf("boltdb: lock: %w", errclass.Invalid("key", key, "must not be empty"))
	}
	s.mu.Lock()
	if s.closed() {
		s.mu.Unlock()
		return nil, fmt.Errorf("boltdb: lock %q: %w", key, kvstore.ErrClosed)
	}
	e := s.locks[key]
	if e == nil {
		e = &lockEntry{sem: make(chan struct{}, 1)}
		s.locks[key] = e
	}
	e.refs++
	s.mu.Unlock()

	var err error
	select {
	case e.sem <- struct{}{}:
	case <-ctx.Done():
		err = ctx.Err()
	case <-s.done:
		err = kvstore.ErrClosed
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil && s.closed() { // Close came between taking the lock and registering
		<-e.sem
		err = kvstore.ErrClosed
	}
	if err != nil {
		s.dropLockRefLocked(key, e)
		return nil, fmt.Errorf("boltdb: lock %q: %w", key, err)
	}
	u := &unlocker{s: s, key: key, e: e, lost: make(chan struct{})}
	e.holder = u
	return u, nil
}

// dropLockRefLocked forgets a holder or waiter of e, and e when none is left. The caller
// holds s.mu.
func (s *Store) dropLockRefLocked(key string, e *lockEntry) {
	if e.refs--; e.refs == 0 {
		delete(s.locks, key)
	}
}

// lockEntry is one named lock of the table: a semaphore that holds one token while the lock
// is held. Its fields are guarded by Store.mu (sem needs no guard).
type lockEntry struct {
	sem    chan struct{} // capacity 1: full while held
	refs   int           // the holder and the waiters; the entry goes when none is left
	holder *unlocker
}

// unlocker is a held lock.
type unlocker struct {
	s    *Store
	key  string
	e    *lockEntry
	lost chan struct{} // closed by Close while held

	unlocked bool // guarded by s.mu
}

// Unlock releases the lock at once; it never blocks and ignores ctx. A second Unlock returns
// nil and does nothing. After the store was closed with the lock held, the first Unlock fails
// with an error wrapping both [kvstore.ErrLockLost] and [kvstore.ErrClosed].
func (u *unlocker) Unlock(ctx context.Context) error {
	s := u.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if u.unlocked {
		return nil
	}
	u.unlocked = true
	u.e.holder = nil
	<-u.e.sem
	s.dropLockRefLocked(u.key, u.e)
	if s.closed() {
		return fmt.Errorf("boltdb: unlock %q: %w: %w", u.key, kvstore.ErrLockLost, kvstore.ErrClosed)
	}
	return nil
}

// Lost is closed when the store is closed while the lock is held.
func (u *unlocker) Lost() <-chan struct{} { return u.lost }
