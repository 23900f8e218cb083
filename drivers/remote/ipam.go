package remote

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"

	"github.com/cnmkit/cnm/drivers/remote/wire"
	"github.com/cnmkit/cnm/internal/errclass"
	"github.com/cnmkit/cnm/ipam"
)

var _ ipam.Allocator = (*IPAM)(nil)

// IPAM is an [ipam.Allocator] that forwards to a Docker IPAM plugin (/IpamDriver.*). Create
// one with [OpenIPAM] and register it with Controller.RegisterIPAMDriver. It is safe for
// concurrent use.
//
// cnm's address spaces map to the plugin's defaults: [ipam.LocalSpace] (and "") to its
// LocalDefaultAddressSpace, [ipam.GlobalSpace] to its GlobalDefaultAddressSpace; any other
// space is passed as it is. Pool IDs are the plugin's, prefixed with the pool's subnet
// ("10.1.0.0/24|<plugin's ID>") so that addresses come back with the pool's length.
//
// The protocol's ReleasePool does not promise to free the pool's addresses, while cnm's
// contract does: IPAM remembers the addresses it obtained in each pool (in memory) and
// releases those still held before it releases the pool.
type IPAM struct {
	c             *client
	local, global string

	mu    sync.Mutex // guards following
	addrs map[ipam.PoolID]map[netip.Addr]bool
}

// OpenIPAM finds the IPAM plugin of cfg (see [Discover]), activates it (/Plugin.Activate must
// list IpamDriver) and asks its default address spaces. It fails as [Open] does.
func OpenIPAM(ctx context.Context, cfg Config) (*IPAM, error) {
	c, err := dial(ctx, cfg, wire.IpamDriver)
	if err != nil {
		return nil, fmt.Errorf("remote: open IPAM plugin %s: %w", cfg.Name, err)
	}
	var resp wire.AddressSpacesResponse
	if err := c.call(ctx, wire.IpamGetDefaultAddressSpaces, nil, &resp); err != nil {
		c.close()
		return nil, fmt.Errorf("remote: open IPAM plugin %s: %w", cfg.Name, err)
	}
	return &IPAM{c: c, local: resp.LocalDefaultAddressSpace, global: resp.GlobalDefaultAddressSpace,
		addrs: map[ipam.PoolID]map[netip.Addr]bool{}}, nil
}

// Close releases the allocator's idle connections to the plugin.
func (a *IPAM) Close() error {
	a.c.close()
	return nil
}

// RequestPool sends /IpamDriver.RequestPool. For a pool the plugin picks (no Subnet), a
// subnet overlapping req.Exclude or req.Reserved is held while the plugin is asked again, and
// released at the end, as Docker does; an explicit Subnet overlapping a Reserved prefix is
// refused before asking.
func (a *IPAM) RequestPool(ctx context.Context, req ipam.PoolRequest) (ipam.Pool, error) {
	if err := errclass.CheckContext(ctx); err != nil {
		return ipam.Pool{}, err
	}
	fail := func(err error) (ipam.Pool, error) {
		return ipam.Pool{}, fmt.Errorf("remote: request pool %v: %w", req.Subnet, err)
	}
	if req.Subnet.IsValid() {
		for _, r := range req.Reserved {
			if r.Prefix.Overlaps(req.Subnet) {
				return fail(&ipam.OverlapError{Requested: req.Subnet, With: r.Prefix.Masked(), Owner: r.Owner})
			}
		}
	}
	w := wire.RequestPoolRequest{AddressSpace: a.spaceName(req.Space), Options: map[string]string{}, V6: req.V6}
	if req.Subnet.IsValid() {
		w.Pool = req.Subnet.Masked().String()
		w.V6 = req.Subnet.Addr().Is6()
	}
	if req.Range.IsValid() {
		w.SubPool = req.Range.Masked().String()
	}
	var held []ipam.PoolID
	defer func() {
		for _, id := range held {
			if err := a.ReleasePool(context.WithoutCancel(ctx), id); err != nil {
				a.c.log.WarnContext(ctx, "release overlapping pool", "pool", id, "err", err)
			}
		}
	}()
	for range 64 {
		var resp wire.RequestPoolResponse
		if err := a.c.call(ctx, wire.IpamRequestPool, w, &resp); err != nil {
			return fail(err)
		}
		p, err := netip.ParsePrefix(resp.Pool)
		if err != nil || resp.PoolID == "" {
			err = errors.Join(&errclass.InvalidParameterError{Field: "plugin's pool", Value: resp.Pool + " id " + resp.PoolID, Reason: "not a prefix and an ID", Err: err})
			return fail(errors.Join(err, a.release(context.WithoutCancel(ctx), resp.PoolID)))
		}
		pool := ipam.Pool{ID: ipam.PoolID(p.Masked().String() + "|" + resp.PoolID), Subnet: p.Masked(), Range: req.Range.Masked()}
		if req.Subnet.IsValid() || !overlaps(p, req) {
			return pool, nil
		}
		held = append(held, pool.ID)
	}
	return fail(&errclass.UnavailableError{What: "a pool of plugin " + a.c.name + " clear of the excluded prefixes", Err: errors.New("64 overlapping pools")})
}

