package consul

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/cnmkit/cnm/kvstore"
)

var (
	_ kvstore.Lease    = (*lease)(nil)
	_ kvstore.Unlocker = (*unlocker)(nil)
)

// Grant creates a Consul session with a TTL of ttl, rounded up to whole seconds and to
// [MinLeaseTTL] (10s), and the "delete" behavior, and renews it in the background every third
// of its TTL until Revoke, Abandon or [Store.Close], or until renewals have failed for a whole
// TTL. ttl <= 0 or above [MaxLeaseTTL] is an error wrapping [errclass.ErrInvalidParameter].
func (s *Store) Grant(ctx context.Context, ttl time.Duration) (kvstore.Lease, error) {
	if ttl <= 0 || ttl > MaxLeaseTTL {
		return nil, fmt.Errorf("consul: grant: %w", errclass.Invalid("ttl", ttl.String(), "must be above zero and at most 24h"))
	}
	l, err := s.grant(ctx, roundTTL(ttl), false)
	if err != nil {
		return nil, fmt.Errorf("consul: grant %v: %w", ttl, err)
	}
	return l, nil
}

// grant creates a session of ttl and starts renewing it. forLock makes a lease whose end,
// other than by Unlock, closes lockLost.
func (s *Store) grant(ctx context.Context, ttl time.Duration, forLock bool) (*lease, error) {
	if err := s.begin(ctx); err != nil {
		return nil, err
	}
	start := time.Now()
	var id string
	err := s.write(ctx, func(w *api.WriteOptions) error {
		var err error
		id, _, err = s.client.Session().CreateNoChecks(&api.SessionEntry{
			Name:      "cnm kvstore " + s.root,
			TTL:       ttl.String(),
			Behavior:  api.SessionBehaviorDelete,
			LockDelay: sessionLockDelay,
		}, w)
		return err
	})
	if err != nil {
		return nil, err
	}
	l := &lease{
		s:         s,
		id:        id,
		ttl:       ttl,
		done:      make(chan struct{}),
		stop:      make(chan struct{}),
		lastRenew: start,
		keys:      map[string]struct{}{},
	}
	if forLock {
		l.lockLost = make(chan struct{})
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		l.destroy(context.Background()) // best effort; the session expires anyway
		return nil, kvstore.ErrClosed
	}
	s.leases[l] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	go l.renew()
	s.log.Debug("consul: lease granted", "session", id, "ttl", ttl)
	return l, nil
}

// lease is a Consul session kept alive by a goroutine of its store.
type lease struct {
	s        *Store
	id       string // the session's ID
	ttl      time.Duration
	done     chan struct{} // closed by end
	stop     chan struct{} // closed by stopRenewing
	lockLost chan struct{} // locks only: closed by end unless released

	mu        sync.Mutex // guards following
	stopped   bool       // renewal stopped (Abandon, Revoke, end)
	ended     bool       // done is closed
	released  bool       // locks only: Unlock released the lock
	lastRenew time.Time  // when the last successful renewal (or the creation) was sent
	keys      map[string]struct{}
	endTimer  *time.Timer // after Abandon: ends the lease when its TTL has run out
}

