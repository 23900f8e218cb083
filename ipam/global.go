package ipam

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/bits"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cnmkit/cnm/internal/errclass"
)

// GlobalStore is the key-value store a [Global] keeps its state in: the part of kvstore.Store
// that Global uses, declared here so that this contract package imports no other package of
// the module. Package ipam/ipamkv adapts a kvstore.Store to it.
//
// Every write gives its key a new revision that is never reused, as kvstore's do. Errors must
// match the error classes that cnm re-exports, as kvstore's errors do: a missing key matches
// cnm.ErrNotFound (kvstore.ErrKeyNotFound), a compare-and-swap on a changed or missing key
// cnm.ErrConflict (kvstore.ErrKeyModified), and a create-only put of an existing key
// cnm.ErrAlreadyExists (kvstore.ErrKeyExists).
//
// A GlobalStore must be safe for concurrent use.
type GlobalStore interface {
	// Get returns the value and revision of key.
	Get(ctx context.Context, key string) (value []byte, revision uint64, err error)
	// AtomicPut writes key only if its revision is prevRevision, or, when prevRevision is
	// 0, only if it does not exist, and returns the new revision.
	AtomicPut(ctx context.Context, key string, value []byte, prevRevision uint64) (revision uint64, err error)
	// AtomicDelete removes key only if its revision is prevRevision.
	AtomicDelete(ctx context.Context, key string, prevRevision uint64) error
	// List returns every key that starts with prefix, in key order.
	List(ctx context.Context, prefix string) ([]StoreEntry, error)
}

// StoreEntry is a key of a [GlobalStore], its value and the revision of its last write.
type StoreEntry struct {
	Key      string
	Value    []byte
	Revision uint64
}

// Defaults for the zero values of [GlobalConfig].
const (
	// DefaultGlobalPrefix is the key prefix used when [GlobalConfig].Prefix is empty.
	DefaultGlobalPrefix = "cnm/v1/ipam/global"
	// DefaultMaxAttempts is the attempt bound used when [GlobalConfig].MaxAttempts is zero.
	DefaultMaxAttempts = 32
)

// Backoff between compare-and-swap attempts: a random wait up to minBackoff<<attempt, at most
// maxBackoff. The first retry, which follows a re-read that usually fixes the conflict, does not
// wait.
const (
	minBackoff = 50 * time.Microsecond
	maxBackoff = 10 * time.Millisecond
)

// GlobalConfig configures [NewGlobal]. The zero value is ready to use.
type GlobalConfig struct {
	// Prefix is the key prefix under which the state lives; see [Global] for the layout.
	// Every Global that shares an address space must use the same Prefix on the same store.
	// Empty means [DefaultGlobalPrefix]. It must not end with "/".
	Prefix string
	// PoolsV4 and PoolsV6 are the bases auto-picked subnets come from, as in [DefaultConfig];
	// empty means [DefaultPoolsV4] and [DefaultPoolsV6]. Globals sharing a store should use
	// the same lists, or they pick differently (though never overlapping subnets).
	PoolsV4 []DefaultPool
	PoolsV6 []DefaultPool
	// MaxAttempts bounds how many times one call tries a compare-and-swap that other writers
	// keep defeating before it gives up with an error matching cnm.ErrConflict. Zero means
	// [DefaultMaxAttempts] (32); negative is an error.
	MaxAttempts int
	// Host, when set, is this host's name (unique among the Globals sharing the store): the
	// Global then takes its dynamic addresses from blocks of the pools that it claims for the
	// host, and allocates and releases inside them with no store call (see "Per-host blocks"
	// in [Global]). Empty means every address is one compare-and-swap of the store.
	Host string
}

