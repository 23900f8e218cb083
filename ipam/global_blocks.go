package ipam

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"math/bits"
	"net/netip"
	"slices"
)

// Per-host address blocks (GlobalConfig.Host).
//
// A Global with a host name takes the dynamic addresses of a pool from blocks: aligned runs of
// 2^k addresses (k from 2 to 6, by the pool's size: 4 for a /24, 64 for a /20 and larger) that
// the host claims in the pool's bitmap with one compare-and-swap of a chunk, which records the
// block's owner beside the bits. Within its blocks a host allocates and releases alone, in
// memory, with no store call: the fact that an address is used is its endpoint's record, which
// the caller keeps anyway (a restarted host gets its addresses back from its records, by static
// requests, as it does with the local allocator). A block goes back to the pool, with one
// compare-and-swap, when its last address is released; one left in the store with none of the
// host's addresses in use (a release or claim the store did not answer, or, after a restart,
// a release that never reached it: SettleBlocks) goes back at the next ReleaseEmptyBlocks.
//
// Reads may go back in time (a Consul server that restarted answers before it has replayed its
// log), so a read never decides alone what the host may allocate from: which addresses of a
// block it gave out is known only here and is never forgotten for a read that does not show
// the block (only a release, or ReconcileBlocks with the live addresses, clears them), and the
// host gives out new addresses only from a block that its own compare-and-swap showed to be its
// (the claim, or a rewrite of the chunk as read, which fails if the read was stale) since the
// last read that did not show it.

// blockRec is a block as a chunk records it: the bit of its first offset in the chunk
// (aligned to the pool's block size), the bits it holds in that word (those that were free
// and dynamic when it was claimed), and its host.
type blockRec struct {
	start uint16
	held  uint64
	host  string
}

// blockID names a block of a pool: its chunk and its first bit in the chunk.
type blockID struct {
	ci    u128
	start uint16
}

// ownBlock is a block of this host: the bits it holds and those allocated. sureAt is the
// Global's epoch when a compare-and-swap of this host last showed the block to be its, zero
// after a read that did not show it: the host allocates from it only while sureAt is the
// current epoch (SuspendBlocks starts a new one).
type ownBlock struct {
	held, used uint64
	sureAt     uint64
}

// minBlockPool is the smallest dynamic range that is handed out in blocks; smaller pools
// allocate address by address.
const minBlockPool = 128

// blockBits returns log2 of the block size of pool p, or 0 when p is not handed out in blocks.
func blockBits(p *pool) uint {
	if p.dynCap.hi != 0 || p.dynCap.lo >= 1<<20 {
		return 6
	}
	n := p.dynCap.lo
	if n < minBlockPool {
		return 0
	}
	k := bits.Len64(n) - 6
	return uint(min(max(k, 2), 6))
}

// chunkVersionBlocks is the first byte of a stored chunk that records blocks after its bits.
const chunkVersionBlocks = 2

// encodeChunkBlocks encodes c with the blocks recs: the bitmap as version 1, then each block as
// its start (2 bytes), held bits (8), and host (1-byte length, then the name).
func encodeChunkBlocks(c *chunk, recs []blockRec) []byte {
	b := encodeChunk(c)
	if len(recs) == 0 {
		return b
	}
	b[0] = chunkVersionBlocks
	for _, r := range recs {
		b = binary.LittleEndian.AppendUint16(b, r.start)
		b = binary.LittleEndian.AppendUint64(b, r.held)
		b = append(b, byte(len(r.host)))
		b = append(b, r.host...)
	}
	return b
}

