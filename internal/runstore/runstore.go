// Package runstore is the Controller's run store: a kvstore.Store and kvstore.Batcher that
// keeps its records in memory and in a journal file, for records that must outlive a crash of
// the process but not of the machine (the endpoints Connect makes for a sandbox's namespace,
// which a reboot removes with the namespace).
//
// Every write is one entry appended to the journal with one write(2) and no fsync: about as
// cheap as a system call, against tens of microseconds for a bbolt commit even without fsync,
// and two disk flushes with. A process that dies loses nothing it was told was written: the
// entry is in the page cache once write returns. An entry cut short (the process killed in the
// middle of its write, or a power cut with the file on a disk) and everything after it are
// dropped at the next Open, which checks each entry's length and CRC-32C. Open rewrites the
// journal with the live records only (to a new file renamed over it), as does a write once the
// journal holds more than four times their size (and at least CompactAt bytes), so it stays
// bounded.
//
// The file is locked (flock) while a Store has it open: a second Open fails with an error
// matching errclass.ErrUnavailable. There is no Watch: it fails with an error matching
// errclass.ErrNotSupported.
package runstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/cnmkit/cnm/kvstore"
)

// magic starts every journal file.
const magic = "cnm-run-journal-1\n"

// CompactAt is the journal size below which a write never compacts it.
const CompactAt = 64 << 10

// ErrNotJournal is what Open returns, wrapped, for a file that is not a run store journal:
// its content cannot be read back, so nothing is lost by starting it afresh.
var ErrNotJournal = errors.New("not a run store journal")

// lockWait is how long Open waits for another Store's lock on the file.
const lockWait = time.Second

// entryHeader is the length of an entry's header: the payload's length and its CRC-32C.
const entryHeader = 8

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// Op kinds in an entry's payload.
const (
	opPut    = 'p'
	opDelete = 'd'
)

// Store is the journal-backed store. Create it with Open; it is safe for concurrent use.
type Store struct {
	path string

	mu         sync.Mutex // guards following
	f          *os.File   // nil once closed
	rev        uint64
	kv         map[string]kvstore.KVPair
	size       int64 // bytes in the journal file
	live       int64 // bytes the live records take in a compacted journal
	broken     error // a write that could not be undone: every later write fails with it
	compactErr error // the last compaction's failure: the journal as it was stays whole
	buf        []byte
}

var (
	_ kvstore.Store   = (*Store)(nil)
	_ kvstore.Batcher = (*Store)(nil)
)

// Open opens or creates the journal at path and reads it back. Dropped entries (a torn tail)
// are reported in dropped, in bytes. A file that is not a journal fails with an error naming
// the path.
func Open(path string) (s *Store, dropped int, err error) {
	f, err := openLocked(path, false)
	if err != nil {
		return nil, 0, fmt.Errorf("runstore: open %q: %w", path, err)
	}
	defer func() {
		if err != nil {
			f.Close()
		}
	}()
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, 0, fmt.Errorf("runstore: read %q: %w", path, err)
	}
	s = &Store{path: path, kv: map[string]kvstore.KVPair{}}
	if len(b) > 0 {
		if !bytes.HasPrefix(b, []byte(magic)) {
			return nil, 0, fmt.Errorf("runstore: %q: %w", path, ErrNotJournal)
		}
		dropped = s.replay(b[len(magic):])
	}
	// The journal is rewritten with the live records (a new file, renamed over it).
	s.f = f
	if err := s.rewrite(); err != nil {
		return nil, 0, fmt.Errorf("runstore: rewrite %q: %w", path, err)
	}
	return s, dropped, nil
}

// openLocked opens the file at path (truncated with trunc) and takes its lock. The lock is
// taken again on the new file when the one it got was renamed over while it waited.
func openLocked(path string, trunc bool) (*os.File, error) {
	flags := os.O_RDWR | os.O_CREATE
	if trunc {
		flags |= os.O_TRUNC
	}
	for {
		f, err := os.OpenFile(path, flags, 0o600)
		if err != nil {
			return nil, err
		}
		if err := lock(f); err != nil {
			f.Close()
			return nil, err
		}
		fi, ferr := f.Stat()
		pi, perr := os.Stat(path)
		if ferr == nil && perr == nil && os.SameFile(fi, pi) {
			return f, nil
		}
		f.Close()
		if ferr != nil {
			return nil, ferr
		}
		if perr != nil && !errors.Is(perr, os.ErrNotExist) {
			return nil, perr
		}
	}
}

// replay applies the entries of b and returns how many bytes it dropped from the first entry
// that is cut short or does not match its CRC.
func (s *Store) replay(b []byte) int {
	for len(b) > 0 {
		if len(b) < entryHeader {
			return len(b)
		}
		n := int(binary.LittleEndian.Uint32(b))
		if n > len(b)-entryHeader || crc32.Checksum(b[entryHeader:entryHeader+n], crcTable) != binary.LittleEndian.Uint32(b[4:]) {
			return len(b)
		}
		if !s.apply(b[entryHeader : entryHeader+n]) {
			return len(b)
		}
		b = b[entryHeader+n:]
	}
	return 0
}

