package etcd

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/cnmkit/cnm/kvstore"
)

var (
	_ kvstore.Lease    = (*Lease)(nil)
	_ kvstore.Unlocker = (*Lock)(nil)
)

// Grant grants an etcd lease of ttl, rounded up to whole seconds (etcd may raise it to its
// minimum, about 2s with default settings; [Lease.TTL] says what was granted), and keeps it
// alive in the background until Revoke, Abandon or Close, or until etcd reports it gone or no
// renewal succeeds for a whole TTL. ttl <= 0 is an error wrapping [errclass.ErrInvalidParameter].
func (s *Store) Grant(ctx context.Context, ttl time.Duration) (kvstore.Lease, error) {
	if ttl <= 0 {
		return nil, fmt.Errorf("etcd: grant: %w", errclass.Invalid("ttl", ttl.String(), "must be positive"))
	}
	l, err := s.grant(ctx, ttl)
	if err != nil {
		return nil, fmt.Errorf("etcd: grant %v: %w", ttl, err)
	}
	return l, nil
}

// grant grants a lease of ttl and starts its keep-alive.
func (s *Store) grant(ctx context.Context, ttl time.Duration) (*Lease, error) {
	if err := s.begin(ctx); err != nil {
		return nil, err
	}
	sent := time.Now() // etcd's TTL starts after this
	cctx, cancel := s.callCtx(ctx)
	resp, err := s.cli.Grant(cctx, int64(math.Ceil(ttl.Seconds())))
	cancel()
	if err != nil {
		return nil, s.mapErr(ctx, err, s.reqTimeout)
	}
	kctx, kcancel := context.WithCancel(context.Background())
	ka, err := s.cli.KeepAlive(kctx, resp.ID)
	if err != nil {
		kcancel()
		s.revokeQuietly(resp.ID)
		return nil, s.mapErr(ctx, err, s.reqTimeout)
	}
	l := &Lease{
		s:       s,
		id:      resp.ID,
		ttl:     time.Duration(resp.TTL) * time.Second,
		cancel:  kcancel,
		kaDone:  make(chan struct{}),
		revoked: make(chan struct{}),
		lost:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		kcancel()
		for range ka {
		}
		s.revokeQuietly(resp.ID)
		return nil, kvstore.ErrClosed
	}
	s.leases[l] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	go l.run(ka, sent.Add(l.ttl))
	s.log.Debug("etcd: lease granted", "lease", fmt.Sprintf("%x", int64(l.id)), "ttl", l.ttl)
	return l, nil
}

// revokeQuietly revokes a lease that was never handed out, best effort: if it fails, the lease
// expires by itself.
func (s *Store) revokeQuietly(id clientv3.LeaseID) {
	ctx, cancel := context.WithTimeout(context.Background(), s.reqTimeout)
	defer cancel()
	if _, err := s.cli.Revoke(ctx, id); err != nil {
		s.log.Debug("etcd: revoke unused lease", "lease", fmt.Sprintf("%x", int64(id)), "error", err)
	}
}

// Lease is an etcd lease granted by [Store.Grant] and kept alive until it ends. It is safe for
// concurrent use.
type Lease struct {
	s       *Store
	id      clientv3.LeaseID
	ttl     time.Duration
	cancel  context.CancelFunc // stops the keep-alive
	kaDone  chan struct{}      // closed when the keep-alive has ended
	revoked chan struct{}      // closed when the first Revoke is over
	lost    chan struct{}      // closed when the keep-alive ended without Revoke
	done    chan struct{}      // closed when the lease has ended or may have (see Done)

	mu          sync.Mutex // guards following
	stopped     leaseStop  // why the keep-alive was stopped from this side, if it was
	endedBefore bool       // after Revoke: the lease had ended before
}

// leaseStop says why a lease's keep-alive was stopped.
type leaseStop int

