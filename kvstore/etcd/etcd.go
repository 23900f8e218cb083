// Package etcd is the etcd v3 backend of [kvstore.Store], for cnm hosts that share their state
// through an etcd cluster. It implements [kvstore.Store], [kvstore.Batcher], [kvstore.Leaser] and
// [kvstore.Locker] with the same semantics as the embedded kvstore/boltdb backend, and passes
// the same contract suite (kvstore/kvstoretest). It talks to etcd 3.4 or later through the
// official client, go.etcd.io/etcd/client/v3.
//
// # Lifecycle
//
// [Open] checks the configuration, creates a client and probes the cluster with one
// linearizable read, so that an unreachable cluster, or one without a quorum, fails at Open
// with an error wrapping [kvstore.ErrUnavailable] within [Config.DialTimeout], and a TLS
// mismatch fails at once with a configuration error. The client
// connects to every endpoint, spreads calls over the members it is connected to, and tries a
// member that went away again at least every second, so the store works again within about
// a second of a member's return.
// [Store.Close] ends every watch, stops renewing the open leases and locks without revoking
// them (as a crash would; their keys go when their TTL runs out), waits for the goroutines of
// the store and closes the client. Calls after Close fail with [kvstore.ErrClosed].
//
// # Keys
//
// Every key lives under [Config.Prefix] in etcd: the store key "cnm/v1/networks/n1" with the
// prefix "cluster-a/" is the etcd key "cluster-a/cnm/v1/networks/n1". A non-empty prefix always
// ends with "/" (Open adds it), so that stores with the prefixes "a" and "ab" never see each
// other's keys. Several clusters, or several tests, thus share one etcd. The keys a store
// returns, and the keys of its events, never include the prefix. The waiter keys of a lock
// named k are the etcd keys prefix + k + "/" + the hexadecimal lease ID.
//
// # Revisions
//
// A revision is etcd's own: the cluster-wide revision, which every write transaction advances
// by one. A key's revision is its ModRevision, the revision of the write returned by Put,
// AtomicPut and Batch; a delete event carries the revision of the delete. Revisions are shared
// by all prefixes of one etcd, so they grow with every write to the cluster, not only with the
// writes of this store; they never go back and are never reused. All ops of one Batch share
// the revision of their transaction. Deleting a missing key writes nothing.
//
// # Timeouts and errors
//
// Every call is bounded by [Config.RequestTimeout] (5s by default) in addition to its ctx. When
// etcd does not answer in time, is unreachable, or has no leader (no quorum), the call fails
// with an error that wraps [kvstore.ErrUnavailable] and names the endpoints; a call never
// hangs. Calls ask the member to refuse them at once when it knows it has no leader
// (etcd's require-leader option), so a member cut off from its cluster fails them quickly. A write that failed that way may or may not have been applied. When the caller's ctx
// ends first, the error is the ctx's (errors.Is(err, context.Canceled) or
// context.DeadlineExceeded). Errors name the key, and wrap the kvstore sentinels otherwise, as
// in boltdb.
//
// # Watch
//
// [Store.Watch] uses etcd's own watch, from fromRevision+1 (or from the revision current when
// Watch is called). Events are queued in memory without bound for a slow reader, so writers
// never wait for it, and a goroutine of the watch feeds the channel.
//
// The client reconnects by itself when a member goes away, and resumes the watch after the
// last revision it delivered, on the same member or another. The store also tracks the last
// revision it has passed on: if the watch stream dies for another reason (the member it was
// on lost its leader, the server canceled it), it opens a new one from that revision after a
// short backoff, and it drops any event at or below a revision it has already sent. So no event
// is lost or repeated across a member restart or a leader change.
//
// etcd keeps history back to its last compaction only. When the watch must start, or resume,
// at a revision that was compacted away, the store does what boltdb does past its history: it
// reads the current state and sends one [kvstore.EventPut] for each key under the prefix whose
// revision is above the revision the watch had reached, in revision order, then goes on with
// live events. Keys deleted in that gap are not reported (the store logs a warning), so a caller
// that must see deletions lists the prefix and reconciles.
//
// # Leases and locks
//
// [Store.Grant] grants an etcd lease (its TTL rounded up to whole seconds; etcd may raise it to
// its minimum) and keeps it alive with the client's keep-alive, which renews it every TTL/3.
// [Lease.Done] is closed when the lease has ended or may have: after Revoke, a TTL after
// Abandon, at Close, when etcd reports the lease gone, or when no renewal succeeded for a whole
// TTL (etcd may then have deleted the keys).
//
// [Store.Lock] takes etcd's usual lock recipe, on its own lease of [Config.LockTTL] (10s by
// default): it writes a waiter key under key + "/" bound to the lease, and holds the lock when
// no waiter key under key + "/" has a lower create revision; otherwise it watches for the
// deletion of the waiter just before it. [Lock.Lost] is closed when the lock's lease ends
// while held (it expired, or renewals failed for a TTL, or the store was closed). Unlock
// revokes the lease, which deletes the waiter key and wakes the next waiter.
//
// # Concurrency and privileges
//
// A Store is safe for concurrent use. It needs no privileges, only network access to etcd.
package etcd

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/cnmkit/cnm/kvstore"
)

