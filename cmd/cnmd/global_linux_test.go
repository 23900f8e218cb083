package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cnmkit/cnm/api/client"
	"github.com/cnmkit/cnm/internal/nstest"
	"github.com/cnmkit/cnm/internal/storetest"
)

// TestPrivilegedCNMDGlobalStore: cnmd with --global-store (etcd, run in the host's namespace),
// the gossip flags and --vtep serves an overlay network: it is global in scope, two sandboxes
// on it ping each other, and a restart restores it from etcd.
func TestPrivilegedCNMDGlobalStore(t *testing.T) {
	nstest.Privileged(t)
	etcdBin := storetest.EtcdBinary(t)
	dir := t.TempDir()
	host := nstest.NewNS(t)
	for _, args := range [][]string{
		{"link", "add", "under0", "type", "veth", "peer", "name", "under1"},
		{"addr", "add", "192.0.2.10/24", "dev", "under0"},
		{"link", "set", "under0", "up"},
		{"link", "set", "under1", "up"},
	} {
		if out, err := nstest.Exec(host, "ip", args...); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	etcdLog := &syncBuffer{}
	etcd := exec.Command("nsenter", "--net="+host.Path(), "--", etcdBin, "--name", "n1", "--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", "http://127.0.0.1:23790", "--advertise-client-urls", "http://127.0.0.1:23790",
		"--listen-peer-urls", "http://127.0.0.1:23800", "--initial-advertise-peer-urls", "http://127.0.0.1:23800",
		"--initial-cluster", "n1=http://127.0.0.1:23800")
	etcd.Stdout, etcd.Stderr = etcdLog, etcdLog
	if err := etcd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		etcd.Process.Kill()
		etcd.Wait()
	})
	for deadline := time.Now().Add(30 * time.Second); ; {
		out, _ := nstest.Exec(host, "curl", "-s", "http://127.0.0.1:23790/health")
		if strings.Contains(out, `"health":"true"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcd not healthy in 30s:\n%s", etcdLog)
		}
		time.Sleep(200 * time.Millisecond)
	}
	keyFile := filepath.Join(dir, "gossip.key")
	if err := os.WriteFile(keyFile, []byte(strings.Repeat("cd", 32)), 0o600); err != nil {
		t.Fatal(err)
	}
	d := &daemon{host: host, dataDir: filepath.Join(dir, "data"), runDir: filepath.Join(dir, "run"), sock: filepath.Join(dir, "cnm.sock"),
		extra: []string{"--global-store", "etcd://127.0.0.1:23790/cnmtest", "--hostname", "node1", "--gossip-key-file", keyFile,
			"--gossip-port", "17947", "--advertise-addr", "192.0.2.10", "--vtep", "192.0.2.10"}}
	d.start(t)
	t.Cleanup(func() {
		if d.cmd != nil {
			if out, err := ctl(t, d.sock, "sandbox", "ls", "-q"); err == nil {
				for _, sb := range strings.Fields(out) {
					ctl(t, d.sock, "sandbox", "rm", "-f", sb)
				}
			}
			ctl(t, d.sock, "network", "rm", "ov")
			d.stop(t)
		}
	})
	s := d.sock
	cl, err := client.New(client.Config{Host: "unix://" + s})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if h, err := cl.Health(t.Context()); err != nil || h.GlobalStore != "ok" || h.Gossip != "ok" {
		t.Errorf("health = %+v, %v; want the global store and gossip ok", h, err)
	}
	mustCtl(t, s, "network", "create", "-d", "overlay", "--subnet", "10.90.0.0/24", "ov")
	if got := mustCtl(t, s, "network", "inspect", "-f", "{{.Scope}} {{.Driver}}", "ov"); got != "global overlay" {
		t.Errorf("ov is %q, want global overlay", got)
	}
	mustCtl(t, s, "sandbox", "create", "--net", "ov", "a")
	mustCtl(t, s, "sandbox", "create", "--net", "ov", "b")
	bIP := ipOf(t, s, "b", "ov")
	if !pings(t, s, "a", bIP) {
		t.Errorf("a cannot ping b (%s) on the overlay", bIP)
	}
	before := mustCtl(t, s, "network", "inspect", "ov")
	d.stop(t)
	d.start(t)
	if after := mustCtl(t, s, "network", "inspect", "ov"); after != before {
		t.Errorf("ov after a restart:\n%s\nbefore:\n%s", after, before)
	}
	if !pings(t, s, "a", bIP) {
		t.Errorf("after a restart, a cannot ping b (%s)", bIP)
	}
	mustCtl(t, s, "sandbox", "rm", "a", "b")
	mustCtl(t, s, "network", "rm", "ov")
}