// apply decodes one entry's payload (its revision, its ops) into the records. It reports
// whether the payload was well formed; a bad one changes nothing.
func (s *Store) apply(p []byte) bool {
	rev, k := binary.Uvarint(p)
	if k <= 0 {
		return false
	}
	p = p[k:]
	type op struct {
		kind  byte
		key   string
		value []byte
	}
	var ops []op
	for len(p) > 0 {
		kind := p[0]
		p = p[1:]
		key, rest, ok := field(p)
		if !ok || (kind != opPut && kind != opDelete) {
			return false
		}
		p = rest
		o := op{kind: kind, key: string(key)}
		if kind == opPut {
			if o.value, p, ok = field(p); !ok {
				return false
			}
			o.value = slices.Clone(o.value)
		}
		ops = append(ops, o)
	}
	for _, o := range ops {
		if o.kind == opPut {
			s.kv[o.key] = kvstore.KVPair{Key: o.key, Value: o.value, Revision: rev}
		} else {
			delete(s.kv, o.key)
		}
	}
	s.rev = max(s.rev, rev)
	return true
}

// field reads a length-prefixed field.
func field(p []byte) (f, rest []byte, ok bool) {
	n, k := binary.Uvarint(p)
	if k <= 0 || n > uint64(len(p)-k) {
		return nil, nil, false
	}
	return p[k : k+int(n)], p[k+int(n):], true
}

// appendEntry appends to b an entry of revision rev with ops (a nil value is a delete).
func appendEntry(b []byte, rev uint64, ops []kvstore.Op) []byte {
	start := len(b)
	b = append(b, make([]byte, entryHeader)...)
	b = binary.AppendUvarint(b, rev)
	for _, op := range ops {
		if op.Value != nil {
			b = append(b, opPut)
		} else {
			b = append(b, opDelete)
		}
		b = binary.AppendUvarint(b, uint64(len(op.Key)))
		b = append(b, op.Key...)
		if op.Value != nil {
			b = binary.AppendUvarint(b, uint64(len(op.Value)))
			b = append(b, op.Value...)
		}
	}
	payload := b[start+entryHeader:]
	binary.LittleEndian.PutUint32(b[start:], uint32(len(payload)))
	binary.LittleEndian.PutUint32(b[start+4:], crc32.Checksum(payload, crcTable))
	return b
}

// rewrite writes the live records, each at its own revision, then an empty entry at the
// store's revision (so that revisions keep growing after a reopen), to a new file that it
// locks and renames over the journal: a crash at any point leaves the old journal or the new
// one whole. The store then writes to the new file.
func (s *Store) rewrite() error {
	b := []byte(magic)
	for _, k := range slices.Sorted(maps.Keys(s.kv)) {
		p := s.kv[k]
		b = appendEntry(b, p.Revision, []kvstore.Op{{Key: k, Value: p.Value}})
	}
	b = appendEntry(b, s.rev, nil)
	tmp := s.path + ".new"
	f, err := openLocked(tmp, true)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, s.path); err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	old := s.f
	s.f = f
	s.size, s.live = int64(len(b)), int64(len(b))
	if old != nil {
		// The journal is the new file now: the old descriptor (and its lock on the replaced
		// file) holds nothing the store depends on, so an error closing it changes nothing.
		_ = old.Close()
	}
	return nil
}