var (
	_ kvstore.Store   = (*Store)(nil)
	_ kvstore.Batcher = (*Store)(nil)
	_ kvstore.Leaser  = (*Store)(nil)
	_ kvstore.Locker  = (*Store)(nil)
)

// Defaults for the zero values of [Config].
const (
	// DefaultDialTimeout bounds Open's probe of the cluster when [Config.DialTimeout] is zero.
	DefaultDialTimeout = 5 * time.Second
	// DefaultRequestTimeout bounds every call when [Config.RequestTimeout] is zero.
	DefaultRequestTimeout = 5 * time.Second
	// DefaultLockTTL is the TTL of the lease behind each lock when [Config.LockTTL] is zero.
	DefaultLockTTL = 10 * time.Second
)

// reconnectMaxDelay bounds the wait between two attempts to connect to a member.
const reconnectMaxDelay = time.Second

// MaxBatchOps is how many ops one [Store.Batch] may hold with etcd's default settings
// (--max-txn-ops 128): a Batch is one etcd transaction.
const MaxBatchOps = 128

// Config configures [Open]. Endpoints is required; the zero value of every other field is a
// working default.
type Config struct {
	// Endpoints are the client URLs of the etcd members ("http://10.0.0.1:2379",
	// "https://etcd-1:2379"). At least one, none empty. The client spreads its calls over them
	// and moves to another when one fails. With TLS, use https:// URLs.
	Endpoints []string
	// Prefix is the etcd key prefix under which all keys of the store live, so that several
	// stores share one etcd. Open appends "/" to a non-empty prefix that lacks it. Empty means
	// the whole keyspace.
	Prefix string
	// TLS configures the client side of TLS: the CA that signed the members' certificates
	// (RootCAs) and, when the members require them, a client certificate. Nil means plain
	// http. See [LoadTLS].
	TLS *tls.Config
	// DialTimeout bounds Open's first contact with the cluster. Zero means
	// [DefaultDialTimeout] (5s); negative is an error.
	DialTimeout time.Duration
	// RequestTimeout bounds every call of the store (each RPC of it), so that an unreachable
	// cluster, or one without quorum, gives [kvstore.ErrUnavailable] rather than a hang. Zero
	// means [DefaultRequestTimeout] (5s); negative is an error.
	RequestTimeout time.Duration
	// LockTTL is the TTL of the lease behind each lock of [Store.Lock]: when the holder dies
	// or loses etcd, the lock frees itself about that long after the last renewal. It is
	// rounded up to whole seconds. Zero means [DefaultLockTTL] (10s); negative is an error.
	LockTTL time.Duration
	// Logger receives the store's messages and the etcd client's (at debug level, errors at
	// warn level). Nil discards them.
	Logger *slog.Logger
}

// Store is a [kvstore.Store], [kvstore.Batcher], [kvstore.Leaser] and [kvstore.Locker] kept in
// etcd. Create it with [Open]. It is safe for concurrent use.
//
// Lock order: Store.mu, then a Lease's mu.
type Store struct {
	cli        *clientv3.Client
	prefix     string
	endpoints  []string
	reqTimeout time.Duration
	lockTTL    time.Duration
	log        *slog.Logger

	ctx    context.Context // canceled by Close: ends watches and waits
	cancel context.CancelFunc
	wg     sync.WaitGroup // goroutines of watches and leases

	mu     sync.Mutex // guards following
	closed bool
	leases map[*Lease]struct{} // leases whose keep-alive runs
}

