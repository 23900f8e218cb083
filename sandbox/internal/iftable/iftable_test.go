package iftable

import (
	"errors"
	"slices"
	"sync"
	"testing"

	"github.com/cnmkit/cnm/internal/errclass"
)

// newTable returns an empty Table. The tests run on one goroutine: they do not lock.
func newTable() *Table[int] {
	var t Table[int]
	t.Init(new(sync.Mutex))
	return &t
}

func names(t *Table[int]) []string {
	var out []string
	for n := range t.All() {
		out = append(out, n)
	}
	return out
}

// TestLifecycle walks a name through every state: reserved, busy while added, configured,
// busy while removed, configured again after a failed removal, free.
func TestLifecycle(t *testing.T) {
	tab := newTable()
	name, release, err := tab.Reserve("")
	if err != nil || name != "eth0" {
		t.Fatalf("Reserve() = %q, %v; want eth0", name, err)
	}
	if err := tab.Claim("eth0"); err != nil {
		t.Fatalf("Claim of a reserved name: %v", err)
	}
	release() // taken by Claim: nothing to release
	if n, _, _ := tab.Reserve(""); n != "eth1" {
		t.Fatalf("Reserve() while eth0 is busy = %q, want eth1", n)
	}
	if err := tab.Claim("eth0"); !errors.Is(err, errclass.ErrAlreadyExists) {
		t.Fatalf("Claim of a busy name = %v, want ErrAlreadyExists", err)
	}
	tab.Add("eth0", 10)
	tab.Add("data", 20)
	if got := names(tab); !slices.Equal(got, []string{"eth0", "data"}) || tab.Len() != 2 {
		t.Fatalf("configured = %v, want [eth0 data]", got)
	}
	if _, _, err := tab.Reserve("data"); !errors.Is(err, errclass.ErrAlreadyExists) {
		t.Fatalf("Reserve of a configured name = %v, want ErrAlreadyExists", err)
	}

	v, pos, ok := tab.Take("eth0")
	if !ok || v != 10 || pos != 0 {
		t.Fatalf("Take(eth0) = %d, %d, %t", v, pos, ok)
	}
	if !tab.InUse("eth0") || tab.Index("eth0") >= 0 {
		t.Fatal("eth0 being removed: want busy, not configured")
	}
	tab.Put(pos, "eth0", v) // the removal failed
	if got := names(tab); !slices.Equal(got, []string{"eth0", "data"}) {
		t.Fatalf("after Put = %v, want eth0 back first", got)
	}
	if _, _, ok := tab.Take("eth0"); !ok {
		t.Fatal("Take(eth0) again failed")
	}
	tab.Unclaim("eth0") // the removal succeeded
	if tab.InUse("eth0") {
		t.Fatal("eth0 still in use after its removal")
	}
	if _, _, ok := tab.Take("eth0"); ok {
		t.Fatal("Take of a name not configured succeeded")
	}
	// eth1 is still reserved: the next pick is eth0 again.
	if n, _, _ := tab.Reserve(""); n != "eth0" {
		t.Fatalf("Reserve() = %q, want eth0", n)
	}
}

// TestStaleRelease: a release frees only its own reservation.
func TestStaleRelease(t *testing.T) {
	tab := newTable()
	_, rel, _ := tab.Reserve("eth0")
	rel()
	rel() // idempotent
	if _, _, err := tab.Reserve("eth0"); err != nil {
		t.Fatalf("Reserve(eth0) after release: %v", err)
	}
	rel() // stale: eth0 is someone else's now
	if n, _, _ := tab.Reserve(""); n != "eth1" {
		t.Fatalf("Reserve() = %q, want eth1: a stale release freed eth0", n)
	}
}
