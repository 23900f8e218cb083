package driverstest

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"sync"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/internal/errclass"
)

// AllocationKey is the label under which an [Allocator] returns a network's number.
const AllocationKey = "com.docker.network.driver.test.id"

var _ drivers.NetworkAllocator = (*Allocator)(nil)

// Allocator is an in-memory [drivers.NetworkAllocator] that hands each network the lowest free
// number of a range, as a VNI allocator does. One Allocator may serve the drivers of several
// Controllers (the hosts of one cluster), as a store-backed allocator would. It records its
// calls like [Fake], and can be told to fail a method ([Allocator.FailOn]).
//
// An Allocator is safe for concurrent use. Create one with [NewAllocator].
type Allocator struct {
	first, last int

	mu    sync.Mutex // guards following
	byNet map[drivers.NetworkID]int
	calls []string
	fail  map[string]error
}

// NewAllocator returns an Allocator of the numbers first to last.
func NewAllocator(first, last int) *Allocator {
	return &Allocator{first: first, last: last, byNet: map[drivers.NetworkID]int{}, fail: map[string]error{}}
}

// AllocateNetwork gives the network the lowest free number, as the label AllocationKey.
// Allocating twice for one network fails with an error matching cnm.ErrAlreadyExists; a full
// range, with one matching cnm.ErrUnavailable.
func (a *Allocator) AllocateNetwork(ctx context.Context, req drivers.AllocateNetworkRequest) (map[string]string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls = append(a.calls, fmt.Sprintf("AllocateNetwork net=%s name=%q", req.NetworkID.Short(), req.Name))
	if err := a.fail["AllocateNetwork"]; err != nil {
		return nil, err
	}
	if _, ok := a.byNet[req.NetworkID]; ok {
		return nil, &errclass.AlreadyExistsError{Kind: "allocation", Name: string(req.NetworkID)}
	}
	used := map[int]bool{}
	for _, v := range a.byNet {
		used[v] = true
	}
	for v := a.first; v <= a.last; v++ {
		if !used[v] {
			a.byNet[req.NetworkID] = v
			return map[string]string{AllocationKey: strconv.Itoa(v)}, nil
		}
	}
	return nil, &errclass.UnavailableError{What: "test allocator", Err: fmt.Errorf("all %d numbers taken", a.last-a.first+1)}
}

// FreeNetwork frees the network's number. Freeing what is not allocated returns nil.
func (a *Allocator) FreeNetwork(ctx context.Context, req drivers.FreeNetworkRequest) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	line := "FreeNetwork net=" + req.NetworkID.Short()
	if req.Allocation == nil {
		line += " orphan"
	}
	a.calls = append(a.calls, line)
	if err := a.fail["FreeNetwork"]; err != nil {
		return err
	}
	delete(a.byNet, req.NetworkID)
	return nil
}

// Allocated lists the networks holding a number.
func (a *Allocator) Allocated(ctx context.Context) ([]drivers.NetworkID, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Sorted(maps.Keys(a.byNet)), nil
}

// Numbers returns the numbers held, by network.
func (a *Allocator) Numbers() map[drivers.NetworkID]int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return maps.Clone(a.byNet)
}

// Calls returns the AllocateNetwork and FreeNetwork calls made so far, oldest first.
func (a *Allocator) Calls() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.calls)
}

// FailOn makes every later call of the named method ("AllocateNetwork", "FreeNetwork") return
// err, until FailOn is called again for it with a nil err.
func (a *Allocator) FailOn(method string, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err == nil {
		delete(a.fail, method)
		return
	}
	a.fail[method] = err
}

// AllocatingFake is a [Fake] whose networks get their cluster-wide values from an [Allocator]:
// a driver with the [drivers.NetworkAllocator] capability.
type AllocatingFake struct {
	*Fake
	*Allocator
}

var (
	_ drivers.Driver           = AllocatingFake{}
	_ drivers.NetworkAllocator = AllocatingFake{}
)

// FailOn sets a failure on the Fake's or the Allocator's method of that name.
func (f AllocatingFake) FailOn(method string, err error) {
	switch method {
	case "AllocateNetwork", "FreeNetwork":
		f.Allocator.FailOn(method, err)
	default:
		f.Fake.FailOn(method, err)
	}
}

// Calls returns the Fake's calls (those of the Allocator are [Allocator.Calls]).
func (f AllocatingFake) Calls() []string { return f.Fake.Calls() }