// Open checks cfg, connects to etcd and probes the cluster with one linearizable read, bounded
// by cfg.DialTimeout and ctx. A bad cfg gives an error wrapping [errclass.ErrInvalidParameter]
// that names the field. When the read gets no answer at once, Open also connects to each
// endpoint itself to learn why: a TLS connection that fails (a certificate refused by either
// side, plain HTTP against a TLS member) gives at once an error wrapping
// [errclass.ErrInvalidParameter] for the field TLS, naming the endpoint, since waiting does not
// help; a cluster that does not answer otherwise (unreachable, no quorum) gives, after
// DialTimeout, an error wrapping [kvstore.ErrUnavailable] that names the endpoints and what the
// connections found (connection refused, ...). When ctx ends first, the error is ctx's.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("etcd: open: %w", err)
	}
	if len(cfg.Endpoints) == 0 {
		return nil, fmt.Errorf("etcd: open: %w", errclass.Invalid("Endpoints", "", "at least one endpoint is required"))
	}
	for i, ep := range cfg.Endpoints {
		switch {
		case strings.TrimSpace(ep) == "":
			return nil, fmt.Errorf("etcd: open: %w", errclass.Invalid(fmt.Sprintf("Endpoints[%d]", i), ep, "must not be empty"))
		case cfg.TLS != nil && strings.HasPrefix(ep, "http://"):
			return nil, fmt.Errorf("etcd: open: %w", errclass.Invalid(fmt.Sprintf("Endpoints[%d]", i), ep, "is http:// but TLS is set: use https://"))
		}
	}
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"DialTimeout", &cfg.DialTimeout, DefaultDialTimeout},
		{"RequestTimeout", &cfg.RequestTimeout, DefaultRequestTimeout},
		{"LockTTL", &cfg.LockTTL, DefaultLockTTL},
	} {
		if *d.v < 0 {
			return nil, fmt.Errorf("etcd: open: %w", errclass.Invalid(d.name, d.v.String(), "must not be negative"))
		}
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	if cfg.Prefix != "" && !strings.HasSuffix(cfg.Prefix, "/") {
		cfg.Prefix += "/"
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	endpoints := append([]string(nil), cfg.Endpoints...)

	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: cfg.DialTimeout,
		// Pings find a dead connection that no RPC is using; etcd refuses pings more often
		// than every 5s (--grpc-keepalive-min-time).
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: cfg.RequestTimeout,
		TLS:                  cfg.TLS,
		Logger:               zapLogger(logger),
		DialOptions: []grpc.DialOption{
			// Try a member that went away again soon after it comes back: gRPC's default
			// backoff grows to two minutes.
			grpc.WithConnectParams(grpc.ConnectParams{
				Backoff: backoff.Config{
					BaseDelay:  100 * time.Millisecond,
					Multiplier: 1.6,
					Jitter:     0.2,
					MaxDelay:   reconnectMaxDelay,
				},
				MinConnectTimeout: cfg.DialTimeout,
			}),
		},
	})
	if err != nil {
		return nil, fmt.Errorf("etcd: open %s: %w", strings.Join(endpoints, ","), err)
	}
	sctx, cancel := context.WithCancel(context.Background())
	s := &Store{
		cli:        cli,
		prefix:     cfg.Prefix,
		endpoints:  endpoints,
		reqTimeout: cfg.RequestTimeout,
		lockTTL:    cfg.LockTTL,
		log:        logger,
		ctx:        sctx,
		cancel:     cancel,
		leases:     make(map[*Lease]struct{}),
	}

	rev, err := s.probe(ctx, cfg)
	if err != nil {
		cancel()
		cli.Close()
		return nil, fmt.Errorf("etcd: open: %w", err)
	}
	s.log.Debug("etcd: opened", "endpoints", endpoints, "prefix", s.prefix, "revision", rev)
	return s, nil
}