// decodeChunkBlocks decodes a stored chunk of either version.
func decodeChunkBlocks(b []byte) (*chunk, []blockRec, error) {
	var c chunk
	n := 1 + len(c)*8
	if len(b) < n || (b[0] == chunkVersion && len(b) != n) || (b[0] != chunkVersion && b[0] != chunkVersionBlocks) {
		return nil, nil, fmt.Errorf("corrupt bitmap chunk: %d bytes, version %d", len(b), b[0])
	}
	for i := range c {
		c[i] = binary.LittleEndian.Uint64(b[1+8*i:])
	}
	var recs []blockRec
	for rest := b[n:]; len(rest) > 0; {
		if len(rest) < 11 || len(rest) < 11+int(rest[10]) {
			return nil, nil, fmt.Errorf("corrupt bitmap chunk: truncated block record")
		}
		r := blockRec{start: binary.LittleEndian.Uint16(rest), held: binary.LittleEndian.Uint64(rest[2:]), host: string(rest[11 : 11+int(rest[10])])}
		if r.start >= chunkSize || r.host == "" || c[r.start>>6]&r.held != r.held {
			return nil, nil, fmt.Errorf("corrupt bitmap chunk: block record %+v", r)
		}
		recs = append(recs, r)
		rest = rest[11+int(rest[10]):]
	}
	return &c, recs, nil
}

// blockOf returns the block record of gp that holds off, if any. It needs gp.sem.
func (gp *gpool) blockOf(off u128) (blockRec, blockID, bool) {
	k := blockBits(gp.cache)
	if k == 0 {
		return blockRec{}, blockID{}, false
	}
	ci, _, mask := split(off)
	start := uint16(off.lo&(chunkSize-1)) &^ (1<<k - 1)
	for _, r := range gp.blocks[ci] {
		if r.start == start && r.held&mask != 0 {
			return r, blockID{ci, start}, true
		}
	}
	return blockRec{}, blockID{}, false
}

// groupHasBlock reports whether a block record starts at start in chunk ci.
func (gp *gpool) groupHasBlock(ci u128, start uint16) bool {
	return slices.ContainsFunc(gp.blocks[ci], func(r blockRec) bool { return r.start == start })
}

// syncOwn brings this host's blocks in line with the records of chunk ci just read, which
// may be older than what this host knows: a block of this host that the chunk records is kept
// with its allocations (or adopted with none, after a restart: the endpoints' static requests
// mark theirs; it is allocated from once confirmed), one the chunk does not record is no
// longer allocated from, and is forgotten once none of its addresses is in use (it was
// released for this host while it was away, or the read is stale). It needs gp.sem.
func (g *Global) syncOwn(gp *gpool, ci u128) {
	if g.host == "" {
		return
	}
	if gp.own == nil {
		gp.own = map[blockID]*ownBlock{}
	}
	seen := map[uint16]bool{}
	for _, r := range gp.blocks[ci] {
		if r.host != g.host {
			continue
		}
		seen[r.start] = true
		id := blockID{ci, r.start}
		if ob := gp.own[id]; ob != nil {
			if ob.held != r.held {
				ob.held, ob.sureAt = r.held, 0
			}
		} else {
			gp.own[id] = &ownBlock{held: r.held}
		}
	}
	for id := range gp.own {
		if id.ci == ci && !seen[id.start] {
			gp.unseen(id)
		}
	}
}

// unseen records that a read did not show the block id of this host: it is no longer
// allocated from, and is forgotten if none of its addresses is in use. It needs gp.sem.
func (gp *gpool) unseen(id blockID) {
	ob := gp.own[id]
	if ob == nil {
		return
	}
	ob.sureAt = 0
	if ob.used == 0 {
		delete(gp.own, id)
	}
}

// ownOf returns the block of this host that off belongs to (in its group), whether or not
// the last read showed it, and the bit of off; nil if there is none. It needs gp.sem.
func (gp *gpool) ownOf(off u128) (blockID, *ownBlock, uint64) {
	k := blockBits(gp.cache)
	if k == 0 || len(gp.own) == 0 {
		return blockID{}, nil, 0
	}
	ci, _, m := split(off)
	id := blockID{ci, uint16(off.lo&(chunkSize-1)) &^ (1<<k - 1)}
	return id, gp.own[id], m
}

