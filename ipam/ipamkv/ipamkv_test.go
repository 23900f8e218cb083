package ipamkv_test

import (
	"errors"
	"path/filepath"
	"testing"

	"go.uber.org/goleak"

	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/cnmkit/cnm/ipam/ipamkv"
	"github.com/cnmkit/cnm/kvstore/boltdb"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestAdapt checks that the adapter passes values, revisions and error classes through.
func TestAdapt(t *testing.T) {
	ctx := t.Context()
	s, err := boltdb.Open(filepath.Join(t.TempDir(), "kv.db"), boltdb.Config{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	a := ipamkv.Adapt(s)
	if _, _, err := a.Get(ctx, "k"); !errors.Is(err, errclass.ErrNotFound) {
		t.Errorf("Get missing: %v, want not found", err)
	}
	rev, err := a.AtomicPut(ctx, "k", []byte("v"), 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.AtomicPut(ctx, "k", []byte("w"), 0); !errors.Is(err, errclass.ErrAlreadyExists) {
		t.Errorf("create existing: %v, want already exists", err)
	}
	if _, err := a.AtomicPut(ctx, "k", []byte("w"), rev+1); !errors.Is(err, errclass.ErrConflict) {
		t.Errorf("stale put: %v, want conflict", err)
	}
	v, r, err := a.Get(ctx, "k")
	if err != nil || string(v) != "v" || r != rev {
		t.Errorf("Get = %q, %d, %v; want v, %d", v, r, err, rev)
	}
	l, err := a.List(ctx, "")
	if err != nil || len(l) != 1 || l[0].Key != "k" || string(l[0].Value) != "v" || l[0].Revision != rev {
		t.Errorf("List = %+v, %v", l, err)
	}
	if err := a.AtomicDelete(ctx, "k", rev+1); !errors.Is(err, errclass.ErrConflict) {
		t.Errorf("stale delete: %v, want conflict", err)
	}
	if err := a.AtomicDelete(ctx, "k", rev); err != nil {
		t.Errorf("delete: %v", err)
	}
	if err := a.AtomicDelete(ctx, "k", rev); !errors.Is(err, errclass.ErrNotFound) {
		t.Errorf("delete missing: %v, want not found", err)
	}
}
