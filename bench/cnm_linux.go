//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"

	"github.com/cnmkit/cnm"
	"github.com/cnmkit/cnm/network"
)

// cnmSubject is cnm through its public API: a Controller with its bbolt store on the disk
// (fsync on), namespaces under /run/cnm, a bridge network with its default NAT.
type cnmSubject struct{ c *cnm.Controller }

func newCNM(ctx context.Context, dir string) (*cnmSubject, error) {
	c, err := cnm.New(ctx, cnm.Config{DataDir: filepath.Join(dir, "data"), NoPredefinedNetworks: true})
	if err != nil {
		return nil, err
	}
	if _, err := c.NewNetwork(ctx, "bench", "bridge", network.WithSubnet(netip.MustParsePrefix(subnets["cnm"][0]))); err != nil {
		c.Close()
		return nil, err
	}
	return &cnmSubject{c: c}, nil
}

func (s *cnmSubject) name() string { return "cnm" }

func (s *cnmSubject) netCreate(ctx context.Context, i int, subnet string) error {
	_, err := s.c.NewNetwork(ctx, fmt.Sprintf("n%d", i), "bridge", network.WithSubnet(netip.MustParsePrefix(subnet)))
	return err
}

func (s *cnmSubject) netDelete(ctx context.Context, i int) error {
	return s.c.DeleteNetwork(ctx, fmt.Sprintf("n%d", i))
}

func (s *cnmSubject) newBox(ctx context.Context, id string) (any, error) {
	if _, err := s.c.NewSandbox(ctx, id); err != nil {
		return nil, err
	}
	return id, nil
}

func (s *cnmSubject) deleteBox(ctx context.Context, b any) error {
	return s.c.DeleteSandbox(ctx, b.(string))
}

func (s *cnmSubject) attach(ctx context.Context, b any) error {
	_, err := s.c.Connect(ctx, "bench", b.(string))
	return err
}

func (s *cnmSubject) detach(ctx context.Context, b any) error {
	return s.c.Disconnect(ctx, "bench", b.(string))
}

func (s *cnmSubject) removeDetaches() bool { return true }

func (s *cnmSubject) nsPath(b any) string {
	sb, err := s.c.Sandbox(b.(string))
	if err != nil {
		return ""
	}
	return sb.Key()
}

func (s *cnmSubject) close() error {
	err := s.c.DeleteNetwork(context.Background(), "bench")
	return errors.Join(err, s.c.Close())
}