// probe makes one linearizable read, bounded by cfg.DialTimeout, and returns the revision
// it saw. When the read has no answer after a moment, it connects to the endpoints itself to
// learn why (see diagnose): a TLS failure ends the probe at once with a configuration error;
// other causes are added to the ErrUnavailable error the read ends with.
func (s *Store) probe(ctx context.Context, cfg Config) (int64, error) {
	pctx, pcancel := context.WithTimeout(ctx, cfg.DialTimeout)
	defer pcancel()
	type result struct {
		rev int64
		err error
	}
	read := make(chan result, 1)
	go func() {
		resp, err := s.cli.Get(pctx, s.probeKey(), clientv3.WithCountOnly())
		if err != nil {
			read <- result{err: err}
			return
		}
		read <- result{rev: resp.Header.Revision}
	}()
	type diagnosis struct {
		causes string
		tlsErr error
	}
	diag := make(chan diagnosis, 1)
	slow := time.NewTimer(min(250*time.Millisecond, cfg.DialTimeout/4))
	defer slow.Stop()
	var (
		r       result
		d       *diagnosis
		started bool // diagnose runs or ran
	)
wait:
	for {
		select {
		case r = <-read:
			break wait
		case <-slow.C:
			started = true
			go func() {
				causes, tlsErr := diagnose(pctx, s.endpoints, cfg.TLS)
				diag <- diagnosis{causes, tlsErr}
			}()
		case got := <-diag:
			d = &got
			if d.tlsErr != nil {
				// Waiting does not help a certificate that one side refuses.
				pcancel()
				<-read
				return 0, d.tlsErr
			}
		}
	}
	if r.err == nil {
		if started && d == nil {
			pcancel()
			<-diag
		}
		return r.rev, nil
	}
	if started && d == nil {
		got := <-diag // soon: it is bounded by pctx too
		d = &got
	}
	err := s.mapErr(ctx, r.err, cfg.DialTimeout)
	if ue, ok := errors.AsType[*unavailableError](err); ok && d != nil {
		if d.tlsErr != nil {
			return 0, d.tlsErr
		}
		ue.cause += d.causes
	}
	return 0, err
}

