package cnm_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cnmkit/cnm"
	"github.com/cnmkit/cnm/internal/netns"
	cnl "github.com/cnmkit/cnm/internal/nl"
	"github.com/cnmkit/cnm/internal/nstest"
	"github.com/cnmkit/cnm/kvstore/boltdb"
	"github.com/cnmkit/cnm/network"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The sandbox benchmarks put DataDir on the disk (a temporary directory on the root
// filesystem, ext4 on the benchmark machine), as users have /var/lib/cnm, and RunDir on a
// tmpfs (/dev/shm), as users have /run/cnm, or, for the "rundisk" cases, on the disk too. The
// test runner's /run/cnm and /var/lib/cnm are tmpfs mounts: they are not used.

// sandboxDirs returns a DataDir on the disk and a RunDir on a tmpfs, or on the disk when
// runOnDisk is set.
func sandboxDirs(b *testing.B, runOnDisk bool) (dataDir, runDir string) {
	b.Helper()
	dataDir = filepath.Join(b.TempDir(), "data")
	var st unix.Statfs_t
	if err := unix.Statfs(dataDir[:strings.LastIndex(dataDir, "/")], &st); err != nil {
		b.Fatal(err)
	}
	if st.Type == unix.TMPFS_MAGIC {
		b.Fatalf("%s is a tmpfs: the benchmark wants DataDir on a disk filesystem (set TMPDIR)", dataDir)
	}
	if runOnDisk {
		return dataDir, filepath.Join(b.TempDir(), "run")
	}
	runDir, err := os.MkdirTemp("/dev/shm", "cnm-bench-run-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(runDir) })
	if err := unix.Statfs(runDir, &st); err != nil || st.Type != unix.TMPFS_MAGIC {
		b.Fatalf("/dev/shm is not a tmpfs (statfs err %v)", err)
	}
	return dataDir, runDir
}

// series is one measure over a long run: one sample per iteration, in order.
type series []time.Duration

// median returns the median of s[from:to].
func (s series) median(from, to int) time.Duration { return s.pct(from, to, 50) }

// pct returns the p-th percentile of s[from:to] (clamped to s).
func (s series) pct(from, to, p int) time.Duration {
	to = min(to, len(s))
	if from >= to {
		return 0
	}
	d := slices.Clone(s[from:to])
	slices.Sort(d)
	return d[(len(d)-1)*p/100]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.3f", float64(d)/1e6) }

// logCurve prints, for each named series, the median and p90 of buckets of 100 iterations (and
// of the first and last 20), and reports the medians of the whole run and the first and last 20
// as metrics.
func logCurve(b *testing.B, names []string, all map[string]series) {
	n := len(all[names[0]])
	var sb strings.Builder
	fmt.Fprintf(&sb, "%d iterations; ms, p50/p90 per bucket of iterations\n%-22s %13s", n, "step", "1-20")
	for from := 0; from < n; from += 100 {
		fmt.Fprintf(&sb, " %13s", fmt.Sprintf("%d-%d", from+1, min(from+100, n)))
	}
	fmt.Fprintf(&sb, " %13s\n", fmt.Sprintf("%d-%d", max(n-19, 1), n))
	for _, name := range names {
		s := all[name]
		fmt.Fprintf(&sb, "%-22s %13s", name, ms(s.median(0, 20))+"/"+ms(s.pct(0, 20, 90)))
		for from := 0; from < n; from += 100 {
			fmt.Fprintf(&sb, " %13s", ms(s.median(from, from+100))+"/"+ms(s.pct(from, from+100, 90)))
		}
		fmt.Fprintf(&sb, " %13s\n", ms(s.median(n-20, n))+"/"+ms(s.pct(n-20, n, 90)))
		b.ReportMetric(float64(s.median(0, n))/1e6, name+"-ms")
		if n >= 40 {
			b.ReportMetric(float64(s.median(n-20, n))/float64(s.median(0, 20)), name+"-last/first")
		}
	}
	// Printed, not logged: the testing package cuts a benchmark's log to 10 lines.
	fmt.Fprintf(os.Stderr, "%s:\n%s", b.Name(), sb.String())
}

// rawStore is a second bbolt store beside the Controller's, for the raw commits.
func rawStore(b *testing.B, dataDir string) *boltdb.Store {
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		b.Fatal(err)
	}
	st, err := boltdb.Open(filepath.Join(dataDir, "raw.db"), boltdb.Config{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	return st
}

const benchHosts = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"

// rawSandbox makes by hand what NewSandbox makes, timing each step into steps: the namespace
// (its file created, unshare, bind mount, opened), a netlink handle in it, loopback up, the
// files directory with resolv.conf (from the host's) and hosts, and one commit of a record of
// the same size.
func rawSandbox(b *testing.B, st *boltdb.Store, runDir, filesDir, id string, steps map[string]series) (*netns.NS, *netlink.Handle) {
	lap := time.Now()
	step := func(name string) {
		now := time.Now()
		steps[name] = append(steps[name], now.Sub(lap))
		lap = now
	}
	start := lap
	ns, err := netns.New(filepath.Join(runDir, "netns", id))
	if err != nil {
		b.Fatal(err)
	}
	step("raw/netns+mount")
	h, err := netlink.NewHandleAt(ns.Handle(), unix.NETLINK_ROUTE)
	if err != nil {
		b.Fatal(err)
	}
	step("raw/handle")
	if err := h.LinkSetUp(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: 1}}); err != nil {
		b.Fatal(err)
	}
	step("raw/lo-up")
	if err := os.MkdirAll(filesDir, 0o755); err != nil {
		b.Fatal(err)
	}
	host, _ := os.ReadFile("/etc/resolv.conf")
	if err := os.WriteFile(filepath.Join(filesDir, "resolv.conf"), host, 0o644); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(filesDir, "hosts"), []byte(benchHosts+"10.0.0.1\t"+id+"\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	step("raw/files")
	if _, err := st.Put(context.Background(), "sandboxes/"+id, make([]byte, 150)); err != nil {
		b.Fatal(err)
	}
	step("raw/commit")
	steps["raw/total"] = append(steps["raw/total"], lap.Sub(start))
	floor := steps["raw/netns+mount"][len(steps["raw/netns+mount"])-1] + steps["raw/commit"][len(steps["raw/commit"])-1]
	steps["raw/floor"] = append(steps["raw/floor"], floor)
	return ns, h
}

// rawRemove undoes rawSandbox: unmount, the files, one commit deleting the record.
func rawRemove(b *testing.B, st *boltdb.Store, runDir, filesDir, id string, ns *netns.NS, h *netlink.Handle) {
	h.Close()
	ns.Close()
	if err := netns.Remove(filepath.Join(runDir, "netns", id)); err != nil {
		b.Fatal(err)
	}
	os.RemoveAll(filesDir)
	if err := st.Delete(context.Background(), "sandboxes/"+id); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkPrivilegedSandboxSteps measures NewSandbox and DeleteSandbox over a long run of
// create/delete cycles, against the same work done by hand in the same iteration (so at the
// same point of the run): namespace create and bind mount, netlink handle, loopback up, the
// files, and one bbolt commit, each timed. The floor is the namespace and mount plus
// one commit ("raw/floor"). DataDir is on the disk; RunDir on a tmpfs ("runtmpfs") or on the
// disk ("rundisk"). Run it with a fixed count of iterations, e.g.
//
//	CNM_PRIVILEGED_TESTS=1 ../shared/tools/nsrun -- \
//	  go test -run '^$' -bench PrivilegedSandboxSteps -benchtime 1000x -count 3 .
func BenchmarkPrivilegedSandboxSteps(b *testing.B) {
	if !nstest.Enabled() {
		b.Skip("privileged benchmark: set CNM_PRIVILEGED_TESTS=1 and run as root")
	}
	for _, onDisk := range []bool{false, true} {
		name := "runtmpfs"
		if onDisk {
			name = "rundisk"
		}
		b.Run(name, func(b *testing.B) {
			host := nstest.NewNS(b)
			dataDir, runDir := sandboxDirs(b, onDisk)
			ctx := b.Context()
			c, err := cnm.New(ctx, cnm.Config{DataDir: dataDir, RunDir: runDir, HostNetns: host.Path(), NoPredefinedNetworks: true})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { c.Close() })
			// The raw work uses the same filesystems as the Controller's: its namespaces
			// and files under RunDir, its store beside the Controller's in DataDir.
			st := rawStore(b, filepath.Join(dataDir, "raw"))
			rawRun := filepath.Join(runDir, "raw")
			all := map[string]series{}
			for i := 0; b.Loop(); i++ {
				id := fmt.Sprintf("sb%d", i)
				filesDir := filepath.Join(rawRun, "sandboxes", id)
				ns, h := rawSandbox(b, st, rawRun, filesDir, id, all)
				t0 := time.Now()
				if _, err := c.NewSandbox(ctx, id); err != nil {
					b.Fatal(err)
				}
				t1 := time.Now()
				if err := c.DeleteSandbox(ctx, id); err != nil {
					b.Fatal(err)
				}
				t2 := time.Now()
				rawRemove(b, st, rawRun, filesDir, id, ns, h)
				all["raw/delete"] = append(all["raw/delete"], time.Since(t2))
				all["cnm/NewSandbox"] = append(all["cnm/NewSandbox"], t1.Sub(t0))
				all["cnm/DeleteSandbox"] = append(all["cnm/DeleteSandbox"], t2.Sub(t1))
			}
			if b.N < 20 {
				return
			}
			logCurve(b, []string{"raw/netns+mount", "raw/handle", "raw/lo-up", "raw/files", "raw/commit", "raw/total", "raw/floor", "cnm/NewSandbox", "raw/delete", "cnm/DeleteSandbox"}, all)
			ratio := func(num, den string) float64 {
				return float64(all[num].median(0, b.N)) / float64(all[den].median(0, b.N))
			}
			b.ReportMetric(ratio("cnm/NewSandbox", "raw/floor"), "new/floor")
			// The overhead over the floor at the start and the end of the run: the machine's
			// own drift (other load, the kernel) moves both.
			drift := func(from, to int) float64 {
				return float64(all["cnm/NewSandbox"].median(from, to)) / float64(all["raw/floor"].median(from, to))
			}
			b.ReportMetric(drift(0, 20), "new/floor-first20")
			b.ReportMetric(drift(b.N-20, b.N), "new/floor-last20")
			b.ReportMetric(ratio("cnm/NewSandbox", "raw/total"), "new/rawtotal")
		})
	}
}

// BenchmarkPrivilegedSandboxScale measures, over one run of b.N iterations (k = 1 .. b.N), the
// k-th attach including its sandbox (NewSandbox then Connect, on one bridge network), with the
// k-1 earlier sandboxes and endpoints kept, against the raw calls doing the same at the same k
// in the same iteration (namespace and mount, loopback up, the one-message veth onto a second
// network's bridge and into the namespace, address, link up, default route, one bbolt commit; raw namespaces
// are kept too). Then it tears the b.N sandboxes down one by one as `docker rm` does
// (DeleteSandbox alone), against the raw unmount and one commit, alternating. Run it as
//
//	CNM_PRIVILEGED_TESTS=1 ../shared/tools/nsrun -- \
//	  go test -run '^$' -bench PrivilegedSandboxScale -benchtime 1000x -count 2 -timeout 30m .
func BenchmarkPrivilegedSandboxScale(b *testing.B) {
	if !nstest.Enabled() {
		b.Skip("privileged benchmark: set CNM_PRIVILEGED_TESTS=1 and run as root")
	}
	host := nstest.NewNS(b)
	dataDir, runDir := sandboxDirs(b, false)
	ctx := b.Context()
	c, err := cnm.New(ctx, cnm.Config{DataDir: dataDir, RunDir: runDir, HostNetns: host.Path(), NoPredefinedNetworks: true})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	l := &benchLab{host: host, c: c, dir: runDir}
	if l.nw, err = c.NewNetwork(ctx, "bench", "bridge", network.WithSubnet(netip.MustParsePrefix("10.200.0.0/16"))); err != nil {
		b.Fatal(err)
	}
	// The raw attaches go to a second network's bridge, made the same way: a bridge takes
	// at most 1024 ports (BR_MAX_PORTS), and each bridge has k-1 ports at the k-th attach.
	rawNw, err := c.NewNetwork(ctx, "raw", "bridge", network.WithSubnet(netip.MustParsePrefix("10.201.0.0/16")))
	if err != nil {
		b.Fatal(err)
	}
	h, err := netlink.NewHandleAt(host.Handle())
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	if l.br, err = h.LinkByName("br-" + rawNw.ID()[:12]); err != nil {
		b.Fatal(err)
	}
	if l.sock, err = cnl.NewSocket(host.Handle(), 10*time.Second); err != nil {
		b.Fatal(err)
	}
	defer l.sock.Close()
	st := rawStore(b, filepath.Join(dataDir, "raw"))
	rawRun := filepath.Join(runDir, "raw")

	all := map[string]series{}
	var raws []rawNS
	var ids []string
	for i := 0; b.Loop(); i++ {
		id := fmt.Sprintf("k%d", i)
		t0 := time.Now()
		path := filepath.Join(rawRun, "netns", id)
		ns, err := netns.New(path)
		if err != nil {
			b.Fatal(err)
		}
		rh, err := netlink.NewHandleAt(ns.Handle(), unix.NETLINK_ROUTE)
		if err != nil {
			b.Fatal(err)
		}
		if err := rh.LinkSetUp(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: 1}}); err != nil {
			b.Fatal(err)
		}
		r := rawNS{ns: ns, h: rh, path: path}
		tns := time.Now()
		// 10.200.128.0 and up: never an address (or MAC) IPAM gives out here.
		if err := l.rawAttach(r, 32768+i); err != nil {
			b.Fatal(err)
		}
		tatt := time.Now()
		if _, err := st.Put(ctx, "sandboxes/"+id, make([]byte, 150)); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		all["raw/netns+lo"] = append(all["raw/netns+lo"], tns.Sub(t0))
		all["raw/attach"] = append(all["raw/attach"], tatt.Sub(tns))
		all["raw/commit"] = append(all["raw/commit"], t1.Sub(tatt))
		// The floor of NewSandbox at this k: the namespace and one commit.
		all["raw/netns+lo+commit"] = append(all["raw/netns+lo+commit"], tns.Sub(t0)+t1.Sub(tatt))
		if _, err := c.NewSandbox(ctx, id); err != nil {
			b.Fatal(err)
		}
		t2 := time.Now()
		if _, err := c.Connect(ctx, "bench", id); err != nil {
			b.Fatal(err)
		}
		t3 := time.Now()
		all["raw/attach+sandbox"] = append(all["raw/attach+sandbox"], t1.Sub(t0))
		all["cnm/NewSandbox"] = append(all["cnm/NewSandbox"], t2.Sub(t1))
		all["cnm/Connect"] = append(all["cnm/Connect"], t3.Sub(t2))
		all["cnm/attach+sandbox"] = append(all["cnm/attach+sandbox"], t3.Sub(t1))
		raws = append(raws, r)
		ids = append(ids, id)
	}
	b.StopTimer()
	for i, id := range ids {
		r := raws[i]
		r.h.Close()
		r.ns.Close()
		t0 := time.Now()
		if err := netns.Remove(r.path); err != nil {
			b.Fatal(err)
		}
		if err := st.Delete(ctx, "sandboxes/"+id); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if err := c.DeleteSandbox(ctx, id); err != nil {
			b.Fatal(err)
		}
		all["raw/rm"] = append(all["raw/rm"], t1.Sub(t0))
		all["cnm/DeleteSandbox"] = append(all["cnm/DeleteSandbox"], time.Since(t1))
	}
	if b.N < 20 {
		return
	}
	logCurve(b, []string{"raw/netns+lo", "raw/attach", "raw/commit", "raw/netns+lo+commit", "raw/attach+sandbox", "cnm/NewSandbox", "cnm/Connect", "cnm/attach+sandbox", "raw/rm", "cnm/DeleteSandbox"}, all)
	for _, p := range []struct {
		name     string
		num, den string
	}{
		{"attach/raw", "cnm/attach+sandbox", "raw/attach+sandbox"},
		{"new/floor", "cnm/NewSandbox", "raw/netns+lo+commit"},
		{"connect/rawattach", "cnm/Connect", "raw/attach"},
		{"rm/raw", "cnm/DeleteSandbox", "raw/rm"},
	} {
		b.ReportMetric(float64(all[p.num].median(0, b.N))/float64(all[p.den].median(0, b.N)), p.name)
	}
}

// steadyAlive is how many sandboxes BenchmarkPrivilegedSandboxSteady keeps alive, cnm and raw
// each: a host running a few containers while others come and go.
const steadyAlive = 10

// steadyRound is the length of a round of BenchmarkPrivilegedSandboxSteady: its first and last
// 20 cycles are compared.
const steadyRound = 1000

// BenchmarkPrivilegedSandboxSteady measures NewSandbox and DeleteSandbox over a long run in a
// steady state, as a host with containers coming and going has it: each cycle creates a
// sandbox and connects it to a bridge network (one endpoint), and once steadyAlive are alive
// deletes the oldest (DeleteSandbox alone, its endpoint going with it, as `docker rm` does).
// Beside it, in the same cycle and in alternating order, it does the same by hand: a namespace
// (created, bind-mounted, opened, loopback up), a veth onto a second bridge, one bbolt commit
// of a record of the same size; and the oldest raw namespace's unmount with one commit
// deleting its record. The floors are the issue's: NewSandbox's is the namespace and mount
// plus one commit ("raw/floor"), DeleteSandbox's the unmount plus one commit ("raw/rm").
// b.N cycles make b.N/steadyRound rounds on the same Controller and store; the first and last
// 20 cycles of the run and of each round are compared. It also reports how the process's
// descriptors and goroutines and the store's file grew from the first round's 50th cycle to
// the end. DataDir is on the disk, RunDir on a tmpfs. Run it as
//
//	CNM_PRIVILEGED_TESTS=1 ../shared/tools/nsrun -- \
//	  go test -run '^$' -bench PrivilegedSandboxSteady -benchtime 3000x -count 1 .
func BenchmarkPrivilegedSandboxSteady(b *testing.B) {
	if !nstest.Enabled() {
		b.Skip("privileged benchmark: set CNM_PRIVILEGED_TESTS=1 and run as root")
	}
	host := nstest.NewNS(b)
	dataDir, runDir := sandboxDirs(b, false)
	ctx := b.Context()
	c, err := cnm.New(ctx, cnm.Config{DataDir: dataDir, RunDir: runDir, HostNetns: host.Path(), NoPredefinedNetworks: true})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	l := &benchLab{host: host, c: c, dir: runDir}
	if l.nw, err = c.NewNetwork(ctx, "bench", "bridge", network.WithSubnet(netip.MustParsePrefix("10.200.0.0/16"))); err != nil {
		b.Fatal(err)
	}
	rawNw, err := c.NewNetwork(ctx, "raw", "bridge", network.WithSubnet(netip.MustParsePrefix("10.201.0.0/16")))
	if err != nil {
		b.Fatal(err)
	}
	h, err := netlink.NewHandleAt(host.Handle())
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	if l.br, err = h.LinkByName("br-" + rawNw.ID()[:12]); err != nil {
		b.Fatal(err)
	}
	if l.sock, err = cnl.NewSocket(host.Handle(), 10*time.Second); err != nil {
		b.Fatal(err)
	}
	defer l.sock.Close()
	st := rawStore(b, filepath.Join(dataDir, "raw"))
	rawRun := filepath.Join(runDir, "raw")
	db := filepath.Join(dataDir, "local.db")

	all := map[string]series{}
	add := func(name string, d time.Duration) { all[name] = append(all[name], d) }
	var raws []rawNS
	var ids []string
	var fds0, gor0 int
	var db0 int64
	rawNew := func(i int, id string) {
		t0 := time.Now()
		path := filepath.Join(rawRun, "netns", id)
		ns, err := netns.New(path)
		if err != nil {
			b.Fatal(err)
		}
		tns := time.Now()
		rh, err := netlink.NewHandleAt(ns.Handle(), unix.NETLINK_ROUTE)
		if err != nil {
			b.Fatal(err)
		}
		if err := rh.LinkSetUp(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: 1}}); err != nil {
			b.Fatal(err)
		}
		r := rawNS{ns: ns, h: rh, path: path}
		// 10.200.128.0 and up: never an address (or MAC) IPAM gives out here.
		if err := l.rawAttach(r, 32768+i); err != nil {
			b.Fatal(err)
		}
		tatt := time.Now()
		if _, err := st.Put(ctx, "sandboxes/"+id, make([]byte, 150)); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		add("raw/netns+mount", tns.Sub(t0))
		add("raw/commit", t1.Sub(tatt))
		add("raw/floor", tns.Sub(t0)+t1.Sub(tatt))
		raws = append(raws, r)
	}
	cnmNew := func(id string) {
		t0 := time.Now()
		if _, err := c.NewSandbox(ctx, id); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if _, err := c.Connect(ctx, "bench", id); err != nil {
			b.Fatal(err)
		}
		add("cnm/NewSandbox", t1.Sub(t0))
		add("cnm/Connect", time.Since(t1))
		ids = append(ids, id)
	}
	rawRm := func() {
		r := raws[0]
		raws = raws[1:]
		r.h.Close()
		r.ns.Close()
		t0 := time.Now()
		if err := netns.Remove(r.path); err != nil {
			b.Fatal(err)
		}
		if err := st.Delete(ctx, "sandboxes/"+filepath.Base(r.path)); err != nil {
			b.Fatal(err)
		}
		add("raw/rm", time.Since(t0))
	}
	cnmRm := func() {
		id := ids[0]
		ids = ids[1:]
		t0 := time.Now()
		if err := c.DeleteSandbox(ctx, id); err != nil {
			b.Fatal(err)
		}
		add("cnm/DeleteSandbox", time.Since(t0))
	}
	for i := 0; b.Loop(); i++ {
		id := fmt.Sprintf("s%d", i)
		if i%2 == 0 {
			rawNew(i, id)
			cnmNew(id)
		} else {
			cnmNew(id)
			rawNew(i, id)
		}
		if len(ids) > steadyAlive {
			if i%2 == 0 {
				rawRm()
				cnmRm()
			} else {
				cnmRm()
				rawRm()
			}
		}
		if i == 49 {
			fds0, gor0, db0 = countFDs(b), runtime.NumGoroutine(), fileSize(b, db)
		}
	}
	b.StopTimer()
	if b.N < 100 {
		return
	}
	b.ReportMetric(float64(countFDs(b)-fds0), "fds-growth")
	b.ReportMetric(float64(runtime.NumGoroutine()-gor0), "goroutines-growth")
	b.ReportMetric(float64(fileSize(b, db)-db0), "db-bytes-growth")
	names := []string{"raw/netns+mount", "raw/commit", "raw/floor", "cnm/NewSandbox", "cnm/Connect", "raw/rm", "cnm/DeleteSandbox"}
	logCurve(b, names, all)
	ratio := func(num, den string, from, to int) float64 {
		return float64(all[num].median(from, to)) / float64(all[den].median(from, to))
	}
	n, nrm := len(all["raw/floor"]), len(all["raw/rm"])
	b.ReportMetric(ratio("cnm/NewSandbox", "raw/floor", 0, n), "new/floor")
	b.ReportMetric(ratio("cnm/DeleteSandbox", "raw/rm", 0, nrm), "rm/raw")
	// First and last 20 cycles of each round, printed: the floor's and NewSandbox's own
	// drift, and NewSandbox's over the floor's.
	var sb strings.Builder
	fmt.Fprintf(&sb, "%s rounds of %d: last20/first20 of floor, NewSandbox, rm, DeleteSandbox; NewSandbox/floor first20 → last20\n", b.Name(), steadyRound)
	for from := 0; from+steadyRound <= n; from += steadyRound {
		to := from + steadyRound
		drift := func(name string) float64 {
			s := all[name]
			off := n - len(s) // the deletes start steadyAlive cycles late
			return float64(s.median(to-20-off, to-off)) / float64(s.median(max(from-off, 0), from+20-off))
		}
		fmt.Fprintf(&sb, "  round %d: floor %.3fx, NewSandbox %.3fx, rm %.3fx, DeleteSandbox %.3fx; new/floor %.3f → %.3f\n",
			from/steadyRound+1, drift("raw/floor"), drift("cnm/NewSandbox"), drift("raw/rm"), drift("cnm/DeleteSandbox"),
			ratio("cnm/NewSandbox", "raw/floor", from, from+20), ratio("cnm/NewSandbox", "raw/floor", to-20, to))
	}
	fmt.Fprint(os.Stderr, sb.String())
	b.ReportMetric(float64(all["raw/floor"].median(n-20, n))/float64(all["raw/floor"].median(0, 20)), "floor-last20/first20")
	b.ReportMetric(float64(all["cnm/NewSandbox"].median(n-20, n))/float64(all["cnm/NewSandbox"].median(0, 20)), "new-last20/first20")
}

// countFDs returns the number of the process's open descriptors.
func countFDs(tb testing.TB) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		tb.Fatal(err)
	}
	return len(ents)
}

// fileSize returns the size of the file at path.
func fileSize(tb testing.TB, path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		tb.Fatal(err)
	}
	return fi.Size()
}