// recorded reports whether the last read of the chunk of id records it as this host's block.
// It needs gp.sem.
func (g *Global) recorded(gp *gpool, id blockID) bool {
	return slices.ContainsFunc(gp.blocks[id.ci], func(r blockRec) bool { return r.start == id.start && r.host == g.host })
}

// offsetIn returns the offset of bit i of word w of chunk ci.
func offsetIn(ci u128, start uint16, i int) u128 {
	base := ci.shl(chunkBits)
	return u128{base.hi, base.lo | uint64(start&^63) | uint64(i)}
}

// allocOwn allocates the lowest free address of one of this host's blocks confirmed in epoch,
// with no store call.
func (gp *gpool) allocOwn(epoch uint64) (u128, bool) {
	var best blockID
	found := false
	for id, ob := range gp.own {
		if ob.sureAt != epoch || ob.held&^ob.used == 0 {
			continue
		}
		if !found || id.ci.less(best.ci) || (id.ci == best.ci && id.start < best.start) {
			best, found = id, true
		}
	}
	if !found {
		return u128{}, false
	}
	ob := gp.own[best]
	i := bits.TrailingZeros64(ob.held &^ ob.used)
	ob.used |= 1 << uint(i)
	return offsetIn(best.ci, best.start, i), true
}

// findGroup returns a group of the pool (aligned, of its block size) with free dynamic
// offsets and no block (none recorded, none this host knows as its), searching from the
// pool's next position, and the bits of its word it would hold. It looks at a bounded number
// of groups.
func (gp *gpool) findGroup() (blockID, uint64, bool) {
	p := gp.cache
	k := blockBits(p)
	if k == 0 || p.dynCap.isZero() {
		return blockID{}, 0, false
	}
	size := uint64(1) << k
	from := p.next
	wrapped := false
	for tries := 0; tries < 4096; tries++ {
		off, ok := p.findFree(from, p.hi)
		if !ok {
			if wrapped || !p.lo.less(p.next) {
				return blockID{}, 0, false
			}
			wrapped, from = true, p.lo
			continue
		}
		ci, _, _ := split(off)
		start := uint16(off.lo&(chunkSize-1)) &^ uint16(size-1)
		var held uint64
		for i := range size {
			o := offsetIn(ci, start, int(uint64(start&63)+i))
			if p.inDyn(o) && !p.isSet(o) {
				held |= 1 << (uint64(start&63) + i)
			}
		}
		if held != 0 && !gp.groupHasBlock(ci, start) && gp.own[blockID{ci, start}] == nil {
			return blockID{ci, start}, held, true
		}
		next := offsetIn(ci, start, int(uint64(start&63)+size-1)).add1()
		if p.hi.less(next) || next.isZero() {
			if wrapped {
				return blockID{}, 0, false
			}
			wrapped, from = true, p.lo
			continue
		}
		if wrapped && !next.less(p.next) {
			return blockID{}, 0, false
		}
		from = next
	}
	return blockID{}, 0, false
}

// claim claims a block of gp for this host with one compare-and-swap of its chunk and
// allocates its first address. It returns false with a nil error when the pool has no group
// to claim. On a lost compare-and-swap it returns the store's error, the cache of the chunk
// left as it was written (the caller reads it again).
func (g *Global) claim(ctx context.Context, gp *gpool) (u128, blockID, bool, error) {
	id, held, ok := gp.findGroup()
	if !ok {
		return u128{}, id, false, nil
	}
	p := gp.cache
	for i := 0; i < 64; i++ {
		if held&(1<<uint(i)) != 0 {
			p.set(offsetIn(id.ci, id.start, i))
		}
	}
	gp.blocks[id.ci] = append(slices.Clip(gp.blocks[id.ci]), blockRec{start: id.start, held: held, host: g.host})
	created, err := g.writeChunk(ctx, gp, id.ci)
	if err != nil {
		if !isCASFailure(err) {
			g.setLoose(gp, id) // the claim may have been applied, its answer lost
		}
		return u128{}, id, false, err
	}
	if created {
		if err := g.checkCreated(ctx, gp, id.ci); err != nil {
			return u128{}, id, false, err
		}
	}
	if gp.own == nil {
		gp.own = map[blockID]*ownBlock{}
	}
	i := bits.TrailingZeros64(held)
	gp.own[id] = &ownBlock{held: held, used: 1 << uint(i), sureAt: g.epoch.Load()}
	end := offsetIn(id.ci, id.start, 63-bits.LeadingZeros64(held))
	if end.less(p.hi) {
		p.setNext(end.add1())
	} else {
		p.setNext(p.lo)
	}
	return offsetIn(id.ci, id.start, i), id, true, nil
}

