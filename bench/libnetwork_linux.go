//go:build linux

package main

import (
	"context"
	"fmt"
	"io"
	"path/filepath"

	"github.com/containerd/log"
	"github.com/docker/docker/libnetwork"
	"github.com/docker/docker/libnetwork/config"
	"github.com/docker/docker/libnetwork/ipamutils"
	"github.com/docker/docker/libnetwork/netlabel"
	"github.com/docker/docker/libnetwork/options"
)

// libnetworkVersion is the github.com/docker/docker release whose libnetwork is measured.
const libnetworkVersion = "v28.5.2+incompatible"

// lnSubject is Docker's libnetwork used as a library, configured as dockerd configures it
// (bridge driver with iptables and IP forwarding on; networks created with the options
// `docker network create` passes; endpoints created and joined as dockerd connects a
// container), its bbolt store in a temporary directory on the disk. Two differences from
// dockerd, both outside what is timed: no userland proxy (no port is published), and the
// sandbox's namespace is made by libnetwork itself (as its own tests do) rather than by runc
// and handed over through the libnetwork-setkey hook.
type lnSubject struct {
	c   *libnetwork.Controller
	nw  *libnetwork.Network
	dir string
	nws map[int]*libnetwork.Network
}

type lnBox struct {
	sb *libnetwork.Sandbox
	ep *libnetwork.Endpoint
	id string
}

func newLibnetwork(ctx context.Context, dir string) (*lnSubject, error) {
	// libnetwork logs through logrus; keep its warnings off the table.
	log.L.Logger.SetOutput(io.Discard)
	c, err := libnetwork.New(ctx,
		config.OptionDataDir(filepath.Join(dir, "data")),
		config.OptionExecRoot("/run/docker"),
		config.OptionDriverConfig("bridge", options.Generic{
			netlabel.GenericData: options.Generic{
				"EnableIPForwarding":  true,
				"EnableIPTables":      true,
				"EnableUserlandProxy": false,
			},
		}),
		config.OptionDefaultAddressPoolConfig(ipamutils.GetLocalScopeDefaultNetworks()),
	)
	if err != nil {
		return nil, err
	}
	s := &lnSubject{c: c, dir: dir, nws: map[int]*libnetwork.Network{}}
	if s.nw, err = s.network(ctx, "bench", subnets["libnetwork"][0]); err != nil {
		c.Stop()
		return nil, err
	}
	return s, nil
}

// network creates a bridge network the way dockerd's createNetwork does for
// `docker network create --subnet SUBNET NAME`.
func (s *lnSubject) network(ctx context.Context, name, subnet string) (*libnetwork.Network, error) {
	return s.c.NewNetwork(ctx, "bridge", name, "",
		libnetwork.NetworkOptionEnableIPv4(true),
		libnetwork.NetworkOptionEnableIPv6(false),
		libnetwork.NetworkOptionDriverOpts(map[string]string{}),
		libnetwork.NetworkOptionLabels(map[string]string{}),
		libnetwork.NetworkOptionIpam("default", "", []*libnetwork.IpamConf{{PreferredPool: subnet}}, nil, nil),
	)
}

func (s *lnSubject) name() string { return "libnetwork" }

func (s *lnSubject) netCreate(ctx context.Context, i int, subnet string) error {
	n, err := s.network(ctx, fmt.Sprintf("n%d", i), subnet)
	if err == nil {
		s.nws[i] = n
	}
	return err
}

func (s *lnSubject) netDelete(ctx context.Context, i int) error {
	n := s.nws[i]
	delete(s.nws, i)
	return n.Delete()
}

func (s *lnSubject) newBox(ctx context.Context, id string) (any, error) {
	files := filepath.Join(s.dir, "containers", id)
	sb, err := s.c.NewSandbox(ctx, id,
		libnetwork.OptionHostname("bench"),
		libnetwork.OptionDomainname(""),
		libnetwork.OptionHostsPath(filepath.Join(files, "hosts")),
		libnetwork.OptionResolvConfPath(filepath.Join(files, "resolv.conf")),
	)
	if err != nil {
		return nil, err
	}
	return &lnBox{sb: sb, id: id}, nil
}

func (s *lnSubject) deleteBox(ctx context.Context, x any) error {
	return x.(*lnBox).sb.Delete(ctx)
}

func (s *lnSubject) attach(ctx context.Context, x any) error {
	b := x.(*lnBox)
	ep, err := s.nw.CreateEndpoint(ctx, b.id)
	if err != nil {
		return err
	}
	if err := ep.Join(ctx, b.sb); err != nil {
		return err
	}
	b.ep = ep
	return nil
}

func (s *lnSubject) detach(ctx context.Context, x any) error {
	b := x.(*lnBox)
	if err := b.ep.Leave(ctx, b.sb); err != nil {
		return err
	}
	return b.ep.Delete(ctx, false)
}

func (s *lnSubject) removeDetaches() bool { return true }

func (s *lnSubject) nsPath(x any) string { return x.(*lnBox).sb.Key() }

func (s *lnSubject) close() error {
	err := s.nw.Delete()
	s.c.Stop()
	return err
}