const (
	leaseRunning   leaseStop = iota
	leaseRevoked             // Revoke (or Unlock)
	leaseAbandoned           // Abandon (or Close)
)

// run reads the keep-alive responses until the client closes the channel: after the keep-alive
// context was canceled (Revoke, Abandon), or when etcd says the lease is gone. It also ends the
// keep-alive itself when no renewal came for a whole TTL (by expiry, etcd's deadline at the
// latest), rather than rely on the client, which allows a new lease more time. Then it closes
// lost, unless Revoke stopped it, and done, when the lease has ended.
func (l *Lease) run(ka <-chan *clientv3.LeaseKeepAliveResponse, expiry time.Time) {
	defer l.s.wg.Done()
	timer := time.NewTimer(time.Until(expiry))
	for open := true; open; {
		select {
		case resp, ok := <-ka:
			if !ok {
				open = false
				break
			}
			// The server renewed the lease for resp.TTL from some time before now.
			timer.Reset(time.Duration(resp.TTL) * time.Second)
		case <-timer.C:
			l.cancel() // not renewed for a TTL: the lease may be gone
			for range ka {
			}
			open = false
		}
	}
	timer.Stop()
	close(l.kaDone)
	l.mu.Lock()
	stopped := l.stopped
	l.mu.Unlock()
	if stopped != leaseRevoked {
		close(l.lost)
	}
	var wait <-chan time.Time
	switch stopped {
	case leaseRunning:
		l.s.log.Info("etcd: lease ended: expired, or not renewed for its TTL",
			"lease", fmt.Sprintf("%x", int64(l.id)), "ttl", l.ttl)
	case leaseAbandoned:
		// etcd deletes the keys about a TTL after the last renewal, which came before
		// Abandon. Close does not wait for that.
		timer := time.NewTimer(l.ttl)
		defer timer.Stop()
		wait = timer.C
	case leaseRevoked:
		wait = make(chan time.Time) // until the revoke RPC is over
	}
	if wait != nil {
		select {
		case <-wait:
		case <-l.revoked:
		case <-l.s.ctx.Done():
		}
	}
	close(l.done)
	l.s.mu.Lock()
	delete(l.s.leases, l)
	l.s.mu.Unlock()
}

// ID returns etcd's ID of the lease.
func (l *Lease) ID() int64 { return int64(l.id) }

// TTL returns the time to live etcd granted.
func (l *Lease) TTL() time.Duration { return l.ttl }

// Done returns a channel that is closed when the lease has ended or may have: after Revoke,
// a TTL after Abandon, at the store's Close, when etcd reports the lease gone, or when no
// renewal succeeded for a whole TTL.
func (l *Lease) Done() <-chan struct{} { return l.done }

// AtomicPut writes key bound to this lease, with the semantics of [Store.AtomicPut]
// (prevRevision 0: create-only): etcd deletes it when the lease ends. After Revoke, or once
// etcd has ended the lease, it fails with [kvstore.ErrLeaseEnded].
func (l *Lease) AtomicPut(ctx context.Context, key string, value []byte, prevRevision uint64) (uint64, error) {
	if err := l.s.beginWrite(ctx, key); err != nil {
		return 0, fmt.Errorf("etcd: lease atomic put %q: %w", key, err)
	}
	if l.ended() {
		return 0, fmt.Errorf("etcd: lease atomic put %q: %w", key, kvstore.ErrLeaseEnded)
	}
	rev, err := l.s.atomicPut(ctx, key, value, prevRevision, l.id)
	if err != nil {
		return 0, fmt.Errorf("etcd: lease atomic put %q: %w", key, err)
	}
	return rev, nil
}

// ended reports whether the lease is known to have ended: revoked, or its keep-alive ended
// without Abandon.
func (l *Lease) ended() bool {
	l.mu.Lock()
	stopped := l.stopped
	l.mu.Unlock()
	if stopped == leaseRevoked {
		return true
	}
	select {
	case <-l.done:
		return stopped != leaseAbandoned
	default:
		return false
	}
}