// confirm makes sure of one of this host's blocks that a read shows and that has free
// addresses, but that no compare-and-swap of this host has shown to be its since (adopted
// after a restart, or shown again after a stale read): it writes the chunk back as read, over
// the revision read, which fails if the read was stale. Every block of this host that the
// chunk records is then confirmed. It reports false with a nil error when there is no such
// block; on a lost compare-and-swap it returns the store's error and the chunk's index (the
// caller reads it again). It needs gp.sem.
func (g *Global) confirm(ctx context.Context, gp *gpool) (u128, bool, error) {
	var ci u128
	found := false
	for id, ob := range gp.own {
		if ob.sureAt == g.epoch.Load() || ob.held&^ob.used == 0 || !g.recorded(gp, id) {
			continue
		}
		if !found || id.ci.less(ci) {
			ci, found = id.ci, true
		}
	}
	if !found {
		return u128{}, false, nil
	}
	if err := g.rewriteChunk(ctx, gp, ci); err != nil {
		return ci, false, err
	}
	return ci, true, nil
}

// rewriteChunk writes chunk ci of gp back as last read, over the revision read: it succeeds
// only if the read was current, which a read alone cannot tell (a store that restarted may
// answer from the past). Then every block of this host that the chunk records is confirmed.
// The errors are writeChunk's. It needs gp.sem.
func (g *Global) rewriteChunk(ctx context.Context, gp *gpool, ci u128) error {
	if _, err := g.writeChunk(ctx, gp, ci); err != nil {
		return err
	}
	for id, ob := range gp.own {
		if id.ci == ci && g.recorded(gp, id) {
			ob.sureAt = g.epoch.Load()
		}
	}
	return nil
}

// current reports whether chunk ci of gp, as last read, is the chunk as it is, before a
// request is refused for what the read shows: for a Global with blocks, by rewriting it
// (rewriteChunk), which re-reads it on a lost compare-and-swap and reports false; without
// blocks the read is taken as it is. It needs gp.sem.
func (g *Global) current(ctx context.Context, gp *gpool, ci u128) (bool, error) {
	if g.host == "" || gp.revs[ci] == 0 {
		return true, nil
	}
	err := g.rewriteChunk(ctx, gp, ci)
	switch {
	case err == nil:
		return true, nil
	case !isCASFailure(err):
		return false, err
	}
	return false, g.loadChunk(ctx, gp, ci)
}

