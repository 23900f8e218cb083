package runstore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/cnmkit/cnm/kvstore"
	"github.com/cnmkit/cnm/kvstore/kvstoretest"
)

func open(t *testing.T, path string) *Store {
	t.Helper()
	s, dropped, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if dropped != 0 {
		t.Fatalf("Open(%s) dropped %d bytes, want 0", path, dropped)
	}
	return s
}

// TestContract runs kvstore's contract suite but its Watch subtests.
func TestContract(t *testing.T) {
	kvstoretest.RunWith(t, func(t *testing.T) kvstore.Store {
		s, _, err := Open(filepath.Join(t.TempDir(), "records.log"))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}, kvstoretest.Options{NoWatch: true})
}

// TestReopen: what was written is read back, at the same revisions, and revisions keep growing
// after a reopen, deletes included.
func TestReopen(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "records.log")
	s := open(t, path)
	ra, _ := s.Put(ctx, "a", []byte("1"))
	if _, err := s.Put(ctx, "b", []byte("2")); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	rc, _ := s.Batch(ctx, []kvstore.Op{{Key: "c", Value: []byte("3")}, {Key: "d", Value: []byte("4")}})
	last := s.rev
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, path)
	defer s.Close()
	want := map[string]kvstore.KVPair{"a": {Key: "a", Value: []byte("1"), Revision: ra}, "c": {Key: "c", Value: []byte("3"), Revision: rc}, "d": {Key: "d", Value: []byte("4"), Revision: rc}}
	got, err := s.List(ctx, "")
	if err != nil || len(got) != len(want) {
		t.Fatalf("List after reopen = %v, %v; want %v", got, err, want)
	}
	for _, p := range got {
		if w := want[p.Key]; string(w.Value) != string(p.Value) || w.Revision != p.Revision {
			t.Errorf("after reopen %s = %q at %d, want %q at %d", p.Key, p.Value, p.Revision, w.Value, w.Revision)
		}
	}
	if r, err := s.Put(ctx, "e", []byte("5")); err != nil || r <= last {
		t.Fatalf("Put after reopen = %d, %v; want a revision above %d", r, err, last)
	}
}

// TestTornTail: an entry cut short (the process killed in its write) or damaged is dropped at
// Open with everything after it, and the entries before it are kept.
func TestTornTail(t *testing.T) {
	ctx := t.Context()
	for _, tc := range []struct {
		name string
		harm func(b []byte) []byte
	}{
		{"cut short", func(b []byte) []byte { return b[:len(b)-3] }},
		{"header only", func(b []byte) []byte { return b[:len(b)-len("value-2")-8] }},
		{"damaged", func(b []byte) []byte { b[len(b)-2] ^= 0xff; return b }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "records.log")
			s := open(t, path)
			if _, err := s.Put(ctx, "k1", []byte("value-1")); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Put(ctx, "k2", []byte("value-2")); err != nil {
				t.Fatal(err)
			}
			s.Close()
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, tc.harm(b), 0o600); err != nil {
				t.Fatal(err)
			}
			s, dropped, err := Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if dropped == 0 {
				t.Errorf("Open dropped nothing, want the torn entry")
			}
			if p, err := s.Get(ctx, "k1"); err != nil || string(p.Value) != "value-1" {
				t.Errorf("k1 = %q, %v; want value-1", p.Value, err)
			}
			if _, err := s.Get(ctx, "k2"); !errors.Is(err, kvstore.ErrKeyNotFound) {
				t.Errorf("k2 = %v, want ErrKeyNotFound (its entry was torn)", err)
			}
			// The journal was rewritten: the next writes are read back.
			if _, err := s.Put(ctx, "k3", []byte("value-3")); err != nil {
				t.Fatal(err)
			}
			s.Close()
			s = open(t, path)
			if p, err := s.Get(ctx, "k3"); err != nil || string(p.Value) != "value-3" {
				t.Errorf("k3 after another reopen = %q, %v", p.Value, err)
			}
		})
	}
}