// Revoke stops the keep-alive and revokes the lease, so that etcd deletes its keys now.
// Revoking an ended lease returns nil. If etcd cannot be reached, Revoke fails with
// [kvstore.ErrUnavailable] and the keys go when the TTL runs out, since the lease is no longer
// renewed.
func (l *Lease) Revoke(ctx context.Context) error {
	if _, err := l.revoke(ctx); err != nil {
		return fmt.Errorf("etcd: revoke lease %x: %w", int64(l.id), err)
	}
	return nil
}

// revoke stops the keep-alive and revokes the lease. It reports whether the lease had ended
// before: its keep-alive ended by itself, or etcd no longer had it. A second call waits for
// the first and reports the same, without error.
func (l *Lease) revoke(ctx context.Context) (endedBefore bool, err error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	l.mu.Lock()
	prev := l.stopped
	if prev == leaseRevoked {
		l.mu.Unlock()
		<-l.revoked
		l.mu.Lock()
		defer l.mu.Unlock()
		return l.endedBefore, nil
	}
	l.stopped = leaseRevoked
	l.mu.Unlock()
	defer close(l.revoked)

	select {
	case <-l.lost:
		endedBefore = prev == leaseRunning
	default:
	}
	l.cancel()
	<-l.kaDone
	if l.s.isClosed() {
		return endedBefore, kvstore.ErrClosed
	}
	// Even when the keep-alive ended by itself etcd may still hold the lease (it extends
	// leases when a member becomes leader): revoke it, to free its keys now.
	cctx, cancel := l.s.callCtx(ctx)
	_, err = l.s.cli.Revoke(cctx, l.id)
	cancel()
	switch err = l.s.mapErr(ctx, err, l.s.reqTimeout); {
	case errors.Is(err, kvstore.ErrLeaseEnded):
		endedBefore, err = true, nil
	case endedBefore:
		err = nil // ended as far as this side knows; etcd expires it if it has it
	}
	if err != nil {
		return false, err
	}
	l.mu.Lock()
	l.endedBefore = endedBefore
	l.mu.Unlock()
	return endedBefore, nil
}

// Abandon stops renewing the lease without revoking it: its keys stay until the TTL runs out,
// as after a crash, and Done is closed a TTL after Abandon. It is what [Store.Close] does to
// the leases still open (then Done is closed by Close).
func (l *Lease) Abandon() {
	l.mu.Lock()
	if l.stopped == leaseRunning {
		l.stopped = leaseAbandoned
	}
	l.mu.Unlock()
	l.cancel()
}

// Lock blocks until the caller holds the lock named key, or ctx is done (then ctx's error).
// The lock lives on a lease of [Config.LockTTL] kept alive in the background: if its holder
// dies or loses etcd, the lock frees itself when the TTL runs out. The lock owns the keys under
// key + "/", where it keeps one waiter key per caller. Each RPC is bounded by
// [Config.RequestTimeout], so Lock fails with [kvstore.ErrUnavailable] when etcd cannot serve
// it rather than wait forever; only the wait for another holder is unbounded.
func (s *Store) Lock(ctx context.Context, key string) (kvstore.Unlocker, error) {
	if err := s.beginWrite(ctx, key); err != nil {
		return nil, fmt.Errorf("etcd: lock %q: %w", key, err)
	}
	l, err := s.grant(ctx, s.lockTTL)
	if err != nil {
		return nil, fmt.Errorf("etcd: lock %q: %w", key, err)
	}
	lk := &Lock{lease: l, key: key}
	if err := lk.acquire(ctx); err != nil {
		// Revoking the lease deletes the waiter key and lets the next waiter in.
		if _, rerr := l.revoke(context.WithoutCancel(ctx)); rerr != nil {
			s.log.Debug("etcd: lock: revoke after a failed lock", "key", key, "error", rerr)
		}
		return nil, fmt.Errorf("etcd: lock %q: %w", key, err)
	}
	s.log.Debug("etcd: locked", "key", key, "lease", fmt.Sprintf("%x", l.ID()))
	return lk, nil
}