// releaseBlock gives the empty block id of this host back to the pool: one compare-and-swap of
// its chunk, retried on a race. A block the chunk no longer records as this host's is dropped.
// It needs gp.sem.
func (g *Global) releaseBlock(ctx context.Context, gp *gpool, id blockID) error {
	reread := false
	for attempt := 1; ; attempt++ {
		ob := gp.own[id]
		if ob == nil || ob.used != 0 {
			return nil
		}
		recs := gp.blocks[id.ci]
		i := slices.IndexFunc(recs, func(r blockRec) bool { return r.start == id.start && r.host == g.host })
		if i < 0 {
			if reread {
				delete(gp.own, id)
				return nil
			}
			// The last read did not show it; it may have been stale.
			if err := g.loadChunk(ctx, gp, id.ci); err != nil {
				return err
			}
			reread = true
			continue
		}
		for b := 0; b < 64; b++ {
			if ob.held&(1<<uint(b)) != 0 {
				gp.cache.clear(offsetIn(id.ci, id.start, b))
			}
		}
		gp.blocks[id.ci] = slices.Delete(slices.Clone(recs), i, i+1)
		_, err := g.writeChunk(ctx, gp, id.ci)
		switch {
		case err == nil:
			delete(gp.own, id)
			return nil
		case !isCASFailure(err):
			// The write may have been applied with its answer lost (a store restarting):
			// then the block is free in the store and another host may claim it, so this
			// host stops allocating from it either way. Had the write failed, the block
			// stays recorded as this host's with no address in use, until
			// ReleaseEmptyBlocks (or ReconcileBlocks) gives it back.
			delete(gp.own, id)
			g.setLoose(gp, id)
			return err
		case attempt >= g.maxAttempts:
			g.setLoose(gp, id)
			return g.gaveUp(err)
		}
		if err := backoff(ctx, attempt); err != nil {
			return err
		}
		if err := g.loadChunk(ctx, gp, id.ci); err != nil {
			return err
		}
	}
}

// setLoose records that the store may hold block id as this host's with none of its addresses
// in use. It needs gp.sem.
func (g *Global) setLoose(gp *gpool, id blockID) {
	if gp.loose == nil {
		gp.loose = map[blockID]int{}
	}
	gp.loose[id] = 0
	g.loose.Store(true)
}

// looseReads is how many reads in a row must not show a loose block before it is forgotten:
// one read may be stale (a store that restarted and has not replayed its log).
const looseReads = 3

// ReleaseEmptyBlocks gives back the address blocks of this host that a release or a claim
// left in the store with none of their addresses in use, because the store did not answer it
// (or the release lost its races MaxAttempts times). Without it such a block stays this
// host's, for its next addresses, and no other host may use it while this one is registered.
// A block that one of this host's addresses went to since is left to the release of its last
// address. A block that looseReads reads of its chunk in a row do not show as this host's is
// forgotten. A multi-host Controller calls it at every sweep of its cluster; call it now and
// then when using a Global directly. It is safe for concurrent use. Errors: ctx's error; the
// store's errors (the blocks it could not give back are tried again at the next call).
func (g *Global) ReleaseEmptyBlocks(ctx context.Context) error {
	if g.host == "" || !g.loose.Swap(false) {
		return nil
	}
	g.mu.Lock()
	pools := slices.Collect(maps.Values(g.pools))
	g.mu.Unlock()
	var errs []error
	for _, gp := range pools {
		if err := gp.lock(ctx); err != nil {
			g.loose.Store(true) // the pools left are looked at next time
			return fmt.Errorf("ipam: release empty blocks: %w", err)
		}
		if err := g.releaseLoose(ctx, gp); err != nil {
			errs = append(errs, fmt.Errorf("ipam: release empty blocks of pool %s: %w", gp.id, err))
		}
		if len(gp.loose) > 0 {
			g.loose.Store(true)
		}
		gp.unlock()
	}
	return errors.Join(errs...)
}

// SettleBlocks marks the blocks of this host in pool id in which none of its addresses is in
// use, to be given back by the next ReleaseEmptyBlocks unless an address goes to one of them
// first. Call it after a restart, once every address this host holds in the pool was requested
// again (the static requests of its endpoints, gateways and aux addresses): the blocks are
// adopted from the store with no address in use, and one that its previous run left empty (a
// release that did not reach the store before the process stopped) would stay this host's.
// It is safe for concurrent use. Errors: ctx's error; [ErrUnknownPool]; the store's errors.
func (g *Global) SettleBlocks(ctx context.Context, id PoolID) error {
	if g.host == "" {
		return nil
	}
	gp, err := g.poolFor(ctx, id)
	if err != nil {
		return fmt.Errorf("ipam: settle blocks of pool %s: %w", id, err)
	}
	if err := gp.lock(ctx); err != nil {
		return fmt.Errorf("ipam: settle blocks of pool %s: %w", id, err)
	}
	defer gp.unlock()
	if gp.cache == nil {
		if err := g.loadAll(ctx, gp); err != nil {
			return fmt.Errorf("ipam: settle blocks of pool %s: %w", id, err)
		}
	}
	for bid, ob := range gp.own {
		if ob.used == 0 {
			g.setLoose(gp, bid)
		}
	}
	return nil
}