// LoadTLS returns a client TLS configuration that trusts the CA certificates in the PEM file
// caFile and, when certFile and keyFile are not empty, presents that client certificate. A file
// that cannot be read or parsed gives an error wrapping [errclass.ErrInvalidParameter] naming it.
func LoadTLS(caFile, certFile, keyFile string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("etcd: load TLS: %w", &errclass.InvalidParameterError{Field: "CA file", Value: caFile, Reason: "cannot be read", Err: err})
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("etcd: load TLS: %w", errclass.Invalid("CA file", caFile, "holds no PEM certificate"))
		}
		cfg.RootCAs = pool
	}
	if (certFile == "") != (keyFile == "") {
		return nil, fmt.Errorf("etcd: load TLS: %w", errclass.Invalid("certificate and key files", certFile+" "+keyFile, "give both or neither"))
	}
	if certFile != "" {
		pair, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("etcd: load TLS: %w", &errclass.InvalidParameterError{Field: "certificate", Value: certFile, Reason: "cannot be loaded with key " + keyFile, Err: err})
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

// Get returns the key's value and revision (its ModRevision), from a linearizable read. It fails
// with [kvstore.ErrKeyNotFound] when the key does not exist. The returned Value belongs to the
// caller.
func (s *Store) Get(ctx context.Context, key string) (kvstore.KVPair, error) {
	if err := s.begin(ctx); err != nil {
		return kvstore.KVPair{}, fmt.Errorf("etcd: get %q: %w", key, err)
	}
	if key == "" {
		return kvstore.KVPair{}, fmt.Errorf("etcd: get %q: %w", key, kvstore.ErrKeyNotFound)
	}
	cctx, cancel := s.callCtx(ctx)
	resp, err := s.cli.Get(cctx, s.prefix+key)
	cancel()
	if err != nil {
		return kvstore.KVPair{}, fmt.Errorf("etcd: get %q: %w", key, s.mapErr(ctx, err, s.reqTimeout))
	}
	if len(resp.Kvs) == 0 {
		return kvstore.KVPair{}, fmt.Errorf("etcd: get %q: %w", key, kvstore.ErrKeyNotFound)
	}
	return s.pair(resp.Kvs[0].Key, resp.Kvs[0].Value, resp.Kvs[0].ModRevision), nil
}

// Put writes the key unconditionally and returns the revision of the write. An empty key is
// an error wrapping [errclass.ErrInvalidParameter].
func (s *Store) Put(ctx context.Context, key string, value []byte) (uint64, error) {
	if err := s.beginWrite(ctx, key); err != nil {
		return 0, fmt.Errorf("etcd: put %q: %w", key, err)
	}
	cctx, cancel := s.callCtx(ctx)
	resp, err := s.cli.Put(cctx, s.prefix+key, string(value))
	cancel()
	if err != nil {
		return 0, fmt.Errorf("etcd: put %q: %w", key, s.mapErr(ctx, err, s.reqTimeout))
	}
	return uint64(resp.Header.Revision), nil
}

// AtomicPut writes the key only if its revision is prevRevision, or, when prevRevision is 0,
// only if the key does not exist, in one etcd transaction. It returns the revision of the
// write, or fails with [kvstore.ErrKeyModified] (the key has another revision or is missing)
// or [kvstore.ErrKeyExists] (create-only and the key exists).
func (s *Store) AtomicPut(ctx context.Context, key string, value []byte, prevRevision uint64) (uint64, error) {
	if err := s.beginWrite(ctx, key); err != nil {
		return 0, fmt.Errorf("etcd: atomic put %q: %w", key, err)
	}
	rev, err := s.atomicPut(ctx, key, value, prevRevision, clientv3.NoLease)
	if err != nil {
		return 0, fmt.Errorf("etcd: atomic put %q: %w", key, err)
	}
	return rev, nil
}

// atomicPut is AtomicPut, with the key bound to lease unless it is NoLease.
func (s *Store) atomicPut(ctx context.Context, key string, value []byte, prevRevision uint64, lease clientv3.LeaseID) (uint64, error) {
	full := s.prefix + key
	var opts []clientv3.OpOption
	if lease != clientv3.NoLease {
		opts = append(opts, clientv3.WithLease(lease))
	}
	cctx, cancel := s.callCtx(ctx)
	resp, err := s.cli.Txn(cctx).
		If(revisionIs(full, prevRevision)).
		Then(clientv3.OpPut(full, string(value), opts...)).
		Commit()
	cancel()
	if err != nil {
		return 0, s.mapErr(ctx, err, s.reqTimeout)
	}
	if !resp.Succeeded {
		if prevRevision == 0 {
			return 0, kvstore.ErrKeyExists
		}
		return 0, kvstore.ErrKeyModified
	}
	return uint64(resp.Header.Revision), nil
}

// Delete removes the key. Deleting a missing key returns nil and writes nothing.
func (s *Store) Delete(ctx context.Context, key string) error {
	if err := s.beginWrite(ctx, key); err != nil {
		return fmt.Errorf("etcd: delete %q: %w", key, err)
	}
	cctx, cancel := s.callCtx(ctx)
	_, err := s.cli.Delete(cctx, s.prefix+key)
	cancel()
	if err != nil {
		return fmt.Errorf("etcd: delete %q: %w", key, s.mapErr(ctx, err, s.reqTimeout))
	}
	return nil
}

// AtomicDelete removes the key only if its revision is prevRevision, in one etcd transaction.
// Otherwise it fails with [kvstore.ErrKeyNotFound] when the key is missing, or
// [kvstore.ErrKeyModified] (prevRevision 0 included: no revision of an existing key is 0).
func (s *Store) AtomicDelete(ctx context.Context, key string, prevRevision uint64) error {
	if err := s.beginWrite(ctx, key); err != nil {
		return fmt.Errorf("etcd: atomic delete %q: %w", key, err)
	}
	full := s.prefix + key
	// A missing key has ModRevision 0: compare with 0 only to learn which error to give.
	cmp := clientv3.Compare(clientv3.ModRevision(full), "=", int64(prevRevision))
	if prevRevision == 0 {
		cmp = clientv3.Compare(clientv3.ModRevision(full), "<", 0)
	}
	cctx, cancel := s.callCtx(ctx)
	resp, err := s.cli.Txn(cctx).
		If(cmp).
		Then(clientv3.OpDelete(full)).
		Else(clientv3.OpGet(full, clientv3.WithCountOnly())).
		Commit()
	cancel()
	if err != nil {
		return fmt.Errorf("etcd: atomic delete %q: %w", key, s.mapErr(ctx, err, s.reqTimeout))
	}
	if !resp.Succeeded {
		if resp.Responses[0].GetResponseRange().GetCount() == 0 {
			return fmt.Errorf("etcd: atomic delete %q: %w", key, kvstore.ErrKeyNotFound)
		}
		return fmt.Errorf("etcd: atomic delete %q: %w", key, kvstore.ErrKeyModified)
	}
	return nil
}

// List returns every key that starts with prefix, in byte order of the keys, from one
// linearizable read. It returns an empty, non-nil slice when there are none. The slice and its
// values belong to the caller.
func (s *Store) List(ctx context.Context, prefix string) ([]kvstore.KVPair, error) {
	if err := s.begin(ctx); err != nil {
		return nil, fmt.Errorf("etcd: list %q: %w", prefix, err)
	}
	cctx, cancel := s.callCtx(ctx)
	resp, err := s.cli.Get(cctx, s.prefix+prefix, clientv3.WithPrefix(),
		clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	cancel()
	if err != nil {
		return nil, fmt.Errorf("etcd: list %q: %w", prefix, s.mapErr(ctx, err, s.reqTimeout))
	}
	pairs := make([]kvstore.KVPair, len(resp.Kvs))
	for i, kv := range resp.Kvs {
		pairs[i] = s.pair(kv.Key, kv.Value, kv.ModRevision)
	}
	return pairs, nil
}

// Batch applies ops in one etcd transaction: all of them or none. Ops whose Check is set are
// all compared against the state before the batch; if one fails, Batch fails with
// [kvstore.ErrKeyModified] or [kvstore.ErrKeyExists], naming the op, and writes nothing. Every
// op that changes a key gives it the revision of the transaction, which Batch returns. A key
// may appear only once in ops, keys must not be empty, and there may be at most [MaxBatchOps]
// ops (errors wrapping [errclass.ErrInvalidParameter]). A batch that changes nothing (empty, or
// deletes of missing keys) writes nothing and returns the current revision.
func (s *Store) Batch(ctx context.Context, ops []kvstore.Op) (uint64, error) {
	if err := s.begin(ctx); err != nil {
		return 0, fmt.Errorf("etcd: batch: %w", err)
	}
	if len(ops) > MaxBatchOps {
		return 0, fmt.Errorf("etcd: batch: %w", errclass.Invalid("ops", fmt.Sprint(len(ops)), fmt.Sprintf("more than %d ops in one batch", MaxBatchOps)))
	}
	if err := kvstore.CheckOps(ops); err != nil {
		return 0, fmt.Errorf("etcd: batch: %w", err)
	}
	var (
		cmps    []clientv3.Cmp
		checked []int // indexes of the ops with Check or Exists, in the order of cmps
		writes  = make([]clientv3.Op, 0, len(ops))
		elses   []clientv3.Op
	)
	for i, op := range ops {
		full := s.prefix + op.Key
		if op.Exists {
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(full), ">", 0))
			checked = append(checked, i)
			elses = append(elses, clientv3.OpGet(full, clientv3.WithKeysOnly()))
			continue
		}
		if op.Check {
			cmps = append(cmps, revisionIs(full, op.PrevRevision))
			checked = append(checked, i)
			elses = append(elses, clientv3.OpGet(full, clientv3.WithKeysOnly()))
		}
		if op.Value != nil {
			writes = append(writes, clientv3.OpPut(full, string(op.Value)))
		} else {
			writes = append(writes, clientv3.OpDelete(full))
		}
	}
	cctx, cancel := s.callCtx(ctx)
	resp, err := s.cli.Txn(cctx).If(cmps...).Then(writes...).Else(elses...).Commit()
	cancel()
	if err != nil {
		return 0, fmt.Errorf("etcd: batch: %w", s.mapErr(ctx, err, s.reqTimeout))
	}
	if !resp.Succeeded {
		// Find the first check that failed, from the state the transaction saw.
		for j, i := range checked {
			op := ops[i]
			kvs := resp.Responses[j].GetResponseRange().GetKvs()
			switch {
			case op.Exists && len(kvs) == 0:
				return 0, fmt.Errorf("etcd: batch: op %d %q: %w", i, op.Key, kvstore.ErrKeyNotFound)
			case op.Exists:
			case op.PrevRevision == 0 && len(kvs) > 0:
				return 0, fmt.Errorf("etcd: batch: op %d %q: %w", i, op.Key, kvstore.ErrKeyExists)
			case op.PrevRevision != 0 && (len(kvs) == 0 || uint64(kvs[0].ModRevision) != op.PrevRevision):
				return 0, fmt.Errorf("etcd: batch: op %d %q: %w", i, op.Key, kvstore.ErrKeyModified)
			}
		}
		return 0, fmt.Errorf("etcd: batch: %w", kvstore.ErrKeyModified)
	}
	return uint64(resp.Header.Revision), nil
}