// Global is an [Allocator] whose pools and addresses live in a [GlobalStore] shared by every
// host, so that Globals on different hosts (or several in one process) that share the store
// and [GlobalConfig].Prefix never hand out overlapping subnets or the same address. It has the
// behaviour of [Default] (first-fit subnet picking, sequential dynamic addresses, the same
// errors), with the exceptions below.
//
// # Layout
//
// Under the prefix P:
//
//   - P/index: the pools, as JSON: space, subnet, range and generation of each. Pools are
//     added and removed with one compare-and-swap of this key, so two hosts never create
//     overlapping pools. The generation is the index's revision when the pool was created,
//     unique for the store, so a pool released and created again starts with fresh bitmaps.
//   - P/chunks/<generation as 16 hex digits>/<chunk as 32 hex digits>: the allocation bitmap
//     of 4096 consecutive addresses of a pool (1 version byte and 512 bytes), present only
//     while one of its addresses is allocated. A request or release is one compare-and-swap
//     of one chunk, so a /8 never rewrites more than 513 bytes per allocation.
//
// # Caching and concurrency
//
// A Global caches the index and the bitmaps it has read, and writes with the revisions it
// has cached: when another writer got there first, the compare-and-swap fails, the Global
// reads the key again and retries, at most [GlobalConfig].MaxAttempts times, with a short
// random backoff; the call honours ctx throughout. It never reports an address in use, or a
// pool exhausted, from its cache alone: it reads the store first. Within one Global, calls on
// one pool take turns (a ctx-aware semaphore, held across that pool's store calls, so that
// they do not defeat each other's compare-and-swap); calls on different pools run in parallel.
//
// Each Global keeps its own position for the next dynamic address, so two hosts allocate
// sequentially from different points. When another host wins a race for the same bitmap
// chunk, the loser moves its position to a random chunk of the pool, so that they part ways
// instead of colliding on every request.
//
// # Differences from Default
//
// An empty PoolRequest.Space means [GlobalSpace]. Usage and Reconcile read every bitmap chunk
// of the pool from the store (for a full /8, 2 MiB). When a store call fails other than by a
// compare-and-swap (an I/O error, ctx ending during a write to a remote store), the write may or
// may not have happened; the Global drops its cache of the pool and returns the error, and an
// address allocated by such a write stays allocated until released or reconciled. If a
// ReleasePool fails after removing the pool from the index, bitmap chunks of the released
// generation stay in the store; they are never read again.
//
// # Per-host blocks
//
// With [GlobalConfig].Host set, a pool's dynamic addresses are handed out in blocks: aligned
// runs of 2^k addresses of the pool (4 in a /24, 16 in a /22, 64 in a /20 and larger; pools
// of fewer than 128 dynamic addresses have none), each held by one host. A dynamic request
// takes the lowest free address of one of the host's blocks, in memory, with no store call;
// when its blocks are full it claims a free group (its free dynamic addresses: held bits are
// set in the bitmap and the chunk records the block's host) with one compare-and-swap of the
// chunk; when no group is free it falls back to one compare-and-swap per address, outside the
// blocks. A release inside one of the host's blocks is in memory too; the block goes back to
// the pool, with one compare-and-swap, when its last address is released.
//
// Which addresses of a block are allocated is known only to its host: the fact is kept by
// the caller (cnm's endpoint records). So a restarted host's Global adopts its blocks from the
// store with none allocated, and the caller's static requests for its live addresses (which
// restore makes) mark them again, before any dynamic request. Inside another host's block, a
// static request fails with [ErrAddressInUse] (the address may be free, but only that host
// knows) and a release does nothing. [Global.Addresses] lists this host's allocated
// addresses in its blocks and none of other hosts' blocks ([Global.Blocks] lists those);
// [Global.Usage] counts a block's addresses as in use. A block of a host that is gone (its
// records reclaimed) is given back with [Global.ReleaseBlock]. A block of this host left in
// the store with none of its addresses in use (a release or a claim the store did not answer;
// after a restart, one that [Global.SettleBlocks] finds empty once restore has requested the
// host's addresses) is given back by [Global.ReleaseEmptyBlocks], which the caller runs now
// and then (cnm's cluster does at every sweep tick).
//
// A read may go back in time (a Consul server that restarted can answer before it has
// replayed its log). So a read never makes a host forget which addresses of its blocks it gave
// out (only their release, or [Global.ReconcileBlocks], does), and a host gives out new
// addresses only from a block that its own compare-and-swap has shown to be its since the last
// read that did not show it: the claim, or, for a block adopted after a restart or shown again
// after such a read, the chunk written back as read over the revision read (one write, which
// fails when the read was stale). A static request is refused for what the store holds only
// once such a write has shown the read current.
//
// A Global holds no goroutines and needs no Close; it does not close its store.
type Global struct {
	store       GlobalStore
	prefix      string // without a trailing "/"
	bases       [2][]DefaultPool
	maxAttempts int
	host        string // "" without blocks
	// paused stops allocation from this host's blocks (SuspendBlocks), which also starts a
	// new epoch: a block confirmed in an earlier one is confirmed again before use.
	paused atomic.Bool
	epoch  atomic.Uint64 // from 1
	// loose is set while a pool may have loose blocks (ReleaseEmptyBlocks).
	loose atomic.Bool

	// indexSem is held (a token sent) by the goroutine that reads and writes the index in
	// RequestPool or ReleasePool, so that those calls in one Global do not defeat each other.
	//
	// Lock order: a goroutine holds at most one semaphore (indexSem or a pool's sem) at a
	// time, and mu is taken last and never held across a store call or a semaphore wait.
	indexSem chan struct{}

	mu    sync.Mutex // guards following
	index *gindex    // the newest index read or written; nil before the first
	pools map[PoolID]*gpool
}

var (
	_ Allocator        = (*Global)(nil)
	_ OptionsAllocator = (*Global)(nil)
	_ Reconciler       = (*Global)(nil)
	_ Statuser         = (*Global)(nil)
)

// NewGlobal returns a Global on store. It does no I/O: the state is read on first use. It fails
// with an invalid-parameter error for a nil store or a bad cfg (the field is named, e.g.
// "PoolsV4[0].Size").
func NewGlobal(store GlobalStore, cfg GlobalConfig) (*Global, error) {
	if store == nil {
		return nil, fmt.Errorf("ipam: new global allocator: %w", errclass.Invalid("store", "<nil>", "a store is required"))
	}
	prefix := cfg.Prefix
	if prefix == "" {
		prefix = DefaultGlobalPrefix
	}
	if strings.HasSuffix(prefix, "/") {
		return nil, fmt.Errorf("ipam: new global allocator: %w", errclass.Invalid("Prefix", prefix, `must not end with "/"`))
	}
	attempts := cfg.MaxAttempts
	switch {
	case attempts < 0:
		return nil, fmt.Errorf("ipam: new global allocator: %w",
			errclass.Invalid("MaxAttempts", strconv.Itoa(attempts), "must not be negative"))
	case attempts == 0:
		attempts = DefaultMaxAttempts
	}
	bases, err := checkBases(cfg.PoolsV4, cfg.PoolsV6)
	if err != nil {
		return nil, fmt.Errorf("ipam: new global allocator: %w", err)
	}
	g := &Global{
		store:       store,
		prefix:      prefix,
		bases:       bases,
		maxAttempts: attempts,
		host:        cfg.Host,
		indexSem:    make(chan struct{}, 1),
		pools:       make(map[PoolID]*gpool),
	}
	g.epoch.Store(1)
	return g, nil
}

// poolRecord is one pool in the index.
type poolRecord struct {
	Space  AddressSpace `json:"space"`
	Subnet netip.Prefix `json:"subnet"`
	Range  netip.Prefix `json:"range,omitzero"`
	Gen    uint64       `json:"gen"`

	// ID is MakePoolID(Space, Subnet), kept so that it is made once.
	ID PoolID `json:"-"`
}

func (r poolRecord) id() PoolID { return r.ID }

// indexVersion is the version of the index's encoding.
const indexVersion = 1

type indexDoc struct {
	Version int          `json:"version"`
	Pools   []poolRecord `json:"pools"`
}

// gindex is a decoded index. It is immutable once built.
type gindex struct {
	rev  uint64 // 0: the key does not exist
	recs []poolRecord
	byID map[PoolID]poolRecord
}

