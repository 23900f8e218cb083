package overlay

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/kvstore"
)

// vniAllocator claims VNIs in the cluster's store: one create-only key per VNI in use, whose
// value is the network's ID. The keys are the one record of which VNI is whose; a create
// races others with the store's compare-and-swap.
type vniAllocator struct {
	store       kvstore.Store
	first, last uint32
}

// allocate claims the lowest free VNI for network nid.
func (a *vniAllocator) allocate(ctx context.Context, nid drivers.NetworkID) (uint32, error) {
	used, err := a.used(ctx)
	if err != nil {
		return 0, err
	}
	for v := a.first; v <= a.last && v >= a.first; v++ {
		if _, ok := used[v]; ok {
			continue
		}
		_, err := a.store.AtomicPut(ctx, key(v), []byte(nid), 0)
		switch {
		case err == nil:
			return v, nil
		case errors.Is(err, kvstore.ErrKeyExists), errors.Is(err, kvstore.ErrKeyModified):
			continue // another host claimed it meanwhile
		default:
			return 0, fmt.Errorf("claim VNI %d: %w", v, err)
		}
	}
	return 0, &drivers.UnavailableError{What: "VNI", Err: fmt.Errorf("all of %d-%d are in use", a.first, a.last)}
}

// used returns the VNIs claimed in the store, with their networks.
func (a *vniAllocator) used(ctx context.Context) (map[uint32]drivers.NetworkID, error) {
	pairs, err := a.store.List(ctx, VNIKeyPrefix)
	if err != nil {
		return nil, fmt.Errorf("list VNIs: %w", err)
	}
	out := make(map[uint32]drivers.NetworkID, len(pairs))
	for _, p := range pairs {
		v, err := strconv.ParseUint(strings.TrimPrefix(p.Key, VNIKeyPrefix), 10, 32)
		if err != nil {
			continue
		}
		out[uint32(v)] = drivers.NetworkID(p.Value)
	}
	return out, nil
}

// free releases the VNI of network nid: the one label names, or, for an orphan (label ""),
// whichever it holds. A VNI another network holds is left alone.
func (a *vniAllocator) free(ctx context.Context, nid drivers.NetworkID, label string) error {
	var vnis []uint32
	if v, err := strconv.ParseUint(label, 10, 32); err == nil {
		vnis = []uint32{uint32(v)}
	} else {
		used, err := a.used(ctx)
		if err != nil {
			return err
		}
		for v, owner := range used {
			if owner == nid {
				vnis = append(vnis, v)
			}
		}
	}
	for _, v := range vnis {
		kv, err := a.store.Get(ctx, key(v))
		if errors.Is(err, kvstore.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return fmt.Errorf("free VNI %d: %w", v, err)
		}
		if drivers.NetworkID(kv.Value) != nid {
			continue
		}
		if err := a.store.AtomicDelete(ctx, key(v), kv.Revision); err != nil && !errors.Is(err, kvstore.ErrKeyNotFound) {
			return fmt.Errorf("free VNI %d: %w", v, err)
		}
	}
	return nil
}

// allocated lists the networks holding a VNI.
func (a *vniAllocator) allocated(ctx context.Context) ([]drivers.NetworkID, error) {
	used, err := a.used(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]drivers.NetworkID, 0, len(used))
	for _, nid := range used {
		out = append(out, nid)
	}
	return out, nil
}

func key(v uint32) string { return VNIKeyPrefix + strconv.FormatUint(uint64(v), 10) }