// Lock is a lock held through [Store.Lock]. It is safe for concurrent use.
type Lock struct {
	lease *Lease
	key   string
}

// acquire writes the waiter key and waits until no older waiter is left.
func (lk *Lock) acquire(ctx context.Context) error {
	s := lk.lease.s
	pfx := s.prefix + lk.key + "/"
	mine := fmt.Sprintf("%s%016x", pfx, int64(lk.lease.id))
	cctx, cancel := s.callCtx(ctx)
	resp, err := s.cli.Put(cctx, mine, "", clientv3.WithLease(lk.lease.id))
	cancel()
	if err != nil {
		return s.mapErr(ctx, err, s.reqTimeout)
	}
	myRev := resp.Header.Revision // the create revision of mine: the lease is new
	for {
		// The newest waiter older than mine, and whether mine is still there.
		cctx, cancel := s.callCtx(ctx)
		tresp, err := s.cli.Txn(cctx).Then(
			clientv3.OpGet(pfx, clientv3.WithPrefix(), clientv3.WithMaxCreateRev(myRev-1),
				clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortDescend), clientv3.WithLimit(1)),
			clientv3.OpGet(mine, clientv3.WithCountOnly()),
		).Commit()
		cancel()
		if err != nil {
			return s.mapErr(ctx, err, s.reqTimeout)
		}
		if tresp.Responses[1].GetResponseRange().GetCount() == 0 {
			return fmt.Errorf("the waiter's lease ended while waiting: %w", kvstore.ErrLeaseEnded)
		}
		older := tresp.Responses[0].GetResponseRange().GetKvs()
		if len(older) == 0 {
			return nil
		}
		if err := lk.waitDelete(ctx, string(older[0].Key), tresp.Header.Revision); err != nil {
			return err
		}
	}
}

// waitDelete waits until the etcd key is deleted after revision rev, ctx is done, the lock's
// lease ends, or the watch stream dies (then it returns nil, and acquire looks again).
func (lk *Lock) waitDelete(ctx context.Context, key string, rev int64) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := lk.lease.s.cli.Watch(wctx, key, clientv3.WithRev(rev+1))
	for {
		select {
		case resp, ok := <-wch:
			if !ok || resp.Err() != nil || resp.Canceled {
				return ctx.Err() // nil: look again, and let the next RPC say if etcd is gone
			}
			for _, ev := range resp.Events {
				if ev.Type == clientv3.EventTypeDelete {
					return nil
				}
			}
		case <-ctx.Done():
			return ctx.Err()
		case <-lk.lease.lost:
			return fmt.Errorf("the waiter's lease ended while waiting: %w", kvstore.ErrLeaseEnded)
		case <-lk.lease.s.ctx.Done():
			return kvstore.ErrClosed
		}
	}
}

// Unlock releases the lock: it revokes the lock's lease, which deletes its waiter key and wakes
// the next waiter. After the lock was lost (its lease ended while held), it fails with
// [kvstore.ErrLockLost]. Unlocking twice returns nil.
func (lk *Lock) Unlock(ctx context.Context) error {
	endedBefore, err := lk.lease.revoke(ctx)
	if err != nil {
		return fmt.Errorf("etcd: unlock %q: %w", lk.key, err)
	}
	if endedBefore {
		return fmt.Errorf("etcd: unlock %q: %w", lk.key, kvstore.ErrLockLost)
	}
	lk.lease.s.log.Debug("etcd: unlocked", "key", lk.key)
	return nil
}

// Lost returns a channel that is closed if the lock ends while held without Unlock: its lease
// expired or was not renewed for a whole TTL, or the store was closed.
func (lk *Lock) Lost() <-chan struct{} { return lk.lease.lost }