// Close ends every watch (their channels close), stops renewing the open leases and locks
// without revoking them, waits for the store's goroutines and closes the client. Calls after
// Close fail with [kvstore.ErrClosed]; Close itself is idempotent and later calls return nil.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	leases := make([]*Lease, 0, len(s.leases))
	for l := range s.leases {
		leases = append(leases, l)
	}
	s.mu.Unlock()

	s.cancel()
	for _, l := range leases {
		l.Abandon()
	}
	s.wg.Wait()
	err := s.cli.Close()
	if err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("etcd: close: %w", err)
	}
	s.log.Debug("etcd: closed", "endpoints", s.endpoints, "prefix", s.prefix)
	return nil
}

// isClosed reports whether Close has started.
func (s *Store) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// begin checks ctx and that the store is open, before a call starts.
func (s *Store) begin(ctx context.Context) error { return kvstore.CheckCall(ctx, s.isClosed()) }

// beginWrite is begin for a write of key.
func (s *Store) beginWrite(ctx context.Context, key string) error {
	return kvstore.CheckWrite(ctx, s.isClosed(), key)
}

// probeKey is a key that a read can ask for to learn the current revision and whether the
// cluster serves: etcd refuses an empty key, and the prefix may be empty.
func (s *Store) probeKey() string { return s.prefix + "\x00" }

