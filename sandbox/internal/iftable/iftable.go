// Package iftable keeps the interfaces of one sandbox and the state of the names they use,
// by the rules of sandbox.Sandbox: ReserveName picks and holds names, AddInterface claims a
// name while it works and then configures it, RemoveInterface holds it while it works and
// then frees it.
//
// It is the part of a sandbox that needs no kernel. sandbox.Namespace keeps its interfaces in
// a Table, and so does the in-memory sandbox of package sandbox/sandboxtest, so that both
// follow the same rules by running the same code.
package iftable

import (
	"iter"
	"slices"
	"strconv"
	"sync"

	"github.com/cnmkit/cnm/internal/errclass"
)

// Table is a sandbox's configured interfaces, in the order added, each with its name and a
// value of the owner's, and the state of every name: free, reserved (by Reserve), busy
// (being added, after Claim, or being removed, after Take) or configured.
//
// A Table is not safe for concurrent use on its own: its owner holds the mutex given to Init
// around every call, and the release functions of Reserve lock that mutex themselves.
type Table[T any] struct {
	mu       *sync.Mutex
	entries  []entry[T]        // configured, in the order added
	busy     map[string]bool   // names being added or removed
	reserved map[string]uint64 // reserved names, with the reservation's token
	token    uint64            // the last token handed out
}

type entry[T any] struct {
	name string
	val  T
}

// Init makes t ready for use, empty, guarded by mu.
func (t *Table[T]) Init(mu *sync.Mutex) {
	*t = Table[T]{mu: mu, busy: map[string]bool{}, reserved: map[string]uint64{}}
}

// Reserve reserves want, or when want is "" the lowest name ethN that is neither configured,
// busy nor reserved, and returns it with a function that releases the reservation. The caller
// has checked that want is a valid interface name. A want that is configured, busy or reserved
// fails with an *errclass.AlreadyExistsError. The release function locks the Table's mutex
// (the caller must not hold it), may be called any number of times from any goroutine, and
// does nothing once Claim has taken the name or a later Reserve reserved it again.
func (t *Table[T]) Reserve(want string) (string, func(), error) {
	name := want
	if name != "" && !t.free(name) {
		return "", nil, &errclass.AlreadyExistsError{Kind: "interface", Name: name}
	}
	for n := 0; name == ""; n++ {
		if c := "eth" + strconv.Itoa(n); t.free(c) {
			name = c
		}
	}
	t.token++
	token := t.token
	t.reserved[name] = token
	release := func() {
		t.mu.Lock()
		defer t.mu.Unlock()
		if t.reserved[name] == token {
			delete(t.reserved, name)
		}
	}
	return name, release, nil
}

// free reports whether name is neither configured, busy nor reserved.
func (t *Table[T]) free(name string) bool {
	return !t.InUse(name) && t.reserved[name] == 0
}

// InUse reports whether name is configured or busy.
func (t *Table[T]) InUse(name string) bool {
	return t.busy[name] || t.Index(name) >= 0
}

// Index returns the position of the configured interface name, or -1.
func (t *Table[T]) Index(name string) int {
	return slices.IndexFunc(t.entries, func(e entry[T]) bool { return e.name == name })
}

// Claim marks name busy for an interface being added, taking it from its reservation if it
// has one. A name that is configured or busy fails with an *errclass.AlreadyExistsError.
// End the claim with Add or Unclaim.
func (t *Table[T]) Claim(name string) error {
	if t.InUse(name) {
		return &errclass.AlreadyExistsError{Kind: "interface", Name: name}
	}
	t.busy[name] = true
	delete(t.reserved, name)
	return nil
}

// Unclaim frees the busy name: an interface whose adding failed, or whose removal succeeded.
func (t *Table[T]) Unclaim(name string) {
	delete(t.busy, name)
}

// Add configures the interface name with val, last in order, and ends its claim if it had
// one. The name must not be configured.
func (t *Table[T]) Add(name string, val T) {
	delete(t.busy, name)
	t.entries = append(t.entries, entry[T]{name, val})
}

// Take removes the configured interface name for its removal: the name stays busy until
// Unclaim (the removal succeeded) or Put (it failed). It returns the interface's value and
// position, and false when name is not configured.
func (t *Table[T]) Take(name string) (val T, pos int, ok bool) {
	i := t.Index(name)
	if i < 0 {
		return val, -1, false
	}
	e := t.entries[i]
	t.entries = slices.Delete(t.entries, i, i+1)
	t.busy[name] = true
	return e.val, i, true
}

// Put configures again, at position pos (or last, if fewer remain), an interface whose
// removal failed after Take, and ends its busy state.
func (t *Table[T]) Put(pos int, name string, val T) {
	delete(t.busy, name)
	t.entries = slices.Insert(t.entries, min(pos, len(t.entries)), entry[T]{name, val})
}

// Len returns the number of configured interfaces.
func (t *Table[T]) Len() int { return len(t.entries) }

// All yields the configured interfaces in the order added, with their names. The caller must
// not change the Table while it ranges.
func (t *Table[T]) All() iter.Seq2[string, T] {
	return func(yield func(string, T) bool) {
		for _, e := range t.entries {
			if !yield(e.name, e.val) {
				return
			}
		}
	}
}