// releaseLoose gives back the loose blocks of gp (ReleaseEmptyBlocks). It needs gp.sem.
func (g *Global) releaseLoose(ctx context.Context, gp *gpool) error {
	if len(gp.loose) == 0 {
		return nil
	}
	if gp.cache == nil {
		if err := g.loadAll(ctx, gp); err != nil {
			return err
		}
	}
	for _, id := range slices.SortedFunc(maps.Keys(gp.loose), func(a, b blockID) int {
		return cmp.Or(a.ci.cmp(b.ci), cmp.Compare(a.start, b.start))
	}) {
		if ob := gp.own[id]; ob != nil && ob.used != 0 {
			delete(gp.loose, id) // in use again: the release of its last address gives it back
			continue
		}
		if err := g.loadChunk(ctx, gp, id.ci); err != nil {
			return err
		}
		if !g.recorded(gp, id) {
			if gp.loose[id]++; gp.loose[id] >= looseReads {
				delete(gp.loose, id)
			}
			continue
		}
		if err := g.releaseBlock(ctx, gp, id); err != nil {
			return err
		}
		if _, ok := gp.own[id]; !ok {
			delete(gp.loose, id)
		}
	}
	return nil
}

// Block is an address block of a pool and the host that holds it.
type Block struct {
	Prefix netip.Prefix
	Host   string
}

// Blocks returns the address blocks of pool id, read from the store, in address order. Errors:
// ctx's error; [ErrUnknownPool]; the store's errors.
func (g *Global) Blocks(ctx context.Context, id PoolID) ([]Block, error) {
	gp, unlock, err := g.loadedPool(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("ipam: blocks of pool %s: %w", id, err)
	}
	defer unlock()
	k := blockBits(gp.cache)
	var out []Block
	for _, ci := range slices.SortedFunc(func(yield func(u128) bool) {
		for ci := range gp.blocks {
			if !yield(ci) {
				return
			}
		}
	}, u128.cmp) {
		recs := slices.SortedFunc(slices.Values(gp.blocks[ci]), func(a, b blockRec) int { return int(a.start) - int(b.start) })
		for _, r := range recs {
			a := gp.cache.addr(offsetIn(ci, r.start, int(r.start&63)))
			out = append(out, Block{Prefix: netip.PrefixFrom(a, a.BitLen()-int(k)), Host: r.host})
		}
	}
	return out, nil
}