// begin checks ctx and that the store is open; the caller holds s.mu.
func (s *Store) begin(ctx context.Context) error {
	if ctx == nil {
		return errclass.Invalid("context", "<nil>", "a context is required")
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if s.f == nil {
		return kvstore.ErrClosed
	}
	return nil
}

// commit appends ops as one entry at the next revision and applies them; the caller holds
// s.mu and has checked them.
func (s *Store) commit(ops []kvstore.Op) (uint64, error) {
	if s.broken != nil {
		return 0, s.broken
	}
	rev := s.rev + 1
	s.buf = appendEntry(s.buf[:0], rev, ops)
	if n, err := s.f.Write(s.buf); err != nil || n != len(s.buf) {
		if err == nil {
			err = errors.New("short write")
		}
		// Take back what reached the file, or every later entry would be dropped with it.
		if terr := s.f.Truncate(s.size); terr != nil {
			s.broken = fmt.Errorf("runstore: %q: a failed write could not be undone: %w", s.path, terr)
		} else if _, serr := s.f.Seek(s.size, 0); serr != nil {
			s.broken = fmt.Errorf("runstore: %q: a failed write could not be undone: %w", s.path, serr)
		}
		return 0, fmt.Errorf("runstore: write %q: %w", s.path, err)
	}
	s.size += int64(len(s.buf))
	s.rev = rev
	for _, op := range ops {
		if old, ok := s.kv[op.Key]; ok {
			s.live -= int64(entryHeader + 16 + len(op.Key) + len(old.Value))
		}
		if op.Value != nil {
			s.kv[op.Key] = kvstore.KVPair{Key: op.Key, Value: slices.Clone(op.Value), Revision: rev}
			s.live += int64(entryHeader + 16 + len(op.Key) + len(op.Value))
		} else {
			delete(s.kv, op.Key)
		}
	}
	if s.size > CompactAt && s.size > 4*s.live {
		if err := s.rewrite(); err != nil {
			// The journal as it was is whole: the next write tries again.
			s.compactErr = err
		}
	}
	return rev, nil
}

// Get implements kvstore.Store.
func (s *Store) Get(ctx context.Context, key string) (kvstore.KVPair, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.begin(ctx); err != nil {
		return kvstore.KVPair{}, err
	}
	p, ok := s.kv[key]
	if !ok {
		return kvstore.KVPair{}, fmt.Errorf("runstore: get %q: %w", key, kvstore.ErrKeyNotFound)
	}
	p.Value = slices.Clone(p.Value)
	return p, nil
}

// Put implements kvstore.Store.
func (s *Store) Put(ctx context.Context, key string, value []byte) (uint64, error) {
	return s.Batch(ctx, []kvstore.Op{{Key: key, Value: nonNil(value)}})
}

// AtomicPut implements kvstore.Store.
func (s *Store) AtomicPut(ctx context.Context, key string, value []byte, prevRevision uint64) (uint64, error) {
	return s.Batch(ctx, []kvstore.Op{{Key: key, Value: nonNil(value), Check: true, PrevRevision: prevRevision}})
}

// Delete implements kvstore.Store.
func (s *Store) Delete(ctx context.Context, key string) error {
	_, err := s.Batch(ctx, []kvstore.Op{{Key: key}})
	return err
}

// AtomicDelete implements kvstore.Store.
func (s *Store) AtomicDelete(ctx context.Context, key string, prevRevision uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.begin(ctx); err != nil {
		return err
	}
	p, ok := s.kv[key]
	switch {
	case !ok:
		return fmt.Errorf("runstore: delete %q: %w", key, kvstore.ErrKeyNotFound)
	case p.Revision != prevRevision:
		return fmt.Errorf("runstore: delete %q at revision %d: %w", key, prevRevision, kvstore.ErrKeyModified)
	}
	_, err := s.commit([]kvstore.Op{{Key: key}})
	return err
}

// Batch implements kvstore.Batcher: the ops are checked, then written as one entry. A batch
// that writes nothing (its checks alone, or deletes of missing keys) returns the current
// revision and appends nothing.
func (s *Store) Batch(ctx context.Context, ops []kvstore.Op) (uint64, error) {
	if err := kvstore.CheckOps(ops); err != nil {
		return 0, fmt.Errorf("runstore: batch: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.begin(ctx); err != nil {
		return 0, err
	}
	writes := make([]kvstore.Op, 0, len(ops))
	for i, op := range ops {
		p, ok := s.kv[op.Key]
		switch {
		case op.Exists:
			if !ok {
				return 0, fmt.Errorf("op %d %q: %w", i, op.Key, kvstore.ErrKeyNotFound)
			}
			continue
		case op.Check && op.PrevRevision == 0 && ok:
			return 0, fmt.Errorf("op %d %q: %w", i, op.Key, kvstore.ErrKeyExists)
		case op.Check && op.PrevRevision != 0 && (!ok || p.Revision != op.PrevRevision):
			return 0, fmt.Errorf("op %d %q: %w", i, op.Key, kvstore.ErrKeyModified)
		case op.Value == nil && !ok:
			continue // a delete of a missing key
		}
		writes = append(writes, kvstore.Op{Key: op.Key, Value: op.Value})
	}
	if len(writes) == 0 {
		return s.rev, nil
	}
	return s.commit(writes)
}

// List implements kvstore.Store.
func (s *Store) List(ctx context.Context, prefix string) ([]kvstore.KVPair, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.begin(ctx); err != nil {
		return nil, err
	}
	out := []kvstore.KVPair{}
	for k, p := range s.kv {
		if strings.HasPrefix(k, prefix) {
			p.Value = slices.Clone(p.Value)
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b kvstore.KVPair) int { return strings.Compare(a.Key, b.Key) })
	return out, nil
}

// Watch is not supported: it fails with an error matching errclass.ErrNotSupported (or
// kvstore.ErrClosed once the store is closed).
func (s *Store) Watch(ctx context.Context, _ string, _ uint64) (<-chan kvstore.Event, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.begin(ctx); err != nil {
		return nil, err
	}
	return nil, &errclass.NotSupportedError{What: "watching the run store"}
}

// Close releases the file and its lock. Calls after Close fail with kvstore.ErrClosed; Close
// itself is idempotent.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f == nil {
		return nil
	}
	err := s.f.Close()
	s.f = nil
	return err
}

// nonNil returns v, or an empty value for nil (a nil Value is a delete in a Batch).
func nonNil(v []byte) []byte {
	if v == nil {
		return []byte{}
	}
	return v
}
