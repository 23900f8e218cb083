package cni

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cnmkit/cnm/api"
	"github.com/cnmkit/cnm/api/client"
	"github.com/cnmkit/cnm/internal/netns"
	"github.com/cnmkit/cnm/internal/nstest"
	"github.com/containernetworking/cni/libcni"
)

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// binaries builds, once per test process, cnmd and cnm-cni from the main module (with its own
// go.mod), and the reference programs from this module's tools: cnitool, and the CNI bridge
// and host-local plugins (github.com/containernetworking/plugins v1.10.0). It returns their
// directory, which is also the CNI_PATH of the tests.
func binaries(tb testing.TB) string {
	tb.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "cnm-interop-cni-")
		if buildErr != nil {
			return
		}
		root, err := filepath.Abs("../..")
		if err != nil {
			buildErr = err
			return
		}
		for _, b := range []struct{ dir, out, pkg string }{
			{root, "cnmd", "./cmd/cnmd"},
			{root, "cnm-cni", "./cmd/cnm-cni"},
			{".", "cnitool", "github.com/containernetworking/cni/cnitool"},
			{".", "bridge", "github.com/containernetworking/plugins/plugins/main/bridge"},
			{".", "host-local", "github.com/containernetworking/plugins/plugins/ipam/host-local"},
		} {
			cmd := exec.Command("go", "build", "-o", filepath.Join(binDir, b.out), b.pkg)
			cmd.Dir = b.dir
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			if out, err := cmd.CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("go build %s: %v\n%s", b.pkg, err, out)
				return
			}
		}
	})
	if buildErr != nil {
		tb.Fatal(buildErr)
	}
	return binDir
}

// syncBuffer is a bytes.Buffer safe for the writes of a process and the reads of a test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// agent is a cnmd process in a host namespace of its own, with a bridge network "cninet"
// (10.77.0.0/24) for the plugin to attach to.
type agent struct {
	host *netns.NS
	sock string
	cl   *client.Client
	cmd  *exec.Cmd
	log  *syncBuffer
	done chan error
}

const (
	netName = "cninet"
	subnet  = "10.77.0.0/24"
)

func startAgent(tb testing.TB) *agent {
	tb.Helper()
	bin := binaries(tb)
	dir := tb.TempDir()
	a := &agent{host: nstest.NewNS(tb), sock: filepath.Join(dir, "cnm.sock"), log: &syncBuffer{}, done: make(chan error, 1)}
	a.cmd = exec.Command("nsenter", "--net="+a.host.Path(), "--", filepath.Join(bin, "cnmd"),
		"--host", "unix://"+a.sock, "--data-dir", filepath.Join(dir, "data"), "--run-dir", filepath.Join(dir, "run"))
	a.cmd.Stdout, a.cmd.Stderr = a.log, a.log
	if err := a.cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	go func() { a.done <- a.cmd.Wait() }()
	var err error
	if a.cl, err = client.New(client.Config{Host: "unix://" + a.sock}); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		// Whatever the test left: remove the sandboxes, then stop cnmd.
		if sbs, err := a.cl.SandboxList(context.Background()); err == nil {
			for _, sb := range sbs {
				a.cl.SandboxRemove(context.Background(), sb.Name, true)
			}
		}
		a.cl.Close()
		a.stop(tb)
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := a.cl.Health(context.Background()); err == nil {
			break
		}
		select {
		case err := <-a.done:
			a.cmd = nil
			tb.Fatalf("cnmd exited at start: %v\n%s", err, a.log)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			tb.Fatalf("cnmd did not answer in 30s:\n%s", a.log)
		}
	}
	_, err = a.cl.NetworkCreate(context.Background(), api.NetworkCreate{Name: netName, Driver: "bridge", IPAM: &api.IPAM{Config: []api.IPAMConfig{{Subnet: subnet}}}})
	if err != nil {
		tb.Fatal(err)
	}
	return a
}

// stop sends SIGTERM to cnmd and waits for it; stopping a stopped agent does nothing.
func (a *agent) stop(tb testing.TB) {
	tb.Helper()
	if a.cmd == nil {
		return
	}
	a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-a.done:
		if err != nil {
			tb.Errorf("cnmd exited with %v after SIGTERM:\n%s", err, a.log)
		}
	case <-time.After(30 * time.Second):
		a.cmd.Process.Kill()
		tb.Errorf("cnmd did not stop 30s after SIGTERM:\n%s", a.log)
	}
	a.cmd = nil
}

// confList is the network configuration list the tests give libcni and cnitool: cnm-cni alone,
// attaching to cnm's network cninet through this agent.
func (a *agent) confList(tb testing.TB) *libcni.NetworkConfigList {
	tb.Helper()
	list, err := libcni.ConfListFromBytes(a.confBytes())
	if err != nil {
		tb.Fatal(err)
	}
	return list
}

func (a *agent) confBytes() []byte {
	return fmt.Appendf(nil, `{
  "cniVersion": "1.1.0",
  "name": %q,
  "plugins": [{"type": "cnm-cni", "network": %q, "host": "unix://%s"}]
}`, netName, netName, a.sock)
}

// newCNI returns libcni with CNI_PATH the built binaries and a cache of its own.
func newCNI(tb testing.TB) *libcni.CNIConfig {
	return libcni.NewCNIConfigWithCacheDir([]string{binaries(tb)}, tb.TempDir(), nil)
}

// runtimeNS makes a container namespace as a runtime does (unshare, bind mount), loopback
// down as the runtime leaves it; cleanup removes it if the test has not.
func runtimeNS(tb testing.TB) string {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "netns")
	ns, err := netns.New(path)
	if err != nil {
		tb.Fatal(err)
	}
	ns.Close()
	tb.Cleanup(func() { netns.Remove(path) })
	return path
}

// linkIn returns `ip -o addr show dev name` in the namespace at path, and whether the link is
// there.
func linkIn(path, name string) (string, bool) {
	out, err := exec.Command("nsenter", "--net="+path, "--", "ip", "-o", "addr", "show", "dev", name).CombinedOutput()
	return strings.TrimSpace(string(out)), err == nil
}
