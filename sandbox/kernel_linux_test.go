package sandbox_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/cnmkit/cnm/internal/nstest"
	"github.com/cnmkit/cnm/sandbox"
	"golang.org/x/sys/unix"
)

// TestPrivilegedOnMemoryFS checks OnMemoryFS on a tmpfs mounted by the test (in a directory
// that does not exist yet, and at its root) and on procfs.
func TestPrivilegedOnMemoryFS(t *testing.T) {
	nstest.Privileged(t)
	dir := t.TempDir()
	if err := unix.Mount("cnm-test", dir, "tmpfs", 0, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	for _, d := range []string{dir, filepath.Join(dir, "run", "cnm")} {
		if mem, err := sandbox.OnMemoryFS(d); err != nil || !mem {
			t.Errorf("OnMemoryFS(%s) on a tmpfs = %v, %v; want true", d, mem, err)
		}
	}
	if mem, err := sandbox.OnMemoryFS("/proc/self"); err != nil || mem {
		t.Errorf("OnMemoryFS(/proc/self) = %v, %v; want false", mem, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "file"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := sandbox.OnMemoryFS(filepath.Join(dir, "file", "below")); err == nil {
		t.Error("OnMemoryFS below a regular file succeeded, want an error")
	}
}
