//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/cnmkit/cnm/netns"
	"github.com/containernetworking/cni/libcni"
)

// cniSubject is the CNI reference plugins as a runtime drives them through libcni: a network
// list of one bridge plugin (isGateway, ipMasq) with host-local IPAM. A container's namespace
// is the runtime's to make (here, as for the floor, an unshare and a bind mount under
// /run/netns); ADD puts the veth in it and DEL takes it out.
type cniSubject struct {
	cni  *libcni.CNIConfig
	list *libcni.NetworkConfigList
}

type cniBox struct {
	path string
	rt   *libcni.RuntimeConf
}

func newCNI(ctx context.Context, dir, binDir string) (*cniSubject, error) {
	if binDir == "" || strings.HasPrefix(binDir, "error: ") {
		return nil, errors.New(strings.TrimPrefix(binDir, "error: "))
	}
	conf := fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "bench",
  "plugins": [{
    "type": "bridge",
    "bridge": "cni-bench0",
    "isGateway": true,
    "ipMasq": true,
    "ipam": {
      "type": "host-local",
      "ranges": [[{"subnet": %q}]],
      "routes": [{"dst": "0.0.0.0/0"}],
      "dataDir": %q
    }
  }]
}`, subnets["cni"][0], filepath.Join(dir, "ipam"))
	list, err := libcni.ConfListFromBytes([]byte(conf))
	if err != nil {
		return nil, err
	}
	return &cniSubject{cni: libcni.NewCNIConfigWithCacheDir([]string{binDir}, filepath.Join(dir, "cache"), nil), list: list}, nil
}

func (s *cniSubject) name() string { return "cni" }

func (s *cniSubject) netCreate(ctx context.Context, i int, subnet string) error {
	return errNoNetworkObject
}

func (s *cniSubject) netDelete(ctx context.Context, i int) error { return errNoNetworkObject }

func (s *cniSubject) newBox(ctx context.Context, id string) (any, error) {
	b := &cniBox{path: filepath.Join("/run/netns", "cni-"+id)}
	ns, err := netns.New(b.path)
	if err != nil {
		return nil, err
	}
	ns.Close()
	b.rt = &libcni.RuntimeConf{ContainerID: id, NetNS: b.path, IfName: "eth0"}
	return b, nil
}

func (s *cniSubject) deleteBox(ctx context.Context, x any) error {
	return netns.Remove(x.(*cniBox).path)
}

func (s *cniSubject) attach(ctx context.Context, x any) error {
	_, err := s.cni.AddNetworkList(ctx, s.list, x.(*cniBox).rt)
	return err
}

func (s *cniSubject) detach(ctx context.Context, x any) error {
	return s.cni.DelNetworkList(ctx, s.list, x.(*cniBox).rt)
}

func (s *cniSubject) removeDetaches() bool { return false }

func (s *cniSubject) nsPath(x any) string { return x.(*cniBox).path }

func (s *cniSubject) close() error { return nil }

// cniIPAM is host-local alone, run through libcni as a runtime would run an IPAM-only
// plugin: one process per request, its leases in files.
type cniIPAM struct {
	cni  *libcni.CNIConfig
	conf *libcni.PluginConfig
}

func newCNIIPAM(dir, binDir string) (*cniIPAM, error) {
	if binDir == "" || strings.HasPrefix(binDir, "error: ") {
		return nil, errors.New(strings.TrimPrefix(binDir, "error: "))
	}
	if err := os.MkdirAll(filepath.Join(dir, "ipamonly"), 0o755); err != nil {
		return nil, err
	}
	conf, err := libcni.NetworkPluginConfFromBytes([]byte(fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "ipamonly",
  "type": "host-local",
  "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.205.0.0/16"}]], "dataDir": %q}
}`, filepath.Join(dir, "ipamonly"))))
	if err != nil {
		return nil, err
	}
	return &cniIPAM{cni: libcni.NewCNIConfigWithCacheDir([]string{binDir}, filepath.Join(dir, "ipamcache"), nil), conf: conf}, nil
}

func (c *cniIPAM) requestRelease(ctx context.Context, id string) error {
	rt := &libcni.RuntimeConf{ContainerID: id, NetNS: "/run/netns/none", IfName: "eth0"}
	if _, err := c.cni.AddNetwork(ctx, c.conf, rt); err != nil {
		return err
	}
	return c.cni.DelNetwork(ctx, c.conf, rt)
}