func overlaps(p netip.Prefix, req ipam.PoolRequest) bool {
	for _, e := range req.Exclude {
		if e.Overlaps(p) {
			return true
		}
	}
	for _, r := range req.Reserved {
		if r.Prefix.Overlaps(p) {
			return true
		}
	}
	return false
}

func (a *IPAM) spaceName(s ipam.AddressSpace) string {
	switch s {
	case "", ipam.LocalSpace:
		return a.local
	case ipam.GlobalSpace:
		return a.global
	}
	return string(s)
}

// splitPool returns the subnet and the plugin's ID of a pool ID made by RequestPool.
func splitPool(id ipam.PoolID) (netip.Prefix, string, error) {
	s, pid, ok := strings.Cut(string(id), "|")
	p, err := netip.ParsePrefix(s)
	if !ok || err != nil || pid == "" {
		return netip.Prefix{}, "", &errclass.NotFoundError{Kind: "pool", Name: string(id), Err: ipam.ErrUnknownPool}
	}
	return p, pid, nil
}

// ReleasePool sends /IpamDriver.ReleasePool. Releasing a pool the plugin does not know returns
// nil.
func (a *IPAM) ReleasePool(ctx context.Context, id ipam.PoolID) error {
	if err := errclass.CheckContext(ctx); err != nil {
		return err
	}
	_, pid, err := splitPool(id)
	if err != nil {
		return nil // not one of ours: unknown
	}
	a.mu.Lock()
	held := a.addrs[id]
	delete(a.addrs, id)
	a.mu.Unlock()
	var errs []error
	for addr := range held {
		err := a.c.call(ctx, wire.IpamReleaseAddress, wire.ReleaseAddressRequest{PoolID: pid, Address: addr.String()}, &wire.IPAMResponse{})
		if err != nil && !gone(err) {
			errs = append(errs, fmt.Errorf("release address %v: %w", addr, err))
		}
	}
	if err := a.release(ctx, pid); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("remote: release pool %s: %w", id, err)
	}
	return nil
}

func (a *IPAM) release(ctx context.Context, pid string) error {
	if pid == "" {
		return nil
	}
	err := a.c.call(ctx, wire.IpamReleasePool, wire.ReleasePoolRequest{PoolID: pid}, &wire.IPAMResponse{})
	if err != nil && gone(err) {
		return nil
	}
	return err
}

// RequestAddress sends /IpamDriver.RequestAddress for addr, or any address when addr is the
// zero Addr. The plugin's answer must be in the pool.
func (a *IPAM) RequestAddress(ctx context.Context, id ipam.PoolID, addr netip.Addr) (netip.Addr, error) {
	if err := errclass.CheckContext(ctx); err != nil {
		return netip.Addr{}, err
	}
	fail := func(err error) (netip.Addr, error) {
		return netip.Addr{}, fmt.Errorf("remote: request address %v in pool %s: %w", addr, id, err)
	}
	subnet, pid, err := splitPool(id)
	if err != nil {
		return fail(err)
	}
	w := wire.RequestAddressRequest{PoolID: pid, Options: map[string]string{}}
	if addr.IsValid() {
		w.Address = addr.String()
	}
	var resp wire.RequestAddressResponse
	if err := a.c.call(ctx, wire.IpamRequestAddress, w, &resp); err != nil {
		return fail(err)
	}
	got, err := parseAddress(resp.Address)
	if err == nil && !subnet.Contains(got) {
		err = errclass.Invalid("plugin's address", resp.Address, "not in pool "+subnet.String())
	}
	if err == nil && addr.IsValid() && got != addr {
		err = errclass.Invalid("plugin's address", resp.Address, "not the address requested")
	}
	if err != nil {
		if got.IsValid() {
			rerr := a.c.call(context.WithoutCancel(ctx), wire.IpamReleaseAddress, wire.ReleaseAddressRequest{PoolID: pid, Address: got.String()}, &wire.IPAMResponse{})
			err = errors.Join(err, rerr)
		}
		return fail(err)
	}
	a.mu.Lock()
	if a.addrs[id] == nil {
		a.addrs[id] = map[netip.Addr]bool{}
	}
	a.addrs[id][got] = true
	a.mu.Unlock()
	return got, nil
}

// parseAddress reads "10.0.0.2/24" or "10.0.0.2".
func parseAddress(s string) (netip.Addr, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Addr().Unmap(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, &errclass.InvalidParameterError{Field: "plugin's address", Value: s, Reason: "not an address", Err: err}
	}
	return a.Unmap(), nil
}

// ReleaseAddress sends /IpamDriver.ReleaseAddress. Releasing an address the plugin does not
// know returns nil.
func (a *IPAM) ReleaseAddress(ctx context.Context, id ipam.PoolID, addr netip.Addr) error {
	if err := errclass.CheckContext(ctx); err != nil {
		return err
	}
	_, pid, err := splitPool(id)
	if err != nil {
		return nil
	}
	err = a.c.call(ctx, wire.IpamReleaseAddress, wire.ReleaseAddressRequest{PoolID: pid, Address: addr.String()}, &wire.IPAMResponse{})
	if err != nil && !gone(err) {
		return fmt.Errorf("remote: release address %v in pool %s: %w", addr, id, err)
	}
	a.mu.Lock()
	delete(a.addrs[id], addr)
	a.mu.Unlock()
	return nil
}