// AtomicPut writes key bound to the lease's session, with the semantics of
// [Store.AtomicPut]: "check-not-exists" (prevRevision 0) or "check-index", then the "lock"
// verb, in one transaction. A key bound to another lease moves to this one. After the lease
// ended (Done is closed): [kvstore.ErrLeaseEnded]; after Abandon it still writes until then,
// as long as Consul has not invalidated the session.
func (l *lease) AtomicPut(ctx context.Context, key string, value []byte, prevRevision uint64) (uint64, error) {
	s := l.s
	if err := s.beginWrite(ctx, key); err != nil {
		return 0, fmt.Errorf("consul: lease atomic put %q: %w", key, err)
	}
	if !l.active() {
		return 0, fmt.Errorf("consul: lease atomic put %q: %w", key, kvstore.ErrLeaseEnded)
	}
	var ops api.TxnOps
	if prevRevision == 0 {
		ops = append(ops, &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVCheckNotExists, Key: s.root + kvDir + key}})
	} else {
		ops = append(ops,
			&api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVCheckIndex, Key: s.root + kvDir + key, Index: prevRevision}},
			// Drops the binding to another session, which would make "lock" fail.
			&api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVDelete, Key: s.root + kvDir + key}})
	}
	lock := s.setOp(api.KVLock, key, value, 0)
	lock.KV.Session = l.id
	ops = append(ops, lock)
	resp, err := s.txn(ctx, ops)
	if err != nil {
		return 0, fmt.Errorf("consul: lease atomic put %q: %w", key, err)
	}
	if !resp.ok {
		switch {
		case resp.invalidSession():
			l.end("session gone")
			return 0, fmt.Errorf("consul: lease atomic put %q: %w", key, kvstore.ErrLeaseEnded)
		case resp.failedCheck():
			return 0, fmt.Errorf("consul: lease atomic put %q: %w", key, casError(prevRevision))
		}
		return 0, fmt.Errorf("consul: lease atomic put %q: %w", key, resp.failure())
	}
	l.mu.Lock()
	l.keys[key] = struct{}{}
	l.mu.Unlock()
	return resp.index(), nil
}

// TTL returns the TTL Consul granted: the one asked for, rounded up to whole seconds and to
// [MinLeaseTTL]. Consul deletes the keys up to twice the TTL after the last renewal.
func (l *lease) TTL() time.Duration { return l.ttl }

// Done is closed when the session is gone (revoked, or invalidated by Consul), when renewals
// have failed for a whole TTL, a TTL after Abandon, or at the store's Close.
func (l *lease) Done() <-chan struct{} { return l.done }

// Revoke stops renewing, deletes the keys bound through this lease with tombstones (best
// effort: keys changed meanwhile are left to the next step), then destroys the session, which
// deletes whatever is still bound to it. Revoking an ended lease returns nil. When the agent
// cannot be reached, Revoke fails with [kvstore.ErrUnavailable] and the session expires on its
// own after its TTL.
func (l *lease) Revoke(ctx context.Context) error {
	l.mu.Lock()
	if l.ended {
		l.mu.Unlock()
		return nil
	}
	keys := make([]string, 0, len(l.keys))
	for k := range l.keys {
		keys = append(keys, k)
	}
	l.mu.Unlock()
	l.stopRenewing()
	if err := l.s.begin(ctx); err != nil {
		l.expireLater()
		return fmt.Errorf("consul: revoke lease: %w", err)
	}
	l.deleteKeys(ctx, keys)
	if err := l.destroy(ctx); err != nil {
		l.expireLater()
		return fmt.Errorf("consul: revoke lease: %w", err)
	}
	l.end("revoked")
	return nil
}

// Abandon stops renewing without destroying the session: its keys stay until Consul
// invalidates it, one to two TTLs later. Done closes a TTL after the last renewal.
func (l *lease) Abandon() {
	l.stopRenewing()
	l.expireLater()
}

// active reports whether the lease has not ended (an abandoned lease has not, until Done).
func (l *lease) active() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return !l.ended
}

// stopRenewing stops the renewal goroutine. The store keeps the lease until it ends, so that
// Close ends it.
func (l *lease) stopRenewing() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.stopped {
		l.stopped = true
		close(l.stop)
	}
}

// expireLater ends the lease a TTL after its last renewal, when Consul may have invalidated
// it.
func (l *lease) expireLater() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ended || l.endTimer != nil {
		return
	}
	l.endTimer = time.AfterFunc(l.ttl-time.Since(l.lastRenew), func() { l.end("not renewed for a TTL") })
}