// callCtx bounds one RPC by the request timeout, and asks the member to fail it at once when
// it has no leader rather than wait.
func (s *Store) callCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(clientv3.WithRequireLeader(ctx), s.reqTimeout)
}

// pair makes a KVPair of an etcd key-value, without the prefix. A value is never nil.
func (s *Store) pair(key, value []byte, rev int64) kvstore.KVPair {
	if value == nil {
		value = []byte{}
	}
	return kvstore.KVPair{Key: strings.TrimPrefix(string(key), s.prefix), Value: value, Revision: uint64(rev)}
}

// revisionIs compares the revision of the etcd key full with prev (0: the key is absent).
func revisionIs(full string, prev uint64) clientv3.Cmp {
	if prev == 0 {
		return clientv3.Compare(clientv3.CreateRevision(full), "=", 0)
	}
	return clientv3.Compare(clientv3.ModRevision(full), "=", int64(prev))
}

// mapErr turns an error of the etcd client into the store's: the caller's ctx error when ctx
// is done, [kvstore.ErrClosed] after Close, [kvstore.ErrLeaseEnded] for a lease etcd no longer
// has, and an [unavailableError] when etcd did not answer within timeout, could not be
// reached, or has no leader.
func (s *Store) mapErr(ctx context.Context, err error, timeout time.Duration) error {
	if err == nil {
		return nil
	}
	if cerr := ctx.Err(); cerr != nil {
		return cerr
	}
	if s.isClosed() {
		return kvstore.ErrClosed
	}
	if errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return kvstore.ErrLeaseEnded
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return &unavailableError{endpoints: s.endpoints, cause: fmt.Sprintf("no answer within %v", timeout)}
	}
	switch errCode(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
		return &unavailableError{endpoints: s.endpoints, cause: err.Error()}
	case codes.InvalidArgument:
		return fmt.Errorf("%w: %w", errclass.ErrInvalidParameter, err)
	case codes.Unknown:
		// The server's own deadline for a request it could not complete (a linearizable read
		// without quorum) comes back as an Unknown status with the context's message.
		if msg := status.Convert(err).Message(); msg == context.DeadlineExceeded.Error() || msg == context.Canceled.Error() {
			return &unavailableError{endpoints: s.endpoints, cause: "the server gave up: " + msg}
		}
		// A server shutting down fails the proposals its raft node had not committed with
		// raft's own ErrStopped, which etcd does not turn into a gRPC code.
		if msg := status.Convert(err).Message(); msg == "raft: stopped" {
			return &unavailableError{endpoints: s.endpoints, cause: "the server is stopping: " + msg}
		}
	}
	return err
}

