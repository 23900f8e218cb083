package cnm_test

import (
	"bytes"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/cnmkit/cnm"
	"github.com/cnmkit/cnm/internal/nstest"
	"github.com/cnmkit/cnm/sandbox"
	"golang.org/x/sys/unix"
)

// lockedBuffer is a bytes.Buffer safe for the logger's concurrent writes.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestPrivilegedRunDirWarning checks that New warns when RunDir is not on a tmpfs, and not when
// it is, and that a sandbox's files are under RunDir/sandboxes/<id>.
func TestPrivilegedRunDirWarning(t *testing.T) {
	nstest.Privileged(t)
	host := nstest.NewNS(t)
	tmpfs := t.TempDir()
	if err := unix.Mount("cnm-test", tmpfs, "tmpfs", 0, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(tmpfs, unix.MNT_DETACH) })
	disk := t.TempDir()
	diskIsMem, err := sandbox.OnMemoryFS(disk)
	if err != nil {
		t.Fatal(err)
	}
	const warning = "run dir is not on a tmpfs"
	for _, tc := range []struct {
		runDir string
		warn   bool
	}{{filepath.Join(tmpfs, "run"), false}, {filepath.Join(disk, "run"), !diskIsMem}} {
		var logs lockedBuffer
		c, err := cnm.New(t.Context(), cnm.Config{
			DataDir: t.TempDir(), RunDir: tc.runDir, HostNetns: host.Path(), NoPredefinedNetworks: true,
			Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn})),
		})
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.Contains(logs.String(), warning); got != tc.warn {
			t.Errorf("RunDir %s: warned %v, want %v; logs:\n%s", tc.runDir, got, tc.warn, logs.String())
		}
		sb, err := c.NewSandbox(t.Context(), "web")
		if err != nil {
			t.Fatal(err)
		}
		if want := filepath.Join(tc.runDir, "sandboxes", "web", "hosts"); sb.HostsPath() != want {
			t.Errorf("hosts file %s, want %s", sb.HostsPath(), want)
		}
		if err := c.DeleteSandbox(t.Context(), "web"); err != nil {
			t.Fatal(err)
		}
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