// end closes done (and, for a lock not released, lockLost) once, and forgets the lease in
// its store.
func (l *lease) end(why string) {
	l.stopRenewing()
	l.s.mu.Lock()
	delete(l.s.leases, l)
	l.s.mu.Unlock()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ended {
		return
	}
	l.ended = true
	close(l.done)
	if l.lockLost != nil && !l.released {
		close(l.lockLost)
	}
	if l.endTimer != nil {
		l.endTimer.Stop()
	}
	l.s.log.Debug("consul: lease ended", "session", l.id, "why", why)
}

// renew renews the session every third of its TTL until stop, or until the session is gone or
// renewals have failed for a whole TTL (then it ends the lease). After a failed renewal it
// tries again within a second.
func (l *lease) renew() {
	defer l.s.wg.Done()
	interval := l.ttl / 3
	t := time.NewTimer(interval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-l.stop:
			return
		case <-l.s.ctx.Done():
			return
		}
		sent := time.Now()
		var entry *api.SessionEntry
		err := l.s.write(l.s.ctx, func(w *api.WriteOptions) error {
			var err error
			entry, _, err = l.s.client.Session().Renew(l.id, w)
			return err
		})
		switch {
		case err == nil && entry == nil:
			l.end("session gone")
			return
		case err == nil:
			l.mu.Lock()
			l.lastRenew = sent
			l.mu.Unlock()
			t.Reset(interval)
		case errors.Is(err, kvstore.ErrClosed):
			return
		default:
			l.mu.Lock()
			failing := time.Since(l.lastRenew)
			l.mu.Unlock()
			if failing >= l.ttl {
				l.s.log.Info("consul: lease renewals failed for a TTL; ending it", "session", l.id, "ttl", l.ttl, "err", err)
				l.end("renewals failed for a TTL")
				return
			}
			l.s.log.Debug("consul: lease renewal failed; retrying", "session", l.id, "err", err)
			t.Reset(min(interval, time.Second))
		}
	}
}

// deleteKeys deletes, with tombstones, the keys still bound to the session, so that a watch
// that resumes from an older revision sees their deletes. Failures are logged: destroying the
// session deletes them anyway.
func (l *lease) deleteKeys(ctx context.Context, keys []string) {
	s := l.s
	for len(keys) > 0 {
		n := min(len(keys), maxTxnOps/2)
		cur, err := s.read(ctx, keys[:n])
		if err != nil {
			s.log.Debug("consul: revoke: read keys", "session", l.id, "err", err)
			return
		}
		var ops api.TxnOps
		for i, e := range cur {
			if e != nil && e.Session == l.id {
				ops = append(ops, s.deleteOps(keys[i], e)...)
			}
		}
		if len(ops) > 0 {
			resp, err := s.txn(ctx, ops)
			switch {
			case err != nil:
				s.log.Debug("consul: revoke: delete keys", "session", l.id, "err", err)
				return
			case !resp.ok:
				s.log.Debug("consul: revoke: delete keys", "session", l.id, "err", resp.failure())
			}
		}
		keys = keys[n:]
	}
}

// destroy destroys the session.
func (l *lease) destroy(ctx context.Context) error {
	return l.s.write(ctx, func(w *api.WriteOptions) error {
		_, err := l.s.client.Session().Destroy(l.id, w)
		return err
	})
}

// Lock takes a session of [Config.LockTTL] and acquires <Prefix>/_lock/<name> with it,
// waiting with blocking queries while another session holds it. It returns ctx's error when
// ctx ends first (and destroys the session), and [kvstore.ErrUnavailable] when the agent
// cannot be reached. An empty name is an error wrapping [errclass.ErrInvalidParameter].
func (s *Store) Lock(ctx context.Context, name string) (kvstore.Unlocker, error) {
	if err := s.beginWrite(ctx, name); err != nil {
		return nil, fmt.Errorf("consul: lock %q: %w", name, err)
	}
	l, err := s.grant(ctx, s.lockTTL, true)
	if err != nil {
		return nil, fmt.Errorf("consul: lock %q: %w", name, err)
	}
	u := &unlocker{l: l, name: name, key: s.root + lockDir + name}
	if err := u.acquire(ctx); err != nil {
		// Give the session back; bounded, and done even when ctx has ended.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.timeout)
		defer cancel()
		l.stopRenewing()
		if derr := l.destroy(rctx); derr != nil {
			l.expireLater()
		} else {
			l.end("lock not acquired")
		}
		return nil, fmt.Errorf("consul: lock %q: %w", name, err)
	}
	s.log.Debug("consul: locked", "name", name, "session", l.id)
	return u, nil
}