// errCode returns the gRPC code of an error of the etcd client.
func errCode(err error) codes.Code {
	var ee rpctypes.EtcdError
	if errors.As(err, &ee) {
		return ee.Code()
	}
	return status.Code(err)
}

// unavailableError is what a call returns when etcd cannot serve it. It matches
// [kvstore.ErrUnavailable] (and so [errclass.ErrUnavailable]) and names the endpoints. The
// cause is text only, so that a timeout of the store is not mistaken for the caller's.
type unavailableError struct {
	endpoints []string
	cause     string
}

func (e *unavailableError) Error() string {
	return fmt.Sprintf("%v: etcd at %s: %s", kvstore.ErrUnavailable, strings.Join(e.endpoints, ","), e.cause)
}

func (e *unavailableError) Unwrap() error { return kvstore.ErrUnavailable }

// diagnose connects to each endpoint, to explain a probe that gets no answer, within ctx.
// It returns what failed, as "; <endpoint>: <error>" for each endpoint, and, when TLS failed
// on one (a certificate refused by either side, TLS against plain HTTP or the reverse), an
// error wrapping [errclass.ErrInvalidParameter] for the field TLS that says so.
func diagnose(ctx context.Context, endpoints []string, tlsCfg *tls.Config) (string, error) {
	causes := make([]string, len(endpoints))
	tlsErrs := make([]error, len(endpoints))
	var wg sync.WaitGroup
	for i, ep := range endpoints {
		wg.Go(func() {
			tlsProblem, err := probeConn(ctx, ep, tlsCfg)
			if err == nil {
				return
			}
			causes[i] = "; " + ep + ": " + err.Error()
			if tlsProblem {
				tlsErrs[i] = &errclass.InvalidParameterError{Field: "TLS", Value: ep, Reason: "the TLS connection failed", Err: err}
			}
		})
	}
	wg.Wait()
	return strings.Join(causes, ""), errors.Join(tlsErrs...)
}

// probeConn opens a TCP connection to the endpoint. For https (or when tlsCfg is set and the
// endpoint has no scheme), it makes the TLS handshake and waits briefly for the server to
// refuse it (with TLS 1.3 a server that wants a client certificate says so after the
// handshake). For http, it asks for /version, which etcd answers over plain HTTP too. It
// reports whether a failure is one of TLS.
func probeConn(ctx context.Context, endpoint string, tlsCfg *tls.Config) (tlsProblem bool, err error) {
	scheme, host, ok := strings.Cut(endpoint, "://")
	if !ok {
		scheme, host = "", endpoint
	}
	if scheme != "" && scheme != "http" && scheme != "https" {
		return false, nil // unix sockets: no diagnosis
	}
	host, _, _ = strings.Cut(host, "/")
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", host)
	if err != nil {
		return false, err
	}
	defer conn.Close()
	deadline := time.Now().Add(500 * time.Millisecond)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	conn.SetDeadline(deadline)
	timedOut := func(err error) bool {
		ne, ok := errors.AsType[net.Error](err)
		return ok && ne.Timeout()
	}

	if scheme == "http" || (scheme == "" && tlsCfg == nil) {
		if _, err := fmt.Fprintf(conn, "GET /version HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", host); err != nil {
			return false, err
		}
		buf := make([]byte, 5)
		n, err := io.ReadFull(conn, buf)
		switch {
		case string(buf[:n]) == "HTTP/":
			return false, nil
		case n > 0 && buf[0] == 0x15: // a TLS alert record
			return true, errors.New("the member answered plain HTTP with a TLS alert: it serves TLS (use https:// and Config.TLS)")
		case err != nil && !timedOut(err):
			return true, fmt.Errorf("the member closed a plain HTTP connection (%v): does it serve TLS only (https://)?", err)
		}
		return false, nil
	}

	cfg := &tls.Config{}
	if tlsCfg != nil {
		cfg = tlsCfg.Clone()
	}
	if cfg.ServerName == "" {
		if h, _, err := net.SplitHostPort(host); err == nil {
			cfg.ServerName = h
		}
	}
	cfg.NextProtos = []string{"h2"}
	tc := tls.Client(conn, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		return !timedOut(err), err
	}
	if _, err := tc.Read(make([]byte, 1)); err != nil && !timedOut(err) {
		return true, err
	}
	return false, nil
}
