package boltdb_test

import (
	"bytes"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/cnmkit/cnm/kvstore"
	"github.com/cnmkit/cnm/kvstore/boltdb"
)

// benchValue is about the size of a stored network or endpoint.
var benchValue = make([]byte, 256)

// openBench opens a store with real fsync in b.TempDir().
func openBench(b *testing.B) *boltdb.Store {
	b.Helper()
	s, err := boltdb.Open(filepath.Join(b.TempDir(), "cnm.db"), boltdb.Config{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s
}

// BenchmarkPut is one write call: one transaction, one fsync.
func BenchmarkPut(b *testing.B) {
	s := openBench(b)
	ctx := b.Context()
	i := 0
	for b.Loop() {
		if _, err := s.Put(ctx, fmt.Sprintf("cnm/v1/endpoints/%d", i%1000), benchValue); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkBatch is 4 puts in one Batch: one transaction, one fsync.
func BenchmarkBatch(b *testing.B) {
	s := openBench(b)
	ctx := b.Context()
	ops := make([]kvstore.Op, 4)
	i := 0
	for b.Loop() {
		for j := range ops {
			ops[j] = kvstore.Op{Key: fmt.Sprintf("cnm/v1/endpoints/%d/%d", i%1000, j), Value: benchValue}
		}
		if _, err := s.Batch(ctx, ops); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkGet reads one of 1000 keys.
func BenchmarkGet(b *testing.B) {
	s := openBench(b)
	ctx := b.Context()
	keys := make([]string, 1000)
	for i := range keys {
		keys[i] = fmt.Sprintf("cnm/v1/endpoints/%d", i)
	}
	if _, err := s.Batch(ctx, func() []kvstore.Op {
		ops := make([]kvstore.Op, len(keys))
		for i, k := range keys {
			ops[i] = kvstore.Op{Key: k, Value: benchValue}
		}
		return ops
	}()); err != nil {
		b.Fatal(err)
	}
	i := 0
	for b.Loop() {
		if _, err := s.Get(ctx, keys[i%len(keys)]); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkBaselineBoltPut is the raw bbolt cost under BenchmarkPut: one Update with one Put,
// real fsync, no revision counter and no watchers.
func BenchmarkBaselineBoltPut(b *testing.B) {
	db := openBolt(b)
	i := 0
	for b.Loop() {
		key := fmt.Appendf(nil, "cnm/v1/endpoints/%d", i%1000)
		if err := db.Update(func(tx *bolt.Tx) error { return tx.Bucket(benchBucket).Put(key, benchValue) }); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkBaselineBoltGet is the raw bbolt cost under BenchmarkGet: one View with one Get
// and a copy of the value.
func BenchmarkBaselineBoltGet(b *testing.B) {
	db := openBolt(b)
	keys := make([][]byte, 1000)
	if err := db.Update(func(tx *bolt.Tx) error {
		for i := range keys {
			keys[i] = fmt.Appendf(nil, "cnm/v1/endpoints/%d", i)
			if err := tx.Bucket(benchBucket).Put(keys[i], benchValue); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		b.Fatal(err)
	}
	i := 0
	for b.Loop() {
		var v []byte
		if err := db.View(func(tx *bolt.Tx) error {
			v = bytes.Clone(tx.Bucket(benchBucket).Get(keys[i%len(keys)]))
			return nil
		}); err != nil || v == nil {
			b.Fatal(err)
		}
		i++
	}
}

var benchBucket = []byte("bench")

// openBolt opens a raw bbolt file with one bucket in b.TempDir().
func openBolt(b *testing.B) *bolt.DB {
	b.Helper()
	db, err := bolt.Open(filepath.Join(b.TempDir(), "raw.db"), 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { db.Close() })
	if err := db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucket(benchBucket)
		return err
	}); err != nil {
		b.Fatal(err)
	}
	return db
}