// unlocker is a held lock.
type unlocker struct {
	l    *lease
	name string
	key  string // the lock's Consul key
}

// acquire tries the "lock" verb until it succeeds, waiting for a change under the _lock
// subtree after each failure.
func (u *unlocker) acquire(ctx context.Context) error {
	s := u.l.s
	var index uint64
	for {
		resp, err := s.txn(ctx, api.TxnOps{{KV: &api.KVTxnOp{
			Verb:    api.KVLock,
			Key:     u.key,
			Value:   []byte(u.l.id),
			Flags:   rand.Uint64(),
			Session: u.l.id,
		}}})
		switch {
		case err != nil:
			return err
		case resp.ok:
			return nil
		case resp.invalidSession():
			return fmt.Errorf("the lock's session ended while waiting: %w", kvstore.ErrLeaseEnded)
		case !resp.failedCheck():
			return resp.failure()
		}
		// Held by another session: wait for a change (index 0 reads the index first).
		timeout := s.timeout
		if index > 0 {
			timeout += watchWait + watchWait/16
		}
		cctx, cancel := s.callCtx(ctx, timeout)
		q := (&api.QueryOptions{WaitIndex: index}).WithContext(cctx)
		if index > 0 {
			q.WaitTime = watchWait
		}
		_, meta, err := s.client.KV().Keys(s.root+lockDir, "", q)
		err = s.mapErr(ctx, cctx, err)
		cancel()
		if err != nil {
			return err
		}
		index = max(meta.LastIndex, 1)
	}
}

// Unlock releases the lock ("check-session" and delete of its key, in one transaction) and
// destroys its session. After the lock was lost: [kvstore.ErrLockLost]. Unlocking a released
// lock again returns nil. When the agent cannot be reached, Unlock fails with
// [kvstore.ErrUnavailable] and the lock is still held; the caller may try again.
func (u *unlocker) Unlock(ctx context.Context) error {
	l, s := u.l, u.l.s
	l.mu.Lock()
	released, ended := l.released, l.ended
	l.mu.Unlock()
	switch {
	case released:
		return nil
	case ended:
		return fmt.Errorf("consul: unlock %q: %w", u.name, kvstore.ErrLockLost)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("consul: unlock %q: %w", u.name, err)
	}
	resp, err := s.txn(ctx, api.TxnOps{
		{KV: &api.KVTxnOp{Verb: api.KVCheckSession, Key: u.key, Session: l.id}},
		{KV: &api.KVTxnOp{Verb: api.KVDelete, Key: u.key}},
	})
	if err != nil {
		return fmt.Errorf("consul: unlock %q: %w", u.name, err)
	}
	if !resp.ok {
		err := resp.failure()
		if resp.failedCheck() {
			err = kvstore.ErrLockLost
		}
		l.end("lock lost")
		l.destroy(ctx)
		return fmt.Errorf("consul: unlock %q: %w", u.name, err)
	}
	l.mu.Lock()
	l.released = true
	l.mu.Unlock()
	l.stopRenewing()
	if err := l.destroy(ctx); err != nil {
		// The lock is released; the session expires on its own.
		s.log.Info("consul: unlock: destroy session", "name", u.name, "session", l.id, "err", err)
		l.expireLater()
	} else {
		l.end("unlocked")
	}
	s.log.Debug("consul: unlocked", "name", u.name, "session", l.id)
	return nil
}

// Lost is closed if the lock's session ends while the lock is held, without Unlock.
func (u *unlocker) Lost() <-chan struct{} { return u.l.lockLost }
