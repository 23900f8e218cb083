package server

import (
	"context"
	"fmt"
	"net/netip"
	"strings"

	"github.com/cnmkit/cnm/drivers"
	"github.com/cnmkit/cnm/drivers/remote/wire"
	"github.com/cnmkit/cnm/ipam"
)

func (s *Server) requestPool(ctx context.Context, in wire.RequestPoolRequest) (any, error) {
	req := ipam.PoolRequest{Space: ipam.AddressSpace(in.AddressSpace), V6: in.V6}
	var err error
	if in.Pool != "" {
		if req.Subnet, err = netip.ParsePrefix(in.Pool); err != nil {
			return nil, fmt.Errorf("request pool: %w", drivers.Invalid("pool", in.Pool, "not a prefix"))
		}
	}
	if in.SubPool != "" {
		if req.Range, err = netip.ParsePrefix(in.SubPool); err != nil {
			return nil, fmt.Errorf("request pool: %w", drivers.Invalid("sub-pool", in.SubPool, "not a prefix"))
		}
	}
	pool, err := s.alloc.RequestPool(ctx, req)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.pools[pool.ID] = pool.Subnet
	s.mu.Unlock()
	return wire.RequestPoolResponse{PoolID: string(pool.ID), Pool: pool.Subnet.String(), Data: map[string]string{}}, nil
}

func (s *Server) releasePool(ctx context.Context, in wire.ReleasePoolRequest) (any, error) {
	id := ipam.PoolID(in.PoolID)
	if err := s.alloc.ReleasePool(ctx, id); err != nil {
		return nil, err
	}
	s.mu.Lock()
	delete(s.pools, id)
	s.mu.Unlock()
	return wire.IPAMResponse{}, nil
}

// subnet returns the subnet of pool id: as RequestPool gave it, else read from an ID of the
// form "<space>/<prefix>" (the built-in allocators'), so that a restarted server still
// answers.
func (s *Server) subnet(id ipam.PoolID) (netip.Prefix, bool) {
	s.mu.Lock()
	p, ok := s.pools[id]
	s.mu.Unlock()
	if ok {
		return p, true
	}
	if _, rest, ok := strings.Cut(string(id), "/"); ok {
		if p, err := netip.ParsePrefix(rest); err == nil {
			return p, true
		}
	}
	return netip.Prefix{}, false
}

func (s *Server) requestAddress(ctx context.Context, in wire.RequestAddressRequest) (any, error) {
	id := ipam.PoolID(in.PoolID)
	subnet, ok := s.subnet(id)
	if !ok {
		return nil, fmt.Errorf("request address: %w", &drivers.NotFoundError{Kind: "pool", Name: in.PoolID, Err: ipam.ErrUnknownPool})
	}
	var addr netip.Addr
	if in.Address != "" {
		var err error
		if addr, err = parseAddr(in.Address); err != nil {
			return nil, fmt.Errorf("request address: %w", drivers.Invalid("address", in.Address, "not an address"))
		}
	}
	got, err := s.alloc.RequestAddress(ctx, id, addr)
	if err != nil {
		return nil, err
	}
	return wire.RequestAddressResponse{Address: netip.PrefixFrom(got, subnet.Bits()).String(), Data: map[string]string{}}, nil
}

func (s *Server) releaseAddress(ctx context.Context, in wire.ReleaseAddressRequest) (any, error) {
	addr, err := parseAddr(in.Address)
	if err != nil {
		return nil, fmt.Errorf("release address: %w", drivers.Invalid("address", in.Address, "not an address"))
	}
	if err := s.alloc.ReleaseAddress(ctx, ipam.PoolID(in.PoolID), addr); err != nil {
		return nil, err
	}
	return wire.IPAMResponse{}, nil
}
