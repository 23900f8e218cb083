// Package nstest holds helpers for cnm's privileged tests: a gate that runs them only when
// asked to (CNM_PRIVILEGED_TESTS=1) and fails, rather than skips, when asked but not able to;
// throwaway network namespaces; and commands run inside them.
//
// Every kernel-facing test works in namespaces it creates here and never in the machine's own.
package nstest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cnmkit/cnm/internal/netns"
)

// Enabled reports whether the privileged tier is switched on.
func Enabled() bool { return os.Getenv("CNM_PRIVILEGED_TESTS") == "1" }

// Privileged gates a privileged test: it skips with a reason when CNM_PRIVILEGED_TESTS is not 1
// (and CI is not "true"), and fails when the tier is on but the process is not root.
func Privileged(tb testing.TB) {
	tb.Helper()
	if !Enabled() {
		if os.Getenv("CI") == "true" {
			tb.Fatal("CI=true but CNM_PRIVILEGED_TESTS is not 1: privileged tests must run in CI")
		}
		tb.Skip("privileged test: set CNM_PRIVILEGED_TESTS=1 and run as root")
	}
	if os.Geteuid() != 0 {
		tb.Fatal("CNM_PRIVILEGED_TESTS=1 needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN)")
	}
}

// NewNS creates a fresh network namespace, bind-mounted under a temporary directory, with its
// loopback up. Cleanup closes and removes it.
func NewNS(tb testing.TB) *netns.NS {
	tb.Helper()
	dir := nsDir(tb)
	path := filepath.Join(dir, fmt.Sprintf("ns%d", time.Now().UnixNano()))
	ns, err := netns.New(path)
	if err != nil {
		tb.Fatalf("nstest: new namespace: %v", err)
	}
	tb.Cleanup(func() {
		ns.Close()
		if err := netns.Remove(path); err != nil {
			tb.Errorf("nstest: remove namespace: %v", err)
		}
	})
	if out, err := Exec(ns, "ip", "link", "set", "lo", "up"); err != nil {
		tb.Fatalf("nstest: lo up: %v: %s", err, out)
	}
	return ns
}

// nsDir returns a directory for bind mounts that outlives t.TempDir's removal order: the
// namespaces are unmounted by their own cleanups before the directory goes.
func nsDir(tb testing.TB) string {
	tb.Helper()
	dir := tb.TempDir()
	tb.Cleanup(func() {
		// Anything still mounted under dir (a test that leaked) is detached so TempDir's
		// removal can succeed; the leak is reported.
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			p := filepath.Join(dir, e.Name())
			if netns.IsMounted(p) {
				tb.Errorf("nstest: namespace %s still mounted at cleanup", p)
				_ = detach(p)
			}
		}
	})
	return dir
}

// Exec runs a command inside ns (with nsenter) and returns its combined output. It gives up
// after 20 seconds.
func Exec(ns *netns.NS, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return ExecContext(ctx, ns.Path(), name, args...)
}

// ExecContext runs a command inside the namespace at path.
func ExecContext(ctx context.Context, nsPath, name string, args ...string) (string, error) {
	full := append([]string{"--net=" + nsPath, "--", name}, args...)
	out, err := exec.CommandContext(ctx, "nsenter", full...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// Ping sends count pings from the namespace at nsPath to addr, waiting at most one second for
// each reply, and reports whether all were answered.
func Ping(nsPath string, addr string, count int) (string, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(count+3)*time.Second)
	defer cancel()
	out, err := ExecContext(ctx, nsPath, "ping", "-n", "-q", "-c", fmt.Sprint(count), "-W", "1", "-i", "0.2", addr)
	return out, err == nil
}