func decodeIndex(value []byte, rev uint64) (*gindex, error) {
	var doc indexDoc
	if err := json.Unmarshal(value, &doc); err != nil {
		return nil, fmt.Errorf("corrupt index: %w", err)
	}
	if doc.Version != indexVersion {
		return nil, fmt.Errorf("index version %d, want %d", doc.Version, indexVersion)
	}
	idx := &gindex{rev: rev, recs: doc.Pools, byID: make(map[PoolID]poolRecord, len(doc.Pools))}
	for i, r := range doc.Pools {
		if !r.Subnet.IsValid() || r.Subnet != r.Subnet.Masked() ||
			(r.Range.IsValid() && (r.Range != r.Range.Masked() || !r.Subnet.Contains(r.Range.Addr()) || r.Range.Bits() <= r.Subnet.Bits())) {
			return nil, fmt.Errorf("corrupt index: pool %+v", r)
		}
		r.ID = MakePoolID(r.Space, r.Subnet)
		if _, dup := idx.byID[r.ID]; dup {
			return nil, fmt.Errorf("corrupt index: pool %s twice", r.ID)
		}
		doc.Pools[i] = r
		idx.byID[r.ID] = r
	}
	return idx, nil
}

func encodeIndex(recs []poolRecord) ([]byte, error) {
	return json.Marshal(indexDoc{Version: indexVersion, Pools: recs})
}

// used returns the union of the subnets of the pools of space in family fam.
func (idx *gindex) used(space AddressSpace, fam int) ivalSet {
	var s ivalSet
	for _, r := range idx.recs {
		if r.Space == space && famOf(r.Subnet) == fam {
			s.add(bounds(r.Subnet))
		}
	}
	return s
}

// overlapped returns the lowest pool of space that overlaps subnet, if any.
func (idx *gindex) overlapped(space AddressSpace, subnet netip.Prefix) (poolRecord, bool) {
	var best poolRecord
	found := false
	for _, r := range idx.recs {
		if r.Space != space || !r.Subnet.Overlaps(subnet) {
			continue
		}
		if !found || r.Subnet.Addr().Less(best.Subnet.Addr()) {
			best, found = r, true
		}
	}
	return best, found
}

// gpool is a pool of the index and this Global's cache of its bitmap.
type gpool struct {
	id  PoolID     // immutable
	rec poolRecord // immutable

	// sem is held (a token sent) by the goroutine working on the pool; it guards following.
	sem   chan struct{}
	cache *pool           // nil until read from the store
	revs  map[u128]uint64 // the revision of each chunk key that exists, as last seen
	// blocks are the block records of the chunks, as last read or written, with cache.
	blocks map[u128][]blockRec
	// own are this host's blocks and their allocations: the only record of those, so kept
	// when the cache is dropped.
	own map[blockID]*ownBlock
	// loose are blocks of this host that the store may record with none of their addresses
	// in use: a release that failed, a claim whose write's outcome is unknown. Each counts the
	// reads that did not show it; ReleaseEmptyBlocks gives them back.
	loose map[blockID]int
}

func newGPool(rec poolRecord) *gpool {
	return &gpool{id: rec.id(), rec: rec, sem: make(chan struct{}, 1)}
}

