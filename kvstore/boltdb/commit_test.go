package boltdb

import (
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// TestOneCommitPerWrite checks, through bbolt's transaction ID (one per committed write
// transaction), that binding a key to a lease costs no commit of its own: Grant commits
// nothing, and Lease.AtomicPut, Put, Revoke and an expiry commit once each.
func TestOneCommitPerWrite(t *testing.T) {
	ctx := t.Context()
	s, err := Open(filepath.Join(t.TempDir(), "cnm.db"), Config{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	txID := func() int {
		var id int
		if err := s.db.View(func(tx *bolt.Tx) error { id = tx.ID(); return nil }); err != nil {
			t.Fatal(err)
		}
		return id
	}
	commits := func(what string, want int, f func()) {
		t.Helper()
		before := txID()
		f()
		if got := txID() - before; got != want {
			t.Errorf("%s: %d commits, want %d", what, got, want)
		}
	}

	commits("Put", 1, func() {
		if _, err := s.Put(ctx, "plain", []byte("1")); err != nil {
			t.Fatal(err)
		}
	})
	lease, err := s.Grant(ctx, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	commits("Grant", 0, func() {
		if _, err := s.Grant(ctx, time.Hour); err != nil {
			t.Fatal(err)
		}
	})
	commits("first Lease.AtomicPut", 1, func() {
		if _, err := lease.AtomicPut(ctx, "a", []byte("1"), 0); err != nil {
			t.Fatal(err)
		}
	})
	commits("second Lease.AtomicPut", 1, func() {
		if _, err := lease.AtomicPut(ctx, "b", []byte("1"), 0); err != nil {
			t.Fatal(err)
		}
	})
	commits("Put of a bound key", 1, func() {
		if _, err := s.Put(ctx, "b", []byte("2")); err != nil {
			t.Fatal(err)
		}
	})
	commits("Revoke", 1, func() {
		if err := lease.Revoke(ctx); err != nil {
			t.Fatal(err)
		}
	})
	commits("second Revoke", 0, func() {
		if err := lease.Revoke(ctx); err != nil {
			t.Fatal(err)
		}
	})

	expiring, err := s.Grant(ctx, 20*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := expiring.AtomicPut(ctx, "e", []byte("1"), 0); err != nil {
		t.Fatal(err)
	}
	commits("expiry", 1, func() {
		expiring.Abandon()
		select {
		case <-expiring.Done():
		case <-time.After(5 * time.Second):
			t.Fatal("abandoned lease did not expire")
		}
	})
}