// ReleaseBlock gives back the block at prefix of pool id if host still holds it: for a host
// that left the cluster or died, once no endpoint holds an address in it (the caller checks).
// It reports whether it released the block. Errors: ctx's error; [ErrUnknownPool]; the store's
// errors; an error matching cnm.ErrConflict after MaxAttempts lost races.
func (g *Global) ReleaseBlock(ctx context.Context, id PoolID, prefix netip.Prefix, host string) (bool, error) {
	what := fmt.Sprintf("ipam: release block %s of host %s in pool %s", prefix, host, id)
	gp, unlock, err := g.loadedPool(ctx, id)
	if err != nil {
		return false, fmt.Errorf("%s: %w", what, err)
	}
	defer unlock()
	off, ok := gp.cache.offset(prefix.Addr())
	if !ok {
		return false, fmt.Errorf("%s: not in subnet %s: %w", what, gp.rec.Subnet, ErrOutOfRange)
	}
	k := blockBits(gp.cache)
	bid := blockID{off.shr(chunkBits), uint16(off.lo&(chunkSize-1)) &^ (1<<k - 1)}
	for attempt := 1; ; attempt++ {
		i := slices.IndexFunc(gp.blocks[bid.ci], func(x blockRec) bool { return x.start == bid.start })
		if k == 0 || i < 0 || gp.blocks[bid.ci][i].host != host {
			return false, nil
		}
		r := gp.blocks[bid.ci][i]
		for b := 0; b < 64; b++ {
			if r.held&(1<<uint(b)) != 0 {
				gp.cache.clear(offsetIn(bid.ci, bid.start, b))
			}
		}
		gp.blocks[bid.ci] = slices.Delete(slices.Clone(gp.blocks[bid.ci]), i, i+1)
		_, err := g.writeChunk(ctx, gp, bid.ci)
		switch {
		case err == nil:
			delete(gp.own, bid)
			return true, nil
		case !isCASFailure(err):
			return false, fmt.Errorf("%s: %w", what, err)
		case attempt >= g.maxAttempts:
			return false, fmt.Errorf("%s: %w", what, g.gaveUp(err))
		}
		if err := backoff(ctx, attempt); err != nil {
			return false, fmt.Errorf("%s: %w", what, err)
		}
		if err := g.loadChunk(ctx, gp, bid.ci); err != nil {
			return false, fmt.Errorf("%s: %w", what, err)
		}
	}
}

// SuspendBlocks stops this host's allocation from its blocks, in every pool, until
// ResumeBlocks: for a host whose registration lapsed, whose blocks the other hosts may give
// back (and claim) once they have reclaimed its endpoints, with no store write of this host to
// fail. Meanwhile dynamic requests take one compare-and-swap per address, outside the blocks;
// releases and static requests inside the blocks are as before. It is safe for concurrent use.
func (g *Global) SuspendBlocks() {
	g.paused.Store(true)
	g.epoch.Add(1) // what was confirmed before is to be confirmed again
}

// ResumeBlocks ends SuspendBlocks, once ReconcileBlocks has run on the pools of this host's
// endpoints: it allocates again from the blocks that a compare-and-swap made since shows to
// be still its. It is safe for concurrent use.
func (g *Global) ResumeBlocks() { g.paused.Store(false) }

// ReconcileBlocks re-reads the chunks of pool id and sets the allocations of this host's
// blocks to the addresses of live inside them: for a host whose registration lapsed while
// others may have reclaimed its endpoints (and given back its blocks), live lists the
// addresses of its endpoints whose records are still there; the others are taken back, or
// not, by static requests. A block of this host that the read does not show is no longer
// allocated from, and dropped when no address of live is in it; one left empty is given back;
// the others are allocated from again only once a compare-and-swap shows them still this
// host's (the read may be stale).
// Other addresses are left alone. Errors: ctx's error; [ErrUnknownPool]; the store's errors.
func (g *Global) ReconcileBlocks(ctx context.Context, id PoolID, live []netip.Addr) error {
	gp, unlock, err := g.loadedPool(ctx, id)
	if err != nil {
		return fmt.Errorf("ipam: reconcile blocks of pool %s: %w", id, err)
	}
	defer unlock()
	for _, ob := range gp.own {
		ob.used, ob.sureAt = 0, 0
	}
	for _, a := range live {
		off, ok := gp.cache.offset(a)
		if !ok {
			continue
		}
		// Also in a block the read did not show: it may be stale.
		if _, ob, m := gp.ownOf(off); ob != nil {
			ob.used |= m & ob.held
		}
	}
	var errs []error
	for bid, ob := range gp.own {
		if ob.used == 0 {
			errs = append(errs, g.releaseBlock(ctx, gp, bid))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("ipam: reconcile blocks of pool %s: release an empty block: %w", id, err)
	}
	return nil
}