// lock takes gp's semaphore, or fails with ctx's error.
func (gp *gpool) lock(ctx context.Context) error {
	select {
	case gp.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (gp *gpool) unlock() { <-gp.sem }

// errStalePool reports that a pool was released (and maybe created again) by another Global
// since this one cached it.
var errStalePool = errors.New("ipam: pool released by another allocator")

// isCASFailure reports whether err is a compare-and-swap that lost: the key changed, appeared
// or went away.
func isCASFailure(err error) bool {
	return errors.Is(err, errclass.ErrConflict) || errors.Is(err, errclass.ErrAlreadyExists) ||
		errors.Is(err, errclass.ErrNotFound)
}

// gaveUp is the error of a call whose last compare-and-swap failed with err.
func (g *Global) gaveUp(err error) error {
	return fmt.Errorf("gave up after %d attempts: %w", g.maxAttempts, err)
}

// backoff waits before attempt n (from 1), or fails with ctx's error.
func backoff(ctx context.Context, n int) error {
	if n <= 1 {
		return ctx.Err()
	}
	d := maxBackoff
	if n < 16 && minBackoff<<n < maxBackoff {
		d = minBackoff << n
	}
	t := time.NewTimer(rand.N(d) + 1)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Keys.

func (g *Global) indexKey() string { return g.prefix + "/index" }

func (g *Global) chunkPrefix(gen uint64) string {
	return fmt.Sprintf("%s/chunks/%016x/", g.prefix, gen)
}

func (g *Global) chunkKey(gen uint64, ci u128) string {
	return fmt.Sprintf("%s%016x%016x", g.chunkPrefix(gen), ci.hi, ci.lo)
}

// parseChunkIndex parses the last element of a chunk key.
func parseChunkIndex(s string) (u128, bool) {
	if len(s) != 32 {
		return u128{}, false
	}
	hi, err1 := strconv.ParseUint(s[:16], 16, 64)
	lo, err2 := strconv.ParseUint(s[16:], 16, 64)
	return u128{hi, lo}, err1 == nil && err2 == nil
}

// chunkVersion is the first byte of a stored chunk.
const chunkVersion = 1

func encodeChunk(c *chunk) []byte {
	b := make([]byte, 1, 1+len(c)*8)
	b[0] = chunkVersion
	for _, w := range c {
		b = binary.LittleEndian.AppendUint64(b, w)
	}
	return b
}

func decodeChunk(b []byte) (*chunk, error) {
	var c chunk
	if len(b) != 1+len(c)*8 || b[0] != chunkVersion {
		return nil, fmt.Errorf("corrupt bitmap chunk: %d bytes, want version %d and %d bytes", len(b), chunkVersion, 1+len(c)*8)
	}
	for i := range c {
		c[i] = binary.LittleEndian.Uint64(b[1+8*i:])
	}
	return &c, nil
}

// Index.

// readIndex reads the index from the store, installs it if it is newer than the cached one,
// and returns it.
func (g *Global) readIndex(ctx context.Context) (*gindex, error) {
	value, rev, err := g.store.Get(ctx, g.indexKey())
	var idx *gindex
	switch {
	case errors.Is(err, errclass.ErrNotFound):
		idx = &gindex{byID: map[PoolID]poolRecord{}}
	case err != nil:
		return nil, fmt.Errorf("read index: %w", err)
	default:
		g.mu.Lock()
		cur := g.index
		g.mu.Unlock()
		if cur != nil && cur.rev == rev {
			return cur, nil
		}
		if idx, err = decodeIndex(value, rev); err != nil {
			return nil, fmt.Errorf("read index %q: %w", g.indexKey(), err)
		}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.installLocked(idx)
	return idx, nil
}

// installLocked makes idx the cached index unless the cached one is newer, keeping the caches
// of the pools that are still there.
func (g *Global) installLocked(idx *gindex) {
	if g.index != nil && idx.rev < g.index.rev {
		return
	}
	g.index = idx
	pools := make(map[PoolID]*gpool, len(idx.recs))
	for _, r := range idx.recs {
		id := r.id()
		if gp := g.pools[id]; gp != nil && gp.rec == r {
			pools[id] = gp
			continue
		}
		pools[id] = newGPool(r)
	}
	g.pools = pools
}

// writeIndex writes recs as the index over the revision of idx and installs the result.
func (g *Global) writeIndex(ctx context.Context, idx *gindex, recs []poolRecord) error {
	value, err := encodeIndex(recs)
	if err != nil {
		return err
	}
	rev, err := g.store.AtomicPut(ctx, g.indexKey(), value, idx.rev)
	if err != nil {
		return err
	}
	next := &gindex{rev: rev, recs: recs, byID: make(map[PoolID]poolRecord, len(recs))}
	for _, r := range recs {
		next.byID[r.id()] = r
	}
	g.mu.Lock()
	g.installLocked(next)
	g.mu.Unlock()
	return nil
}

// lockIndex takes indexSem, or fails with ctx's error.
func (g *Global) lockIndex(ctx context.Context) error {
	select {
	case g.indexSem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (g *Global) unlockIndex() { <-g.indexSem }

// RequestPool implements [Allocator], as [Default.RequestPool] does, on the index in the store:
// the subnet is checked or picked against the pools every host has created, and the pool is
// added with one compare-and-swap of the index, retried on a race. An empty Space means
// [GlobalSpace].
//
// Errors: those of Default.RequestPool; the store's errors, wrapped; an error matching
// cnm.ErrConflict after MaxAttempts lost races.
func (g *Global) RequestPool(ctx context.Context, req PoolRequest) (Pool, error) {
	if err := ctx.Err(); err != nil {
		return Pool{}, fmt.Errorf("ipam: request pool: %w", err)
	}
	spec, err := parsePoolRequest(req, GlobalSpace)
	if err != nil {
		return Pool{}, err
	}
	what := func() string {
		if spec.subnet.IsValid() {
			return fmt.Sprintf("ipam: request pool %s in space %s", spec.subnet, spec.space)
		}
		return fmt.Sprintf("ipam: request %s pool in space %s", famName(spec.fam), spec.space)
	}
	if err := g.lockIndex(ctx); err != nil {
		return Pool{}, fmt.Errorf("%s: %w", what(), err)
	}
	defer g.unlockIndex()
	for attempt := 1; ; attempt++ {
		idx, err := g.readIndex(ctx)
		if err != nil {
			return Pool{}, fmt.Errorf("%s: %w", what(), err)
		}
		rec := poolRecord{Space: spec.space, Subnet: spec.subnet, Range: spec.rng, Gen: idx.rev}
		if !spec.subnet.IsValid() {
			subnet, ok := pickSubnet(g.bases[spec.fam], spec.fam, idx.used(spec.space, spec.fam), spec.avoid)
			if !ok {
				return Pool{}, spec.noSubnetError()
			}
			rec.Subnet = subnet
		}
		rec.ID = MakePoolID(rec.Space, rec.Subnet)
		if spec.subnet.IsValid() {
			if other, hit := idx.overlapped(spec.space, spec.subnet); hit {
				return Pool{}, fmt.Errorf("%s: %w", what(),
					&OverlapError{Requested: spec.subnet, With: other.Subnet, Pool: other.id(), Owner: string(other.id())})
			}
			if oe := spec.reservedOverlap(); oe != nil {
				return Pool{}, fmt.Errorf("%s: %w", what(), oe)
			}
		}
		err = g.writeIndex(ctx, idx, append(slices.Clip(idx.recs), rec))
		switch {
		case err == nil:
			return Pool{ID: rec.id(), Subnet: rec.Subnet, Range: rec.Range}, nil
		case !isCASFailure(err):
			return Pool{}, fmt.Errorf("%s: write index: %w", what(), err)
		case attempt >= g.maxAttempts:
			return Pool{}, fmt.Errorf("%s: %w", what(), g.gaveUp(err))
		}
		if err := backoff(ctx, attempt); err != nil {
			return Pool{}, fmt.Errorf("%s: %w", what(), err)
		}
	}
}

// ReleasePool implements [Allocator]: it removes the pool from the index with one
// compare-and-swap, then deletes its bitmap chunks (even if ctx ends in between, as the pool is
// gone by then). Releasing an unknown pool returns nil.
//
// Errors: ctx's error; the store's errors; an error matching cnm.ErrConflict after MaxAttempts
// lost races. When deleting chunks fails, the pool is released nonetheless and the error
// says how many chunks were left behind.
func (g *Global) ReleasePool(ctx context.Context, id PoolID) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("ipam: release pool %s: %w", id, err)
	}
	if err := g.lockIndex(ctx); err != nil {
		return fmt.Errorf("ipam: release pool %s: %w", id, err)
	}
	var rec poolRecord
	for attempt := 1; ; attempt++ {
		idx, err := g.readIndex(ctx)
		if err != nil {
			g.unlockIndex()
			return fmt.Errorf("ipam: release pool %s: %w", id, err)
		}
		var ok bool
		if rec, ok = idx.byID[id]; !ok {
			g.unlockIndex()
			return nil
		}
		recs := slices.DeleteFunc(slices.Clone(idx.recs), func(r poolRecord) bool { return r.id() == id })
		err = g.writeIndex(ctx, idx, recs)
		if err == nil {
			break
		}
		if !isCASFailure(err) || attempt >= g.maxAttempts {
			g.unlockIndex()
			if isCASFailure(err) {
				err = g.gaveUp(err)
			}
			return fmt.Errorf("ipam: release pool %s: write index: %w", id, err)
		}
		if err := backoff(ctx, attempt); err != nil {
			g.unlockIndex()
			return fmt.Errorf("ipam: release pool %s: %w", id, err)
		}
	}
	g.unlockIndex()
	if err := g.deleteChunks(context.WithoutCancel(ctx), rec.Gen); err != nil {
		return fmt.Errorf("ipam: release pool %s: pool released, but: %w", id, err)
	}
	return nil
}

// deleteChunks deletes every chunk of generation gen.
func (g *Global) deleteChunks(ctx context.Context, gen uint64) error {
	entries, err := g.store.List(ctx, g.chunkPrefix(gen))
	if err != nil {
		return fmt.Errorf("list bitmap chunks: %w", err)
	}
	var errs []error
	for _, e := range entries {
		rev := e.Revision
		for attempt := 1; ; attempt++ {
			err := g.store.AtomicDelete(ctx, e.Key, rev)
			if err == nil || errors.Is(err, errclass.ErrNotFound) {
				break
			}
			if !isCASFailure(err) || attempt >= g.maxAttempts {
				errs = append(errs, err)
				break
			}
			// A Global that has not seen the release yet wrote it; it will find the pool gone.
			_, rev, err = g.store.Get(ctx, e.Key)
			if errors.Is(err, errclass.ErrNotFound) {
				break
			}
			if err != nil {
				errs = append(errs, err)
				break
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%d of %d bitmap chunks left behind: %w", len(errs), len(entries), errors.Join(errs...))
	}
	return nil
}

// poolFor returns the cached pool id, reading the index when it is not cached.
func (g *Global) poolFor(ctx context.Context, id PoolID) (*gpool, error) {
	g.mu.Lock()
	gp := g.pools[id]
	g.mu.Unlock()
	if gp != nil {
		return gp, nil
	}
	return g.freshPool(ctx, id)
}

// freshPool reads the index and returns pool id as it is now, or fails with ErrUnknownPool.
func (g *Global) freshPool(ctx context.Context, id PoolID) (*gpool, error) {
	if _, err := g.readIndex(ctx); err != nil {
		return nil, err
	}
	g.mu.Lock()
	gp := g.pools[id]
	g.mu.Unlock()
	if gp == nil {
		return nil, ErrUnknownPool
	}
	return gp, nil
}

// alive reports whether gp is still in the index, with the same generation.
func (g *Global) alive(ctx context.Context, gp *gpool) (bool, error) {
	idx, err := g.readIndex(ctx)
	if err != nil {
		return false, err
	}
	r, ok := idx.byID[gp.id]
	return ok && r == gp.rec, nil
}

// Bitmap chunks. The methods below need gp.sem.

// loadAll reads every chunk of gp from the store into a fresh cache, keeping the position of
// the next dynamic search.
func (g *Global) loadAll(ctx context.Context, gp *gpool) error {
	entries, err := g.store.List(ctx, g.chunkPrefix(gp.rec.Gen))
	if err != nil {
		gp.cache, gp.revs = nil, nil
		return fmt.Errorf("list bitmap chunks: %w", err)
	}
	p := newPool(gp.rec.Space, gp.rec.Subnet, gp.rec.Range)
	revs := make(map[u128]uint64, len(entries))
	blocks := map[u128][]blockRec{}
	maxCI := p.last.shr(chunkBits)
	for _, e := range entries {
		ci, ok := parseChunkIndex(strings.TrimPrefix(e.Key, g.chunkPrefix(gp.rec.Gen)))
		if !ok || maxCI.less(ci) {
			gp.cache, gp.revs = nil, nil
			return fmt.Errorf("corrupt bitmap chunk key %q", e.Key)
		}
		c, recs, err := decodeChunkBlocks(e.Value)
		if err != nil {
			gp.cache, gp.revs = nil, nil
			return fmt.Errorf("%q: %w", e.Key, err)
		}
		p.load(ci, c)
		revs[ci] = e.Revision
		if len(recs) > 0 {
			blocks[ci] = recs
		}
	}
	if old := gp.cache; old != nil && !p.dynCap.isZero() {
		p.setNext(old.next)
	}
	gp.cache, gp.revs, gp.blocks = p, revs, blocks
	if g.host != "" {
		for id := range gp.own {
			if _, ok := blocks[id.ci]; !ok {
				gp.unseen(id)
			}
		}
		for ci := range blocks {
			g.syncOwn(gp, ci)
		}
	}
	return nil
}

// loadChunk reads chunk ci of gp from the store into the cache.
func (g *Global) loadChunk(ctx context.Context, gp *gpool, ci u128) error {
	value, rev, err := g.store.Get(ctx, g.chunkKey(gp.rec.Gen, ci))
	if errors.Is(err, errclass.ErrNotFound) {
		gp.cache.load(ci, nil)
		delete(gp.revs, ci)
		delete(gp.blocks, ci)
		g.syncOwn(gp, ci)
		return nil
	}
	if err != nil {
		gp.cache, gp.revs = nil, nil
		return fmt.Errorf("read bitmap chunk: %w", err)
	}
	c, recs, err := decodeChunkBlocks(value)
	if err != nil {
		gp.cache, gp.revs = nil, nil
		return fmt.Errorf("%q: %w", g.chunkKey(gp.rec.Gen, ci), err)
	}
	gp.cache.load(ci, c)
	gp.revs[ci] = rev
	if gp.blocks == nil {
		gp.blocks = map[u128][]blockRec{}
	}
	gp.blocks[ci] = recs
	g.syncOwn(gp, ci)
	return nil
}

// writeChunk writes the cached chunk ci of gp over the revision last seen: a put, or a
// delete when the chunk is empty. It reports whether it created the key. On a failed
// compare-and-swap the cache of the chunk is left as it was (the caller reads it again); on any
// other error the cache of the pool is dropped, as the write may or may not have happened.
func (g *Global) writeChunk(ctx context.Context, gp *gpool, ci u128) (created bool, err error) {
	key := g.chunkKey(gp.rec.Gen, ci)
	prev := gp.revs[ci]
	c := gp.cache.chunkAt(ci)
	recs := gp.blocks[ci]
	if c == nil || *c == (chunk{}) {
		if prev == 0 {
			return false, nil
		}
		err = g.store.AtomicDelete(ctx, key, prev)
		if err == nil {
			delete(gp.revs, ci)
		}
	} else {
		var rev uint64
		rev, err = g.store.AtomicPut(ctx, key, encodeChunkBlocks(c, recs), prev)
		if err == nil {
			gp.revs[ci] = rev
			created = prev == 0
		}
	}
	if err != nil && !isCASFailure(err) {
		gp.cache, gp.revs, gp.blocks = nil, nil, nil
		return false, fmt.Errorf("write bitmap chunk: %w", err)
	}
	return created, err
}

// RequestAddress implements [Allocator], as [Default.RequestAddress] does. A request is one
// compare-and-swap of one bitmap chunk in the common case.
//
// Errors: those of Default.RequestAddress; the store's errors, wrapped; an error matching
// cnm.ErrConflict after MaxAttempts lost races.
func (g *Global) RequestAddress(ctx context.Context, id PoolID, addr netip.Addr) (netip.Addr, error) {
	return g.RequestAddressWithOptions(ctx, id, addr, AddressOptions{})
}

// RequestAddressWithOptions implements [OptionsAllocator], as
// [Default.RequestAddressWithOptions] does.
func (g *Global) RequestAddressWithOptions(ctx context.Context, id PoolID, addr netip.Addr, opts AddressOptions) (netip.Addr, error) {
	if err := ctx.Err(); err != nil {
		return netip.Addr{}, fmt.Errorf("ipam: request address in pool %s: %w", id, err)
	}
	if err := checkMAC(id, opts); err != nil {
		return netip.Addr{}, err
	}
	for range g.maxAttempts {
		gp, err := g.poolFor(ctx, id)
		if err != nil {
			return netip.Addr{}, fmt.Errorf("ipam: request address in pool %s: %w", id, err)
		}
		a, err := g.request(ctx, gp, addr, opts)
		if !errors.Is(err, errStalePool) {
			return a, err
		}
		g.forget(gp)
	}
	return netip.Addr{}, fmt.Errorf("ipam: request address in pool %s: %w", id,
		g.gaveUp(fmt.Errorf("the pool keeps being released and created again: %w", errclass.ErrConflict)))
}

// forget drops gp from the cached pools, so that the next call reads the index.
func (g *Global) forget(gp *gpool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.pools[gp.id] == gp {
		delete(g.pools, gp.id)
	}
}

func (g *Global) request(ctx context.Context, gp *gpool, addr netip.Addr, opts AddressOptions) (netip.Addr, error) {
	what := func() string {
		if addr.IsValid() {
			return fmt.Sprintf("ipam: request address %s in pool %s", addr, gp.id)
		}
		return fmt.Sprintf("ipam: request address in pool %s", gp.id)
	}
	if err := gp.lock(ctx); err != nil {
		return netip.Addr{}, fmt.Errorf("%s: %w", what(), err)
	}
	defer gp.unlock()
	if gp.cache == nil {
		if err := g.loadAll(ctx, gp); err != nil {
			return netip.Addr{}, fmt.Errorf("%s: %w", what(), err)
		}
	}
	var (
		fresh    = false // the chunk of a static addr was read in this call
		reloaded = false // every chunk was read in this call
	)
	for attempt := 1; ; attempt++ {
		p := gp.cache
		var off u128
		if addr.IsValid() {
			var err error
			if off, err = p.staticOffset(addr); err != nil {
				return netip.Addr{}, err
			}
			if _, ob, m := gp.ownOf(off); ob != nil && ob.used&m != 0 {
				// Given out by this host and not had back, whatever the last read showed.
				return netip.Addr{}, fmt.Errorf("%s: %w", what(), ErrAddressInUse)
			}
			if r, id, ok := gp.blockOf(off); ok && g.host != "" {
				_, _, m := split(off)
				if ob := gp.own[id]; r.host == g.host && ob != nil && ob.used&m == 0 {
					ob.used |= m
					return addr, nil
				}
				if fresh {
					if cur, err := g.checkCurrent(ctx, gp, off.shr(chunkBits), attempt); err != nil || cur {
						if err != nil {
							return netip.Addr{}, fmt.Errorf("%s: %w", what(), err)
						}
						return netip.Addr{}, fmt.Errorf("%s: in the address block of host %s: %w", what(), r.host, ErrAddressInUse)
					}
					continue
				}
				// Another host may have released its block.
				if err := g.loadChunk(ctx, gp, off.shr(chunkBits)); err != nil {
					return netip.Addr{}, fmt.Errorf("%s: %w", what(), err)
				}
				fresh = true
				continue
			}
			if p.isSet(off) {
				if fresh {
					if cur, err := g.checkCurrent(ctx, gp, off.shr(chunkBits), attempt); err != nil || cur {
						if err != nil {
							return netip.Addr{}, fmt.Errorf("%s: %w", what(), err)
						}
						return netip.Addr{}, fmt.Errorf("%s: %w", what(), ErrAddressInUse)
					}
					continue
				}
				// Another host may have released it.
				if err := g.loadChunk(ctx, gp, off.shr(chunkBits)); err != nil {
					return netip.Addr{}, fmt.Errorf("%s: %w", what(), err)
				}
				fresh = true
				continue
			}
			p.set(off)
		} else {
			if g.host != "" && len(opts.MAC) == 0 && !g.paused.Load() {
				if off, ok := gp.allocOwn(g.epoch.Load()); ok {
					return p.addr(off), nil
				}
				var (
					off u128
					id  blockID
					ok  bool
				)
				ci, confirmed, err := g.confirm(ctx, gp)
				if err == nil && confirmed {
					if off, ok := gp.allocOwn(g.epoch.Load()); ok {
						return p.addr(off), nil
					}
				}
				if err == nil {
					off, id, ok, err = g.claim(ctx, gp)
					if err == nil && ok {
						return p.addr(off), nil
					}
				} else {
					id.ci = ci
				}
				if err != nil {
					switch {
					case errors.Is(err, errStalePool):
						return netip.Addr{}, err
					case !isCASFailure(err):
						return netip.Addr{}, fmt.Errorf("%s: claim a block: %w", what(), err)
					case attempt >= g.maxAttempts:
						return netip.Addr{}, fmt.Errorf("%s: claim a block: %w", what(), g.gaveUp(err))
					}
					if err := backoff(ctx, attempt); err != nil {
						return netip.Addr{}, fmt.Errorf("%s: %w", what(), err)
					}
					if attempt == 1 || reloaded {
						err = g.loadChunk(ctx, gp, id.ci)
					} else {
						err, reloaded = g.loadAll(ctx, gp), true
					}
					if err != nil {
						return netip.Addr{}, fmt.Errorf("%s: %w", what(), err)
					}
					gp.cache.jump(rand.Uint64())
					continue
				}
				// No group left to claim: one address at a time, outside the blocks.
			}
			ok := false
			if len(opts.MAC) != 0 {
				if off, ok = p.eui64Offset(opts.MAC); ok && p.isSet(off) {
					ok = false
				}
				if ok {
					p.set(off)
				}
			}
			if !ok {
				if off, ok = p.allocNext(); !ok {
					if reloaded {
						return netip.Addr{}, fmt.Errorf("%s: %w", what(), p.exhausted())
					}
					// Other hosts may have released addresses.
					if err := g.loadAll(ctx, gp); err != nil {
						return netip.Addr{}, fmt.Errorf("%s: %w", what(), err)
					}
					reloaded = true
					continue
				}
			}
		}
		ci := off.shr(chunkBits)
		created, err := g.writeChunk(ctx, gp, ci)
		if err == nil {
			if created {
				if err := g.checkCreated(ctx, gp, ci); err != nil {
					return netip.Addr{}, err
				}
			}
			return p.addr(off), nil
		}
		if !isCASFailure(err) {
			return netip.Addr{}, fmt.Errorf("%s: %w", what(), err)
		}
		if attempt >= g.maxAttempts {
			return netip.Addr{}, fmt.Errorf("%s: %w", what(), g.gaveUp(err))
		}
		// Another writer changed the chunk: wait (before reading, so that what is read is
		// still current when written), read it (or, after a second loss, every chunk: this
		// Global's view may be far behind) and try again elsewhere.
		if err := backoff(ctx, attempt); err != nil {
			return netip.Addr{}, fmt.Errorf("%s: %w", what(), err)
		}
		if attempt == 1 || reloaded {
			err = g.loadChunk(ctx, gp, ci)
		} else {
			err, reloaded = g.loadAll(ctx, gp), true
		}
		if err != nil {
			return netip.Addr{}, fmt.Errorf("%s: %w", what(), err)
		}
		fresh = addr.IsValid()
		if !addr.IsValid() {
			gp.cache.jump(rand.Uint64())
		}
	}
}

// checkCurrent is current for attempt of a request, with its bound and backoff: true when
// chunk ci as read is current, false when it was read again.
func (g *Global) checkCurrent(ctx context.Context, gp *gpool, ci u128, attempt int) (bool, error) {
	cur, err := g.current(ctx, gp, ci)
	if err != nil || cur {
		return cur, err
	}
	if attempt >= g.maxAttempts {
		return false, g.gaveUp(fmt.Errorf("the chunk keeps changing: %w", errclass.ErrConflict))
	}
	return false, backoff(ctx, attempt)
}

// checkCreated runs after this Global created chunk ci of gp: if the pool was released in the
// meantime, it deletes the chunk again, so that nothing of a released generation outlives the
// ReleasePool that removes its chunks, and returns errStalePool. An error reading the index is
// ignored: the allocation stands.
func (g *Global) checkCreated(ctx context.Context, gp *gpool, ci u128) error {
	ok, err := g.alive(ctx, gp)
	if err != nil || ok {
		return nil
	}
	key := g.chunkKey(gp.rec.Gen, ci)
	_ = g.store.AtomicDelete(context.WithoutCancel(ctx), key, gp.revs[ci]) // best effort
	gp.cache, gp.revs = nil, nil
	return errStalePool
}

// ReleaseAddress implements [Allocator], as [Default.ReleaseAddress] does: one compare-and-swap
// of one bitmap chunk, or none when the address is free in the store.
//
// Errors: those of Default.ReleaseAddress; the store's errors, wrapped; an error matching
// cnm.ErrConflict after MaxAttempts lost races.
func (g *Global) ReleaseAddress(ctx context.Context, id PoolID, addr netip.Addr) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("ipam: release address %s in pool %s: %w", addr, id, err)
	}
	if !addr.IsValid() {
		return fmt.Errorf("ipam: release address in pool %s: %w", id,
			errclass.Invalid("addr", addr.String(), "no address given"))
	}
	what := fmt.Sprintf("ipam: release address %s in pool %s", addr, id)
	gp, err := g.poolFor(ctx, id)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if err := gp.lock(ctx); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	defer gp.unlock()
	if gp.cache == nil {
		if err := g.loadAll(ctx, gp); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
	}
	off, ok := gp.cache.offset(addr)
	if !ok {
		return fmt.Errorf("%s: not in subnet %s: %w", what, gp.rec.Subnet, ErrOutOfRange)
	}
	ci := off.shr(chunkBits)
	if id, ob, m := gp.ownOf(off); ob != nil && ob.used&m != 0 {
		// Given out by this host from its block, whatever the last read showed. An empty
		// block goes back; if that fails, it stays this host's, for its next addresses.
		ob.used &^= m
		if ob.used == 0 {
			if err := g.releaseBlock(ctx, gp, id); err != nil {
				return fmt.Errorf("%s: address released, but its empty block stays: %w", what, err)
			}
		}
		return nil
	}
	fresh := false
	for attempt := 1; ; attempt++ {
		if r, _, ok := gp.blockOf(off); ok {
			if g.host != "" && r.host == g.host {
				return nil // this host's block, and the address not in use (above)
			}
			if fresh {
				return nil // another host's block: its host releases its addresses
			}
			if err := g.loadChunk(ctx, gp, ci); err != nil {
				return fmt.Errorf("%s: %w", what, err)
			}
			fresh = true
			continue
		}
		if !gp.cache.isSet(off) {
			if fresh {
				return nil
			}
			// Another host may have allocated it.
			if err := g.loadChunk(ctx, gp, ci); err != nil {
				return fmt.Errorf("%s: %w", what, err)
			}
			fresh = true
			continue
		}
		gp.cache.clear(off)
		_, err := g.writeChunk(ctx, gp, ci)
		switch {
		case err == nil:
			return nil
		case !isCASFailure(err):
			return fmt.Errorf("%s: %w", what, err)
		case attempt >= g.maxAttempts:
			return fmt.Errorf("%s: %w", what, g.gaveUp(err))
		}
		if err := backoff(ctx, attempt); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if err := g.loadChunk(ctx, gp, ci); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		fresh = true
	}
}

// Reconcile implements [Reconciler]: it reads every chunk of the pool, then frees the
// addresses not in live with one compare-and-swap per chunk that holds any, retried on a race.
// For a pool shared by several hosts, live must hold what every host uses.
//
// Errors: ctx's error; [ErrUnknownPool]; the store's errors; an error matching
// cnm.ErrConflict after MaxAttempts lost races on one chunk. On error, freed lists what was
// freed before it.
func (g *Global) Reconcile(ctx context.Context, id PoolID, live []netip.Addr) (freed []netip.Addr, err error) {
	what := fmt.Sprintf("ipam: reconcile pool %s", id)
	gp, unlock, err := g.loadedPool(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	defer unlock()
	keep := make(map[u128]struct{}, len(live))
	for _, ob := range gp.own {
		ob.used = 0
	}
	for _, a := range live {
		if off, ok := gp.cache.offset(a); ok {
			keep[off] = struct{}{}
			if _, ob, m := gp.ownOf(off); ob != nil {
				ob.used |= m & ob.held
			}
		}
	}
	// The addresses of blocks are their hosts' to free.
	for ci, recs := range gp.blocks {
		for _, r := range recs {
			for b := 0; b < 64; b++ {
				if r.held&(1<<uint(b)) != 0 {
					keep[offsetIn(ci, r.start, b)] = struct{}{}
				}
			}
		}
	}
	cis := slices.SortedFunc(func(yield func(u128) bool) {
		for ci := range gp.cache.chunks {
			if !yield(ci) {
				return
			}
		}
	}, u128.cmp)
	for _, ci := range cis {
		for attempt := 1; ; attempt++ {
			p := gp.cache
			var drop []u128
			if c := p.chunkAt(ci); c != nil {
				chunkBitsOf(ci, c, func(off u128) {
					if _, ok := keep[off]; !ok {
						drop = append(drop, off)
					}
				})
			}
			if len(drop) == 0 {
				break
			}
			for _, off := range drop {
				p.clear(off)
			}
			_, err := g.writeChunk(ctx, gp, ci)
			if err == nil {
				for _, off := range drop {
					freed = append(freed, p.addr(off))
				}
				break
			}
			if !isCASFailure(err) {
				return freed, fmt.Errorf("%s: %w", what, err)
			}
			if attempt >= g.maxAttempts {
				return freed, fmt.Errorf("%s: %w", what, g.gaveUp(err))
			}
			if err := backoff(ctx, attempt); err != nil {
				return freed, fmt.Errorf("%s: %w", what, err)
			}
			if err := g.loadChunk(ctx, gp, ci); err != nil {
				return freed, fmt.Errorf("%s: %w", what, err)
			}
		}
	}
	return freed, nil
}

// Pools returns every pool in the store's index, by any host, in index order. Errors: ctx's
// error; the store's errors.
func (g *Global) Pools(ctx context.Context) ([]Pool, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("ipam: pools: %w", err)
	}
	idx, err := g.readIndex(ctx)
	if err != nil {
		return nil, fmt.Errorf("ipam: pools: %w", err)
	}
	out := make([]Pool, 0, len(idx.recs))
	for _, r := range idx.recs {
		out = append(out, Pool{ID: r.ID, Subnet: r.Subnet, Range: r.Range})
	}
	return out, nil
}

// loadedPool returns pool id with its every chunk freshly read from the store, holding its
// semaphore until unlock is called: what Reconcile, Addresses and Usage start with.
func (g *Global) loadedPool(ctx context.Context, id PoolID) (gp *gpool, unlock func(), err error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	if gp, err = g.freshPool(ctx, id); err != nil {
		return nil, nil, err
	}
	if err := gp.lock(ctx); err != nil {
		return nil, nil, err
	}
	if err := g.loadAll(ctx, gp); err != nil {
		gp.unlock()
		return nil, nil, err
	}
	return gp, gp.unlock, nil
}

// Addresses returns every address allocated in the pool, by any host, read from the store, in
// order: the gateways, aux addresses and endpoint addresses alike. Errors: ctx's error;
// [ErrUnknownPool]; the store's errors.
func (g *Global) Addresses(ctx context.Context, id PoolID) ([]netip.Addr, error) {
	what := fmt.Sprintf("ipam: addresses of pool %s", id)
	gp, unlock, err := g.loadedPool(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	defer unlock()
	p := gp.cache
	cis := slices.SortedFunc(maps.Keys(p.chunks), u128.cmp)
	var out []netip.Addr
	for _, ci := range cis {
		chunkBitsOf(ci, p.chunks[ci], func(off u128) {
			if r, id, ok := gp.blockOf(off); ok {
				_, _, m := split(off)
				if ob := gp.own[id]; r.host != g.host || ob == nil || ob.used&m == 0 {
					return
				}
			}
			out = append(out, p.addr(off))
		})
	}
	return out, nil
}

// Usage implements [Statuser]: it reads the index and every chunk of the pool, so the count is
// exact at the time of the read, whichever host allocated, but for the blocks of other hosts
// (see "Per-host blocks"), whose every address counts as in use. Errors: ctx's error;
// [ErrUnknownPool]; the store's errors.
func (g *Global) Usage(ctx context.Context, id PoolID) (size uint64, inUse int, err error) {
	what := fmt.Sprintf("ipam: usage of pool %s", id)
	gp, unlock, err := g.loadedPool(ctx, id)
	if err != nil {
		return 0, 0, fmt.Errorf("%s: %w", what, err)
	}
	defer unlock()
	inUse = gp.cache.inUse
	for id, ob := range gp.own {
		if g.recorded(gp, id) {
			inUse -= bits.OnesCount64(ob.held) - bits.OnesCount64(ob.used&ob.held)
		}
	}
	return gp.cache.size(), inUse, nil
}
