package cnm_test

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cnmkit/cnm"
	"github.com/cnmkit/cnm/internal/nstest"
	"github.com/cnmkit/cnm/internal/runstore"
	"github.com/cnmkit/cnm/network"
	"github.com/cnmkit/cnm/sandbox"
	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
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

// cycleState is what must not grow over create/delete cycles of sandboxes.
type cycleState struct {
	fds, goroutines, hostLinks, runFiles, dataFiles, keys, runKeys int
	dbBytes                                                        int64
	maps                                                           map[string]int
}

// TestPrivilegedSandboxCycleNoGrowth runs 300 cycles of NewSandbox, Connect (one endpoint on a
// bridge network) and DeleteSandbox of the oldest, five sandboxes alive throughout, DataDir on
// the disk and RunDir on a tmpfs, and checks that nothing grows from the 50th cycle to the
// last: the process's descriptors and goroutines, the links of the host namespace, the files
// under RunDir and DataDir, the keys in the local and run stores, the size of the local store's
// file (and that the run store's journal stays under its compaction bound), and the
// Controller's maps (sandboxes, endpoints, gateway claims).
func TestPrivilegedSandboxCycleNoGrowth(t *testing.T) {
	nstest.Privileged(t)
	host := nstest.NewNS(t)
	runDir := t.TempDir()
	if err := unix.Mount("cnm-test", runDir, "tmpfs", 0, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(runDir, unix.MNT_DETACH) })
	dataDir := t.TempDir()
	ctx := t.Context()
	c, err := cnm.New(ctx, cnm.Config{DataDir: dataDir, RunDir: runDir, HostNetns: host.Path(), NoPredefinedNetworks: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.NewNetwork(ctx, "cycle", "bridge", network.WithSubnet(netip.MustParsePrefix("10.210.0.0/24"))); err != nil {
		t.Fatal(err)
	}
	h, err := netlink.NewHandleAt(host.Handle())
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	count := func(dir string) int {
		n := 0
		filepath.WalkDir(dir, func(string, fs.DirEntry, error) error { n++; return nil })
		return n
	}
	state := func() cycleState {
		fds, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Fatal(err)
		}
		// The kernel's teardown of deleted namespaces changes the links under a dump: one it
		// interrupted is made again.
		links, err := h.LinkList()
		for range 100 {
			if !errors.Is(err, netlink.ErrDumpInterrupted) {
				break
			}
			links, err = h.LinkList()
		}
		if err != nil {
			t.Fatal(err)
		}
		kvs, err := cnm.StoreForTest(c).List(ctx, "")
		if err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(filepath.Join(dataDir, "local.db"))
		if err != nil {
			t.Fatal(err)
		}
		runKVs, err := cnm.RunStoreForTest(c).List(ctx, "")
		if err != nil {
			t.Fatal(err)
		}
		return cycleState{
			fds: len(fds), goroutines: runtime.NumGoroutine(), hostLinks: len(links),
			runFiles: count(runDir), dataFiles: count(dataDir), keys: len(kvs), dbBytes: fi.Size(),
			runKeys: len(runKVs),
			maps:    cnm.MapSizesForTest(c),
		}
	}
	// No collection during the cycles (the heap grows by about 40 MB): a descriptor left open
	// for a finalizer to close would otherwise be closed by chance and not show.
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	const alive, cycles, from = 5, 300, 50
	var ids []string
	var (
		before     cycleState
		maxJournal int64
	)
	for i := range cycles {
		id := fmt.Sprintf("cycle%d", i)
		if _, err := c.NewSandbox(ctx, id); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Connect(ctx, "cycle", id); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
		if len(ids) > alive {
			if err := c.DeleteSandbox(ctx, ids[0]); err != nil {
				t.Fatal(err)
			}
			ids = ids[1:]
		}
		// The run store's journal grows by each write and is compacted past
		// runstore.CompactAt: bounded, not constant.
		fi, err := os.Stat(filepath.Join(runDir, "records.log"))
		if err != nil {
			t.Fatal(err)
		}
		maxJournal = max(maxJournal, fi.Size())
		if i == from-1 {
			// Loopback, the bridge, and the host ends of the live sandboxes' veths.
			before = settled(t, state, func(s cycleState) bool { return s.hostLinks == 2+alive })
		}
	}
	// Only what the kernel and the goroutines' ends make late is waited for: a descriptor
	// left to a finalizer must show.
	after := settled(t, state, func(s cycleState) bool {
		return s.hostLinks == before.hostLinks && s.goroutines == before.goroutines
	})
	if diff := cmp.Diff(before, after, cmp.AllowUnexported(cycleState{})); diff != "" {
		t.Errorf("from cycle %d to %d (-before +after):\n%s", from, cycles, diff)
	}
	if after.maps["sandboxes"] != alive || after.maps["endpoints"] != alive {
		t.Errorf("maps %v: want %d sandboxes and endpoints", after.maps, alive)
	}
	if maxJournal > runstore.CompactAt+16<<10 {
		t.Errorf("the run store's journal reached %d bytes, want it compacted near %d", maxJournal, runstore.CompactAt)
	}
	if after.runKeys != alive {
		t.Errorf("run store holds %d keys, want the %d live endpoints' records", after.runKeys, alive)
	}
}

// settled returns state() once ok accepts it, or after ten seconds the last one: the kernel
// ends deleted namespaces asynchronously (the host ends of their veths go some time after the
// unmount).
func settled(t *testing.T, state func() cycleState, ok func(cycleState) bool) cycleState {
	t.Helper()
	var s cycleState
	for range 1000 {
		if s = state(); ok(s) {
			return s
		}
		time.Sleep(10 * time.Millisecond)
	}
	return s
}