// TestNotAJournal: a file that is not a journal is refused, and left as it was.
func TestNotAJournal(t *testing.T) {
	path := filepath.Join(t.TempDir(), "records.log")
	junk := []byte("not a journal at all")
	if err := os.WriteFile(path, junk, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := Open(path); !errors.Is(err, ErrNotJournal) {
		t.Fatalf("Open of a file that is not a journal = %v, want ErrNotJournal", err)
	}
	if b, _ := os.ReadFile(path); string(b) != string(junk) {
		t.Fatalf("the file became %q", b)
	}
}

// TestLocked: a second Open of an open journal fails with ErrUnavailable; once closed, it opens.
func TestLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "records.log")
	s := open(t, path)
	if _, _, err := Open(path); !errors.Is(err, errclass.ErrUnavailable) {
		t.Fatalf("second Open = %v, want ErrUnavailable", err)
	}
	s.Close()
	open(t, path).Close()
}

// TestCompaction: rewriting the same few keys keeps the journal bounded, and what is read back
// after a reopen is the last state.
func TestCompaction(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "records.log")
	s := open(t, path)
	value := make([]byte, 400)
	var maxSize int64
	for i := range 5000 {
		k := fmt.Sprintf("ep/%d", i%5)
		if _, err := s.Put(ctx, k, value); err != nil {
			t.Fatal(err)
		}
		if i%7 == 0 {
			if err := s.Delete(ctx, k); err != nil {
				t.Fatal(err)
			}
		}
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		maxSize = max(maxSize, fi.Size())
	}
	if maxSize > CompactAt+1024 {
		t.Errorf("the journal grew to %d bytes, want it compacted near %d", maxSize, CompactAt)
	}
	want, _ := s.List(ctx, "")
	s.Close()
	s = open(t, path)
	defer s.Close()
	got, _ := s.List(ctx, "")
	if len(got) != len(want) {
		t.Fatalf("after reopen %d keys, want %d", len(got), len(want))
	}
	for i := range got {
		if got[i].Key != want[i].Key || got[i].Revision != want[i].Revision {
			t.Errorf("after reopen %s at %d, want %s at %d", got[i].Key, got[i].Revision, want[i].Key, want[i].Revision)
		}
	}
}

// TestWatchNotSupported: Watch says the run store has none.
func TestWatchNotSupported(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "records.log"))
	defer s.Close()
	if _, err := s.Watch(t.Context(), "", 0); !errors.Is(err, errclass.ErrNotSupported) {
		t.Fatalf("Watch = %v, want ErrNotSupported", err)
	}
}

// BenchmarkPut: one write of an endpoint-sized record, against a bbolt commit without fsync
// (kvstore/boltdb's benchmarks) on the same filesystem.
func BenchmarkPut(b *testing.B) {
	s, _, err := Open(filepath.Join(b.TempDir(), "records.log"))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	value := make([]byte, 600)
	ctx := context.Background()
	i := 0
	for b.Loop() {
		i++
		if _, err := s.Put(ctx, fmt.Sprintf("ep/%d", i%8), value); err != nil {
			b.Fatal(err)
		}
	}
}

// TestCrashMidRewrite: a process killed while it rewrote the journal leaves the new file
// half-written beside the journal (the rename never happened). Open reads the journal, and its
// own rewrite replaces the leftover.
func TestCrashMidRewrite(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "records.log")
	s := open(t, path)
	if _, err := s.Put(ctx, "k", []byte("kept")); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if err := os.WriteFile(path+".new", []byte(magic+"half an ent"), 0o600); err != nil {
		t.Fatal(err)
	}
	s = open(t, path)
	defer s.Close()
	if p, err := s.Get(ctx, "k"); err != nil || string(p.Value) != "kept" {
		t.Fatalf("k = %q, %v; want kept", p.Value, err)
	}
	if _, err := os.Stat(path + ".new"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the half-written file is still there: %v", err)
	}
}
